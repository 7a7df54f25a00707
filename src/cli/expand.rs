//! `slayer expand EXPERIMENT|PLAN --out DIR [--verify]`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use super::model::parse_dtype;
use super::plan::{load_plan, render_map};
use super::{INTERRUPTED, progress};
use crate::core::checkpoint::{HfDir, SaveOptions};
use crate::core::surgery;

/// Text the expanded model is checked on when no `--sample` is given: plain English prose.
const DEFAULT_SAMPLE: &str = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a system that could produce books quickly and cheaply. Before that, most books in Europe were copied by hand, a slow process that kept them rare and expensive. Within a few decades, printing shops had spread to more than two hundred cities, and millions of volumes were in circulation. Scholars could compare identical copies of a text, errors were corrected in later editions, and ideas travelled faster than ever before. The printing press is often credited with helping to spread literacy, to standardise languages, and to make possible the scientific revolution that followed.";

#[derive(Debug, Args)]
pub struct ExpandArgs {
    /// Experiment or plan file.
    pub plan: PathBuf,
    /// Base model (overrides the file's [model] base).
    #[arg(long)]
    pub model: Option<String>,
    /// Output directory (refused if it exists, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Check that insertion keeps the base model's logits and report what pruning costs.
    #[arg(long)]
    pub verify: bool,
    /// Text file to verify on (default: a built-in paragraph).
    #[arg(long)]
    pub sample: Option<PathBuf>,
    /// Weight dtype of the output (default: the base model's).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<candle_core::DType>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print what was written and the verification as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ExpandArgs, data_dir: &Path) -> Result<i32> {
    let loaded = load_plan(&args.plan, args.model.as_deref(), data_dir)?;
    if loaded.report_diagnostics() {
        return Ok(1);
    }
    let map = loaded.map()?;
    err!("{}", render_map(map, &loaded.base_arg));
    let opts = SaveOptions {
        dtype: args.dtype.unwrap_or_else(|| loaded.base.stored_dtype()),
        force: args.force,
        ..SaveOptions::default()
    };
    let record = serde_json::json!({
        "plan_file": loaded.path.display().to_string(),
        "plan_source": loaded.text,
        "base_model": loaded.base_arg,
        "map": map,
    });
    let extra = vec![(
        "slayer_plan.json".to_string(),
        serde_json::to_vec_pretty(&record)?,
    )];
    let pb = progress::bar(0, "expanding", "tensors");
    let report = surgery::expand(
        loaded.base.as_ref(),
        map,
        &args.out,
        &opts,
        extra,
        progress::callback(&pb),
        Some(&INTERRUPTED),
    )?;
    pb.finish_and_clear();
    errln!(
        "wrote {} ({} blocks, {} tensors)",
        args.out.display(),
        report.config.num_hidden_layers,
        report.tensors
    );
    let mut summary = surgery::ExpandSummary {
        out: args.out.clone(),
        blocks: report.config.num_hidden_layers,
        tensors: report.tensors,
        pruned: map.pruned.clone(),
        verification: None,
    };
    if !args.verify {
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&summary)?)?;
        }
        return Ok(0);
    }
    let text = match &args.sample {
        Some(p) => crate::core::corpus::read_text(p)?,
        None => DEFAULT_SAMPLE.to_string(),
    };
    let tokenizer = loaded
        .base
        .tokenizer()
        .ok_or_else(|| anyhow::anyhow!("the base model has no tokenizer to encode the sample"))?;
    let ids = tokenizer.encode(&text, false)?;
    if ids.len() < 2 {
        bail!("the verification sample is too short");
    }
    let written = HfDir::open(&args.out)?;
    let v = surgery::verify(loaded.base.as_ref(), map, &written, &ids)?;
    if args.json {
        let passed = v.passed();
        summary.verification = Some(v);
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(i32::from(!passed));
    }
    outln!("verification on {} tokens:", v.sample_tokens)?;
    outln!(
        "  insertion only vs base: max |Δlogit| = {:e} {}",
        v.identity_max_abs_diff,
        if v.identity_max_abs_diff == 0.0 {
            "(identical)"
        } else {
            "(NOT identical)"
        }
    )?;
    outln!(
        "  checkpoint vs plan:     max |Δlogit| = {:e} {}",
        v.written_max_abs_diff,
        if v.written_exact {
            if v.written_max_abs_diff == 0.0 {
                "(identical)"
            } else {
                "(DIFFERS)"
            }
        } else {
            "(dtype changed: rounding only)"
        }
    )?;
    outln!(
        "  perplexity: base {:.3} → expanded {:.3} ({:+.1}%)",
        v.base_perplexity,
        v.expanded_perplexity,
        (v.expanded_perplexity / v.base_perplexity - 1.0) * 100.0
    )?;
    if map.pruned.is_empty() {
        outln!("  (nothing pruned)")?;
    } else {
        outln!("  pruning {:?} accounts for the change", map.pruned)?;
    }
    Ok(i32::from(!v.passed()))
}
