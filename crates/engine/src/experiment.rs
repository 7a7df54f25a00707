//! Experiment files: base model, layer plan, data, training and evaluation settings in one TOML
//! file. Paths inside are relative to the file. Problems are diagnostics with `file:line:col`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::plan::{self, Diagnostic, ModelSpec, PlanSpec};
use crate::train::TrainConfig;

/// One path or a list of them.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// `[data]`: what trains the new blocks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Corpus files or directories (text, or JSONL with `text`).
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Generate the fictional-facts corpus instead (or as well): its biographies train, its
    /// probe and control questions and general text evaluate.
    pub synth: Option<SynthConfig>,
    /// Share of documents held out for domain perplexity.
    pub heldout_fraction: f64,
    /// Seed of the held-out split.
    pub split_seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: Vec::new(),
            synth: None,
            heldout_fraction: 0.05,
            split_seed: 0,
        }
    }
}

/// `[data.synth]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub entities: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            entities: 60,
            seed: 0,
        }
    }
}

/// `[eval]`: what is measured before, during and after training.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// General text files: perplexity here measures forgetting.
    #[serde(deserialize_with = "one_or_many")]
    pub ppl: Vec<PathBuf>,
    /// Multiple-choice task files (JSONL).
    #[serde(deserialize_with = "one_or_many")]
    pub tasks: Vec<PathBuf>,
    /// Perplexity on the held-out domain documents (injection).
    pub heldout: bool,
    /// Tokens scored per perplexity set at most.
    pub max_tokens: usize,
    /// Window of the perplexity computation.
    pub window: usize,
    /// Evaluations before training: of the base model (`base`) and of the expanded model at
    /// step 0 (`expanded`). A study evaluates the base model once for all its cells.
    pub before: Vec<Before>,
    /// Prompts answered greedily at every evaluation (shown in the monitor). Empty: the first
    /// few questions of the first task set (the probe), with their expected answers.
    pub samples: Vec<String>,
    /// Tokens generated per sample at most; 0 turns samples off.
    pub sample_tokens: usize,
}

/// Sample prompts an evaluation answers at most (each costs a generation).
pub const MAX_SAMPLES: usize = 16;
/// Tokens per sample at most.
pub const MAX_SAMPLE_TOKENS: usize = 256;

/// An evaluation before training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Before {
    Base,
    Expanded,
}

impl Before {
    /// The evaluation's label in the event log.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Expanded => "expanded",
        }
    }
}

impl EvalConfig {
    /// Refuses settings that cannot evaluate anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 {
            return Err("eval.window must be at least 1 token".into());
        }
        if self.max_tokens == 0 {
            return Err("eval.max_tokens must be at least 1".into());
        }
        if self.samples.len() > MAX_SAMPLES {
            return Err(format!(
                "eval.samples has {} prompts; at most {MAX_SAMPLES} (each is generated at every evaluation)",
                self.samples.len()
            ));
        }
        if self.sample_tokens > MAX_SAMPLE_TOKENS {
            return Err(format!(
                "eval.sample_tokens = {} exceeds the limit of {MAX_SAMPLE_TOKENS}",
                self.sample_tokens
            ));
        }
        if self.samples.iter().any(|p| p.trim().is_empty()) {
            return Err("eval.samples holds an empty prompt".into());
        }
        Ok(())
    }
}

impl DataConfig {
    /// Refuses a generated corpus too large to hold (see [`crate::synth::MAX_ENTITIES`]).
    pub fn validate(&self) -> Result<(), String> {
        match &self.synth {
            Some(s) if s.entities > crate::synth::MAX_ENTITIES => Err(format!(
                "data.synth.entities = {} exceeds the limit of {}",
                s.entities,
                crate::synth::MAX_ENTITIES
            )),
            _ => Ok(()),
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            ppl: Vec::new(),
            tasks: Vec::new(),
            heldout: true,
            max_tokens: 16_384,
            window: 512,
            before: vec![Before::Base, Before::Expanded],
            samples: Vec::new(),
            sample_tokens: 24,
        }
    }
}

/// `path` as the experiment file in `dir` means it: absolute paths as they are, relative ones
/// joined to `dir`. The one rule for the data and evaluation paths of experiments, of the copy a
/// run keeps and of a study's cells.
#[must_use]
pub fn anchored(path: &Path, dir: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// The experiment fields that hold paths: (section, key).
pub const PATH_FIELDS: [(&str, &str); 3] = [("data", "train"), ("eval", "ppl"), ("eval", "tasks")];

/// A parsed experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub path: PathBuf,
    pub text: String,
    pub name: String,
    pub description: String,
    pub model: Option<ModelSpec>,
    pub plan: PlanSpec,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "read by plan::parse, with spans")]
    model: Option<toml::Value>,
    #[serde(default)]
    #[expect(dead_code, reason = "read by plan::parse, with spans")]
    plan: Option<toml::Value>,
    #[serde(default)]
    data: DataConfig,
    #[serde(default)]
    train: TrainConfig,
    #[serde(default)]
    eval: EvalConfig,
    /// Where a background run may run besides this machine: read by the launcher (the data
    /// directory's crate), which owns it; the engine only lets it through.
    #[serde(default)]
    #[expect(dead_code, reason = "read by the launcher, not the engine")]
    slurm: Option<toml::Value>,
}

impl Experiment {
    /// Parses experiment text; `path` names the file in diagnostics and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Diagnostic> {
        let plan_file = plan::parse(text)?;
        let file: File = toml::from_str(text).map_err(|e| Diagnostic {
            severity: plan::Severity::Error,
            message: e.message().trim().to_string(),
            span: e.span(),
        })?;
        if let Err(message) = file
            .train
            .validate()
            .and_then(|()| file.eval.validate())
            .and_then(|()| file.data.validate())
        {
            return Err(Diagnostic {
                severity: plan::Severity::Error,
                message,
                span: None,
            });
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let anchor = |p: &PathBuf| anchored(p, &base);
        let mut data = file.data;
        data.train = data.train.iter().map(anchor).collect();
        let mut eval = file.eval;
        eval.ppl = eval.ppl.iter().map(anchor).collect();
        eval.tasks = eval.tasks.iter().map(anchor).collect();
        if data.train.is_empty() && data.synth.is_none() {
            return Err(Diagnostic {
                severity: plan::Severity::Error,
                message: "no training data: set [data] train = \"FILE\" or [data.synth]".into(),
                span: None,
            });
        }
        let name = file.name.unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "experiment".into(), |s| s.to_string_lossy().into_owned())
        });
        Ok(Self {
            path: path.to_path_buf(),
            text: text.to_string(),
            name,
            description: file.description.unwrap_or_default(),
            model: plan_file.model,
            plan: plan_file.plan,
            data,
            train: file.train,
            eval,
        })
    }

    /// Reads and parses an experiment file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = crate::corpus::read_settings(path, "experiment").map_err(|e| e.to_string())?;
        Self::parse(path, &text).map_err(|d| d.locate(&path.display().to_string(), &text))
    }
}
