//! Background runs: the one typed API that launches, resumes, stops and kills them, used by
//! the CLI (`train --detach`, `runs resume|stop|kill`), the console's jobs and studies alike,
//! with two backends ([`Backend`]): the local queue (one slot per device) and a Slurm cluster
//! (a batch job per launch, `runner::slurm`). The training worker is the one process slayer
//! starts from its own executable — it must outlive whoever launched it — and `spawn_worker`
//! and `spawn_training` are where that happens (on a Slurm node, the job's entry starts it).
//! Nothing here prints: plan diagnostics come back in [`Launched`], failures as errors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::core::checkpoint::{WeightSource, open_source};
use crate::core::device::DeviceChoice;
use crate::core::experiment::Experiment;
use crate::core::plan::{self, LayerMap, Severity};
use crate::core::text::sanitize_for_terminal;
use crate::runner::queue::Submitted;
use crate::runner::slurm;
use crate::runner::{RunDir, RunState, Worker};

/// Where a background run's worker runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// The local queue: one run at a time per device of this machine.
    #[default]
    Local,
    /// A Slurm batch job; the resources override the experiment's `[slurm]` table.
    Slurm(Box<slurm::Resources>),
}

impl Backend {
    /// The backend a run's newest launch used: Slurm when it was ever submitted there and
    /// not resumed locally since.
    #[must_use]
    pub fn of_run(run: &RunDir) -> Self {
        if slurm::job_of(run).is_some() {
            Self::Slurm(Box::default())
        } else {
            Self::Local
        }
    }
}

/// Finds a base model by what an experiment names (fetching a known one, the CLI's way, or
/// refusing to, the console's).
pub type Locate<'a> = &'a dyn Fn(&Path, &str) -> Result<PathBuf>;

/// An experiment resolved against its base model.
pub struct Resolved {
    /// The base model as named (by `--model` or `[model] base`).
    pub base_arg: String,
    pub base: Box<dyn WeightSource>,
    pub map: LayerMap,
    /// The plan's warnings, rendered against its file.
    pub warnings: Vec<String>,
}

/// Loads and resolves an experiment against its base model; a plan with errors is an error
/// that lists them.
pub fn resolve(
    exp: &Experiment,
    model: Option<&str>,
    data_dir: &Path,
    locate: Locate<'_>,
) -> Result<Resolved> {
    let base_arg = match (model, &exp.model) {
        (Some(m), _) => m.to_string(),
        (None, Some(m)) => m.base.clone(),
        (None, None) => bail!(
            "{}: no base model: pass --model or set [model] base",
            exp.path.display()
        ),
    };
    let base = open_source(&locate(data_dir, &base_arg)?)?;
    let resolution = plan::resolve(&exp.plan, base.config().num_hidden_layers);
    let render = |d: &plan::Diagnostic| {
        sanitize_for_terminal(&d.render(&exp.path.display().to_string(), &exp.text)).into_owned()
    };
    let has_errors = resolution.has_errors();
    let Some(map) = resolution.map.filter(|_| !has_errors) else {
        let errors: Vec<String> = resolution
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(render)
            .collect();
        bail!(
            "{}: the plan has errors:\n{}",
            exp.path.display(),
            errors.join("\n")
        );
    };
    Ok(Resolved {
        base_arg,
        base,
        map,
        warnings: resolution
            .diagnostics
            .iter()
            .filter(|d| d.severity != Severity::Error)
            .map(render)
            .collect(),
    })
}

/// A run handed to the queue.
pub struct Launched {
    pub run: RunDir,
    /// Started now, or waiting for the device's slot.
    pub submitted: Submitted,
    /// The plan's warnings (launch only).
    pub warnings: Vec<String>,
}

/// Launches the experiment at `path` in the background: checks its plan against its base
/// model (before any run directory exists, so a plan with errors leaves nothing behind),
/// creates the run with an anchored copy of the experiment, and submits it to the queue.
pub fn launch(
    data_dir: &Path,
    path: &Path,
    model: Option<&str>,
    device: DeviceChoice,
    locate: Locate<'_>,
    backend: &Backend,
) -> Result<Launched> {
    let exp = Experiment::load(path).map_err(anyhow::Error::msg)?;
    if let Backend::Slurm(overrides) = backend {
        // The `[slurm]` table is checked before anything exists.
        slurm::Resources::of_experiment(&exp.path, &exp.text)?.with(overrides, &exp.path)?;
    }
    let resolved = resolve(&exp, model, data_dir, locate)?;
    let run = RunDir::create(data_dir, &exp.name)?;
    // Relative paths in the copy must still reach the files: anchor them now.
    std::fs::write(run.experiment_path(), anchored_text(&exp, model))
        .with_context(|| format!("cannot write {}", run.experiment_path().display()))?;
    write_plan(&run, &resolved.map)?;
    let submitted = match submit(data_dir, &run, device, backend) {
        Ok(s) => s,
        Err(e) if matches!(backend, Backend::Slurm(_)) => {
            // sbatch refused (a partition that does not exist, a limit): nothing half-created.
            let _ = std::fs::remove_dir_all(&run.path);
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    Ok(Launched {
        run,
        submitted,
        warnings: resolved.warnings,
    })
}

/// Resumes run `id` in the background from its newest intact checkpoint (or queues it), on
/// `backend` (`None`: where it ran last, [`Backend::of_run`]). Locally the state is looked at
/// under the queue's lock: of two racing resumes, one starts (or queues) the run and the other
/// is told it is running.
pub fn resume(
    data_dir: &Path,
    id: &str,
    device: DeviceChoice,
    backend: Option<&Backend>,
) -> Result<Launched> {
    let run = RunDir::open(data_dir, id)?;
    let backend = backend.cloned().unwrap_or_else(|| Backend::of_run(&run));
    let submitted = submit(data_dir, &run, device, &backend)?;
    Ok(Launched {
        run,
        submitted,
        warnings: Vec::new(),
    })
}

fn submit(
    data_dir: &Path,
    run: &RunDir,
    device: DeviceChoice,
    backend: &Backend,
) -> Result<Submitted> {
    match backend {
        Backend::Local => {
            if slurm::job_of(run).is_some() {
                refuse_if_active(run)?;
                // From now on the local worker is the run's: its Slurm job is history.
                slurm::forget_job(run)?;
            }
            Ok(crate::runner::queue::submit(
                data_dir,
                run,
                device,
                &|r, d| spawn_worker(r, data_dir, d).map_err(Into::into),
            )?)
        }
        Backend::Slurm(overrides) => {
            refuse_if_active(run)?;
            let exp_path = run.experiment_path();
            let text = crate::core::corpus::read_settings(&exp_path, "experiment")?;
            let resources =
                slurm::Resources::of_experiment(&exp_path, &text)?.with(overrides, &exp_path)?;
            let exe = std::env::current_exe().context("cannot find the slayer executable")?;
            // The job starts elsewhere: every path in its script is absolute.
            let data_dir = std::fs::canonicalize(data_dir)
                .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
            let at = RunDir::open(&data_dir, &run.id)?;
            let script = slurm::batch_script(&at, &data_dir, &exe, device.as_arg(), &resources);
            // A local queue mark would make the local queue start it too.
            let queued = run.path.join("queued");
            if queued.exists() {
                std::fs::remove_file(&queued)
                    .with_context(|| format!("cannot remove {}", queued.display()))?;
            }
            let job = slurm::write_and_submit(run, &script)
                .with_context(|| format!("cannot submit run {} to Slurm", run.id))?;
            Ok(Submitted::SlurmJob(job))
        }
    }
}

/// Refuses to launch a run again while it runs (or waits to), or once it has finished.
fn refuse_if_active(run: &RunDir) -> Result<()> {
    let events = run.read_events()?;
    match run.state(&events) {
        RunState::Running => bail!("run {} is already running", run.id),
        RunState::Queued if slurm::job_of(run).is_some() => {
            bail!("run {} is already waiting in Slurm's queue", run.id)
        }
        RunState::Finished => bail!("run {} has finished", run.id),
        _ => Ok(()),
    }
}

/// What a stop or kill reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// The run's local worker.
    Worker(Worker),
    /// The run's Slurm job.
    SlurmJob(u64),
}

impl std::fmt::Display for Signalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Worker(w) => write!(f, "pid {}", w.pid),
            Self::SlurmJob(id) => write!(f, "Slurm job {id}"),
        }
    }
}

/// Sends `signal` to run `id` (SIGTERM: checkpoint and stop; SIGKILL: now): to its worker, or
/// for a Slurm run to its job (`scancel --signal=TERM` to the batch shell, which passes it on;
/// `scancel` to kill; a job still waiting is cancelled either way).
pub fn signal(data_dir: &Path, id: &str, signal: nix::sys::signal::Signal) -> Result<Signalled> {
    let run = RunDir::open(data_dir, id)?;
    if let Some(job_id) = slurm::job_of(&run) {
        let job = slurm::query(job_id)?
            .filter(|j| j.state.active())
            .with_context(|| format!("run {}'s Slurm job {job_id} is not running", run.id))?;
        if signal == nix::sys::signal::Signal::SIGTERM {
            // Before the signal: the job must not requeue itself after this checkpoint.
            slurm::request_stop(&run)?;
        }
        if signal == nix::sys::signal::Signal::SIGKILL || job.state.waiting() {
            slurm::cancel(job_id)?;
        } else {
            slurm::signal_batch(job_id, "TERM")?;
        }
        return Ok(Signalled::SlurmJob(job_id));
    }
    let worker = run
        .worker()
        .filter(Worker::alive)
        .with_context(|| format!("run {} has no running worker", run.id))?;
    worker.signal(signal)?;
    Ok(Signalled::Worker(worker))
}

/// Starts a run in the background: a supervisor process (`runs supervise`, in its own session)
/// that starts the worker, waits for it however it ends — a kill -9 or the OOM killer included —
/// and then hands the device slot to the next queued run. Returns the supervisor's pid.
pub(crate) fn spawn_worker(run_dir: &RunDir, data_dir: &Path, device: DeviceChoice) -> Result<u32> {
    spawn_slayer(
        run_dir,
        data_dir,
        &[
            "--device",
            device.as_arg(),
            "runs",
            "supervise",
            &run_dir.id,
        ],
    )
}

/// The worker itself (started by the supervisor, or by a Slurm job's entry: `in_slurm_job`;
/// its output goes to the run's log).
pub(crate) fn spawn_training(
    run_dir: &RunDir,
    data_dir: &Path,
    device: DeviceChoice,
    in_slurm_job: bool,
) -> Result<std::process::Child> {
    let mut args = vec![
        "--device",
        device.as_arg(),
        "train",
        "--resume",
        &run_dir.id,
        "--worker",
        "--print-every",
        "10",
    ];
    if in_slurm_job {
        args.push("--in-slurm-job");
    }
    spawn_child(run_dir, data_dir, &args)
}

fn spawn_slayer(run_dir: &RunDir, data_dir: &Path, args: &[&str]) -> Result<u32> {
    Ok(spawn_child(run_dir, data_dir, args)?.id())
}

/// Runs `slayer ARGS` with the run's `log` as its output, in a process group of its own.
fn spawn_child(run_dir: &RunDir, data_dir: &Path, args: &[&str]) -> Result<std::process::Child> {
    let log_path = run_dir.path.join("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the slayer executable")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log handle")?)
        .stderr(log);
    // The run decides its own thread count, from its experiment and its CPUs.
    crate::threads::leave_to_child(&mut command);
    let child = command
        .spawn()
        .context("cannot start a background slayer process")?;
    Ok(child)
}

pub(crate) fn write_plan(run_dir: &RunDir, map: &LayerMap) -> Result<()> {
    let path = run_dir.path.join("plan.json");
    crate::core::atomic::write_synced(&path, &serde_json::to_vec_pretty(map)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The experiment text with its relative data paths made absolute (for the run's copy), its
/// comments and layout kept (toml_edit). A `--model` override is recorded as `[model] base`
/// (absolute when it is a path) so that resuming and exporting find the same base.
pub(crate) fn anchored_text(exp: &Experiment, base_override: Option<&str>) -> String {
    let Ok(mut doc) = exp.text.parse::<toml_edit::DocumentMut>() else {
        return exp.text.clone();
    };
    if let Some(base) = base_override {
        let base = std::fs::canonicalize(base)
            .map_or_else(|_| base.to_string(), |p| p.display().to_string());
        doc["model"]["base"] = toml_edit::value(base);
    }
    let dir = exp.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let fix = |v: &mut toml_edit::Value| {
        if let Some(s) = v.as_str() {
            let anchored = crate::core::experiment::anchored(Path::new(s), &dir);
            let decor = v.decor().clone();
            *v = toml_edit::Value::from(anchored.display().to_string());
            *v.decor_mut() = decor;
        }
    };
    for (section, key) in crate::core::experiment::PATH_FIELDS {
        let Some(item) = doc.get_mut(section).and_then(|t| t.get_mut(key)) else {
            continue;
        };
        match item.as_value_mut() {
            Some(toml_edit::Value::Array(items)) => items.iter_mut().for_each(fix),
            Some(v) => fix(v),
            None => {}
        }
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    /// The run's copy of an experiment keeps the user's comments; only relative data and
    /// evaluation paths change, to absolute ones, and a `--model` override is recorded.
    #[test]
    fn the_runs_copy_keeps_comments_and_anchors_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        let text = "# notes\nname = \"e\"\n[data]\ntrain = \"corpus.txt\" # the corpus\n[eval]\ntasks = [\"/abs/t.jsonl\", \"rel.jsonl\"]\n[plan]\npreset = \"slayer\"\n";
        std::fs::write(&path, text).unwrap();
        let exp = crate::core::experiment::Experiment::parse(&path, text).unwrap();
        let copy = super::anchored_text(&exp, Some("smollm2"));
        let dir = std::fs::canonicalize(dir.path()).unwrap();
        assert!(
            copy.contains("# notes") && copy.contains("# the corpus"),
            "{copy}"
        );
        assert!(
            copy.contains(&format!("train = \"{}\"", dir.join("corpus.txt").display())),
            "{copy}"
        );
        assert!(copy.contains("\"/abs/t.jsonl\""), "{copy}");
        assert!(
            copy.contains(&dir.join("rel.jsonl").display().to_string()),
            "{copy}"
        );
        let reparsed: toml::Table = toml::from_str(&copy).unwrap();
        assert_eq!(reparsed["model"]["base"].as_str(), Some("smollm2"));
    }
}
