//! The console's state and its one update function: every input becomes an [`Event`], keys
//! become [`Action`]s through the keymap, and updates return [`Effect`]s for the runtime to carry
//! out (processes, files, models). Nothing here blocks or touches the terminal; rendering reads
//! this state (see `view`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui_textarea::TextArea;

use super::keymap::{Action, Context, Key, Keymap};
use super::run_data::{RunData, RunSeries};
use super::theme::Theme;
use crate::core::config::LlamaConfig;
use crate::core::plan::{self, LayerMap, Severity, totals::Totals};
use crate::runner::RunState;
use crate::runner::alerts::{Alert, Severity as AlertSeverity};
use crate::runner::tail::Update;

/// How long a status message stays: a success, a problem (seconds).
const STATUS_OK_SECS: f64 = 10.0;
const STATUS_PROBLEM_SECS: f64 = 30.0;

/// The screens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Experiments,
    Editor,
    Runs,
    Monitor,
    Chat,
    Study,
    Compare,
}

/// The runs comparison table as the compare screen shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompareView {
    /// Every run, as last read; the screen shows those matching `filter`, sorted.
    pub rows: Vec<crate::runner::compare::CompareRow>,
    /// The highlighted column (an index into [`crate::runner::compare::columns`]).
    pub column: usize,
    /// Sorted by (column name, descending).
    pub sort: Option<(String, bool)>,
    pub filter: String,
    pub selected: usize,
    /// The run marked for a diff.
    pub marked: Option<String>,
}

impl CompareView {
    /// The rows shown: filtered, then sorted.
    #[must_use]
    pub fn visible(&self) -> Vec<crate::runner::compare::CompareRow> {
        let mut rows: Vec<_> = self
            .rows
            .iter()
            .filter(|r| r.matches(&self.filter))
            .cloned()
            .collect();
        if let Some((column, descending)) = &self.sort {
            crate::runner::compare::sort(&mut rows, column, *descending);
        }
        rows
    }

    #[must_use]
    pub fn columns(&self) -> Vec<String> {
        crate::runner::compare::columns(&self.rows)
    }
}

/// Everything that reaches the update function.
#[derive(Debug)]
pub enum Event {
    Key(KeyEvent),
    Resize,
    /// Once a second: run liveness, ages, ETA.
    Tick,
    /// The terminal is gone (hang-up, EOF, read error): leave now.
    TerminalGone(String),
    /// New events of runs, experiment edits, log problems.
    Follow(Vec<Update>),
    /// The run table re-read from the run directories.
    Runs(Vec<RunRow>),
    /// The comparison table's rows, read for the compare screen.
    Compare(Vec<crate::runner::compare::CompareRow>),
    /// The experiments re-read from the data directory.
    Experiments(Vec<ExperimentItem>),
    /// A job started on its thread, with the flag that cancels it.
    JobStarted {
        id: JobId,
        cancel: CancelFlag,
    },
    /// A job ended: whether it succeeded, and what to say.
    JobDone {
        id: JobId,
        ok: bool,
        message: String,
    },
    /// A message for the status line: (ok, message).
    Status(bool, String),
    Chat(ChatUpdate),
    /// The chat transcripts re-read.
    Chats(Vec<ChatSummary>),
    /// A job that produces a result (expand, evaluate) finished with it.
    JobOutcome {
        id: JobId,
        outcome: JobOutcome,
    },
    /// An importance measurement (job `id`) finished.
    Importance {
        id: JobId,
        view: ImportanceView,
    },
    /// A study read from the data directory; `open` shows it (otherwise it refreshes the one
    /// shown).
    Study {
        view: StudyView,
        open: bool,
    },
    /// A run's step history from the store, from step `from` on (the whole of it with 0).
    Series {
        run: String,
        from: u64,
        series: RunSeries,
    },
}

/// A study on the study screen: its comparison tables and which run is which cell, re-read
/// whenever the run table changes.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyView {
    pub name: String,
    pub description: String,
    pub strategies: Vec<String>,
    /// (corpus, its comparison table).
    pub tables: Vec<(String, crate::study::Table)>,
    /// Every cell that has a run: (cell, run id).
    pub runs: Vec<(crate::study::Cell, String)>,
    /// Cells in the grid.
    pub cells: usize,
}

impl StudyView {
    /// The runs of one strategy on one corpus (its seeds).
    #[must_use]
    pub fn runs_of(&self, corpus: &str, strategy: &str) -> Vec<&str> {
        self.runs
            .iter()
            .filter(|(c, _)| c.corpus == corpus && c.strategy == strategy)
            .map(|(_, id)| id.as_str())
            .collect()
    }
}

/// Per-block importance of an experiment's base model, per metric.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportanceView {
    pub experiment: String,
    pub experiment_path: PathBuf,
    /// (metric label, score per block).
    pub metrics: Vec<(String, Vec<f64>)>,
    /// The suggested experiment written by `importance --suggest`.
    pub suggestion: PathBuf,
}

/// The typed result of a job, shown in a popup when it arrives.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// `E`: the expanded model written, and its verification.
    Expanded {
        experiment: String,
        summary: crate::core::surgery::ExpandSummary,
    },
    /// `v`: a run's checkpoint evaluated.
    Evaluated {
        run: String,
        record: crate::core::events::EvalRecord,
    },
    /// `p`: an experiment's training data, previewed.
    Previewed {
        experiment: String,
        preview: crate::core::run::DataPreview,
    },
}

/// A recorded chat, for lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSummary {
    pub id: String,
    pub models: Vec<String>,
    pub runs: Vec<String>,
    pub turns: usize,
}

/// What the chat worker reports.
#[derive(Debug)]
pub enum ChatUpdate {
    Loading(String),
    Loaded(Vec<String>),
    /// The sampling settings in effect (after loading and after each `/setting`).
    Settings(String),
    Token {
        model: usize,
        text: String,
    },
    Done {
        model: usize,
        tokens: usize,
        tokens_per_sec: f64,
        stopped: bool,
    },
    Error(String),
}

/// A job's identity: every piece of background work the console starts is a job, and what
/// comes back (its cancel flag, its end) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// A job's cancel flag, shared with the thread that runs it (equal when it is the same flag).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl PartialEq for CancelFlag {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CancelFlag {}

/// A job the console has started and not yet seen end: the one registry of background work
/// (the status line shows it, `C` cancels it, leaving the console cancels it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub label: String,
    /// What stops it, once started (jobs without one finish at once).
    pub cancel: Option<CancelFlag>,
    /// A cancel was sent.
    pub cancelling: bool,
}

/// Background work, carried out off the event loop; its outcome returns as
/// [`Event::JobDone`] with its [`JobId`].
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Launches an experiment on a backend (this machine's queue, or Slurm).
    LaunchRun(PathBuf, crate::launch::Backend),
    StopRun(String),
    KillRun(String),
    ResumeRun(String),
    SaveFile {
        path: PathBuf,
        text: String,
    },
    CreateExperiment {
        name: String,
        template: String,
    },
    DuplicateExperiment {
        from: PathBuf,
        name: String,
    },
    DeleteExperiment(PathBuf),
    /// Export a run's trained model (its newest intact checkpoint) to `out`.
    ExportRun {
        run: String,
        out: PathBuf,
    },
    /// Measure block importance of an experiment's base model, then show it.
    Importance {
        name: String,
        path: PathBuf,
        base: String,
    },
    /// Expand an experiment into `out` and verify it ([`crate::jobs::expand`]).
    Expand {
        experiment: String,
        path: PathBuf,
        out: PathBuf,
    },
    /// Evaluate a run's newest checkpoint on the run's sets ([`crate::jobs::evaluate_run`]).
    EvaluateRun(String),
    /// Preview an experiment's training data ([`crate::jobs::preview_data`]).
    PreviewData {
        experiment: String,
        path: PathBuf,
    },
    /// A new experiment: `from`'s text with its plan replaced by the suggestion's.
    PlanFromSuggestion {
        from: PathBuf,
        suggestion: PathBuf,
        name: String,
    },
}

/// What the runtime is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start job `id`.
    Job {
        id: JobId,
        work: Work,
    },
    /// Ask job `id` to stop: its thread finds the flag set, cleans up and ends.
    CancelJob {
        id: JobId,
        cancel: CancelFlag,
    },
    /// Load models to chat with: run ids (newest checkpoint) or model names.
    ChatLoad(Vec<String>),
    ChatSend(String),
    ChatCancel,
    ChatReset,
    /// Read a study (its saved grid, cell → run map and the runs' results); `open` shows it.
    LoadStudy {
        name: String,
        open: bool,
    },
    /// Repaint everything (after a resize or Ctrl-L).
    Redraw,
    /// Ring the terminal's bell (an alert, when `--bell` asked for it).
    Bell,
    /// Read the comparison table's rows (they come back as [`Event::Compare`]).
    LoadCompare,
    Quit {
        stop_runs: bool,
    },
}

/// An experiment file in the data directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentItem {
    pub name: String,
    pub path: PathBuf,
    pub text: String,
    pub description: String,
    pub base: String,
    pub problem: Option<String>,
    /// Its expanded model, if `E` (or `slayer expand`) wrote one to `<data>/expanded/NAME`.
    pub expanded: Option<PathBuf>,
}

/// A row of the run table: the summary `runs ls` prints.
pub use crate::runner::RunSummary as RunRow;

/// What the screens show of a run row (with the time to its displayed precision, for the run
/// table): a redraw is needed only when this changes.
#[must_use]
pub fn row_shown(row: &RunRow, with_time: bool) -> String {
    format!(
        "{} {} {} {} {}/{} {:?} {} {:?}",
        row.id,
        row.location(),
        row.experiment,
        row.status,
        row.step,
        row.total_steps,
        row.last_loss.map(|l| format!("{l:.4}")),
        if with_time {
            row.shown_secs()
                .map(crate::core::text::duration)
                .unwrap_or_default()
        } else {
            String::new()
        },
        row.problem
    )
}

/// A small window over the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Popup {
    Help {
        scroll: u16,
    },
    /// Leaving: what to do with running runs (0 = leave them running, 1 = stop them, 2 = cancel).
    ConfirmQuit {
        running: usize,
        choice: usize,
    },
    ConfirmDelete {
        path: PathBuf,
        name: String,
    },
    Templates {
        selected: usize,
    },
    /// A name for a new experiment (from a template, or a duplicate of `from`).
    Name {
        input: String,
        template: Option<String>,
        from: Option<PathBuf>,
    },
    Diff {
        lines: Vec<String>,
        scroll: u16,
    },
    /// Every alert of every run, newest first.
    Alerts {
        scroll: u16,
    },
    /// The result of the last job that has one ([`App::outcome`]).
    Outcome {
        scroll: u16,
    },
    /// The importance bars of [`App::importance`]: which metric, scrolled how far.
    Importance {
        metric: usize,
        scroll: u16,
    },
    /// The file changed on disk while the editor had unsaved edits.
    ExternalChange {
        path: PathBuf,
    },
    /// Leaving the editor with unsaved edits (0 = save, 1 = discard, 2 = stay).
    UnsavedLeave {
        choice: usize,
    },
    Error {
        title: String,
        message: String,
    },
}

/// The plan editor: the experiment's text, and its live resolution.
pub struct Editor {
    pub path: PathBuf,
    pub saved: String,
    pub textarea: TextArea<'static>,
    pub analysis: Analysis,
    /// The base model's config, when the model is in the data directory.
    pub base_config: Option<LlamaConfig>,
    /// What the memory estimate assumes of the device ([`App::cpu_threads`]).
    pub cpu_threads: Option<usize>,
}

/// A plan text resolved: diagnostics by line, the layer map and its totals.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// (1-based line, severity, message).
    pub diagnostics: Vec<(Option<usize>, Severity, String)>,
    pub map: Option<LayerMap>,
    pub totals: Option<Totals>,
}

impl Analysis {
    /// Resolves `text` against `config` (the plan alone when the model is unknown); the memory
    /// estimate assumes training on the CPU with `cpu_threads` threads, or on a GPU (`None`).
    #[must_use]
    pub fn of(text: &str, config: Option<&LlamaConfig>, cpu_threads: Option<usize>) -> Self {
        let at = |d: &plan::Diagnostic| d.span.as_ref().map(|s| plan::line_col(text, s.start).0);
        let mut out = Self::default();
        match crate::core::experiment::Experiment::parse(Path::new("experiment.toml"), text) {
            Err(d) => out
                .diagnostics
                .push((at(&d), d.severity, d.message.clone())),
            Ok(exp) => {
                let Some(config) = config else {
                    out.diagnostics.push((
                        None,
                        Severity::Warning,
                        "the base model is not in the data directory: fetch it to see the layer map"
                            .into(),
                    ));
                    return out;
                };
                let r = plan::resolve(&exp.plan, config.num_hidden_layers);
                out.diagnostics.extend(
                    r.diagnostics
                        .iter()
                        .map(|d| (at(d), d.severity, d.message.clone())),
                );
                if let Some(map) = r.map {
                    let mem = plan::totals::MemoryParams {
                        batch: exp.train.batch_size,
                        seq_len: exp.train.seq_len,
                        // As `plan check` assumes: the dtype training on this build would use.
                        element_bytes: crate::core::device::expected_dtype(
                            crate::core::device::DeviceChoice::Auto,
                        )
                        .size_in_bytes(),
                        recompute: exp.train.recompute,
                        cpu_threads,
                    };
                    out.totals = Some(Totals::compute(&map, config, mem));
                    out.map = Some(map);
                }
            }
        }
        out
    }
}

impl Editor {
    #[must_use]
    pub fn new(
        path: &Path,
        text: &str,
        base_config: Option<LlamaConfig>,
        cpu_threads: Option<usize>,
    ) -> Self {
        let mut textarea = TextArea::new(text.lines().map(str::to_string).collect());
        textarea.set_max_histories(200);
        let analysis = Analysis::of(text, base_config.as_ref(), cpu_threads);
        Self {
            path: path.to_path_buf(),
            saved: text.to_string(),
            textarea,
            analysis,
            base_config,
            cpu_threads,
        }
    }

    #[must_use]
    pub fn text(&self) -> String {
        let mut t = self.textarea.lines().join("\n");
        t.push('\n');
        t
    }

    #[must_use]
    pub fn dirty(&self) -> bool {
        self.text().trim_end() != self.saved.trim_end()
    }

    fn reanalyse(&mut self) {
        self.analysis = Analysis::of(&self.text(), self.base_config.as_ref(), self.cpu_threads);
    }

    fn replace(&mut self, text: &str) {
        *self = Self::new(&self.path, text, self.base_config.clone(), self.cpu_threads);
    }
}

/// A line of the chat transcript.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatLine {
    User(String),
    Model { model: usize, text: String },
    Info(String),
}

#[derive(Debug, Clone, Default)]
pub struct ChatView {
    /// Labels of the loaded models (one, or two for A/B).
    pub models: Vec<String>,
    pub loading: Option<String>,
    pub lines: Vec<ChatLine>,
    pub input: String,
    /// A message sent while the models were loading: it goes out once they are loaded.
    pub queued: Option<String>,
    pub generating: bool,
    /// The sampling settings in effect, as the chat worker reports them.
    pub settings: String,
    /// Last reply's (tokens, tokens/s) per model.
    pub stats: BTreeMap<usize, (usize, f64)>,
}

/// Monitor display options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonitorOptions {
    pub log_y: bool,
    pub recent: bool,
    pub update_ratio: bool,
    /// The step the cursor reads the loss and the heatmap at (`None`: no cursor).
    pub cursor: Option<u64>,
    /// The heatmap row the cursor reads (an index into the rows with statistics).
    pub cursor_row: usize,
}

/// The monitor's log pane: how far it is scrolled back and what it searches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogView {
    /// Lines between the newest line and the bottom of the pane (0: following the run).
    pub scroll: usize,
    pub search: String,
}

/// Where typed characters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    None,
    Command,
    Filter,
    Chat,
    /// The monitor's log search.
    LogSearch,
}

/// The whole console state.
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent flags (redraw, glyphs, bell, history read), not a state machine"
)]
pub struct App {
    pub data_dir: PathBuf,
    pub screen: Screen,
    pub popup: Option<Popup>,
    pub input: Input,
    pub command: String,
    pub filter: String,
    pub experiments: Vec<ExperimentItem>,
    pub selected_experiment: usize,
    pub editor: Option<Editor>,
    pub runs: Vec<RunRow>,
    pub selected_run: usize,
    pub run_data: BTreeMap<String, RunData>,
    pub monitored: Option<String>,
    pub overlay: Vec<String>,
    pub monitor: MonitorOptions,
    pub log_view: LogView,
    pub compare: CompareView,
    /// The result of the newest job that has one (expand, evaluate).
    pub outcome: Option<JobOutcome>,
    pub chat: ChatView,
    pub themes: Vec<Theme>,
    pub theme: usize,
    pub keymap: Keymap,
    /// Braille in charts unless the terminal lacks the glyphs.
    pub plain_glyphs: bool,
    /// Ring the bell at alerts (`--bell`).
    pub bell: bool,
    /// Every alert seen, oldest first: (run, alert).
    pub alerts: Vec<(String, Alert)>,
    /// Whether the history read at start has been applied (alerts after it are live).
    followed_once: bool,
    pub status: Option<(bool, String)>,
    /// Jobs started and not yet ended, oldest first.
    pub jobs: Vec<Job>,
    /// The next job's id.
    pub next_job: u64,
    pub should_quit: Option<bool>,
    /// Whether the next frame must be drawn.
    pub dirty: bool,
    /// Seconds since the epoch, as of the last tick (fixed in tests).
    pub now: f64,
    /// When the status message goes (in `now`'s seconds).
    pub status_until: f64,
    /// Recorded chats (lineage: runs → chats).
    pub chats: Vec<ChatSummary>,
    /// The last importance measurement.
    pub importance: Option<ImportanceView>,
    /// The study on the study screen, its selected corpus and strategy.
    pub study: Option<StudyView>,
    pub study_corpus: usize,
    pub study_row: usize,
    /// The plan editor's memory estimate assumes training in f32 on the CPU with this many
    /// threads (this build's and process's), or on a GPU (`None`).
    pub cpu_threads: Option<usize>,
}

impl App {
    #[must_use]
    pub fn new(data_dir: &Path, themes: Vec<Theme>, keymap: Keymap, plain_glyphs: bool) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            screen: Screen::Experiments,
            popup: None,
            input: Input::None,
            command: String::new(),
            filter: String::new(),
            experiments: Vec::new(),
            selected_experiment: 0,
            editor: None,
            runs: Vec::new(),
            selected_run: 0,
            run_data: BTreeMap::new(),
            monitored: None,
            overlay: Vec::new(),
            monitor: MonitorOptions::default(),
            log_view: LogView::default(),
            compare: CompareView::default(),
            bell: false,
            alerts: Vec::new(),
            followed_once: false,
            outcome: None,
            chat: ChatView::default(),
            themes,
            theme: 0,
            keymap,
            plain_glyphs,
            status: None,
            jobs: Vec::new(),
            next_job: 1,
            should_quit: None,
            dirty: true,
            now: 0.0,
            status_until: 0.0,
            chats: Vec::new(),
            importance: None,
            study: None,
            study_corpus: 0,
            study_row: 0,
            cpu_threads: crate::core::device::expects_cpu(crate::core::device::DeviceChoice::Auto)
                .then(|| crate::threads::in_use().threads.get()),
        }
    }

    /// Whether the screen shows something the clock changes (a running run's ETA).
    #[must_use]
    pub fn clock_visible(&self) -> bool {
        self.screen == Screen::Monitor
            && self.monitored.as_ref().is_some_and(|id| {
                self.runs
                    .iter()
                    .any(|r| &r.id == id && r.status == RunState::Running)
            })
    }

    #[must_use]
    pub fn theme(&self) -> Theme {
        self.themes
            .get(self.theme)
            .cloned()
            .unwrap_or_else(|| Theme::fallback(super::theme::ColorDepth::Ansi256))
    }

    /// Experiments passing the filter, with their indices.
    #[must_use]
    pub fn visible_experiments(&self) -> Vec<(usize, &ExperimentItem)> {
        let f = self.filter.to_lowercase();
        self.experiments
            .iter()
            .enumerate()
            .filter(|(_, e)| f.is_empty() || e.name.to_lowercase().contains(&f))
            .collect()
    }

    #[must_use]
    pub fn current_experiment(&self) -> Option<&ExperimentItem> {
        self.visible_experiments()
            .get(self.selected_experiment)
            .map(|(_, e)| *e)
    }

    /// The runs whose step history is on screen or a key away: the monitored run and its
    /// overlay, and the shown study's runs. Only theirs is read from the store and kept.
    #[must_use]
    pub fn viewed_runs(&self) -> Vec<String> {
        let mut runs: Vec<String> = self
            .monitored
            .iter()
            .chain(&self.overlay)
            .cloned()
            .collect();
        if let (Screen::Study, Some(study)) = (self.screen, &self.study) {
            runs.extend(study.runs.iter().map(|(_, id)| id.clone()));
        }
        runs.sort();
        runs.dedup();
        runs
    }

    /// Forgets the step history of every run out of `viewed`.
    pub fn keep_series_of(&mut self, viewed: &[String]) {
        for (id, data) in &mut self.run_data {
            if !viewed.contains(id) && !data.series.is_empty() {
                data.series = RunSeries::default();
            }
        }
    }

    #[must_use]
    pub fn current_run(&self) -> Option<&RunRow> {
        match self.screen {
            // The compare screen's selected row, in the run table.
            Screen::Compare => {
                let id = self.compare_run()?;
                self.runs.iter().find(|r| r.id == id)
            }
            _ => self.runs.get(self.selected_run),
        }
    }

    /// The run selected on the compare screen.
    #[must_use]
    pub fn compare_run(&self) -> Option<String> {
        self.compare
            .visible()
            .get(self.compare.selected)
            .map(|r| r.run.clone())
    }

    /// The keymap context of the current screen.
    #[must_use]
    pub fn context(&self) -> Context {
        match self.screen {
            Screen::Experiments => Context::Experiments,
            Screen::Editor => Context::Editor,
            Screen::Runs => Context::Runs,
            Screen::Monitor => Context::Monitor,
            Screen::Chat => Context::Chat,
            Screen::Study => Context::Study,
            Screen::Compare => Context::Compare,
        }
    }

    /// The selected strategy's runs on the selected corpus (its seeds), overlaid in the monitor.
    fn monitor_study_strategy(&mut self) {
        let Some(study) = &self.study else {
            return;
        };
        let (Some((corpus, _)), Some(strategy)) = (
            study.tables.get(self.study_corpus),
            study.strategies.get(self.study_row),
        ) else {
            return;
        };
        let runs: Vec<String> = study
            .runs_of(corpus, strategy)
            .into_iter()
            .map(str::to_string)
            .collect();
        if runs.is_empty() {
            self.say(false, format!("{strategy} has no runs on {corpus} yet"));
            return;
        }
        self.say(
            true,
            format!("{strategy} on {corpus}: {} seeds overlaid", runs.len()),
        );
        self.monitored = runs.first().cloned();
        self.log_view = LogView::default();
        self.monitor.cursor = None;
        self.overlay = runs;
        self.screen = Screen::Monitor;
    }

    fn say(&mut self, ok: bool, message: impl Into<String>) {
        let keep = if ok {
            STATUS_OK_SECS
        } else {
            STATUS_PROBLEM_SECS
        };
        self.say_for(ok, message, keep);
    }

    /// A status message shown for `secs` (a problem found at start stays longer than one that
    /// follows a key).
    pub fn say_for(&mut self, ok: bool, message: impl Into<String>, secs: f64) {
        self.status = Some((ok, message.into()));
        self.status_until = self.now + secs;
    }

    /// Clears a status message once it has been shown long enough, so that the line never
    /// reports a state that is over; true if it cleared.
    fn expire_status(&mut self) -> bool {
        if self.status.is_some() && self.now >= self.status_until {
            self.status = None;
            return true;
        }
        false
    }

    /// Applies one event; returns what the runtime must do.
    pub fn update(&mut self, event: Event) -> Vec<Effect> {
        let was_dirty = self.dirty;
        self.dirty = true;
        match event {
            Event::Key(key) => self.key(key),
            Event::Resize => vec![Effect::Redraw],
            Event::Tick => {
                // A tick redraws only what changes with time: the monitor's ETA while the run
                // runs, and a status message that expires.
                let expired = self.expire_status();
                self.dirty = was_dirty || expired || self.clock_visible();
                Vec::new()
            }
            Event::TerminalGone(why) => {
                tracing::info!("terminal gone ({why}); leaving runs running");
                self.should_quit = Some(false);
                vec![Effect::Quit { stop_runs: false }]
            }
            Event::Follow(updates) => self.follow(updates),
            Event::Series { run, from, series } => {
                if self.viewed_runs().contains(&run) {
                    self.run_data
                        .entry(run.clone())
                        .or_insert_with(|| RunData::new(&run))
                        .take_series(from, series);
                } else {
                    // Asked for before it went out of view.
                    self.dirty = was_dirty;
                }
                Vec::new()
            }
            Event::Runs(rows) => {
                // Re-read every few seconds: redraw only if what the table shows changed.
                let ages = self.screen == Screen::Runs;
                let shown = |rows: &[RunRow]| -> Vec<String> {
                    rows.iter().map(|r| row_shown(r, ages)).collect()
                };
                let changed = shown(&rows) != shown(&self.runs);
                if !changed {
                    self.dirty = was_dirty;
                }
                self.runs = rows;
                self.selected_run = self.selected_run.min(self.runs.len().saturating_sub(1));
                if changed && self.screen == Screen::Compare {
                    return vec![Effect::LoadCompare];
                }
                // A run of the shown study moved: its tables are read again.
                match &self.study {
                    Some(study) if changed && self.screen == Screen::Study => {
                        vec![Effect::LoadStudy {
                            name: study.name.clone(),
                            open: false,
                        }]
                    }
                    _ => Vec::new(),
                }
            }
            Event::Compare(rows) => {
                let same = self.compare.rows == rows;
                self.compare.rows = rows;
                let n = self.compare.visible().len();
                self.compare.selected = self.compare.selected.min(n.saturating_sub(1));
                self.compare.column = self
                    .compare
                    .column
                    .min(self.compare.columns().len().saturating_sub(1));
                if same {
                    self.dirty = was_dirty;
                }
                Vec::new()
            }
            Event::Experiments(items) => {
                self.experiments = items;
                self.clamp_experiment();
                Vec::new()
            }
            Event::JobStarted { id, cancel } => {
                if let Some(job) = self.jobs.iter_mut().find(|j| j.id == id) {
                    job.cancel = Some(cancel);
                }
                Vec::new()
            }
            Event::JobDone { id, ok, message } => {
                let cancelled = self.end_job(id).is_some_and(|j| j.cancelling);
                if cancelled && !ok {
                    self.say(false, format!("cancelled: {message}"));
                } else {
                    self.say(ok, message);
                }
                Vec::new()
            }
            Event::Status(ok, message) => {
                self.say(ok, message);
                Vec::new()
            }
            Event::Chat(u) => self.chat_update(u),
            Event::Chats(chats) => {
                self.chats = chats;
                Vec::new()
            }
            Event::Study { view, open } => {
                if open {
                    self.say(
                        true,
                        format!(
                            "study {}: {} of {} cells have runs",
                            view.name,
                            view.runs.len(),
                            view.cells
                        ),
                    );
                    self.screen = Screen::Study;
                    self.study_corpus = 0;
                    self.study_row = 0;
                } else if self.study.as_ref() == Some(&view) {
                    self.dirty = was_dirty;
                }
                self.study_corpus = self.study_corpus.min(view.tables.len().saturating_sub(1));
                self.study_row = self.study_row.min(view.strategies.len().saturating_sub(1));
                self.study = Some(view);
                Vec::new()
            }
            Event::JobOutcome { id, outcome } => {
                self.end_job(id);
                let message = match &outcome {
                    JobOutcome::Expanded {
                        experiment,
                        summary,
                    } => match &summary.verification {
                        Some(v) if v.passed() => format!(
                            "expanded {experiment}: verified (new blocks keep the base's logits)"
                        ),
                        Some(_) => format!("expanded {experiment}: verification FAILED"),
                        None => format!("expanded {experiment}"),
                    },
                    JobOutcome::Evaluated { run, record } => {
                        format!("evaluated {run} at step {}", record.step)
                    }
                    JobOutcome::Previewed {
                        experiment,
                        preview,
                    } => format!(
                        "{experiment}: {} training sequences, {}",
                        preview.sequences,
                        preview
                            .epochs
                            .map_or_else(|| "no epoch".to_string(), |e| format!("{e:.2} epochs"))
                    ),
                };
                let ok = !matches!(&outcome, JobOutcome::Expanded { summary, .. }
                    if summary.verification.as_ref().is_some_and(|v| !v.passed()));
                self.say(ok, message);
                self.outcome = Some(outcome);
                if self.popup.is_none() {
                    self.popup = Some(Popup::Outcome { scroll: 0 });
                }
                Vec::new()
            }
            Event::Importance { id, view } => {
                self.end_job(id);
                self.say(
                    true,
                    format!("importance of {}'s base model", view.experiment),
                );
                self.importance = Some(view);
                self.popup = Some(Popup::Importance {
                    metric: 0,
                    scroll: 0,
                });
                Vec::new()
            }
        }
    }

    fn clamp_experiment(&mut self) {
        let n = self.visible_experiments().len();
        self.selected_experiment = self.selected_experiment.min(n.saturating_sub(1));
    }

    /// Applies followed updates; alerts raised by events that arrived while the console was
    /// open (not the history read when it opened) are told wherever the user is.
    fn follow(&mut self, updates: Vec<Update>) -> Vec<Effect> {
        let live = self.followed_once;
        self.followed_once = true;
        let mut effects = Vec::new();
        for u in updates {
            match u {
                Update::Events { run, reset, events } => {
                    // A log scrolled back stays on the lines it shows as new ones arrive.
                    if self.monitored.as_ref() == Some(&run) && self.log_view.scroll > 0 {
                        self.log_view.scroll = if reset {
                            0
                        } else {
                            self.log_view.scroll + events.len()
                        };
                    }
                    let data = self
                        .run_data
                        .entry(run.clone())
                        .or_insert_with(|| RunData::new(&run));
                    let known = if reset { usize::MAX } else { data.alerts.len() };
                    data.apply(reset, &events);
                    let raised: Vec<Alert> = data.alerts.iter().skip(known).cloned().collect();
                    if self.monitored.as_ref() == Some(&run) {
                        self.log_view.scroll =
                            self.log_view.scroll.min(data.log.len().saturating_sub(1));
                    }
                    for alert in raised {
                        if live {
                            effects.extend(self.tell(&run, &alert));
                        }
                        self.alerts.push((run.clone(), alert));
                    }
                }
                Update::Problem { run, message } => {
                    self.run_data
                        .entry(run.clone())
                        .or_insert_with(|| RunData::new(&run))
                        .problem = Some(message);
                }
                Update::Experiment(path) => self.experiment_changed(&path),
            }
        }
        effects
    }

    /// A live alert: on the status line (and the terminal's bell when asked for).
    fn tell(&mut self, run: &str, alert: &Alert) -> Vec<Effect> {
        let news = alert.severity == AlertSeverity::News;
        let key = self.keymap.keys_of(Context::Global, Action::Alerts, "!");
        self.say(
            news,
            format!("{run}: {} ({key} lists alerts)", alert.message),
        );
        if self.bell {
            vec![Effect::Bell]
        } else {
            Vec::new()
        }
    }

    /// An experiment file changed on disk: reload the editor if it holds no edits, else ask.
    /// A theme file changed: reload the themes, keeping the current one.
    fn experiment_changed(&mut self, path: &Path) {
        if path.starts_with(super::theme::user_dir(&self.data_dir)) {
            let name = self.theme().name;
            let (themes, problems) = super::theme::load_all(&self.data_dir, self.theme().depth);
            self.themes = themes;
            self.theme = self.themes.iter().position(|t| t.name == name).unwrap_or(0);
            match problems.into_iter().next() {
                Some(p) => self.say(false, p),
                None => self.say(true, format!("themes reloaded ({})", path.display())),
            }
            return;
        }
        let Some(editor) = &mut self.editor else {
            return;
        };
        if editor.path != path {
            return;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        if text == editor.saved {
            return;
        }
        if editor.dirty() {
            self.popup = Some(Popup::ExternalChange {
                path: path.to_path_buf(),
            });
        } else {
            editor.replace(&text);
            self.say(
                true,
                format!("{} changed on disk: reloaded", path.display()),
            );
        }
    }

    fn chat_update(&mut self, u: ChatUpdate) -> Vec<Effect> {
        match u {
            ChatUpdate::Loading(what) => self.chat.loading = Some(what),
            ChatUpdate::Loaded(models) => {
                self.chat.loading = None;
                self.chat.lines.push(ChatLine::Info(format!(
                    "chatting with {}",
                    models.join(" vs ")
                )));
                self.chat.models = models;
                self.input = Input::Chat;
                if let Some(text) = self.chat.queued.take() {
                    return self.submit_chat(&text);
                }
            }
            ChatUpdate::Settings(settings) => self.chat.settings = settings,
            ChatUpdate::Token { model, text } => match self.chat.lines.last_mut() {
                Some(ChatLine::Model { model: m, text: t }) if *m == model => t.push_str(&text),
                _ => self.chat.lines.push(ChatLine::Model { model, text }),
            },
            ChatUpdate::Done {
                model,
                tokens,
                tokens_per_sec,
                stopped,
            } => {
                self.chat.stats.insert(model, (tokens, tokens_per_sec));
                if stopped {
                    // Marked on that model's answer: in A/B the other one may have finished.
                    match self
                        .chat
                        .lines
                        .iter_mut()
                        .rev()
                        .find(|l| matches!(l, ChatLine::Model { model: m, .. } if *m == model))
                    {
                        Some(ChatLine::Model { text, .. }) => text.push_str(" [stopped]"),
                        _ => self.chat.lines.push(ChatLine::Model {
                            model,
                            text: "[stopped]".into(),
                        }),
                    }
                }
                if model + 1 >= self.chat.models.len() {
                    self.chat.generating = false;
                }
            }
            ChatUpdate::Error(e) => {
                self.chat.loading = None;
                self.chat.generating = false;
                self.chat.queued = None;
                self.chat.lines.push(ChatLine::Info(format!("error: {e}")));
            }
        }
        Vec::new()
    }

    /// The keymap context the next key is looked up in: the open popup (a name prompt is a
    /// text field), else the text field being typed in, else the screen.
    #[must_use]
    pub fn key_context(&self) -> Context {
        match (&self.popup, self.input) {
            (Some(Popup::Name { .. }), _)
            | (None, Input::Command | Input::Filter | Input::Chat | Input::LogSearch) => {
                Context::Input
            }
            (Some(_), _) => Context::Popup,
            (None, Input::None) => self.context(),
        }
    }

    /// Every key goes through the keymap in its context; keys it does not bind type into a
    /// text field or the editor, and do nothing elsewhere.
    fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.kind != ratatui::crossterm::event::KeyEventKind::Press {
            return Vec::new();
        }
        let Some(k) = Key::from_event(&key) else {
            return Vec::new();
        };
        let context = self.key_context();
        match (self.keymap.lookup(context, k), context) {
            (Some(action), Context::Popup) => self.popup_action(action),
            (Some(action), Context::Input) => self.input_action(action),
            (Some(action), _) => self.action(action),
            (None, Context::Input) => {
                if let KeyCode::Char(c) = key.code
                    && !key
                        .modifiers
                        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
                {
                    self.type_char(c);
                }
                Vec::new()
            }
            (None, Context::Editor) => {
                if let Some(editor) = &mut self.editor
                    && editor.textarea.input(key)
                {
                    editor.reanalyse();
                }
                Vec::new()
            }
            (None, _) => Vec::new(),
        }
    }

    /// A character typed into the focused field (a name takes letters, digits, `-` and `_`).
    fn type_char(&mut self, c: char) {
        match (&mut self.popup, self.input) {
            (Some(Popup::Name { input, .. }), _) => {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    input.push(c);
                }
            }
            (_, Input::Command) => self.command.push(c),
            (_, Input::Filter) => {
                self.filter_mut().push(c);
                self.filter_changed();
            }
            (_, Input::Chat) => self.chat.input.push(c),
            (_, Input::LogSearch) => {
                self.log_view.search.push(c);
                self.log_search_from(0);
            }
            (_, Input::None) => {}
        }
    }

    /// The filter being typed: the compare table's on its screen, else the experiments'.
    fn filter_mut(&mut self) -> &mut String {
        if self.screen == Screen::Compare {
            &mut self.compare.filter
        } else {
            &mut self.filter
        }
    }

    fn filter_changed(&mut self) {
        if self.screen == Screen::Compare {
            self.compare.selected = 0;
            return;
        }
        self.selected_experiment = 0;
        self.clamp_experiment();
    }

    /// An action while typing in a field.
    fn input_action(&mut self, action: Action) -> Vec<Effect> {
        if let Some(Popup::Name {
            input,
            template,
            from,
        }) = &mut self.popup
        {
            match action {
                Action::Send if !input.is_empty() => {
                    let (name, template, from) =
                        (std::mem::take(input), template.take(), from.take());
                    self.popup = None;
                    let label = format!("creating {name}");
                    return match (template, from) {
                        (Some(template), _) => {
                            self.start_job(label, Work::CreateExperiment { name, template })
                        }
                        (None, Some(from)) => {
                            self.start_job(label, Work::DuplicateExperiment { from, name })
                        }
                        (None, None) => Vec::new(),
                    };
                }
                Action::Back | Action::Cancel => self.popup = None,
                Action::DeleteBack => {
                    input.pop();
                }
                Action::ClearLine => input.clear(),
                Action::Refresh => return vec![Effect::Redraw],
                _ => {}
            }
            return Vec::new();
        }
        match (action, self.input) {
            (Action::Send, Input::Command) => {
                self.input = Input::None;
                let cmd = std::mem::take(&mut self.command);
                return self.run_command(cmd.trim());
            }
            (Action::Send, Input::Chat) => return self.send_chat_input(),
            (Action::Cancel, Input::Chat) if self.chat.generating => {
                return vec![Effect::ChatCancel];
            }
            (Action::Back | Action::Cancel, Input::Command) => {
                self.input = Input::None;
                self.command.clear();
            }
            (Action::Back | Action::Cancel, Input::Filter) => {
                self.filter_mut().clear();
                self.input = Input::None;
                self.filter_changed();
            }
            (Action::Back | Action::Cancel, Input::LogSearch) => {
                self.log_view.search.clear();
                self.input = Input::None;
            }
            (Action::DeleteBack, Input::LogSearch) => {
                self.log_view.search.pop();
            }
            (Action::ClearLine, Input::LogSearch) => self.log_view.search.clear(),
            // Enter keeps the filter; leaving the chat input keeps what was typed.
            (Action::Back | Action::Cancel, _)
            | (Action::Send, Input::Filter | Input::LogSearch) => {
                self.input = Input::None;
            }
            (Action::DeleteBack, Input::Command) => {
                if self.command.pop().is_none() {
                    self.input = Input::None;
                }
            }
            (Action::DeleteBack, Input::Filter) => {
                self.filter_mut().pop();
                self.filter_changed();
            }
            (Action::DeleteBack, _) => {
                self.chat.input.pop();
            }
            (Action::ClearLine, Input::Command) => self.command.clear(),
            (Action::ClearLine, Input::Filter) => {
                self.filter_mut().clear();
                self.filter_changed();
            }
            (Action::ClearLine, _) => self.chat.input.clear(),
            // Anything else bound here (a user's `"ctrl-q" = "quit"`) acts as on the screen.
            (other, _) => return self.action(other),
        }
        Vec::new()
    }

    /// Enter in the chat input: the line goes out, or waits for the model that is loading.
    fn send_chat_input(&mut self) -> Vec<Effect> {
        if self.chat.generating {
            return Vec::new();
        }
        let text = std::mem::take(&mut self.chat.input);
        let text = text.trim();
        if text.is_empty() {
            return Vec::new();
        }
        if self.chat.models.is_empty() {
            // Still loading: nothing typed is lost, it goes out once the model is ready.
            if self.chat.loading.is_some() && self.chat.queued.is_none() {
                self.chat.lines.push(ChatLine::Info(format!(
                    "(\"{text}\" is sent once the model has loaded)"
                )));
                self.chat.queued = Some(text.to_string());
            } else {
                self.chat.input = text.to_string();
            }
            return Vec::new();
        }
        self.submit_chat(text)
    }

    /// `:` commands: screens, actions by name, `theme NAME`, `q`.
    pub fn run_command(&mut self, cmd: &str) -> Vec<Effect> {
        let (head, arg) = cmd
            .split_once(' ')
            .map_or((cmd, ""), |(h, a)| (h, a.trim()));
        match head {
            "" => Vec::new(),
            "q" | "quit" => self.action(Action::Quit),
            "q!" => {
                self.should_quit = Some(false);
                vec![Effect::Quit { stop_runs: false }]
            }
            "plan" => self.action(Action::EditPlan),
            "chat" if !arg.is_empty() => {
                self.screen = Screen::Chat;
                self.start_chat(arg.split_whitespace().map(str::to_string).collect())
            }
            "theme" => {
                match self.themes.iter().position(|t| t.name == arg) {
                    Some(i) => {
                        self.theme = i;
                        self.say(true, format!("theme {arg}"));
                    }
                    None => self.say(
                        false,
                        format!(
                            "no theme {arg:?}; themes: {}",
                            self.themes
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
                vec![Effect::Redraw]
            }
            "system" => vec![Effect::ChatSend(format!("/system {arg}"))],
            "study" if !arg.is_empty() => vec![Effect::LoadStudy {
                name: arg.to_string(),
                open: true,
            }],
            "diff" => {
                let other = self.experiments.iter().find(|e| e.name == arg).cloned();
                match (&self.editor, other) {
                    (Some(editor), Some(other)) => {
                        self.popup = Some(Popup::Diff {
                            lines: line_diff(&other.text, &editor.text()),
                            scroll: 0,
                        });
                    }
                    (None, _) => self.say(
                        false,
                        ":diff NAME compares the plan editor with another experiment",
                    ),
                    (_, None) => self.say(false, format!("no experiment named {arg:?}")),
                }
                Vec::new()
            }
            name => {
                if let Some(a) = Action::from_name(name) {
                    self.action(a)
                } else {
                    self.say(false, format!("unknown command :{name} (? lists the keys)"));
                    Vec::new()
                }
            }
        }
    }

    /// A chat line entered (typed, or queued while loading): a message or a `/` command, parsed
    /// as the CLI's chat parses it.
    fn submit_chat(&mut self, text: &str) -> Vec<Effect> {
        use crate::core::chat::ChatInput;
        let info = |this: &mut Self, line: String| this.chat.lines.push(ChatLine::Info(line));
        match ChatInput::parse(text) {
            Err(problem) => {
                info(self, format!("({problem})"));
                return Vec::new();
            }
            Ok(ChatInput::Reset) => {
                info(self, "(conversation reset)".into());
                return vec![Effect::ChatReset];
            }
            Ok(ChatInput::System(system)) => {
                info(
                    self,
                    format!(
                        "(system prompt {}; conversation reset)",
                        if system.is_some() { "set" } else { "cleared" }
                    ),
                );
                return vec![Effect::ChatSend(text.to_string())];
            }
            Ok(ChatInput::Set(setting, value)) => {
                // The value is checked here too, so that a bad one is not announced as set.
                let defaults = crate::core::generate::SamplingParams::default();
                if let Err(problem) = setting.apply(&defaults, &value) {
                    info(self, format!("({problem})"));
                    return Vec::new();
                }
                info(
                    self,
                    format!("({} {value}; conversation reset)", setting.name()),
                );
                return vec![Effect::ChatSend(text.to_string())];
            }
            Ok(ChatInput::Help) => {
                for line in crate::core::chat::CHAT_COMMANDS.lines() {
                    info(self, line.to_string());
                }
                return Vec::new();
            }
            Ok(ChatInput::Quit) => {
                self.input = Input::None;
                return Vec::new();
            }
            Ok(ChatInput::Message(_)) => {}
        }
        self.chat.lines.push(ChatLine::User(text.to_string()));
        self.chat.generating = true;
        vec![Effect::ChatSend(text.to_string())]
    }

    /// How many lines a scrolling popup holds (the bound of its scroll).
    fn popup_len(&self, popup: &Popup) -> usize {
        match popup {
            Popup::Help { .. } => self
                .keymap
                .help_rows()
                .iter()
                .map(|(_, rows)| rows.len() + 1)
                .sum(),
            Popup::Diff { lines, .. } => lines.len(),
            Popup::Outcome { .. } => self.outcome.as_ref().map_or(0, |o| outcome_lines(o).len()),
            Popup::Alerts { .. } => self.alerts.len().max(1),
            Popup::Importance { metric, .. } => self
                .importance
                .as_ref()
                .and_then(|v| v.metrics.get(*metric))
                .map_or(1, |(_, scores)| scores.len() + 1),
            _ => 0,
        }
    }

    /// An action in a popup. The popup stays open unless the action closes or answers it.
    fn popup_action(&mut self, action: Action) -> Vec<Effect> {
        let Some(mut popup) = self.popup.take() else {
            return Vec::new();
        };
        if action == Action::Refresh {
            self.popup = Some(popup);
            return vec![Effect::Redraw];
        }
        let len = self.popup_len(&popup);
        let importance_metrics = self
            .importance
            .as_ref()
            .map_or(1, |v| v.metrics.len().max(1));
        // Down/Up scroll a text popup and move the choice of a picker.
        let scrolled = |scroll: u16| -> Option<u16> {
            let last = u16::try_from(len.saturating_sub(1)).unwrap_or(u16::MAX);
            let to = match action {
                Action::Up => scroll.saturating_sub(1),
                Action::Down => scroll.saturating_add(1),
                Action::PageUp => scroll.saturating_sub(10),
                Action::PageDown => scroll.saturating_add(10),
                Action::Top => 0,
                Action::Bottom => last,
                _ => return None,
            };
            Some(to.min(last))
        };
        let step = |choice: usize, n: usize| -> Option<usize> {
            match action {
                Action::Down | Action::FocusNext => Some((choice + 1) % n),
                Action::Up | Action::FocusPrev => Some((choice + n - 1) % n),
                Action::Top => Some(0),
                Action::Bottom => Some(n - 1),
                _ => None,
            }
        };
        let close = matches!(action, Action::Back);
        match &mut popup {
            Popup::Help { scroll }
            | Popup::Diff { scroll, .. }
            | Popup::Outcome { scroll }
            | Popup::Alerts { scroll } => {
                if let Some(to) = scrolled(*scroll) {
                    *scroll = to;
                } else if close || action == Action::Open {
                    return Vec::new();
                }
            }
            Popup::Error { .. } => {
                if close || matches!(action, Action::Open | Action::Yes | Action::No) {
                    return Vec::new();
                }
            }
            Popup::Importance { metric, scroll } => match action {
                Action::FocusNext => *metric = (*metric + 1) % importance_metrics,
                Action::FocusPrev => {
                    *metric = (*metric + importance_metrics - 1) % importance_metrics;
                }
                Action::PlanFromImportance => {
                    if let Some(v) = &self.importance {
                        let name = format!("{}-importance", v.experiment);
                        let work = Work::PlanFromSuggestion {
                            from: v.experiment_path.clone(),
                            suggestion: v.suggestion.clone(),
                            name: name.clone(),
                        };
                        return self.start_job(format!("creating {name}"), work);
                    }
                }
                _ if close => return Vec::new(),
                _ => {
                    if let Some(to) = scrolled(*scroll) {
                        *scroll = to;
                    }
                }
            },
            Popup::ConfirmQuit { choice, .. } => match action {
                Action::Open => {
                    if *choice == 2 {
                        return Vec::new();
                    }
                    let stop_runs = *choice == 1;
                    self.should_quit = Some(stop_runs);
                    return vec![Effect::Quit { stop_runs }];
                }
                _ if close => return Vec::new(),
                _ => *choice = step(*choice, 3).unwrap_or(*choice),
            },
            Popup::ConfirmDelete { path, name } => match action {
                Action::Yes | Action::Open => {
                    let label = format!("deleting {name}");
                    return self.start_job(label, Work::DeleteExperiment(path.clone()));
                }
                Action::No | Action::Back => return Vec::new(),
                _ => {}
            },
            Popup::Templates { selected } => {
                let n = crate::templates::TEMPLATES.len();
                match action {
                    Action::Open => {
                        let template = crate::templates::TEMPLATES
                            .get(*selected)
                            .map(|t| t.name.to_string());
                        self.popup = Some(Popup::Name {
                            input: String::new(),
                            template,
                            from: None,
                        });
                        return Vec::new();
                    }
                    _ if close => return Vec::new(),
                    _ => *selected = step(*selected, n).unwrap_or(*selected),
                }
            }
            // A name prompt is a text field: its keys go to `input_action`.
            Popup::Name { .. } => {}
            Popup::ExternalChange { path } => match action {
                Action::Yes | Action::Open => {
                    if let (Some(editor), Ok(text)) =
                        (&mut self.editor, std::fs::read_to_string(&*path))
                    {
                        editor.replace(&text);
                        self.say(true, "reloaded from disk; your edits were dropped");
                    }
                    return Vec::new();
                }
                Action::No | Action::Back => {
                    self.say(true, "kept your edits; saving will overwrite the file");
                    return Vec::new();
                }
                _ => {}
            },
            Popup::UnsavedLeave { choice } => match action {
                Action::Open => {
                    match *choice {
                        0 => {
                            let save = self.save();
                            self.screen = Screen::Experiments;
                            self.editor = None;
                            return save;
                        }
                        1 => {
                            self.screen = Screen::Experiments;
                            self.editor = None;
                        }
                        _ => {}
                    }
                    return Vec::new();
                }
                _ if close => return Vec::new(),
                _ => *choice = step(*choice, 3).unwrap_or(*choice),
            },
        }
        self.popup = Some(popup);
        Vec::new()
    }

    fn save(&mut self) -> Vec<Effect> {
        let Some(editor) = &mut self.editor else {
            return Vec::new();
        };
        let text = editor.text();
        editor.saved.clone_from(&text);
        let path = editor.path.clone();
        self.start_job(
            format!("saving {}", path.display()),
            Work::SaveFile { path, text },
        )
    }

    fn start_chat(&mut self, specs: Vec<String>) -> Vec<Effect> {
        if specs.is_empty() {
            self.say(false, "nothing to chat with yet");
            return Vec::new();
        }
        self.chat = ChatView {
            loading: Some(specs.join(" vs ")),
            ..ChatView::default()
        };
        // Typing can start at once: keys go to the chat input while the models load.
        self.input = Input::Chat;
        vec![Effect::ChatLoad(specs)]
    }

    fn running_runs(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.status == RunState::Running)
            .count()
    }

    /// Carries out an action.
    pub fn action(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Quit => {
                let running = self.running_runs();
                if running == 0 {
                    self.should_quit = Some(false);
                    return vec![Effect::Quit { stop_runs: false }];
                }
                self.popup = Some(Popup::ConfirmQuit { running, choice: 0 });
            }
            Action::Help => self.popup = Some(Popup::Help { scroll: 0 }),
            Action::Alerts => self.popup = Some(Popup::Alerts { scroll: 0 }),
            Action::CommandLine => {
                self.input = Input::Command;
                self.command.clear();
            }
            Action::Search => {
                self.input = Input::LogSearch;
                self.log_view.search.clear();
            }
            Action::Filter => self.input = Input::Filter,
            Action::NextMatch => self.log_search_from(1),
            Action::PreviousMatch => self.log_search_from(-1),
            Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom => {
                self.move_selection(action);
            }
            Action::Back => match self.screen {
                Screen::Editor => {
                    if self.editor.as_ref().is_some_and(Editor::dirty) {
                        self.popup = Some(Popup::UnsavedLeave { choice: 0 });
                    } else {
                        self.editor = None;
                        self.screen = Screen::Experiments;
                    }
                }
                Screen::Monitor => self.screen = Screen::Runs,
                Screen::Compare => {
                    self.compare.filter.clear();
                    self.compare.marked = None;
                    self.status = None;
                }
                Screen::Experiments | Screen::Runs | Screen::Chat | Screen::Study => {
                    self.filter.clear();
                    self.status = None;
                }
            },
            Action::FocusNext | Action::FocusPrev => {
                const ORDER: [Screen; 5] = [
                    Screen::Experiments,
                    Screen::Runs,
                    Screen::Monitor,
                    Screen::Chat,
                    Screen::Study,
                ];
                let at = ORDER.iter().position(|s| *s == self.screen).unwrap_or(0);
                let next = if action == Action::FocusNext {
                    at + 1
                } else {
                    at + ORDER.len() - 1
                };
                self.screen = ORDER[next % ORDER.len()];
                if self.screen == Screen::Chat && !self.chat.models.is_empty() {
                    self.input = Input::Chat;
                }
            }
            Action::ScreenExperiments => self.screen = Screen::Experiments,
            Action::ScreenRuns => self.screen = Screen::Runs,
            Action::ScreenMonitor => {
                if self.monitored.is_none() {
                    self.monitored = self.current_run().map(|r| r.id.clone());
                    self.log_view = LogView::default();
                    self.monitor.cursor = None;
                }
                self.screen = Screen::Monitor;
            }
            Action::ScreenStudy => self.screen = Screen::Study,
            Action::ScreenCompare => {
                self.screen = Screen::Compare;
                return vec![Effect::LoadCompare];
            }
            Action::PreviewData => {
                if let Some(e) = self.current_experiment().cloned() {
                    return self.start_job(
                        format!("reading {}'s training data", e.name),
                        Work::PreviewData {
                            experiment: e.name,
                            path: e.path,
                        },
                    );
                }
            }
            Action::CursorLeft | Action::CursorRight | Action::CursorUp | Action::CursorDown => {
                self.move_cursor(action);
            }
            Action::ColumnLeft => self.compare.column = self.compare.column.saturating_sub(1),
            Action::ColumnRight => {
                let last = self.compare.columns().len().saturating_sub(1);
                self.compare.column = (self.compare.column + 1).min(last);
            }
            Action::Open if self.screen == Screen::Compare => {
                let Some(column) = self.compare.columns().get(self.compare.column).cloned() else {
                    return Vec::new();
                };
                // A new column sorts its best first for metrics (accuracy high, perplexity low)
                // and ascending otherwise; the same column again flips the order.
                let descending = match &self.compare.sort {
                    Some((c, d)) if *c == column => !d,
                    _ => column.ends_with(" acc"),
                };
                self.say(
                    true,
                    format!(
                        "sorted by {column}, {}",
                        if descending {
                            "descending"
                        } else {
                            "ascending"
                        }
                    ),
                );
                self.compare.sort = Some((column, descending));
                self.compare.selected = 0;
            }
            Action::Diff if self.screen == Screen::Compare => return self.diff_marked_run(),
            Action::Mark => {
                if let Some(r) = self.compare_run() {
                    if self.compare.marked.as_ref() == Some(&r) {
                        self.compare.marked = None;
                    } else {
                        self.say(
                            true,
                            format!("marked {r}: d on another run diffs their experiments"),
                        );
                        self.compare.marked = Some(r);
                    }
                }
            }
            Action::ScreenChat => {
                self.screen = Screen::Chat;
                if !self.chat.models.is_empty() {
                    self.input = Input::Chat;
                }
            }
            Action::NewExperiment => self.popup = Some(Popup::Templates { selected: 0 }),
            Action::DuplicateExperiment => {
                if let Some(e) = self.current_experiment() {
                    self.popup = Some(Popup::Name {
                        input: format!("{}-copy", e.name),
                        template: None,
                        from: Some(e.path.clone()),
                    });
                }
            }
            Action::DeleteExperiment => {
                if let Some(e) = self.current_experiment() {
                    self.popup = Some(Popup::ConfirmDelete {
                        path: e.path.clone(),
                        name: e.name.clone(),
                    });
                }
            }
            Action::EditPlan => {
                if let Some(e) = self.current_experiment().cloned() {
                    let config = base_config(&self.data_dir, &e.base);
                    self.editor = Some(Editor::new(&e.path, &e.text, config, self.cpu_threads));
                    self.screen = Screen::Editor;
                }
            }
            Action::Train | Action::TrainOnSlurm => {
                if let Some(e) = self.current_experiment() {
                    let (label, path) = (format!("launching {}", e.name), e.path.clone());
                    let backend = if action == Action::TrainOnSlurm {
                        crate::launch::Backend::Slurm(Box::default())
                    } else {
                        crate::launch::Backend::Local
                    };
                    return self.start_job(label, Work::LaunchRun(path, backend));
                }
            }
            Action::Stop | Action::Kill | Action::Resume => {
                let id = match self.screen {
                    Screen::Monitor => self.monitored.clone(),
                    _ => self.current_run().map(|r| r.id.clone()),
                };
                if let Some(id) = id {
                    let (label, work) = match action {
                        Action::Stop => (format!("stopping {id}"), Work::StopRun(id)),
                        Action::Kill => (format!("killing {id}"), Work::KillRun(id)),
                        _ => (format!("resuming {id}"), Work::ResumeRun(id)),
                    };
                    return self.start_job(label, work);
                }
            }
            Action::Open if self.screen == Screen::Study => self.monitor_study_strategy(),
            Action::NextCorpus => {
                if let Some(study) = &self.study {
                    self.study_corpus = (self.study_corpus + 1) % study.tables.len().max(1);
                }
            }
            Action::Open => {
                if let Some(r) = self.current_run() {
                    self.monitored = Some(r.id.clone());
                    self.log_view = LogView::default();
                    self.monitor.cursor = None;
                    self.screen = Screen::Monitor;
                }
            }
            Action::Overlay => {
                if let Some(id) = self.current_run().map(|r| r.id.clone()) {
                    if let Some(i) = self.overlay.iter().position(|o| *o == id) {
                        self.overlay.remove(i);
                        self.say(true, format!("{id} removed from the overlay"));
                    } else {
                        self.overlay.push(id.clone());
                        self.say(true, format!("{id} overlaid in the monitor"));
                    }
                }
            }
            Action::Save => return self.save(),
            Action::Revert => {
                if let Some(editor) = &mut self.editor {
                    let saved = editor.saved.clone();
                    editor.replace(&saved);
                    self.say(true, "reverted to the saved file");
                }
            }
            Action::Diff => {
                if let Some(editor) = &self.editor {
                    let lines = line_diff(&editor.saved, &editor.text());
                    self.popup = Some(Popup::Diff { lines, scroll: 0 });
                }
            }
            Action::LogScale => self.monitor.log_y = !self.monitor.log_y,
            Action::Zoom => self.monitor.recent = !self.monitor.recent,
            Action::HeatMetric => self.monitor.update_ratio = !self.monitor.update_ratio,
            Action::Chat => {
                let run = match self.screen {
                    Screen::Runs | Screen::Compare => self.current_run().map(|r| r.id.clone()),
                    _ => self.current_experiment().and_then(|e| {
                        self.runs
                            .iter()
                            .rev()
                            .find(|r| r.experiment == e.name)
                            .map(|r| r.id.clone())
                    }),
                };
                self.screen = Screen::Chat;
                return self.start_chat(run.into_iter().collect());
            }
            Action::Compose => {
                if self.chat.models.is_empty() && self.chat.loading.is_none() {
                    self.say(
                        false,
                        "no model yet: c on an experiment or a run, or :chat RUN [RUN]",
                    );
                } else {
                    self.input = Input::Chat;
                }
            }
            Action::Cancel => {
                if self.chat.generating {
                    return vec![Effect::ChatCancel];
                }
            }
            // Text-field and popup actions: nothing to do on a screen.
            Action::Send
            | Action::DeleteBack
            | Action::ClearLine
            | Action::Yes
            | Action::No
            | Action::PlanFromImportance => {}
            Action::CycleTheme => {
                if !self.themes.is_empty() {
                    self.theme = (self.theme + 1) % self.themes.len();
                    let name = self.theme().name;
                    self.say(true, format!("theme {name}"));
                }
                return vec![Effect::Redraw];
            }
            Action::Refresh => return vec![Effect::Redraw],
            Action::Expand => {
                if let Some(e) = self.current_experiment().cloned() {
                    let out = crate::layout::DataDir::at(&self.data_dir)
                        .expanded()
                        .join(&e.name);
                    return self.start_job(
                        format!("expanding {} (with verification)", e.name),
                        Work::Expand {
                            experiment: e.name,
                            path: e.path,
                            out,
                        },
                    );
                }
            }
            Action::Export => {
                if let Some(r) = self.current_run().cloned() {
                    let out = crate::layout::DataDir::at(&self.data_dir)
                        .exports()
                        .join(&r.id);
                    return self.start_job(
                        format!("exporting {}", r.id),
                        Work::ExportRun { run: r.id, out },
                    );
                }
            }
            Action::Importance => {
                if let Some(e) = self.current_experiment().cloned() {
                    return self.start_job(
                        format!("measuring block importance for {}", e.name),
                        Work::Importance {
                            name: e.name,
                            path: e.path,
                            base: e.base,
                        },
                    );
                }
            }
            Action::Evaluate => {
                if let Some(r) = self.current_run().cloned() {
                    return self.start_job(
                        format!("evaluating {}'s newest checkpoint", r.id),
                        Work::EvaluateRun(r.id),
                    );
                }
            }
            Action::CancelJob => {
                // The newest job that can be stopped.
                match self
                    .jobs
                    .iter_mut()
                    .rev()
                    .find_map(|j| j.cancel.clone().map(|c| (j, c)))
                {
                    Some((job, cancel)) => {
                        job.cancelling = true;
                        let id = job.id;
                        let label = job.label.clone();
                        self.say(true, format!("cancelling {label}"));
                        return vec![Effect::CancelJob { id, cancel }];
                    }
                    None => self.say(false, "no job is running"),
                }
            }
        }
        Vec::new()
    }

    /// Registers a job and asks the runtime to start it.
    fn start_job(&mut self, label: String, work: Work) -> Vec<Effect> {
        let id = JobId(self.next_job);
        self.next_job += 1;
        self.jobs.push(Job {
            id,
            label,
            cancel: None,
            cancelling: false,
        });
        vec![Effect::Job { id, work }]
    }

    /// Removes job `id` from the registry (its end arrived); returns it.
    fn end_job(&mut self, id: JobId) -> Option<Job> {
        let index = self.jobs.iter().position(|j| j.id == id)?;
        Some(self.jobs.remove(index))
    }

    /// `d` on the compare screen: the marked run's experiment against the selected run's.
    fn diff_marked_run(&mut self) -> Vec<Effect> {
        let (Some(marked), Some(selected)) = (self.compare.marked.clone(), self.compare_run())
        else {
            let key = self.keymap.keys_of(Context::Compare, Action::Mark, "space");
            self.say(
                false,
                format!("mark a run first ({key}), then d on another"),
            );
            return Vec::new();
        };
        let read = |id: &str| {
            crate::core::corpus::read_settings(
                &crate::layout::DataDir::at(&self.data_dir)
                    .runs()
                    .join(id)
                    .join("experiment.toml"),
                "experiment",
            )
        };
        match (read(&marked), read(&selected)) {
            (Ok(a), Ok(b)) => {
                self.say(true, format!("{marked} → {selected}"));
                self.popup = Some(Popup::Diff {
                    lines: line_diff(&a, &b),
                    scroll: 0,
                });
            }
            (Err(e), _) | (_, Err(e)) => self.say(false, e.to_string()),
        }
        Vec::new()
    }

    /// Moves the monitor's cursor: a step left or right among the logged steps (it starts at
    /// the newest), a heatmap row up or down.
    fn move_cursor(&mut self, action: Action) {
        let Some(data) = self.monitored.as_ref().and_then(|id| self.run_data.get(id)) else {
            return;
        };
        let steps: Vec<u64> = data.series.steps.iter().map(|s| s.step).collect();
        let Some(&newest) = steps.last() else {
            self.say(false, "no step logged yet: the cursor has nothing to read");
            return;
        };
        let rows = data.series.blocks.len();
        let at = self.monitor.cursor.unwrap_or(newest);
        let index = steps
            .iter()
            .position(|s| *s >= at)
            .unwrap_or(steps.len() - 1);
        match action {
            Action::CursorLeft if self.monitor.cursor.is_some() => {
                self.monitor.cursor = Some(steps[index.saturating_sub(1)]);
            }
            Action::CursorRight if self.monitor.cursor.is_some() => {
                self.monitor.cursor = Some(steps[(index + 1).min(steps.len() - 1)]);
            }
            Action::CursorUp => self.monitor.cursor_row = self.monitor.cursor_row.saturating_sub(1),
            Action::CursorDown => {
                self.monitor.cursor_row = (self.monitor.cursor_row + 1).min(rows.saturating_sub(1));
            }
            _ => {}
        }
        if self.monitor.cursor.is_none() {
            self.monitor.cursor = Some(at);
        }
    }

    /// The log lines of the monitored run.
    fn monitored_log_len(&self) -> usize {
        self.monitored
            .as_ref()
            .and_then(|id| self.run_data.get(id))
            .map_or(0, |d| d.log.len())
    }

    /// Scrolls the log to a line matching the search (case-insensitive): `0` the newest match
    /// at or above the bottom line, `1` the next older one, `-1` the next newer one.
    fn log_search_from(&mut self, direction: i8) {
        let needle = self.log_view.search.to_lowercase();
        let Some(data) = self.monitored.as_ref().and_then(|id| self.run_data.get(id)) else {
            return;
        };
        if needle.is_empty() || data.log.is_empty() {
            return;
        }
        let len = data.log.len();
        let bottom = len - 1 - self.log_view.scroll.min(len - 1);
        let hit = |i: &usize| data.log[*i].to_lowercase().contains(&needle);
        let found = match direction {
            0 => (0..=bottom).rev().find(hit),
            d if d > 0 => (0..bottom).rev().find(hit),
            _ => (bottom + 1..len).find(hit),
        };
        if let Some(i) = found {
            self.log_view.scroll = len - 1 - i;
        } else {
            let what = if direction < 0 { "newer" } else { "older" };
            self.say(false, format!("no {what} log line matches {needle:?}"));
        }
    }

    fn move_selection(&mut self, action: Action) {
        if self.screen == Screen::Monitor {
            let last = self.monitored_log_len().saturating_sub(1);
            let scroll = &mut self.log_view.scroll;
            *scroll = match action {
                Action::Up => *scroll + 1,
                Action::Down => scroll.saturating_sub(1),
                Action::PageUp => *scroll + 10,
                Action::PageDown => scroll.saturating_sub(10),
                Action::Top => last,
                _ => 0,
            }
            .min(last);
            return;
        }
        let (len, index) = match self.screen {
            Screen::Experiments => (
                self.visible_experiments().len(),
                &mut self.selected_experiment,
            ),
            Screen::Runs => (self.runs.len(), &mut self.selected_run),
            Screen::Study => (
                self.study.as_ref().map_or(0, |s| s.strategies.len()),
                &mut self.study_row,
            ),
            Screen::Compare => (self.compare.visible().len(), &mut self.compare.selected),
            _ => return,
        };
        if len == 0 {
            return;
        }
        *index = match action {
            Action::Up => index.saturating_sub(1),
            Action::Down => (*index + 1).min(len - 1),
            Action::PageUp => index.saturating_sub(10),
            Action::PageDown => (*index + 10).min(len - 1),
            Action::Top => 0,
            _ => len - 1,
        };
    }
}

/// The base model's config, if the model is in the data directory.
#[must_use]
pub fn base_config(data_dir: &Path, base: &str) -> Option<LlamaConfig> {
    let path = crate::fetch::resolve_model_path(data_dir, base).join("config.json");
    let text = std::fs::read_to_string(&path).ok()?;
    LlamaConfig::from_json_str(&text, &path).ok()
}

/// A line diff of two texts: `  `, `- `, `+ ` prefixes (the `similar` crate's Myers diff, with
/// a time limit so that two large unrelated files cannot stall the console).
#[must_use]
pub fn line_diff(a: &str, b: &str) -> Vec<String> {
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_millis(200))
        .diff_lines(a, b);
    diff.iter_all_changes()
        .map(|change| {
            let sign = match change.tag() {
                similar::ChangeTag::Equal => ' ',
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
            };
            format!("{sign} {}", change.value().trim_end_matches(['\n', '\r']))
        })
        .collect()
}

/// A job's result as text lines (the popup shows them, tests read them).
#[must_use]
pub fn outcome_lines(outcome: &JobOutcome) -> Vec<String> {
    match outcome {
        JobOutcome::Expanded { summary, .. } => {
            let mut lines = vec![format!(
                "wrote {} ({} blocks, {} tensors)",
                summary.out.display(),
                summary.blocks,
                summary.tensors
            )];
            match &summary.verification {
                None => lines.push("not verified".into()),
                Some(v) => {
                    let same = |d: f32| if d == 0.0 { "identical" } else { "DIFFERENT" };
                    lines.push(format!("verified on {} tokens:", v.sample_tokens));
                    lines.push(format!(
                        "  insertion only vs base:  max |Δlogit| {:e} ({})",
                        v.identity_max_abs_diff,
                        same(v.identity_max_abs_diff)
                    ));
                    lines.push(format!(
                        "  written vs plan:         max |Δlogit| {:e} ({})",
                        v.written_max_abs_diff,
                        if v.written_exact {
                            same(v.written_max_abs_diff)
                        } else {
                            "dtype changed: rounding only"
                        }
                    ));
                    lines.push(format!(
                        "  perplexity: base {:.3} → expanded {:.3} ({:+.1}%)",
                        v.base_perplexity,
                        v.expanded_perplexity,
                        (v.expanded_perplexity / v.base_perplexity - 1.0) * 100.0
                    ));
                    lines.push(if summary.pruned.is_empty() {
                        "  nothing pruned: the change is the new blocks' (none if identical)".into()
                    } else {
                        format!(
                            "  pruning blocks {:?} accounts for the change",
                            summary.pruned
                        )
                    });
                    lines.push(if v.passed() {
                        "passed".into()
                    } else {
                        "FAILED: the expansion does not keep the base model's function".into()
                    });
                }
            }
            lines
        }
        JobOutcome::Previewed { preview, .. } => preview.describe(),
        JobOutcome::Evaluated { record, .. } => {
            let mut lines = vec![format!(
                "checkpoint at step {} ({})",
                record.step, record.label
            )];
            for p in &record.ppl {
                lines.push(format!(
                    "  {:<24} perplexity {:>9.3}   bits/byte {:.4}",
                    p.name, p.perplexity, p.bits_per_byte
                ));
            }
            for t in &record.tasks {
                lines.push(format!(
                    "  {:<24} acc {:.3}   acc_norm {:.3}   (n={})",
                    t.name, t.acc, t.acc_norm, t.items
                ));
            }
            if record.ppl.is_empty() && record.tasks.is_empty() {
                lines.push("  the run has no evaluation sets".into());
            }
            lines
        }
    }
}
