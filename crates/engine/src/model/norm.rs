//! RMSNorm, computed in f32 as HF does (normalise, cast, scale), with the hand-written backward of
//! `autograd` when anything is differentiated.

use candle_core::{DType, Result, Tensor};

use super::linear::Param;

/// Root-mean-square layer norm with a learned scale.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = &self.weight.dense()?;
        if !self.weight.is_trainable() {
            if !x.track_op() && x.dtype() == DType::F32 {
                // The fused kernel has no backward; only valid with nothing to differentiate.
                return candle_nn::ops::rms_norm(&x.contiguous()?, w, self.eps as f32);
            }
            return super::autograd::rms_norm_frozen(x, w, self.eps);
        }
        // Trainable: the normalisation keeps only `x`; candle's product gives the weight's
        // gradient.
        super::autograd::rms_unit(x, self.eps)?.broadcast_mul(w)
    }
}
