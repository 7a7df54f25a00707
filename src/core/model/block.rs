//! One transformer block: pre-norm attention and pre-norm MLP, each with a residual connection.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor, Var};

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
    /// intermediates (attention's seq × seq scores above all) for the length of the step.
    pub fn forward_recomputed(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        debug_assert!(!self.is_trainable(), "only frozen blocks are recomputed");
        let y = self.forward(&x.detach(), rotary, 0, mask, None)?;
        x.apply_op2(
            &y,
            Recompute {
                block: self.clone(),
                rotary: rotary.clone(),
                mask: mask.cloned(),
            },
        )
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

/// The node [`Block::forward_recomputed`] puts in the graph: inputs (x, y) where y is the block's
/// output computed without a graph; forward copies y, backward recomputes the block from x.
struct Recompute {
    block: Block,
    rotary: Rotary,
    mask: Option<Tensor>,
}

/// A contiguous copy of `s` as laid out by `l` (the op's output must own its storage).
fn copy_of<S>(s: &S, l: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let mut out = s.device().zeros_impl(l.shape(), s.dtype())?;
    s.copy_strided_src(&mut out, 0, l)?;
    Ok((out, l.shape().clone()))
}

impl CustomOp2 for Recompute {
    fn name(&self) -> &'static str {
        "recompute-block"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _xl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_of(y, yl)
    }

    fn cuda_fwd(
        &self,
        _x: &CudaStorage,
        _xl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        copy_of(y, yl)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let input = Var::from_tensor(x)?;
        let out =
            self.block
                .forward(input.as_tensor(), &self.rotary, 0, self.mask.as_ref(), None)?;
        // d/d(out) of sum(out * grad) is grad: backward of this surrogate yields grad's J^T.
        let grads = (out * grad.detach())?.sum_all()?.backward()?;
        Ok((grads.get(input.as_tensor()).cloned(), None))
    }
}
