//! Run directories — the record of a run — and their append-only event logs.
//!
//! `runs/<id>/` holds `experiment.toml` (as launched), `plan.json` (the resolved map),
//! `events.jsonl` (one sequence-numbered JSON event per line), `checkpoints/step-N/`, `data/`
//! (generated corpora) and `log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Because as _, Error, IoContext as _, Result};

pub mod alerts;
pub mod compare;
pub mod describe;
pub mod model;
pub mod projection;
pub mod queue;
pub mod series;
pub mod slurm;
pub mod tail;
#[cfg(test)]
pub(crate) mod test_events;
pub mod transcript;
pub mod watch;

pub use projection::{RunProjection, joined_steps};

use slayer_engine::events::{Event, EventKind, EventSink};

/// A run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `runs/<timestamp>-<name>` under `data_dir` (a suffix keeps ids unique).
    pub fn create(data_dir: &Path, name: &str) -> Result<Self> {
        let runs = crate::layout::DataDir::at(data_dir).runs();
        std::fs::create_dir_all(&runs).io("create", &runs)?;
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let base = format!("{}-{safe}", slayer_engine::text::utc_stamp());
        for n in 0..1000 {
            let id = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let path = runs.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { id, path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).io("create", &path),
            }
        }
        Err(Error::invalid(format!(
            "cannot find a free run id under {}",
            runs.display()
        )))
    }

    /// Opens a run by its id. An id is a name under `<data>/runs/`, never a path: anything that
    /// could reach outside that directory (a separator, `..`, a symbolic link) is refused, so
    /// no command that takes a run id can read, write or remove anything else.
    pub fn open(data_dir: &Path, id: &str) -> Result<Self> {
        let runs = crate::layout::DataDir::at(data_dir).runs();
        check_run_id(id)?;
        let path = runs.join(id);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(no_such_run(id, &runs));
            }
            Err(e) => return Err(e).io("read", &path),
        };
        if meta.file_type().is_symlink() {
            return Err(Error::invalid(format!(
                "{}: a symbolic link, not a run directory (runs are directories under {})",
                path.display(),
                runs.display()
            )));
        }
        if !meta.is_dir() || !is_run_dir(&path) {
            return Err(no_such_run(id, &runs));
        }
        Ok(Self {
            id: id.to_string(),
            path,
        })
    }

    #[must_use]
    pub fn experiment_path(&self) -> PathBuf {
        self.path.join("experiment.toml")
    }

    #[must_use]
    pub fn events_path(&self) -> PathBuf {
        self.path.join("events.jsonl")
    }

    /// Every complete event; a half-written last line is ignored (it is still being written)
    /// and lines that are not events are skipped ([`read_event_log`] says which).
    pub fn read_events(&self) -> Result<Vec<Event>> {
        read_events(&self.events_path())
    }

    /// The event log with the lines it skipped.
    pub fn read_event_log(&self) -> Result<EventLogRead> {
        read_event_log(&self.events_path())
    }
}

/// An event log as read: its events, and the complete lines that were not events.
#[derive(Debug, Default)]
pub struct EventLogRead {
    pub path: PathBuf,
    pub events: Vec<Event>,
    pub skipped: Vec<tail::BadLine>,
}

impl EventLogRead {
    /// One warning naming the file and the first skipped line, when lines were skipped.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        skipped_lines_warning(&self.path, &self.skipped)
    }
}

/// "`path` line N: why; skipped (and K more lines)": one warning for a log's bad lines, shared
/// by every reader (the CLI, the store, the console).
#[must_use]
pub fn skipped_lines_warning(path: &Path, skipped: &[tail::BadLine]) -> Option<String> {
    let first = skipped.first()?;
    let more = match skipped.len() {
        1 => String::new(),
        n => format!(" (and {} more bad lines)", n - 1),
    };
    Some(format!(
        "{} line {}: {}; skipped{more}",
        path.display(),
        first.line,
        first.message
    ))
}

/// Reads the complete event lines of `path` (a missing file has none; a half-written last line
/// is left for later). A line that is not an event — a torn write, a stray edit — is skipped and
/// recorded: one bad line never hides the rest of a run.
pub fn read_event_log(path: &Path) -> Result<EventLogRead> {
    let batch = tail::LogTail::new(path).poll().io("read", path)?;
    let read = EventLogRead {
        path: path.to_path_buf(),
        events: batch.events,
        skipped: batch.bad_lines,
    };
    if let Some(w) = read.warning() {
        tracing::warn!("{w}");
    }
    Ok(read)
}

/// The events of `path`, bad lines skipped (see [`read_event_log`]).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    Ok(read_event_log(path)?.events)
}

/// Appends events to `events.jsonl`. Several processes may write one run's log (the worker, the
/// supervisor that records a killed worker, `runs resume`, `eval`), so sequence numbers are given
/// when lines are written, under an exclusive lock on the file, following whatever the file ends
/// with: each writer's events keep their order and every line's number is greater than the one
/// before it. A background thread writes pending events at least once a second; `sync` writes
/// and fsyncs.
pub struct EventLog {
    shared: Arc<Mutex<Pending>>,
    stop: Arc<AtomicBool>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// Events emitted but not yet written, and where this writer left the file.
struct Pending {
    path: PathBuf,
    file: File,
    /// Their sequence numbers are given when written.
    events: Vec<Event>,
    /// The file's length after this writer's last write: a different length means another
    /// writer appended (or a writer died mid-line) and the last sequence number is read again.
    end: u64,
    next_seq: u64,
}

impl EventLog {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .io("open", path)?;
        let pending = Pending {
            path: path.to_path_buf(),
            file,
            events: Vec::new(),
            // Never a real length after a write: the first write reads the file's last line.
            end: u64::MAX,
            next_seq: 0,
        };
        let shared = Arc::new(Mutex::new(pending));
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("event-log-flush".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(250));
                        if let Ok(mut p) = shared.lock() {
                            // A failed write keeps the events and is retried; the trainer sees
                            // errors on `sync`.
                            let _ = p.write_out();
                        }
                    }
                })
                .because(|| "cannot start the event-log flusher".into())?
        };
        Ok(Self {
            shared,
            stop,
            flusher: Some(flusher),
        })
    }

    fn with_pending<T>(
        &self,
        f: impl FnOnce(&mut Pending) -> slayer_engine::Result<T>,
    ) -> slayer_engine::Result<T> {
        let mut p = self
            .shared
            .lock()
            .map_err(|_| slayer_engine::Error::Invalid("event log lock poisoned".into()))?;
        f(&mut p)
    }
}

impl Pending {
    /// Writes the pending events as whole lines in one append, numbered after the file's last
    /// line, holding the file's lock.
    fn write_out(&mut self) -> slayer_engine::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let io = |e| io_err(&path, e);
        self.file.lock().map_err(io)?;
        let written = self.append_locked();
        let unlocked = self.file.unlock().map_err(io);
        written.and(unlocked)
    }

    fn append_locked(&mut self) -> slayer_engine::Result<()> {
        let len = self
            .file
            .metadata()
            .map_err(|e| io_err(&self.path, e))?
            .len();
        if len != self.end {
            let (complete, last_seq) =
                last_line(&mut self.file).map_err(|e| io_err(&self.path, e))?;
            if complete < len {
                // A writer died mid-line (no writer holds the lock): the torn line is dropped so
                // the next line does not run into it.
                self.file
                    .set_len(complete)
                    .map_err(|e| io_err(&self.path, e))?;
            }
            if let Some(seq) = last_seq {
                self.next_seq = self.next_seq.max(seq + 1);
            }
        }
        let mut text = String::new();
        for (i, event) in self.events.iter_mut().enumerate() {
            event.seq = self.next_seq + i as u64;
            let line = serde_json::to_string(event)
                .map_err(|e| slayer_engine::Error::Invalid(e.to_string()))?;
            text.push_str(&line);
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| io_err(&self.path, e))?;
        self.next_seq += self.events.len() as u64;
        self.events.clear();
        self.end = self
            .file
            .metadata()
            .map_err(|e| io_err(&self.path, e))?
            .len();
        Ok(())
    }
}

/// The length of `file` up to its last newline, and the sequence number of its last complete
/// line (`None` for an empty file or a last line that is not an event).
fn last_line(file: &mut File) -> std::io::Result<(u64, Option<u64>)> {
    use std::io::{Read, Seek, SeekFrom};
    #[derive(serde::Deserialize)]
    struct Numbered {
        seq: u64,
    }
    let len = file.metadata()?.len();
    // Read backwards in growing chunks until the last complete line is whole.
    let mut chunk = 4096_u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        Read::by_ref(file)
            .take(len - start)
            .read_to_end(&mut tail)?;
        let Some(last_newline) = tail.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok((0, None));
            }
            chunk *= 4;
            continue;
        };
        let complete = start + last_newline as u64 + 1;
        let line_start = tail[..last_newline].iter().rposition(|&b| b == b'\n');
        if line_start.is_none() && start > 0 {
            chunk *= 4;
            continue;
        }
        let line = &tail[line_start.map_or(0, |i| i + 1)..last_newline];
        let seq = serde_json::from_slice::<Numbered>(line).ok().map(|n| n.seq);
        return Ok((complete, seq));
    }
}

fn io_err(path: &Path, e: std::io::Error) -> slayer_engine::Error {
    slayer_engine::Error::io(path, e)
}

impl EventSink for EventLog {
    fn emit(&mut self, kind: EventKind) -> slayer_engine::Result<()> {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.with_pending(|p| {
            p.events.push(Event { seq: 0, time, kind });
            Ok(())
        })
    }

    fn sync(&mut self) -> slayer_engine::Result<()> {
        self.with_pending(|p| {
            p.write_out()?;
            p.file.sync_data().map_err(|e| io_err(&p.path, e))
        })
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        let _ = self.with_pending(Pending::write_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slayer_engine::events::RunStatus;

    use super::test_events::start;

    /// An event at time 0 (these tests read order, not time).
    fn ev(seq: u64, kind: EventKind) -> Event {
        Event {
            time: 0.0,
            ..test_events::ev(seq, kind)
        }
    }

    fn step(step: u64) -> EventKind {
        test_events::step(step, 1.0, &[])
    }

    /// A worker killed after step 5 with its last checkpoint at 3, resumed from 3: steps 4 and
    /// 5 of the dead worker are replaced, none is missing or doubled.
    #[test]
    fn joined_history_replaces_steps_lost_with_a_worker() {
        let mut events = vec![ev(0, start(None))];
        events.extend((1..=5).map(|s| ev(s, step(s))));
        events.push(ev(6, start(Some(3))));
        events.extend((4..=7).map(|s| ev(s + 3, step(s))));
        let steps: Vec<u64> = joined_steps(&events)
            .iter()
            .map(|e| {
                if let EventKind::Step { step, .. } = e.kind {
                    step
                } else {
                    0
                }
            })
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5, 6, 7]);
        let seqs: Vec<u64> = joined_steps(&events).iter().map(|e| e.seq).collect();
        assert_eq!(&seqs[3..], &[7, 8, 9, 10], "the resumed worker's steps win");
    }

    #[test]
    fn state_follows_events_and_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            id: "r".into(),
            path: dir.path().to_path_buf(),
        };
        assert_eq!(run.state(&[]), RunState::Queued);
        let started = vec![ev(0, start(None)), ev(1, step(1))];
        // No live worker and no end record: lost.
        assert_eq!(run.state(&started), RunState::Lost);
        run.claim_worker().unwrap();
        assert_eq!(run.state(&started), RunState::Running);
        std::fs::write(dir.path().join("worker.pid"), "999999999 1\n").unwrap();
        assert_eq!(run.state(&started), RunState::Lost);
        let mut ended = started.clone();
        ended.push(ev(
            2,
            EventKind::End {
                status: RunStatus::Stopped,
                step: 1,
                message: String::new(),
            },
        ));
        assert_eq!(run.state(&ended), RunState::Stopped);
        ended.push(ev(3, start(Some(1))));
        assert_eq!(
            run.state(&ended),
            RunState::Lost,
            "a resume that died is lost again"
        );
    }

    /// The cached table equals a fresh summary after appends, and follows liveness without a
    /// change to the log.
    #[test]
    fn the_run_table_follows_appends_and_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "t").unwrap();
        std::fs::write(run.experiment_path(), "name = \"t\"\n").unwrap();
        let mut log = EventLog::open(&run.events_path()).unwrap();
        log.emit(start(None)).unwrap();
        log.emit(step(1)).unwrap();
        log.sync().unwrap();
        let mut table = RunTable::default();
        let first = table.refresh(dir.path());
        assert_eq!((first[0].status, first[0].step), (RunState::Lost, 1));
        run.claim_worker().unwrap();
        assert_eq!(table.refresh(dir.path())[0].status, RunState::Running);
        log.emit(step(2)).unwrap();
        log.sync().unwrap();
        let fresh = summarize(&run);
        let cached = table.refresh(dir.path());
        assert_eq!(
            (cached[0].step, cached[0].status),
            (fresh.step, fresh.status)
        );
        assert_eq!(cached[0].step, 2);
    }

    #[test]
    fn nan_metrics_survive_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::open(&path).unwrap();
        log.emit(EventKind::Step {
            step: 1,
            loss: f64::NAN,
            lr: 0.1,
            tokens: 0,
            tokens_per_sec: f64::INFINITY,
            grad_norm: 1.0,
            clipped: false,
            blocks: vec![],
        })
        .unwrap();
        log.sync().unwrap();
        let events = read_events(&path).unwrap();
        assert!(matches!(events[0].kind, EventKind::Step { loss, .. } if loss.is_nan()));
    }

    #[test]
    fn events_reach_the_file_within_a_second_and_sequence_numbers_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::open(&path).unwrap();
        log.emit(EventKind::Warning {
            message: "one".into(),
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            read_events(&path).unwrap().len(),
            1,
            "not flushed within a second"
        );
        drop(log);
        let mut log = EventLog::open(&path).unwrap();
        log.emit(EventKind::Warning {
            message: "two".into(),
        })
        .unwrap();
        log.sync().unwrap();
        let seqs: Vec<u64> = read_events(&path).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![0, 1]);
        // A half-written last line is left for later, not an error.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":2,\"ti")
            .unwrap();
        assert_eq!(read_events(&path).unwrap().len(), 2);
    }

    fn warning(message: &str) -> EventKind {
        EventKind::Warning {
            message: message.into(),
        }
    }

    /// A supervisor that records a killed worker while the resumed worker already writes: each
    /// writer's events are numbered after the file's last line when written, so no event of
    /// either is taken for a duplicate.
    #[test]
    fn two_writers_never_reuse_a_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut worker = EventLog::open(&path).unwrap();
        worker.emit(start(None)).unwrap();
        worker.sync().unwrap();
        let mut supervisor = EventLog::open(&path).unwrap();
        worker.emit(step(1)).unwrap();
        supervisor.emit(warning("killed")).unwrap();
        supervisor.sync().unwrap();
        worker.emit(step(2)).unwrap();
        worker.sync().unwrap();
        supervisor.emit(warning("again")).unwrap();
        drop(supervisor);
        let events = read_events(&path).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
        let steps: Vec<u64> = events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Step { step, .. } => Some(step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![1, 2], "the worker's steps in order");
    }

    /// A writer killed in the middle of a line leaves it torn; the next writer drops the torn
    /// part rather than running its first line into it, and numbers after the last whole line
    /// (found past a line longer than one read-back chunk).
    #[test]
    fn a_torn_last_line_is_dropped_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::open(&path).unwrap();
        log.emit(start(None)).unwrap();
        log.emit(warning(&"x".repeat(20_000))).unwrap();
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":2,\"ti")
            .unwrap();
        let mut log = EventLog::open(&path).unwrap();
        log.emit(step(1)).unwrap();
        log.sync().unwrap();
        let seqs: Vec<u64> = read_events(&path).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));
    }
}

/// The refusal of an id that names no run.
fn no_such_run(id: &str, runs: &Path) -> Error {
    Error::invalid(format!("{id}: no such run (looked in {})", runs.display()))
}

/// Refuses a run id that is not a plain name: empty, `.`, `..`, a path separator, a NUL or
/// another control character, or longer than a file name may be.
pub fn check_run_id(id: &str) -> Result<()> {
    let problem = if id.is_empty() {
        Some("is empty")
    } else if id == "." || id == ".." {
        Some("names a directory, not a run")
    } else if id.contains('/') || id.contains('\\') {
        Some("is a path")
    } else if id.chars().any(char::is_control) {
        Some("holds control characters")
    } else if id.len() > 255 {
        Some("is longer than a file name can be")
    } else {
        None
    };
    match problem {
        Some(why) => Err(Error::invalid(format!(
            "`{id}` {why}: a run id is the name of a run under <data>/runs (see `slayer runs ls`)"
        ))),
        None => Ok(()),
    }
}

/// Whether `path` looks like a run directory (a damaged one included: it is listed, with its
/// problem, rather than hidden).
fn is_run_dir(path: &Path) -> bool {
    ["experiment.toml", "events.jsonl", "queued"]
        .iter()
        .any(|f| path.join(f).is_file())
}

/// Every run directory under `data_dir/runs`, sorted by id (oldest first).
#[must_use]
pub fn list_runs(data_dir: &Path) -> Vec<RunDir> {
    let Ok(entries) = std::fs::read_dir(crate::layout::DataDir::at(data_dir).runs()) else {
        return Vec::new();
    };
    let mut out: Vec<RunDir> = entries
        .filter_map(std::result::Result::ok)
        // A symbolic link is not a run (`RunDir::open` refuses it too): whatever it points to
        // is not ours to show or remove.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && is_run_dir(&e.path()))
        .map(|e| RunDir {
            id: e.file_name().to_string_lossy().into_owned(),
            path: e.path(),
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// What a run is doing, as seen from its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Created, no event yet, and no live worker.
    Queued,
    Running,
    Finished,
    Failed,
    Stopped,
    /// The worker died without an end record: resume from the newest checkpoint.
    Lost,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Lost => "lost",
        };
        f.write_str(s)
    }
}

/// The worker process of a run, as recorded in `worker.pid`: its pid and its start time in clock
/// ticks since boot (so a recycled pid is not mistaken for the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub pid: i32,
    pub start_ticks: u64,
}

/// Field 22 of `/proc/<pid>/stat` (the process start time) for a process that has not exited:
/// a zombie (state Z or X) waiting for its parent to reap it counts as gone.
pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields resume after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl Worker {
    /// This process.
    #[must_use]
    pub fn current() -> Option<Self> {
        let pid = i32::try_from(std::process::id()).ok()?;
        Some(Self {
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// Whether the recorded process still runs (and is the same process).
    #[must_use]
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Sends `signal` to the worker.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal)
            .because(|| format!("cannot signal process {}", self.pid))
    }
}

impl RunDir {
    /// Records this process as the run's worker.
    pub fn claim_worker(&self) -> Result<()> {
        let w = Worker::current()
            .ok_or_else(|| Error::invalid("cannot read this process's start time from /proc"))?;
        self.record_worker(w)
    }

    /// Records `worker` as the run's worker, replacing `worker.pid` in one rename: a reader (the
    /// queue counting busy slots) sees the old worker or the new one, never an empty file.
    pub fn record_worker(&self, worker: Worker) -> Result<()> {
        let path = self.path.join("worker.pid");
        slayer_engine::atomic::replace_file(
            &path,
            format!("{} {}\n", worker.pid, worker.start_ticks).as_bytes(),
        )
        .because(|| format!("cannot record the worker of run {}", self.id))
    }

    /// The recorded worker, if any.
    #[must_use]
    pub fn worker(&self) -> Option<Worker> {
        let text = std::fs::read_to_string(self.path.join("worker.pid")).ok()?;
        let mut parts = text.split_whitespace();
        Some(Worker {
            pid: parts.next()?.parse().ok()?,
            start_ticks: parts.next()?.parse().ok()?,
        })
    }

    /// Why a run whose worker wrote no event ended: the last line of its output (`log`).
    fn silent_worker_problem(&self) -> String {
        use std::io::{Read as _, Seek as _};
        let path = self.path.join("log");
        let last = std::fs::File::open(&path).ok().and_then(|mut f| {
            // The end of the file is enough; a log may be large.
            let len = f.metadata().ok()?.len();
            f.seek(std::io::SeekFrom::Start(len.saturating_sub(4096)))
                .ok()?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail).ok()?;
            String::from_utf8_lossy(&tail)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        });
        match last {
            Some(line) => format!("the worker wrote no event; its output ends: {line}"),
            None => format!("the worker wrote no event (see {})", path.display()),
        }
    }

    /// The run's state from its events and its worker's liveness.
    #[must_use]
    pub fn state(&self, events: &[Event]) -> RunState {
        self.state_of(&RunProjection::of(events))
    }

    /// The run's state given what its events say ([`RunProjection`]) and its worker's liveness.
    #[must_use]
    pub fn state_of(&self, run: &RunProjection) -> RunState {
        self.state_from(run.end.as_ref(), run.segment_start.is_some())
    }

    fn state_from(&self, end: Option<&projection::Ending>, started: bool) -> RunState {
        // A Slurm run's worker lives on a node this process cannot look into: the job's state
        // says whether it holds its place (never running when Slurm cannot be asked).
        let slurm_job = slurm::job_of(self);
        let (live, waiting, slurm_job_over) = match slurm_job {
            Some(id) => match slurm::query_cached(id) {
                Some(job) => (
                    job.state.active() && !job.state.waiting(),
                    job.state.waiting(),
                    !job.state.active(),
                ),
                None => (false, false, true),
            },
            None => (
                self.worker().is_some_and(|w| w.alive()),
                self.path.join("queued").is_file(),
                false,
            ),
        };
        if !live && waiting {
            return RunState::Queued;
        }
        // A Slurm job still running after its worker stopped may be about to requeue itself
        // (the time-limit warning): it is not stopped until its job ends.
        if live
            && slurm_job.is_some()
            && end.is_some_and(|e| e.status == slayer_engine::events::RunStatus::Stopped)
        {
            return RunState::Running;
        }
        // A worker that wrote its end record is finishing (or already handed its slot on); a
        // worker recorded after the end is a resume that has not logged its start yet.
        let worker_since_end = |end_time: f64| {
            std::fs::metadata(self.path.join("worker.pid"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|t| t.as_secs_f64() > end_time)
        };
        match end {
            Some(end) if !(live && worker_since_end(end.time)) => match end.status {
                slayer_engine::events::RunStatus::Finished => RunState::Finished,
                slayer_engine::events::RunStatus::Failed => RunState::Failed,
                slayer_engine::events::RunStatus::Stopped => RunState::Stopped,
            },
            _ if live => RunState::Running,
            // A worker was recorded but wrote nothing (a full disk, a crash at start): it is
            // not waiting for anything.
            // Nor is one whose Slurm job is over (or forgotten) without a word.
            None if !started && (slurm_job_over || self.path.join("worker.pid").exists()) => {
                RunState::Lost
            }
            None if !started => RunState::Queued,
            _ => RunState::Lost,
        }
    }
}

/// The resolved layer map a run's `run_start` records, in brief (see [`PlanShape::of`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanShape {
    pub preset: Option<String>,
    pub base_layers: usize,
    /// Final depth.
    pub layers: usize,
    /// Final indices of new blocks, of trainable blocks; original blocks pruned.
    pub new: Vec<usize>,
    pub trainable: Vec<usize>,
    pub pruned: Vec<usize>,
}

impl PlanShape {
    #[must_use]
    pub fn of(map: &slayer_engine::plan::LayerMap) -> Self {
        Self {
            preset: map.preset.clone(),
            base_layers: map.base_layers,
            layers: map.layers.len(),
            new: map.new_indices(),
            trainable: map.trainable_indices(),
            pruned: map.pruned.clone(),
        }
    }
}

/// One run's summary: what `runs ls` and the console's run table show.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    pub id: String,
    pub experiment: String,
    pub status: RunState,
    pub step: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    /// Seconds since the run started (its first event, or its directory while queued).
    pub age_secs: f64,
    /// Seconds from its first event to its last: how long a run that is over ran.
    pub ran_secs: f64,
    pub problem: Option<String>,
    /// The id of its newest Slurm job, for a run launched with `--on slurm` (`None`: a local
    /// run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<u64>,
    /// That job as Slurm reports it (`None` also where Slurm has forgotten it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<slurm::Job>,
}

impl RunSummary {
    /// Where the run runs, for tables: `local`, or its Slurm job in brief ([`slurm::short`]).
    #[must_use]
    pub fn location(&self) -> String {
        self.slurm_job.map_or_else(
            || "local".to_string(),
            |id| slurm::short(id, self.job.as_ref()),
        )
    }
}

impl RunSummary {
    /// The time the run table shows: how long it has run as of its last event. It changes only
    /// when the run writes one, so a table whose runs are quiet stays still (a ticking clock
    /// would redraw it every second); `None` while queued.
    #[must_use]
    pub fn shown_secs(&self) -> Option<f64> {
        (self.status != RunState::Queued).then_some(self.ran_secs)
    }
}

#[must_use]
pub fn summarize(run: &RunDir) -> RunSummary {
    summarize_projected(run, run.read_event_log().as_ref()).0
}

/// The state of a run whose log cannot be read: running while its worker lives, else lost.
fn unreadable_state(run: &RunDir) -> RunState {
    match run.state_from(None, false) {
        RunState::Running => RunState::Running,
        _ => RunState::Lost,
    }
}

/// The summary of a run whose event log the caller has read (a table that needs the events
/// too reads each log once).
#[must_use]
pub fn summarize_read(run: &RunDir, log: Result<&EventLogRead, &Error>) -> RunSummary {
    summarize_projected(run, log).0
}

/// The summary, and the projection it came from (`None` when the log could not be read): what
/// [`RunTable`] keeps to recompute the state without reading the log again.
fn summarize_projected(
    run: &RunDir,
    log: Result<&EventLogRead, &Error>,
) -> (RunSummary, Option<RunProjection>) {
    match log {
        Ok(log) => {
            let projection = RunProjection::of(&log.events);
            (
                summary_of(run, &projection, log.warning()),
                Some(projection),
            )
        }
        // An unreadable log (permissions, I/O) still leaves the worker to ask: a run whose
        // worker lives is running, whatever its log says.
        Err(e) => {
            let summary = RunSummary {
                status: unreadable_state(run),
                age_secs: 0.0,
                ..summary_of(run, &RunProjection::default(), Some(format!("{e:#}")))
            };
            (summary, None)
        }
    }
}

/// A run's summary from its projection and the problem reading its log, if any: the one
/// reading for the directory scan ([`RunTable`]) and the store's read model.
#[must_use]
pub fn summary_of(run: &RunDir, p: &RunProjection, problem: Option<String>) -> RunSummary {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut problem = problem;
    let experiment = if p.experiment.is_empty() {
        // A queued run's name, from its experiment file.
        slayer_engine::experiment::Experiment::load(&run.experiment_path())
            .map_or_else(|_| "?".into(), |e| e.name)
    } else {
        p.experiment.clone()
    };
    if let Some(format) = p.newer_format {
        problem = Some(format!(
            "{} was written by a newer slayer (event format {format}; this build reads {}): \
             upgrade to read it whole",
            run.events_path().display(),
            slayer_engine::events::EVENT_FORMAT
        ));
    }
    let status = run.state_of(p);
    let slurm_job = slurm::job_of(run);
    let job = slurm_job.and_then(slurm::query_cached);
    if let Some(j) = &job
        && problem.is_none()
    {
        problem = slurm::unreached_problem(run, j);
    }
    if p.started.is_none() && problem.is_none() && status == RunState::Lost {
        problem = Some(run.silent_worker_problem());
    }
    // A queued run has no events yet: its age is that of its directory.
    let created = std::fs::metadata(&run.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |d| d.as_secs_f64());
    RunSummary {
        id: run.id.clone(),
        experiment,
        status,
        step: p.step,
        total_steps: p.total_steps,
        last_loss: p.last_loss,
        age_secs: now - p.started.unwrap_or(created),
        ran_secs: p.ran_secs(),
        problem,
        slurm_job,
        job,
    }
}

/// What identifies a version of a run's files: the event log's length and modification time,
/// and the experiment file's.
type Stamp = [Option<(u64, std::time::SystemTime)>; 2];

fn stamp(run: &RunDir) -> Stamp {
    let of = |p: PathBuf| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    };
    [of(run.events_path()), of(run.experiment_path())]
}

/// The run table, kept up to date cheaply: a run's log is read again only when it changed; its
/// state (which also depends on its worker's liveness) and age are recomputed every time.
#[derive(Default)]
pub struct RunTable {
    cached: std::collections::HashMap<String, (Stamp, RunSummary, Option<RunProjection>, f64)>,
}

impl RunTable {
    /// Every run under `data_dir`, oldest first.
    pub fn refresh(&mut self, data_dir: &Path) -> Vec<RunSummary> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let runs = list_runs(data_dir);
        self.cached.retain(|id, _| runs.iter().any(|r| &r.id == id));
        runs.iter()
            .map(|run| {
                let stamp = stamp(run);
                match self.cached.get(&run.id) {
                    Some((s, summary, projection, started)) if *s == stamp => {
                        let mut summary = summary.clone();
                        summary.status = match projection {
                            Some(p) => run.state_of(p),
                            None => unreadable_state(run),
                        };
                        summary.age_secs = now - started;
                        summary
                    }
                    _ => {
                        let (summary, projection) =
                            summarize_projected(run, run.read_event_log().as_ref());
                        let started = now - summary.age_secs;
                        self.cached.insert(
                            run.id.clone(),
                            (stamp, summary.clone(), projection, started),
                        );
                        summary
                    }
                }
            })
            .collect()
    }
}
