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
        if !self.weight.is_trainable() {
            if !x.track_op() && x.dtype() == DType::F32 {
                // The fused kernel has no backward; only valid with nothing to differentiate.
                return candle_nn::ops::rms_norm(&x.contiguous()?, w, self.eps as f32);
            }
            return super::autograd::rms_norm_frozen(x, w, self.eps);
        }
        let dtype = x.dtype();
        let wide = x.to_dtype(super::autograd::wide(dtype))?;
        let var = wide.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = wide.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(w)
    }
}
