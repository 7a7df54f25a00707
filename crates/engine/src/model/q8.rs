//! Q8_0 matrices for CPU inference in our own layout, and the matrix–vector kernel that reads
//! them with f32 activations.
//!
//! Why not candle's Q8_0 (`QMatMul`): it quantises the activations too, to blocks of 32
//! (Q8_0, in its AVX2 dot product) or of 256 (Q8_K, in its tiled AVX-512 VNNI kernel, which
//! takes only rows that are a multiple of 256). Measured on SmolLM2-135M (bench/RESULTS.md,
//! "Quantised chat"): perplexity +0.7% with the first, +2.7% with the second, and the first
//! decodes barely faster than `quantized_llama` itself. Here only the weights are quantised
//! (ggml's Q8_0 rounding, an f32 scale per block of 32 instead of f16), the activations stay
//! f32, and decode reads 1.06 bytes a weight, which is what bounds its speed on the CPU.
//!
//! The kernel is plain Rust over fixed-size arrays, which LLVM vectorises; `multiversion`
//! compiles it for AVX-512, AVX2 + FMA and NEON and picks one at run time, so no `unsafe` and
//! no intrinsics are written here. Rows are split between the threads of candle's own pool
//! (sized by [`crate::threads`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Values per block (one scale each), as in ggml's Q8_0.
pub const BLOCK: usize = 32;

/// A matrix of `rows` × `cols` values quantised to 8 bits per value, in blocks of 32 along a row.
///
/// Stored packed for the kernel: rows in groups of four (the last group padded with zero rows),
/// and within a group block by block, the four rows' blocks side by side. The kernel then reads
/// one sequential stream per group instead of eight (four rows' values, four rows' scales).
#[derive(Clone, Debug)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// The int8 values, packed (shared: a cloned model shares its weights).
    values: Arc<[i8]>,
    /// One scale per block, packed the same way: value = q × scale.
    scales: Arc<[f32]>,
}

impl Q8Matrix {
    /// Quantises a row-major `rows` × `cols` matrix: each block of 32 is scaled so its largest
    /// magnitude becomes ±127 and rounded to nearest (ggml's `quantize_row_q8_0`). `None` when
    /// `cols` is not a multiple of 32 or `values` is not `rows × cols` long.
    #[must_use]
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let blocks = cols / BLOCK;
        let padded = rows.next_multiple_of(ROWS_AT_ONCE);
        let mut q = vec![0i8; padded * cols];
        let mut scales = vec![0f32; padded * blocks];
        for (r, row) in values.chunks_exact(cols).enumerate() {
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                let at = packed_block(r, b, blocks);
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.0;
                let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for (q, v) in q[at * BLOCK..(at + 1) * BLOCK].iter_mut().zip(block) {
                    *q = (v * inverse).round() as i8;
                }
                scales[at] = scale;
            }
        }
        Some(Self {
            rows,
            cols,
            values: q.into(),
            scales: scales.into(),
        })
    }

    #[must_use]
    pub fn rows(&self) -> usize {
        self.rows
    }

    #[must_use]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held: a byte per value and four per block (the padding rows included).
    #[must_use]
    pub fn size_in_bytes(&self) -> usize {
        self.values.len() + 4 * self.scales.len()
    }

    /// Row `r` dequantised into `out` (`cols` long).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (b, o) in out.chunks_exact_mut(BLOCK).enumerate() {
            let at = packed_block(r, b, blocks);
            let s = self.scales[at];
            for (o, q) in o.iter_mut().zip(&self.values[at * BLOCK..(at + 1) * BLOCK]) {
                *o = f32::from(*q) * s;
            }
        }
    }

    /// The whole matrix dequantised, row-major.
    #[must_use]
    pub fn dequantize(&self) -> Vec<f32> {
        self.dequantize_rows(0, self.rows)
    }

    /// Rows `first..first + n` dequantised, row-major.
    ///
    /// # Panics
    /// When the rows run past the matrix (a caller's bug).
    #[must_use]
    pub fn dequantize_rows(&self, first: usize, n: usize) -> Vec<f32> {
        assert!(
            first + n <= self.rows,
            "q8: rows {first}..{} of {}",
            first + n,
            self.rows
        );
        let mut out = vec![0f32; n * self.cols];
        for (i, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(first + i, row);
        }
        out
    }

    /// `out = x · Wᵀ` for `m` rows of activations `x` (`m × cols`, row-major) into `out`
    /// (`m × rows`). Each weight row is read once for all `m` activation rows, so this is for
    /// small `m` (decode); for many rows, dequantising once and a dense matmul is faster.
    ///
    /// # Panics
    /// When `x` or `out` has the wrong length (a caller's bug, checked before any work).
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "q8 matmul: activations");
        assert_eq!(out.len(), m * self.rows, "q8 matmul: output");
        if m == 0 || self.rows == 0 {
            return;
        }
        let blocks = self.cols / BLOCK;
        let group_values = ROWS_AT_ONCE * self.cols;
        let group_scales = ROWS_AT_ONCE * blocks;
        // Workers publish their rows' results through atomics (a relaxed store each; the pool's
        // barrier orders them before the reads below): disjoint writes without `unsafe`.
        let results: Vec<AtomicU32> = (0..m * self.rows).map(|_| AtomicU32::new(0)).collect();
        let activations: Vec<Activations> = x
            .chunks_exact(self.cols)
            .map(Activations::quantize)
            .collect();
        // candle's own pool, the one its matmuls use: the calling thread works too, and no
        // second set of threads competes with candle's for the cores.
        let groups = self.rows.div_ceil(ROWS_AT_ONCE);
        candle_core::utils::barrier_pool().execute_chunked(groups, |range| {
            for g in range {
                let values = &self.values[g * group_values..(g + 1) * group_values];
                let scales = &self.scales[g * group_scales..(g + 1) * group_scales];
                let first = g * ROWS_AT_ONCE;
                let last = (first + ROWS_AT_ONCE).min(self.rows);
                for (j, x) in activations.iter().enumerate() {
                    let sums = dot_rows(values, scales, x);
                    for (r, sum) in (first..last).zip(sums) {
                        results[j * self.rows + r].store(sum.to_bits(), Ordering::Relaxed);
                    }
                }
            }
        });
        for (o, r) in out.iter_mut().zip(&results) {
            *o = f32::from_bits(r.load(Ordering::Relaxed));
        }
    }
}

/// Where block `b` of row `r` lies in the packed layout, counted in blocks.
fn packed_block(r: usize, b: usize, blocks: usize) -> usize {
    ((r / ROWS_AT_ONCE) * blocks + b) * ROWS_AT_ONCE + r % ROWS_AT_ONCE
}

/// One row of activations at 16 bits per value, a scale per block of 32: the kernel multiplies
/// integers (two products and their sum per instruction, `vpmaddwd`), which is about twice as
/// fast as widening every weight to f32. At 16 bits the rounding is 1/65534 of a block's
/// largest value, far below the weights' 1/254: the activations are f32 for all purposes.
struct Activations {
    values: Vec<i16>,
    scales: Vec<f32>,
}

impl Activations {
    fn quantize(x: &[f32]) -> Self {
        let mut values = Vec::with_capacity(x.len());
        let mut scales = Vec::with_capacity(x.len() / BLOCK);
        for block in x.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / f32::from(i16::MAX);
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            values.extend(block.iter().map(|v| (v * inverse).round() as i16));
            scales.push(scale);
        }
        Self { values, scales }
    }
}

/// Weight rows the kernel reads together: four independent sums hide the latency of each one's
/// additions (a single row waits on its accumulator every block) and share the activations'
/// loads.
const ROWS_AT_ONCE: usize = 4;

/// Σ values[i] × x[i] over the four rows of a packed group (`values`, `scales`: the group's
/// slices), each block's sum scaled by its weight and activation scales: the integer kernel
/// where the CPU has one, else portable code.
fn dot_rows(values: &[i8], scales: &[f32], x: &Activations) -> [f32; ROWS_AT_ONCE] {
    #[cfg(target_arch = "x86_64")]
    if let Some(sums) = x86::dot_rows(values, scales, x) {
        return sums;
    }
    portable::dot_rows(values, scales, x)
}

/// The kernel in plain Rust over fixed-size arrays, which LLVM vectorises (widening each weight
/// to f32: slower than the integer kernel) and `multiversion` compiles for AVX-512, AVX2 and
/// NEON.
mod portable {
    use super::{Activations, BLOCK, ROWS_AT_ONCE};
    use multiversion::multiversion;

    /// Partial sums per row: sixteen lanes, one vector register with AVX-512; the lanes need no
    /// reassociation of float additions to be vectorised.
    const LANES: usize = 16;

    #[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2+fma", "aarch64+neon"))]
    pub(super) fn dot_rows(values: &[i8], scales: &[f32], x: &Activations) -> [f32; ROWS_AT_ONCE] {
        let (xv, _) = x.values.as_chunks::<BLOCK>();
        let (values, _) = values.as_chunks::<BLOCK>();
        let mut acc = [[0f32; LANES]; ROWS_AT_ONCE];
        for (b, (xv, xs)) in xv.iter().zip(&x.scales).enumerate() {
            for r in 0..ROWS_AT_ONCE {
                let q = &values[b * ROWS_AT_ONCE + r];
                let s = scales[b * ROWS_AT_ONCE + r] * xs;
                for i in 0..LANES {
                    let p = f32::from(q[i]) * f32::from(xv[i])
                        + f32::from(q[i + LANES]) * f32::from(xv[i + LANES]);
                    acc[r][i] += p * s;
                }
            }
        }
        acc.map(|a| a.iter().sum())
    }
}

/// The integer kernel on x86: `vpmaddwd` multiplies 16-bit pairs and sums them into 32 bits,
/// so a block of 32 weights costs a widening load, one multiply-add, one conversion and one
/// scaled accumulation. LLVM does not find `vpmaddwd` in portable code (it widens to 32 bits and
/// multiplies there), hence intrinsics.
#[cfg(target_arch = "x86_64")]
#[expect(
    unsafe_code,
    reason = "SIMD intrinsics: calling a `target_feature` function once the feature is \
              detected, and unaligned loads within slices whose lengths are checked first"
)]
mod x86 {
    use std::arch::x86_64::{
        _mm256_loadu_epi8, _mm512_cvtepi8_epi16, _mm512_cvtepi32_ps, _mm512_fmadd_ps,
        _mm512_loadu_si512, _mm512_madd_epi16, _mm512_reduce_add_ps, _mm512_set1_ps,
        _mm512_setzero_ps,
    };
    use std::sync::OnceLock;

    use super::{Activations, BLOCK, ROWS_AT_ONCE};

    fn has_avx512bw() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
        })
    }

    /// `None` where the CPU lacks AVX-512 BW and VL (the portable kernel serves).
    pub(super) fn dot_rows(
        values: &[i8],
        scales: &[f32],
        x: &Activations,
    ) -> Option<[f32; ROWS_AT_ONCE]> {
        if !has_avx512bw() {
            return None;
        }
        let blocks = x.scales.len();
        // The bounds every load below stays within.
        let fits = x.values.len() == blocks * BLOCK
            && values.len() == blocks * ROWS_AT_ONCE * BLOCK
            && scales.len() == blocks * ROWS_AT_ONCE;
        if !fits {
            return None;
        }
        // SAFETY: AVX-512F, BW and VL were detected above; lengths checked just now.
        Some(unsafe { dot_rows_avx512(values, scales, x) })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn dot_rows_avx512(
        values: &[i8],
        scales: &[f32],
        x: &Activations,
    ) -> [f32; ROWS_AT_ONCE] {
        let mut acc = [_mm512_setzero_ps(); ROWS_AT_ONCE];
        for (b, xs) in x.scales.iter().enumerate() {
            // SAFETY: block `b` of 32 i16 (64 bytes) lies within `x.values` (checked length).
            let xv = unsafe { _mm512_loadu_si512(x.values.as_ptr().add(b * BLOCK).cast()) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = b * ROWS_AT_ONCE + r;
                // SAFETY: packed block `at` of 32 i8 lies within `values` (checked length).
                let q = unsafe { _mm256_loadu_epi8(values.as_ptr().add(at * BLOCK)) };
                let products = _mm512_madd_epi16(_mm512_cvtepi8_epi16(q), xv);
                let s = _mm512_set1_ps(scales[at] * xs);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), s, *acc);
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Quantising keeps every value within half a step of its block's scale, and an all-zero
    /// block stays zero (no division by zero).
    #[test]
    fn quantising_rounds_each_value_to_its_blocks_step() {
        let (rows, cols) = (5, 64);
        let mut w = random(rows * cols, 1);
        w[..BLOCK].fill(0.0);
        let q = Q8Matrix::quantize(&w, rows, cols).unwrap();
        // Five rows are stored as eight (two groups of four), two blocks each.
        assert_eq!(q.size_in_bytes(), 8 * cols + 4 * 8 * 2);
        let back = q.dequantize();
        for (block, (w, b)) in w.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (w, b) in w.iter().zip(b) {
                assert!(
                    (w - b).abs() <= amax / 127.0 / 2.0 + 1e-7,
                    "block {block}: {w} vs {b}"
                );
            }
        }
        assert!(back[..BLOCK].iter().all(|v| *v == 0.0));
        assert!(Q8Matrix::quantize(&w, rows, cols - 1).is_none());
        assert!(Q8Matrix::quantize(&w[..cols * 4], rows, cols).is_none());
    }

    /// The kernel computes the product of the dequantised matrix (to the activations' 16-bit
    /// rounding), for one activation row and several, with rows not a multiple of the four
    /// read at once.
    #[test]
    fn the_kernel_multiplies_by_the_dequantised_matrix() {
        let (rows, cols) = (77, 96);
        let w = random(rows * cols, 2);
        let q = Q8Matrix::quantize(&w, rows, cols).unwrap();
        let dense = q.dequantize();
        for m in [1, 3] {
            let x = random(m * cols, 3 + m as u64);
            let mut out = vec![f32::NAN; m * rows];
            q.matmul(&x, m, &mut out);
            for j in 0..m {
                for r in 0..rows {
                    let want: f32 = (0..cols)
                        .map(|i| dense[r * cols + i] * x[j * cols + i])
                        .sum();
                    let got = out[j * rows + r];
                    // The activations are rounded to 16 bits: 1/65534 of each block's largest,
                    // so the bound is relative to the sum of the products' magnitudes.
                    let scale: f32 = (0..cols)
                        .map(|i| (dense[r * cols + i] * x[j * cols + i]).abs())
                        .sum();
                    assert!(
                        (got - want).abs() <= 1e-4 * scale,
                        "{m} {j} {r}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The portable kernel (the one CPUs without AVX-512BW run) agrees with the one this CPU
    /// runs, to f32 summation order.
    #[test]
    fn the_portable_kernel_agrees_with_the_dispatched_one() {
        let (rows, cols) = (8, 128);
        let q = Q8Matrix::quantize(&random(rows * cols, 9), rows, cols).unwrap();
        let x = Activations::quantize(&random(cols, 10));
        let group = ROWS_AT_ONCE * cols;
        let scales = ROWS_AT_ONCE * cols / BLOCK;
        for g in 0..rows / ROWS_AT_ONCE {
            let values = &q.values[g * group..(g + 1) * group];
            let s = &q.scales[g * scales..(g + 1) * scales];
            let a = dot_rows(values, s, &x);
            let b = portable::dot_rows(values, s, &x);
            for (a, b) in a.iter().zip(b) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}
