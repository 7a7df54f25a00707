//! Incremental reading of an event log: new complete lines only, in order, surviving truncation
//! and replacement of the file. The store's ingestion and every follower (the console, `runs tail
//! --follow`) read logs through [`LogTail`]; [`Follower`] adds the watching.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::watch::{Change, DirWatcher};
use slayer_engine::events::Event;

/// Where a tail has read up to: enough to continue after a restart, and to notice that the file
/// under the same name is no longer the one that was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Byte offset just past the last complete line consumed.
    pub offset: u64,
    /// Inode of the file read (0 before the first read).
    pub inode: u64,
    /// Sequence number of the last event delivered.
    pub last_seq: Option<u64>,
    /// Lines consumed (for error messages).
    pub line: u64,
}

/// A line of the log that is not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: u64,
    pub message: String,
}

/// What one read brought.
#[derive(Debug, Default)]
pub struct TailBatch {
    /// The file was truncated or replaced: everything read before is void and reading started
    /// over (the events below are from the new file).
    pub reset: bool,
    /// New events in file order. Events whose sequence number does not increase (a duplicate
    /// after a copy-and-truncate rotation) are dropped.
    pub events: Vec<Event>,
    /// Complete lines that did not parse; they are skipped so later events still arrive.
    pub bad_lines: Vec<BadLine>,
}

/// Reads an event log incrementally from a [`Cursor`].
#[derive(Debug, Clone)]
pub struct LogTail {
    path: PathBuf,
    cursor: Cursor,
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

impl LogTail {
    #[must_use]
    pub fn new(path: &Path) -> Self {
        Self::resume(path, Cursor::default())
    }

    /// Continues from a saved cursor.
    #[must_use]
    pub fn resume(path: &Path, cursor: Cursor) -> Self {
        Self {
            path: path.to_path_buf(),
            cursor,
        }
    }

    #[must_use]
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call. A missing file is an empty log; a half-written
    /// last line stays unread until its newline arrives.
    pub fn poll(&mut self) -> std::io::Result<TailBatch> {
        let mut batch = TailBatch::default();
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.cursor.offset > 0 {
                    self.cursor = Cursor::default();
                    batch.reset = true;
                }
                return Ok(batch);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let ino = inode(&meta);
        let replaced = self.cursor.inode != 0 && self.cursor.inode != ino;
        if replaced || meta.len() < self.cursor.offset {
            self.cursor = Cursor::default();
            batch.reset = true;
        }
        self.cursor.inode = ino;
        if meta.len() == self.cursor.offset {
            return Ok(batch);
        }
        file.seek(SeekFrom::Start(self.cursor.offset))?;
        let mut bytes = Vec::new();
        file.take(meta.len() - self.cursor.offset)
            .read_to_end(&mut bytes)?;
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(batch);
        };
        for raw in bytes[..end].split(|&b| b == b'\n') {
            self.cursor.line += 1;
            let Ok(text) = std::str::from_utf8(raw).map(str::trim) else {
                batch.bad_lines.push(BadLine {
                    line: self.cursor.line,
                    message: "not UTF-8".into(),
                });
                continue;
            };
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(text) {
                Ok(e) if self.cursor.last_seq.is_some_and(|s| e.seq <= s) => {}
                Ok(e) => {
                    self.cursor.last_seq = Some(e.seq);
                    batch.events.push(e);
                }
                Err(e) => batch.bad_lines.push(BadLine {
                    line: self.cursor.line,
                    message: format!("not a slayer event: {e}"),
                }),
            }
        }
        self.cursor.offset += end as u64 + 1;
        Ok(batch)
    }
}

/// Something a [`Follower`] saw.
#[derive(Debug)]
pub enum Update {
    /// New events of a run (after a `reset`, the run's history starts over with these).
    Events {
        run: String,
        reset: bool,
        events: Vec<Event>,
    },
    /// A run's log has a line that is not an event, or cannot be read.
    Problem { run: String, message: String },
    /// An experiment file was created, changed or removed.
    Experiment(PathBuf),
}

/// Follows the event logs of runs under a data directory: woken by file-system notifications,
/// and re-reading every run it follows at least every `poll_every` in case one was missed (or
/// notifications are unavailable).
pub struct Follower {
    /// The data directory whose runs are all followed, including ones that appear later; `None`
    /// when following given runs only.
    data_dir: Option<PathBuf>,
    /// Run id → its directory.
    dirs: std::collections::BTreeMap<String, PathBuf>,
    tails: std::collections::BTreeMap<String, LogTail>,
    watcher: DirWatcher,
    poll_every: Duration,
    last_full_poll: std::time::Instant,
}

impl Follower {
    /// Follows every run under `data_dir` and its experiment files.
    #[must_use]
    pub fn all(data_dir: &Path) -> Self {
        // Console themes are TOML files too: their edits are reported like experiments'.
        let watcher = DirWatcher::new(
            &[crate::layout::DataDir::at(data_dir).runs()],
            &[
                crate::layout::DataDir::at(data_dir).experiments(),
                crate::layout::DataDir::at(data_dir).themes(),
            ],
        );
        Self::with(Some(data_dir.to_path_buf()), watcher, &[])
    }

    /// Follows the given runs only.
    #[must_use]
    pub fn runs(runs: &[super::RunDir]) -> Self {
        let mut roots: Vec<PathBuf> = runs
            .iter()
            .filter_map(|r| r.path.parent().map(Path::to_path_buf))
            .collect();
        roots.dedup();
        Self::with(None, DirWatcher::new(&roots, &[]), runs)
    }

    fn with(data_dir: Option<PathBuf>, watcher: DirWatcher, runs: &[super::RunDir]) -> Self {
        Self {
            data_dir,
            dirs: runs
                .iter()
                .map(|r| (r.id.clone(), r.path.clone()))
                .collect(),
            tails: std::collections::BTreeMap::new(),
            watcher,
            poll_every: Duration::from_secs(2),
            last_full_poll: std::time::Instant::now(),
        }
    }

    /// Continues a run's log from a saved cursor instead of from the start.
    pub fn set_cursor(&mut self, run: &str, cursor: Cursor) {
        if let Some(dir) = self.dir(run) {
            self.tails.insert(
                run.to_string(),
                LogTail::resume(&dir.join("events.jsonl"), cursor),
            );
        }
    }

    /// The directory of a followed run.
    fn dir(&self, run: &str) -> Option<PathBuf> {
        match &self.data_dir {
            Some(d) => Some(crate::layout::DataDir::at(d).runs().join(run)),
            None => self.dirs.get(run).cloned(),
        }
    }

    /// Whether notifications work here (otherwise every wait is a poll).
    #[must_use]
    pub fn notifying(&self) -> bool {
        self.watcher.notifying()
    }

    fn read(&mut self, run: &str, out: &mut Vec<Update>) {
        let Some(dir) = self.dir(run) else {
            return;
        };
        let path = dir.join("events.jsonl");
        let tail = self
            .tails
            .entry(run.to_string())
            .or_insert_with(|| LogTail::new(&path));
        match tail.poll() {
            Ok(batch) => {
                for bad in batch.bad_lines {
                    out.push(Update::Problem {
                        run: run.to_string(),
                        message: format!("{} line {}: {}", path.display(), bad.line, bad.message),
                    });
                }
                if batch.reset || !batch.events.is_empty() {
                    out.push(Update::Events {
                        run: run.to_string(),
                        reset: batch.reset,
                        events: batch.events,
                    });
                }
            }
            Err(e) => out.push(Update::Problem {
                run: run.to_string(),
                message: format!("cannot read {}: {e}", path.display()),
            }),
        }
    }

    /// Reads every followed run now (the first call delivers their whole history).
    pub fn poll_all(&mut self) -> Vec<Update> {
        let mut out = Vec::new();
        let runs: Vec<String> = match &self.data_dir {
            None => self.dirs.keys().cloned().collect(),
            Some(d) => super::list_runs(d).into_iter().map(|r| r.id).collect(),
        };
        for run in runs {
            self.read(&run, &mut out);
        }
        self.last_full_poll = std::time::Instant::now();
        out
    }

    /// Waits up to `timeout` for something to happen and returns everything that did (possibly
    /// nothing). Notifications are drained first so a burst of writes costs one read per run.
    pub fn wait(&mut self, timeout: Duration) -> Vec<Update> {
        let changes = self.watcher.wait(timeout.min(self.poll_every));
        if self.last_full_poll.elapsed() >= self.poll_every {
            let mut out = self.poll_all();
            out.extend(changes.into_iter().filter_map(|c| match c {
                Change::Experiment(p) => Some(Update::Experiment(p)),
                Change::Run(_) => None,
            }));
            return out;
        }
        let mut out = Vec::new();
        let mut runs = std::collections::BTreeSet::new();
        for change in changes {
            match change {
                Change::Run(run) if self.dir(&run).is_some() => {
                    runs.insert(run);
                }
                Change::Run(_) => {}
                Change::Experiment(p) => out.push(Update::Experiment(p)),
            }
        }
        for run in runs {
            self.read(&run, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::io::Write;

    use super::*;
    use slayer_engine::events::EventKind;

    fn line(seq: u64) -> String {
        serde_json::to_string(&Event {
            seq,
            time: 1.0,
            kind: EventKind::Warning {
                message: format!("w{seq}"),
            },
        })
        .unwrap()
            + "\n"
    }

    fn seqs(b: &TailBatch) -> Vec<u64> {
        b.events.iter().map(|e| e.seq).collect()
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn reads_complete_lines_once_and_waits_for_half_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut tail = LogTail::new(&path);
        assert!(tail.poll().unwrap().events.is_empty(), "missing file");
        let two = line(1);
        append(&path, &(line(0) + &two[..10]));
        assert_eq!(seqs(&tail.poll().unwrap()), vec![0]);
        assert_eq!(seqs(&tail.poll().unwrap()), Vec::<u64>::new());
        append(&path, &two[10..]);
        assert_eq!(seqs(&tail.poll().unwrap()), vec![1]);
        // Resuming from the saved cursor reads nothing twice.
        let mut again = LogTail::resume(&path, tail.cursor().clone());
        append(&path, &line(2));
        assert_eq!(seqs(&again.poll().unwrap()), vec![2]);
    }

    #[test]
    fn truncation_and_replacement_start_over_and_bad_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, &(line(0) + &line(1) + &line(2)));
        let mut tail = LogTail::new(&path);
        assert_eq!(seqs(&tail.poll().unwrap()), vec![0, 1, 2]);
        std::fs::write(&path, line(0)).unwrap();
        let b = tail.poll().unwrap();
        assert!(b.reset);
        assert_eq!(seqs(&b), vec![0]);
        // Replaced by a different file (rotation by rename): also a reset.
        let other = dir.path().join("new.jsonl");
        std::fs::write(&other, line(0) + "garbage\n" + &line(1) + &line(1)).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let b = tail.poll().unwrap();
        assert!(b.reset);
        assert_eq!(seqs(&b), vec![0, 1], "the repeated seq 1 is dropped");
        assert_eq!(b.bad_lines.len(), 1);
        assert_eq!(b.bad_lines[0].line, 2);
    }

    #[derive(Default)]
    struct Seen {
        seqs: Vec<u64>,
        resets: usize,
        experiments: Vec<PathBuf>,
    }

    impl Seen {
        fn take(&mut self, updates: Vec<Update>) {
            for u in updates {
                match u {
                    Update::Events { events, reset, .. } => {
                        self.resets += usize::from(reset);
                        self.seqs.extend(events.iter().map(|e| e.seq));
                    }
                    Update::Experiment(p) if !self.experiments.contains(&p) => {
                        self.experiments.push(p);
                    }
                    Update::Experiment(_) => {}
                    Update::Problem { message, .. } => panic!("{message}"),
                }
            }
        }

        fn wait(&mut self, follower: &mut Follower, done: impl Fn(&Self) -> bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !done(self) && std::time::Instant::now() < deadline {
                self.take(follower.wait(Duration::from_millis(200)));
            }
        }
    }

    /// The follower delivers a run's new events in order as they are appended (complete lines
    /// only), starts over after truncation, and reports edited experiment files.
    #[test]
    fn follower_delivers_appends_in_order_and_experiment_edits() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/r1");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("experiment.toml"), "name = \"r\"\n").unwrap();
        let log = run.join("events.jsonl");
        append(&log, &line(0));
        let mut follower = Follower::all(dir.path());
        let mut seen = Seen::default();
        seen.take(follower.poll_all());
        assert_eq!(seen.seqs, vec![0]);
        let one = line(1);
        append(&log, &one[..5]);
        append(&log, &(one[5..].to_string() + &line(2)));
        std::fs::write(dir.path().join("experiments/e.toml"), "name = \"e\"\n").unwrap();
        seen.wait(&mut follower, |s| {
            s.seqs.len() >= 3 && !s.experiments.is_empty()
        });
        assert_eq!(seen.seqs, vec![0, 1, 2]);
        assert_eq!(
            seen.experiments,
            vec![dir.path().join("experiments/e.toml")]
        );
        std::fs::write(&log, line(0)).unwrap();
        seen.wait(&mut follower, |s| s.seqs.len() >= 4);
        assert_eq!(seen.seqs, vec![0, 1, 2, 0]);
        assert_eq!(seen.resets, 1);
    }
}
