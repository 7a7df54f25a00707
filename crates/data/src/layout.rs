//! The data directory's layout, spelled once: every place slayer keeps something under it.
//! Callers hold the directory as a `&Path` (it comes from `--data-dir`, `SLAYER_HOME` or the
//! default) and name what they want through [`DataDir`], never by a literal.

use std::path::{Path, PathBuf};

/// A data directory, and the paths under it.
#[derive(Debug, Clone, Copy)]
pub struct DataDir<'a>(&'a Path);

impl<'a> DataDir<'a> {
    #[must_use]
    pub fn at(root: &'a Path) -> Self {
        Self(root)
    }

    #[must_use]
    pub fn root(self) -> &'a Path {
        self.0
    }

    /// `runs/<id>/`: one directory per run (the record; see `runner`).
    #[must_use]
    pub fn runs(self) -> PathBuf {
        self.0.join("runs")
    }

    /// `experiments/*.toml`: the user's experiments.
    #[must_use]
    pub fn experiments(self) -> PathBuf {
        self.0.join("experiments")
    }

    /// `models/<name>/`: fetched and imported models.
    #[must_use]
    pub fn models(self) -> PathBuf {
        self.0.join("models")
    }

    /// `downloads/`: packages a fetch keeps (the demo model's wheel).
    #[must_use]
    pub fn downloads(self) -> PathBuf {
        self.0.join("downloads")
    }

    /// `chats/<id>.json`: chat transcripts.
    #[must_use]
    pub fn chats(self) -> PathBuf {
        self.0.join("chats")
    }

    /// `chat_history`: the CLI chat's line history.
    #[must_use]
    pub fn chat_history(self) -> PathBuf {
        self.0.join("chat_history")
    }

    /// `store/`: the index over everything (see `store`).
    #[must_use]
    pub fn store(self) -> PathBuf {
        self.0.join("store")
    }

    /// `studies/<name>/`: a study's saved definition, cell experiments and cell map.
    #[must_use]
    pub fn studies(self) -> PathBuf {
        self.0.join("studies")
    }

    /// `cache/tokens/`: tokenised corpora, keyed on the tokenizer's content and the texts.
    #[must_use]
    pub fn token_cache(self) -> PathBuf {
        self.0.join("cache").join("tokens")
    }

    /// `expanded/<experiment>/`: models the console's `E` writes.
    #[must_use]
    pub fn expanded(self) -> PathBuf {
        self.0.join("expanded")
    }

    /// `exports/<run>/`: models the console's `X` writes.
    #[must_use]
    pub fn exports(self) -> PathBuf {
        self.0.join("exports")
    }

    /// `importance/`: the console's importance reports and suggested plans.
    #[must_use]
    pub fn importance(self) -> PathBuf {
        self.0.join("importance")
    }

    /// `keymap.toml`: the console's key bindings.
    #[must_use]
    pub fn keymap(self) -> PathBuf {
        self.0.join("keymap.toml")
    }

    /// `themes/*.toml`: the user's console themes.
    #[must_use]
    pub fn themes(self) -> PathBuf {
        self.0.join("themes")
    }

    /// `logs/`: tracing logs (the console's and the CLI's).
    #[must_use]
    pub fn logs(self) -> PathBuf {
        self.0.join("logs")
    }
}
