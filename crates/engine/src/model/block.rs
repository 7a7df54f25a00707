//! One transformer block: pre-norm attention and pre-norm MLP, each with a residual connection.

use candle_core::{Result, Tensor, Var};

use super::attention::{Attention, KvEntry};
use super::kernels::block::{FrozenBlock, Parts};
use super::linear::Param;
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::rope::Rotary;

/// The tensors of a block: the one declaration of their HF names (relative to
/// `model.layers.{i}.`), llama.cpp names, shapes and order, which loading, saving, shape checks,
/// surgery, plans and the GGUF reader all read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockTensor {
    InputNorm,
    QProj,
    KProj,
    VProj,
    OProj,
    PostAttentionNorm,
    GateProj,
    UpProj,
    DownProj,
}

impl BlockTensor {
    /// Every tensor of a block, in HF order.
    pub const ALL: [Self; 9] = [
        Self::InputNorm,
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::PostAttentionNorm,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    /// The HF name, relative to `model.layers.{i}.`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::InputNorm => "input_layernorm.weight",
            Self::QProj => "self_attn.q_proj.weight",
            Self::KProj => "self_attn.k_proj.weight",
            Self::VProj => "self_attn.v_proj.weight",
            Self::OProj => "self_attn.o_proj.weight",
            Self::PostAttentionNorm => "post_attention_layernorm.weight",
            Self::GateProj => "mlp.gate_proj.weight",
            Self::UpProj => "mlp.up_proj.weight",
            Self::DownProj => "mlp.down_proj.weight",
        }
    }

    /// The llama.cpp name, relative to `blk.{i}.`.
    #[must_use]
    pub const fn gguf_name(self) -> &'static str {
        match self {
            Self::InputNorm => "attn_norm.weight",
            Self::QProj => "attn_q.weight",
            Self::KProj => "attn_k.weight",
            Self::VProj => "attn_v.weight",
            Self::OProj => "attn_output.weight",
            Self::PostAttentionNorm => "ffn_norm.weight",
            Self::GateProj => "ffn_gate.weight",
            Self::UpProj => "ffn_up.weight",
            Self::DownProj => "ffn_down.weight",
        }
    }

    /// The tensor of a block-relative HF name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The block index and tensor of a full HF name, `model.layers.{i}.{name}`.
    #[must_use]
    pub fn of_model_name(name: &str) -> Option<(usize, Self)> {
        let (idx, part) = name.strip_prefix("model.layers.")?.split_once('.')?;
        Some((idx.parse().ok()?, Self::from_name(part)?))
    }

    /// The tensor of a block-relative llama.cpp name.
    #[must_use]
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.gguf_name() == name)
    }

    /// Whether it is a norm's scale (a vector; the rest are matrices).
    #[must_use]
    pub const fn is_norm(self) -> bool {
        matches!(self, Self::InputNorm | Self::PostAttentionNorm)
    }

    /// Its shape under `config`, as HF stores it (`[out, in]` for projections).
    #[must_use]
    pub fn shape(self, config: &crate::config::LlamaConfig) -> Vec<usize> {
        let h = config.hidden_size;
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        let i = config.intermediate_size;
        match self {
            Self::InputNorm | Self::PostAttentionNorm => vec![h],
            Self::QProj => vec![q, h],
            Self::KProj | Self::VProj => vec![kv, h],
            Self::OProj => vec![h, q],
            Self::GateProj | Self::UpProj => vec![i, h],
            Self::DownProj => vec![h, i],
        }
    }
}

/// The block-relative HF names in HF order (from [`BlockTensor`]).
pub const BLOCK_TENSORS: [&str; 9] = [
    BlockTensor::InputNorm.name(),
    BlockTensor::QProj.name(),
    BlockTensor::KProj.name(),
    BlockTensor::VProj.name(),
    BlockTensor::OProj.name(),
    BlockTensor::PostAttentionNorm.name(),
    BlockTensor::GateProj.name(),
    BlockTensor::UpProj.name(),
    BlockTensor::DownProj.name(),
];

#[derive(Clone, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
    /// The block prepared for the CPU's fused kernels, when every weight is frozen
    /// ([`Block::prepare_frozen_linears`]); dropped whenever a parameter is replaced.
    frozen: Option<FrozenBlock>,
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
        let (_, t, _) = x.dims3()?;
        if let Some(frozen) = &self.frozen
            && offset == 0
            && cache.is_none()
            && super::kernels::fused_dtype(x)
        {
            let (cos, sin) = rotary.tables(0, t)?;
            return frozen.forward(x, (&cos, &sin));
        }
        let normed = self.input_layernorm.forward(x)?;
        let h = self
            .self_attn
            .forward(x, &normed, rotary, offset, mask, cache)?;
        let m = self.post_attention_layernorm.forward(&h)?;
        self.mlp.forward(&h, &m)
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

    /// Builds a block from its parameters, each asked for by its [`BlockTensor`].
    pub fn load<E>(
        config: &crate::config::LlamaConfig,
        mut get: impl FnMut(BlockTensor) -> std::result::Result<Param, E>,
    ) -> std::result::Result<Self, E> {
        Ok(Self {
            input_layernorm: RmsNorm {
                weight: get(BlockTensor::InputNorm)?,
                eps: config.rms_norm_eps,
            },
            self_attn: Attention {
                q_proj: get(BlockTensor::QProj)?,
                k_proj: get(BlockTensor::KProj)?,
                v_proj: get(BlockTensor::VProj)?,
                o_proj: get(BlockTensor::OProj)?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
            },
            post_attention_layernorm: RmsNorm {
                weight: get(BlockTensor::PostAttentionNorm)?,
                eps: config.rms_norm_eps,
            },
            mlp: Mlp {
                gate_proj: get(BlockTensor::GateProj)?,
                up_proj: get(BlockTensor::UpProj)?,
                down_proj: get(BlockTensor::DownProj)?,
            },
            frozen: None,
        })
    }

    /// The parameter holding tensor `t`.
    #[must_use]
    pub fn param(&self, t: BlockTensor) -> &Param {
        match t {
            BlockTensor::InputNorm => &self.input_layernorm.weight,
            BlockTensor::QProj => &self.self_attn.q_proj,
            BlockTensor::KProj => &self.self_attn.k_proj,
            BlockTensor::VProj => &self.self_attn.v_proj,
            BlockTensor::OProj => &self.self_attn.o_proj,
            BlockTensor::PostAttentionNorm => &self.post_attention_layernorm.weight,
            BlockTensor::GateProj => &self.mlp.gate_proj,
            BlockTensor::UpProj => &self.mlp.up_proj,
            BlockTensor::DownProj => &self.mlp.down_proj,
        }
    }

    /// The parameter holding tensor `t`, to replace or make trainable (the block's prepared
    /// frozen products are dropped: they would no longer match).
    pub fn param_mut(&mut self, t: BlockTensor) -> &mut Param {
        self.drop_prepared();
        match t {
            BlockTensor::InputNorm => &mut self.input_layernorm.weight,
            BlockTensor::QProj => &mut self.self_attn.q_proj,
            BlockTensor::KProj => &mut self.self_attn.k_proj,
            BlockTensor::VProj => &mut self.self_attn.v_proj,
            BlockTensor::OProj => &mut self.self_attn.o_proj,
            BlockTensor::PostAttentionNorm => &mut self.post_attention_layernorm.weight,
            BlockTensor::GateProj => &mut self.mlp.gate_proj,
            BlockTensor::UpProj => &mut self.mlp.up_proj,
            BlockTensor::DownProj => &mut self.mlp.down_proj,
        }
    }

    /// Prepares the block for the CPU's fused kernels (see
    /// [`crate::model::Llama::prepare_frozen_linears`]) when every weight is frozen, dense and
    /// on the CPU; returns whether it did.
    pub fn prepare_frozen_linears(&mut self) -> Result<bool> {
        let dense: Option<Vec<&candle_core::Tensor>> = BlockTensor::ALL
            .iter()
            .map(|&t| match self.param(t) {
                Param::Frozen(w) if w.device().is_cpu() => Some(w),
                _ => None,
            })
            .collect();
        let Some(w) = dense else {
            self.frozen = None;
            return Ok(false);
        };
        // In `BlockTensor::ALL` order: the input norm, q, k, v, o, the post-attention norm,
        // gate, up, down.
        self.frozen = Some(FrozenBlock::new(&Parts {
            input_norm: w[0],
            post_attention_norm: w[5],
            eps: self.input_layernorm.eps,
            projections: [w[1], w[2], w[3], w[4], w[6], w[7], w[8]],
            heads: self.self_attn.num_heads,
            kv_heads: self.self_attn.num_kv_heads,
            head_dim: self.self_attn.head_dim,
        })?);
        Ok(true)
    }

    fn drop_prepared(&mut self) {
        self.frozen = None;
    }

    /// Whether the block is prepared for the CPU's fused kernels.
    #[must_use]
    pub fn is_prepared(&self) -> bool {
        self.frozen.is_some()
    }

    /// The block's parameters with their tensors, in HF order.
    #[must_use]
    pub fn params(&self) -> [(BlockTensor, &Param); 9] {
        BlockTensor::ALL.map(|t| (t, self.param(t)))
    }

    /// Whether any parameter of this block is trainable.
    #[must_use]
    pub fn is_trainable(&self) -> bool {
        BlockTensor::ALL
            .iter()
            .any(|t| self.param(*t).is_trainable())
    }

    /// Makes every parameter trainable (copying) or frozen (sharing storage).
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        for t in BlockTensor::ALL {
            let p = self.param_mut(t);
            *p = if trainable {
                p.trainable()?
            } else {
                p.frozen()
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// The one declaration agrees with itself (names read back, llama.cpp names too) and with a
    /// model built from it: every parameter has the shape the schema gives it.
    #[test]
    fn the_block_schema_names_and_shapes_every_parameter() {
        let config = crate::model::random::tiny_config();
        let model = crate::model::random::llama(
            &config,
            1,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        for t in BlockTensor::ALL {
            assert_eq!(BlockTensor::from_name(t.name()), Some(t));
            assert_eq!(BlockTensor::from_gguf_name(t.gguf_name()), Some(t));
            assert_eq!(
                BlockTensor::of_model_name(&format!("model.layers.3.{}", t.name())),
                Some((3, t))
            );
            for block in &model.blocks {
                assert_eq!(block.param(t).dims(), t.shape(&config), "{t:?}");
            }
        }
        for (name, p) in model.named_params() {
            assert_eq!(
                crate::model::Llama::expected_shape(&config, &name).as_deref(),
                Some(p.dims()),
                "{name}"
            );
        }
        assert_eq!(
            model.named_params().len(),
            crate::model::Llama::tensor_names(&config).len()
        );
    }
}
