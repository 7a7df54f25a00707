//! `slayer expand EXPERIMENT|PLAN --out DIR [--verify]`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::model::parse_dtype;
use super::plan::{load_plan, render_map};
use super::{INTERRUPTED, progress};

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
    if super::plan::report_diagnostics(&loaded) {
        return Ok(1);
    }
    let map = loaded.map()?;
    err!("{}", render_map(map, &loaded.base_arg));
    let pb = progress::bar(0, "expanding", "tensors");
    let request = crate::jobs::ExpandRequest {
        out: args.out.clone(),
        verify: args.verify,
        sample: args.sample.clone(),
        dtype: args.dtype,
        force: args.force,
    };
    let summary = crate::jobs::expand(&loaded, &request, &INTERRUPTED, progress::callback(&pb))?;
    pb.finish_and_clear();
    errln!(
        "wrote {} ({} blocks, {} tensors)",
        args.out.display(),
        summary.blocks,
        summary.tensors
    );
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(summary
            .verification
            .as_ref()
            .map_or(0, |v| i32::from(!v.passed())));
    }
    let Some(v) = summary.verification else {
        return Ok(0);
    };
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
