//! Parameters (frozen tensor, trainable `Var`, or quantised matrix for inference) and the
//! bias-free linear layer.
//!
//! candle's matmul backward computes the gradient of both operands unconditionally, so a frozen
//! weight above a trainable block would cost a wasted dW matmul and buffer per step.
//! `FrozenMatmul` is a custom op with the same forward whose backward yields only dX.

#[cfg(feature = "reference-matmul")]
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor, Var};

use super::quant::QuantizedWeight;

/// A weight: a plain tensor (frozen, never tracked by autograd), a trainable variable, or a
/// matrix quantised for inference ([`super::quant`]; frozen too).
#[derive(Clone, Debug)]
pub enum Param {
    Frozen(Tensor),
    Trainable(Var),
    Quantized(QuantizedWeight),
}

impl Param {
    /// The current value as a dense tensor: shared storage for a frozen or trainable weight,
    /// a dequantised f32 copy for a quantised one (exports and surgery read it; inference reads
    /// a quantised weight through [`linear`] and [`Param::rows`]).
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            Self::Frozen(t) => Ok(t.clone()),
            Self::Trainable(v) => Ok(v.as_tensor().clone()),
            Self::Quantized(q) => q.dequantize(&candle_core::Device::Cpu),
        }
    }

    /// Whether autograd tracks this weight.
    #[must_use]
    pub fn is_trainable(&self) -> bool {
        matches!(self, Self::Trainable(_))
    }

    /// The value's dimensions.
    #[must_use]
    pub fn dims(&self) -> &[usize] {
        match self {
            Self::Frozen(t) => t.dims(),
            Self::Trainable(v) => v.as_tensor().dims(),
            Self::Quantized(q) => q.shape().dims(),
        }
    }

    /// Number of values.
    #[must_use]
    pub fn elem_count(&self) -> usize {
        self.dims().iter().product()
    }

    /// Rows `ids` of the matrix, shaped `(ids..., columns)`: the embedding lookup.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let w = match self {
            Self::Quantized(q) => return q.rows(ids),
            Self::Frozen(t) => t,
            Self::Trainable(v) => v.as_tensor(),
        };
        let mut dims = ids.dims().to_vec();
        dims.push(w.dim(1)?);
        w.index_select(&ids.flatten_all()?, 0)?.reshape(dims)
    }

    /// The same value, frozen (shares storage; a quantised weight stays as it is).
    #[must_use]
    pub fn frozen(&self) -> Self {
        match self {
            Self::Frozen(t) => Self::Frozen(t.detach()),
            Self::Trainable(v) => Self::Frozen(v.as_tensor().detach()),
            Self::Quantized(q) => Self::Quantized(q.clone()),
        }
    }

    /// The same value as a fresh trainable variable (copies the data, so the original is never
    /// mutated by an optimizer). A quantised weight is refused: training it would train its
    /// rounding error (quantise after training, for inference).
    pub fn trainable(&self) -> Result<Self> {
        match self {
            Self::Frozen(t) => Ok(Self::Trainable(Var::from_tensor(t)?)),
            Self::Trainable(v) => Ok(Self::Trainable(Var::from_tensor(v.as_tensor())?)),
            Self::Quantized(q) => candle_core::bail!(
                "a {} quantised weight cannot be trained (quantisation is for inference)",
                super::quant::format_name(q.format())
            ),
        }
    }

    /// The variable, when trainable.
    #[must_use]
    pub fn var(&self) -> Option<&Var> {
        match self {
            Self::Trainable(v) => Some(v),
            Self::Frozen(_) | Self::Quantized(_) => None,
        }
    }

    /// Whether the weight is quantised.
    #[must_use]
    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quantized(_))
    }
}

/// `x @ w^T` for a weight `w` of shape (out, in); `x` of shape (..., in).
pub fn linear(x: &Tensor, w: &Param) -> Result<Tensor> {
    match w {
        // f32 or f64 on the CPU: on candle's pool, each gradient only where it is needed.
        Param::Trainable(v) if super::kernels::fused_dtype(x) && !plain_frozen_matmul() => {
            super::kernels::linear::linear(x, v.as_tensor())
        }
        Param::Frozen(w) if super::kernels::fused_dtype(x) && !plain_frozen_matmul() => {
            super::kernels::linear::linear(x, w)
        }
        Param::Trainable(v) => x.broadcast_matmul(&v.as_tensor().t()?),
        Param::Frozen(w) => frozen_linear(x, w),
        // candle's quantised matmul has no backward: a graph through it would lose dX silently.
        Param::Quantized(_) if x.track_op() => {
            candle_core::bail!("a quantised weight cannot sit above a trainable one")
        }
        Param::Quantized(q) => q.forward(x),
    }
}

/// When set, frozen linears use candle's plain matmul (which also computes dW): for measuring
/// what the dX-only op saves (`bench/train_step.rs`). Only in builds with the
/// `reference-matmul` feature, so normal builds do not read it on the hot path.
#[cfg(feature = "reference-matmul")]
pub static PLAIN_FROZEN_MATMUL: AtomicBool = AtomicBool::new(false);

/// Whether the reference matmul is asked for (never, without the feature).
fn plain_frozen_matmul() -> bool {
    #[cfg(feature = "reference-matmul")]
    return PLAIN_FROZEN_MATMUL.load(Ordering::Relaxed);
    #[cfg(not(feature = "reference-matmul"))]
    false
}

fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.track_op() || plain_frozen_matmul() {
        // Nothing upstream is trainable: no graph is recorded, the plain matmul is exact.
        return x.broadcast_matmul(&w.t()?);
    }
    let dims = x.dims();
    let (in_features, lead) = match dims.split_last() {
        Some((k, lead)) => (*k, lead.to_vec()),
        None => candle_core::bail!("linear: scalar input"),
    };
    let rows: usize = lead.iter().product();
    let x2 = x.reshape((rows, in_features))?;
    let y = x2.apply_op2(w, FrozenMatmul)?;
    let mut out_dims = lead;
    out_dims.push(w.dim(0)?);
    y.reshape(out_dims)
}

/// Forward of `x @ w^T` on raw storage (2-D `x`, 2-D `w`).
struct FrozenMatmul;

fn matmul_storage<S: BackendStorage>(
    s1: &S,
    l1: &Layout,
    s2: &S,
    l2: &Layout,
) -> Result<(S, Shape)> {
    let (m, k) = l1.shape().dims2()?;
    let (n, k2) = l2.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("frozen linear: input has {k} features, weight expects {k2}");
    }
    let wt = l2.transpose(0, 1)?;
    let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
    Ok((out, Shape::from((m, n))))
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        matmul_storage(s1, l1, s2, l2)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        matmul_storage(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dX = dY @ W; the weight is frozen, so its gradient is neither computed nor stored.
        Ok((Some(grad.matmul(w)?), None))
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "bit-identical results are the point")]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn frozen_linear_matches_plain_matmul_and_its_input_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let x0 = Tensor::randn(0f32, 1.0, (2, 4, 3), &dev).unwrap();
        let xa = Var::from_tensor(&x0).unwrap();
        let xb = Var::from_tensor(&x0).unwrap();
        let ya = linear(xa.as_tensor(), &Param::Frozen(w.clone())).unwrap();
        let wt = w.t().unwrap();
        let yb = xb.as_tensor().broadcast_matmul(&wt).unwrap();
        let diff = (&ya - &yb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
        let ga = ya.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gb = yb.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(&xa).unwrap(), gb.get(&xb).unwrap());
        let diff = (ga - gb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        // The plain matmul computed and stored a gradient for the frozen weight; ours did not.
        let ga_all = ya.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(ga_all.get(&w).is_none());
        assert!(
            yb.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(&wt)
                .is_some()
        );
    }
}
