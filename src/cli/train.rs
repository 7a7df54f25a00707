//! `slayer train EXPERIMENT [--resume RUN]`, `slayer export RUN --out DIR`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::DType;
use clap::Args;

use super::INTERRUPTED;
use super::model::{parse_dtype, resolve_or_fetch};
use crate::core::device::{self, DeviceChoice};
use crate::core::events::{EvalRecord, EventKind, EventSink, RunStatus};
use crate::core::experiment::Experiment;
use crate::core::run::{self, RunPaths};
use crate::core::train;
use crate::launch::{anchored_text, spawn_worker, write_plan};
use crate::runner::{EventLog, RunDir};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Experiment file (ignored with --resume, which uses the run's own copy).
    pub experiment: Option<PathBuf>,
    /// Base model (overrides the experiment's [model] base).
    #[arg(long)]
    pub model: Option<String>,
    /// Continue a run from its newest checkpoint.
    #[arg(long)]
    pub resume: Option<String>,
    /// Print a progress line every N steps.
    #[arg(long, default_value_t = 1)]
    pub print_every: u64,
    /// Run in the background, in a session of its own: closing the terminal or the SSH
    /// connection does not touch it. Output goes to the run's `log`. Waits in the queue while
    /// the device's slot is taken (one run per device).
    #[arg(long)]
    pub detach: bool,
    /// Internal: this process is a detached worker.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Internal: this worker runs in a Slurm job, on a node whose local queue is not this
    /// run's to advance.
    #[arg(long, hide = true)]
    pub in_slurm_job: bool,
    #[command(flatten)]
    pub backend: super::backend::BackendArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run id or directory.
    pub run: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight dtype of the output (default: the run's model's).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
    /// Replace the output directory if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Prints a readable line per step to stderr while passing every event on, and remembers the
/// last step reached (a failure is recorded at it).
struct ConsoleSink<'a> {
    inner: &'a mut EventLog,
    every: u64,
    total: u64,
    last_step: u64,
}

impl EventSink for ConsoleSink<'_> {
    fn emit(&mut self, kind: EventKind) -> crate::core::Result<()> {
        match &kind {
            EventKind::Step { step, .. } | EventKind::SkippedStep { step, .. } => {
                self.last_step = *step;
            }
            _ => {}
        }
        match &kind {
            EventKind::Step {
                step,
                loss,
                lr,
                tokens_per_sec,
                grad_norm,
                clipped,
                ..
            } if step % self.every.max(1) == 0 || *step == self.total => {
                errln!(
                    "step {step:>6}/{}  loss {loss:.4}  lr {lr:.2e}  grad {grad_norm:.3}{}  {tokens_per_sec:.0} tok/s",
                    self.total,
                    if *clipped { " (clipped)" } else { "" }
                );
            }
            EventKind::SkippedStep { step, reason } => errln!("step {step}: skipped: {reason}"),
            EventKind::Checkpoint { step, path } => errln!("checkpoint at step {step}: {path}"),
            EventKind::Eval(r) => errln!("{}", crate::runner::describe::eval_line(r)),
            EventKind::Warning { message } => errln!("warning: {message}"),
            _ => {}
        }
        self.inner.emit(kind)
    }

    fn sync(&mut self) -> crate::core::Result<()> {
        self.inner.sync()
    }
}

/// The experiment's `[train] threads`, read before anything starts (see `crate::threads`):
/// the run's own experiment for `--resume`, else the experiment file or name given. Whatever is
/// wrong with them is said later, by the real reading.
#[must_use]
pub fn threads_wanted(args: &TrainArgs, data_dir: &Path) -> Option<std::num::NonZeroUsize> {
    let path = match (&args.resume, &args.experiment) {
        (Some(id), _) => RunDir::open(data_dir, id).ok()?.experiment_path(),
        (None, Some(arg)) => crate::templates::find_experiment(data_dir, arg).ok()?,
        (None, None) => return None,
    };
    Experiment::load(&path).ok()?.train.thread_count()
}

pub fn run(args: &TrainArgs, data_dir: &Path, device_choice: DeviceChoice) -> Result<i32> {
    if args.worker {
        // A session of its own: no controlling terminal, so no hang-up reaches it.
        let _ = nix::unistd::setsid();
    }
    let backend = args.backend.backend()?;
    if args.resume.is_some() && backend.is_some() {
        bail!("to resume a run elsewhere use `slayer runs resume RUN --on local|slurm`");
    }
    if (args.detach || backend.is_some()) && args.resume.is_none() {
        let arg = args
            .experiment
            .as_ref()
            .context("give an experiment (a file, a name, or a template), or --resume RUN")?;
        let path = crate::templates::resolve_experiment(data_dir, arg)?;
        if crate::threads::in_use().source == crate::core::threads::ThreadSource::Flag {
            errln!(
                "note: --threads does not reach a background run; it takes [train] threads from \
                 its experiment, else the CPUs it may use"
            );
        }
        // The plan is checked here, where the user sees the answer, not in the worker.
        let launched = crate::launch::launch(
            data_dir,
            &path,
            args.model.as_deref(),
            device_choice,
            &resolve_or_fetch,
            &backend.unwrap_or_default(),
        )?;
        for w in &launched.warnings {
            errln!("{w}");
        }
        let id = &launched.run.id;
        outln!("{id}")?;
        match launched.submitted {
            crate::runner::queue::Submitted::Started => errln!(
                "run {id} started in the background; follow it with: slayer runs tail {id} --follow"
            ),
            crate::runner::queue::Submitted::Queued => errln!(
                "run {id} is queued: it starts when a {} slot frees up",
                device_choice
            ),
            crate::runner::queue::Submitted::SlurmJob(job) => errln!(
                "run {id} submitted to Slurm as job {job}; follow it with: slayer runs tail {id} --follow"
            ),
        }
        return Ok(0);
    }
    let (run_dir, exp, resume) = if let Some(id) = &args.resume {
        let run_dir = RunDir::open(data_dir, id)?;
        let exp = Experiment::load(&run_dir.experiment_path()).map_err(anyhow::Error::msg)?;
        (run_dir, exp, true)
    } else {
        let arg = args
            .experiment
            .as_ref()
            .context("give an experiment (a file, a name, or a template), or --resume RUN")?;
        let path = crate::templates::resolve_experiment(data_dir, arg)?;
        let exp = Experiment::load(&path).map_err(anyhow::Error::msg)?;
        let run_dir = RunDir::create(data_dir, &exp.name)?;
        // Relative paths in the copy must still reach the files: anchor them now.
        std::fs::write(
            run_dir.experiment_path(),
            anchored_text(&exp, args.model.as_deref()),
        )
        .with_context(|| format!("cannot write {}", run_dir.experiment_path().display()))?;
        (run_dir, exp, false)
    };
    if let Some(w) = run_dir.worker()
        && w.alive()
        && Some(w) != crate::runner::Worker::current()
        // The queue records a background run's supervisor until the worker it starts takes over.
        && !(args.worker && w.pid == nix::unistd::getppid().as_raw())
    {
        bail!("run {} is already running (pid {})", run_dir.id, w.pid);
    }
    run_dir.claim_worker()?;
    let mut log = EventLog::open(&run_dir.events_path())?;
    // Where the run stands before this worker trains: a failure is recorded at the step reached.
    let reached = crate::runner::joined_steps(&run_dir.read_events()?)
        .last()
        .map_or(0, |e| match e.kind {
            EventKind::Step { step, .. } => step,
            _ => 0,
        });
    let mut sink = ConsoleSink {
        inner: &mut log,
        every: args.print_every,
        total: 0,
        last_step: reached,
    };
    let result = train_claimed(
        args,
        data_dir,
        device_choice,
        &run_dir,
        &exp,
        resume,
        &mut sink,
    );
    if let Err(e) = &result {
        // Whatever stopped this worker is said in the run's own log, at the step it reached, so
        // the run shows why it ended (a worker's stderr is only in the run's `log` file).
        let interrupted = crate::interrupt::caused(e);
        let _ = sink.inner.emit(EventKind::End {
            status: if interrupted {
                RunStatus::Stopped
            } else {
                RunStatus::Failed
            },
            step: sink.last_step,
            message: format!("{e:#}"),
        });
        let _ = sink.inner.sync();
    }
    if args.worker && !args.in_slurm_job {
        // Hand the slot to the next queued run, whatever the outcome of this one (its end is
        // recorded first).
        let _ = crate::runner::queue::advance(data_dir, &|r, d| {
            spawn_worker(r, data_dir, d).map_err(Into::into)
        });
    }
    let summary = result.with_context(|| format!("run {} failed", run_dir.id))?;
    outln!("{}", run::summary_table(&summary.evals))?;
    match summary.status {
        RunStatus::Stopped => errln!(
            "stopped; continue with: slayer train --resume {}",
            run_dir.id
        ),
        _ => errln!("run {} finished: {}", run_dir.id, run_dir.path.display()),
    }
    Ok(0)
}

/// The run, once this process is its recorded worker: everything from opening the device to the
/// end of training, reported through `sink`.
fn train_claimed(
    args: &TrainArgs,
    data_dir: &Path,
    device_choice: DeviceChoice,
    run_dir: &RunDir,
    exp: &Experiment,
    resume: bool,
    sink: &mut ConsoleSink<'_>,
) -> Result<run::Summary> {
    let device = device::open(device_choice)?;
    let crate::launch::Resolved {
        base_arg,
        base,
        map,
        warnings,
    } = crate::launch::resolve(exp, args.model.as_deref(), data_dir, &resolve_or_fetch)?;
    for w in &warnings {
        errln!("{w}");
    }
    write_plan(run_dir, &map)?;
    let resume = if resume {
        let point = train::newest_intact_checkpoint(&run_dir.path.join("checkpoints"))?;
        Some((point, earlier_evals(run_dir)?))
    } else {
        None
    };
    let trainable = map.layers.iter().filter(|l| l.trainable).count() as u64
        * base.config().block_params() as u64;
    sink.total = exp.train.steps;
    sink.emit(EventKind::RunStart {
        format: crate::core::events::EVENT_FORMAT,
        run: run_dir.id.clone(),
        experiment: exp.text.clone(),
        plan: Some(map.clone()),
        config: Some(Box::new(crate::core::events::RunConfig {
            base_model: base_arg,
            train: exp.train.clone(),
            device: format!("{device:?}"),
        })),
        trainable_params: trainable,
        total_steps: exp.train.steps,
        resumed_from: resume
            .as_ref()
            .and_then(|(p, _)| p.checkpoint.as_ref().map(|c| c.0)),
        environment: Some(crate::threads::environment()),
    })?;
    let resume = match resume {
        Some((point, earlier_evals)) => {
            for message in &point.damaged {
                sink.emit(EventKind::Warning {
                    message: format!("{message}; resuming from the newest intact checkpoint"),
                })?;
            }
            if point.checkpoint.is_none() && !point.damaged.is_empty() {
                sink.emit(EventKind::Warning {
                    message: "no intact checkpoint is left: training starts again from step 0"
                        .into(),
                })?;
            }
            sink.last_step = point.checkpoint.as_ref().map_or(0, |c| c.0);
            Some(run::Resume {
                checkpoint: point.checkpoint.map(|c| c.1),
                earlier_evals,
            })
        }
        None => None,
    };
    errln!("run {} in {}", run_dir.id, run_dir.path.display());
    let paths = RunPaths::new(
        &run_dir.path,
        Some(crate::layout::DataDir::at(data_dir).token_cache()),
    );
    Ok(run::execute(
        exp,
        base.as_ref(),
        &map,
        &paths,
        &device,
        sink,
        &INTERRUPTED,
        resume,
        &mut |m| errln!("{m}"),
    )?)
}

/// The evaluations a run recorded before it is resumed.
fn earlier_evals(run_dir: &RunDir) -> Result<Vec<EvalRecord>> {
    Ok(run_dir
        .read_events()?
        .into_iter()
        .filter_map(|e| {
            if let EventKind::Eval(r) = e.kind {
                Some(r)
            } else {
                None
            }
        })
        .collect())
}

pub fn export(args: &ExportArgs, data_dir: &Path) -> Result<i32> {
    let run_dir = RunDir::open(data_dir, &args.run)?;
    let exported = crate::jobs::export_run(
        data_dir,
        &run_dir,
        &args.out,
        args.dtype,
        args.force,
        &INTERRUPTED,
    )?;
    for w in &exported.warnings {
        errln!("warning: {w}");
    }
    errln!(
        "exported run {} at step {} to {}",
        run_dir.id,
        exported.step,
        args.out.display()
    );
    Ok(0)
}
