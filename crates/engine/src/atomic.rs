//! Durable file writes: every file slayer must not lose or leave half-written (checkpoints'
//! state, event-log companions, transcripts, saved experiments, queue marks) is written through
//! here — fsynced, and replaced by rename so a crash leaves the old file or the new one.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes pretty JSON and fsyncs it.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::format(path, e.to_string()))?;
    write_synced(path, text.as_bytes())
}

/// Replaces `path` with `bytes` as one step: a hidden temporary sibling is written and fsynced,
/// renamed over `path`, and the directory fsynced. A crash leaves the old file or the new one.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    // The process id keeps two processes replacing one file from sharing a temporary.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    write_synced(&tmp, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(dir)
}

/// Writes bytes and fsyncs the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Fsyncs a directory so renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}
