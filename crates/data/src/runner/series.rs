//! A run's step history as the monitor plots it: the joined steps (loss, learning rate, rate,
//! time) and per-block statistics, across resumes. The store keeps it as metric series and
//! serves it (`store::Store::run_series`); [`RunSeries::of`] folds it from the events
//! themselves, for when the store cannot be had and as the reference the store is tested
//! against.

use std::collections::BTreeMap;

use slayer_engine::events::{Event, EventKind};

use super::projection::{Applied, RunProjection};

/// One logged step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPoint {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_sec: f64,
    /// When it was logged (Unix seconds).
    pub time: f64,
}

/// Per-block statistics at a step: (step, gradient norm, update ratio).
pub type BlockPoint = (u64, f64, f64);

/// A run's steps and per-block statistics, each in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSeries {
    pub steps: Vec<StepPoint>,
    /// Block index → its points.
    pub blocks: BTreeMap<usize, Vec<BlockPoint>>,
}

/// Puts `point` in its place by step; a step logged again replaces the old point (as the store
/// does).
fn place<T>(points: &mut Vec<T>, step: u64, point: T, step_of: impl Fn(&T) -> u64) {
    if points.last().is_none_or(|p| step_of(p) < step) {
        points.push(point);
        return;
    }
    match points.binary_search_by_key(&step, step_of) {
        Ok(i) => points[i] = point,
        Err(i) => points.insert(i, point),
    }
}

impl RunSeries {
    /// The series of a whole log: what a resume (or a restart from nothing) replaced is gone,
    /// by the projection's one rule.
    #[must_use]
    pub fn of(events: &[Event]) -> Self {
        let mut projection = RunProjection::default();
        let mut series = Self::default();
        for e in events {
            if let Applied::Truncate { after } = projection.apply(e) {
                series.truncate_after(after);
            }
            series.push(e);
        }
        series
    }

    /// Adds a step event's points; other events add nothing.
    pub fn push(&mut self, event: &Event) {
        let EventKind::Step {
            step,
            loss,
            lr,
            tokens_per_sec,
            blocks,
            ..
        } = &event.kind
        else {
            return;
        };
        let point = StepPoint {
            step: *step,
            loss: *loss,
            lr: *lr,
            tokens_per_sec: *tokens_per_sec,
            time: event.time,
        };
        place(&mut self.steps, *step, point, |p| p.step);
        for b in blocks {
            let points = self.blocks.entry(b.block).or_default();
            place(points, *step, (*step, b.grad_norm, b.update_ratio), |p| p.0);
        }
    }

    /// Drops every point after `step`.
    pub fn truncate_after(&mut self, step: u64) {
        self.steps.retain(|s| s.step <= step);
        for points in self.blocks.values_mut() {
            points.retain(|p| p.0 <= step);
        }
        self.blocks.retain(|_, points| !points.is_empty());
    }

    /// Replaces every point at or after `from` with `newer` (which holds only such points): how
    /// a reader carries on from what the store gave it last time.
    pub fn splice(&mut self, from: u64, newer: Self) {
        self.steps.retain(|s| s.step < from);
        self.steps.extend(newer.steps);
        for points in self.blocks.values_mut() {
            points.retain(|p| p.0 < from);
        }
        for (block, points) in newer.blocks {
            self.blocks.entry(block).or_default().extend(points);
        }
        self.blocks.retain(|_, points| !points.is_empty());
    }

    /// Its points from step `from` on.
    #[must_use]
    pub fn tail_from(&self, from: u64) -> Self {
        Self {
            steps: self
                .steps
                .iter()
                .copied()
                .filter(|s| s.step >= from)
                .collect(),
            blocks: self
                .blocks
                .iter()
                .map(|(b, p)| {
                    (
                        *b,
                        p.iter()
                            .copied()
                            .filter(|p| p.0 >= from)
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, p)| !p.is_empty())
                .collect(),
        }
    }

    /// The newest step, if any.
    #[must_use]
    pub fn last_step(&self) -> Option<u64> {
        self.steps.last().map(|s| s.step)
    }

    /// Whether it holds no step.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.blocks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::runner::test_events::{ev, start};

    fn step(s: u64) -> EventKind {
        crate::runner::test_events::step(s, 1.0 / s as f64, &[(2, s as f64, 0.01)])
    }

    #[test]
    fn a_resume_replaces_what_followed_its_checkpoint() {
        let mut events = vec![ev(0, start(None))];
        events.extend((1..=5).map(|s| ev(s, step(s))));
        events.push(ev(6, start(Some(3))));
        events.push(ev(7, step(4)));
        let series = RunSeries::of(&events);
        let steps: Vec<u64> = series.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        // Step 4 is the resumed worker's (logged at time 7), not the first one's.
        assert!((series.steps[3].time - 7.0).abs() < 1e-12);
        assert_eq!(series.blocks[&2].len(), 4);
        assert_eq!(series.last_step(), Some(4));
        // A restart from nothing forgets every step.
        events.push(ev(8, start(None)));
        assert!(RunSeries::of(&events).is_empty());
    }

    #[test]
    fn splicing_a_newer_tail_is_reading_the_whole_again() {
        let mut events = vec![ev(0, start(None))];
        events.extend((1..=9).map(|s| ev(s, step(s))));
        let whole = RunSeries::of(&events);
        let mut carried = RunSeries::of(&events[..5]);
        carried.splice(3, whole.tail_from(3));
        assert_eq!(carried, whole);
    }

    #[test]
    fn a_step_logged_again_replaces_its_point() {
        let mut series = RunSeries::default();
        for (seq, s) in [(1, 1), (2, 3), (3, 2), (4, 3)] {
            series.push(&ev(seq, step(s)));
        }
        let steps: Vec<(u64, f64)> = series.steps.iter().map(|s| (s.step, s.time)).collect();
        assert_eq!(steps, [(1, 1.0), (2, 3.0), (3, 4.0)]);
    }
}
