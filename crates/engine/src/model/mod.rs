//! Our own Llama-family network: config-driven, blocks in an editable list, every op
//! differentiable when a trainable weight is involved, fused kernels where nothing is.
//!
//! One module serves training, evaluation, importance and generation. Frozen weights are plain
//! tensors; trainable ones are `Var`s; for inference the matrices can be quantised
//! ([`Llama::quantize`], [`quant`]) (see [`linear::Param`]).

pub mod attention;
pub mod autograd;
pub mod block;
pub mod kernels;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod op_check;
pub mod q8;
pub mod quant;
pub mod rope;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::config::LlamaConfig;
pub use attention::{Attention, KvEntry, causal_mask};
pub use block::{BLOCK_TENSORS, Block, BlockTensor};
pub use linear::{Param, linear};
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use quant::{Quant, QuantSummary, QuantizedWeight};
pub use rope::Rotary;

/// A Llama-family causal language model.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Param,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<Param>,
    /// Recompute frozen blocks above a trainable one in backward instead of keeping their
    /// activations ([`Block::forward_recomputed`]); training only.
    pub recompute: bool,
    rotary: Rotary,
    dtype: DType,
    device: Device,
    /// What [`Llama::quantize`] made of the matrices (`None` until then).
    quant: Quant,
}

/// Per-block key/value caches for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    entries: Vec<KvEntry>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `blocks` blocks.
    #[must_use]
    pub fn new(blocks: usize) -> Self {
        Self {
            entries: vec![None; blocks],
            len: 0,
        }
    }

    /// Number of positions cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache of a batch of one, repeated `n` times along the batch axis: `n` sequences
    /// continuing the same prefix.
    pub fn repeat_batch(&self, n: usize) -> Result<Self> {
        let repeat = |t: &Tensor| t.repeat((n, 1, 1, 1));
        let entries = self
            .entries
            .iter()
            .map(|e| match e {
                Some((k, v)) => Ok(Some((repeat(k)?, repeat(v)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            entries,
            len: self.len,
        })
    }
}

impl Llama {
    /// Assembles a model from its parts. `get` returns each HF-named tensor already on `device`
    /// in `dtype` and with a checked shape.
    pub fn from_tensors(
        config: LlamaConfig,
        dtype: DType,
        device: &Device,
        mut get: impl FnMut(&str) -> crate::error::Result<Tensor>,
    ) -> crate::error::Result<Self> {
        let frozen = |t: Tensor| Param::Frozen(t);
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            blocks.push(Block::load(&config, |t| {
                get(&format!("model.layers.{i}.{}", t.name())).map(frozen)
            })?);
        }
        let embed_tokens = frozen(get("model.embed_tokens.weight")?);
        let norm = RmsNorm {
            weight: frozen(get("model.norm.weight")?),
            eps: config.rms_norm_eps,
        };
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(frozen(get("lm_head.weight")?))
        };
        let rotary = Rotary::new(&config, dtype, device)?;
        Ok(Self {
            config,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            recompute: false,
            rotary,
            dtype,
            device: device.clone(),
            quant: Quant::None,
        })
    }

    /// The shape HF gives each named tensor under `config`, or `None` for a name that is not
    /// part of the model.
    #[must_use]
    pub fn expected_shape(config: &LlamaConfig, name: &str) -> Option<Vec<usize>> {
        match name {
            "model.embed_tokens.weight" | "lm_head.weight" => {
                return Some(vec![config.vocab_size, config.hidden_size]);
            }
            "model.norm.weight" => return Some(vec![config.hidden_size]),
            _ => {}
        }
        let (idx, tensor) = BlockTensor::of_model_name(name)?;
        (idx < config.num_hidden_layers).then(|| tensor.shape(config))
    }

    /// Every tensor name the model needs under `config`, in HF order.
    #[must_use]
    pub fn tensor_names(config: &LlamaConfig) -> Vec<String> {
        let mut names = vec!["model.embed_tokens.weight".to_string()];
        for i in 0..config.num_hidden_layers {
            names.extend(
                BlockTensor::ALL
                    .iter()
                    .map(|t| format!("model.layers.{i}.{}", t.name())),
            );
        }
        names.push("model.norm.weight".into());
        if !config.tie_word_embeddings {
            names.push("lm_head.weight".into());
        }
        names
    }

    #[must_use]
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Positions the model can attend over.
    #[must_use]
    pub fn max_positions(&self) -> usize {
        self.rotary.max_positions()
    }

    /// The quantisation of the matrices for inference (`Quant::None`: dense).
    #[must_use]
    pub fn quant(&self) -> Quant {
        self.quant
    }

    /// Keeps `config.num_hidden_layers` equal to the block list after surgery.
    pub fn sync_config(&mut self) {
        self.config.num_hidden_layers = self.blocks.len();
    }

    /// Residual stream after the last block, before the final norm: (batch, seq, hidden).
    /// With `cache`, `ids` continue the cached positions.
    pub fn forward_hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if offset + t > self.max_positions() {
            candle_core::bail!(
                "sequence of {} positions exceeds the model's {} positions",
                offset + t,
                self.max_positions()
            );
        }
        let x = self.embed_tokens.rows(ids)?.to_dtype(self.dtype)?;
        let mask = self.causal_mask(t, offset, cache.is_some())?;
        let mut x = x;
        for (i, block) in self.blocks.iter().enumerate() {
            if self.recompute && cache.is_none() && x.track_op() && !block.is_trainable() {
                x = block.forward_recomputed(&x, &self.rotary, mask.as_ref())?;
                continue;
            }
            let entry = cache.as_deref_mut().map(|c| &mut c.entries[i]);
            x = block.forward(&x, &self.rotary, offset, mask.as_ref(), entry)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok(x)
    }

    /// The causal mask the blocks share for `t` positions after `offset` (with or without a
    /// cache): none for a single token, which attends to everything before it, nor for a whole
    /// uncached sequence the fused CPU kernel takes, which masks as it goes.
    fn causal_mask(&self, t: usize, offset: usize, cached: bool) -> Result<Option<Tensor>> {
        let fused = offset == 0 && !cached && kernels::fused(&self.device, self.dtype);
        if t <= 1 || fused {
            return Ok(None);
        }
        causal_mask(t, offset, self.dtype, &self.device).map(Some)
    }

    /// The residual stream entering every block plus the output of the last one (before the final
    /// norm): `blocks + 1` tensors of shape (batch, seq, hidden).
    pub fn residual_states(&self, ids: &Tensor) -> Result<Vec<Tensor>> {
        let t = ids.dim(1)?;
        let mut x = self.embed_tokens.rows(ids)?.to_dtype(self.dtype)?;
        let mask = self.causal_mask(t, 0, false)?;
        let mut states = Vec::with_capacity(self.blocks.len() + 1);
        for block in &self.blocks {
            states.push(x.clone());
            x = block.forward(&x, &self.rotary, 0, mask.as_ref(), None)?;
        }
        states.push(x);
        Ok(states)
    }

    /// Logits from residual-stream states (applies the final norm and the head).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(hidden)?;
        linear(&normed, self.lm_head.as_ref().unwrap_or(&self.embed_tokens))
    }

    /// Full-sequence forward: logits for every position, (batch, seq, vocab).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(&self.forward_hidden(ids, None)?)
    }

    /// Incremental forward for generation: appends `ids` to `cache` and returns the logits of
    /// the last position, (batch, vocab).
    pub fn forward_step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.entries.len() != self.blocks.len() {
            *cache = KvCache::new(self.blocks.len());
        }
        let hidden = self.forward_hidden(ids, Some(cache))?;
        let t = hidden.dim(1)?;
        self.logits(&hidden.narrow(1, t - 1, 1)?)?.squeeze(1)
    }

    /// Mean next-token cross-entropy of `ids` (batch, seq) predicting their own shift.
    pub fn loss(&self, ids: &Tensor) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
        self.loss_of_hidden(
            &self.forward_hidden(&ids.narrow(1, 0, t - 1)?, None)?,
            &targets,
        )
    }

    /// The same loss from the residual stream entering block `from` (batch, seq, hidden: the
    /// inputs of `targets`), through the blocks from `from` on but `skip`: what the model without
    /// block `skip` computes, given the stream below that block (which is this model's). Layer
    /// importance reuses one forward's stream instead of running each pruned model whole.
    pub fn loss_from(
        &self,
        hidden: &Tensor,
        from: usize,
        skip: Option<usize>,
        targets: &Tensor,
    ) -> Result<Tensor> {
        let mask = self.causal_mask(hidden.dim(1)?, 0, false)?;
        let mut x = hidden.clone();
        for (i, block) in self.blocks.iter().enumerate().skip(from) {
            if Some(i) != skip {
                x = block.forward(&x, &self.rotary, 0, mask.as_ref(), None)?;
            }
        }
        self.loss_of_hidden(&x, targets)
    }

    /// Prepares every frozen block for the CPU's fused kernels
    /// ([`kernels::block::FrozenBlock`]: the block as two graph nodes, sharing its weights).
    /// Replacing a parameter drops its block's preparation. Returns the blocks prepared; on
    /// other devices and in 16-bit dtypes it does nothing.
    pub fn prepare_frozen_linears(&mut self) -> Result<usize> {
        if !kernels::fused(&self.device, self.dtype) {
            return Ok(0);
        }
        let mut prepared = 0;
        for block in &mut self.blocks {
            prepared += usize::from(block.prepare_frozen_linears()?);
        }
        Ok(prepared)
    }

    /// Mean cross-entropy of the residual stream after the last block against `targets`: the
    /// final norm and the head (the fused kernel when the head is frozen).
    fn loss_of_hidden(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (b, t, _) = hidden.dims3()?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        if let Param::Frozen(w) = head {
            let rows = self
                .norm
                .forward(hidden)?
                .reshape((b * t, self.config.hidden_size))?;
            return autograd::cross_entropy_frozen_head(&rows, w, targets);
        }
        let logits = self
            .logits(hidden)?
            .reshape((b * t, self.config.vocab_size))?
            .to_dtype(DType::F32)?;
        candle_nn::loss::cross_entropy(&logits, targets)
    }

    /// All parameters with their HF names, in HF order (the head only when untied).
    #[must_use]
    pub fn named_params(&self) -> Vec<(String, &Param)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, block) in self.blocks.iter().enumerate() {
            out.extend(
                block
                    .params()
                    .into_iter()
                    .map(|(t, p)| (format!("model.layers.{i}.{}", t.name()), p)),
            );
        }
        out.push(("model.norm.weight".into(), &self.norm.weight));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".into(), head));
        }
        out
    }

    /// The trainable variables with their HF names.
    #[must_use]
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_params()
            .into_iter()
            .filter_map(|(n, p)| p.var().map(|v| (n, v.clone())))
            .collect()
    }

    /// Makes block `index` trainable or frozen.
    pub fn set_block_trainable(&mut self, index: usize, trainable: bool) -> Result<()> {
        let n = self.blocks.len();
        let block = self.blocks.get_mut(index).ok_or_else(|| {
            candle_core::Error::Msg(format!("block {index} out of range (0..{n})"))
        })?;
        block.set_trainable(trainable)
    }

    /// Freezes every block (inference then takes the fused kernels everywhere).
    pub fn freeze_all(&mut self) -> Result<()> {
        for block in &mut self.blocks {
            block.set_trainable(false)?;
        }
        Ok(())
    }

    /// Quantises every frozen matrix (the seven of each block, the embedding, the head) to
    /// `quant` for inference; norms stay dense. A trainable weight is refused: quantise a frozen
    /// model ([`Llama::freeze_all`]). `Quant::None` leaves the model as it is.
    pub fn quantize(&mut self, quant: Quant) -> Result<QuantSummary> {
        let mut summary = QuantSummary {
            quant,
            ..QuantSummary::default()
        };
        if quant == Quant::None {
            return Ok(summary);
        }
        let dtype_size = self.dtype.size_in_bytes();
        let tiled = quant::tiled_kernel_available();
        let mut quantize_one = |name: String, p: &mut Param| -> Result<()> {
            if p.is_trainable() {
                candle_core::bail!("{name} is trainable: only a frozen model is quantised");
            }
            let Param::Frozen(w) = p else {
                return Ok(()); // already quantised
            };
            let Some((format, pad)) = quant.layout(w.dim(1)?, tiled) else {
                summary.kept_dense.push(name);
                return Ok(());
            };
            let q = QuantizedWeight::new(w, format, pad)?;
            summary.add(format, w.elem_count() * dtype_size, q.size_in_bytes());
            *p = Param::Quantized(q);
            Ok(())
        };
        quantize_one("model.embed_tokens.weight".into(), &mut self.embed_tokens)?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for t in BlockTensor::ALL {
                if !t.is_norm() {
                    quantize_one(format!("model.layers.{i}.{}", t.name()), block.param_mut(t))?;
                }
            }
        }
        if let Some(head) = &mut self.lm_head {
            quantize_one("lm_head.weight".into(), head)?;
        }
        self.quant = quant;
        Ok(summary)
    }

    /// Total parameter count.
    #[must_use]
    pub fn param_count(&self) -> usize {
        self.named_params()
            .iter()
            .map(|(_, p)| p.elem_count())
            .sum()
    }
}

/// Deterministic pseudo-random weights, for tests, benchmarks and GPU checks that need a model
/// of a given shape but no trained weights.
pub mod random {
    use candle_core::{DType, Device, Tensor};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::Llama;
    use crate::config::LlamaConfig;

    /// A model whose matrices are N(0, 0.02²) (HF's initializer range) and whose norm weights are
    /// 1 + small noise, generated from `seed`.
    pub fn llama(
        config: &LlamaConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Llama> {
        let mut rng = StdRng::seed_from_u64(seed);
        Llama::from_tensors(config.clone(), dtype, device, |name| {
            let shape = Llama::expected_shape(config, name).unwrap_or_default();
            let n: usize = shape.iter().product();
            let is_norm = name.ends_with("norm.weight");
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let g = gaussian(&mut rng);
                    if is_norm { 1.0 + 0.1 * g } else { 0.02 * g }
                })
                .collect();
            Ok(Tensor::from_vec(values, shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?)
        })
    }

    /// The same distribution drawn by the device's own generator (cuRAND on CUDA): seconds
    /// rather than minutes for billions of weights, but the values depend on the device, so
    /// comparisons across devices use [`llama`]. The CPU, which cannot be seeded, takes [`llama`].
    pub fn llama_on_device(
        config: &LlamaConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Llama> {
        if device.is_cpu() {
            return llama(config, seed, dtype, device);
        }
        device.set_seed(seed)?;
        Llama::from_tensors(config.clone(), dtype, device, |name| {
            let shape = Llama::expected_shape(config, name).unwrap_or_default();
            let t = if name.ends_with("norm.weight") {
                (Tensor::randn(0f32, 0.1, shape, device)? + 1.0)?
            } else {
                Tensor::randn(0f32, 0.02, shape, device)?
            };
            Ok(t.to_dtype(dtype)?)
        })
    }

    /// N(0, std²) samples of `shape` on the host from `seed`: the same values on every machine
    /// and for every device they are copied to.
    pub fn normal(shape: &[usize], seed: u64, std: f32) -> candle_core::Result<Tensor> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| std * gaussian(&mut rng)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    /// A standard normal sample (rand_distr's ziggurat).
    fn gaussian(rng: &mut StdRng) -> f32 {
        rng.sample(rand_distr::StandardNormal)
    }

    /// A small config for tests: 4 blocks, hidden 64, 4 heads over 2 KV heads, vocabulary 256.
    #[must_use]
    pub fn tiny_config() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(crate::config::TokenIds::One(2)),
        }
    }
}
