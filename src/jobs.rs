//! Long operations as blocking library calls with typed results: what the console's jobs run on
//! their threads and what the CLI's commands print (gitui's shape: a blocking core, thin job
//! wrappers). Nothing here writes to the terminal — diagnostics come back in the results or
//! errors, progress through a callback — and each operation stops when its `cancel` flag is set.
//! Launching runs is [`crate::launch`]'s.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use candle_core::DType;

use crate::core::checkpoint::{HfDir, SaveOptions, WeightSource, open_source};
use crate::core::config::LlamaConfig;
use crate::core::events::{EvalRecord, EventKind, EventSink as _};
use crate::core::model::Quant;
use crate::core::plan::{self, LayerMap, Resolution};
use crate::core::run::DataPreview;
use crate::core::surgery::{self, ExpandSummary};
use crate::core::text::sanitize_for_terminal;
use crate::launch::Locate;
use crate::runner::RunDir;

/// Text the expanded model is checked on when no sample is given: plain English prose.
pub const DEFAULT_SAMPLE: &str = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a system that could produce books quickly and cheaply. Before that, most books in Europe were copied by hand, a slow process that kept them rare and expensive. Within a few decades, printing shops had spread to more than two hundred cities, and millions of volumes were in circulation. Scholars could compare identical copies of a text, errors were corrected in later editions, and ideas travelled faster than ever before. The printing press is often credited with helping to spread literacy, to standardise languages, and to make possible the scientific revolution that followed.";

/// A plan file read, resolved against its base model.
pub struct LoadedPlan {
    pub path: PathBuf,
    pub text: String,
    pub resolution: Resolution,
    pub base_arg: String,
    pub base: Box<dyn WeightSource>,
}

impl LoadedPlan {
    /// The diagnostics as `file:line:col: …` lines.
    #[must_use]
    pub fn diagnostics(&self) -> Vec<String> {
        let name = self.path.display().to_string();
        self.resolution
            .diagnostics
            .iter()
            .map(|d| sanitize_for_terminal(&d.render(&name, &self.text)).into_owned())
            .collect()
    }

    /// The map, or an error saying the plan has errors (listed by [`Self::diagnostics`]).
    pub fn map(&self) -> Result<&LayerMap> {
        self.resolution
            .map
            .as_ref()
            .filter(|_| !self.resolution.has_errors())
            .with_context(|| format!("{}: the plan has errors", self.path.display()))
    }

    /// The map, or an error that lists the plan's errors (for callers that show no
    /// diagnostics of their own).
    pub fn map_or_errors(&self) -> Result<&LayerMap> {
        if self.resolution.has_errors() {
            bail!(
                "{}: the plan has errors:\n{}",
                self.path.display(),
                self.diagnostics().join("\n")
            );
        }
        self.map()
    }

    #[must_use]
    pub fn config(&self) -> &LlamaConfig {
        self.base.config()
    }
}

/// A plan file that does not parse: where, as a `file:line:col: …` diagnostic.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot parse the plan: {diagnostic}", path.display())]
pub struct PlanUnreadable {
    pub path: PathBuf,
    pub diagnostic: String,
}

/// Reads and resolves a plan file (or the experiment of that name); a syntax error is a
/// [`PlanUnreadable`].
pub fn load_plan(
    path: &Path,
    model: Option<&str>,
    data_dir: &Path,
    locate: Locate<'_>,
) -> Result<LoadedPlan> {
    // A file, or an experiment's name, as `train` takes them.
    let path = &crate::templates::find_experiment(data_dir, path)?;
    let text = crate::core::corpus::read_settings(path, "plan")?;
    let file = plan::parse(&text).map_err(|d| PlanUnreadable {
        path: path.clone(),
        diagnostic: sanitize_for_terminal(&d.render(&path.display().to_string(), &text))
            .into_owned(),
    })?;
    let base_arg = match (model, &file.model) {
        (Some(m), _) => m.to_string(),
        (None, Some(spec)) => spec.base.clone(),
        (None, None) => bail!(
            "{}: no base model: pass --model or set `[model] base` in the file",
            path.display()
        ),
    };
    let base = open_source(&locate(data_dir, &base_arg)?)?;
    let resolution = plan::resolve(&file.plan, base.config().num_hidden_layers);
    Ok(LoadedPlan {
        path: path.clone(),
        text,
        resolution,
        base_arg,
        base,
    })
}

/// What to write and check in [`expand`].
#[derive(Debug, Clone)]
pub struct ExpandRequest {
    pub out: PathBuf,
    /// Check that insertion keeps the base's logits and what pruning costs.
    pub verify: bool,
    /// The text to verify on (default: [`DEFAULT_SAMPLE`]).
    pub sample: Option<PathBuf>,
    /// Weight dtype of the output (default: the base model's).
    pub dtype: Option<DType>,
    /// Replace `out` if it exists.
    pub force: bool,
}

/// Writes the expanded model of a resolved plan (and verifies it when asked): the summary
/// carries the verification, whose `passed()` the caller judges.
pub fn expand(
    loaded: &LoadedPlan,
    request: &ExpandRequest,
    cancel: &AtomicBool,
    progress: impl FnMut(usize, usize),
) -> Result<ExpandSummary> {
    let map = loaded.map_or_errors()?;
    let opts = SaveOptions {
        dtype: request.dtype.unwrap_or_else(|| loaded.base.stored_dtype()),
        force: request.force,
        ..SaveOptions::default()
    };
    let record = serde_json::json!({
        "plan_file": loaded.path.display().to_string(),
        "plan_source": loaded.text,
        "base_model": loaded.base_arg,
        "map": map,
    });
    let extra = vec![(
        "slayer_plan.json".to_string(),
        serde_json::to_vec_pretty(&record)?,
    )];
    let report = surgery::expand(
        loaded.base.as_ref(),
        map,
        &request.out,
        &opts,
        extra,
        progress,
        Some(cancel),
    )?;
    let mut summary = ExpandSummary {
        out: request.out.clone(),
        blocks: report.config.num_hidden_layers,
        tensors: report.tensors,
        pruned: map.pruned.clone(),
        verification: None,
    };
    if !request.verify {
        return Ok(summary);
    }
    let text = match &request.sample {
        Some(p) => crate::core::corpus::read_text(p)?,
        None => DEFAULT_SAMPLE.to_string(),
    };
    let tokenizer = loaded
        .base
        .tokenizer()
        .context("the base model has no tokenizer to encode the sample")?;
    let ids = tokenizer.encode(&text, false)?;
    if ids.len() < 2 {
        bail!("the verification sample is too short");
    }
    crate::core::checkpoint::check_cancel(Some(cancel))?;
    let written = HfDir::open(&request.out)?;
    summary.verification = Some(surgery::verify(loaded.base.as_ref(), map, &written, &ids)?);
    Ok(summary)
}

/// What an experiment's training data becomes (`data preview`): documents, split, tokens.
pub fn preview_data(
    data_dir: &Path,
    experiment: &Path,
    documents: usize,
    locate: Locate<'_>,
) -> Result<DataPreview> {
    let path = crate::templates::find_experiment(data_dir, experiment)?;
    let exp = crate::core::experiment::Experiment::load(&path).map_err(anyhow::Error::msg)?;
    let base = exp
        .model
        .as_ref()
        .map(|m| m.base.clone())
        .with_context(|| format!("{}: no base model (`[model] base`)", path.display()))?;
    let source = open_source(&locate(data_dir, &base)?)?;
    let tokenizer = source
        .tokenizer()
        .with_context(|| format!("{base}: the base model has no tokenizer"))?;
    Ok(crate::core::run::preview(&exp, tokenizer, documents)?)
}

/// A run's trained model evaluated at a checkpoint.
#[derive(Debug, Clone)]
pub struct RunEvaluation {
    pub record: EvalRecord,
    /// The checkpoint's step.
    pub step: u64,
    /// Added to the run's events (not while a worker writes them).
    pub recorded: bool,
    /// How the model was loaded (a damaged checkpoint passed over).
    pub warnings: Vec<String>,
    /// How its matrices were quantised, in words.
    pub quantization: String,
}

/// Evaluates run `run` at checkpoint `step` (the newest intact one by default) on the run's own
/// evaluation sets, and records the result in its events (label `checkpoint`) unless a worker is
/// writing them. The record names the quantisation, `quant`, the model was evaluated with.
pub fn evaluate_run(
    data_dir: &Path,
    run: &RunDir,
    step: Option<u64>,
    device: &candle_core::Device,
    quant: Quant,
    cancel: &AtomicBool,
) -> Result<RunEvaluation> {
    let (loaded, step) =
        crate::runner::model::load_run(data_dir, run, step, DType::F32, device, quant)?;
    crate::core::checkpoint::check_cancel(Some(cancel))?;
    let exp = crate::core::experiment::Experiment::load(&run.experiment_path())
        .map_err(anyhow::Error::msg)?;
    let paths = crate::core::run::RunPaths::new(
        &run.path,
        Some(crate::layout::DataDir::at(data_dir).token_cache()),
    );
    let (_, suite) = crate::core::run::prepare(&exp, &loaded.tokenizer, &paths)?;
    crate::core::checkpoint::check_cancel(Some(cancel))?;
    let record = suite.run(&loaded.model, &loaded.tokenizer, "checkpoint", step)?;
    let recorded = !run.worker().is_some_and(|w| w.alive());
    if recorded {
        let mut log = crate::runner::EventLog::open(&run.events_path())?;
        log.emit(EventKind::Eval(record.clone()))?;
        log.sync()?;
    }
    Ok(RunEvaluation {
        record,
        step,
        recorded,
        warnings: loaded.warnings,
        quantization: loaded.quantization.describe(),
    })
}

/// What [`measure_importance`] measures.
#[derive(Debug, Clone)]
pub struct ImportanceRequest {
    /// The model, as named (a directory, GGUF file, or a name under the data dir's models/).
    pub model: String,
    /// Calibration text (UTF-8).
    pub corpus: PathBuf,
    pub metrics: Vec<crate::core::importance::Metric>,
    /// Token windows asked for, and tokens per window.
    pub samples: usize,
    pub seq_len: usize,
}

/// Block importance of a model, and how many windows the corpus really held.
#[derive(Debug, Clone)]
pub struct Measured {
    pub report: crate::core::importance::ImportanceReport,
    pub windows: usize,
}

/// Measures per-block importance on windows of the calibration text (in f32 everywhere:
/// importance compares small differences between hidden states).
pub fn measure_importance(
    data_dir: &Path,
    request: &ImportanceRequest,
    device: &candle_core::Device,
    locate: Locate<'_>,
    cancel: &AtomicBool,
    progress: impl FnMut(usize, usize),
) -> Result<Measured> {
    let source = open_source(&locate(data_dir, &request.model)?)?;
    let tokenizer = source.tokenizer().context("the model has no tokenizer")?;
    let text = crate::core::corpus::read_text(&request.corpus)?;
    let samples = crate::core::corpus::token_windows(
        tokenizer,
        &text,
        request.samples,
        request.seq_len,
        &request.corpus,
    )?;
    crate::core::checkpoint::check_cancel(Some(cancel))?;
    let model = crate::core::checkpoint::load_model(source.as_ref(), DType::F32, device)?;
    let report = crate::core::importance::compute(
        &model,
        &samples,
        &request.metrics,
        progress,
        Some(cancel),
    )?;
    Ok(Measured {
        report,
        windows: samples.len(),
    })
}

/// A run's trained model written out as a model directory.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The checkpoint's step.
    pub step: u64,
    /// How the model was loaded (a damaged checkpoint passed over).
    pub warnings: Vec<String>,
}

/// Writes run `run`'s model at its newest intact checkpoint to `out` (HF layout, in `dtype` or
/// the base model's), with a lineage file naming the run so chats with the export link back.
pub fn export_run(
    data_dir: &Path,
    run: &RunDir,
    out: &Path,
    dtype: Option<DType>,
    force: bool,
    cancel: &AtomicBool,
) -> Result<Exported> {
    let (exp, base, _) = crate::runner::model::run_base(data_dir, run)?;
    let (loaded, step) = crate::runner::model::load_run(
        data_dir,
        run,
        None,
        DType::F32,
        &candle_core::Device::Cpu,
        Quant::None,
    )?;
    crate::core::checkpoint::check_cancel(Some(cancel))?;
    let opts = SaveOptions {
        dtype: dtype.unwrap_or_else(|| base.stored_dtype()),
        force,
        ..SaveOptions::default()
    };
    crate::core::checkpoint::hf::save_model(
        &loaded.model,
        base.tokenizer(),
        base.config_json(),
        base.generation_config(),
        out,
        &opts,
    )?;
    crate::core::atomic::write_json(
        &out.join(crate::runner::transcript::LINEAGE_FILE),
        &serde_json::json!({ "run": run.id, "step": step, "experiment": exp.name }),
    )?;
    Ok(Exported {
        step,
        warnings: loaded.warnings,
    })
}
