//! The SwiGLU feed-forward network.

use candle_core::{D, Result, Tensor};

use super::kernels::linear::FrozenLinear;
use super::kernels::{fused_dtype, swiglu::swiglu};
use super::linear::{Param, linear};

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Param,
    pub up_proj: Param,
    pub down_proj: Param,
    /// gate and up prepared as one frozen product, and down
    /// ([`super::Block::prepare_frozen_linears`]).
    pub frozen_gate_up: Option<FrozenLinear>,
    pub frozen_down: Option<FrozenLinear>,
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
        let gate_up = match &self.frozen_gate_up {
            Some(frozen) => frozen.forward(x)?,
            None => Tensor::cat(
                &[linear(x, &self.gate_proj)?, linear(x, &self.up_proj)?],
                D::Minus1,
            )?,
        };
        let hidden = swiglu(&gate_up)?;
        match &self.frozen_down {
            Some(frozen) => frozen.forward_onto(residual, &hidden),
            None => residual + linear(&hidden, &self.down_proj)?,
        }
    }
}
