//! What a run reports, as typed records. The trainer emits them through an [`EventSink`]; the
//! runner writes them to the run directory's append-only `events.jsonl`, which the console tails.

use serde::{Deserialize, Serialize};

use crate::error::Result;

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
        run: String,
        experiment: String,
        /// The resolved layer map.
        plan: serde_json::Value,
        config: serde_json::Value,
        trainable_params: u64,
        total_steps: u64,
        resumed_from: Option<u64>,
        environment: serde_json::Value,
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
