//! The run queue, without a daemon: queued runs wait in their directories (a `queued` file naming
//! their device), and whoever changes the picture — `train --detach`, `runs resume`, or a worker
//! that ends — takes the queue's lock and starts queued runs while their device has a free slot.
//!
//! Everything that decides is done under that one lock: [`submit`] looks at the run's state,
//! marks it queued and hands out slots in one critical section, so two racing requests can never
//! both see a run as startable, and a running run is never marked queued (which once let the
//! queue stop counting its slot). A started run's worker is recorded (atomically: a reader never
//! sees a half-written `worker.pid`) before the lock is released, so no slot is ever given twice.

use std::fs::File;
use std::path::Path;

use crate::error::{Because as _, Error, IoContext as _, Result};

use super::{RunDir, RunState, Worker};
use slayer_engine::device::DeviceChoice;
use slayer_engine::events::{EventKind, EventSink as _, RunStatus};

/// Runs at once per device.
pub const SLOTS_PER_DEVICE: usize = 1;

const QUEUED: &str = "queued";

/// What [`submit`] did with a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Its worker was started.
    Started,
    /// It waits for a slot on its device.
    Queued,
    /// Submitted to Slurm as this job (the launcher's Slurm backend; the local queue never
    /// answers this).
    SlurmJob(u64),
}

/// Starts a run's worker on a device and returns its pid: the front end's launch, whose error
/// is its own.
pub type Spawn<'a> = &'a dyn Fn(&RunDir, DeviceChoice) -> std::result::Result<u32, SpawnError>;

/// Why a launch failed, in the launcher's words.
pub type SpawnError = Box<dyn std::error::Error + Send + Sync>;

/// Marks `run` as waiting for a slot on `device` and starts whatever the queue can start, all
/// under the queue's lock. A running or finished run is refused.
pub fn submit(
    data_dir: &Path,
    run: &RunDir,
    device: DeviceChoice,
    spawn: Spawn<'_>,
) -> Result<Submitted> {
    let lock = QueueLock::take(data_dir)?;
    match run.state(&run.read_events()?) {
        RunState::Running => {
            return Err(Error::invalid(format!("run {} is already running", run.id)));
        }
        RunState::Finished => return Err(Error::invalid(format!("run {} has finished", run.id))),
        _ => {}
    }
    let path = run.path.join(QUEUED);
    slayer_engine::atomic::write_synced(&path, device.as_arg().as_bytes())
        .because(|| format!("cannot queue run {}", run.id))?;
    let started = advance_locked(data_dir, spawn)?;
    lock.release()?;
    Ok(if started.contains(&run.id) {
        Submitted::Started
    } else {
        Submitted::Queued
    })
}

/// The queue's lock file, held for as long as this value lives.
struct QueueLock {
    file: File,
    path: std::path::PathBuf,
}

impl QueueLock {
    fn take(data_dir: &Path) -> Result<Self> {
        let runs_dir = crate::layout::DataDir::at(data_dir).runs();
        std::fs::create_dir_all(&runs_dir).io("create", &runs_dir)?;
        let path = runs_dir.join(".queue.lock");
        let file = File::create(&path).io("open", &path)?;
        file.lock().io("lock", &path)?;
        Ok(Self { file, path })
    }

    fn release(self) -> Result<()> {
        self.file.unlock().io("unlock", &self.path)
    }
}

/// The largest queue mark or device record read: a device name and a newline.
const MAX_MARK_BYTES: u64 = 64;

/// The device a run waits for, if it is queued: `Err` says what is wrong with its mark (a file
/// edited by hand), naming it.
fn queued_device(run: &RunDir) -> Option<std::result::Result<DeviceChoice, String>> {
    let path = run.path.join(QUEUED);
    if !path.exists() {
        return None;
    }
    Some(
        slayer_engine::corpus::read_text_file(&path, "queue mark", Some(MAX_MARK_BYTES))
            .map_err(|e| e.to_string())
            .and_then(|s| {
                s.trim()
                    .parse::<DeviceChoice>()
                    .map_err(|e| format!("{}: {e}", path.display()))
            }),
    )
}

/// The device a running run occupies (recorded when it started from the queue; the CPU when
/// it started directly or the record is unreadable).
fn running_device(run: &RunDir) -> DeviceChoice {
    slayer_engine::corpus::read_text_file(
        &run.path.join("device"),
        "device record",
        Some(MAX_MARK_BYTES),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(DeviceChoice::Cpu)
}

/// Starts queued runs, oldest first, while their device has a free slot. `spawn(run, device)`
/// starts a worker and returns its pid. Returns the ids started.
pub fn advance(data_dir: &Path, spawn: Spawn<'_>) -> Result<Vec<String>> {
    let lock = QueueLock::take(data_dir)?;
    let started = advance_locked(data_dir, spawn)?;
    lock.release()?;
    Ok(started)
}

/// [`advance`] for a caller holding the lock.
fn advance_locked(data_dir: &Path, spawn: Spawn<'_>) -> Result<Vec<String>> {
    let mut runs = super::list_runs(data_dir);
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    // A worker that is handing over its slot calls this as it ends: it does not count.
    let me = Worker::current();
    let mut busy: std::collections::HashMap<DeviceChoice, usize> = std::collections::HashMap::new();
    // Every live worker holds its slot, queued file or not.
    for r in &runs {
        if r.worker().is_some_and(|w| w.alive() && Some(w) != me) {
            *busy.entry(running_device(r)).or_default() += 1;
        }
    }
    let mut started = Vec::new();
    for r in &runs {
        let Some(device) = queued_device(r) else {
            continue;
        };
        // Waiting to start or to resume: anything but a live worker.
        if r.worker().is_some_and(|w| w.alive()) {
            continue;
        }
        // Nothing to run: say why in the run's own log and stop waiting.
        let cannot_start = |message: String| -> Result<()> {
            let mut log = super::EventLog::open(&r.events_path())?;
            log.emit(EventKind::End {
                status: RunStatus::Failed,
                step: 0,
                message,
            })?;
            log.sync()?;
            std::fs::remove_file(r.path.join(QUEUED)).io("update", &r.path)
        };
        if !r.experiment_path().is_file() {
            cannot_start(format!(
                "{} is missing: the run cannot start",
                r.experiment_path().display()
            ))?;
            continue;
        }
        let device = match device {
            Ok(d) => d,
            Err(why) => {
                cannot_start(why)?;
                continue;
            }
        };
        let used = busy.entry(device).or_default();
        if *used >= SLOTS_PER_DEVICE {
            continue;
        }
        let pid = spawn(r, device).map_err(|cause| Error::Failed {
            what: format!("cannot start run {}", r.id),
            cause,
        })?;
        // Record the worker before releasing the lock: the run counts as running from now on.
        if let Ok(pid) = i32::try_from(pid)
            && let Some(ticks) = super::start_ticks(pid)
        {
            r.record_worker(Worker {
                pid,
                start_ticks: ticks,
            })?;
        }
        std::fs::write(r.path.join("device"), device.as_arg()).io("write", &r.path)?;
        std::fs::remove_file(r.path.join(QUEUED)).io("update", &r.path)?;
        *used += 1;
        started.push(r.id.clone());
    }
    Ok(started)
}
