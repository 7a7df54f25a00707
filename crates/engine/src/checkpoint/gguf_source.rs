//! A GGUF file as a weight source: config from metadata, tokenizer from the vocabulary, weights
//! dequantised to f32 with Q/K un-permuted into HF's layout, so one RoPE convention serves all.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use memmap2::Mmap;

use super::gguf::{GgufFile, GgufValue, dequantize, hf_name, parse_file, unpermute_qk};
use super::{WeightSource, check_shape};
use crate::config::{LlamaConfig, RopeScaling, TokenIds};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::model::rope::inv_freqs;
use crate::tokenizer::Tokenizer;

pub struct GgufSource {
    path: PathBuf,
    mmap: Mmap,
    file: GgufFile,
    config: LlamaConfig,
    tokenizer: Option<Tokenizer>,
    /// Why the file's tokenizer could not be built, when it could not.
    tokenizer_problem: Option<String>,
    /// HF name → index into `file.tensors`.
    by_hf_name: HashMap<String, usize>,
}

#[expect(
    unsafe_code,
    reason = "memory-mapping a file is inherently unsafe in Rust"
)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: read-only map of a checkpoint; concurrent truncation is the accepted risk.
    unsafe { Mmap::map(file) }
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let mmap = map(&f).map_err(|e| Error::io(path, e))?;
        let file = parse_file(path, &mmap)?;
        let config = config_from_gguf(&file, &mmap, path)?;
        let mut by_hf_name = HashMap::new();
        for (i, t) in file.tensors.iter().enumerate() {
            if let Some(name) = hf_name(&t.name) {
                check_shape(&config, path, &name, &t.shape)?;
                by_hf_name.insert(name, i);
            }
        }
        for name in Llama::tensor_names(&config) {
            if !by_hf_name.contains_key(&name) {
                return Err(Error::tensor(path, &name, "missing from the GGUF file"));
            }
        }
        // Weights are still usable without a tokenizer (e.g. SentencePiece vocabularies, which
        // GGUF stores without merges): keep them and say why the tokenizer is missing.
        let (tokenizer, tokenizer_problem) = match Tokenizer::from_gguf(&file, &config, path) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            file,
            config,
            tokenizer,
            tokenizer_problem,
            by_hf_name,
        })
    }

    /// Why no tokenizer could be built from this file, if none could.
    #[must_use]
    pub fn tokenizer_problem(&self) -> Option<&str> {
        self.tokenizer_problem.as_deref()
    }

    /// The parsed file.
    #[must_use]
    pub fn gguf(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightSource for GgufSource {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn config_json(&self) -> Option<&serde_json::Value> {
        None
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    fn tokenizer_problem(&self) -> String {
        self.tokenizer_problem.clone().unwrap_or_else(|| {
            format!("{}: no tokenizer in the GGUF metadata", self.path.display())
        })
    }

    fn warnings(&self) -> Vec<String> {
        self.tokenizer_problem
            .iter()
            .map(|p| format!("no tokenizer imported: {p}"))
            .collect()
    }

    fn generation_config(&self) -> Option<&serde_json::Value> {
        None
    }

    fn stored_dtype(&self) -> DType {
        DType::F32
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let &i = self
            .by_hf_name
            .get(name)
            .ok_or_else(|| Error::tensor(&self.path, name, "not in the GGUF file"))?;
        let info = &self.file.tensors[i];
        let t = dequantize(&self.mmap, info)
            .map_err(|e| Error::tensor(&self.path, &info.name, e.to_string()))?;
        super::safetensors::release_pages(&self.mmap, info.start, info.end - info.start);
        let t = t.to_dtype(DType::F32)?;
        // llama.cpp stores q and k with their rotary halves interleaved.
        match crate::model::BlockTensor::of_model_name(name).map(|(_, t)| t) {
            Some(crate::model::BlockTensor::QProj) => {
                Ok(unpermute_qk(&t, self.config.num_attention_heads)?)
            }
            Some(crate::model::BlockTensor::KProj) => {
                Ok(unpermute_qk(&t, self.config.num_key_value_heads)?)
            }
            _ => Ok(t),
        }
    }

    fn location(&self) -> &Path {
        &self.path
    }
}

/// The model configuration a GGUF file's metadata describes (`bytes` are the file's, for the
/// `rope_freqs` tensor; `path` names it in errors). Public for the fuzz target of the metadata path.
pub fn config_from_gguf(file: &GgufFile, bytes: &[u8], path: &Path) -> Result<LlamaConfig> {
    let arch = file
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| Error::format(path, "no `general.architecture` metadata"))?;
    if arch != "llama" {
        return Err(Error::unsupported(
            path,
            format!("architecture `{arch}` (supported: llama)"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<usize> {
        file.get(&key(k))
            .and_then(GgufValue::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| Error::format(path, format!("missing integer metadata `{}`", key(k))))
    };
    let opt_int = |k: &str| {
        file.get(&key(k))
            .and_then(GgufValue::as_u64)
            .map(|v| v as usize)
    };
    let float = |k: &str| file.get(&key(k)).and_then(GgufValue::as_f64);
    let hidden = int("embedding_length")?;
    let heads = int("attention.head_count")?;
    let vocab = match opt_int("vocab_size") {
        Some(v) => v,
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(super::gguf::GgufArray::len)
            .ok_or_else(|| Error::format(path, "no vocabulary size"))?,
    };
    let tie = file.tensor_info("output.weight").is_none();
    let token_id = |k: &str| {
        file.get(&format!("tokenizer.ggml.{k}"))
            .and_then(GgufValue::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let mut config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: int("feed_forward_length")?,
        num_hidden_layers: int("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: opt_int("attention.head_count_kv").unwrap_or(heads),
        head_dim: opt_int("rope.dimension_count").unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: opt_int("context_length").unwrap_or(2048),
        tie_word_embeddings: tie,
        bos_token_id: token_id("bos_token_id"),
        eos_token_id: token_id("eos_token_id").map(TokenIds::One),
    };
    config.validate(path)?;
    match file
        .get(&key("rope.scaling.type"))
        .and_then(GgufValue::as_str)
    {
        None | Some("none") => {}
        Some("linear") => {
            let factor = float("rope.scaling.factor")
                .ok_or_else(|| Error::format(path, "linear rope scaling without a factor"))?;
            config.rope_scaling = Some(RopeScaling::Linear { factor });
        }
        Some(other) => {
            return Err(Error::unsupported(
                path,
                format!("rope scaling type `{other}`"),
            ));
        }
    }
    if let Some(info) = file.tensor_info("rope_freqs.weight") {
        let factors = dequantize(bytes, info)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| Error::tensor(path, "rope_freqs.weight", e.to_string()))?;
        config.rope_scaling = Some(infer_llama3_scaling(&config, &factors).ok_or_else(|| {
            Error::unsupported(
                path,
                "rope_freqs.weight does not match Llama 3 rope scaling",
            )
        })?);
    }
    Ok(config)
}

/// llama.cpp stores Llama 3.1/3.2 RoPE scaling as per-frequency divisors (`rope_freqs.weight`).
/// Recover the HF parameters: the factor is the largest divisor; the other three are the values
/// every Llama 3.x release uses, checked against the table.
fn infer_llama3_scaling(config: &LlamaConfig, factors: &[f32]) -> Option<RopeScaling> {
    let factor = f64::from(factors.iter().copied().fold(f32::MIN, f32::max));
    let original = config.max_position_embeddings.min(8192);
    let candidate = RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: original,
    };
    let plain = LlamaConfig {
        rope_scaling: None,
        ..config.clone()
    };
    let scaled = LlamaConfig {
        rope_scaling: Some(candidate.clone()),
        ..config.clone()
    };
    let (base, with) = (inv_freqs(&plain), inv_freqs(&scaled));
    if base.len() != factors.len() {
        return None;
    }
    let matches =
        base.iter().zip(&with).zip(factors).all(|((b, w), &f)| {
            ((b / w) - f64::from(f)).abs() <= 1e-3 * f64::from(f).abs().max(1.0)
        });
    matches.then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::tiny_config;

    #[test]
    fn llama3_rope_scaling_is_recovered_from_rope_freqs() {
        let config = LlamaConfig {
            max_position_embeddings: 131_072,
            rope_theta: 500_000.0,
            head_dim: 64,
            ..tiny_config()
        };
        let truth = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let scaled = LlamaConfig {
            rope_scaling: Some(truth.clone()),
            ..config.clone()
        };
        // What llama.cpp stores: the divisor of each base frequency.
        let factors: Vec<f32> = inv_freqs(&config)
            .iter()
            .zip(inv_freqs(&scaled))
            .map(|(b, s)| (b / s) as f32)
            .collect();
        assert_eq!(infer_llama3_scaling(&config, &factors), Some(truth));
        let mut wrong = factors.clone();
        wrong[5] *= 1.5;
        assert_eq!(infer_llama3_scaling(&config, &wrong), None);
    }
}
