//! SwiGLU's gate, `silu(gate) ⊙ up`, and its backward, each one pass over the rows.
//!
//! candle computes it as four ops forward (a sigmoid's exponential, a division, two products)
//! and more backward, each a pass with a new tensor; here the forward reads gate and up once and
//! writes the product, the backward reads them and the output gradient once and writes both
//! gradients side by side, as the fused gate/up projection ([`super::linear::FrozenLinear`])
//! wants them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use multiversion::multiversion;

use super::vmath::exp_lane;
use super::{Chunks, Float, parallel_tasks, slice_of, with_slice};

/// Rows per task.
const ROWS_PER_TASK: usize = 16;

/// `silu(gate) ⊙ up` for `gate_up` (…, 2·n): gate in the first n columns, up in the last n.
/// Returns (…, n); differentiable. f32 or f64 on the CPU ([`super::fused_dtype`]).
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    let width = gate_up.dim(candle_core::D::Minus1)?;
    if !width.is_multiple_of(2) {
        candle_core::bail!("swiglu: {width} columns do not split into gate and up");
    }
    gate_up.contiguous()?.apply_op1(SwiGlu)
}

/// An element type of the kernel: its row loops.
pub(super) trait Rows: Float {
    /// `out[j] = silu(gate[j]) · up[j]`.
    fn forward_row(gate: &[Self], up: &[Self], out: &mut [Self]);
    /// The gradients of gate and up for output gradient `grad`.
    fn backward_row(
        gate: &[Self],
        up: &[Self],
        grad: &[Self],
        d_gate: &mut [Self],
        d_up: &mut [Self],
    );
}

impl Rows for f32 {
    fn forward_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        forward_f32(gate, up, out);
    }

    fn backward_row(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
        backward_f32(gate, up, grad, d_gate, d_up);
    }
}

impl Rows for f64 {
    fn forward_row(gate: &[f64], up: &[f64], out: &mut [f64]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }

    fn backward_row(gate: &[f64], up: &[f64], grad: &[f64], d_gate: &mut [f64], d_up: &mut [f64]) {
        for j in 0..gate.len() {
            let (g, u) = (gate[j], up[j]);
            let sigmoid = 1.0 / (1.0 + (-g).exp());
            d_up[j] = grad[j] * g * sigmoid;
            d_gate[j] = grad[j] * u * sigmoid * (1.0 + g * (1.0 - sigmoid));
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn forward_f32(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_lane(-g)) * u;
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn backward_f32(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    let n = gate
        .len()
        .min(up.len())
        .min(grad.len())
        .min(d_gate.len())
        .min(d_up.len());
    for j in 0..n {
        let (g, u) = (gate[j], up[j]);
        let sigmoid = 1.0 / (1.0 + exp_lane(-g));
        d_up[j] = grad[j] * g * sigmoid;
        d_gate[j] = grad[j] * u * sigmoid * (1.0 + g * (1.0 - sigmoid));
    }
}

/// `silu(gate) ⊙ up` of rows of `2·half` values.
pub(super) fn forward<T: Rows>(gate_up: &[T], half: usize) -> Vec<T> {
    let rows = gate_up.len() / (2 * half).max(1);
    let mut out = vec![T::zero(); rows * half];
    let chunks = Chunks::new(&mut out, ROWS_PER_TASK * half);
    parallel_tasks(rows.div_ceil(ROWS_PER_TASK), |task, _| {
        chunks.with(task, |out| {
            let first = task * ROWS_PER_TASK;
            for (i, out) in out.chunks_mut(half).enumerate() {
                let (gate, up) = gate_up[(first + i) * 2 * half..][..2 * half].split_at(half);
                T::forward_row(gate, up, out);
            }
        });
    });
    out
}

/// The gradient of gate and up side by side, for output gradient `grad`.
pub(super) fn backward<T: Rows>(gate_up: &[T], grad: &[T], half: usize) -> Vec<T> {
    let rows = gate_up.len() / (2 * half).max(1);
    let mut d_gate_up = vec![T::zero(); gate_up.len()];
    let chunks = Chunks::new(&mut d_gate_up, ROWS_PER_TASK * 2 * half);
    parallel_tasks(rows.div_ceil(ROWS_PER_TASK), |task, _| {
        chunks.with(task, |out| {
            let first = task * ROWS_PER_TASK;
            for (i, out) in out.chunks_mut(2 * half).enumerate() {
                let row = first + i;
                let (gate, up) = gate_up[row * 2 * half..][..2 * half].split_at(half);
                let (d_gate, d_up) = out.split_at_mut(half);
                T::backward_row(gate, up, &grad[row * half..][..half], d_gate, d_up);
            }
        });
    });
    d_gate_up
}

struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = layout.shape().dims().to_vec();
        let half = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = half;
        }
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(forward::<f32>(slice_of(storage, layout)?, half)),
            CpuStorage::F64(_) => CpuStorage::F64(forward::<f64>(slice_of(storage, layout)?, half)),
            other => candle_core::bail!("swiglu takes f32 or f64, not {:?}", other.dtype()),
        };
        Ok((out, Shape::from(dims)))
    }

    fn bwd(&self, gate_up: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let half = gate_up.dim(candle_core::D::Minus1)? / 2;
        let d = match gate_up.dtype() {
            DType::F32 => with_slice::<f32, _>(gate_up, |x| {
                with_slice::<f32, _>(grad, |g| {
                    Tensor::from_vec(backward(x, g, half), gate_up.shape(), gate_up.device())
                })
            })?,
            DType::F64 => with_slice::<f64, _>(gate_up, |x| {
                with_slice::<f64, _>(grad, |g| {
                    Tensor::from_vec(backward(x, g, half), gate_up.shape(), gate_up.device())
                })
            })?,
            other => candle_core::bail!("swiglu takes f32 or f64, not {other:?}"),
        };
        Ok(Some(d))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Against candle's `silu` and product and their autograd: f32 within 1e-6 relative, f64
    /// within 1e-14; rows not a multiple of the task size, and large magnitudes (where the
    /// exponential saturates).
    #[test]
    fn swiglu_matches_autograd_of_silu_times_up() {
        for (dtype, tolerance) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
            let x0 = (Tensor::randn(0f32, 4.0, (3, 7, 2 * 37), &Device::Cpu).unwrap())
                .to_dtype(dtype)
                .unwrap();
            let g = Tensor::randn(0f32, 1.0, (3, 7, 37), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                let x = Var::from_tensor(&x0).unwrap();
                let y = f(x.as_tensor()).unwrap();
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                (y, grads.get(x.as_tensor()).unwrap().clone())
            };
            let ours = run(&|x| swiglu(x));
            let theirs = run(&|x| x.narrow(2, 0, 37)?.silu()? * x.narrow(2, 37, 37)?);
            for (a, b) in [(&ours.0, &theirs.0), (&ours.1, &theirs.1)] {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let scale = b.abs().unwrap().max_all().unwrap();
                let rel = (diff / scale).unwrap().to_dtype(DType::F64).unwrap();
                let rel = rel.to_scalar::<f64>().unwrap();
                assert!(rel <= tolerance, "{dtype:?}: {rel}");
            }
        }
    }

    #[test]
    fn an_odd_width_is_refused() {
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(swiglu(&x).is_err());
    }
}
