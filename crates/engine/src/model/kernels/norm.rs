//! RMSNorm with a frozen (or no) scale, forward and backward, one pass over the rows each.
//!
//! Forward: `y = x / √(mean(x²) + ε) · w`, as candle's fused `rms_norm` computes it. Backward:
//! `dx = (w⊙g − x̂ · mean(w⊙g⊙x̂)) / rms` with `x̂ = x / rms`, where candle's graph of the
//! same takes some ten passes with a tensor each. A trainable scale is applied outside
//! (`norm(x, None)` times the variable), so candle gives the scale its gradient.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::{Chunks, Float, parallel_tasks, slice_of, with_slice};

/// Rows per task.
const ROWS_PER_TASK: usize = 16;

/// RMSNorm of `x` over its last axis, scaled by `weight` (a vector of that length) when given.
/// f32 or f64 on the CPU ([`super::fused_dtype`]); differentiable in `x`.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let hidden = x.dim(candle_core::D::Minus1)?;
    let weight = weight
        .map(|w| {
            if w.dims() != [hidden] {
                candle_core::bail!("rms norm: weight {:?} for {hidden} features", w.dims());
            }
            w.to_dtype(x.dtype())?.contiguous()
        })
        .transpose()?;
    x.contiguous()?.apply_op1(RmsNorm { weight, eps })
}

struct RmsNorm {
    weight: Option<Tensor>,
    eps: f64,
}

/// `1 / √(mean(row²) + ε)`.
fn inverse_rms<T: Float>(row: &[T], eps: T) -> T {
    let n = T::from_f64(row.len() as f64);
    T::one() / (T::dot(row, row) / n + eps).sqrt()
}

/// The forward on rows of `hidden` values; `weight` empty for no scale.
pub(super) fn forward_rows<T: Float>(x: &[T], weight: &[T], eps: f64, hidden: usize) -> Vec<T> {
    let eps = T::from_f64(eps);
    let mut out = vec![T::zero(); x.len()];
    let chunks = Chunks::new(&mut out, ROWS_PER_TASK * hidden);
    let rows = x.len() / hidden.max(1);
    parallel_tasks(rows.div_ceil(ROWS_PER_TASK), |task, _| {
        chunks.with(task, |out| {
            let first = task * ROWS_PER_TASK * hidden;
            for (o, row) in out.chunks_mut(hidden).zip(x[first..].chunks(hidden)) {
                let rms = T::one() / inverse_rms(row, eps);
                if weight.is_empty() {
                    for (o, &v) in o.iter_mut().zip(row) {
                        *o = v / rms;
                    }
                } else {
                    for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
                        *o = v / rms * w;
                    }
                }
            }
        });
    });
    out
}

/// The input's gradient for output gradient `grad`, plus `add` (the gradient arriving at `x`
/// by another path, a residual's) when given; `weight` empty for no scale.
pub(super) fn backward_rows<T: Float>(
    x: &[T],
    grad: &[T],
    (weight, eps): (&[T], f64),
    hidden: usize,
    add: Option<&[T]>,
) -> Vec<T> {
    let eps = T::from_f64(eps);
    let n = T::from_f64(hidden as f64);
    let mut dx = vec![T::zero(); x.len()];
    let chunks = Chunks::new(&mut dx, ROWS_PER_TASK * hidden);
    let rows = x.len() / hidden.max(1);
    parallel_tasks(rows.div_ceil(ROWS_PER_TASK), |task, _| {
        chunks.with(task, |dx| {
            let first = task * ROWS_PER_TASK * hidden;
            let rows = x[first..].chunks(hidden).zip(grad[first..].chunks(hidden));
            let mut wg = vec![T::zero(); hidden];
            for (r, (d, (row, g))) in dx.chunks_mut(hidden).zip(rows).enumerate() {
                let inverse = inverse_rms(row, eps);
                if weight.is_empty() {
                    wg.copy_from_slice(g);
                } else {
                    for ((o, &g), &w) in wg.iter_mut().zip(g).zip(weight) {
                        *o = g * w;
                    }
                }
                // mean(w⊙g⊙x̂) = (w⊙g)·x · inverse / n
                let mean = T::dot(&wg, row) * inverse / n;
                for ((d, &wg), &v) in d.iter_mut().zip(&wg).zip(row) {
                    *d = (wg - v * inverse * mean) * inverse;
                }
                if let Some(add) = add {
                    let at = first + r * hidden;
                    for (d, &a) in d.iter_mut().zip(&add[at..at + hidden]) {
                        *d += a;
                    }
                }
            }
        });
    });
    dx
}

impl RmsNorm {
    fn forward<T: Float>(&self, x: &[T], hidden: usize) -> Result<Vec<T>> {
        match &self.weight {
            Some(w) => with_slice::<T, _>(w, |w| Ok(forward_rows(x, w, self.eps, hidden))),
            None => Ok(forward_rows(x, &[], self.eps, hidden)),
        }
    }

    fn backward<T: Float>(&self, x: &[T], grad: &[T], hidden: usize) -> Result<Vec<T>> {
        match &self.weight {
            Some(w) => with_slice::<T, _>(w, |w| {
                Ok(backward_rows(x, grad, (w, self.eps), hidden, None))
            }),
            None => Ok(backward_rows(x, grad, (&[], self.eps), hidden, None)),
        }
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let hidden = layout.shape().dims().last().copied().unwrap_or(1);
        let out = match storage {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.forward::<f32>(slice_of(storage, layout)?, hidden)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.forward::<f64>(slice_of(storage, layout)?, hidden)?)
            }
            other => candle_core::bail!("rms norm takes f32 or f64, not {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let hidden = x.dim(candle_core::D::Minus1)?;
        let dx = match x.dtype() {
            DType::F32 => with_slice::<f32, _>(x, |xs| {
                with_slice::<f32, _>(grad, |g| {
                    Tensor::from_vec(self.backward(xs, g, hidden)?, x.shape(), x.device())
                })
            })?,
            DType::F64 => with_slice::<f64, _>(x, |xs| {
                with_slice::<f64, _>(grad, |g| {
                    Tensor::from_vec(self.backward(xs, g, hidden)?, x.shape(), x.device())
                })
            })?,
            other => candle_core::bail!("rms norm takes f32 or f64, not {other:?}"),
        };
        Ok(Some(dx))
    }
}
