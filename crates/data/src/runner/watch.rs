//! File-system notifications for the data directory, reduced to what changed: a run (by id) or
//! an experiment file. inotify where it works; a polling watcher where it does not (a full
//! inotify table, a network file system), so callers never depend on notifications arriving.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use notify::Watcher as _;

/// What changed under a watched directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Something in `runs/<id>/`.
    Run(String),
    /// An experiment file (`*.toml`) was created, changed or removed.
    Experiment(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Notify,
    Poll,
    /// Neither could start: callers fall back to their own periodic reads.
    None,
}

/// Watches `runs/` and `experiments/` directories (which need not exist yet).
pub struct DirWatcher {
    backend: Backend,
    /// Held for its lifetime: dropping the watcher ends the watch.
    _watcher: Option<Box<dyn notify::Watcher + Send>>,
    rx: Receiver<notify::Result<notify::Event>>,
    /// Directories holding run directories.
    run_roots: Vec<PathBuf>,
    /// Directories holding experiment files.
    experiment_roots: Vec<PathBuf>,
}

impl DirWatcher {
    /// Watches directories of run directories and directories of experiment files, recursively;
    /// missing ones are created so they can be watched. `SLAYER_WATCH=poll` forces polling (for
    /// file systems whose notifications are unreliable, such as NFS).
    #[must_use]
    pub fn new(run_roots: &[PathBuf], experiment_roots: &[PathBuf]) -> Self {
        let poll = std::env::var("SLAYER_WATCH").is_ok_and(|v| v == "poll");
        Self::with_mode(run_roots, experiment_roots, !poll)
    }

    /// As [`DirWatcher::new`], choosing whether to try kernel notifications first.
    #[must_use]
    pub fn with_mode(
        run_roots: &[PathBuf],
        experiment_roots: &[PathBuf],
        notify_first: bool,
    ) -> Self {
        let roots: Vec<PathBuf> = run_roots.iter().chain(experiment_roots).cloned().collect();
        for root in &roots {
            // A root that cannot be created is simply not watched; reads report the real error.
            let _ = std::fs::create_dir_all(root);
        }
        let (tx, rx) = channel();
        let notifying = if notify_first {
            notify::recommended_watcher(tx.clone())
        } else {
            Err(notify::Error::generic("polling requested"))
        }
        .and_then(|mut w| {
            for root in &roots {
                w.watch(root, notify::RecursiveMode::Recursive)?;
            }
            Ok(w)
        });
        let (backend, watcher): (Backend, Option<Box<dyn notify::Watcher + Send>>) = match notifying
        {
            Ok(w) => (Backend::Notify, Some(Box::new(w))),
            Err(e) => {
                tracing::warn!("file notifications unavailable ({e}); polling instead");
                let config = notify::Config::default().with_poll_interval(Duration::from_secs(1));
                match notify::PollWatcher::new(tx, config).and_then(|mut w| {
                    for root in &roots {
                        w.watch(root, notify::RecursiveMode::Recursive)?;
                    }
                    Ok(w)
                }) {
                    Ok(w) => (Backend::Poll, Some(Box::new(w))),
                    Err(e) => {
                        tracing::warn!("cannot poll the data directory either: {e}");
                        (Backend::None, None)
                    }
                }
            }
        };
        Self {
            backend,
            _watcher: watcher,
            rx,
            run_roots: run_roots.to_vec(),
            experiment_roots: experiment_roots.to_vec(),
        }
    }

    /// Whether kernel notifications are in use (rather than polling).
    #[must_use]
    pub fn notifying(&self) -> bool {
        self.backend == Backend::Notify
    }

    /// Whether anything watches at all.
    #[must_use]
    pub fn watching(&self) -> bool {
        self.backend != Backend::None
    }

    fn classify(&self, path: &Path) -> Option<Change> {
        for root in &self.run_roots {
            if let Ok(rel) = path.strip_prefix(root) {
                let first = rel.components().next()?.as_os_str().to_string_lossy();
                // The queue's lock file changes on every decision; it is not a run.
                return (!first.starts_with('.')).then(|| Change::Run(first.into_owned()));
            }
        }
        self.experiment_roots
            .iter()
            .any(|root| path.starts_with(root))
            .then_some(())
            .and(path.extension())
            .is_some_and(|e| e == "toml")
            .then(|| Change::Experiment(path.to_path_buf()))
    }

    /// Waits up to `timeout` for the first notification, then drains every pending one; returns
    /// the distinct changes, sorted.
    #[must_use]
    pub fn wait(&self, timeout: Duration) -> Vec<Change> {
        let mut changes = std::collections::BTreeSet::new();
        let mut take = |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event.kind.is_access() {
                    return;
                }
                for path in &event.paths {
                    if let Some(c) = self.classify(path) {
                        changes.insert(c);
                    }
                }
            }
        };
        if self.backend == Backend::None {
            std::thread::sleep(timeout);
            return Vec::new();
        }
        match self.rx.recv_timeout(timeout) {
            Ok(event) => take(event),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                return Vec::new();
            }
        }
        while let Ok(event) = self.rx.try_recv() {
            take(event);
        }
        changes.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn run_and_experiment_changes_are_reported() {
        changes_are_reported(true);
    }

    #[test]
    fn the_polling_fallback_reports_the_same() {
        changes_are_reported(false);
    }

    fn changes_are_reported(notify_first: bool) {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let experiments = dir.path().join("experiments");
        let w = DirWatcher::with_mode(
            std::slice::from_ref(&runs),
            std::slice::from_ref(&experiments),
            notify_first,
        );
        assert_eq!(w.notifying(), notify_first);
        assert!(w.watching());
        std::fs::create_dir_all(runs.join("r1")).unwrap();
        std::fs::write(runs.join("r1/events.jsonl"), "x\n").unwrap();
        std::fs::write(experiments.join("e.toml"), "name = \"e\"\n").unwrap();
        std::fs::write(experiments.join("notes.txt"), "-").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.len() < 2 && std::time::Instant::now() < deadline {
            seen.extend(w.wait(Duration::from_millis(500)));
        }
        let want: std::collections::BTreeSet<Change> = [
            Change::Run("r1".into()),
            Change::Experiment(experiments.join("e.toml")),
        ]
        .into();
        assert_eq!(seen, want);
    }
}
