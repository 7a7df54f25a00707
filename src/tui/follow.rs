//! The follow thread: tails every run's event log and the experiment files, keeps the store
//! current from the run directories (short holds, so the CLI's store commands answer beside the
//! console) and reads the console's read model from it: the run table, the chats, and the step
//! history of the runs in view. Where the store cannot be had, the same things come from the
//! directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::app::{self, Event, RunRow};
use super::{load_chats, load_experiments};
use crate::core::events::EventKind;
use crate::runner::series::RunSeries;
use crate::runner::tail::Update;

/// The runs whose step history the console shows, as it last said (shared with the event loop).
pub(super) type Viewed = Arc<Mutex<Vec<String>>>;

/// Follows every run's event log and the experiment files; re-reads the run table when runs
/// change (and every few seconds, for liveness), and the step history of the runs in view when
/// they change or come into view.
pub(super) fn spawn_follower(
    data_dir: PathBuf,
    tx: UnboundedSender<Event>,
    stop: Arc<AtomicBool>,
    viewed: Viewed,
) {
    let _ = std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || {
            // The store is opened for each sync and closed again, so the CLI's store commands
            // answer while the console runs (see `store`'s module doc). Runs whose events
            // arrived while someone else held it are ingested at the next sync.
            let mut store_sync = StoreSync::new(&data_dir, tx.clone());
            let mut feed = SeriesFeed::default();
            let mut follower = crate::runner::tail::Follower::all(&data_dir);
            let mut last_chats = Vec::new();
            // The directory scan, for when the store is busy: only changed logs are parsed again.
            let mut run_table = crate::runner::RunTable::default();
            let mut updates = follower.poll_all();
            let mut last_table: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let mut experiments_changed = false;
                let mut runs_changed = false;
                let mut changed_runs = Vec::new();
                for u in &updates {
                    match u {
                        Update::Experiment(_) => experiments_changed = true,
                        Update::Events { run, .. } => {
                            runs_changed = true;
                            changed_runs.push(run.clone());
                        }
                        Update::Problem { .. } => {}
                    }
                }
                store_sync.want(changed_runs);
                feed.note(&updates);
                let asked = feed.asked(&viewed);
                // The run table and chats come from the store (the read model), at most once a
                // second while runs change and every 2 s for liveness; from the directories
                // while the store cannot be had.
                let read = last_table.is_none_or(|t| {
                    (runs_changed && t.elapsed() > Duration::from_secs(1))
                        || t.elapsed() > Duration::from_secs(2)
                });
                let model = store_sync.sync(read, &asked);
                if !updates.is_empty()
                    && tx
                        .send(Event::Follow(std::mem::take(&mut updates)))
                        .is_err()
                {
                    return;
                }
                if let Some(series) = model.series {
                    for (run, from, points) in series {
                        feed.delivered(&run, from, &points);
                        let _ = tx.send(Event::Series {
                            run,
                            from,
                            series: points,
                        });
                    }
                }
                if experiments_changed {
                    let _ = tx.send(Event::Experiments(load_experiments(&data_dir)));
                }
                if read {
                    last_table = Some(Instant::now());
                    let (runs, chats) = model
                        .table
                        .unwrap_or_else(|| (run_table.refresh(&data_dir), load_chats(&data_dir)));
                    let _ = tx.send(Event::Runs(runs));
                    if chats != last_chats {
                        last_chats.clone_from(&chats);
                        let _ = tx.send(Event::Chats(chats));
                    }
                }
                // A short wait: a run that comes into view gets its history within a moment.
                updates = follower.wait(Duration::from_millis(250));
            }
        });
}

/// The console's side of the store: short holds, at most one a second.
struct StoreSync {
    data_dir: PathBuf,
    tx: UnboundedSender<Event>,
    /// Runs with events not yet ingested.
    pending: BTreeSet<String>,
    /// Everything is to be ingested (at start, and after the store could not be had).
    whole: bool,
    /// Whether the last try failed (said once on the status line, and once when it mends).
    failing: bool,
    last_try: Option<Instant>,
}

impl StoreSync {
    /// How long one sync waits for a CLI command that holds the store.
    const PATIENCE: Duration = Duration::from_millis(500);
    /// The least time between two syncs: a run logging ten steps a second costs one open a
    /// second, not ten.
    const INTERVAL: Duration = Duration::from_secs(1);

    fn new(data_dir: &Path, tx: UnboundedSender<Event>) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            tx,
            pending: BTreeSet::new(),
            whole: true,
            failing: false,
            last_try: None,
        }
    }

    /// Notes runs whose logs grew.
    fn want(&mut self, runs: impl IntoIterator<Item = String>) {
        self.pending.extend(runs);
    }

    /// Ingests what is wanted (if anything is and the last sync is long enough ago) and reads
    /// what is asked: with `read`, the run table and the chats; the step history `asked`. A run
    /// that has just come into view is served at once; the rest at most once a second.
    fn sync(&mut self, read: bool, asked: &[Asked]) -> ReadModel {
        let due = self.last_try.is_none_or(|t| t.elapsed() >= Self::INTERVAL);
        let wanted = self.whole || !self.pending.is_empty() || !asked.is_empty();
        if !(read || due && wanted || asked.iter().any(|a| a.first)) {
            return ReadModel::default();
        }
        self.last_try = Some(Instant::now());
        let result =
            crate::store::Store::open_waiting(&self.data_dir, "slayer console", Self::PATIENCE)
                .and_then(|store| {
                    if self.whole {
                        store.ingest_all(&self.data_dir, &[])?;
                    } else {
                        for run in &self.pending {
                            if let Ok(dir) = crate::runner::RunDir::open(&self.data_dir, run) {
                                store.ingest_run(&dir)?;
                            }
                        }
                    }
                    let series = asked
                        .iter()
                        .map(|a| Ok((a.run.clone(), a.from, store.run_series(&a.run, a.from)?)))
                        .collect::<crate::store::Result<Vec<_>>>()?;
                    if !read {
                        return Ok((None, series));
                    }
                    // Unreadable transcripts are left out of the list (the CLI's store
                    // commands name them).
                    store.ingest_chats(&self.data_dir)?;
                    let chats = store
                        .chats()?
                        .into_iter()
                        .map(|c| app::ChatSummary {
                            id: c.id,
                            models: c.models,
                            runs: c.runs,
                            turns: c.turns,
                        })
                        .collect();
                    Ok((Some((store.run_table(&self.data_dir)?, chats)), series))
                });
        match result {
            Ok((table, series)) => {
                if self.failing {
                    let _ = self
                        .tx
                        .send(Event::Status(true, "store available again".into()));
                }
                self.failing = false;
                self.whole = false;
                self.pending.clear();
                ReadModel {
                    table,
                    series: Some(series),
                }
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!("console without the store for now: {e}");
                    let _ = self
                        .tx
                        .send(Event::Status(false, format!("{e} (retrying)")));
                }
                self.failing = true;
                self.whole = true;
                ReadModel {
                    table: None,
                    series: Some(self.series_from_directories(asked)),
                }
            }
        }
    }

    /// The step history asked for, folded from the run directories' logs (while the store
    /// cannot be had). A log that cannot be read gives none (the run's problem names it).
    fn series_from_directories(&self, asked: &[Asked]) -> Vec<(String, u64, RunSeries)> {
        asked
            .iter()
            .filter_map(|a| {
                let events = crate::runner::RunDir::open(&self.data_dir, &a.run)
                    .and_then(|dir| dir.read_events())
                    .ok()?;
                Some((
                    a.run.clone(),
                    a.from,
                    RunSeries::of(&events).tail_from(a.from),
                ))
            })
            .collect()
    }
}

/// What one sync read.
#[derive(Default)]
struct ReadModel {
    /// The run table and the chats; `None` when not asked, or when the store could not be had
    /// (the caller scans the directories instead).
    table: Option<(Vec<RunRow>, Vec<app::ChatSummary>)>,
    /// The step history asked for: (run, from step, points); `None` when there was no sync (it
    /// is asked again the next time).
    series: Option<Vec<(String, u64, RunSeries)>>,
}

/// A run's step history to read: from step `from` on; `first` when nothing was sent for it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Asked {
    run: String,
    from: u64,
    first: bool,
}

/// Which runs in view need their step history read, and from where. Only a resume (or a log
/// replaced) changes steps already sent, so a run that only grew is read from the step after
/// the newest one sent.
#[derive(Debug, Default)]
struct SeriesFeed {
    /// Runs in view whose history was sent, with the newest step sent (0 for none).
    sent: BTreeMap<String, u64>,
    /// Runs with events not yet read, and whether what was sent must be read again whole.
    changed: BTreeMap<String, bool>,
}

impl SeriesFeed {
    /// Notes the runs that new events changed.
    fn note(&mut self, updates: &[Update]) {
        for u in updates {
            if let Update::Events { run, reset, events } = u {
                let whole = *reset
                    || events
                        .iter()
                        .any(|e| matches!(e.kind, EventKind::RunStart { .. }));
                *self.changed.entry(run.clone()).or_default() |= whole;
            }
        }
    }

    /// What to read for the runs in view; runs out of view are forgotten (coming back into view
    /// reads them whole).
    fn asked(&mut self, viewed: &Viewed) -> Vec<Asked> {
        let viewed = viewed.lock().map(|v| v.clone()).unwrap_or_default();
        self.sent.retain(|run, _| viewed.contains(run));
        self.changed.retain(|run, _| viewed.contains(run));
        viewed
            .into_iter()
            .filter_map(|run| {
                let (from, first) = match (self.sent.get(&run), self.changed.get(&run)) {
                    (None, _) => (0, true),
                    (Some(_), None) => return None,
                    (Some(_), Some(true)) => (0, false),
                    (Some(last), Some(false)) => (last + 1, false),
                };
                Some(Asked { run, from, first })
            })
            .collect()
    }

    /// Notes what was sent for `run`.
    fn delivered(&mut self, run: &str, from: u64, points: &RunSeries) {
        let before = if from == 0 {
            0
        } else {
            self.sent.get(run).copied().unwrap_or(0)
        };
        self.sent
            .insert(run.to_string(), points.last_step().unwrap_or(before));
        self.changed.remove(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::{EVENT_FORMAT, Event};
    use crate::runner::series::StepPoint;

    fn events(run: &str, kinds: Vec<EventKind>) -> Update {
        Update::Events {
            run: run.into(),
            reset: false,
            events: kinds
                .into_iter()
                .enumerate()
                .map(|(seq, kind)| Event {
                    seq: seq as u64,
                    time: 0.0,
                    kind,
                })
                .collect(),
        }
    }

    fn step(step: u64) -> EventKind {
        EventKind::Step {
            step,
            loss: 1.0,
            lr: 0.1,
            tokens: 0,
            tokens_per_sec: 1.0,
            grad_norm: 1.0,
            clipped: false,
            blocks: Vec::new(),
        }
    }

    fn upto(last: u64) -> RunSeries {
        RunSeries {
            steps: (1..=last)
                .map(|step| StepPoint {
                    step,
                    loss: 1.0,
                    lr: 0.1,
                    tokens_per_sec: 1.0,
                    time: 0.0,
                })
                .collect(),
            blocks: BTreeMap::new(),
        }
    }

    fn asked(run: &str, from: u64, first: bool) -> Asked {
        Asked {
            run: run.into(),
            from,
            first,
        }
    }

    #[test]
    fn a_run_in_view_is_read_whole_then_from_the_step_after_the_newest_sent() {
        let viewed = Viewed::default();
        let mut feed = SeriesFeed::default();
        assert!(feed.asked(&viewed).is_empty(), "nothing in view");
        viewed.lock().unwrap().push("a".into());
        assert_eq!(feed.asked(&viewed), [asked("a", 0, true)]);
        // Not delivered (no sync happened): asked again.
        assert_eq!(feed.asked(&viewed), [asked("a", 0, true)]);
        feed.delivered("a", 0, &upto(5));
        assert!(feed.asked(&viewed).is_empty(), "nothing new");
        // Events of a run out of view ask nothing.
        feed.note(&[events("b", vec![step(1)])]);
        feed.note(&[events("a", vec![step(6), step(7)])]);
        assert_eq!(feed.asked(&viewed), [asked("a", 6, false)]);
        feed.delivered("a", 6, &upto(7).tail_from(6));
        // A delivery with nothing new keeps the newest step sent.
        feed.note(&[events("a", Vec::new())]);
        assert_eq!(feed.asked(&viewed), [asked("a", 8, false)]);
        feed.delivered("a", 8, &RunSeries::default());
        feed.note(&[events("a", vec![step(8)])]);
        assert_eq!(feed.asked(&viewed), [asked("a", 8, false)]);
    }

    #[test]
    fn a_resume_or_a_replaced_log_reads_the_whole_again() {
        let viewed: Viewed = Arc::new(Mutex::new(vec!["a".into()]));
        let mut feed = SeriesFeed::default();
        feed.asked(&viewed);
        feed.delivered("a", 0, &upto(9));
        let resume = EventKind::RunStart {
            format: EVENT_FORMAT,
            run: "a".into(),
            experiment: String::new(),
            plan: None,
            config: None,
            trainable_params: 1,
            total_steps: 20,
            resumed_from: Some(4),
            environment: None,
        };
        // Step events noted before the resume do not make it a partial read.
        feed.note(&[events("a", vec![step(10)])]);
        feed.note(&[events("a", vec![resume, step(5)])]);
        assert_eq!(feed.asked(&viewed), [asked("a", 0, false)]);
        feed.delivered("a", 0, &upto(5));
        feed.note(&[Update::Events {
            run: "a".into(),
            reset: true,
            events: Vec::new(),
        }]);
        assert_eq!(feed.asked(&viewed), [asked("a", 0, false)]);
    }

    #[test]
    fn a_run_that_leaves_the_view_is_read_whole_when_it_comes_back() {
        let viewed: Viewed = Arc::new(Mutex::new(vec!["a".into()]));
        let mut feed = SeriesFeed::default();
        feed.asked(&viewed);
        feed.delivered("a", 0, &upto(3));
        viewed.lock().unwrap().clear();
        feed.note(&[events("a", vec![step(4)])]);
        assert!(feed.asked(&viewed).is_empty());
        viewed.lock().unwrap().push("a".into());
        assert_eq!(feed.asked(&viewed), [asked("a", 0, true)]);
    }
}
