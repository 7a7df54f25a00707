//! The run queue, without a daemon: queued runs wait in their directories (a `queued` file naming
//! their device), and whoever changes the picture — `train --queue`, `runs resume`, or a worker
//! that ends — calls [`advance`], which starts queued runs while their device has a free slot.
//! A lock file serialises the decision, and a started run's worker is recorded before the lock is
//! released, so no slot is ever given twice.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};

use super::{RunDir, Worker};
use crate::core::events::{EventKind, EventSink as _, RunStatus};

/// Runs at once per device.
pub const SLOTS_PER_DEVICE: usize = 1;

const QUEUED: &str = "queued";

/// Marks `run` as waiting for a slot on `device`.
pub fn enqueue(run: &RunDir, device: &str) -> Result<()> {
    let path = run.path.join(QUEUED);
    std::fs::write(&path, device).with_context(|| format!("cannot write {}", path.display()))
}

/// The device a run waits for, if it is queued.
#[must_use]
pub fn queued_device(run: &RunDir) -> Option<String> {
    std::fs::read_to_string(run.path.join(QUEUED))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The device a running run occupies (recorded when it started from the queue or directly).
fn running_device(run: &RunDir) -> String {
    std::fs::read_to_string(run.path.join("device"))
        .map_or_else(|_| "cpu".into(), |s| s.trim().to_string())
}

/// Starts queued runs, oldest first, while their device has a free slot. `spawn(run, device)`
/// starts a worker and returns its pid. Returns the ids started.
pub fn advance(
    data_dir: &Path,
    spawn: &dyn Fn(&RunDir, &str) -> Result<u32>,
) -> Result<Vec<String>> {
    let runs_dir = data_dir.join("runs");
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("cannot create {}", runs_dir.display()))?;
    let lock_path = runs_dir.join(".queue.lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let mut runs = super::list_runs(data_dir);
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    // A worker that is handing over its slot calls this as it ends: it does not count.
    let me = Worker::current();
    let mut busy: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &runs {
        if queued_device(r).is_none() && r.worker().is_some_and(|w| w.alive() && Some(w) != me) {
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
        if !r.experiment_path().is_file() {
            // Nothing to run: say why in the run's own log and stop waiting.
            let mut log = super::EventLog::open(&r.events_path())?;
            log.emit(EventKind::End {
                status: RunStatus::Failed,
                step: 0,
                message: format!(
                    "{} is missing: the run cannot start",
                    r.experiment_path().display()
                ),
            })?;
            log.sync()?;
            std::fs::remove_file(r.path.join(QUEUED))
                .with_context(|| format!("cannot update {}", r.path.display()))?;
            continue;
        }
        let used = busy.entry(device.clone()).or_default();
        if *used >= SLOTS_PER_DEVICE {
            continue;
        }
        let pid = spawn(r, &device)?;
        // Record the worker before releasing the lock: the run counts as running from now on.
        if let Ok(pid) = i32::try_from(pid)
            && let Some(ticks) = super::start_ticks(pid)
        {
            let w = Worker {
                pid,
                start_ticks: ticks,
            };
            std::fs::write(
                r.path.join("worker.pid"),
                format!("{} {}\n", w.pid, w.start_ticks),
            )
            .with_context(|| format!("cannot write {}", r.path.display()))?;
        }
        std::fs::write(r.path.join("device"), &device)
            .with_context(|| format!("cannot write {}", r.path.display()))?;
        std::fs::remove_file(r.path.join(QUEUED))
            .with_context(|| format!("cannot update {}", r.path.display()))?;
        *used += 1;
        started.push(r.id.clone());
    }
    lock.unlock()
        .with_context(|| format!("cannot unlock {}", lock_path.display()))?;
    Ok(started)
}
