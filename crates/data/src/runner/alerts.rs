//! Alerts: what in a run's events a user would want to be told about wherever they are —
//! steps whose loss or gradients were not finite, a loss spike, a plateau, the run's end.
//! Derived from the events alone, incrementally (the console feeds events as they arrive, the
//! CLI a whole log), so every front end sees the same alerts.

use serde::Serialize;

use slayer_engine::events::{Event, EventKind, RunStatus};

/// How much an alert matters: a problem to look at, or news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Problem,
    News,
}

/// One alert of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub step: u64,
    pub severity: Severity,
    pub kind: AlertKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    NonFinite,
    LossSpike,
    Plateau,
    Finished,
    Failed,
    Stopped,
}

/// Steps of history before spikes and plateaus are judged (the first steps of a run move fast).
const WARMUP_STEPS: usize = 20;
/// A step's loss this many times the recent mean is a spike.
const SPIKE_FACTOR: f64 = 1.5;
/// Recent steps the spike baseline averages.
const SPIKE_WINDOW: usize = 20;
/// A plateau: over this many steps, the mean loss of the newest quarter improved on the mean
/// of the oldest quarter by less than [`PLATEAU_GAIN`] (relative).
const PLATEAU_STEPS: usize = 100;
const PLATEAU_GAIN: f64 = 0.005;

/// Turns events into alerts, one event at a time.
#[derive(Debug, Clone, Default)]
pub struct AlertDetector {
    /// Finite losses of the current segment, in step order.
    losses: Vec<(u64, f64)>,
    /// The step of the plateau alerted last (none again until the loss moves).
    on_plateau: bool,
}

impl AlertDetector {
    /// The alerts `event` raises.
    pub fn feed(&mut self, event: &Event) -> Vec<Alert> {
        let mut out = Vec::new();
        match &event.kind {
            EventKind::RunStart { resumed_from, .. } => {
                // A resumed run drops the steps after its checkpoint; a new one starts afresh.
                let from = resumed_from.unwrap_or(0);
                self.losses.retain(|(s, _)| *s <= from);
                self.on_plateau = false;
            }
            EventKind::SkippedStep { step, reason } => out.push(Alert {
                step: *step,
                severity: Severity::Problem,
                kind: AlertKind::NonFinite,
                message: format!("step {step} skipped: {reason}"),
            }),
            EventKind::Step {
                step,
                loss,
                grad_norm,
                ..
            } => {
                if !loss.is_finite() || !grad_norm.is_finite() {
                    out.push(Alert {
                        step: *step,
                        severity: Severity::Problem,
                        kind: AlertKind::NonFinite,
                        message: format!("step {step}: loss {loss}, gradient norm {grad_norm}"),
                    });
                    return out;
                }
                out.extend(self.spike(*step, *loss));
                self.losses.push((*step, *loss));
                out.extend(self.plateau(*step));
            }
            EventKind::End {
                status,
                step,
                message,
            } => {
                let (kind, severity, what) = match status {
                    RunStatus::Finished => (AlertKind::Finished, Severity::News, "finished"),
                    RunStatus::Stopped => (AlertKind::Stopped, Severity::News, "stopped"),
                    RunStatus::Failed => (AlertKind::Failed, Severity::Problem, "failed"),
                };
                let detail = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                };
                out.push(Alert {
                    step: *step,
                    severity,
                    kind,
                    message: format!("{what} at step {step}{detail}"),
                });
            }
            _ => {}
        }
        out
    }

    fn spike(&self, step: u64, loss: f64) -> Option<Alert> {
        if self.losses.len() < WARMUP_STEPS {
            return None;
        }
        let recent = &self.losses[self.losses.len() - SPIKE_WINDOW..];
        let mean = recent.iter().map(|(_, l)| l).sum::<f64>() / recent.len() as f64;
        (mean > 0.0 && loss > SPIKE_FACTOR * mean).then(|| Alert {
            step,
            severity: Severity::Problem,
            kind: AlertKind::LossSpike,
            message: format!(
                "loss spiked at step {step}: {loss:.4}, {:.1}× the mean {mean:.4} of the last \
                 {SPIKE_WINDOW} steps",
                loss / mean
            ),
        })
    }

    fn plateau(&mut self, step: u64) -> Option<Alert> {
        if self.losses.len() < PLATEAU_STEPS.max(WARMUP_STEPS) {
            return None;
        }
        let window = &self.losses[self.losses.len() - PLATEAU_STEPS..];
        let quarter = PLATEAU_STEPS / 4;
        let mean = |xs: &[(u64, f64)]| xs.iter().map(|(_, l)| l).sum::<f64>() / xs.len() as f64;
        let (old, new) = (
            mean(&window[..quarter]),
            mean(&window[window.len() - quarter..]),
        );
        let gain = (old - new) / old.abs().max(f64::MIN_POSITIVE);
        if gain >= PLATEAU_GAIN {
            self.on_plateau = false;
            return None;
        }
        if self.on_plateau {
            return None;
        }
        self.on_plateau = true;
        Some(Alert {
            step,
            severity: Severity::News,
            kind: AlertKind::Plateau,
            message: format!(
                "loss on a plateau at step {step}: {new:.4} over the last {PLATEAU_STEPS} steps \
                 ({:+.2}%)",
                -gain * 100.0
            ),
        })
    }
}

/// Every alert of a whole event log, in order.
#[must_use]
pub fn alerts(events: &[Event]) -> Vec<Alert> {
    let mut detector = AlertDetector::default();
    events.iter().flat_map(|e| detector.feed(e)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn step(step: u64, loss: f64) -> Event {
        Event {
            seq: step,
            time: 0.0,
            kind: EventKind::Step {
                step,
                loss,
                lr: 1e-3,
                tokens: 0,
                tokens_per_sec: 0.0,
                grad_norm: 1.0,
                clipped: false,
                blocks: Vec::new(),
            },
        }
    }

    fn kinds(events: &[Event]) -> Vec<(u64, AlertKind)> {
        alerts(events).iter().map(|a| (a.step, a.kind)).collect()
    }

    #[test]
    fn a_falling_loss_raises_nothing() {
        let events: Vec<Event> = (1..=300)
            .map(|s| step(s, 4.0 / (1.0 + s as f64 / 20.0)))
            .collect();
        assert_eq!(kinds(&events), vec![]);
    }

    #[test]
    fn spikes_non_finite_steps_plateaus_and_the_end() {
        let mut events: Vec<Event> = (1..=40).map(|s| step(s, 3.0 - s as f64 * 0.01)).collect();
        events.push(step(41, 9.0));
        events.push(step(42, f64::NAN));
        events.push(Event {
            seq: 43,
            time: 0.0,
            kind: EventKind::SkippedStep {
                step: 43,
                reason: "non-finite gradient".into(),
            },
        });
        // A flat stretch: one plateau alert, not one per step.
        events.extend((44..=200).map(|s| step(s, 2.5 + 0.001 * (s % 3) as f64)));
        events.push(Event {
            seq: 201,
            time: 0.0,
            kind: EventKind::End {
                status: RunStatus::Failed,
                step: 200,
                message: "out of memory".into(),
            },
        });
        let found = kinds(&events);
        assert_eq!(found[0], (41, AlertKind::LossSpike));
        assert_eq!(found[1], (42, AlertKind::NonFinite));
        assert_eq!(found[2], (43, AlertKind::NonFinite));
        assert_eq!(
            found
                .iter()
                .filter(|(_, k)| *k == AlertKind::Plateau)
                .count(),
            1,
            "{found:?}"
        );
        let last = alerts(&events).pop().unwrap();
        assert_eq!(last.kind, AlertKind::Failed);
        assert!(last.message.contains("out of memory"));
    }
}
