//! Text corpora: reading files with errors that name the file and what is wrong, and cutting the
//! token stream into fixed-length samples.

use std::path::Path;

use crate::core::error::{Error, Result};
use crate::core::tokenizer::Tokenizer;

/// Reads a UTF-8 text file; an empty or whitespace-only file is an error.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::format(
            path,
            format!("not UTF-8 text: invalid byte sequence at byte {at}"),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Error::format(path, "the corpus is empty"));
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
    let ids = tokenizer.encode(text, false)?;
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
