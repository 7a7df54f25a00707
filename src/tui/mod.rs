//! The console: a full-screen terminal front end over the same runs, experiments and models as
//! the CLI. One event stream feeds one update function ([`app::App::update`]); updates return
//! effects that run on blocking threads (never on tokio's async workers): jobs are library calls
//! ([`crate::jobs`], [`crate::launch`]) with typed results and a cancel flag. The run table, the
//! chats and the step history of the runs in view come from the store (`follow`), synced in
//! short holds so the CLI's store commands answer beside the console. Terminal input, events
//! from the blocking threads and a tick meet in one `select!` (`input`). The screen is drawn
//! at most once per frame and only when something changed, inside synchronized-output brackets.

pub mod app;
mod follow;
mod input;
pub mod keymap;
pub mod run_data;
pub mod theme;
pub mod view;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{event as cevent, execute, terminal};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::core::device::DeviceChoice;
use crate::launch::Launched;
use crate::runner::queue::Submitted;
use app::{App, ChatUpdate, Effect, Event, ExperimentItem, JobId, JobOutcome, RunRow, Work};
use nix::sys::signal::Signal;

/// Console options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plain glyphs instead of Braille in charts.
    pub plain: bool,
    /// Colours: 0 (none), 16, 256, or 24-bit (anything else); `None` detects.
    pub colors: Option<u32>,
    pub mouse: bool,
    /// The theme to start with.
    pub theme: Option<String>,
    /// Ring the terminal's bell at alerts.
    pub bell: bool,
}

/// Frames per second at most.
const MAX_FPS: u64 = 30;

/// The experiments in the data directory.
#[must_use]
pub fn load_experiments(data_dir: &Path) -> Vec<ExperimentItem> {
    crate::templates::user_experiments(data_dir)
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let table: toml::Table = toml::from_str(&text).unwrap_or_default();
            let get = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let problem = crate::core::experiment::Experiment::load(&path)
                .err()
                .map(|e| e.lines().take(3).collect::<Vec<_>>().join(" "));
            let name = get("name").unwrap_or(stem);
            let expanded = crate::layout::DataDir::at(data_dir).expanded().join(&name);
            ExperimentItem {
                expanded: expanded.join("config.json").is_file().then_some(expanded),
                name,
                description: get("description").unwrap_or_default(),
                base: table
                    .get("model")
                    .and_then(|m| m.get("base"))
                    .and_then(|b| b.as_str())
                    .unwrap_or_default()
                    .to_string(),
                path,
                text,
                problem,
            }
        })
        .collect()
}

/// The chat transcripts, oldest first (for lineage: which runs were chatted with).
#[must_use]
pub fn load_chats(data_dir: &Path) -> Vec<app::ChatSummary> {
    crate::runner::transcript::list_transcripts(data_dir)
        .iter()
        .filter_map(|p| crate::runner::transcript::Transcript::load(p).ok())
        .map(|t| app::ChatSummary {
            runs: t.runs(data_dir),
            models: t.models.iter().map(|m| m.label.clone()).collect(),
            turns: t.turns.len(),
            id: t.id,
        })
        .collect()
}

/// The run table, newest last.
#[must_use]
pub fn load_runs(data_dir: &Path) -> Vec<RunRow> {
    crate::runner::list_runs(data_dir)
        .iter()
        .map(crate::runner::summarize)
        .collect()
}

/// Restores the terminal (raw mode off, main screen, cursor shown).
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        cevent::DisableMouseCapture,
        terminal::LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

/// Opens the console on `data_dir`. Returns the exit code.
pub fn run(data_dir: &Path, options: &Options) -> Result<i32> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        crate::out::stderr(
            "slayer's console needs a terminal. Without one, use the commands: `slayer runs ls`, \
             `slayer train EXPERIMENT --detach`, `slayer runs tail RUN --follow`, `slayer chat \
             MODEL --prompt TEXT` (`slayer --help` lists them all).\n",
        );
        return Ok(2);
    }
    let depth = theme::ColorDepth::detect(options.colors);
    let (themes, theme_problems) = theme::load_all(data_dir, depth);
    let (keymap, keymap_problem) = keymap::Keymap::load(data_dir);
    let mut app = App::new(data_dir, themes, keymap, options.plain);
    app.now = now();
    app.bell = options.bell;
    if let Some(name) = &options.theme {
        // An unknown name is said before the screen is taken, not silently replaced.
        let Some(i) = app.themes.iter().position(|t| &t.name == name) else {
            let names: Vec<&str> = app.themes.iter().map(|t| t.name.as_str()).collect();
            crate::out::stderr(&format!(
                "error: --theme {name:?}: no such theme (themes: {}; more go in {})\n",
                names.join(", "),
                theme::user_dir(data_dir).display()
            ));
            return Ok(2);
        };
        app.theme = i;
    }
    // A file the console could not use stays said for two minutes (not gone at the first tick).
    if let Some(p) = keymap_problem.or_else(|| theme_problems.into_iter().next()) {
        app.say_for(false, p, 120.0);
    }
    app.experiments = load_experiments(data_dir);
    app.runs = load_runs(data_dir);
    let log_path = crate::layout::DataDir::at(data_dir)
        .logs()
        .join("slayer.log");
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        crate::out::stderr(&format!(
            "slayer's console crashed; the log is {}\n",
            log_path.display()
        ));
        default_hook(info);
    }));
    terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
    execute!(std::io::stdout(), terminal::EnterAlternateScreen)
        .context("cannot switch to the alternate screen")?;
    if options.mouse {
        let _ = execute!(std::io::stdout(), cevent::EnableMouseCapture);
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .context("cannot start the console's runtime")
        .and_then(|rt| rt.block_on(event_loop(app)));
    restore_terminal();
    result
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Commands to the chat thread.
enum ChatCommand {
    Load(Vec<String>),
    Send(String),
    Reset,
}

/// The chat worker: owns the loaded models and their sessions (whose KV caches carry over
/// between turns) on a thread of its own, streaming tokens back as events; `cancel` stops a
/// generation.
fn spawn_chat(
    data_dir: PathBuf,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
) -> std::sync::mpsc::Sender<ChatCommand> {
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<ChatCommand>();
    let _ = std::thread::Builder::new()
        .name("chat".into())
        .spawn(move || {
            let send = |u: ChatUpdate| {
                let _ = tx.send(Event::Chat(u));
            };
            let device = candle_core::Device::Cpu;
            let mut next: Option<Vec<String>> = None;
            loop {
                let specs = match next.take() {
                    Some(s) => s,
                    None => match cmd_rx.recv() {
                        Ok(ChatCommand::Load(s)) => s,
                        Ok(_) => continue,
                        Err(_) => return,
                    },
                };
                let mut models = Vec::new();
                for spec in &specs {
                    send(ChatUpdate::Loading(spec.clone()));
                    match load_chat_model(&data_dir, spec, &device) {
                        Ok(m) => models.push(m),
                        Err(e) => {
                            send(ChatUpdate::Error(format!("{spec}: {e:#}")));
                            models.clear();
                            break;
                        }
                    }
                }
                if models.is_empty() {
                    continue;
                }
                // Each model is named with its quantisation, so an answer says what produced it.
                send(ChatUpdate::Loaded(
                    models
                        .iter()
                        .map(|m| match m.quantization.quant {
                            crate::core::model::Quant::None => m.label.clone(),
                            q => format!("{} ({q})", m.label),
                        })
                        .collect(),
                ));
                match serve_chat(&data_dir, &models, &cmd_rx, &cancel, &send) {
                    Some(specs) => next = Some(specs),
                    None => return,
                }
            }
        });
    cmd_tx
}

/// Answers messages with `models` until asked to load others (returns their specs) or the
/// console is gone (`None`). Every turn is recorded in a transcript, as the CLI's chat does.
fn serve_chat(
    data_dir: &Path,
    models: &[crate::runner::model::LoadedModel],
    rx: &std::sync::mpsc::Receiver<ChatCommand>,
    cancel: &AtomicBool,
    send: &dyn Fn(ChatUpdate),
) -> Option<Vec<String>> {
    use crate::conversation::{Conversation, Progress, Taken};
    let sampling = crate::core::generate::SamplingParams {
        max_tokens: 256,
        ..crate::core::generate::SamplingParams::default()
    };
    let mut chat = match Conversation::new(data_dir, models, None, sampling) {
        Ok(chat) => chat,
        Err(e) => {
            send(ChatUpdate::Error(format!("{e:#}")));
            return rx.recv().ok().map(|c| match c {
                ChatCommand::Load(s) => s,
                _ => Vec::new(),
            });
        }
    };
    send(ChatUpdate::Settings(chat.sampling().describe()));
    while let Ok(cmd) = rx.recv() {
        let line = match cmd {
            ChatCommand::Load(specs) => return Some(specs),
            ChatCommand::Reset => "/reset".to_string(),
            ChatCommand::Send(text) => text,
        };
        let message = match chat.take(&line) {
            Taken::Message(message) => message,
            Taken::Done(_) => {
                send(ChatUpdate::Settings(chat.sampling().describe()));
                continue;
            }
            Taken::Problem(problem) => {
                send(ChatUpdate::Error(problem));
                continue;
            }
            // The console has its own help and quit keys.
            Taken::Help | Taken::Quit => continue,
        };
        cancel.store(false, Ordering::SeqCst);
        let saved = chat.answer(&message, cancel, &mut |progress| match progress {
            Progress::Started { .. } => {}
            Progress::Text { model, text } => send(ChatUpdate::Token {
                model,
                text: text.to_string(),
            }),
            Progress::Finished { model, stats } => send(ChatUpdate::Done {
                model,
                tokens: stats.generated_tokens,
                tokens_per_sec: stats.decode_tokens_per_sec(),
                stopped: stats.stop == crate::core::generate::StopReason::Cancelled,
            }),
            Progress::Failed { error, .. } => send(ChatUpdate::Error(error)),
        });
        if let Some(Err(e)) = saved {
            send(ChatUpdate::Error(format!(
                "the transcript was not saved: {e:#}"
            )));
        }
    }
    None
}

/// A chat model by spec: a run id (its newest checkpoint), `RUN@STEP`, or a model name/path,
/// quantised as the CLI's chat quantises by default on the device.
fn load_chat_model(
    data_dir: &Path,
    spec: &str,
    device: &candle_core::Device,
) -> Result<crate::runner::model::LoadedModel> {
    let dtype = candle_core::DType::F32;
    let quant = crate::core::model::Quant::default_for(device);
    if let Some((run, step)) = crate::runner::model::run_spec(data_dir, spec)? {
        return Ok(crate::runner::model::load_run(data_dir, &run, step, dtype, device, quant)?.0);
    }
    let path = crate::fetch::resolve_model_path(data_dir, spec);
    if !path.exists() {
        anyhow::bail!("no run or model named {spec} (fetch models with `slayer model fetch`)");
    }
    Ok(crate::runner::model::load_path(
        &path, spec, dtype, device, quant,
    )?)
}

/// Carries out job `id` off the async workers; its end comes back as [`Event::JobDone`] (or
/// [`Event::Importance`]), always exactly once.
fn execute_job(data_dir: &Path, id: JobId, work: Work, tx: &UnboundedSender<Event>) {
    let done = |(ok, message): (bool, String)| {
        let _ = tx.send(Event::JobDone { id, ok, message });
    };
    let outcome = |outcome: JobOutcome| {
        let _ = tx.send(Event::JobOutcome { id, outcome });
    };
    match work {
        // Runs through the launch API, as the CLI and studies launch them: the worker is the
        // only process started.
        Work::LaunchRun(path, backend) => done(
            match crate::launch::launch(
                data_dir,
                &path,
                None,
                DeviceChoice::Auto,
                &locate_quietly,
                &backend,
            ) {
                Ok(l) if l.submitted == Submitted::Started => {
                    (true, format!("run {} started", l.run.id))
                }
                Ok(Launched {
                    run,
                    submitted: Submitted::SlurmJob(job),
                    ..
                }) => (
                    true,
                    format!("run {} submitted to Slurm as job {job}", run.id),
                ),
                Ok(l) => (
                    true,
                    format!("run {} queued for the device's slot", l.run.id),
                ),
                Err(e) => (false, format!("{e:#}")),
            },
        ),
        Work::StopRun(run) => done(signal_run(data_dir, &run, Signal::SIGTERM, "asked to stop")),
        Work::KillRun(run) => done(signal_run(data_dir, &run, Signal::SIGKILL, "killed")),
        Work::ResumeRun(run) => done(
            match crate::launch::resume(data_dir, &run, DeviceChoice::Auto, None) {
                Ok(l) if l.submitted == Submitted::Started => {
                    (true, format!("run {} resumed", l.run.id))
                }
                Ok(Launched {
                    run,
                    submitted: Submitted::SlurmJob(job),
                    ..
                }) => (true, format!("run {} resumed as Slurm job {job}", run.id)),
                Ok(l) => (true, format!("run {} queued to resume", l.run.id)),
                Err(e) => (false, format!("{e:#}")),
            },
        ),
        Work::SaveFile { path, text } => {
            done(
                match crate::core::atomic::replace_file(&path, text.as_bytes()) {
                    Ok(()) => (true, format!("saved {}", path.display())),
                    Err(e) => (false, format!("cannot save {}: {e:#}", path.display())),
                },
            );
        }
        Work::CreateExperiment { name, template } => {
            match crate::templates::create_experiment(data_dir, &name, &template) {
                Ok(p) => done((true, format!("created {}", p.display()))),
                Err(e) => done((false, format!("{e:#}"))),
            }
            let _ = tx.send(Event::Experiments(load_experiments(data_dir)));
        }
        Work::DuplicateExperiment { from, name } => {
            let dest = crate::templates::experiments_dir(data_dir).join(format!("{name}.toml"));
            let r = std::fs::read_to_string(&from)
                .map_err(anyhow::Error::from)
                .and_then(|text| {
                    let text = crate::templates::with_name(&text, &name);
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&dest)?;
                    f.write_all(text.as_bytes())?;
                    Ok(())
                });
            match r {
                Ok(()) => done((true, format!("created {}", dest.display()))),
                Err(e) => done((false, format!("cannot create {}: {e}", dest.display()))),
            }
            let _ = tx.send(Event::Experiments(load_experiments(data_dir)));
        }
        Work::DeleteExperiment(path) => {
            done(match std::fs::remove_file(&path) {
                Ok(()) => (true, format!("deleted {}", path.display())),
                Err(e) => (false, format!("cannot delete {}: {e}", path.display())),
            });
            let _ = tx.send(Event::Experiments(load_experiments(data_dir)));
        }
        Work::ExportRun { run, out } => {
            let cancel = started_on_thread(id, tx);
            done(
                match crate::runner::RunDir::open(data_dir, &run)
                    .map_err(anyhow::Error::from)
                    .and_then(|dir| {
                        crate::jobs::export_run(data_dir, &dir, &out, None, true, &cancel.0)
                    }) {
                    Ok(e) => (
                        true,
                        format!("exported {run} at step {} to {}", e.step, out.display()),
                    ),
                    Err(e) => (false, format!("exporting {run}: {e:#}")),
                },
            );
        }
        Work::Expand {
            experiment,
            path,
            out,
        } => {
            let cancel = started_on_thread(id, tx);
            let request = crate::jobs::ExpandRequest {
                out,
                verify: true,
                sample: None,
                dtype: None,
                force: true,
            };
            // A failed verification is a result too: the popup says what it found.
            let result = crate::jobs::load_plan(&path, None, data_dir, &locate_quietly)
                .and_then(|loaded| crate::jobs::expand(&loaded, &request, &cancel.0, |_, _| {}));
            match result {
                Ok(summary) => outcome(JobOutcome::Expanded {
                    experiment,
                    summary,
                }),
                Err(why) => done((false, format!("expand {experiment}: {why:#}"))),
            }
            let _ = tx.send(Event::Experiments(load_experiments(data_dir)));
        }
        Work::PreviewData { experiment, path } => {
            match crate::jobs::preview_data(data_dir, &path, 4, &locate_quietly) {
                Ok(preview) => outcome(JobOutcome::Previewed {
                    experiment,
                    preview,
                }),
                Err(why) => done((false, format!("{experiment}'s data: {why:#}"))),
            }
        }
        Work::EvaluateRun(run) => {
            let cancel = started_on_thread(id, tx);
            let result = crate::runner::RunDir::open(data_dir, &run)
                .map_err(anyhow::Error::from)
                .and_then(|dir| {
                    let device = candle_core::Device::Cpu;
                    let quant = crate::core::model::Quant::default_for(&device);
                    crate::jobs::evaluate_run(data_dir, &dir, None, &device, quant, &cancel.0)
                });
            match result {
                Ok(done) => outcome(JobOutcome::Evaluated {
                    run,
                    record: done.record,
                }),
                Err(why) => done((false, format!("evaluating {run}: {why:#}"))),
            }
        }
        Work::Importance { name, path, base } => {
            match importance(data_dir, &name, &path, &base, id, tx) {
                Ok(view) => {
                    let _ = tx.send(Event::Importance { id, view });
                }
                Err(e) => done((false, format!("importance of {name}: {e:#}"))),
            }
        }
        Work::PlanFromSuggestion {
            from,
            suggestion,
            name,
        } => {
            match plan_from_suggestion(data_dir, &from, &suggestion, &name) {
                Ok(p) => done((
                    true,
                    format!("created {} from the importance suggestion", p.display()),
                )),
                Err(e) => done((false, format!("{e:#}"))),
            }
            let _ = tx.send(Event::Experiments(load_experiments(data_dir)));
        }
    }
}

/// Registers job `id` as running on this thread: the flag it checks, which `C` sets.
fn started_on_thread(id: JobId, tx: &UnboundedSender<Event>) -> app::CancelFlag {
    let flag = app::CancelFlag::default();
    let _ = tx.send(Event::JobStarted {
        id,
        cancel: flag.clone(),
    });
    flag
}

/// Signals a run's worker (a job's message says what became of it).
fn signal_run(data_dir: &Path, run: &str, signal: Signal, what: &str) -> (bool, String) {
    match crate::launch::signal(data_dir, run, signal) {
        Ok(reached) => (true, format!("run {run} {what} ({reached})")),
        Err(e) => (false, format!("{e:#}")),
    }
}

/// Finds an experiment's base model for a launch from the console: a known model not fetched
/// yet is fetched without a progress bar (the console owns the terminal).
fn locate_quietly(data_dir: &Path, name: &str) -> Result<PathBuf> {
    crate::fetch::locate_model(data_dir, name, |known| {
        Ok(crate::fetch::fetch(
            data_dir,
            known,
            None,
            false,
            None,
            |_| {},
            |_, _| {},
        )?)
    })
}

/// Reads study `name` off the async workers; the result comes back as an event.
fn load_study_event(data_dir: &Path, name: &str, open: bool, tx: &UnboundedSender<Event>) {
    let event = match load_study(data_dir, name) {
        Ok(view) => Event::Study { view, open },
        Err(e) => Event::Status(false, format!("study {name}: {e:#}")),
    };
    let _ = tx.send(event);
}

/// Measures block importance of an experiment's base model with `slayer importance` (a job):
/// the fast metrics (block influence, angular distance) on 16 windows of 128 tokens of the
/// experiment's training text (or the built-in general prose), with a suggested plan of 4 new
/// blocks; returns the scores.
fn importance(
    data_dir: &Path,
    name: &str,
    path: &Path,
    base: &str,
    id: JobId,
    tx: &UnboundedSender<Event>,
) -> Result<app::ImportanceView> {
    let dir = crate::layout::DataDir::at(data_dir).importance();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let corpus = crate::core::experiment::Experiment::load(path)
        .ok()
        .and_then(|e| e.data.train.first().cloned())
        .filter(|p| p.is_file());
    let corpus = if let Some(c) = corpus {
        c
    } else {
        let general = dir.join("general.txt");
        std::fs::write(&general, crate::core::synth::GENERAL_TEXT.repeat(4))
            .with_context(|| format!("cannot write {}", general.display()))?;
        general
    };
    let report_path = dir.join(format!("{name}.json"));
    let suggestion = dir.join(format!("{name}-suggested.toml"));
    let cancel = started_on_thread(id, tx);
    let metric_list = [
        crate::core::importance::Metric::Bi,
        crate::core::importance::Metric::Angular,
    ];
    let request = crate::jobs::ImportanceRequest {
        model: base.to_string(),
        corpus,
        metrics: metric_list.to_vec(),
        samples: 16,
        seq_len: 128,
    };
    let report = crate::jobs::measure_importance(
        data_dir,
        &request,
        &candle_core::Device::Cpu,
        &locate_quietly,
        &cancel.0,
        |_, _| {},
    )?
    .report;
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    // The suggested plan: 4 new blocks where block influence is lowest in the shallow half.
    let scores = report
        .scores(metric_list[0])
        .context("block influence was not computed")?;
    let (insert, prune) = crate::core::importance::suggest(scores, 4, 0);
    let toml = crate::core::importance::suggestion_toml(base, metric_list[0], &insert, &prune);
    std::fs::write(&suggestion, &toml)
        .with_context(|| format!("cannot write {}", suggestion.display()))?;
    let metrics = report
        .metrics
        .iter()
        .map(|m| (m.metric.name().to_string(), m.scores.clone()))
        .collect();
    Ok(app::ImportanceView {
        experiment: name.to_string(),
        experiment_path: path.to_path_buf(),
        metrics,
        suggestion,
    })
}

/// A new experiment `name`: `from`'s text with its `[plan]` replaced by the suggestion's.
/// A study saved by `study run` in the data directory, with every cell's result so far.
pub fn load_study(data_dir: &Path, name: &str) -> anyhow::Result<app::StudyView> {
    let study = crate::study::Study::load_saved(data_dir, name)?;
    let results = crate::study::results(&study, data_dir);
    let cells = crate::study::load_cells(&study.dir(data_dir));
    let runs = study
        .cells()
        .into_iter()
        .filter_map(|c| cells.get(&c.key()).cloned().map(|id| (c, id)))
        .collect();
    Ok(app::StudyView {
        tables: study
            .corpora
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    crate::study::comparison(&study, &c.name, &results),
                )
            })
            .collect(),
        strategies: study.strategies.iter().map(|s| s.name.clone()).collect(),
        cells: study.cells().len(),
        runs,
        description: study.description,
        name: study.name,
    })
}

fn plan_from_suggestion(
    data_dir: &Path,
    from: &Path,
    suggestion: &Path,
    name: &str,
) -> Result<PathBuf> {
    // toml_edit: the experiment keeps its comments and key order; only `[plan]` is replaced.
    let read = |p: &Path| -> Result<toml_edit::DocumentMut> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        text.parse()
            .with_context(|| format!("{} does not parse", p.display()))
    };
    let mut exp = read(from)?;
    let suggested = read(suggestion)?;
    if let Some(plan) = suggested.get("plan") {
        exp["plan"] = plan.clone();
    }
    exp["name"] = toml_edit::value(name);
    let dest = crate::templates::experiments_dir(data_dir).join(format!("{name}.toml"));
    let text = exp.to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(dest)
}

/// Clears the screen and makes the next frame repaint every cell. (`Terminal::clear` would ask
/// the terminal for the cursor position: a round trip that can time out over a slow link.)
fn full_repaint<B: ratatui::backend::Backend>(terminal: &mut Terminal<B>) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let size = terminal.size()?;
    terminal.resize(ratatui::layout::Rect::new(0, 0, size.width, size.height))?;
    Ok(())
}

/// Carries out what [`App::update`] asks for: the chat thread's commands, jobs on blocking
/// threads, repaints and the quit.
struct EffectRunner {
    chat: std::sync::mpsc::Sender<ChatCommand>,
    cancel_chat: Arc<AtomicBool>,
    tx: UnboundedSender<Event>,
    /// Set by a quit: whether running runs are to be stopped.
    stop_runs: Option<bool>,
}

impl EffectRunner {
    /// Updates `app` with `event` and carries out every effect the update returns.
    fn handle<B: ratatui::backend::Backend>(
        &mut self,
        app: &mut App,
        event: Event,
        terminal: &mut Terminal<B>,
    ) -> Result<()>
    where
        B::Error: Send + Sync + 'static,
    {
        let by_tick = matches!(event, Event::Tick);
        if by_tick {
            app.now = now();
        }
        for effect in app.update(event) {
            match effect {
                Effect::Quit { stop_runs } => self.stop_runs = Some(stop_runs),
                Effect::Redraw => full_repaint(terminal)?,
                Effect::Bell => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(b"\x07").and_then(|()| out.flush());
                }
                Effect::ChatLoad(specs) => {
                    let _ = self.chat.send(ChatCommand::Load(specs));
                }
                Effect::ChatSend(text) => {
                    let _ = self.chat.send(ChatCommand::Send(text));
                }
                Effect::ChatReset => {
                    let _ = self.chat.send(ChatCommand::Reset);
                }
                Effect::ChatCancel => self.cancel_chat.store(true, Ordering::SeqCst),
                Effect::CancelJob { cancel, .. } => cancel.0.store(true, Ordering::SeqCst),
                Effect::Job { id, work } => {
                    let (dir, tx) = (app.data_dir.clone(), self.tx.clone());
                    tokio::task::spawn_blocking(move || execute_job(&dir, id, work, &tx));
                }
                Effect::LoadCompare => {
                    let (dir, tx) = (app.data_dir.clone(), self.tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = tx.send(Event::Compare(crate::runner::compare::rows(&dir)));
                    });
                }
                Effect::LoadStudy { name, open } => {
                    let (dir, tx) = (app.data_dir.clone(), self.tx.clone());
                    tokio::task::spawn_blocking(move || load_study_event(&dir, &name, open, &tx));
                }
            }
        }
        Ok(())
    }
}

/// An event that is already waiting, terminal input first; `None` when none is.
async fn next_pending(
    input: &mut input::TerminalInput,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Option<Event> {
    match input.pending().await {
        Some(event) => Some(event),
        None => rx.try_recv().ok(),
    }
}

async fn event_loop(mut app: App) -> Result<i32> {
    let (tx, mut rx) = unbounded_channel::<Event>();
    let stop = Arc::new(AtomicBool::new(false));
    let cancel_chat = Arc::new(AtomicBool::new(false));
    let mut input = input::TerminalInput::new(Arc::clone(&stop));
    let viewed = follow::Viewed::default();
    follow::spawn_follower(
        app.data_dir.clone(),
        tx.clone(),
        Arc::clone(&stop),
        Arc::clone(&viewed),
    );
    let chat = spawn_chat(app.data_dir.clone(), tx.clone(), Arc::clone(&cancel_chat));
    // One second's tick: the status line's expiry and the liveness of runs. A hang-up or
    // termination signal ends the console on the next one even when the input thread is stuck
    // in the terminal library (which spins on a closed terminal).
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticked = || {
        if crate::interrupt::INTERRUPTED.load(Ordering::Relaxed) {
            Event::TerminalGone("hang-up or termination signal".into())
        } else {
            Event::Tick
        }
    };
    let backend = CrosstermBackend::new(std::io::stdout());
    let mut terminal = Terminal::new(backend).context("cannot start drawing")?;
    full_repaint(&mut terminal)?;
    let frame = Duration::from_millis(1000 / MAX_FPS);
    let mut last_draw = Instant::now()
        .checked_sub(frame)
        .unwrap_or_else(Instant::now);
    let mut effects = EffectRunner {
        chat,
        cancel_chat: Arc::clone(&cancel_chat),
        tx: tx.clone(),
        stop_runs: None,
    };
    loop {
        // One wait over everything that can wake the console: terminal input (and its
        // hang-up), events from the blocking threads (run logs, job progress and results, chat
        // tokens) and the tick.
        let first = tokio::select! {
            event = input.next() => event,
            event = rx.recv() => match event {
                Some(event) => event,
                None => break,
            },
            _ = tick.tick() => ticked(),
        };
        // Drain everything pending, then draw once.
        effects.handle(&mut app, first, &mut terminal)?;
        while let Some(e) = next_pending(&mut input, &mut rx).await {
            effects.handle(&mut app, e, &mut terminal)?;
        }
        if effects.stop_runs.is_some() {
            break;
        }
        // The runs in view changed: the follow thread reads their history, the rest is let go.
        let in_view = app.viewed_runs();
        if let Ok(mut shared) = viewed.lock()
            && *shared != in_view
        {
            app.keep_series_of(&in_view);
            *shared = in_view;
        }
        if app.dirty {
            let wait = frame.saturating_sub(last_draw.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                // What arrived while waiting for the frame is handled like the rest: every
                // effect carried out (a save, a chat message), not only a quit.
                while let Some(e) = next_pending(&mut input, &mut rx).await {
                    effects.handle(&mut app, e, &mut terminal)?;
                }
                if effects.stop_runs.is_some() {
                    break;
                }
            }
            let started = Instant::now();
            execute!(std::io::stdout(), terminal::BeginSynchronizedUpdate)?;
            terminal.draw(|f| f.render_widget(&app, f.area()))?;
            execute!(std::io::stdout(), terminal::EndSynchronizedUpdate)?;
            // `SLAYER_LOG=slayer::frame=debug` records every frame's drawing time (bench/console_pty.py).
            tracing::debug!(target: "slayer::frame", micros = started.elapsed().as_micros() as u64, "frame");
            app.dirty = false;
            last_draw = Instant::now();
        }
    }
    let stop_runs = effects.stop_runs;
    stop.store(true, Ordering::Relaxed);
    cancel_chat.store(true, Ordering::SeqCst);
    // Jobs belong to the console (runs do not): ask them to stop cleanly.
    for cancel in app.jobs.iter().filter_map(|j| j.cancel.as_ref()) {
        cancel.0.store(true, Ordering::SeqCst);
    }
    if stop_runs == Some(true) {
        for r in app
            .runs
            .iter()
            .filter(|r| r.status == crate::runner::RunState::Running)
        {
            execute_job(&app.data_dir, JobId(0), Work::StopRun(r.id.clone()), &tx);
        }
    }
    Ok(0)
}
