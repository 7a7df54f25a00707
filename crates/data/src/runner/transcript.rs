//! Chat transcripts: `chats/<id>.json` under the data directory, rewritten atomically after every
//! turn, so a closed terminal loses at most the answer being generated. Like run directories
//! they are the record; the store only indexes them.

use std::path::{Path, PathBuf};

use crate::error::{Because as _, IoContext as _, Result};
use serde::{Deserialize, Serialize};

/// A model taking part in a chat, and the run it came from when known (lineage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatModel {
    /// What the user named.
    pub label: String,
    /// The directory or file loaded.
    pub path: String,
    /// The run that trained it: the model lies in a run directory, or is an export of one.
    pub run: Option<String>,
    /// The quantisation its matrices were loaded with (older transcripts: none recorded).
    #[serde(default)]
    pub quant: slayer_engine::model::Quant,
}

/// One model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// Index into [`Transcript::models`].
    pub model: usize,
    pub text: String,
    pub tokens: usize,
    pub tokens_per_sec: f64,
    /// Why generation stopped (eos, max tokens, stopped, context full).
    pub stop: String,
}

/// A user message and every model's answer to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTurn {
    pub time: f64,
    pub user: String,
    pub replies: Vec<ChatReply>,
}

/// A whole conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub id: String,
    /// Seconds since the Unix epoch.
    pub started: f64,
    pub models: Vec<ChatModel>,
    pub system: Option<String>,
    /// The settings every answer was sampled with (a transcript can be replayed).
    #[serde(default)]
    pub sampling: slayer_engine::generate::SamplingParams,
    pub turns: Vec<ChatTurn>,
}

/// The run a model path belongs to: a path inside `runs/<id>/`, or an export carrying a
/// `slayer-lineage.json` that names its run.
#[must_use]
pub fn run_of_model(data_dir: &Path, model: &Path) -> Option<String> {
    let runs = crate::layout::DataDir::at(data_dir).runs();
    let abs = model.canonicalize().ok()?;
    if let Ok(runs) = runs.canonicalize()
        && let Ok(rel) = abs.strip_prefix(&runs)
    {
        return rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
    }
    let dir = if abs.is_dir() {
        abs
    } else {
        abs.parent()?.to_path_buf()
    };
    let text = std::fs::read_to_string(dir.join(LINEAGE_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("run")?.as_str().map(str::to_string)
}

/// Transcripts started by this process: with the pid, it makes ids unique (/reset starts a new
/// transcript, possibly within the same second).
static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The largest transcript read (tens of thousands of turns): a bigger file is refused, not
/// read into memory.
pub const MAX_TRANSCRIPT_BYTES: u64 = 64 << 20;

/// Written into an exported model directory: which run and step it came from.
pub const LINEAGE_FILE: &str = "slayer-lineage.json";

impl Transcript {
    /// A new, empty transcript with a fresh id.
    #[must_use]
    pub fn new(
        models: Vec<ChatModel>,
        system: Option<String>,
        sampling: slayer_engine::generate::SamplingParams,
    ) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!(
            "{}-{}-{n}",
            slayer_engine::text::utc_stamp(),
            std::process::id()
        );
        Self {
            id,
            started,
            models,
            system,
            sampling,
            turns: Vec::new(),
        }
    }

    /// The runs whose models took part (recorded, or found from the model paths).
    #[must_use]
    pub fn runs(&self, data_dir: &Path) -> Vec<String> {
        self.models
            .iter()
            .filter_map(|m| {
                m.run
                    .clone()
                    .or_else(|| run_of_model(data_dir, Path::new(&m.path)))
            })
            .collect()
    }

    #[must_use]
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        chats_dir(data_dir).join(format!("{}.json", self.id))
    }

    /// Writes the transcript (replacing the previous version in one step).
    pub fn save(&self, data_dir: &Path) -> Result<PathBuf> {
        let dir = chats_dir(data_dir);
        std::fs::create_dir_all(&dir).io("create", &dir)?;
        let path = self.path(data_dir);
        let json = serde_json::to_vec_pretty(self)
            .because(|| format!("cannot write the transcript {}", path.display()))?;
        slayer_engine::atomic::replace_file(&path, &json)?;
        Ok(path)
    }

    /// Reads a transcript: a regular file of at most [`MAX_TRANSCRIPT_BYTES`], in the format
    /// [`Transcript::save`] writes; anything else is an error naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = slayer_engine::corpus::read_text_file(
            path,
            "chat transcript",
            Some(MAX_TRANSCRIPT_BYTES),
        )?;
        serde_json::from_str(&text)
            .because(|| format!("{}: not a slayer chat transcript", path.display()))
    }
}

#[must_use]
pub fn chats_dir(data_dir: &Path) -> PathBuf {
    crate::layout::DataDir::at(data_dir).chats()
}

/// Every transcript file under the data directory, sorted by name (oldest first).
#[must_use]
pub fn list_transcripts(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(chats_dir(data_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    out
}
