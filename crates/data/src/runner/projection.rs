//! The one reading of a run's event log: what the store, the console's monitor and run table,
//! `runs ls/show`, the compare table and studies know of a run from its events.
//!
//! A log is a sequence of worker segments, each opened by a `run_start`. A resume from
//! checkpoint `c` replaces the steps after `c` that the previous worker logged (they died with
//! it); a start from nothing after earlier events (every checkpoint was damaged) replaces all of
//! them. [`RunProjection::apply`] is that rule, written once. It keeps a run's summary, small
//! enough for the store to keep per run and carry on from; readers that keep more (the store's
//! metric series, the console's step history, the CLI's joined steps) mirror the
//! [`Applied::Truncate`] it returns instead of deciding for themselves.

use serde::{Deserialize, Serialize};
use slayer_engine::events::{EVENT_FORMAT, Event, EventKind, RunStatus, experiment_fields};

use super::PlanShape;

/// Warnings a projection keeps (the newest; [`RunProjection::warning_count`] counts all).
const KEPT_WARNINGS: usize = 100;

/// How a run's last worker segment ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ending {
    pub status: RunStatus,
    pub step: u64,
    pub message: String,
    /// When the end was recorded (a worker recorded after it is a resume starting).
    pub time: f64,
}

/// A checkpoint and the last logged step it holds, so a resume from it knows its loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct CheckpointPoint {
    checkpoint: u64,
    step: u64,
    loss: Option<f64>,
}

/// A run as its events describe it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunProjection {
    /// The experiment's name and base model, from the first start's experiment text.
    pub experiment: String,
    pub base_model: String,
    /// The experiment text the run was first launched with.
    pub experiment_text: String,
    pub plan: PlanShape,
    pub trainable_params: u64,
    pub total_steps: u64,
    /// The last step of the joined history, and its loss.
    pub step: u64,
    pub last_loss: Option<f64>,
    /// Steps in the joined history.
    pub logged_steps: u64,
    /// The first and the latest event's time.
    pub started: Option<f64>,
    pub last_event: Option<f64>,
    /// When the current worker segment started, and the step it started from (rate, ETA).
    pub segment_start: Option<(f64, u64)>,
    /// Worker segments after the first.
    pub resumes: u32,
    /// Checkpoints written and not given up by a resume from an earlier one, in the order
    /// written, each with the last logged step it holds (see [`RunProjection::checkpoints`]).
    checkpoint_points: Vec<CheckpointPoint>,
    pub evaluations: usize,
    /// The newest warnings (skipped steps included), and how many there were.
    pub warnings: Vec<String>,
    pub warning_count: usize,
    /// How the latest segment ended; `None` while it runs (or its worker died silently).
    pub end: Option<Ending>,
    /// The log was written by a newer slayer (its event format): readers say so.
    pub newer_format: Option<u32>,
    /// Where the latest worker ran: its threads, CPUs and slayer (absent in older logs).
    pub environment: Option<slayer_engine::events::Environment>,
}

/// What an event did that readers keeping more than the summary must mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Kept,
    /// Forget every step after `after` (and what was measured at it) before going on.
    Truncate {
        after: u64,
    },
}

impl RunProjection {
    /// The projection of a whole log.
    #[must_use]
    pub fn of(events: &[Event]) -> Self {
        let mut p = Self::default();
        for e in events {
            p.apply(e);
        }
        p
    }

    /// Takes in the next event of the log.
    pub fn apply(&mut self, event: &Event) -> Applied {
        let mut applied = Applied::Kept;
        let earlier_start = self.segment_start.is_some();
        self.started.get_or_insert(event.time);
        self.last_event = Some(event.time);
        match &event.kind {
            EventKind::RunStart {
                format,
                experiment,
                plan,
                trainable_params,
                total_steps,
                resumed_from,
                environment,
                ..
            } => {
                if environment.is_some() {
                    self.environment.clone_from(environment);
                }
                if *format > EVENT_FORMAT {
                    self.newer_format = Some(*format);
                }
                if self.experiment_text.is_empty() {
                    let (name, base) = experiment_fields(experiment);
                    self.experiment = name;
                    self.base_model = base;
                    self.experiment_text.clone_from(experiment);
                }
                // A start after an earlier one opens a new segment: what the last one logged
                // past the checkpoint it resumes from is gone.
                if earlier_start {
                    self.resumes += 1;
                    let after = resumed_from.unwrap_or(0);
                    self.truncate_after(after);
                    applied = Applied::Truncate { after };
                }
                if let Some(map) = plan {
                    self.plan = PlanShape::of(map);
                }
                self.trainable_params = *trainable_params;
                self.total_steps = *total_steps;
                self.end = None;
                self.segment_start = Some((event.time, resumed_from.unwrap_or(0)));
            }
            EventKind::Step { step, loss, .. } => {
                self.step = *step;
                self.last_loss = Some(*loss);
                self.logged_steps += 1;
            }
            EventKind::SkippedStep { step, reason } => {
                self.warn(format!("step {step} skipped: {reason}"));
            }
            EventKind::Eval(_) => self.evaluations += 1,
            EventKind::Checkpoint { step, .. } => {
                self.checkpoint_points.retain(|c| c.checkpoint != *step);
                self.checkpoint_points.push(CheckpointPoint {
                    checkpoint: *step,
                    step: self.step.min(*step),
                    loss: (self.step <= *step).then_some(self.last_loss).flatten(),
                });
            }
            EventKind::Warning { message } => self.warn(message.clone()),
            EventKind::End {
                status,
                step,
                message,
            } => {
                self.end = Some(Ending {
                    status: *status,
                    step: *step,
                    message: message.clone(),
                    time: event.time,
                });
            }
        }
        applied
    }

    fn truncate_after(&mut self, after: u64) {
        let at = self
            .checkpoint_points
            .iter()
            .find(|c| c.checkpoint == after)
            .copied();
        self.checkpoint_points.retain(|c| c.checkpoint <= after);
        if self.step > after {
            // Without the checkpoint's record, the step is known and its loss is not.
            (self.step, self.last_loss) = at.map_or((after, None), |p| (p.step, p.loss));
        }
        if after == 0 {
            self.step = 0;
            self.last_loss = None;
            self.logged_steps = 0;
        }
    }

    fn warn(&mut self, message: String) {
        self.warning_count += 1;
        self.warnings.push(message);
        if self.warnings.len() > KEPT_WARNINGS {
            self.warnings.remove(0);
        }
    }

    /// The steps of the checkpoints written and not given up by a resume from an earlier one,
    /// ascending (rotation may have deleted some since: the directory says which exist).
    #[must_use]
    pub fn checkpoints(&self) -> Vec<u64> {
        let mut steps: Vec<u64> = self
            .checkpoint_points
            .iter()
            .map(|c| c.checkpoint)
            .collect();
        steps.sort_unstable();
        steps
    }

    /// Seconds from the first event to the latest.
    #[must_use]
    pub fn ran_secs(&self) -> f64 {
        match (self.started, self.last_event) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }
}

/// The run's step events as one history: what survives every resume, in order.
#[must_use]
pub fn joined_steps(events: &[Event]) -> Vec<&Event> {
    let mut projection = RunProjection::default();
    let mut steps: Vec<&Event> = Vec::new();
    for e in events {
        if let Applied::Truncate { after } = projection.apply(e) {
            steps.retain(|s| matches!(s.kind, EventKind::Step { step, .. } if step <= after));
        }
        if matches!(e.kind, EventKind::Step { .. }) {
            steps.push(e);
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    use crate::runner::test_events::{ev, start};

    fn step(step: u64, loss: f64) -> EventKind {
        crate::runner::test_events::step(step, loss, &[])
    }

    fn checkpoint(step: u64) -> EventKind {
        EventKind::Checkpoint {
            step,
            path: String::new(),
        }
    }

    fn end(status: RunStatus, step: u64) -> EventKind {
        EventKind::End {
            status,
            step,
            message: String::new(),
        }
    }

    #[test]
    fn a_resume_replaces_the_steps_after_its_checkpoint() {
        let events = vec![
            ev(0, start(None)),
            ev(1, step(1, 4.0)),
            ev(2, step(2, 3.0)),
            ev(3, checkpoint(2)),
            ev(4, step(3, 2.5)),
            ev(5, step(4, 2.0)),
            ev(6, checkpoint(4)),
            ev(7, step(5, 1.5)),
            // Killed at 5; resumed from 2 (checkpoint 4 was damaged).
            ev(8, start(Some(2))),
        ];
        let p = RunProjection::of(&events);
        assert_eq!((p.step, p.last_loss), (2, Some(3.0)));
        assert_eq!(p.checkpoints(), vec![2]);
        assert_eq!(p.resumes, 1);
        assert_eq!(p.experiment, "exp");
        assert_eq!(p.base_model, "m");
        assert_eq!(p.segment_start, Some((8.0, 2)));
        let steps: Vec<u64> = joined_steps(&events)
            .iter()
            .map(|e| match e.kind {
                EventKind::Step { step, .. } => step,
                _ => 0,
            })
            .collect();
        assert_eq!(steps, vec![1, 2]);
    }

    #[test]
    fn a_start_from_nothing_after_earlier_steps_forgets_them_all() {
        let events = vec![
            ev(0, start(None)),
            ev(1, step(1, 4.0)),
            ev(2, end(RunStatus::Stopped, 1)),
            ev(3, start(None)),
            ev(4, step(1, 3.9)),
        ];
        let p = RunProjection::of(&events);
        assert_eq!((p.step, p.last_loss, p.logged_steps), (1, Some(3.9), 1));
        assert_eq!(p.end, None);
        assert_eq!(joined_steps(&events).len(), 1);
    }

    #[test]
    fn the_latest_end_decides_and_a_start_after_it_clears_it() {
        let mut p = RunProjection::of(&[ev(0, start(None)), ev(1, end(RunStatus::Failed, 0))]);
        assert_eq!(p.end.as_ref().map(|e| e.status), Some(RunStatus::Failed));
        assert_eq!(
            p.apply(&ev(2, start(Some(0)))),
            Applied::Truncate { after: 0 }
        );
        assert_eq!(p.end, None);
    }

    #[test]
    fn warnings_are_bounded_but_counted() {
        let mut events = vec![ev(0, start(None))];
        events.extend((1..=150).map(|i| {
            ev(
                i,
                EventKind::SkippedStep {
                    step: i,
                    reason: "nan".into(),
                },
            )
        }));
        let p = RunProjection::of(&events);
        assert_eq!(p.warning_count, 150);
        assert_eq!(p.warnings.len(), KEPT_WARNINGS);
        assert_eq!(p.warnings.last().unwrap(), "step 150 skipped: nan");
    }

    #[test]
    fn a_log_from_a_newer_slayer_is_flagged() {
        let mut kind = start(None);
        if let EventKind::RunStart { format, .. } = &mut kind {
            *format = EVENT_FORMAT + 1;
        }
        assert_eq!(
            RunProjection::of(&[ev(0, kind)]).newer_format,
            Some(EVENT_FORMAT + 1)
        );
    }
}
