//! `slayer runs ls|show|tail|stop|kill|resume|rm|export`: runs as their directories record them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};

use crate::core::device::DeviceChoice;
use crate::core::events::EventKind;
use crate::core::text::sanitize_for_terminal;
use crate::launch::spawn_worker;
use crate::runner::describe::describe;
use crate::runner::tail::Update;
use crate::runner::{RunDir, RunState, joined_steps, read_events};

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs: id, experiment, status, step, last loss, age.
    Ls {
        /// Print the runs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One run in detail: status, progress, evaluations, checkpoints.
    Show {
        /// The run id (`slayer runs ls` lists them).
        run: String,
    },
    /// Print a run's events as readable lines.
    Tail {
        /// The run id (`slayer runs ls` lists them).
        run: String,
        /// Keep printing new events as they arrive.
        #[arg(long, short)]
        follow: bool,
    },
    /// Ask a running run to checkpoint and stop.
    Stop {
        /// The run id (`slayer runs ls` lists them).
        run: String,
    },
    /// Kill a running run at once (it shows as lost; resume continues from its last checkpoint).
    Kill {
        /// The run id (`slayer runs ls` lists them).
        run: String,
    },
    /// Continue a stopped or lost run in the background (where it ran last, or `--on`).
    Resume {
        /// The run id (`slayer runs ls` lists them).
        run: String,
        #[command(flatten)]
        backend: super::backend::BackendArgs,
    },
    /// Delete a run that is not running (asks first when it has checkpoints).
    Rm {
        /// The run id (`slayer runs ls` lists them).
        run: String,
        /// Remove a run with checkpoints without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Internal: start a run's worker, wait for it, then advance the queue.
    #[command(hide = true)]
    Supervise {
        /// The run id (`slayer runs ls` lists them).
        run: String,
    },
    /// Internal: a Slurm job's entry point (its batch script execs it): start the run's worker
    /// on this node, checkpoint at a stop or the time-limit warning, requeue after the latter.
    #[command(hide = true)]
    SlurmJob {
        /// The run id.
        run: String,
    },
    /// Write a run's step metrics as CSV or JSON.
    Export {
        /// The run id (`slayer runs ls` lists them).
        run: String,
        /// csv (one row per step) or json (the step events).
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
    },
    /// Every run side by side: plan, lr, steps, batch, seed, step, loss and the latest
    /// evaluation's metrics as columns.
    Compare {
        /// Only runs whose id, experiment, status or plan contain every word.
        #[arg(long)]
        filter: Option<String>,
        /// Only the runs of this experiment.
        #[arg(long)]
        experiment: Option<String>,
        /// Only the runs of this study's cells (`slayer study run` made them).
        #[arg(long)]
        study: Option<String>,
        /// The column to sort by (a name from the header, e.g. `lr` or `probe acc`).
        #[arg(long, default_value = "run")]
        sort: String,
        /// Sort descending.
        #[arg(long)]
        desc: bool,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The difference between two runs' experiments (as each was launched).
    Diff {
        /// The first run id.
        a: String,
        /// The second run id.
        b: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d", s / 86_400),
    }
}

/// Where a run's latest worker ran, as `runs show` says it.
fn describe_environment(env: &crate::core::events::Environment) -> String {
    use std::fmt::Write as _;
    let threads = if env.thread_source.is_empty() {
        format!("{} threads", env.threads)
    } else {
        format!("{} threads ({})", env.threads, env.thread_source)
    };
    let mut line = format!("machine    {threads}");
    if env.cpus_available > 0 {
        let _ = write!(line, " of {} CPUs", env.cpus_available);
    }
    if !env.cpu.is_empty() || !env.simd.is_empty() {
        let _ = write!(line, "; {} ({})", env.cpu, env.simd);
    }
    if !env.slayer.is_empty() {
        let _ = write!(line, "; slayer {}", env.slayer);
    }
    line
}

pub fn run(cmd: RunsCommand, data_dir: &Path, device: DeviceChoice) -> Result<i32> {
    match cmd {
        RunsCommand::Ls { json } => {
            let summaries: Vec<crate::runner::RunSummary> = crate::runner::list_runs(data_dir)
                .iter()
                .map(crate::runner::summarize)
                .collect();
            if json {
                outln!("{}", serde_json::to_string_pretty(&summaries)?)?;
            } else {
                outln!(
                    "{:<40} {:<24} {:<9} {:>11} {:>9} {:>6}",
                    "run",
                    "experiment",
                    "status",
                    "step",
                    "loss",
                    "age"
                )?;
                for s in summaries {
                    let loss = s
                        .last_loss
                        .map_or_else(|| "—".into(), |l| format!("{l:.4}"));
                    outln!(
                        "{:<40} {:<24} {:<9} {:>11} {loss:>9} {:>6}{}{}",
                        sanitize_for_terminal(&s.id),
                        sanitize_for_terminal(&s.experiment),
                        s.status.to_string(),
                        format!("{}/{}", s.step, s.total_steps),
                        age(s.age_secs),
                        s.slurm_job
                            .map(|id| format!(
                                "  slurm {}",
                                s.job.as_ref().map_or_else(
                                    || format!("job {id} (no longer known to Slurm)"),
                                    |j| sanitize_for_terminal(&j.brief()).into_owned()
                                )
                            ))
                            .unwrap_or_default(),
                        s.problem
                            .map(|p| format!("  ({})", sanitize_for_terminal(&p)))
                            .unwrap_or_default()
                    )?;
                }
            }
            Ok(0)
        }
        RunsCommand::Show { run } => {
            let dir = RunDir::open(data_dir, &run)?;
            let events = read_warning_once(&dir)?;
            let s = crate::runner::summarize(&dir);
            outln!(
                "run        {}\nexperiment {}\nstatus     {}\nstep       {}/{}\ndirectory  {}",
                s.id,
                s.experiment,
                s.status,
                s.step,
                s.total_steps,
                dir.path.display()
            )?;
            if let Some(env) = crate::runner::RunProjection::of(&events).environment {
                outln!("{}", sanitize_for_terminal(&describe_environment(&env)))?;
            }
            if let Some(id) = crate::runner::slurm::job_of(&dir) {
                outln!(
                    "slurm      {}",
                    s.job.as_ref().map_or_else(
                        || format!(
                            "job {id} (Slurm no longer knows it; the event log is the record)"
                        ),
                        |j| sanitize_for_terminal(&j.brief()).into_owned()
                    )
                )?;
                if let Some((job, node)) = crate::runner::slurm::started_of(&dir) {
                    outln!(
                        "           job {job} reached the run directory on {}",
                        sanitize_for_terminal(&node)
                    )?;
                }
                if let Some(p) = &s.problem {
                    outln!("problem    {}", sanitize_for_terminal(p))?;
                }
                let script = crate::runner::slurm::dir(&dir).join("batch.sh");
                if let Ok(text) = std::fs::read_to_string(&script) {
                    outln!("batch script ({}):", script.display())?;
                    for line in text.lines() {
                        outln!("  {}", sanitize_for_terminal(line))?;
                    }
                }
            } else if let Some(w) = dir.worker() {
                outln!(
                    "worker     pid {}{}",
                    w.pid,
                    if w.alive() { "" } else { " (gone)" }
                )?;
            }
            let checkpoints = crate::core::train::list_checkpoints(&dir.path.join("checkpoints"))?;
            outln!(
                "checkpoints {:?}",
                checkpoints.iter().map(|(s, _)| *s).collect::<Vec<_>>()
            )?;
            if s.status == RunState::Lost {
                outln!(
                    "the worker died without finishing: `slayer runs resume {}` continues from step {}",
                    dir.id,
                    checkpoints.last().map_or(0, |c| c.0)
                )?;
            }
            let evals: Vec<_> = events
                .iter()
                .filter_map(|e| {
                    if let EventKind::Eval(r) = &e.kind {
                        Some(r.clone())
                    } else {
                        None
                    }
                })
                .collect();
            if !evals.is_empty() {
                outln!("\n{}", crate::core::run::summary_table(&evals))?;
            }
            if let Some(e) = evals.iter().rev().find(|e| !e.samples.is_empty()) {
                outln!("samples ({} at step {})", e.label, e.step)?;
                for sample in &e.samples {
                    outln!(
                        "  {} → {}{}",
                        sanitize_for_terminal(&sample.prompt),
                        sanitize_for_terminal(&sample.text),
                        sample
                            .expected
                            .as_ref()
                            .map_or_else(String::new, |x| format!(
                                "   (expected: {})",
                                sanitize_for_terminal(x)
                            ))
                    )?;
                }
            }
            let alerts = crate::runner::alerts::alerts(&events);
            if !alerts.is_empty() {
                outln!("alerts")?;
                for a in alerts {
                    outln!("  {}", sanitize_for_terminal(&a.message))?;
                }
            }
            Ok(0)
        }
        RunsCommand::Tail { run, follow } => {
            let dir = RunDir::open(data_dir, &run)?;
            let mut follower = crate::runner::tail::Follower::runs(std::slice::from_ref(&dir));
            let mut updates = follower.poll_all();
            loop {
                for update in updates {
                    match update {
                        Update::Events { reset, events, .. } => {
                            if reset {
                                outln!(
                                    "(the event log was truncated or replaced; reading it from the start)"
                                )?;
                            }
                            for e in &events {
                                outln!("{}", describe(e))?;
                            }
                        }
                        Update::Problem { message, .. } => {
                            errln!("warning: {message}");
                        }
                        Update::Experiment(_) => {}
                    }
                }
                if !follow || super::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                // Read the log once more after the run ends, so its last lines are printed.
                let state = dir.state(&read_events(&dir.events_path()).unwrap_or_default());
                if !matches!(state, RunState::Running | RunState::Queued) {
                    for update in follower.poll_all() {
                        if let Update::Events { events, .. } = update {
                            for e in &events {
                                outln!("{}", describe(e))?;
                            }
                        }
                    }
                    break;
                }
                updates = follower.wait(Duration::from_millis(500));
            }
            Ok(0)
        }
        RunsCommand::Stop { run } => signal(
            data_dir,
            &run,
            nix::sys::signal::Signal::SIGTERM,
            "asked to checkpoint and stop",
        ),
        RunsCommand::Kill { run } => {
            signal(data_dir, &run, nix::sys::signal::Signal::SIGKILL, "killed")
        }
        RunsCommand::Resume { run, backend } => {
            read_warning_once(&RunDir::open(data_dir, &run)?)?;
            let launched =
                crate::launch::resume(data_dir, &run, device, backend.backend()?.as_ref())?;
            let id = &launched.run.id;
            match launched.submitted {
                crate::runner::queue::Submitted::Started => {
                    errln!("run {id} resumed in the background");
                }
                crate::runner::queue::Submitted::Queued => errln!(
                    "run {id} is queued to resume when a {} slot frees up",
                    device
                ),
                crate::runner::queue::Submitted::SlurmJob(job) => {
                    errln!("run {id} submitted to Slurm as job {job} to resume");
                }
            }
            Ok(0)
        }
        RunsCommand::Supervise { run } => supervise(data_dir, &run, device),
        RunsCommand::SlurmJob { run } => slurm_job(data_dir, &run, device),
        RunsCommand::Rm { run, yes } => remove(data_dir, &run, yes),
        RunsCommand::Compare {
            filter,
            experiment,
            study,
            sort,
            desc,
            json,
        } => {
            let study_runs: Option<Vec<String>> = match &study {
                None => None,
                Some(name) => {
                    let dir = crate::study::dir(data_dir, name);
                    let cells = crate::study::read_cells(&dir).with_context(|| {
                        format!("--study {name:?} (`slayer study run` records its runs)")
                    })?;
                    if cells.is_empty() {
                        anyhow::bail!(
                            "--study {name:?}: no runs recorded in {}",
                            dir.join("cells.json").display()
                        );
                    }
                    Some(cells.into_values().collect())
                }
            };
            let mut rows: Vec<_> = crate::runner::compare::rows(data_dir)
                .into_iter()
                .filter(|r| filter.as_deref().is_none_or(|f| r.matches(f)))
                .filter(|r| experiment.as_deref().is_none_or(|e| r.experiment == e))
                .filter(|r| study_runs.as_ref().is_none_or(|runs| runs.contains(&r.run)))
                .collect();
            let columns = crate::runner::compare::columns(&rows);
            if !columns.contains(&sort) {
                anyhow::bail!(
                    "--sort {sort:?}: no such column (columns: {})",
                    columns.join(", ")
                );
            }
            crate::runner::compare::sort(&mut rows, &sort, desc);
            // A log with skipped lines is said once, as every reader of event logs says it.
            for r in &rows {
                if let Some(problem) = &r.problem {
                    errln!("warning: run {}: {}", r.run, sanitize_for_terminal(problem));
                }
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(0);
            }
            if rows.is_empty() {
                errln!("no runs match");
                return Ok(0);
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    columns
                        .iter()
                        .map(|c| sanitize_for_terminal(&r.cell(c).show(c)).into_owned())
                        .collect()
                })
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    table
                        .iter()
                        .map(|row| row[i].chars().count())
                        .chain([c.chars().count()])
                        .max()
                        .unwrap_or(1)
                })
                .collect();
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            outln!("{}", line(&columns))?;
            for row in &table {
                outln!("{}", line(row))?;
            }
            Ok(0)
        }
        RunsCommand::Diff { a, b } => {
            let (da, db) = (RunDir::open(data_dir, &a)?, RunDir::open(data_dir, &b)?);
            let read = |d: &RunDir| {
                crate::core::corpus::read_settings(&d.experiment_path(), "experiment")
                    .with_context(|| format!("run {}", d.id))
            };
            let (ta, tb) = (read(&da)?, read(&db)?);
            let diff = similar::TextDiff::from_lines(&ta, &tb);
            let text = diff
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("{}/experiment.toml", da.id),
                    &format!("{}/experiment.toml", db.id),
                )
                .to_string();
            if text.is_empty() {
                outln!("{} and {} ran the same experiment text", da.id, db.id)?;
            } else {
                out!("{}", sanitize_for_terminal(&text))?;
            }
            Ok(0)
        }
        RunsCommand::Export { run, format } => {
            let dir = RunDir::open(data_dir, &run)?;
            let events = read_warning_once(&dir)?;
            let steps = joined_steps(&events);
            match format {
                ExportFormat::Json => {
                    let rows: Vec<&EventKind> = steps.iter().map(|e| &e.kind).collect();
                    outln!("{}", serde_json::to_string_pretty(&rows)?)?;
                }
                ExportFormat::Csv => {
                    outln!("step,loss,lr,tokens,tokens_per_sec,grad_norm,clipped")?;
                    for e in steps {
                        if let EventKind::Step {
                            step,
                            loss,
                            lr,
                            tokens,
                            tokens_per_sec,
                            grad_norm,
                            clipped,
                            ..
                        } = &e.kind
                        {
                            outln!(
                                "{step},{loss},{lr},{tokens},{tokens_per_sec},{grad_norm},{clipped}"
                            )?;
                        }
                    }
                }
            }
            Ok(0)
        }
    }
}

/// A run's events, with one warning on stderr when lines of its log were skipped.
fn read_warning_once(dir: &RunDir) -> Result<Vec<crate::core::events::Event>> {
    let log = dir.read_event_log()?;
    if let Some(w) = log.warning() {
        errln!("warning: {w}");
    }
    Ok(log.events)
}

/// `runs rm`: the run is resolved under `<data>/runs/` only ([`RunDir::open`]); one with
/// checkpoints — hours of training — is removed only after a yes at the terminal or `--yes`.
fn remove(data_dir: &Path, run: &str, yes: bool) -> Result<i32> {
    use std::io::IsTerminal as _;
    let dir = RunDir::open(data_dir, run)?;
    if dir.state(&dir.read_events().unwrap_or_default()) == RunState::Running {
        bail!("run {} is running: stop or kill it first", dir.id);
    }
    // A job still waiting in Slurm's queue would start on a directory that is gone.
    if let Some(job) = crate::runner::slurm::job_of(&dir)
        .and_then(crate::runner::slurm::query_cached)
        .filter(|j| j.state.active())
    {
        bail!(
            "run {}'s Slurm job {} is {}: `slayer runs kill {}` cancels it first",
            dir.id,
            job.id,
            job.state,
            dir.id
        );
    }
    let checkpoints = crate::core::train::list_checkpoints(&dir.path.join("checkpoints"))?;
    if !checkpoints.is_empty() && !yes {
        let steps: Vec<String> = checkpoints.iter().map(|(s, _)| s.to_string()).collect();
        let what = format!(
            "run {} has {} checkpoint{} (step {})",
            dir.id,
            checkpoints.len(),
            if checkpoints.len() == 1 { "" } else { "s" },
            steps.join(", ")
        );
        if !std::io::stdin().is_terminal() {
            bail!("{what}: pass --yes to remove it");
        }
        err!("{what}. Remove it? [y/N] ");
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("cannot read the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            errln!("kept run {}", dir.id);
            return Ok(1);
        }
    }
    std::fs::remove_dir_all(&dir.path)
        .with_context(|| format!("cannot remove {}", dir.path.display()))?;
    errln!("removed run {}", dir.id);
    Ok(0)
}

fn signal(data_dir: &Path, run: &str, sig: nix::sys::signal::Signal, what: &str) -> Result<i32> {
    let reached = crate::launch::signal(data_dir, run, sig)?;
    errln!("run {} {what} ({reached})", RunDir::open(data_dir, run)?.id);
    Ok(0)
}

/// The supervisor of a background run: starts the worker, sleeps until it exits, records a worker
/// that died by a signal (no end record: `kill -9`, the OOM killer), and hands the device slot on.
/// It holds no model; while the worker trains it wakes twice a second to pass on a stop request.
fn supervise(data_dir: &Path, run: &str, device: DeviceChoice) -> Result<i32> {
    // A session of its own (it is not a group leader, so this succeeds): no controlling
    // terminal, so no hang-up reaches it or the worker it starts.
    nix::unistd::setsid().context("cannot start a session for the background run")?;
    let dir = RunDir::open(data_dir, run)?;
    let child = crate::launch::spawn_training(&dir, data_dir, device, false)?;
    let status = wait_for_worker(&dir, child, &|| {
        super::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
    })?;
    record_killed_worker(&dir, status)?;
    crate::runner::queue::advance(data_dir, &|r, d| {
        spawn_worker(r, data_dir, d).map_err(Into::into)
    })?;
    Ok(0)
}

/// Waits for a run's worker to exit, passing on a stop (`stop_asked`) as SIGTERM once: as soon
/// as the worker has recorded itself (it does so after its signal handler is in place, so the
/// stop checkpoints and ends the run instead of killing a process still starting up).
fn wait_for_worker(
    dir: &RunDir,
    mut child: std::process::Child,
    stop_asked: &dyn Fn() -> bool,
) -> Result<std::process::ExitStatus> {
    let child_pid = i32::try_from(child.id()).ok();
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the worker")? {
            return Ok(status);
        }
        let recorded = dir.worker().is_some_and(|w| Some(w.pid) == child_pid);
        if !forwarded
            && recorded
            && stop_asked()
            && let Some(pid) = child_pid
        {
            forwarded = true;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        // Quick while the worker starts (a stop may be waiting for it), then twice a second.
        std::thread::sleep(Duration::from_millis(if recorded { 500 } else { 50 }));
    }
}

/// Records a worker that died by a signal without an end record (`kill -9`, the OOM killer).
fn record_killed_worker(dir: &RunDir, status: std::process::ExitStatus) -> Result<()> {
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        let events = read_events(&dir.events_path()).unwrap_or_default();
        if !matches!(
            dir.state(&events),
            RunState::Finished | RunState::Failed | RunState::Stopped
        ) {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string());
            let mut log = crate::runner::EventLog::open(&dir.events_path())?;
            crate::core::events::EventSink::emit(
                &mut log,
                EventKind::Warning {
                    message: format!(
                        "the worker was killed by {name} without finishing; resume continues from the newest checkpoint"
                    ),
                },
            )?;
            crate::core::events::EventSink::sync(&mut log)?;
        }
    }
    Ok(())
}

/// A Slurm job's entry point. Its first act records that this node sees the run directory
/// (a job that cannot, fails here, and `runs ls` says why from the missing record). Then it
/// starts the worker and waits: SIGTERM (`runs stop`, `scancel`, a preemption) and the
/// time-limit warning (SIGUSR1, `--signal=B:USR1@…`) are passed on as SIGTERM, so the worker
/// checkpoints and stops; after the warning, unless a user asked the run to stop, the job
/// requeues itself and its next start resumes the run from that checkpoint.
fn slurm_job(data_dir: &Path, run: &str, device: DeviceChoice) -> Result<i32> {
    use crate::runner::slurm;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let job: u64 = std::env::var("SLURM_JOB_ID")
        .ok()
        .and_then(|v| v.parse().ok())
        .context("runs slurm-job runs inside a Slurm job (SLURM_JOB_ID is not set)")?;
    let node = std::env::var("SLURMD_NODENAME")
        .ok()
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "?".into());
    let dir = RunDir::open(data_dir, run).with_context(|| {
        format!(
            "Slurm job {job} on node {node} cannot reach run {run} under {}: the data directory              must be on a filesystem the nodes share",
            data_dir.display()
        )
    })?;
    slurm::record_started(&dir, job, &node)?;
    let warned = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&warned))
        .context("cannot listen for Slurm's time-limit warning")?;
    let child = crate::launch::spawn_training(&dir, data_dir, device, true)?;
    let status = wait_for_worker(&dir, child, &|| {
        warned.load(Ordering::Relaxed) || super::INTERRUPTED.load(Ordering::Relaxed)
    })?;
    record_killed_worker(&dir, status)?;
    let ended = crate::runner::RunProjection::of(&read_events(&dir.events_path())?).end;
    let done = ended.as_ref().is_some_and(|e| {
        matches!(
            e.status,
            crate::core::events::RunStatus::Finished | crate::core::events::RunStatus::Failed
        )
    });
    if warned.load(Ordering::Relaxed) && !done && !slurm::stop_requested(&dir) {
        // Said first: Slurm may end this process as soon as the job is requeued.
        let mut log = crate::runner::EventLog::open(&dir.events_path())?;
        crate::core::events::EventSink::emit(
            &mut log,
            EventKind::Warning {
                message: format!(
                    "Slurm job {job} reached its time limit: checkpointed and requeued; the run continues from its newest checkpoint when the job starts again"
                ),
            },
        )?;
        crate::core::events::EventSink::sync(&mut log)?;
        drop(log);
        slurm::requeue(job)?;
    }
    Ok(0)
}
