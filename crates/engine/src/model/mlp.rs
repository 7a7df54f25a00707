//! The SwiGLU feed-forward network.

use candle_core::{Result, Tensor};

use super::linear::{Param, linear};

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Param,
    pub up_proj: Param,
    pub down_proj: Param,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = linear(x, &self.gate_proj)?.silu()?;
        let up = linear(x, &self.up_proj)?;
        linear(&(gate * up)?, &self.down_proj)
    }
}
