//! One transformer block: pre-norm attention and pre-norm MLP, each with a residual connection.

use candle_core::{Result, Tensor, Var};

use super::attention::{Attention, KvEntry};
use super::linear::Param;
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::rope::Rotary;

/// The tensor names of a block, relative to `model.layers.{i}.`, in HF order.
pub const BLOCK_TENSORS: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

#[derive(Clone, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut KvEntry>,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let h = (x + self.self_attn.forward(&h, rotary, offset, mask, cache)?)?;
        let m = self.post_attention_layernorm.forward(&h)?;
        &h + self.mlp.forward(&m)?
    }

    /// Forward of a frozen block whose input is differentiated (a trainable block sits below),
    /// keeping for backward nothing but its input: backward runs the block again, this time
    /// with a graph, and takes dX from it. One more forward of the block buys back all its
    /// intermediates (norms, q/k/v, the MLP's four wide tensors) for the length of the step.
    pub fn forward_recomputed(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        debug_assert!(!self.is_trainable(), "only frozen blocks are recomputed");
        let y = self.forward(&x.detach(), rotary, 0, mask, None)?;
        let (block, rotary, mask) = (self.clone(), rotary.clone(), mask.cloned());
        super::autograd::attach(x, y, move |x, _, grad| {
            let input = Var::from_tensor(x)?;
            let out = block.forward(input.as_tensor(), &rotary, 0, mask.as_ref(), None)?;
            // d/d(out) of sum(out ⊙ grad) is grad: this surrogate's backward yields Jᵀ·grad.
            let grads = (out * grad.detach())?.sum_all()?.backward()?;
            grads.get(input.as_tensor()).cloned().ok_or_else(|| {
                candle_core::Error::Msg("recomputed block: no gradient reached its input".into())
            })
        })
    }

    /// The block's parameters paired with their names relative to `model.layers.{i}.`.
    #[must_use]
    pub fn params(&self) -> [(&'static str, &Param); 9] {
        [
            (BLOCK_TENSORS[0], &self.input_layernorm.weight),
            (BLOCK_TENSORS[1], &self.self_attn.q_proj),
            (BLOCK_TENSORS[2], &self.self_attn.k_proj),
            (BLOCK_TENSORS[3], &self.self_attn.v_proj),
            (BLOCK_TENSORS[4], &self.self_attn.o_proj),
            (BLOCK_TENSORS[5], &self.post_attention_layernorm.weight),
            (BLOCK_TENSORS[6], &self.mlp.gate_proj),
            (BLOCK_TENSORS[7], &self.mlp.up_proj),
            (BLOCK_TENSORS[8], &self.mlp.down_proj),
        ]
    }

    /// Mutable access to every parameter, in [`BLOCK_TENSORS`] order.
    pub fn params_mut(&mut self) -> [&mut Param; 9] {
        [
            &mut self.input_layernorm.weight,
            &mut self.self_attn.q_proj,
            &mut self.self_attn.k_proj,
            &mut self.self_attn.v_proj,
            &mut self.self_attn.o_proj,
            &mut self.post_attention_layernorm.weight,
            &mut self.mlp.gate_proj,
            &mut self.mlp.up_proj,
            &mut self.mlp.down_proj,
        ]
    }

    /// Whether any parameter of this block is trainable.
    #[must_use]
    pub fn is_trainable(&self) -> bool {
        self.params().iter().any(|(_, p)| p.is_trainable())
    }

    /// Makes every parameter trainable (copying) or frozen (sharing storage).
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        for p in self.params_mut() {
            *p = if trainable {
                p.trainable()?
            } else {
                p.frozen()
            };
        }
        Ok(())
    }
}
