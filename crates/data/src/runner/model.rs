//! Models to chat with or export: a model directory or GGUF file, or a run's trained model at a
//! checkpoint (its base, expanded by its plan, with the checkpoint's trainable weights).

use std::path::{Path, PathBuf};

use crate::error::{Because as _, Error, Result};
use candle_core::{DType, Device};

use super::RunDir;
use slayer_engine::checkpoint::{WeightSource, load_model, open_source};
use slayer_engine::experiment::Experiment;
use slayer_engine::model::{Llama, Quant, QuantSummary};
use slayer_engine::plan::{self, LayerMap};
use slayer_engine::tokenizer::Tokenizer;
use slayer_engine::train::{self, Trainer};

/// A loaded model with its tokenizer.
pub struct LoadedModel {
    pub label: String,
    pub path: PathBuf,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// How its matrices were quantised for inference (`Quant::None`: not at all).
    pub quantization: QuantSummary,
    /// What the user should know about how it was loaded (a damaged checkpoint passed over).
    pub warnings: Vec<String>,
}

/// `model` quantised to `quant` (nothing done for `Quant::None`), naming `path` on failure.
fn quantized(model: &mut Llama, quant: Quant, path: &Path) -> Result<QuantSummary> {
    model.quantize(quant).map_err(|e| {
        Error::invalid(format!(
            "{}: cannot quantise to {quant}: {e}",
            path.display()
        ))
    })
}

/// The tokenizer of `source`, with the eos ids of its generation config added.
pub fn tokenizer_of(source: &dyn WeightSource, path: &Path) -> Result<Tokenizer> {
    let mut tokenizer = source.tokenizer().cloned().ok_or_else(|| {
        let (problem, at) = (source.tokenizer_problem(), path.display().to_string());
        // The problem names its file; the path is said once when it is the same one.
        Error::invalid(if problem.starts_with(&at) {
            format!("cannot chat or evaluate without a tokenizer: {problem}")
        } else {
            format!("{at}: cannot chat or evaluate without a tokenizer: {problem}")
        })
    })?;
    if let Some(eos) = source
        .generation_config()
        .and_then(|g| g.get("eos_token_id"))
    {
        let ids: Vec<u32> = match eos {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            v => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        };
        tokenizer.add_eos_ids(&ids);
    }
    Ok(tokenizer)
}

/// Loads a model directory or GGUF file, its matrices quantised to `quant` for inference.
pub fn load_path(
    path: &Path,
    label: &str,
    dtype: DType,
    device: &Device,
    quant: Quant,
) -> Result<LoadedModel> {
    let source = open_source(path)?;
    let tokenizer = tokenizer_of(source.as_ref(), path)?;
    let mut model = load_model(source.as_ref(), dtype, device)?;
    let quantization = quantized(&mut model, quant, path)?;
    Ok(LoadedModel {
        label: label.to_string(),
        path: path.to_path_buf(),
        model,
        tokenizer,
        quantization,
        warnings: source.warnings(),
    })
}

/// The run a model argument names — `RUN` or `RUN@STEP`, when it is not an existing path — with
/// the step asked for (`None`: the newest checkpoint).
pub fn run_spec(data_dir: &Path, spec: &str) -> Result<Option<(RunDir, Option<u64>)>> {
    if Path::new(spec).exists() {
        return Ok(None);
    }
    let (run, step) = spec
        .rsplit_once('@')
        .map_or((spec, None), |(r, s)| (r, Some(s)));
    let Ok(run) = RunDir::open(data_dir, run) else {
        return Ok(None);
    };
    let step = step
        .map(|s| {
            s.parse::<u64>()
                .because(|| format!("{spec}: the part after @ must be a step"))
        })
        .transpose()?;
    Ok(Some((run, step)))
}

/// A run's base model (already in the data directory) and its resolved plan.
pub fn run_base(
    data_dir: &Path,
    run: &RunDir,
) -> Result<(Experiment, Box<dyn WeightSource>, LayerMap)> {
    let exp = Experiment::load(&run.experiment_path()).map_err(Error::Invalid)?;
    let Some(spec) = &exp.model else {
        return Err(Error::invalid(format!(
            "{}: no [model] base",
            run.experiment_path().display()
        )));
    };
    let path = crate::fetch::resolve_model_path(data_dir, &spec.base);
    if !path.exists() {
        return Err(Error::invalid(format!(
            "{}: base model {} is not in {} (fetch it with `slayer model fetch`)",
            run.id,
            spec.base,
            crate::layout::DataDir::at(data_dir).models().display()
        )));
    }
    let base = open_source(&path)?;
    let map = plan::resolve(&exp.plan, base.config().num_hidden_layers)
        .map
        .ok_or_else(|| {
            Error::invalid(format!(
                "{}: the plan has errors",
                run.experiment_path().display()
            ))
        })?;
    Ok((exp, base, map))
}

/// A run's model at checkpoint `step` (the newest when `None`), frozen, for generation, its
/// matrices (the trained blocks' too) quantised to `quant`.
pub fn load_run(
    data_dir: &Path,
    run: &RunDir,
    step: Option<u64>,
    dtype: DType,
    device: &Device,
    quant: Quant,
) -> Result<(LoadedModel, u64)> {
    let (exp, base, map) = run_base(data_dir, run)?;
    let dir = run.path.join("checkpoints");
    let mut warnings = Vec::new();
    let (step, checkpoint) = match step {
        // The newest intact one: a damaged newest checkpoint is passed over, with a warning.
        None => {
            let point = train::newest_intact_checkpoint(&dir)?;
            if point.checkpoint.is_none()
                && let Some(damaged) = point.damaged.first()
            {
                return Err(Error::invalid(format!(
                    "run {}: {damaged}, and no older checkpoint is intact",
                    run.id
                )));
            }
            warnings.extend(
                point
                    .damaged
                    .into_iter()
                    .map(|d| format!("run {}: {d}; using the newest intact one", run.id)),
            );
            point
                .checkpoint
                .ok_or_else(|| Error::invalid(format!("run {} has no checkpoint yet", run.id)))?
        }
        Some(s) => {
            let all = train::list_checkpoints(&dir)?;
            all.iter().find(|c| c.0 == s).cloned().ok_or_else(|| {
                let steps: Vec<String> = all.iter().map(|c| c.0.to_string()).collect();
                Error::invalid(format!(
                    "run {} has no checkpoint at step {s} (it has: {})",
                    run.id,
                    if steps.is_empty() {
                        "none".to_string()
                    } else {
                        steps.join(", ")
                    }
                ))
            })?
        }
    };
    let tokenizer = tokenizer_of(base.as_ref(), &run.path)?;
    let base_model = load_model(base.as_ref(), dtype, device)?;
    let mut model = slayer_engine::surgery::apply(&base_model, &map)?;
    drop(base_model);
    let mut trainer = Trainer::new(&model, exp.train.clone(), &run.path.join("checkpoints"))?;
    trainer.resume_from(&checkpoint)?;
    drop(trainer);
    model.freeze_all().map_err(slayer_engine::Error::from)?;
    let quantization = quantized(&mut model, quant, &checkpoint)?;
    Ok((
        LoadedModel {
            label: format!("{}@{step}", run.id),
            path: checkpoint,
            model,
            tokenizer,
            quantization,
            warnings,
        },
        step,
    ))
}
