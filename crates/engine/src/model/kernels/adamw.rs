//! AdamW's update in place on the CPU: three passes over a tensor (the first moment, the
//! second, the weight) instead of candle's sixteen, each writing into the tensor it updates
//! rather than allocating a new one.
//!
//! The arithmetic is the one [`crate::train::AdamW`] documents (PyTorch's arrangement: the
//! gradient scale folded into the moments' coefficients, the bias corrections into one step
//! factor), element by element in the tensor's dtype, with coefficients rounded to it as
//! candle's scalar ops round them.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};

use super::{Chunks, Float, parallel_tasks, slice_of};

/// Elements per task.
const CHUNK: usize = 1 << 15;

/// The coefficients of one step for one tensor.
#[derive(Clone, Copy, Debug)]
pub struct Coefficients {
    /// β₁ and `(1 − β₁)·scale`: m ← β₁·m + (1 − β₁)·scale·g.
    pub beta1: f64,
    pub grad1: f64,
    /// β₂ and `(1 − β₂)·scale²`: v ← β₂·v + (1 − β₂)·scale²·g².
    pub beta2: f64,
    pub grad2: f64,
    /// `lr·√c₂/c₁` and `ε·√c₂`: the step is m·step / (√v + eps).
    pub step: f64,
    pub eps: f64,
    /// `1 − lr·decay`: the weight's factor before the step.
    pub keep: f64,
}

/// Updates `m`, `v` and `weight` (contiguous, each its own storage, one dtype, f32 or f64, on
/// the CPU) in place with gradient `grad`; returns ‖Δw‖² when `update_norm` (else 0).
pub fn step(
    weight: &Tensor,
    (m, v): (&Tensor, &Tensor),
    grad: &Tensor,
    c: Coefficients,
    update_norm: bool,
) -> Result<f64> {
    let grad = grad.to_dtype(weight.dtype())?.contiguous()?;
    m.inplace_op2(
        &grad,
        &Moment {
            decay: c.beta1,
            coefficient: c.grad1,
            squared: false,
        },
    )?;
    v.inplace_op2(
        &grad,
        &Moment {
            decay: c.beta2,
            coefficient: c.grad2,
            squared: true,
        },
    )?;
    let update = Update {
        c,
        with_norm: update_norm,
        sum: Mutex::new(0.0),
    };
    weight.inplace_op3(m, v, &update)?;
    Ok(update
        .sum
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn range(layout: &Layout) -> Result<std::ops::Range<usize>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(start..end),
        None => candle_core::bail!("adamw: a tensor is not contiguous"),
    }
}

/// `moment ← decay·moment + coefficient·g` (or `g²`).
struct Moment {
    decay: f64,
    coefficient: f64,
    squared: bool,
}

impl Moment {
    fn apply<T: Float>(&self, moment: &mut [T], grad: &[T]) -> Result<()> {
        if moment.len() != grad.len() {
            candle_core::bail!(
                "adamw: {} moments for {} gradients",
                moment.len(),
                grad.len()
            );
        }
        let (decay, coefficient) = (T::from_f64(self.decay), T::from_f64(self.coefficient));
        let chunks = Chunks::new(moment, CHUNK);
        parallel_tasks(grad.len().div_ceil(CHUNK), |i, _| {
            chunks.with(i, |m| {
                let g = &grad[i * CHUNK..][..m.len()];
                if self.squared {
                    for (m, &g) in m.iter_mut().zip(g) {
                        *m = *m * decay + g * g * coefficient;
                    }
                } else {
                    for (m, &g) in m.iter_mut().zip(g) {
                        *m = *m * decay + g * coefficient;
                    }
                }
            });
        });
        Ok(())
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let r = range(l1)?;
        match s1 {
            CpuStorage::F32(m) => self.apply(&mut m[r], slice_of::<f32>(s2, l2)?),
            CpuStorage::F64(m) => self.apply(&mut m[r], slice_of::<f64>(s2, l2)?),
            other => candle_core::bail!("adamw takes f32 or f64, not {:?}", other.dtype()),
        }
    }
}

/// `w ← keep·w − step·m / (√v + eps)`, summing `(Δw)²` when asked.
struct Update {
    c: Coefficients,
    with_norm: bool,
    sum: Mutex<f64>,
}

impl Update {
    fn apply<T: Float>(&self, weight: &mut [T], m: &[T], v: &[T]) -> Result<()> {
        if weight.len() != m.len() || weight.len() != v.len() {
            candle_core::bail!(
                "adamw: {} weights for {} and {} moments",
                weight.len(),
                m.len(),
                v.len()
            );
        }
        let c = self.c;
        let (step, eps, keep) = (T::from_f64(c.step), T::from_f64(c.eps), T::from_f64(c.keep));
        let chunks = Chunks::new(weight, CHUNK);
        parallel_tasks(m.len().div_ceil(CHUNK), |i, _| {
            let sum = chunks.with(i, |w| {
                let (m, v) = (&m[i * CHUNK..][..w.len()], &v[i * CHUNK..][..w.len()]);
                let mut sum = 0f64;
                for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                    let new = *w * keep - m * step / (v.sqrt() + eps);
                    if self.with_norm {
                        sum += (new - *w).to_f64().powi(2);
                    }
                    *w = new;
                }
                sum
            });
            if self.with_norm {
                *self
                    .sum
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) += sum;
            }
        });
        Ok(())
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let r = range(l1)?;
        match s1 {
            CpuStorage::F32(w) => self.apply(
                &mut w[r],
                slice_of::<f32>(s2, l2)?,
                slice_of::<f32>(s3, l3)?,
            ),
            CpuStorage::F64(w) => self.apply(
                &mut w[r],
                slice_of::<f64>(s2, l2)?,
                slice_of::<f64>(s3, l3)?,
            ),
            other => candle_core::bail!("adamw takes f32 or f64, not {:?}", other.dtype()),
        }
    }
}
