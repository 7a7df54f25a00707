//! Text corpora: reading files with errors that name the file and what is wrong, and cutting the
//! token stream into fixed-length samples.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The largest settings file read (a plan, experiment, study, task list or mergekit YAML):
/// anything larger is not one, and is refused before it is read.
pub const MAX_SETTINGS_BYTES: u64 = 16 << 20;

/// Reads a UTF-8 corpus; an empty or whitespace-only file is an error.
pub fn read_text(path: &Path) -> Result<String> {
    read_text_file(path, "corpus", None)
}

/// Reads a UTF-8 settings file (`what` names it in messages: "plan", "experiment", …), at most
/// [`MAX_SETTINGS_BYTES`]; an empty file is an error.
pub fn read_settings(path: &Path, what: &str) -> Result<String> {
    read_text_file(path, what, Some(MAX_SETTINGS_BYTES))
}

/// Reads a UTF-8 text file that must be a regular, non-empty file of at most `limit` bytes;
/// `what` names it in messages.
pub fn read_text_file(path: &Path, what: &str, limit: Option<u64>) -> Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    // A device or a pipe (/dev/zero, a FIFO) would be read without end.
    if !meta.is_file() {
        return Err(Error::format(
            path,
            format!("not a regular file: a {what} is read from a file"),
        ));
    }
    if let Some(limit) = limit
        && meta.len() > limit
    {
        return Err(Error::format(
            path,
            format!(
                "{} bytes is too large for a {what} file (at most {} MiB)",
                meta.len(),
                limit >> 20
            ),
        ));
    }
    let mut bytes = Vec::new();
    // The length read is bounded by what the file held when opened, in case it grows meanwhile.
    file.take(limit.unwrap_or(u64::MAX).min(meta.len()))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::format(
            path,
            format!("not UTF-8 text: invalid byte sequence at byte {at}"),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Error::format(path, format!("the {what} is empty")));
    }
    Ok(text)
}

/// Tokenises `text` and cuts it into up to `samples` windows of exactly `seq_len` tokens.
/// Fewer windows are returned when the text is shorter; none is an error naming `path`.
pub fn token_windows(
    tokenizer: &Tokenizer,
    text: &str,
    samples: usize,
    seq_len: usize,
    path: &Path,
) -> Result<Vec<Vec<u32>>> {
    if seq_len < 2 {
        return Err(Error::Invalid(format!(
            "sequence length {seq_len} is too short (at least 2)"
        )));
    }
    let ids = tokenizer.encode_long(text, samples.saturating_mul(seq_len))?;
    let windows: Vec<Vec<u32>> = ids
        .chunks_exact(seq_len)
        .take(samples)
        .map(<[u32]>::to_vec)
        .collect();
    if windows.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "the corpus has {} tokens, fewer than one sample of {seq_len}",
                ids.len()
            ),
        ));
    }
    Ok(windows)
}
