//! `slayer importance MODEL --corpus FILE`: per-block importance table, bar chart, suggestion.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::model::resolve_or_fetch;
use super::{INTERRUPTED, progress};
use crate::core::device::{self, DeviceChoice};
use crate::core::importance::{self, ImportanceReport, Metric};

#[derive(Debug, Args)]
pub struct ImportanceArgs {
    /// Model directory, GGUF file, or a name under the data dir's models/.
    pub model: String,
    /// Calibration text (UTF-8).
    #[arg(long)]
    pub corpus: PathBuf,
    /// bi, angular, ppl, taylor or all.
    #[arg(long, default_value = "all")]
    pub metric: String,
    /// Number of token windows.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Print the scores as JSON.
    #[arg(long)]
    pub json: bool,
    /// Suggest a plan: N_NEW insertions in the shallow half, N_PRUNE deep blocks pruned.
    #[arg(long, num_args = 2, value_names = ["N_NEW", "N_PRUNE"])]
    pub suggest: Option<Vec<usize>>,
    /// Metric the suggestion ranks by (default: the first computed).
    #[arg(long)]
    pub suggest_metric: Option<String>,
    /// Where to write the suggested experiment (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &ImportanceArgs, data_dir: &Path, device: DeviceChoice) -> Result<i32> {
    let metrics: Vec<Metric> = if args.metric == "all" {
        Metric::ALL.to_vec()
    } else {
        args.metric
            .split(',')
            .map(|m| m.trim().parse::<Metric>().map_err(|e| anyhow::anyhow!(e)))
            .collect::<Result<_>>()?
    };
    let device = device::open(device)?;
    let pb = progress::bar(0, "importance", "passes");
    let request = crate::jobs::ImportanceRequest {
        model: args.model.clone(),
        corpus: args.corpus.clone(),
        metrics: metrics.clone(),
        samples: args.samples,
        seq_len: args.seq_len,
    };
    let measured = crate::jobs::measure_importance(
        data_dir,
        &request,
        &device,
        &resolve_or_fetch,
        &INTERRUPTED,
        progress::callback(&pb),
    )?;
    pb.finish_and_clear();
    if measured.windows < args.samples {
        errln!(
            "note: the corpus holds {} windows of {} tokens (asked for {})",
            measured.windows,
            args.seq_len,
            args.samples
        );
    }
    let report = measured.report;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{}", render_report(&report))?;
    }
    if let Some(s) = &args.suggest {
        let metric = match &args.suggest_metric {
            Some(m) => m.parse::<Metric>().map_err(|e| anyhow::anyhow!(e))?,
            None => metrics[0],
        };
        let scores = report
            .scores(metric)
            .with_context(|| format!("--suggest-metric {} was not computed", metric.name()))?;
        let (insert, prune) = importance::suggest(scores, s[0], s[1]);
        let toml = importance::suggestion_toml(&args.model, metric, &insert, &prune);
        match &args.out {
            Some(p) => {
                std::fs::write(p, &toml)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                errln!("suggested experiment written to {}", p.display());
            }
            None => out!("{toml}")?,
        }
    }
    Ok(0)
}

/// A table of every metric per block and a bar chart for each.
#[must_use]
pub fn render_report(r: &ImportanceReport) -> String {
    let mut s = format!(
        "{} blocks, {} samples × {} tokens, perplexity {:.3}\n",
        r.blocks, r.samples, r.seq_len, r.base_perplexity
    );
    let _ = write!(s, "{:>5}", "block");
    for m in &r.metrics {
        let _ = write!(s, "  {:>18}", m.metric.label());
    }
    s.push('\n');
    for b in 0..r.blocks {
        let _ = write!(s, "{b:>5}");
        for m in &r.metrics {
            let _ = write!(s, "  {:>18.6}", m.scores[b]);
        }
        s.push('\n');
    }
    for m in &r.metrics {
        let _ = writeln!(s, "\n{} (larger = more important)", m.metric.label());
        s.push_str(&bar_chart(&m.scores, 40));
    }
    s
}

/// One bar per block, scaled to the largest value (log-scaled when values span > 100×).
#[must_use]
pub fn bar_chart(values: &[f64], width: usize) -> String {
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min_pos = values
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min);
    let log = max > 0.0 && min_pos < f64::MAX && max / min_pos > 100.0;
    let scale = |v: f64| -> f64 {
        if max <= 0.0 {
            0.0
        } else if log {
            if v <= 0.0 {
                0.0
            } else {
                ((v / min_pos).ln() / (max / min_pos).ln()).clamp(0.0, 1.0)
            }
        } else {
            (v / max).clamp(0.0, 1.0)
        }
    };
    let mut s = String::new();
    for (i, v) in values.iter().enumerate() {
        let eighths = (scale(*v) * width as f64 * 8.0).round() as usize;
        let mut bar = "█".repeat(eighths / 8);
        if !eighths.is_multiple_of(8) {
            bar.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8 - 1]);
        }
        let _ = writeln!(s, "{i:>5} {bar:<width$} {v:.4}");
    }
    if log {
        s.push_str("      (log scale)\n");
    }
    s
}
