//! Run directories — the record of a run — and their append-only event logs.
//!
//! `runs/<id>/` holds `experiment.toml` (as launched), `plan.json` (the resolved map),
//! `events.jsonl` (one sequence-numbered JSON event per line), `checkpoints/step-N/`, `data/`
//! (generated corpora) and `log`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::core::events::{Event, EventKind, EventSink};

/// A run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `runs/<timestamp>-<name>` under `data_dir` (a suffix keeps ids unique).
    pub fn create(data_dir: &Path, name: &str) -> Result<Self> {
        let runs = data_dir.join("runs");
        std::fs::create_dir_all(&runs)
            .with_context(|| format!("cannot create {}", runs.display()))?;
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
        let base = format!("{}-{safe}", crate::core::text::utc_stamp());
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
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        bail!("cannot find a free run id under {}", runs.display())
    }

    /// Opens a run by id (under `data_dir/runs`) or by path.
    pub fn open(data_dir: &Path, id_or_path: &str) -> Result<Self> {
        let as_path = PathBuf::from(id_or_path);
        let path = if as_path.join("events.jsonl").is_file()
            || as_path.join("experiment.toml").is_file()
        {
            as_path
        } else {
            data_dir.join("runs").join(id_or_path)
        };
        if !path.join("experiment.toml").is_file() {
            bail!(
                "{id_or_path}: no such run (looked in {})",
                data_dir.join("runs").display()
            );
        }
        let id = path.file_name().map_or_else(
            || id_or_path.to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Self { id, path })
    }

    #[must_use]
    pub fn experiment_path(&self) -> PathBuf {
        self.path.join("experiment.toml")
    }

    #[must_use]
    pub fn events_path(&self) -> PathBuf {
        self.path.join("events.jsonl")
    }

    /// Every complete event; a half-written last line is ignored (it is still being written).
    pub fn read_events(&self) -> Result<Vec<Event>> {
        read_events(&self.events_path())
    }
}

/// Reads complete event lines from `path`; an unparsable line other than the last is an error.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let Ok(file) = File::open(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == n => {}
            Err(e) => bail!("{}: line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Appends events to `events.jsonl`: sequence numbers continue across resumes; lines are
/// flushed at least once a second and on `sync`, which also fsyncs.
pub struct EventLog {
    path: PathBuf,
    writer: BufWriter<File>,
    next_seq: u64,
    last_flush: Instant,
}

impl EventLog {
    pub fn open(path: &Path) -> Result<Self> {
        let next_seq = read_events(path)?.last().map_or(0, |e| e.seq + 1);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
            next_seq,
            last_flush: Instant::now(),
        })
    }
}

fn io_err(path: &Path, e: std::io::Error) -> crate::core::Error {
    crate::core::Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

impl EventSink for EventLog {
    fn emit(&mut self, kind: EventKind) -> crate::core::Result<()> {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let event = Event {
            seq: self.next_seq,
            time,
            kind,
        };
        self.next_seq += 1;
        let line = serde_json::to_string(&event)
            .map_err(|e| crate::core::Error::Invalid(e.to_string()))?;
        writeln!(self.writer, "{line}").map_err(|e| io_err(&self.path, e))?;
        if self.last_flush.elapsed() >= Duration::from_secs(1) {
            self.writer.flush().map_err(|e| io_err(&self.path, e))?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    fn sync(&mut self) -> crate::core::Result<()> {
        self.writer.flush().map_err(|e| io_err(&self.path, e))?;
        self.writer
            .get_ref()
            .sync_data()
            .map_err(|e| io_err(&self.path, e))?;
        self.last_flush = Instant::now();
        Ok(())
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.writer.flush();
    }
}
