//! Training data: corpora as text files, directories of them, or JSONL with a `text` field;
//! tokenised (cached on disk), split into train and held-out documents deterministically, and
//! packed into fixed-length sequences with end-of-text separators.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::core::error::{Error, Result};
use crate::core::tokenizer::Tokenizer;

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
    let text = crate::core::corpus::read_text(path)?;
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

/// Whether document `index` belongs to the held-out split: a hash of (seed, index), so the split
/// is stable when documents are appended.
#[must_use]
pub fn is_heldout(index: usize, seed: u64, fraction: f64) -> bool {
    let mut h = DefaultHasher::new();
    (seed, index as u64, "heldout").hash(&mut h);
    (h.finish() % 1_000_000) as f64 / 1e6 < fraction
}

/// Tokenised documents, cached under `cache_dir` by a hash of the texts and the tokenizer's
/// vocabulary size and special ids.
pub fn tokenize_documents(
    tokenizer: &Tokenizer,
    docs: &[String],
    cache_dir: Option<&Path>,
) -> Result<Vec<Vec<u32>>> {
    let mut h = DefaultHasher::new();
    docs.hash(&mut h);
    tokenizer.vocab_size().hash(&mut h);
    tokenizer.eos_ids().hash(&mut h);
    let key = format!("{:016x}", h.finish());
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
