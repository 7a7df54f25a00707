//! The keymap: one table of key → action → description per context. Key handling looks actions
//! up here and the help screen is generated from it, so the two cannot drift. A user's
//! `<data>/keymap.toml` rebinds keys (`[keys] "ctrl-s" = "save"`, optionally per context:
//! `[editor] ...`).

use std::collections::BTreeMap;
use std::path::Path;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything a key can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Quit,
    Help,
    CommandLine,
    Filter,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Open,
    Back,
    FocusNext,
    FocusPrev,
    Yes,
    No,
    ScreenExperiments,
    ScreenRuns,
    ScreenMonitor,
    ScreenChat,
    ScreenStudy,
    ScreenCompare,
    Mark,
    ColumnLeft,
    ColumnRight,
    PreviewData,
    CursorLeft,
    CursorRight,
    CursorUp,
    CursorDown,
    NextCorpus,
    NewExperiment,
    DuplicateExperiment,
    DeleteExperiment,
    EditPlan,
    Train,
    TrainOnSlurm,
    Stop,
    Kill,
    Resume,
    Save,
    Revert,
    Diff,
    LogScale,
    Zoom,
    HeatMetric,
    Overlay,
    Chat,
    Compose,
    Send,
    Cancel,
    DeleteBack,
    ClearLine,
    CycleTheme,
    Refresh,
    Expand,
    Export,
    CancelJob,
    Importance,
    PlanFromImportance,
    Evaluate,
    Search,
    NextMatch,
    PreviousMatch,
    Alerts,
}

impl Action {
    /// The name used in keymap.toml and `:` commands.
    #[must_use]
    pub fn name(self) -> &'static str {
        ACTION_NAMES
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("?", |(_, n)| n)
    }

    /// Whether the action means something in `context`: keymap.toml may bind it there.
    #[must_use]
    pub fn fits(self, context: Context) -> bool {
        match self {
            Self::Yes | Self::No | Self::PlanFromImportance => context == Context::Popup,
            Self::Send | Self::DeleteBack | Self::ClearLine => context == Context::Input,
            Self::Compose => context == Context::Chat,
            Self::Cancel => matches!(context, Context::Chat | Context::Input),
            Self::Save | Self::Revert => context == Context::Editor,
            Self::Diff => matches!(context, Context::Editor | Context::Compare),
            Self::Mark | Self::ColumnLeft | Self::ColumnRight => context == Context::Compare,
            Self::Search => context == Context::Monitor,
            Self::CursorLeft | Self::CursorRight | Self::CursorUp | Self::CursorDown => {
                context == Context::Monitor
            }
            Self::Up
            | Self::Down
            | Self::PageUp
            | Self::PageDown
            | Self::Top
            | Self::Bottom
            | Self::Open
            | Self::Back
            | Self::FocusNext
            | Self::FocusPrev
            | Self::Refresh => true,
            // Screen actions: anywhere but in a popup, which answers only its own keys.
            _ => context != Context::Popup,
        }
    }

    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        ACTION_NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(a, _)| *a)
    }
}

const ACTION_NAMES: &[(Action, &str)] = &[
    (Action::Quit, "quit"),
    (Action::Help, "help"),
    (Action::CommandLine, "command_line"),
    (Action::Filter, "filter"),
    (Action::Up, "up"),
    (Action::Down, "down"),
    (Action::PageUp, "page_up"),
    (Action::PageDown, "page_down"),
    (Action::Top, "top"),
    (Action::Bottom, "bottom"),
    (Action::Open, "open"),
    (Action::Back, "back"),
    (Action::FocusNext, "focus_next"),
    (Action::FocusPrev, "focus_prev"),
    (Action::Yes, "yes"),
    (Action::No, "no"),
    (Action::ScreenExperiments, "experiments"),
    (Action::ScreenRuns, "runs"),
    (Action::ScreenMonitor, "monitor"),
    (Action::ScreenChat, "chat_screen"),
    (Action::ScreenStudy, "study_screen"),
    (Action::ScreenCompare, "compare"),
    (Action::Mark, "mark"),
    (Action::ColumnLeft, "column_left"),
    (Action::ColumnRight, "column_right"),
    (Action::PreviewData, "preview"),
    (Action::CursorLeft, "cursor_left"),
    (Action::CursorRight, "cursor_right"),
    (Action::CursorUp, "cursor_up"),
    (Action::CursorDown, "cursor_down"),
    (Action::NextCorpus, "next_corpus"),
    (Action::NewExperiment, "new"),
    (Action::DuplicateExperiment, "duplicate"),
    (Action::DeleteExperiment, "delete"),
    (Action::EditPlan, "plan"),
    (Action::Train, "train"),
    (Action::TrainOnSlurm, "train_slurm"),
    (Action::Stop, "stop"),
    (Action::Kill, "kill"),
    (Action::Resume, "resume"),
    (Action::Save, "save"),
    (Action::Revert, "revert"),
    (Action::Diff, "diff"),
    (Action::LogScale, "log_scale"),
    (Action::Zoom, "zoom"),
    (Action::HeatMetric, "heat_metric"),
    (Action::Overlay, "overlay"),
    (Action::Chat, "chat"),
    (Action::Compose, "compose"),
    (Action::Send, "send"),
    (Action::Cancel, "cancel"),
    (Action::DeleteBack, "delete_back"),
    (Action::ClearLine, "clear_line"),
    (Action::CycleTheme, "theme"),
    (Action::Refresh, "refresh"),
    (Action::Expand, "expand"),
    (Action::Export, "export"),
    (Action::CancelJob, "cancel_job"),
    (Action::Importance, "importance"),
    (Action::PlanFromImportance, "plan_from_importance"),
    (Action::Evaluate, "eval"),
    (Action::Search, "search"),
    (Action::NextMatch, "next_match"),
    (Action::PreviousMatch, "previous_match"),
    (Action::Alerts, "alerts"),
];

/// Where a binding applies. Every key is looked up in exactly one context: the open popup,
/// else the text field being typed in, else the plan editor, else the screen (whose bindings
/// fall back to [`Context::Global`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Context {
    /// Every screen (not the plan editor, a popup or a text field).
    Global,
    Experiments,
    Editor,
    Runs,
    Monitor,
    Chat,
    Study,
    /// The runs comparison table.
    Compare,
    /// Any popup: help, confirmations, pickers, the diff, importance.
    Popup,
    /// A text field: the `:` line, the filter, the chat input, a name prompt.
    Input,
}

impl Context {
    pub const ALL: [Self; 10] = [
        Self::Global,
        Self::Experiments,
        Self::Editor,
        Self::Runs,
        Self::Monitor,
        Self::Chat,
        Self::Study,
        Self::Compare,
        Self::Popup,
        Self::Input,
    ];

    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Self::Global => "every screen",
            Self::Experiments => "experiments",
            Self::Editor => "plan editor",
            Self::Runs => "runs",
            Self::Monitor => "run monitor",
            Self::Chat => "chat",
            Self::Study => "study",
            Self::Compare => "compare runs",
            Self::Popup => "in a popup",
            Self::Input => "typing in a field (the : line, / filter, chat input, a name)",
        }
    }

    /// What keys without a binding do here, for the help.
    #[must_use]
    pub fn unbound_keys(self) -> Option<&'static str> {
        match self {
            Self::Editor => Some("other keys edit the text (tab indents, ctrl-u undoes)"),
            Self::Input => Some("other keys type into the field"),
            Self::Popup => Some("other keys do nothing"),
            Self::Experiments
            | Self::Runs
            | Self::Monitor
            | Self::Chat
            | Self::Study
            | Self::Compare => Some("and the keys of every screen"),
            Self::Global => None,
        }
    }

    /// Whether keys this context does not bind are looked up among the global ones.
    #[must_use]
    pub fn falls_back_to_global(self) -> bool {
        !matches!(
            self,
            Self::Global | Self::Editor | Self::Popup | Self::Input
        )
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.config_name() == name)
    }

    /// The section name in keymap.toml.
    #[must_use]
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Global => "keys",
            Self::Experiments => "experiments",
            Self::Editor => "editor",
            Self::Runs => "runs",
            Self::Monitor => "monitor",
            Self::Chat => "chat",
            Self::Study => "study",
            Self::Compare => "compare",
            Self::Popup => "popup",
            Self::Input => "input",
        }
    }
}

/// A key with its modifiers (shift is folded into the character).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub code: KeyCodeOrd,
    pub ctrl: bool,
    pub alt: bool,
}

/// The key codes bindings use, ordered (crossterm's `KeyCode` is not `Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyCodeOrd {
    Char(char),
    Enter,
    Esc,
    Tab,
    BackTab,
    Backspace,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    F(u8),
}

impl Key {
    #[must_use]
    pub fn from_event(e: &KeyEvent) -> Option<Self> {
        let code = match e.code {
            KeyCode::Char(c) => KeyCodeOrd::Char(c),
            KeyCode::Enter => KeyCodeOrd::Enter,
            KeyCode::Esc => KeyCodeOrd::Esc,
            KeyCode::Tab => KeyCodeOrd::Tab,
            KeyCode::BackTab => KeyCodeOrd::BackTab,
            KeyCode::Backspace => KeyCodeOrd::Backspace,
            KeyCode::Up => KeyCodeOrd::Up,
            KeyCode::Down => KeyCodeOrd::Down,
            KeyCode::Left => KeyCodeOrd::Left,
            KeyCode::Right => KeyCodeOrd::Right,
            KeyCode::PageUp => KeyCodeOrd::PageUp,
            KeyCode::PageDown => KeyCodeOrd::PageDown,
            KeyCode::Home => KeyCodeOrd::Home,
            KeyCode::End => KeyCodeOrd::End,
            KeyCode::F(n) => KeyCodeOrd::F(n),
            _ => return None,
        };
        Some(Self {
            code,
            ctrl: e.modifiers.contains(KeyModifiers::CONTROL),
            alt: e.modifiers.contains(KeyModifiers::ALT),
        })
    }

    /// Parses `q`, `ctrl-s`, `alt-x`, `enter`, `tab`, `pgdn`, `f1`, `?`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ctrl = false;
        let mut alt = false;
        let mut rest = s;
        loop {
            if let Some(r) = rest.strip_prefix("ctrl-") {
                ctrl = true;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("alt-") {
                alt = true;
                rest = r;
            } else {
                break;
            }
        }
        let code = match rest {
            "enter" => KeyCodeOrd::Enter,
            "esc" => KeyCodeOrd::Esc,
            "tab" => KeyCodeOrd::Tab,
            "backtab" | "shift-tab" => KeyCodeOrd::BackTab,
            "backspace" => KeyCodeOrd::Backspace,
            "up" => KeyCodeOrd::Up,
            "down" => KeyCodeOrd::Down,
            "left" => KeyCodeOrd::Left,
            "right" => KeyCodeOrd::Right,
            "pgup" => KeyCodeOrd::PageUp,
            "pgdn" => KeyCodeOrd::PageDown,
            "home" => KeyCodeOrd::Home,
            "end" => KeyCodeOrd::End,
            "space" => KeyCodeOrd::Char(' '),
            f if f.len() > 1 && f.starts_with('f') && f[1..].parse::<u8>().is_ok() => {
                KeyCodeOrd::F(f[1..].parse().unwrap_or(1))
            }
            c if c.chars().count() == 1 => KeyCodeOrd::Char(c.chars().next().unwrap_or(' ')),
            other => return Err(format!("{other:?} is not a key")),
        };
        Ok(Self { code, ctrl, alt })
    }

    /// How the help screen shows the key.
    #[must_use]
    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCodeOrd::Char(' ') => "space".to_string(),
            KeyCodeOrd::Char(c) => c.to_string(),
            KeyCodeOrd::Enter => "enter".into(),
            KeyCodeOrd::Esc => "esc".into(),
            KeyCodeOrd::Tab => "tab".into(),
            KeyCodeOrd::BackTab => "shift-tab".into(),
            KeyCodeOrd::Backspace => "backspace".into(),
            KeyCodeOrd::Up => "↑".into(),
            KeyCodeOrd::Down => "↓".into(),
            KeyCodeOrd::Left => "←".into(),
            KeyCodeOrd::Right => "→".into(),
            KeyCodeOrd::PageUp => "pgup".into(),
            KeyCodeOrd::PageDown => "pgdn".into(),
            KeyCodeOrd::Home => "home".into(),
            KeyCodeOrd::End => "end".into(),
            KeyCodeOrd::F(n) => format!("f{n}"),
        };
        format!(
            "{}{}{base}",
            if self.ctrl { "ctrl-" } else { "" },
            if self.alt { "alt-" } else { "" }
        )
    }
}

/// One row of the keymap.
#[derive(Debug, Clone)]
pub struct Binding {
    pub context: Context,
    pub keys: Vec<Key>,
    pub action: Action,
    pub description: &'static str,
}

/// The default bindings: (context, keys, action, description).
const DEFAULTS: &[(Context, &[&str], Action, &str)] = &[
    (Context::Global, &["?", "f1"], Action::Help, "this help"),
    (
        Context::Global,
        &[":"],
        Action::CommandLine,
        "command line (:runs, :plan, :chat, :theme NAME, :q)",
    ),
    (
        Context::Global,
        &["q"],
        Action::Quit,
        "quit (asks whether to leave runs running)",
    ),
    (
        Context::Global,
        &["1"],
        Action::ScreenExperiments,
        "experiments",
    ),
    (Context::Global, &["2"], Action::ScreenRuns, "runs"),
    (
        Context::Global,
        &["3"],
        Action::ScreenMonitor,
        "run monitor",
    ),
    (Context::Global, &["4"], Action::ScreenChat, "chat"),
    (
        Context::Global,
        &["6"],
        Action::ScreenCompare,
        "compare runs: hyperparameters and metrics as columns",
    ),
    (
        Context::Global,
        &["5"],
        Action::ScreenStudy,
        "study (:study NAME opens one)",
    ),
    (Context::Global, &["k", "up"], Action::Up, "up"),
    (Context::Global, &["j", "down"], Action::Down, "down"),
    (
        Context::Global,
        &["ctrl-u", "pgup"],
        Action::PageUp,
        "page up",
    ),
    (
        Context::Global,
        &["ctrl-d", "pgdn"],
        Action::PageDown,
        "page down",
    ),
    (Context::Global, &["g", "home"], Action::Top, "first"),
    (Context::Global, &["G", "end"], Action::Bottom, "last"),
    (Context::Global, &["tab"], Action::FocusNext, "next screen"),
    (
        Context::Global,
        &["shift-tab"],
        Action::FocusPrev,
        "previous screen",
    ),
    (Context::Global, &["esc"], Action::Back, "back / close"),
    (Context::Global, &["T"], Action::CycleTheme, "next theme"),
    (
        Context::Global,
        &["!"],
        Action::Alerts,
        "alerts of every run: non-finite steps, spikes, plateaus, ends",
    ),
    (
        Context::Global,
        &["ctrl-l"],
        Action::Refresh,
        "redraw the screen",
    ),
    (
        Context::Global,
        &["C"],
        Action::CancelJob,
        "cancel the running job (expand, export)",
    ),
    (
        Context::Experiments,
        &["/"],
        Action::Filter,
        "filter experiments",
    ),
    (
        Context::Experiments,
        &["enter", "e"],
        Action::EditPlan,
        "edit the experiment (plan editor)",
    ),
    (
        Context::Experiments,
        &["n"],
        Action::NewExperiment,
        "new experiment from a template",
    ),
    (
        Context::Experiments,
        &["y"],
        Action::DuplicateExperiment,
        "duplicate",
    ),
    (
        Context::Experiments,
        &["D"],
        Action::DeleteExperiment,
        "delete (asks first)",
    ),
    (
        Context::Experiments,
        &["t"],
        Action::Train,
        "train it (now, or queued behind the device's run)",
    ),
    (
        Context::Experiments,
        &["c"],
        Action::Chat,
        "chat with its newest run",
    ),
    (
        Context::Experiments,
        &["E"],
        Action::Expand,
        "expand it into <data>/expanded/NAME and verify",
    ),
    (
        Context::Experiments,
        &["p"],
        Action::PreviewData,
        "preview its training data: documents as tokens, sequences, epochs",
    ),
    (
        Context::Experiments,
        &["i"],
        Action::Importance,
        "block importance of its base model (then p: a plan from it)",
    ),
    (
        Context::Experiments,
        &["S"],
        Action::TrainOnSlurm,
        "submit it to Slurm as a batch job (resources from its [slurm] table)",
    ),
    (Context::Editor, &["ctrl-s"], Action::Save, "save"),
    (
        Context::Editor,
        &["ctrl-r"],
        Action::Revert,
        "revert to the saved file",
    ),
    (
        Context::Editor,
        &["ctrl-o"],
        Action::Diff,
        "diff against the saved file",
    ),
    (
        Context::Editor,
        &["ctrl-g"],
        Action::CommandLine,
        "command line (:diff NAME compares with another experiment)",
    ),
    (
        Context::Editor,
        &["esc"],
        Action::Back,
        "leave the editor (asks if unsaved)",
    ),
    (Context::Editor, &["f1"], Action::Help, "this help"),
    (
        Context::Editor,
        &["ctrl-l"],
        Action::Refresh,
        "redraw the screen",
    ),
    (Context::Runs, &["enter"], Action::Open, "monitor the run"),
    (
        Context::Runs,
        &["="],
        Action::ScreenCompare,
        "compare the runs side by side",
    ),
    (
        Context::Runs,
        &["s"],
        Action::Stop,
        "stop (checkpoint, then exit)",
    ),
    (Context::Runs, &["K"], Action::Kill, "kill at once"),
    (
        Context::Runs,
        &["r"],
        Action::Resume,
        "resume from the newest checkpoint",
    ),
    (
        Context::Runs,
        &["c"],
        Action::Chat,
        "chat with the run's newest checkpoint",
    ),
    (
        Context::Runs,
        &["o"],
        Action::Overlay,
        "overlay its loss in the monitor",
    ),
    (
        Context::Runs,
        &["X"],
        Action::Export,
        "export its model to <data>/exports/RUN",
    ),
    (
        Context::Runs,
        &["v"],
        Action::Evaluate,
        "evaluate its newest checkpoint on the run's sets",
    ),
    (
        Context::Monitor,
        &["l"],
        Action::LogScale,
        "loss axis: linear / log",
    ),
    (
        Context::Monitor,
        &["z"],
        Action::Zoom,
        "loss window: whole run / recent",
    ),
    (
        Context::Monitor,
        &["h"],
        Action::HeatMetric,
        "heatmap: gradient norm / update ratio",
    ),
    (
        Context::Monitor,
        &["/"],
        Action::Search,
        "search the log (n older match, N newer)",
    ),
    (
        Context::Monitor,
        &["n"],
        Action::NextMatch,
        "log: the next older match",
    ),
    (
        Context::Monitor,
        &["N"],
        Action::PreviousMatch,
        "log: the next newer match",
    ),
    (
        Context::Monitor,
        &["k", "up"],
        Action::Up,
        "log: a line back",
    ),
    (
        Context::Monitor,
        &["j", "down"],
        Action::Down,
        "log: a line forward",
    ),
    (
        Context::Monitor,
        &["ctrl-u", "pgup"],
        Action::PageUp,
        "log: a page back",
    ),
    (
        Context::Monitor,
        &["ctrl-d", "pgdn"],
        Action::PageDown,
        "log: a page forward",
    ),
    (
        Context::Monitor,
        &["g", "home"],
        Action::Top,
        "log: the oldest line",
    ),
    (
        Context::Monitor,
        &["G", "end"],
        Action::Bottom,
        "log: the newest line (and follow)",
    ),
    (
        Context::Monitor,
        &["["],
        Action::CursorLeft,
        "cursor: a step back (reads loss and heatmap there)",
    ),
    (
        Context::Monitor,
        &["]"],
        Action::CursorRight,
        "cursor: a step on",
    ),
    (
        Context::Monitor,
        &["{"],
        Action::CursorUp,
        "cursor: the heatmap row above",
    ),
    (
        Context::Monitor,
        &["}"],
        Action::CursorDown,
        "cursor: the heatmap row below",
    ),
    (Context::Monitor, &["s"], Action::Stop, "stop the run"),
    (Context::Monitor, &["r"], Action::Resume, "resume the run"),
    (
        Context::Study,
        &["enter"],
        Action::Open,
        "monitor the strategy's seeds, overlaid",
    ),
    (Context::Study, &["c"], Action::NextCorpus, "next corpus"),
    (
        Context::Study,
        &["l"],
        Action::LogScale,
        "loss axis: linear / log",
    ),
    (
        Context::Compare,
        &["h", "left"],
        Action::ColumnLeft,
        "the column to the left",
    ),
    (
        Context::Compare,
        &["l", "right"],
        Action::ColumnRight,
        "the column to the right",
    ),
    (
        Context::Compare,
        &["enter", "s"],
        Action::Open,
        "sort by the column (again: the other way)",
    ),
    (Context::Compare, &["/"], Action::Filter, "filter the runs"),
    (
        Context::Compare,
        &["space"],
        Action::Mark,
        "mark the run (then d: diff with another)",
    ),
    (
        Context::Compare,
        &["d"],
        Action::Diff,
        "diff the marked run's experiment with this one's",
    ),
    (
        Context::Compare,
        &["o"],
        Action::Overlay,
        "overlay its loss in the monitor",
    ),
    (Context::Compare, &["c"], Action::Chat, "chat with the run"),
    (
        Context::Chat,
        &["enter", "i"],
        Action::Compose,
        "type a message (or /reset, /system, /temperature …)",
    ),
    (
        Context::Chat,
        &["ctrl-c"],
        Action::Cancel,
        "stop the generation",
    ),
    (Context::Popup, &["esc", "q"], Action::Back, "close"),
    (
        Context::Popup,
        &["enter"],
        Action::Open,
        "choose the highlighted option",
    ),
    (Context::Popup, &["k", "up"], Action::Up, "up (scroll)"),
    (
        Context::Popup,
        &["j", "down"],
        Action::Down,
        "down (scroll)",
    ),
    (
        Context::Popup,
        &["ctrl-u", "pgup"],
        Action::PageUp,
        "page up",
    ),
    (
        Context::Popup,
        &["ctrl-d", "pgdn", "space"],
        Action::PageDown,
        "page down",
    ),
    (Context::Popup, &["g", "home"], Action::Top, "to the top"),
    (Context::Popup, &["G", "end"], Action::Bottom, "to the end"),
    (
        Context::Popup,
        &["tab", "right", "l"],
        Action::FocusNext,
        "next option (importance: next metric)",
    ),
    (
        Context::Popup,
        &["shift-tab", "left", "h"],
        Action::FocusPrev,
        "previous option (importance: previous metric)",
    ),
    (
        Context::Popup,
        &["y"],
        Action::Yes,
        "yes (delete; reload from disk)",
    ),
    (
        Context::Popup,
        &["n"],
        Action::No,
        "no (keep the experiment; keep your edits)",
    ),
    (
        Context::Popup,
        &["p"],
        Action::PlanFromImportance,
        "importance: an experiment whose plan follows it",
    ),
    (
        Context::Popup,
        &["ctrl-l"],
        Action::Refresh,
        "redraw the screen",
    ),
    (
        Context::Input,
        &["enter"],
        Action::Send,
        "run the command, send the message, keep the filter or name",
    ),
    (
        Context::Input,
        &["esc"],
        Action::Back,
        "leave the field (the filter is cleared)",
    ),
    (
        Context::Input,
        &["ctrl-c"],
        Action::Cancel,
        "chat: stop the generation; elsewhere leave the field",
    ),
    (
        Context::Input,
        &["backspace"],
        Action::DeleteBack,
        "delete the last character (the : line closes when empty)",
    ),
    (
        Context::Input,
        &["ctrl-u"],
        Action::ClearLine,
        "clear the field",
    ),
    (
        Context::Input,
        &["ctrl-l"],
        Action::Refresh,
        "redraw the screen",
    ),
];

/// The active bindings.
#[derive(Debug, Clone)]
pub struct Keymap {
    pub bindings: Vec<Binding>,
}

impl Default for Keymap {
    fn default() -> Self {
        Self {
            bindings: DEFAULTS
                .iter()
                .map(|(context, keys, action, description)| Binding {
                    context: *context,
                    keys: keys.iter().filter_map(|k| Key::parse(k).ok()).collect(),
                    action: *action,
                    description,
                })
                .collect(),
        }
    }
}

impl Keymap {
    /// The action of `key` in `context`: its own bindings, then (for a screen) the global ones.
    #[must_use]
    pub fn lookup(&self, context: Context, key: Key) -> Option<Action> {
        let find = |ctx: Context| {
            self.bindings
                .iter()
                .find(|b| b.context == ctx && b.keys.contains(&key))
                .map(|b| b.action)
        };
        find(context).or_else(|| {
            if context.falls_back_to_global() {
                find(Context::Global)
            } else {
                None
            }
        })
    }

    /// The keys of `action` in `context` as the help shows them ("y", "esc q"), for hints in
    /// popups and titles; `fallback` when the user unbound every one.
    #[must_use]
    pub fn keys_of(&self, context: Context, action: Action, fallback: &str) -> String {
        let mut labels = self
            .bindings
            .iter()
            .filter(|b| b.context == context && b.action == action)
            .flat_map(|b| b.keys.iter().map(Key::label));
        match labels.next() {
            Some(first) => labels.fold(first, |all, k| format!("{all}/{k}")),
            None => fallback.to_string(),
        }
    }

    /// The default keymap with the overrides of a keymap.toml text applied: each entry binds a
    /// key to an action in a context, replacing that key's previous binding there.
    pub fn with_overrides(text: &str) -> Result<Self, String> {
        let table: BTreeMap<String, BTreeMap<String, String>> =
            toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut map = Self::default();
        for (section, entries) in table {
            let context = Context::from_name(&section).ok_or_else(|| {
                format!(
                    "[{section}]: not a context (keys, experiments, editor, runs, monitor, chat, study, popup, input)"
                )
            })?;
            for (key, action) in entries {
                let key = Key::parse(&key).map_err(|e| format!("[{section}]: {e}"))?;
                for b in &mut map.bindings {
                    if b.context == context {
                        b.keys.retain(|k| *k != key);
                    }
                }
                // `"enter" = "none"` only unbinds the key.
                if action == "none" {
                    continue;
                }
                let action = Action::from_name(&action).ok_or_else(|| {
                    format!("[{section}]: {action:?} is not an action (or \"none\")")
                })?;
                if !action.fits(context) {
                    return Err(format!(
                        "[{section}]: {:?} does nothing in {}",
                        action.name(),
                        context.title()
                    ));
                }
                if let Some(b) = map
                    .bindings
                    .iter_mut()
                    .find(|b| b.context == context && b.action == action)
                {
                    b.keys.insert(0, key);
                } else {
                    let description = map
                        .bindings
                        .iter()
                        .find(|b| b.action == action)
                        .map_or("", |b| b.description);
                    map.bindings.push(Binding {
                        context,
                        keys: vec![key],
                        action,
                        description,
                    });
                }
            }
        }
        Ok(map)
    }

    /// Loads `<data>/keymap.toml` if present; a bad file falls back to the defaults with the
    /// problem returned for display.
    #[must_use]
    pub fn load(data_dir: &Path) -> (Self, Option<String>) {
        let path = crate::layout::DataDir::at(data_dir).keymap();
        // No file, or an empty one: no overrides.
        if std::fs::metadata(&path).map_or(true, |m| m.is_file() && m.len() == 0) {
            return (Self::default(), None);
        }
        // An unreadable file (not UTF-8, a directory, too large) is said, not silently ignored.
        match crate::core::corpus::read_settings(&path, "keymap") {
            Err(e) => (Self::default(), Some(e.to_string())),
            Ok(text) => match Self::with_overrides(&text) {
                Ok(map) => (map, None),
                Err(e) => (Self::default(), Some(format!("{}: {e}", path.display()))),
            },
        }
    }

    /// The help text's rows, by context in [`Context::ALL`] order: (keys, description), as
    /// bound now (overrides included), then what unbound keys do there.
    #[must_use]
    pub fn help_rows(&self) -> Vec<(Context, Vec<(String, &'static str)>)> {
        Context::ALL
            .into_iter()
            .map(|context| {
                let mut rows: Vec<(String, &'static str)> = self
                    .bindings
                    .iter()
                    .filter(|b| b.context == context && !b.keys.is_empty())
                    .map(|b| {
                        let keys = b.keys.iter().map(Key::label).collect::<Vec<_>>();
                        (keys.join(" "), b.description)
                    })
                    .collect();
                if let Some(note) = context.unbound_keys() {
                    rows.push(("…".to_string(), note));
                }
                (context, rows)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn every_default_key_parses_and_every_action_has_a_name() {
        for (context, keys, action, _) in DEFAULTS {
            for k in *keys {
                Key::parse(k).unwrap();
            }
            assert_eq!(Action::from_name(action.name()), Some(*action));
            assert!(action.fits(*context), "{action:?} in {context:?}");
        }
        // No key is bound twice in one context (the second binding could never fire).
        let map = Keymap::default();
        for context in Context::ALL {
            let mut keys: Vec<Key> = map
                .bindings
                .iter()
                .filter(|b| b.context == context)
                .flat_map(|b| b.keys.clone())
                .collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), n, "a key bound twice in {context:?}");
        }
    }

    #[test]
    fn keys_are_looked_up_in_one_context() {
        let map = Keymap::default();
        let k = |s: &str| Key::parse(s).unwrap();
        // Screens fall back to the keys of every screen; the editor, popups and fields do not.
        assert_eq!(map.lookup(Context::Runs, k("q")), Some(Action::Quit));
        assert_eq!(map.lookup(Context::Editor, k("q")), None);
        assert_eq!(map.lookup(Context::Editor, k("tab")), None);
        assert_eq!(map.lookup(Context::Popup, k("G")), Some(Action::Bottom));
        assert_eq!(map.lookup(Context::Input, k("j")), None);
        assert_eq!(
            map.lookup(Context::Editor, k("ctrl-g")),
            Some(Action::CommandLine)
        );
        assert_eq!(map.keys_of(Context::Popup, Action::Back, "esc"), "esc/q");
    }

    #[test]
    fn unbinding_and_misplaced_actions() {
        let map = Keymap::with_overrides("[input]\n\"enter\" = \"none\"\n\"ctrl-j\" = \"send\"\n")
            .unwrap();
        let k = |s: &str| Key::parse(s).unwrap();
        assert_eq!(map.lookup(Context::Input, k("enter")), None);
        assert_eq!(map.lookup(Context::Input, k("ctrl-j")), Some(Action::Send));
        let err = Keymap::with_overrides("[runs]\n\"x\" = \"send\"\n").unwrap_err();
        assert!(err.contains("[runs]") && err.contains("send"), "{err}");
        let err = Keymap::with_overrides("[popup]\n\"x\" = \"train\"\n").unwrap_err();
        assert!(err.contains("popup"), "{err}");
    }

    #[test]
    fn overrides_rebind_and_bad_files_are_named() {
        let map =
            Keymap::with_overrides("[editor]\n\"ctrl-w\" = \"save\"\n[keys]\n\"x\" = \"quit\"\n")
                .unwrap();
        let k = |s: &str| Key::parse(s).unwrap();
        assert_eq!(map.lookup(Context::Editor, k("ctrl-w")), Some(Action::Save));
        assert_eq!(map.lookup(Context::Editor, k("ctrl-s")), Some(Action::Save));
        assert_eq!(map.lookup(Context::Runs, k("x")), Some(Action::Quit));
        assert!(
            Keymap::with_overrides("[keys]\n\"x\" = \"fly\"\n")
                .unwrap_err()
                .contains("fly")
        );
        assert!(
            Keymap::with_overrides("[nowhere]\n")
                .unwrap_err()
                .contains("nowhere")
        );
    }
}
