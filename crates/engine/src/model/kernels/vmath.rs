//! Element-wise math over slices for the fused kernels, vectorised for f32.
//!
//! The f32 loops run over fixed-width lane arrays, which LLVM turns into vector code, and
//! `multiversion` compiles them for AVX-512, AVX2 + FMA and NEON, chosen at run time. The
//! exponential is the classic range reduction `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, with Cody and
//! Waite's two-part `ln 2` and a degree-5 minimax polynomial for `e^r` (Cephes' `expf`), and
//! `2^n` built in the exponent bits: one to two ulp from the correctly rounded value, in
//! straight-line code a vector unit runs sixteen lanes at a time (libm's `expf` is a call per
//! element). f64 — the gradient checks' dtype — uses the standard library's functions.

use candle_core::WithDType;
use multiversion::multiversion;

/// Lanes of the f32 loops: one AVX-512 register.
const LANES: usize = 16;

/// An element type of the fused kernels: f32 or f64.
pub trait Float: WithDType {
    const NEG_INFINITY: Self;

    #[must_use]
    fn exp(self) -> Self;
    #[must_use]
    fn ln(self) -> Self;
    #[must_use]
    fn sqrt(self) -> Self;

    /// The largest element (`NEG_INFINITY` for an empty slice; NaNs are passed over here and
    /// propagate through the sums that follow).
    fn max_of(xs: &[Self]) -> Self;

    /// `xs[i] ← exp(xs[i]·scale − shift)`, returning their sum (accumulated in f64).
    fn exp_shifted(xs: &mut [Self], scale: Self, shift: Self) -> Self;

    /// `Σ a[i]·b[i]` over the shorter length.
    fn dot(a: &[Self], b: &[Self]) -> Self;
}

impl Float for f32 {
    const NEG_INFINITY: Self = Self::NEG_INFINITY;

    fn exp(self) -> Self {
        exp_lane(self)
    }

    fn ln(self) -> Self {
        self.ln()
    }

    fn sqrt(self) -> Self {
        self.sqrt()
    }

    fn max_of(xs: &[Self]) -> Self {
        max_f32(xs)
    }

    fn exp_shifted(xs: &mut [Self], scale: Self, shift: Self) -> Self {
        exp_shifted_f32(xs, scale, shift)
    }

    fn dot(a: &[Self], b: &[Self]) -> Self {
        dot_f32(a, b)
    }
}

impl Float for f64 {
    const NEG_INFINITY: Self = Self::NEG_INFINITY;

    fn exp(self) -> Self {
        self.exp()
    }

    fn ln(self) -> Self {
        self.ln()
    }

    fn sqrt(self) -> Self {
        self.sqrt()
    }

    fn max_of(xs: &[Self]) -> Self {
        xs.iter()
            .fold(Self::NEG_INFINITY, |m, &x| if x > m { x } else { m })
    }

    fn exp_shifted(xs: &mut [Self], scale: Self, shift: Self) -> Self {
        let mut sum = 0.0;
        for x in xs {
            *x = (*x * scale - shift).exp();
            sum += *x;
        }
        sum
    }

    fn dot(a: &[Self], b: &[Self]) -> Self {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
}

/// `e^x` in f32 (see the module doc). Below −87.34 (where the result would be subnormal) it is
/// 0; above 88.37 it is infinite (the largest finite results, up to 3.4e38, are given up);
/// NaN stays NaN.
#[inline(always)]
#[must_use]
pub fn exp_lane(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2^23: adding it rounds to an integer, which its low mantissa bits then hold.
    const ROUNDER: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    const LOWEST: f32 = -87.336_54;
    const HIGHEST: f32 = 88.376_26;
    let clamped = x.clamp(LOWEST, HIGHEST);
    let t = clamped.mul_add(LOG2E, ROUNDER);
    let n = t - ROUNDER;
    let r = n.mul_add(-LN2_HI, clamped);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let e_r = (p * r).mul_add(r, r) + 1.0;
    #[expect(
        clippy::cast_possible_wrap,
        reason = "bit patterns: the difference is n, within ±2^22"
    )]
    let n_int = t.to_bits() as i32 - ROUNDER.to_bits() as i32;
    #[expect(clippy::cast_sign_loss, reason = "a biased exponent, 1 ..= 254")]
    let two_n = f32::from_bits(((n_int + 127) << 23) as u32);
    let y = e_r * two_n;
    if x < LOWEST {
        0.0
    } else if x > HIGHEST {
        f32::INFINITY
    } else {
        y
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn max_f32(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (chunks, rest) = xs.as_chunks::<LANES>();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    rest.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The sum is accumulated in f64: it normalises a softmax, and over a vocabulary of 49,152
/// f32 lanes left it a few ulp off, all of a row's probabilities with it — a bias along the
/// sum of the head's rows that reached every gradient below (1.4e-5 of them on SmolLM2;
/// bench/RESULTS.md, "CPU training: fused kernels").
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn exp_shifted_f32(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut acc = [0f64; LANES];
    let (chunks, rest) = xs.as_chunks_mut::<LANES>();
    for c in chunks {
        for i in 0..LANES {
            let e = exp_lane(c[i].mul_add(scale, -shift));
            c[i] = e;
            acc[i] += f64::from(e);
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for x in rest {
        *x = exp_lane(x.mul_add(scale, -shift));
        sum += f64::from(*x);
    }
    #[expect(clippy::cast_possible_truncation, reason = "the sum, rounded once")]
    let sum = sum as f32;
    sum
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ac, ar) = a.as_chunks::<LANES>();
    let (bc, br) = b.as_chunks::<LANES>();
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values are the point")]
mod tests {
    use super::*;

    /// Within two ulp of the correctly rounded value (f64's exp, rounded) over the whole range
    /// the kernels use, with the edges: 0 below −87.34, infinity above 88.37, NaN kept.
    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let ours = f64::from(exp_lane(x));
            let exact = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * exact;
            worst = worst.max((ours - exact).abs() / ulp);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_lane(0.0), 1.0);
        assert_eq!(exp_lane(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_lane(-100.0), 0.0);
        assert_eq!(exp_lane(f32::INFINITY), f32::INFINITY);
        assert!(exp_lane(f32::NAN).is_nan());
    }

    /// The vector loops against plain scalar loops, on lengths with and without a tail.
    #[test]
    fn slice_helpers_match_scalar_loops() {
        for n in [0, 1, 15, 16, 17, 100] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7).collect();
            let ys: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
            let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(f32::max_of(&xs), max);
            let dot: f32 = xs.iter().zip(&ys).map(|(a, b)| a * b).sum();
            assert!((f32::dot(&xs, &ys) - dot).abs() <= 1e-5 * (1.0 + dot.abs()));
            let mut e = xs.clone();
            let sum = f32::exp_shifted(&mut e, 0.5, 1.0);
            let mut expected = 0f32;
            for (got, x) in e.iter().zip(&xs) {
                let want = (x * 0.5 - 1.0).exp();
                assert!((got - want).abs() <= 2e-7 * want.max(1e-30), "{got} {want}");
                expected += want;
            }
            assert!((sum - expected).abs() <= 1e-5 * (1.0 + expected));
        }
    }
}
