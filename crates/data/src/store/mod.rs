//! The index over everything slayer has recorded: experiments (each version of the TOML as
//! written), runs and their status, metric series for plotting, evaluation results, chat
//! transcripts and the lineage between them. Run directories and transcript files are the record
//! (sled 0.34 does not fsync); [`Store::rebuild`] recreates the index from them, and ingestion is
//! idempotent: every record is keyed by its run and step or sequence number, and each log is
//! read from a saved cursor.
//!
//! Sharing: sled 0.34 lets one process open a database at a time, so nobody holds the store
//! for long. The console opens it for each sync (every couple of seconds while something
//! changed: a few milliseconds to open, then only what is new is ingested) and closes it again;
//! a CLI command holds it for the moment it needs it. Openers that find it held wait for it
//! ([`Store::open_waiting`]) instead of failing, so `store status`, `store lineage` and
//! `experiments history` answer while the console runs. Of the alternatives, one writer that
//! others ask over a socket would make every reader depend on the console being up, and
//! readers of an exported snapshot would see it stale and double the bytes on disk; short
//! holds need neither. A holder that keeps it past the patience (a rebuild of a large index)
//! gets [`StoreError::InUse`] naming it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod series;

use crate::runner::projection::Applied;
use crate::runner::tail::{Cursor, LogTail};
use crate::runner::transcript::{Transcript, list_transcripts};
use crate::runner::{PlanShape, RunDir, RunProjection, list_runs};
use slayer_engine::events::{EvalRecord, Event, EventKind};

/// The store's on-disk format. A store written with a higher number is refused, not misread.
pub const FORMAT: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store {path} is in use by {holder}, which has not let it go in time (store \
         commands wait 10 s; the console holds it a moment at a time). The `runs` commands read \
         run directories directly"
    )]
    InUse { path: PathBuf, holder: String },
    #[error(
        "the store {path} was written by a newer slayer (format {found}; this build reads format \
         {FORMAT}). Upgrade slayer, or run `slayer store rebuild` to replace it from the run \
         directories"
    )]
    NewerFormat { path: PathBuf, found: u64 },
    #[error(
        "cannot open the store {path}: {message}. `slayer store rebuild` recreates it from the run \
         directories"
    )]
    Damaged { path: PathBuf, message: String },
    #[error(
        "cannot rebuild the store {path}: {cause}. The index there is as it was; once the cause \
         is mended (free space, say), `slayer store rebuild` again"
    )]
    RebuildFailed { path: PathBuf, cause: String },
    // The cause is in the message, not also the source (a printed chain would repeat it).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("store {path}: {cause}")]
    Db { path: PathBuf, cause: sled::Error },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Every tree's rows in key order (see [`Store::dump`]).
pub type Dump = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// A run as the index knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    /// Hash of the experiment text the run was launched with (a version in the history).
    pub experiment_version: String,
    /// Hash of the resolved layer map: runs with equal hashes trained the same architecture.
    pub plan_hash: String,
    /// What its events say: the one projection, which each ingestion carries on from
    /// (liveness comes from the run directory).
    pub run: RunProjection,
    /// A problem reading its log, naming the file and line.
    pub problem: Option<String>,
}

/// One version of an experiment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentVersion {
    pub name: String,
    pub hash: String,
    /// When this text was first seen (file modification time, or the run's start).
    pub first_seen: u64,
    pub source: String,
    pub text: String,
}

/// A chat in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRecord {
    pub id: String,
    pub started: f64,
    pub models: Vec<String>,
    pub runs: Vec<String>,
    pub turns: usize,
    pub path: String,
}

/// Plan → expanded model → run → evaluations → chats, for one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lineage {
    pub experiment: String,
    pub experiment_version: String,
    pub base_model: String,
    pub plan: PlanShape,
    pub plan_hash: String,
    pub run: String,
    /// Other runs that trained the same resolved plan.
    pub same_plan: Vec<String>,
    /// Steps of the checkpoints the run wrote (see [`Lineage::on_disk`]).
    pub checkpoints: Vec<u64>,
    /// Checkpoints the run wrote that are gone (rotation keeps the newest few).
    pub removed_checkpoints: Vec<u64>,
    pub evals: Vec<(String, u64)>,
    pub chats: Vec<String>,
}

impl Lineage {
    /// Only the checkpoints still in `checkpoints_dir` stay in `checkpoints`; the others move
    /// to `removed_checkpoints` (the index records writes, not rotation's deletions).
    #[must_use]
    pub fn on_disk(mut self, checkpoints_dir: &Path) -> Self {
        let present: Vec<u64> = slayer_engine::train::list_checkpoints(checkpoints_dir)
            .map(|list| list.into_iter().map(|(step, _)| step).collect())
            .unwrap_or_default();
        let (kept, removed) = self
            .checkpoints
            .into_iter()
            .partition(|s| present.contains(s));
        self.checkpoints = kept;
        self.removed_checkpoints = removed;
        self
    }
}

/// What an ingestion pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct IngestStats {
    pub runs: usize,
    pub events: usize,
    pub experiments: usize,
    pub chats: usize,
    /// Runs whose logs had lines that are not events.
    pub problems: usize,
    /// Transcripts that could not be read, each naming its file and why (not indexed).
    pub chat_problems: Vec<String>,
}

/// What indexing one transcript did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatIngest {
    /// Seen before as it is.
    Unchanged,
    /// New or changed in the index.
    Indexed,
    /// It cannot be read: why, naming the file.
    Unreadable(String),
}

const TREES: [&str; 8] = [
    "meta",
    "runs",
    "cursors",
    "series",
    "evals",
    "experiments",
    "chats",
    "plans",
];

/// The open store. Dropping it flushes and releases the lock.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    runs: sled::Tree,
    cursors: sled::Tree,
    /// Metric series in chunks (see [`series`]).
    series: sled::Tree,
    /// `run \0 seq(be)` → EvalRecord JSON.
    evals: sled::Tree,
    /// `name \0 hash` → ExperimentVersion JSON.
    experiments: sled::Tree,
    chats: sled::Tree,
    /// `plan hash \0 run` → ().
    plans: sled::Tree,
    /// The lock this store holds (`None` for the new index a rebuild writes under its caller's
    /// lock).
    lock_file: Option<File>,
}

/// The store directory of a data directory.
#[must_use]
pub fn store_dir(data_dir: &Path) -> PathBuf {
    crate::layout::DataDir::at(data_dir).store()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// [`lock`], waiting up to `patience` while another process holds it.
fn lock_waiting(dir: &Path, holder: &str, patience: std::time::Duration) -> Result<File> {
    let deadline = std::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match lock(dir, holder) {
            Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Takes the store's lock file, writing `holder` into it; a held lock names its holder.
fn lock(dir: &Path, holder: &str) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text.trim();
            return Err(StoreError::InUse {
                path: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "another process".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    let since = slayer_engine::text::utc_stamp();
    file.set_len(0).map_err(io(&path))?;
    file.rewind().map_err(io(&path))?;
    writeln!(file, "pid {} ({holder}, since {since})", std::process::id()).map_err(io(&path))?;
    Ok(file)
}

fn hash_hex(bytes: &[u8]) -> String {
    // FNV-1a: a stable identity for texts and plans, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn prefix(run: &str) -> Vec<u8> {
    let mut k = run.as_bytes().to_vec();
    k.push(0);
    k
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (creating if needed) the store of `data_dir`; `holder` says who holds it (shown to
    /// anyone else who tries).
    pub fn open(data_dir: &Path, holder: &str) -> Result<Self> {
        Self::open_waiting(data_dir, holder, std::time::Duration::ZERO)
    }

    /// [`Store::open`], waiting up to `patience` while another process holds the store (the
    /// console's syncs hold it for milliseconds).
    pub fn open_waiting(
        data_dir: &Path,
        holder: &str,
        patience: std::time::Duration,
    ) -> Result<Self> {
        let dir = store_dir(data_dir);
        let lock = lock_waiting(&dir, holder, patience)?;
        Self::open_at(&dir.join("db"), Some(lock))
    }

    fn open_at(db_path: &Path, lock: Option<File>) -> Result<Self> {
        let db_path = db_path.to_path_buf();
        let db = sled::Config::new()
            .path(&db_path)
            .open()
            .map_err(|e| StoreError::Damaged {
                path: db_path.clone(),
                message: e.to_string(),
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|cause| StoreError::Db {
                path: db_path.clone(),
                cause,
            })
        };
        let store = Self {
            meta: tree("meta")?,
            runs: tree("runs")?,
            cursors: tree("cursors")?,
            series: tree("series")?,
            evals: tree("evals")?,
            experiments: tree("experiments")?,
            chats: tree("chats")?,
            plans: tree("plans")?,
            path: db_path.clone(),
            db,
            lock_file: lock,
        };
        match store.meta.get("format").map_err(|e| store.db_err(e))? {
            None => {
                store
                    .meta
                    .insert("format", &FORMAT.to_be_bytes())
                    .map_err(|e| store.db_err(e))?;
            }
            Some(v) => {
                let found = <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Damaged {
                        path: db_path.clone(),
                        message: "its format marker is unreadable".into(),
                    })?;
                if found > FORMAT {
                    return Err(StoreError::NewerFormat {
                        path: db_path,
                        found,
                    });
                }
                if found < FORMAT {
                    // The index is derived from the run directories: an older one is emptied
                    // and filled again by the next ingestion (every cursor goes with it).
                    store.clear()?;
                }
            }
        }
        Ok(store)
    }

    /// Recreates the index from the run directories, experiment files and transcripts under
    /// `data_dir` (works on a damaged or newer-format store too). The new index is built beside
    /// the old one and replaces it only once complete: a rebuild that fails (a full disk) leaves
    /// the old index as it was. Waits up to `patience` for another holder, like
    /// [`Store::open_waiting`].
    pub fn rebuild(
        data_dir: &Path,
        holder: &str,
        experiment_dirs: &[PathBuf],
        patience: std::time::Duration,
    ) -> Result<(Self, IngestStats)> {
        let dir = store_dir(data_dir);
        let lock = lock_waiting(&dir, holder, patience)?;
        let db_path = dir.join("db");
        let fresh_path = dir.join("db.rebuild");
        let old_path = dir.join("db.old");
        for leftover in [&fresh_path, &old_path] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(io(leftover))?;
            }
        }
        let built = (|| -> Result<IngestStats> {
            let fresh = Self::open_at(&fresh_path, None)?;
            let stats = fresh.ingest_all(data_dir, experiment_dirs)?;
            fresh.db.flush().map_err(|e| fresh.db_err(e))?;
            Ok(stats)
        })();
        let stats = match built {
            Ok(stats) => stats,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&fresh_path);
                return Err(StoreError::RebuildFailed {
                    path: db_path,
                    cause: e.to_string(),
                });
            }
        };
        if db_path.exists() {
            std::fs::rename(&db_path, &old_path).map_err(io(&db_path))?;
        }
        std::fs::rename(&fresh_path, &db_path).map_err(io(&db_path))?;
        let _ = std::fs::remove_dir_all(&old_path);
        Ok((Self::open_at(&db_path, Some(lock))?, stats))
    }

    fn db_err(&self, cause: sled::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            cause,
        }
    }

    /// Writes everything to disk (sled flushes in the background too; this is for clean exits).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Ingests whatever is new in every run directory, experiment file and transcript.
    pub fn ingest_all(&self, data_dir: &Path, experiment_dirs: &[PathBuf]) -> Result<IngestStats> {
        let mut stats = IngestStats::default();
        for run in list_runs(data_dir) {
            let n = self.ingest_run(&run)?;
            stats.runs += 1;
            stats.events += n;
            if self.run(&run.id)?.is_some_and(|r| r.problem.is_some()) {
                stats.problems += 1;
            }
        }
        for dir in std::iter::once(crate::layout::DataDir::at(data_dir).experiments())
            .chain(experiment_dirs.to_vec())
        {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(std::result::Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            paths.sort();
            for path in paths {
                if self.ingest_experiment(&path)? {
                    stats.experiments += 1;
                }
            }
        }
        // Runs removed from disk leave the index too.
        let on_disk: std::collections::BTreeSet<String> =
            list_runs(data_dir).into_iter().map(|r| r.id).collect();
        for record in self.runs()? {
            if !on_disk.contains(&record.id) {
                self.remove_run(&record.id)?;
            }
        }
        (stats.chats, stats.chat_problems) = self.ingest_chats(data_dir)?;
        Ok(stats)
    }

    /// Indexes every transcript that is new or changed; returns how many were, and why the
    /// ones that cannot be read could not (each naming its file).
    pub fn ingest_chats(&self, data_dir: &Path) -> Result<(usize, Vec<String>)> {
        let (mut changed, mut problems) = (0, Vec::new());
        for path in list_transcripts(data_dir) {
            match self.ingest_chat(data_dir, &path)? {
                ChatIngest::Indexed => changed += 1,
                ChatIngest::Unchanged => {}
                ChatIngest::Unreadable(why) => problems.push(why),
            }
        }
        Ok((changed, problems))
    }

    /// Reads a run's log from where ingestion last stopped; returns the number of new events.
    pub fn ingest_run(&self, run: &RunDir) -> Result<usize> {
        let cursor: Cursor = self
            .cursors
            .get(&run.id)
            .map_err(|e| self.db_err(e))?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        let mut tail = LogTail::resume(&run.events_path(), cursor);
        let batch = match tail.poll() {
            Ok(b) => b,
            Err(e) => {
                let mut record = self.run(&run.id)?.unwrap_or_default();
                record.id.clone_from(&run.id);
                record.problem = Some(format!("cannot read {}: {e}", run.events_path().display()));
                self.put_run(&record)?;
                return Ok(0);
            }
        };
        let problem = crate::runner::skipped_lines_warning(&run.events_path(), &batch.bad_lines);
        let n = batch.events.len();
        self.apply(&run.id, batch.reset, &batch.events, problem)?;
        let cursor = serde_json::to_vec(tail.cursor()).unwrap_or_default();
        self.cursors
            .insert(run.id.as_bytes(), cursor)
            .map_err(|e| self.db_err(e))?;
        Ok(n)
    }

    /// Applies new events of a run, in order (what a follower delivers). `reset` first forgets
    /// everything the index holds for the run.
    pub fn apply(
        &self,
        run: &str,
        reset: bool,
        events: &[Event],
        problem: Option<String>,
    ) -> Result<()> {
        if reset {
            self.forget_run(run)?;
        }
        let mut record = self.run(run)?.unwrap_or_else(|| RunRecord {
            id: run.to_string(),
            ..RunRecord::default()
        });
        if problem.is_some() {
            record.problem = problem;
        }
        let mut series = series::SeriesWriter::new(self, run);
        for event in events {
            if let Applied::Truncate { after } = record.run.apply(event) {
                series.truncate_after(after)?;
            }
            match &event.kind {
                // The first start names the experiment version and the plan.
                EventKind::RunStart {
                    experiment, plan, ..
                } if record.experiment_version.is_empty() => {
                    record.experiment_version = hash_hex(experiment.as_bytes());
                    record.plan_hash = plan.as_ref().map_or_else(String::new, |map| {
                        hash_hex(serde_json::to_string(map).unwrap_or_default().as_bytes())
                    });
                    self.add_experiment_version(
                        experiment,
                        run,
                        &format!("run {run}"),
                        event.time as u64,
                    )?;
                    self.plans
                        .insert(key(&[record.plan_hash.as_bytes(), run.as_bytes()]), &[])
                        .map_err(|e| self.db_err(e))?;
                }
                EventKind::Step {
                    step,
                    loss,
                    lr,
                    tokens_per_sec,
                    grad_norm,
                    blocks,
                    ..
                } => {
                    series.put("loss", *step, *loss)?;
                    series.put("lr", *step, *lr)?;
                    series.put("tokens_per_sec", *step, *tokens_per_sec)?;
                    series.put("time", *step, event.time)?;
                    series.put("grad_norm", *step, *grad_norm)?;
                    for b in blocks {
                        series.put(&format!("grad_norm/{:03}", b.block), *step, b.grad_norm)?;
                        series.put(
                            &format!("update_ratio/{:03}", b.block),
                            *step,
                            b.update_ratio,
                        )?;
                    }
                }
                EventKind::Eval(r) => {
                    let v = serde_json::to_vec(r).unwrap_or_default();
                    self.evals
                        .insert(key(&[run.as_bytes(), &event.seq.to_be_bytes()]), v)
                        .map_err(|e| self.db_err(e))?;
                }
                _ => {}
            }
        }
        series.commit()?;
        self.put_run(&record)
    }

    fn forget_run(&self, run: &str) -> Result<()> {
        for tree in [&self.series, &self.evals] {
            let mut doomed = sled::Batch::default();
            for item in tree.scan_prefix(prefix(run)) {
                doomed.remove(item.map_err(|e| self.db_err(e))?.0);
            }
            tree.apply_batch(doomed).map_err(|e| self.db_err(e))?;
        }
        if let Some(r) = self.run(run)? {
            self.plans
                .remove(key(&[r.plan_hash.as_bytes(), run.as_bytes()]))
                .map_err(|e| self.db_err(e))?;
        }
        self.runs.remove(run).map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Drops a run from the index (after `runs rm`).
    pub fn remove_run(&self, run: &str) -> Result<()> {
        self.forget_run(run)?;
        self.cursors.remove(run).map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn put_run(&self, record: &RunRecord) -> Result<()> {
        let v = serde_json::to_vec(record).unwrap_or_default();
        self.runs
            .insert(record.id.as_bytes(), v)
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Records an experiment file's current text as a version (if it is new); returns whether
    /// it was.
    pub fn ingest_experiment(&self, path: &Path) -> Result<bool> {
        self.ingest_experiment_text(path, std::fs::read_to_string(path).ok())
    }

    fn ingest_experiment_text(&self, path: &Path, text: Option<String>) -> Result<bool> {
        let Some(text) = text else {
            return Ok(false);
        };
        let first_seen = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_or(0, unix_secs);
        let stem = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        self.add_experiment_version(&text, &stem, &path.display().to_string(), first_seen)
    }

    /// Adds `text` to its experiment's history unless that exact text is there already.
    fn add_experiment_version(
        &self,
        text: &str,
        fallback_name: &str,
        source: &str,
        first_seen: u64,
    ) -> Result<bool> {
        let mut name = slayer_engine::events::experiment_fields(text).0;
        if name.is_empty() {
            name = fallback_name.to_string();
        }
        let hash = hash_hex(text.as_bytes());
        let k = key(&[name.as_bytes(), hash.as_bytes()]);
        if self
            .experiments
            .contains_key(&k)
            .map_err(|e| self.db_err(e))?
        {
            return Ok(false);
        }
        let version = ExperimentVersion {
            name,
            hash,
            first_seen,
            source: source.to_string(),
            text: text.to_string(),
        };
        self.experiments
            .insert(k, serde_json::to_vec(&version).unwrap_or_default())
            .map_err(|e| self.db_err(e))?;
        Ok(true)
    }

    /// Indexes a chat transcript (again, if it changed since: its length and modification
    /// time are kept as its cursor, so an unchanged transcript is not read).
    pub fn ingest_chat(&self, data_dir: &Path, path: &Path) -> Result<ChatIngest> {
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| {
                let modified = m
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?;
                Some(format!("{}:{}", m.len(), modified.as_nanos()))
            })
            .unwrap_or_default();
        let cursor_key = key(&[b"chat", path.as_os_str().as_encoded_bytes()]);
        let seen = self.cursors.get(&cursor_key).map_err(|e| self.db_err(e))?;
        if !stamp.is_empty() && seen.is_some_and(|v| v == stamp.as_bytes()) {
            return Ok(ChatIngest::Unchanged);
        }
        // No cursor is kept for an unreadable one: it is tried (and reported) again.
        let t = match Transcript::load(path) {
            Ok(t) => t,
            Err(e) => return Ok(ChatIngest::Unreadable(format!("{e:#}; not indexed"))),
        };
        self.cursors
            .insert(cursor_key, stamp.as_bytes())
            .map_err(|e| self.db_err(e))?;
        let record = ChatRecord {
            id: t.id.clone(),
            started: t.started,
            models: t.models.iter().map(|m| m.label.clone()).collect(),
            runs: t.runs(data_dir),
            turns: t.turns.len(),
            path: path.display().to_string(),
        };
        let v = serde_json::to_vec(&record).unwrap_or_default();
        let old = self
            .chats
            .insert(t.id.as_bytes(), v.clone())
            .map_err(|e| self.db_err(e))?;
        Ok(if old.is_none_or(|o| o != v) {
            ChatIngest::Indexed
        } else {
            ChatIngest::Unchanged
        })
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        Ok(self
            .runs
            .get(id)
            .map_err(|e| self.db_err(e))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every indexed run, by id.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        self.runs
            .iter()
            .values()
            .map(|v| {
                v.map(|v| serde_json::from_slice(&v).unwrap_or_default())
                    .map_err(|e| self.db_err(e))
            })
            .collect()
    }

    /// The run table from the index: every run directory under `data_dir` (oldest first), as
    /// its record's projection says, with its worker's liveness from the directory — what a
    /// scan of the directories ([`crate::runner::RunTable`]) shows, without reading any log.
    pub fn run_table(&self, data_dir: &Path) -> Result<Vec<crate::runner::RunSummary>> {
        list_runs(data_dir)
            .iter()
            .map(|dir| {
                let record = self.run(&dir.id)?.unwrap_or_default();
                Ok(crate::runner::summary_of(dir, &record.run, record.problem))
            })
            .collect()
    }

    /// A run's evaluations in the order they were recorded.
    pub fn evals(&self, run: &str) -> Result<Vec<EvalRecord>> {
        self.evals
            .scan_prefix(prefix(run))
            .values()
            .map(|v| {
                v.map(|v| serde_json::from_slice(&v).unwrap_or_else(|_| empty_eval()))
                    .map_err(|e| self.db_err(e))
            })
            .collect()
    }

    /// Every version of every experiment, by name then first appearance.
    pub fn experiments(&self) -> Result<Vec<ExperimentVersion>> {
        let mut out: Vec<ExperimentVersion> = self
            .experiments
            .iter()
            .values()
            .filter_map(|v| v.ok().and_then(|v| serde_json::from_slice(&v).ok()))
            .collect();
        out.sort_by(|a, b| (&a.name, a.first_seen).cmp(&(&b.name, b.first_seen)));
        Ok(out)
    }

    pub fn chats(&self) -> Result<Vec<ChatRecord>> {
        Ok(self
            .chats
            .iter()
            .values()
            .filter_map(|v| v.ok().and_then(|v| serde_json::from_slice(&v).ok()))
            .collect())
    }

    /// Where a run came from and what came of it.
    pub fn lineage(&self, run: &str) -> Result<Option<Lineage>> {
        let Some(r) = self.run(run)? else {
            return Ok(None);
        };
        let same_plan = self
            .plans
            .scan_prefix(key(&[r.plan_hash.as_bytes(), &[]]))
            .keys()
            .filter_map(std::result::Result::ok)
            .filter_map(|k| {
                let id = String::from_utf8_lossy(&k[r.plan_hash.len() + 1..]).into_owned();
                (id != run).then_some(id)
            })
            .collect();
        let chats = self
            .chats()?
            .into_iter()
            .filter(|c| c.runs.iter().any(|x| x == run))
            .map(|c| c.id)
            .collect();
        let checkpoints = r.run.checkpoints();
        Ok(Some(Lineage {
            experiment: r.run.experiment,
            experiment_version: r.experiment_version,
            base_model: r.run.base_model,
            plan: r.run.plan,
            plan_hash: r.plan_hash,
            run: run.to_string(),
            same_plan,
            checkpoints,
            removed_checkpoints: Vec::new(),
            evals: self
                .evals(run)?
                .into_iter()
                .map(|e| (e.label, e.step))
                .collect(),
            chats,
        }))
    }

    /// Every record, tree by tree, in key order: two stores with equal dumps index the same.
    pub fn dump(&self) -> Result<Dump> {
        let mut out = BTreeMap::new();
        for name in TREES {
            let tree = self.db.open_tree(name).map_err(|e| self.db_err(e))?;
            let rows = tree
                .iter()
                .map(|kv| {
                    kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(|e| self.db_err(e))
                })
                .collect::<Result<Vec<_>>>()?;
            out.insert(name.to_string(), rows);
        }
        Ok(out)
    }

    /// Where the database lives.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Empties every tree and marks the store as this build's format.
    fn clear(&self) -> Result<()> {
        for name in TREES {
            let tree = self.db.open_tree(name).map_err(|e| self.db_err(e))?;
            tree.clear().map_err(|e| self.db_err(e))?;
        }
        self.meta
            .insert("format", &FORMAT.to_be_bytes())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Marks the store as written by format `n` (tests of the newer-version refusal).
    #[doc(hidden)]
    pub fn set_format(&self, n: u64) -> Result<()> {
        self.meta
            .insert("format", &n.to_be_bytes())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.db.flush();
        // Unlocking the open file description, not only closing this descriptor, also releases
        // the copy a child process holds between fork and exec (the console spawns workers):
        // otherwise the next opener can find the store still "in use" by this process.
        if let Some(lock) = &self.lock_file {
            let _ = lock.unlock();
        }
    }
}

fn empty_eval() -> EvalRecord {
    EvalRecord {
        samples: Vec::new(),
        label: String::new(),
        step: 0,
        ppl: Vec::new(),
        tasks: Vec::new(),
        quant: slayer_engine::model::Quant::None,
    }
}
