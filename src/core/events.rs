//! What a run reports, as typed records. The trainer emits them through an [`EventSink`]; the
//! runner writes them to the run directory's append-only `events.jsonl`, which the console tails.

use serde::{Deserialize, Serialize};

use crate::core::error::Result;

/// Statistics of one trainable block at a logging step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockStats {
    /// Final block index.
    pub block: usize,
    /// L2 norm of the block's gradient (before clipping).
    pub grad_norm: f64,
    /// L2 norm of the block's weights after the step.
    pub weight_norm: f64,
    /// ‖Δw‖ / ‖w‖ of the step.
    pub update_ratio: f64,
}

/// Perplexity of one text set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PplRecord {
    pub name: String,
    pub tokens: usize,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

/// Accuracy on one multiple-choice task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub name: String,
    pub items: usize,
    pub acc: f64,
    pub acc_norm: f64,
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
        loss: f64,
        lr: f64,
        tokens: u64,
        tokens_per_sec: f64,
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
