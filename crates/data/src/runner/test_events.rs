//! Event constructors shared by the runner's and the store's unit tests.

use slayer_engine::events::{BlockStats, EVENT_FORMAT, Event, EventKind};

/// An event logged at time `seq` seconds.
pub(crate) fn ev(seq: u64, kind: EventKind) -> Event {
    Event {
        seq,
        time: seq as f64,
        kind,
    }
}

/// A run's start (a resume from a checkpoint's step with `resumed_from`).
pub(crate) fn start(resumed_from: Option<u64>) -> EventKind {
    EventKind::RunStart {
        format: EVENT_FORMAT,
        run: "r".into(),
        experiment: "name = \"exp\"\n[model]\nbase = \"m\"\n".into(),
        plan: None,
        config: None,
        trainable_params: 0,
        total_steps: 10,
        resumed_from,
        environment: None,
    }
}

/// A logged step, with (block, gradient norm, update ratio) statistics for `blocks`.
pub(crate) fn step(step: u64, loss: f64, blocks: &[(usize, f64, f64)]) -> EventKind {
    EventKind::Step {
        step,
        loss,
        lr: 0.1,
        tokens: 0,
        tokens_per_sec: 1.0,
        grad_norm: 1.0,
        clipped: false,
        blocks: blocks
            .iter()
            .map(|&(block, grad_norm, update_ratio)| BlockStats {
                block,
                grad_norm,
                weight_norm: 1.0,
                update_ratio,
            })
            .collect(),
    }
}
