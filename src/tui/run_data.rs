//! What the console knows of a run: from its events as they arrive, the run's projection
//! (shared with the store and the CLI), its alerts, evaluations and a readable log tail; from
//! the store, while the run is in view, its step history and per-block statistics (the
//! monitor's charts and heatmap).

use std::collections::VecDeque;

use crate::core::events::{EvalRecord, Event, EventKind};
use crate::runner::RunProjection;
use crate::runner::projection::Applied;
pub use crate::runner::series::{BlockPoint, RunSeries, StepPoint};

/// One block of the run's model, as its plan resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub index: usize,
    pub new: bool,
    pub trainable: bool,
}

/// The log lines kept per run for the monitor's scrollback (a line is about 100 bytes).
const LOG_LINES: usize = 5_000;

#[derive(Debug, Clone, Default)]
pub struct RunData {
    pub id: String,
    /// What its events say: the one projection every reader shares (experiment, plan, totals,
    /// warnings, how it ended, resumes).
    pub run: RunProjection,
    /// The joined step history and per-block statistics, from the store while the run is in
    /// view (empty otherwise: a console over many long runs keeps only what it shows);
    /// truncated at once when a resume says so, before the store's newer points arrive.
    pub series: RunSeries,
    pub evals: Vec<EvalRecord>,
    pub log: VecDeque<String>,
    pub problem: Option<String>,
    /// The run's alerts so far, and what raises them.
    pub alerts: Vec<crate::runner::alerts::Alert>,
    detector: crate::runner::alerts::AlertDetector,
}

impl RunData {
    #[must_use]
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            ..Self::default()
        }
    }

    /// Applies new events in order; `reset` first forgets everything (the log was replaced).
    pub fn apply(&mut self, reset: bool, events: &[Event]) {
        if reset {
            *self = Self::new(&self.id);
        }
        for e in events {
            self.alerts.extend(self.detector.feed(e));
            self.log.push_back(crate::runner::describe::describe(e));
            if self.log.len() > LOG_LINES {
                self.log.pop_front();
            }
            if let Applied::Truncate { after } = self.run.apply(e) {
                self.series.truncate_after(after);
            }
            if let EventKind::Eval(r) = &e.kind {
                self.evals.push(r.clone());
            }
        }
    }

    /// Takes the store's points from step `from` on (all of them with `from` 0).
    pub fn take_series(&mut self, from: u64, newer: RunSeries) {
        self.series.splice(from, newer);
    }

    /// The run's blocks as its plan resolved them.
    #[must_use]
    pub fn layers(&self) -> Vec<LayerRow> {
        let plan = &self.run.plan;
        (0..plan.layers)
            .map(|index| LayerRow {
                index,
                new: plan.new.contains(&index),
                trainable: plan.trainable.contains(&index),
            })
            .collect()
    }

    #[must_use]
    pub fn last_step(&self) -> u64 {
        self.series.last_step().unwrap_or(0)
    }

    /// Steps per second of the current worker, and seconds left at that rate.
    #[must_use]
    pub fn rate_and_eta(&self) -> Option<(f64, f64)> {
        let (start_time, start_step) = self.run.segment_start?;
        let last = self.series.steps.last()?;
        let done = last.step.checked_sub(start_step)?;
        let secs = last.time - start_time;
        if done == 0 || secs <= 0.0 {
            return None;
        }
        let rate = done as f64 / secs;
        Some((
            rate,
            self.run.total_steps.saturating_sub(last.step) as f64 / rate,
        ))
    }

    /// Exponential moving average of the loss (the smoothed curve).
    #[must_use]
    pub fn smoothed_loss(&self, alpha: f64) -> Vec<(f64, f64)> {
        let mut ema: Option<f64> = None;
        self.series
            .steps
            .iter()
            .filter(|s| s.loss.is_finite())
            .map(|s| {
                let v = ema.map_or(s.loss, |m| m + alpha * (s.loss - m));
                ema = Some(v);
                (s.step as f64, v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::core::events::BlockStats;

    fn ev(seq: u64, time: f64, kind: EventKind) -> Event {
        Event { seq, time, kind }
    }

    fn start(from: Option<u64>) -> EventKind {
        EventKind::RunStart {
            format: crate::core::events::EVENT_FORMAT,
            run: "r".into(),
            experiment: "name = \"exp\"\n".into(),
            plan: Some(
                serde_json::from_value(serde_json::json!({"base_layers": 2, "preset": null,
                    "layers": [
                    {"index": 0, "origin": "original", "source": 0, "trainable": false},
                    {"index": 1, "origin": "new", "after": 0, "init": {"kind": "copy", "source": 0},
                     "zero": [], "scale": {}, "trainable": true}], "pruned": [1]}))
                .unwrap(),
            ),
            config: None,
            trainable_params: 1,
            total_steps: 10,
            resumed_from: from,
            environment: None,
        }
    }

    fn step(s: u64) -> EventKind {
        EventKind::Step {
            step: s,
            loss: 1.0 / s as f64,
            lr: 0.1,
            tokens: 0,
            tokens_per_sec: 100.0,
            grad_norm: 1.0,
            clipped: false,
            blocks: vec![BlockStats {
                block: 1,
                grad_norm: s as f64,
                weight_norm: 1.0,
                update_ratio: 0.01,
            }],
        }
    }

    #[test]
    fn history_joins_across_a_resume_and_eta_uses_the_current_worker() {
        let mut d = RunData::new("r");
        let mut events = vec![ev(0, 0.0, start(None))];
        events.extend((1..=5).map(|s| ev(s, s as f64, step(s))));
        d.apply(false, &events);
        d.take_series(0, RunSeries::of(&events));
        assert_eq!(d.run.experiment, "exp");
        assert_eq!(d.layers().len(), 2);
        assert!(d.layers()[1].new && d.layers()[1].trainable);
        // The resume truncates the shown history at once; the store's newer points follow.
        let resumed = [ev(6, 100.0, start(Some(3))), ev(7, 102.0, step(4))];
        d.apply(false, &resumed);
        assert_eq!(d.last_step(), 3);
        events.extend(resumed);
        d.take_series(4, RunSeries::of(&events).tail_from(4));
        assert_eq!(
            d.series.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(d.series.blocks[&1].len(), 4);
        let (rate, eta) = d.rate_and_eta().unwrap();
        assert!(
            (rate - 0.5).abs() < 1e-9 && (eta - 12.0).abs() < 1e-9,
            "{rate} {eta}"
        );
        d.apply(true, &[ev(0, 0.0, start(None))]);
        assert!(d.series.steps.is_empty());
    }
}
