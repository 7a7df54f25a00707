//! Training data: corpora as text files, directories of them, or JSONL with a `text` field;
//! tokenised (cached on disk), split into train and held-out documents deterministically, and
//! packed into fixed-length sequences with end-of-text separators.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Reads the documents of a corpus path: a `.jsonl` file (one `{"text": …}` per line), a text
/// file (documents separated by blank lines), or a directory of such files (sorted by name).
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(std::result::Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e == "txt" || e == "jsonl" || e == "md")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::format(
                path,
                "the directory holds no .txt, .md or .jsonl files",
            ));
        }
        let mut docs = Vec::new();
        for f in files {
            docs.extend(read_documents(&f)?);
        }
        return Ok(docs);
    }
    let text = crate::corpus::read_text(path)?;
    let docs: Vec<String> = if path.extension().is_some_and(|e| e == "jsonl") {
        let mut docs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
            let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                Error::format(path, format!("line {}: no string field `text`", i + 1))
            })?;
            docs.push(t.to_string());
        }
        docs
    } else {
        text.split("\n\n")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect()
    };
    if docs.is_empty() {
        return Err(Error::format(path, "the corpus has no documents"));
    }
    Ok(docs)
}

/// Whether document `index` belongs to the held-out split: SHA-256 of (a tag, seed, index), so
/// the split is stable when documents are appended and the same on every build (std's
/// `DefaultHasher` may change between Rust releases; SHA-256 is specified).
#[must_use]
pub fn is_heldout(index: usize, seed: u64, fraction: f64) -> bool {
    let digest = Sha256::new()
        .chain_update(b"slayer held-out split v1")
        .chain_update(seed.to_le_bytes())
        .chain_update((index as u64).to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first) % 1_000_000) as f64 / 1e6 < fraction
}

/// The key of a token cache: SHA-256 of the tokenizer's whole content and of the texts (each
/// length-prefixed, so no two lists of texts share one).
fn cache_key(tokenizer: &Tokenizer, docs: &[String]) -> Result<String> {
    let mut hash = Sha256::new().chain_update(b"slayer token cache v1");
    hash.update(tokenizer.content_fingerprint()?);
    for doc in docs {
        hash.update((doc.len() as u64).to_le_bytes());
        hash.update(doc.as_bytes());
    }
    Ok(hash
        .finalize()
        .iter()
        .take(16)
        .fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        }))
}

/// Tokenised documents, cached under `cache_dir` by a hash of the tokenizer's content and the
/// texts (`cache_key`).
pub fn tokenize_documents(
    tokenizer: &Tokenizer,
    docs: &[String],
    cache_dir: Option<&Path>,
) -> Result<Vec<Vec<u32>>> {
    let key = match cache_dir {
        Some(_) => cache_key(tokenizer, docs)?,
        None => String::new(),
    };
    let cache_file = cache_dir.map(|d| d.join(format!("{key}.tokens.json")));
    if let Some(f) = &cache_file
        && let Ok(text) = std::fs::read_to_string(f)
        && let Ok(ids) = serde_json::from_str::<Vec<Vec<u32>>>(&text)
        && ids.len() == docs.len()
    {
        return Ok(ids);
    }
    let ids = docs
        .iter()
        .map(|d| tokenizer.encode_long(d, usize::MAX))
        .collect::<Result<Vec<_>>>()?;
    if let (Some(f), Some(dir)) = (&cache_file, cache_dir) {
        // A cache write failure only costs time next run.
        let _ = std::fs::create_dir_all(dir);
        let tmp = f.with_extension("partial");
        if std::fs::write(&tmp, serde_json::to_vec(&ids).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(ids)
}

/// Concatenates documents with `separator` after each and cuts the stream into sequences of
/// `len` tokens (the last partial one is dropped).
#[must_use]
pub fn pack(docs: &[Vec<u32>], separator: u32, len: usize) -> Vec<Vec<u32>> {
    let mut stream = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for d in docs {
        stream.extend_from_slice(d);
        stream.push(separator);
    }
    stream.chunks_exact(len).map(<[u32]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_separates_documents_and_drops_the_tail() {
        let packed = pack(&[vec![1, 2, 3], vec![4, 5]], 0, 3);
        assert_eq!(packed, vec![vec![1, 2, 3], vec![0, 4, 5]]);
    }

    /// The first held-out indices for seed 7 at 10 %, computed independently with Python's
    /// hashlib (sha256 of the tag, seed and index as little-endian u64s).
    const PINNED_FIRST_HELDOUT: [usize; 5] = [14, 31, 38, 51, 54];

    #[test]
    fn heldout_split_is_deterministic_and_near_the_fraction() {
        let picks: Vec<bool> = (0..10_000).map(|i| is_heldout(i, 7, 0.1)).collect();
        assert_eq!(
            picks,
            (0..10_000)
                .map(|i| is_heldout(i, 7, 0.1))
                .collect::<Vec<_>>()
        );
        let share = picks.iter().filter(|p| **p).count() as f64 / 1e4;
        assert!((share - 0.1).abs() < 0.02, "{share}");
        // Pinned: the split is SHA-256's, the same on every build and Rust release.
        let first: Vec<usize> = (0..200)
            .filter(|&i| is_heldout(i, 7, 0.1))
            .take(5)
            .collect();
        assert_eq!(first, PINNED_FIRST_HELDOUT);
    }

    #[test]
    fn documents_from_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "one\n\n\ntwo\nlines\n\n").unwrap();
        assert_eq!(read_documents(&txt).unwrap(), vec!["one", "two\nlines"]);
        let jsonl = dir.path().join("b.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"x\"}\n{\"nope\": 1}\n").unwrap();
        let err = read_documents(&jsonl).unwrap_err().to_string();
        assert!(err.contains("b.jsonl") && err.contains("line 2"), "{err}");
        assert!(
            read_documents(dir.path())
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
    }
}
