//! The SwiGLU feed-forward network.

use candle_core::{D, Result, Tensor};

use super::kernels::{fused_dtype, swiglu::swiglu};
use super::linear::{Param, linear};

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Param,
    pub up_proj: Param,
    pub down_proj: Param,
}

impl Mlp {
    /// `residual + mlp(x)`.
    pub fn forward(&self, residual: &Tensor, x: &Tensor) -> Result<Tensor> {
        if !fused_dtype(x) {
            let gate = linear(x, &self.gate_proj)?.silu()?;
            let up = linear(x, &self.up_proj)?;
            return residual + linear(&(gate * up)?, &self.down_proj)?;
        }
        // f32 or f64 on the CPU: gate and up side by side into the fused kernel.
        let gate_up = Tensor::cat(
            &[linear(x, &self.gate_proj)?, linear(x, &self.up_proj)?],
            D::Minus1,
        )?;
        residual + linear(&swiglu(&gate_up)?, &self.down_proj)?
    }
}
