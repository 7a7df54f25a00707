//! RMSNorm, computed in f32 as HF does, differentiable when anything is trainable.

use candle_core::{D, DType, Result, Tensor};

use super::linear::Param;

/// Root-mean-square layer norm with a learned scale.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.tensor();
        if !x.track_op() && !self.weight.is_trainable() && x.dtype() == DType::F32 {
            // The fused kernel has no backward; only valid with nothing to differentiate.
            return candle_nn::ops::rms_norm(&x.contiguous()?, w, self.eps as f32);
        }
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(w)
    }
}
