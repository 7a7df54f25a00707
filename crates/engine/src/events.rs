//! What a run reports, as typed records. The trainer emits them through an [`EventSink`]; the
//! runner writes them to the run directory's append-only `events.jsonl`, which the console tails.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::Quant;
use crate::plan::LayerMap;
use crate::train::TrainConfig;

/// The format of the events this build writes. A reader meeting a higher number says the log
/// comes from a newer slayer instead of misreading it.
pub const EVENT_FORMAT: u32 = 2;

fn format_one() -> u32 {
    1
}

/// What a run was launched with, beside its experiment text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The base model as given (a path, a fetched name or `gguf:`/`hf:` spec).
    pub base_model: String,
    pub train: TrainConfig,
    /// The device, as the worker opened it (for people; the experiment says what was asked).
    pub device: String,
}

/// Where a run's worker ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Environment {
    /// slayer's version.
    pub slayer: String,
    /// The worker's numerics threads.
    pub threads: usize,
    /// Where that count came from (`--threads`, `[train] threads`, candle's variables, or the
    /// CPUs the worker may use).
    pub thread_source: String,
    /// The CPUs the worker may use (affinity mask and cgroup quota).
    pub cpus_available: usize,
    /// The CPU's model name and the widest vector instructions its kernels use.
    pub cpu: String,
    pub simd: String,
}

/// The `name` and `[model] base` of an experiment's text, as a run records it: the one reading
/// of them for every projection of an event log (empty when absent or unparsable).
#[must_use]
pub fn experiment_fields(text: &str) -> (String, String) {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return (String::new(), String::new());
    };
    let text_at = |v: Option<&toml::Value>| v.and_then(toml::Value::as_str).map(str::to_string);
    (
        text_at(table.get("name")).unwrap_or_default(),
        text_at(table.get("model").and_then(|m| m.get("base"))).unwrap_or_default(),
    )
}

/// JSON has no NaN or infinity: serde_json writes them as `null`. Read `null` back as NaN so a
/// diverged metric never makes a log unreadable.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Statistics of one trainable block at a logging step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockStats {
    /// Final block index.
    pub block: usize,
    /// L2 norm of the block's gradient (before clipping).
    #[serde(deserialize_with = "f64_or_nan")]
    pub grad_norm: f64,
    /// L2 norm of the block's weights after the step.
    #[serde(deserialize_with = "f64_or_nan")]
    pub weight_norm: f64,
    /// ‖Δw‖ / ‖w‖ of the step.
    #[serde(deserialize_with = "f64_or_nan")]
    pub update_ratio: f64,
}

/// Perplexity of one text set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PplRecord {
    pub name: String,
    pub tokens: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub perplexity: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub bits_per_byte: f64,
}

/// Accuracy on one multiple-choice task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub name: String,
    pub items: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub acc: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub acc_norm: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub acc_stderr: f64,
}

/// An evaluation of one model state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// `base`, `expanded` (step 0) or `step`/`final`.
    pub label: String,
    pub step: u64,
    pub ppl: Vec<PplRecord>,
    pub tasks: Vec<TaskRecord>,
    /// Greedy answers to the experiment's sample prompts: the model's change in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SampleRecord>,
    /// The quantisation of the model evaluated (training's evaluations: none).
    #[serde(default, skip_serializing_if = "Quant::is_none")]
    pub quant: Quant,
}

/// One sample generation of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub prompt: String,
    /// What the model continued with (greedy, at most `[eval] sample_tokens` tokens).
    pub text: String,
    /// The answer the prompt's task expects, when it comes from one (the probe's gold choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

/// One event of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    RunStart {
        /// The event format the worker wrote ([`EVENT_FORMAT`]); logs written before it was
        /// recorded read as 1, whose payloads had the same shape untyped.
        #[serde(default = "format_one")]
        format: u32,
        run: String,
        /// The experiment's TOML as launched: the record (its name and model are read from it
        /// by [`experiment_fields`]).
        experiment: String,
        /// The resolved layer map (absent only in hand-written logs).
        plan: Option<LayerMap>,
        /// Boxed: the training settings would make every event as large as a start.
        config: Option<Box<RunConfig>>,
        trainable_params: u64,
        total_steps: u64,
        resumed_from: Option<u64>,
        environment: Option<Environment>,
    },
    Step {
        step: u64,
        #[serde(deserialize_with = "f64_or_nan")]
        loss: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        lr: f64,
        tokens: u64,
        #[serde(deserialize_with = "f64_or_nan")]
        tokens_per_sec: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        grad_norm: f64,
        clipped: bool,
        blocks: Vec<BlockStats>,
    },
    SkippedStep {
        step: u64,
        reason: String,
    },
    Eval(EvalRecord),
    Checkpoint {
        step: u64,
        path: String,
    },
    Warning {
        message: String,
    },
    End {
        status: RunStatus,
        step: u64,
        message: String,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Finished,
    Stopped,
    Failed,
}

/// A sequence-numbered, timestamped event: one line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Seconds since the Unix epoch.
    #[serde(deserialize_with = "f64_or_nan")]
    pub time: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Where a run's events go.
pub trait EventSink {
    /// Records an event (buffered; flushed at least every second).
    fn emit(&mut self, kind: EventKind) -> Result<()>;
    /// Makes everything emitted so far durable (fsync), e.g. at a checkpoint.
    fn sync(&mut self) -> Result<()>;
}

/// A sink that keeps events in memory (tests, and callers that only want the result).
#[derive(Debug, Default)]
pub struct MemorySink {
    pub events: Vec<EventKind>,
}

impl EventSink for MemorySink {
    fn emit(&mut self, kind: EventKind) -> Result<()> {
        self.events.push(kind);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
}
