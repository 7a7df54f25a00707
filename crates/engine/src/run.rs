//! One experiment run, headless: prepare data and evaluation sets, evaluate the base model,
//! expand, evaluate step 0, train, evaluate the result, report through an [`EventSink`]. The
//! runner layer decides where the run directory is and where events go.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;

use crate::checkpoint::{WeightSource, load_model};
use crate::data::{is_heldout, pack, read_documents, tokenize_documents};
use crate::error::{Error, Result};
use crate::eval::{self, McItem};
use crate::events::{
    EvalRecord, EventKind, EventSink, PplRecord, RunStatus, SampleRecord, TaskRecord,
};

/// Questions of the first task set answered as samples when the experiment names none.
const DEFAULT_SAMPLES: usize = 3;
use crate::experiment::{Before, Experiment};
use crate::model::Llama;
use crate::plan::LayerMap;
use crate::tokenizer::Tokenizer;
use crate::train::{self, Outcome, Trainer};
use crate::{surgery, synth};

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub checkpoints: PathBuf,
    /// Generated data (synth-facts) for this run.
    pub data: PathBuf,
    /// Shared token cache.
    pub token_cache: Option<PathBuf>,
}

impl RunPaths {
    #[must_use]
    pub fn new(dir: &Path, token_cache: Option<PathBuf>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            checkpoints: dir.join("checkpoints"),
            data: dir.join("data"),
            token_cache,
        }
    }
}

/// The sets a model is evaluated on.
#[derive(Debug, Clone, Default)]
pub struct EvalSuite {
    /// (name, token ids, byte length of the scored text).
    pub ppl: Vec<(String, Vec<u32>, usize)>,
    pub tasks: Vec<eval::TaskSet>,
    pub window: usize,
    /// Prompts answered greedily at every evaluation, with the answer expected if known.
    pub samples: Vec<(String, Option<String>)>,
    pub sample_tokens: usize,
}

impl EvalSuite {
    /// Adds a perplexity set, truncated to `max_tokens`.
    pub fn add_text(
        &mut self,
        name: &str,
        text: &str,
        tokenizer: &Tokenizer,
        max_tokens: usize,
    ) -> Result<()> {
        let ids = tokenizer.encode_long(text, max_tokens)?;
        let bytes = tokenizer.decode(&ids, false)?.len();
        if !ids.is_empty() {
            self.ppl.push((name.to_string(), ids, bytes));
        }
        Ok(())
    }

    /// Evaluates `model` on every set.
    pub fn run(
        &self,
        model: &Llama,
        tokenizer: &Tokenizer,
        label: &str,
        step: u64,
    ) -> Result<EvalRecord> {
        let mut ppl = Vec::new();
        for (name, ids, bytes) in &self.ppl {
            let r = eval::perplexity_ids(model, tokenizer, ids, *bytes, self.window)?;
            ppl.push(PplRecord {
                name: name.clone(),
                tokens: r.tokens,
                perplexity: r.perplexity,
                bits_per_byte: r.bits_per_byte,
            });
        }
        let mut tasks = Vec::new();
        for set in &self.tasks {
            let scores = eval::score_set(model, tokenizer, set)?;
            let r = eval::summarize(&scores);
            tasks.push(TaskRecord {
                name: set.name.clone(),
                items: r.items,
                acc: r.acc,
                acc_norm: r.acc_norm,
                acc_stderr: r.acc_stderr,
            });
        }
        let samples = self
            .samples
            .iter()
            .map(|(prompt, expected)| {
                Ok(SampleRecord {
                    prompt: prompt.clone(),
                    text: greedy(model, tokenizer, prompt, self.sample_tokens)?,
                    expected: expected.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EvalRecord {
            label: label.to_string(),
            step,
            ppl,
            tasks,
            samples,
            quant: model.quant(),
        })
    }
}

/// The greedy continuation of `prompt`, at most `max_tokens` tokens, up to an end-of-text.
fn greedy(model: &Llama, tokenizer: &Tokenizer, prompt: &str, max_tokens: usize) -> Result<String> {
    let ids = tokenizer.encode(prompt, true)?;
    if ids.is_empty() || max_tokens == 0 {
        return Ok(String::new());
    }
    let mut sampler = crate::generate::Sampler::new(crate::generate::SamplingParams {
        temperature: 0.0,
        ..crate::generate::SamplingParams::default()
    })?;
    let mut cache = crate::model::KvCache::new(model.blocks.len());
    let never = AtomicBool::new(false);
    let (out, _) = crate::generate::generate(
        model,
        &mut cache,
        &ids,
        &mut sampler,
        crate::generate::StopConditions {
            max_tokens,
            eos_ids: tokenizer.eos_ids(),
            cancel: &never,
        },
        |_| Ok(()),
    )?;
    Ok(tokenizer.decode(&out, true)?.trim_end().to_string())
}

fn file_label(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// Reads the training corpus (and writes synth-facts into `paths.data` when asked), splits it,
/// packs the training part and builds the evaluation suite.
pub fn prepare(
    exp: &Experiment,
    tokenizer: &Tokenizer,
    paths: &RunPaths,
) -> Result<(Vec<Vec<u32>>, EvalSuite)> {
    let mut docs = Vec::new();
    let mut suite = EvalSuite {
        window: exp.eval.window,
        ..EvalSuite::default()
    };
    if let Some(s) = &exp.data.synth {
        let facts = synth::generate(s.entities, s.seed);
        write_synth(&facts, &paths.data)?;
        docs.extend(facts.train.iter().cloned());
        suite
            .tasks
            .push(eval::TaskSet::generated("facts", &facts.probe));
        suite
            .tasks
            .push(eval::TaskSet::generated("control", &facts.control));
        suite.add_text("general", &facts.general, tokenizer, exp.eval.max_tokens)?;
    }
    for path in &exp.data.train {
        docs.extend(read_documents(path)?);
    }
    let ids = tokenize_documents(tokenizer, &docs, paths.token_cache.as_deref())?;
    let (mut train_docs, mut heldout_text) = (Vec::new(), String::new());
    for (i, (doc_ids, text)) in ids.into_iter().zip(&docs).enumerate() {
        // Synth biographies all train: their probe is the held-out measure.
        if exp.data.synth.is_none() && is_heldout(i, exp.data.split_seed, exp.data.heldout_fraction)
        {
            heldout_text.push_str(text);
            heldout_text.push_str("\n\n");
        } else {
            train_docs.push(doc_ids);
        }
    }
    if exp.eval.heldout && !heldout_text.is_empty() {
        suite.add_text("heldout", &heldout_text, tokenizer, exp.eval.max_tokens)?;
    }
    for path in &exp.eval.ppl {
        let text = crate::corpus::read_text(path)?;
        suite.add_text(&file_label(path), &text, tokenizer, exp.eval.max_tokens)?;
    }
    for path in &exp.eval.tasks {
        suite.tasks.push(eval::read_task(path, &file_label(path))?);
    }
    suite.sample_tokens = exp.eval.sample_tokens;
    suite.samples = if exp.eval.sample_tokens == 0 {
        Vec::new()
    } else if exp.eval.samples.is_empty() {
        // The probe's first questions, with the answers training should teach.
        suite.tasks.first().map_or_else(Vec::new, |set| {
            set.items
                .iter()
                .take(DEFAULT_SAMPLES)
                .map(|(_, item)| {
                    let expected = item.choices.get(item.gold).map(|c| c.trim().to_string());
                    (item.context.clone(), expected)
                })
                .collect()
        })
    } else {
        exp.eval.samples.iter().map(|p| (p.clone(), None)).collect()
    };
    let separator = tokenizer.eos_ids().first().copied().unwrap_or(0);
    let seqs = pack(&train_docs, separator, exp.train.seq_len + 1);
    if seqs.is_empty() {
        return Err(Error::Invalid(format!(
            "the training corpus yields no sequence of {} tokens; lower train.seq_len or add text",
            exp.train.seq_len + 1
        )));
    }
    Ok((seqs, suite))
}

/// Writes the generated corpus: `train.jsonl`, `probe.jsonl`, `control.jsonl`, `general.txt`,
/// `entities.json`.
pub fn write_synth(facts: &synth::SynthFacts, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let jsonl = |items: &[serde_json::Value]| {
        items.iter().fold(String::new(), |mut out, v| {
            let _ = writeln!(out, "{v}");
            out
        })
    };
    let train: Vec<serde_json::Value> = facts
        .train
        .iter()
        .map(|t| serde_json::json!({ "text": t }))
        .collect();
    let tasks = |items: &[McItem]| {
        items
            .iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect::<Vec<_>>()
    };
    let files = [
        ("train.jsonl", jsonl(&train)),
        ("probe.jsonl", jsonl(&tasks(&facts.probe))),
        ("control.jsonl", jsonl(&tasks(&facts.control))),
        ("general.txt", facts.general.clone()),
        (
            "entities.json",
            serde_json::to_string_pretty(&facts.entities).unwrap_or_default(),
        ),
    ];
    for (name, content) in files {
        crate::atomic::write_synced(&dir.join(name), content.as_bytes())?;
    }
    Ok(())
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Summary {
    pub status: RunStatus,
    pub evals: Vec<EvalRecord>,
}

/// Where a resumed run continues: the checkpoint the caller chose (see
/// [`train::newest_intact_checkpoint`]; `None` when the run died before its first one) and the
/// evaluations it already recorded.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub checkpoint: Option<PathBuf>,
    pub earlier_evals: Vec<EvalRecord>,
}

/// Runs an experiment end to end, or continues it (`resume`).
#[expect(
    clippy::too_many_arguments,
    reason = "the run's inputs; grouping them adds a type for one caller"
)]
pub fn execute(
    exp: &Experiment,
    base: &dyn WeightSource,
    map: &LayerMap,
    paths: &RunPaths,
    device: &Device,
    sink: &mut dyn EventSink,
    cancel: &AtomicBool,
    resume: Option<Resume>,
    status: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let tokenizer = base.tokenizer().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: the base model has no tokenizer",
            base.location().display()
        ))
    })?;
    // Checked before the corpus is tokenised: a long corpus would be read for nothing.
    let positions = crate::model::rope::Rotary::positions_of(base.config());
    if exp.train.seq_len + 1 > positions {
        return Err(Error::Invalid(format!(
            "{}: train.seq_len = {} exceeds the context of the base model {} (at most {})",
            exp.path.display(),
            exp.train.seq_len,
            base.location().display(),
            positions - 1
        )));
    }
    status("preparing data");
    let (seqs, suite) = prepare(exp, tokenizer, paths)?;
    status(&format!(
        "{} training sequences of {} tokens",
        seqs.len(),
        exp.train.seq_len + 1
    ));
    // f32 on the CPU; bf16 weights and activations on CUDA, with f32 master weights, moments,
    // loss and reductions (see train::AdamW and the model's f32 norms and softmax).
    let dtype = crate::device::default_dtype(device);
    let base_model = load_model(base, dtype, device)?;
    let (checkpoint, mut evals) = match resume {
        Some(r) => {
            train::remove_partial_checkpoints(&paths.checkpoints);
            (r.checkpoint, r.earlier_evals)
        }
        None => (None, Vec::new()),
    };
    let run_eval = |model: &Llama,
                    label: &str,
                    step: u64,
                    sink: &mut dyn EventSink,
                    evals: &mut Vec<EvalRecord>,
                    status: &mut dyn FnMut(&str)|
     -> Result<()> {
        status(&format!("evaluating ({label}, step {step})"));
        let mut frozen = model.clone();
        frozen.freeze_all()?;
        let record = suite.run(&frozen, tokenizer, label, step)?;
        sink.emit(EventKind::Eval(record.clone()))?;
        evals.push(record);
        Ok(())
    };
    // A resumed run keeps the evaluations it already recorded.
    let recorded = |evals: &[EvalRecord], label: &str| evals.iter().any(|e| e.label == label);
    let wanted = |evals: &[EvalRecord], b: Before| {
        exp.eval.before.contains(&b) && !recorded(evals, b.label())
    };
    if wanted(&evals, Before::Base) {
        run_eval(&base_model, "base", 0, sink, &mut evals, status)?;
    }
    let mut model = surgery::apply(&base_model, map)?;
    model.recompute = exp.train.recompute;
    drop(base_model);
    model.prepare_frozen_linears()?;
    if wanted(&evals, Before::Expanded) {
        run_eval(&model, "expanded", 0, sink, &mut evals, status)?;
    }
    let mut trainer = Trainer::new(&model, exp.train.clone(), &paths.checkpoints)?;
    if let Some(checkpoint) = &checkpoint {
        status(&format!("resuming from {}", checkpoint.display()));
        trainer.resume_from(checkpoint)?;
    }
    status("training");
    // Evaluations during training go into the summary too (a stopped run's table shows them).
    let mut during = Vec::new();
    let mut evaluate = |m: &Llama, step: u64, sink: &mut dyn EventSink| -> Result<()> {
        let mut frozen = m.clone();
        frozen.freeze_all()?;
        let record = suite.run(&frozen, tokenizer, "step", step)?;
        sink.emit(EventKind::Eval(record.clone()))?;
        during.push(record);
        Ok(())
    };
    let outcome = trainer.run(&model, &seqs, sink, cancel, &mut evaluate)?;
    evals.extend(during);
    let state = trainer.state;
    if outcome == Outcome::Stopped {
        sink.emit(EventKind::End {
            status: RunStatus::Stopped,
            step: state.step,
            message: "stopped on request; resume with --resume".into(),
        })?;
        sink.sync()?;
        return Ok(Summary {
            status: RunStatus::Stopped,
            evals,
        });
    }
    run_eval(&model, "final", state.step, sink, &mut evals, status)?;
    sink.emit(EventKind::End {
        status: RunStatus::Finished,
        step: state.step,
        message: "finished".into(),
    })?;
    sink.sync()?;
    Ok(Summary {
        status: RunStatus::Finished,
        evals,
    })
}

/// The before/after table: one row per metric, one column per evaluated state.
#[must_use]
pub fn summary_table(evals: &[EvalRecord]) -> String {
    // The reference points (base, expanded at step 0), then the evaluations during training in
    // step order and the final one: the newest few of those when there are many.
    const TRAINING_COLUMNS: usize = 5;
    let mut cols: Vec<&EvalRecord> = ["base", "expanded"]
        .iter()
        .filter_map(|l| evals.iter().rev().find(|e| e.label == *l))
        .collect();
    let mut training: Vec<&EvalRecord> = evals
        .iter()
        .filter(|e| e.label != "base" && e.label != "expanded")
        .collect();
    training.sort_by_key(|e| (e.step, e.label == "final"));
    // A resumed run may evaluate a step again: the later record stands.
    training.dedup_by(|later, earlier| later.step == earlier.step && later.label == earlier.label);
    let hidden = training.len().saturating_sub(TRAINING_COLUMNS);
    cols.extend(training.into_iter().skip(hidden));
    let mut s = String::new();
    if hidden > 0 {
        let _ = writeln!(
            s,
            "({hidden} earlier evaluation{} not shown; `slayer runs export` has them all)",
            if hidden == 1 { "" } else { "s" }
        );
    }
    let _ = write!(s, "{:<28}", "metric");
    for c in &cols {
        let header = match c.label.as_str() {
            "step" => format!("step {}", c.step),
            "expanded" => "step 0".to_string(),
            label => format!("{label} ({})", c.step),
        };
        let _ = write!(s, " {header:>12}");
    }
    s.push('\n');
    let Some(first) = cols.first() else {
        return s;
    };
    for p in &first.ppl {
        for (metric, get) in [
            (
                "perplexity",
                (|r: &PplRecord| r.perplexity) as fn(&PplRecord) -> f64,
            ),
            ("bits/byte", |r: &PplRecord| r.bits_per_byte),
        ] {
            let _ = write!(s, "{:<28}", format!("{} {metric}", p.name));
            for c in &cols {
                let v = c
                    .ppl
                    .iter()
                    .find(|x| x.name == p.name)
                    .map_or(f64::NAN, get);
                let _ = write!(s, " {v:>12.4}");
            }
            s.push('\n');
        }
    }
    for t in &first.tasks {
        for (metric, get) in [
            ("acc", (|r: &TaskRecord| r.acc) as fn(&TaskRecord) -> f64),
            ("acc_norm", |r: &TaskRecord| r.acc_norm),
        ] {
            let _ = write!(s, "{:<28}", format!("{} {metric} (n={})", t.name, t.items));
            for c in &cols {
                let v = c
                    .tasks
                    .iter()
                    .find(|x| x.name == t.name)
                    .map_or(f64::NAN, get);
                let _ = write!(s, " {v:>12.4}");
            }
            s.push('\n');
        }
    }
    s
}

/// What an experiment's training data is, before any training: the first documents as the
/// tokenizer cuts them, and how much the plan's steps will see (`slayer data preview`, the
/// console's `p`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataPreview {
    pub documents: usize,
    pub train_documents: usize,
    pub heldout_documents: usize,
    /// Tokens of the training documents (end-of-text separators included).
    pub train_tokens: usize,
    /// Training sequences of `seq_len + 1` tokens.
    pub sequences: usize,
    pub seq_len: usize,
    /// Sequences one optimizer step consumes: `batch_size × grad_accum`.
    pub sequences_per_step: usize,
    pub steps: u64,
    /// How many times the plan's steps go through the training sequences (`None`: there are
    /// none).
    pub epochs: Option<f64>,
    pub first: Vec<PreviewDocument>,
}

impl DataPreview {
    /// The preview as lines of text (the CLI prints them, the console shows them): counts,
    /// then each document's start and its pieces.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "{} documents: {} train, {} held out; {} training tokens",
                self.documents, self.train_documents, self.heldout_documents, self.train_tokens
            ),
            format!(
                "{} sequences of {} tokens; {} per step × {} steps: {}",
                self.sequences,
                self.seq_len + 1,
                self.sequences_per_step,
                self.steps,
                self.epochs.map_or_else(
                    || "no epoch (the corpus fills no sequence)".to_string(),
                    |e| format!("{e:.2} epochs")
                )
            ),
        ];
        for (i, d) in self.first.iter().enumerate() {
            lines.push(String::new());
            lines.push(format!(
                "document {} ({} tokens{})",
                i + 1,
                d.tokens,
                if d.heldout { ", held out" } else { "" }
            ));
            lines.push(format!("  {}", d.text.replace('\n', " ")));
            lines.push(format!("  {}", d.pieces.join("|")));
        }
        lines
    }
}

/// One document of a preview.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreviewDocument {
    /// The document's start (at most [`PREVIEW_CHARS`] characters).
    pub text: String,
    pub tokens: usize,
    /// Its first tokens as the tokenizer's pieces (at most [`PREVIEW_TOKENS`]).
    pub pieces: Vec<String>,
    pub heldout: bool,
}

/// Characters and tokens of each previewed document shown.
pub const PREVIEW_CHARS: usize = 240;
pub const PREVIEW_TOKENS: usize = 48;

/// The preview of `exp`'s training data with `tokenizer` (the first `documents` shown). Reads
/// the corpus as training would (synth-facts generated in memory), writes nothing.
pub fn preview(exp: &Experiment, tokenizer: &Tokenizer, documents: usize) -> Result<DataPreview> {
    let mut docs = Vec::new();
    if let Some(s) = &exp.data.synth {
        docs.extend(synth::generate(s.entities, s.seed).train);
    }
    for path in &exp.data.train {
        docs.extend(read_documents(path)?);
    }
    let ids = tokenize_documents(tokenizer, &docs, None)?;
    let heldout = |i: usize| {
        exp.data.synth.is_none() && is_heldout(i, exp.data.split_seed, exp.data.heldout_fraction)
    };
    let train: Vec<Vec<u32>> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !heldout(*i))
        .map(|(_, d)| d.clone())
        .collect();
    let separator = tokenizer.eos_ids().first().copied().unwrap_or(0);
    let sequences = pack(&train, separator, exp.train.seq_len + 1).len();
    let per_step = exp.train.batch_size * exp.train.grad_accum;
    let first = docs
        .iter()
        .zip(&ids)
        .enumerate()
        .take(documents)
        .map(|(i, (text, doc_ids))| PreviewDocument {
            text: text.chars().take(PREVIEW_CHARS).collect(),
            tokens: doc_ids.len(),
            pieces: doc_ids
                .iter()
                .take(PREVIEW_TOKENS)
                .map(|&id| {
                    tokenizer
                        .id_to_token(id)
                        .unwrap_or_else(|| format!("<{id}>"))
                })
                .collect(),
            heldout: heldout(i),
        })
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "an epoch count for people")]
    let epochs =
        (sequences > 0).then(|| exp.train.steps as f64 * per_step as f64 / sequences as f64);
    Ok(DataPreview {
        documents: docs.len(),
        train_documents: train.len(),
        heldout_documents: docs.len() - train.len(),
        train_tokens: train.iter().map(|d| d.len() + 1).sum(),
        sequences,
        seq_len: exp.train.seq_len,
        sequences_per_step: per_step,
        steps: exp.train.steps,
        epochs,
        first,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::events::PplRecord;

    fn record(label: &str, step: u64, ppl: f64) -> EvalRecord {
        EvalRecord {
            samples: Vec::new(),
            label: label.into(),
            step,
            ppl: vec![PplRecord {
                name: "held-out".into(),
                tokens: 100,
                perplexity: ppl,
                bits_per_byte: 1.0,
            }],
            tasks: Vec::new(),
            quant: crate::model::Quant::None,
        }
    }

    /// A run stopped after evaluations at steps 25 and 50 shows them (it showed base and
    /// step 0 only); many evaluations show the newest five.
    #[test]
    fn the_summary_shows_evaluations_during_training() {
        let evals = [
            record("base", 0, 9.0),
            record("expanded", 0, 9.5),
            record("step", 25, 7.25),
            record("step", 50, 6.5),
        ];
        let table = summary_table(&evals);
        let header = table.lines().next().unwrap();
        for column in ["base (0)", "step 0", "step 25", "step 50"] {
            assert!(header.contains(column), "{table}");
        }
        assert!(
            table.contains("7.2500") && table.contains("6.5000"),
            "{table}"
        );
        let mut many = vec![record("base", 0, 9.0)];
        many.extend((1..=8).map(|i| record("step", i * 10, 9.0 - i as f64 * 0.5)));
        many.push(record("final", 85, 4.0));
        let table = summary_table(&many);
        assert!(
            table.starts_with("(4 earlier evaluations not shown"),
            "{table}"
        );
        assert!(
            !table.contains("step 40 ") && table.contains("step 50"),
            "{table}"
        );
        assert!(table.contains("final (85)"), "{table}");
    }
}
