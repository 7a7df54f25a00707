//! Evaluation with lm-evaluation-harness conventions: multiple-choice accuracy (`acc`,
//! `acc_norm`) from continuation log-likelihoods, and perplexity and bits per byte on text.
//!
//! Scoring a choice (lm-eval `_encode_pair`): trailing spaces of the context move to the front
//! of the continuation; the continuation is `target_delimiter + choice` (default " "); context
//! and continuation are tokenised together and the continuation tokens are `whole[len(ctx):]`,
//! with the context tokenised alone. `acc` takes the choice of largest summed log-likelihood,
//! `acc_norm` of largest log-likelihood per character of the choice.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{KvCache, Llama};
use crate::tokenizer::Tokenizer;

/// One multiple-choice item, as a line of a task JSONL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McItem {
    pub context: String,
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub gold: usize,
    /// Put between context and choice (default " ").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_delimiter: Option<String>,
    /// Few-shot examples placed before the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A multiple-choice set to evaluate: its name in reports, and where each item came from, so a
/// failure while scoring an item names its file and line.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSet {
    pub name: String,
    /// The task file, when the items were read from one.
    pub source: Option<PathBuf>,
    /// (1-based line in `source`, item).
    pub items: Vec<(usize, McItem)>,
}

impl TaskSet {
    /// A generated set (no file behind it): items are numbered from 1.
    #[must_use]
    pub fn generated(name: &str, items: &[McItem]) -> Self {
        Self {
            name: name.to_string(),
            source: None,
            items: items
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, m)| (i + 1, m))
                .collect(),
        }
    }

    /// `e`, raised while scoring the item at `line`, with the place it came from.
    fn locate(&self, line: usize, e: &Error) -> Error {
        match &self.source {
            Some(path) => Error::format(path, format!("line {line}: {e}")),
            None => Error::Invalid(format!("task `{}` item {line}: {e}", self.name)),
        }
    }
}

/// Reads a task file: one JSON item per line (blank lines allowed). Errors name `file:line`.
pub fn read_task(path: &Path, name: &str) -> Result<TaskSet> {
    // Task sets can be large (a whole benchmark): no settings-file limit.
    let text = crate::corpus::read_text_file(path, "task file", None)?;
    let items = parse_task(&text)
        .map_err(|(line, msg)| Error::format(path, format!("line {line}: {msg}")))?;
    Ok(TaskSet {
        name: name.to_string(),
        source: Some(path.to_path_buf()),
        items,
    })
}

/// Scores every item of `set`; an item that cannot be scored (longer than the model's context,
/// say) is an error naming its file and line.
pub fn score_set(model: &Llama, tokenizer: &Tokenizer, set: &TaskSet) -> Result<Vec<ItemScore>> {
    set.items
        .iter()
        .map(|(line, item)| score_item(model, tokenizer, item).map_err(|e| set.locate(*line, &e)))
        .collect()
}

/// Parses task JSONL text into (1-based line, item); errors carry the 1-based line.
pub fn parse_task(text: &str) -> std::result::Result<Vec<(usize, McItem)>, (usize, String)> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: McItem = serde_json::from_str(line).map_err(|e| (i + 1, e.to_string()))?;
        if item.choices.len() < 2 {
            return Err((
                i + 1,
                format!("{} choices: an item needs at least two", item.choices.len()),
            ));
        }
        if item.gold >= item.choices.len() {
            return Err((
                i + 1,
                format!(
                    "gold index {} is out of range for {} choices",
                    item.gold,
                    item.choices.len()
                ),
            ));
        }
        items.push((i + 1, item));
    }
    if items.is_empty() {
        return Err((1, "no items".into()));
    }
    Ok(items)
}

/// Context and continuation token ids, lm-eval style.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = tokenizer.encode(&format!("{trimmed}{continuation}"), false)?;
    let ctx = tokenizer.encode(trimmed, false)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// Per-choice scores of one item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemScore {
    pub loglikelihoods: Vec<f64>,
    /// Whether each choice is the greedy continuation.
    pub greedy: Vec<bool>,
    pub pred: usize,
    pub pred_norm: usize,
    pub gold: usize,
}

/// Accuracy over a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McResult {
    pub items: usize,
    pub acc: f64,
    pub acc_norm: f64,
    pub acc_stderr: f64,
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?.to_vec2()?)
}

/// The log-probability of `token` in a row of the model's output; a token beyond the row (a
/// tokenizer larger than the model, which loading refuses) is an error, not a panic.
fn logprob(row: &[f32], token: u32) -> Result<f32> {
    row.get(token as usize).copied().ok_or_else(|| {
        Error::Invalid(format!(
            "token id {token} is outside the model's vocabulary of {}",
            row.len()
        ))
    })
}

fn argmax(v: &[f32]) -> usize {
    crate::generate::argmax(v) as usize
}

/// Scores every choice of `item`; the context is run once and its KV cache shared by the choices.
pub fn score_item(model: &Llama, tokenizer: &Tokenizer, item: &McItem) -> Result<ItemScore> {
    let context = format!("{}{}", item.prefix.as_deref().unwrap_or(""), item.context);
    let delimiter = item.target_delimiter.as_deref().unwrap_or(" ");
    let device = model.device();
    let pairs = item
        .choices
        .iter()
        .map(|choice| encode_pair(tokenizer, &context, &format!("{delimiter}{choice}")))
        .collect::<Result<Vec<_>>>()?;
    // The context is tokenised alone, so it is the same for every choice.
    let mut ctx = pairs.first().map(|(c, _)| c.clone()).unwrap_or_default();
    if ctx.is_empty() {
        // lm-eval scores a context-free continuation after the end-of-text token.
        ctx.push(tokenizer.eos_ids().first().copied().unwrap_or(0));
    }
    let mut ctx_cache = KvCache::new(model.blocks.len());
    let ctx_logits = model.forward_step(
        &Tensor::new(ctx.as_slice(), device)?.unsqueeze(0)?,
        &mut ctx_cache,
    )?;
    let ctx_row = log_softmax_rows(&ctx_logits)?;
    // Every choice's continuation after its first token, in one batch: right-padded, so the
    // causal mask keeps the padding out of the real positions.
    let longest = pairs.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let cont_rows: Vec<Vec<Vec<f32>>> = if longest > 1 {
        let width = longest - 1;
        let batch: Vec<u32> = pairs
            .iter()
            .flat_map(|(_, c)| {
                let rest = c.get(..c.len().saturating_sub(1)).unwrap_or_default();
                rest.iter()
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(width)
                    .collect::<Vec<_>>()
            })
            .collect();
        let ids = Tensor::from_vec(batch, (pairs.len(), width), device)?;
        let mut cache = ctx_cache.repeat_batch(pairs.len())?;
        let hidden = model.forward_hidden(&ids, Some(&mut cache))?;
        let logits = model.logits(&hidden)?;
        (0..pairs.len())
            .map(|i| log_softmax_rows(&logits.get(i)?))
            .collect::<Result<_>>()?
    } else {
        vec![Vec::new(); pairs.len()]
    };
    let mut lls = Vec::with_capacity(item.choices.len());
    let mut greedy = Vec::with_capacity(item.choices.len());
    for ((_, cont), extra) in pairs.iter().zip(cont_rows) {
        if cont.is_empty() {
            lls.push(0.0);
            greedy.push(true);
            continue;
        }
        let mut rows = ctx_row.clone();
        rows.extend(extra.into_iter().take(cont.len() - 1));
        let mut ll = 0.0;
        let mut is_greedy = true;
        for (row, &tok) in rows.iter().zip(cont) {
            ll += f64::from(logprob(row, tok)?);
            is_greedy &= argmax(row) == tok as usize;
        }
        lls.push(ll);
        greedy.push(is_greedy);
    }
    let best = |score: &dyn Fn(usize) -> f64| {
        (0..lls.len()).fold(0, |b, i| if score(i) > score(b) { i } else { b })
    };
    let pred = best(&|i| lls[i]);
    let pred_norm = best(&|i| lls[i] / item.choices[i].chars().count().max(1) as f64);
    Ok(ItemScore {
        loglikelihoods: lls,
        greedy,
        pred,
        pred_norm,
        gold: item.gold,
    })
}

/// Accuracy of `scores`; the standard error is that of a mean of 0/1 outcomes (lm-eval's).
#[must_use]
pub fn summarize(scores: &[ItemScore]) -> McResult {
    if scores.is_empty() {
        return McResult {
            items: 0,
            acc: 0.0,
            acc_norm: 0.0,
            acc_stderr: 0.0,
        };
    }
    let n = scores.len() as f64;
    let acc = scores.iter().filter(|s| s.pred == s.gold).count() as f64 / n;
    let acc_norm = scores.iter().filter(|s| s.pred_norm == s.gold).count() as f64 / n;
    let acc_stderr = if scores.len() > 1 {
        (acc * (1.0 - acc) / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    McResult {
        items: scores.len(),
        acc,
        acc_norm,
        acc_stderr,
    }
}

/// Perplexity of a text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PplResult {
    pub tokens: usize,
    pub bytes: usize,
    /// −Σ log-likelihood (nats).
    pub nll: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

/// Perplexity and bits per byte of `text`, every token scored: the first after the end-of-text
/// token, the rest in disjoint windows of at most `max_len` predictions, each window seeing the
/// token before it (lm-eval's rolling windows with context length 1).
pub fn perplexity(
    model: &Llama,
    tokenizer: &Tokenizer,
    text: &str,
    max_len: usize,
) -> Result<PplResult> {
    let ids = tokenizer.encode_long(text, usize::MAX)?;
    perplexity_ids(model, tokenizer, &ids, text.len(), max_len)
}

/// [`perplexity`] of already tokenised text of `bytes` UTF-8 bytes.
pub fn perplexity_ids(
    model: &Llama,
    tokenizer: &Tokenizer,
    ids: &[u32],
    bytes: usize,
    max_len: usize,
) -> Result<PplResult> {
    if ids.is_empty() {
        return Err(Error::Invalid("no tokens to score".into()));
    }
    let start = tokenizer.eos_ids().first().copied().unwrap_or(0);
    let mut seq = Vec::with_capacity(ids.len() + 1);
    seq.push(start);
    seq.extend_from_slice(ids);
    let window = max_len.min(model.max_positions() - 1).max(1);
    let mut nll = 0.0;
    let mut pos = 0;
    while pos < ids.len() {
        let end = (pos + window).min(ids.len());
        let input = Tensor::new(&seq[pos..end], model.device())?.unsqueeze(0)?;
        let rows = log_softmax_rows(&model.forward(&input)?.squeeze(0)?)?;
        for (row, &tok) in rows.iter().zip(&seq[pos + 1..=end]) {
            nll -= f64::from(logprob(row, tok)?);
        }
        pos = end;
    }
    Ok(PplResult {
        tokens: ids.len(),
        bytes,
        nll,
        perplexity: (nll / ids.len() as f64).exp(),
        bits_per_byte: nll / (bytes as f64 * std::f64::consts::LN_2),
    })
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values are the point")]
mod tests {
    use super::*;

    #[test]
    fn task_errors_name_the_line() {
        let err = parse_task("{\"context\":\"a\",\"choices\":[\"x\",\"y\"],\"gold\":0}\n\n{\"context\":\"b\",\"choices\":[\"x\",\"y\"],\"gold\":2}\n").unwrap_err();
        assert_eq!(err.0, 3);
        assert!(err.1.contains("gold index 2"));
        assert_eq!(parse_task("{\"context\":1}").unwrap_err().0, 1);
        assert!(
            parse_task("{\"context\":\"a\",\"choices\":[\"x\",\"y\"],\"gold\":0,\"extra\":1}")
                .is_err()
        );
        assert!(parse_task("\n\n").unwrap_err().1.contains("no items"));
    }

    #[test]
    fn summary_matches_hand_counts() {
        let s = |pred, pred_norm, gold| ItemScore {
            loglikelihoods: vec![],
            greedy: vec![],
            pred,
            pred_norm,
            gold,
        };
        let r = summarize(&[s(0, 1, 0), s(1, 1, 1), s(2, 0, 1), s(0, 0, 3)]);
        assert_eq!(r.acc, 0.5);
        assert_eq!(r.acc_norm, 0.25);
        assert!((r.acc_stderr - (0.25f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
