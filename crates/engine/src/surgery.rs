//! Model surgery: building the expanded model a [`LayerMap`] describes, either streamed tensor by
//! tensor from a checkpoint into a new HF directory, or in memory from a loaded model, and
//! checking that insertion alone leaves the base function unchanged.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::hf::DirContents;
use crate::checkpoint::{SaveOptions, WeightSource, write_hf_dir};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::{Block, BlockTensor, Llama, Param};
use crate::plan::{Init, LayerMap, Origin};

/// The config of the model `map` produces from `base`.
#[must_use]
pub fn expanded_config(base: &LlamaConfig, map: &LayerMap) -> LlamaConfig {
    LlamaConfig {
        num_hidden_layers: map.layers.len(),
        ..base.clone()
    }
}

/// Builds one block tensor of a new block from its sources. `load(i, suffix)` returns original
/// block `i`'s tensor; averaging is done in f32.
fn new_block_tensor(
    init: &Init,
    zero: &[String],
    scale: &std::collections::BTreeMap<String, f64>,
    suffix: &str,
    mut load: impl FnMut(usize, &str) -> Result<Tensor>,
) -> Result<Tensor> {
    let base = match init {
        Init::Copy { source } => load(*source, suffix)?,
        Init::Average { sources: [a, b] } => {
            let ta = load(*a, suffix)?;
            let dtype = ta.dtype();
            let sum = (ta.to_dtype(DType::F32)? + load(*b, suffix)?.to_dtype(DType::F32)?)?;
            (sum * 0.5)?.to_dtype(dtype)?
        }
    };
    let t = if zero.iter().any(|z| z == suffix) {
        base.zeros_like()?
    } else {
        base
    };
    Ok(match scale.get(suffix) {
        Some(f) => (t * *f)?,
        None => t,
    })
}

/// Splits `model.layers.{i}.{suffix}` into `(i, suffix)`.
fn split_layer_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    Some((idx.parse().ok()?, suffix))
}

/// One tensor of the expanded model, by its HF name, read from the base `source`.
pub fn expanded_tensor(source: &dyn WeightSource, map: &LayerMap, name: &str) -> Result<Tensor> {
    let Some((index, suffix)) = split_layer_name(name) else {
        return source.load(name);
    };
    let layer = map.layers.get(index).ok_or_else(|| {
        Error::Invalid(format!("{name}: the plan has {} blocks", map.layers.len()))
    })?;
    match &layer.origin {
        Origin::Original { index } => source.load(&format!("model.layers.{index}.{suffix}")),
        Origin::New {
            init, zero, scale, ..
        } => new_block_tensor(init, zero, scale, suffix, |i, s| {
            source.load(&format!("model.layers.{i}.{s}"))
        }),
    }
}

/// What `slayer expand --json` prints: what was written and, with `--verify`, how the written
/// model compares with the base (the console shows it after `E`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpandSummary {
    pub out: std::path::PathBuf,
    pub blocks: usize,
    pub tensors: usize,
    /// Original blocks the plan pruned (they explain a perplexity change).
    pub pruned: Vec<usize>,
    pub verification: Option<Verification>,
}

/// What `expand` wrote.
#[derive(Debug, Clone)]
pub struct ExpandReport {
    pub config: LlamaConfig,
    pub tensors: usize,
}

/// Writes the expanded model as an HF directory at `out`, streaming one tensor at a time (peak
/// memory near the largest tensor). `extra_files` (e.g. the resolved plan) are saved beside it.
pub fn expand(
    source: &dyn WeightSource,
    map: &LayerMap,
    out: &Path,
    opts: &SaveOptions,
    extra_files: Vec<(String, Vec<u8>)>,
    progress: impl FnMut(usize, usize),
    cancel: Option<&AtomicBool>,
) -> Result<ExpandReport> {
    if map.base_layers != source.config().num_hidden_layers {
        return Err(Error::Invalid(format!(
            "the plan was resolved for {} blocks but {} has {}",
            map.base_layers,
            source.location().display(),
            source.config().num_hidden_layers
        )));
    }
    let config = expanded_config(source.config(), map);
    let contents = DirContents {
        config: &config,
        base_config_json: source.config_json(),
        tokenizer: source.tokenizer(),
        generation_config: source.generation_config(),
        extra_files,
    };
    write_hf_dir(
        out,
        &contents,
        opts,
        |name| expanded_tensor(source, map, name),
        progress,
        cancel,
    )?;
    Ok(ExpandReport {
        tensors: Llama::tensor_names(&config).len(),
        config,
    })
}

/// The expanded model built in memory from a loaded base model; every block starts frozen except
/// those the map marks trainable.
pub fn apply(base: &Llama, map: &LayerMap) -> Result<Llama> {
    if map.base_layers != base.blocks.len() {
        return Err(Error::Invalid(format!(
            "the plan was resolved for {} blocks, the model has {}",
            map.base_layers,
            base.blocks.len()
        )));
    }
    let mut model = base.clone();
    let mut blocks = Vec::with_capacity(map.layers.len());
    for layer in &map.layers {
        let mut block = match &layer.origin {
            Origin::Original { index } => base.blocks[*index].clone(),
            Origin::New {
                init, zero, scale, ..
            } => {
                let first = init.sources()[0];
                let mut block: Block = base.blocks[first].clone();
                for tensor in BlockTensor::ALL {
                    let t = new_block_tensor(init, zero, scale, tensor.name(), |i, _| {
                        Ok(base.blocks[i].param(tensor).dense()?)
                    })?;
                    *block.param_mut(tensor) = Param::Frozen(t);
                }
                block
            }
        };
        block.set_trainable(layer.trainable)?;
        blocks.push(block);
    }
    model.blocks = blocks;
    model.sync_config();
    Ok(model)
}

/// Mean next-token cross-entropy of `ids` under `model`, and the perplexity.
pub fn perplexity(model: &Llama, ids: &[u32]) -> Result<(f64, f64)> {
    if ids.len() < 2 {
        return Err(Error::Invalid(
            "perplexity needs at least two tokens".into(),
        ));
    }
    let window = ids.len().min(model.max_positions());
    let x = Tensor::new(&ids[..window], model.device())?.unsqueeze(0)?;
    let loss = f64::from(model.loss(&x)?.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    Ok((loss, loss.exp()))
}

/// The outcome of `--verify`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    pub sample_tokens: usize,
    /// Largest |logit difference| between the base model and the expansion before pruning.
    pub identity_max_abs_diff: f32,
    /// Largest |logit difference| between the written checkpoint and the in-memory expansion.
    pub written_max_abs_diff: f32,
    /// The checkpoint keeps the base's dtype, so it must match the in-memory expansion exactly
    /// (a 16-bit copy of an f32 base only approximately).
    pub written_exact: bool,
    pub base_perplexity: f64,
    /// Perplexity of the written (pruned) model on the sample.
    pub expanded_perplexity: f64,
}

impl Verification {
    /// Insertion kept the base function exactly and the checkpoint holds what the plan says.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.identity_max_abs_diff == 0.0
            && (!self.written_exact || self.written_max_abs_diff == 0.0)
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?)
}

/// Runs the base model, its expansion without pruning (in memory), and the written checkpoint on
/// `sample`: the first two must give identical logits when every new block starts as the
/// identity, and the checkpoint must equal the in-memory expansion with pruning.
pub fn verify(
    base_source: &dyn WeightSource,
    map: &LayerMap,
    written: &dyn WeightSource,
    sample: &[u32],
) -> Result<Verification> {
    let device = Device::Cpu;
    let base = crate::checkpoint::load_model(base_source, DType::F32, &device)?;
    let ids = &sample[..sample.len().min(base.max_positions())];
    let x = Tensor::new(ids, &device)?.unsqueeze(0)?;
    let base_logits = base.forward(&x)?;
    // Frozen copies: the differentiable kernels round differently from the fused ones.
    let mut unpruned = apply(&base, &map.without_pruning())?;
    unpruned.freeze_all()?;
    let identity_max_abs_diff = max_abs_diff(&base_logits, &unpruned.forward(&x)?)?;
    drop(unpruned);
    let mut pruned = apply(&base, map)?;
    pruned.freeze_all()?;
    let from_disk = crate::checkpoint::load_model(written, DType::F32, &device)?;
    let written_max_abs_diff = max_abs_diff(&pruned.forward(&x)?, &from_disk.forward(&x)?)?;
    let (_, base_perplexity) = perplexity(&base, ids)?;
    let (_, expanded_perplexity) = perplexity(&from_disk, ids)?;
    Ok(Verification {
        sample_tokens: ids.len(),
        identity_max_abs_diff,
        written_max_abs_diff,
        written_exact: written.stored_dtype() == base_source.stored_dtype(),
        base_perplexity,
        expanded_perplexity,
    })
}
