//! `slayer eval MODEL [--ppl FILE]... [--task FILE]...` and `slayer data synth-facts`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use clap::{Args, Subcommand};

use super::model::{quant_choice, resolve_or_fetch};
use crate::core::checkpoint::{load_model, open_source};
use crate::core::device::{self, DeviceChoice};
use crate::core::model::Quant;
use crate::core::run::{EvalSuite, write_synth};
use crate::core::text::sanitize_for_terminal;
use crate::core::{eval, synth};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A model (directory, GGUF, name) or a run: RUN or RUN@STEP evaluates its checkpoint on the run's sets.
    pub model: String,
    /// Text file for perplexity and bits per byte (repeatable).
    #[arg(long)]
    pub ppl: Vec<PathBuf>,
    /// Multiple-choice task JSONL (repeatable).
    #[arg(long)]
    pub task: Vec<PathBuf>,
    /// Tokens scored per perplexity file at most.
    #[arg(long, default_value_t = 16_384, value_parser = super::at_least_one)]
    pub max_tokens: usize,
    /// Tokens in each window of the perplexity computation.
    #[arg(long, default_value_t = 512, value_parser = super::at_least_one)]
    pub window: usize,
    /// Print the evaluation as JSON.
    #[arg(long)]
    pub json: bool,
    /// Weights for inference: none (dense), q8_0, q4_k (default: q8_0 on the CPU, none on CUDA).
    #[arg(long)]
    pub quant: Option<Quant>,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// What an experiment trains on: its first documents as the base model's tokenizer cuts
    /// them, token and sequence counts, and the epochs its steps make.
    Preview {
        /// Experiment file or name.
        experiment: PathBuf,
        /// Documents shown.
        #[arg(long, default_value_t = 3)]
        documents: usize,
        /// Print the preview as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate the fictional-facts corpus and its multiple-choice probe.
    SynthFacts {
        /// Directory to write train.jsonl, probe.jsonl, control.jsonl, general.txt and entities.json to.
        #[arg(long)]
        out: PathBuf,
        /// Entities to invent (at most 2000).
        #[arg(long, default_value_t = 60, value_parser = entity_count)]
        entities: usize,
        /// Seed of the generator (the same seed gives the same corpus).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn entity_count(s: &str) -> std::result::Result<usize, String> {
    let n = super::at_least_one(s)?;
    if n > synth::MAX_ENTITIES {
        return Err(format!("at most {} entities", synth::MAX_ENTITIES));
    }
    Ok(n)
}

pub fn run(args: &EvalArgs, data_dir: &Path, device: DeviceChoice) -> Result<i32> {
    if args.ppl.is_empty()
        && args.task.is_empty()
        && let Some(code) = eval_run_checkpoint(args, data_dir, device)?
    {
        return Ok(code);
    }
    if args.ppl.is_empty() && args.task.is_empty() {
        anyhow::bail!("nothing to evaluate: give --ppl FILE and/or --task FILE.jsonl");
    }
    let source = open_source(&resolve_or_fetch(data_dir, &args.model)?)?;
    let tokenizer = source.tokenizer().context("the model has no tokenizer")?;
    let mut suite = EvalSuite {
        window: args.window,
        ..EvalSuite::default()
    };
    for p in &args.ppl {
        let text = crate::core::corpus::read_text(p)?;
        suite.add_text(&p.display().to_string(), &text, tokenizer, args.max_tokens)?;
    }
    for t in &args.task {
        suite
            .tasks
            .push(eval::read_task(t, &t.display().to_string())?);
    }
    let device = device::open(device)?;
    let mut model = load_model(source.as_ref(), DType::F32, &device)?;
    let (quant, why) = quant_choice(args.quant, &device);
    let summary = model
        .quantize(quant)
        .with_context(|| format!("cannot quantise {} to {quant}", args.model))?;
    errln!("{}: {}{why}", args.model, summary.describe());
    let record = suite.run(&model, tokenizer, "model", 0)?;
    print_record(&record, args.json)
}

/// `slayer eval RUN[@STEP]`: a run's trained model at a checkpoint (the newest by default) on
/// the run's own evaluation sets. The result is printed, and recorded in the run's events
/// (label `checkpoint`) unless a worker is writing them. `None` when MODEL is not a run.
fn eval_run_checkpoint(
    args: &EvalArgs,
    data_dir: &Path,
    device: DeviceChoice,
) -> Result<Option<i32>> {
    let Some((run, step)) = crate::runner::model::run_spec(data_dir, &args.model)? else {
        return Ok(None);
    };
    let device = device::open(device)?;
    let (quant, why) = quant_choice(args.quant, &device);
    let done =
        crate::jobs::evaluate_run(data_dir, &run, step, &device, quant, &super::INTERRUPTED)?;
    for w in &done.warnings {
        errln!("warning: {w}");
    }
    errln!("{}@{}: {}{why}", run.id, done.step, done.quantization);
    print_record(&done.record, args.json)?;
    if done.recorded {
        errln!("recorded in run {}", run.id);
    } else {
        errln!(
            "(run {} is running: this evaluation is not added to its events)",
            run.id
        );
    }
    Ok(Some(0))
}

fn print_record(record: &crate::core::events::EvalRecord, json: bool) -> Result<i32> {
    if json {
        outln!("{}", serde_json::to_string_pretty(&record)?)?;
    } else {
        for p in &record.ppl {
            outln!(
                "{}: perplexity {:.4}, bits/byte {:.4} ({} tokens)",
                p.name,
                p.perplexity,
                p.bits_per_byte,
                p.tokens
            )?;
        }
        for t in &record.tasks {
            outln!(
                "{}: acc {:.4} ± {:.4}, acc_norm {:.4} ({} items)",
                t.name,
                t.acc,
                t.acc_stderr,
                t.acc_norm,
                t.items
            )?;
        }
    }
    Ok(0)
}

pub fn data(cmd: DataCommand, data_dir: &Path) -> Result<i32> {
    match cmd {
        DataCommand::Preview {
            experiment,
            documents,
            json,
        } => {
            let p = crate::jobs::preview_data(data_dir, &experiment, documents, &resolve_or_fetch)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&p)?)?;
                return Ok(0);
            }
            for line in p.describe() {
                outln!("{}", sanitize_for_terminal(&line))?;
            }
            Ok(0)
        }
        DataCommand::SynthFacts {
            out,
            entities,
            seed,
        } => {
            let facts = synth::generate(entities, seed);
            // Ctrl-C during generation (a second at the largest size) writes nothing.
            crate::core::checkpoint::check_cancel(Some(&super::INTERRUPTED))?;
            write_synth(&facts, &out)?;
            errln!(
                "wrote {} entities, {} training documents, {} probe and {} control questions to {}",
                facts.entities.len(),
                facts.train.len(),
                facts.probe.len(),
                facts.control.len(),
                out.display()
            );
            Ok(0)
        }
    }
}
