//! `slayer plan check|diff|export|import` and the plan loading `expand` shares.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use super::model::resolve_or_fetch;
use crate::core::checkpoint::open_source;
use crate::core::plan::totals::{human_bytes, human_count};
use crate::core::plan::{
    self, Diagnostic, LayerMap, MemoryParams, Origin, Totals, diff, interchange,
};
use crate::core::text::sanitize_for_terminal;

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Validate a plan or experiment: layer map, parameters, memory; exit 1 on errors.
    Check {
        /// Experiment or plan file, or the name of an experiment in the data directory.
        file: PathBuf,
        /// Base model (overrides the file's [model] base).
        #[arg(long)]
        model: Option<String>,
        /// Print the map, totals and diagnostics as JSON.
        #[arg(long)]
        json: bool,
        /// Memory estimate: micro-batch size [default: the experiment's `[train] batch_size`,
        /// else 1].
        #[arg(long)]
        batch: Option<usize>,
        /// Memory estimate: sequence length [default: the experiment's `[train] seq_len`, else
        /// 2048].
        #[arg(long)]
        seq_len: Option<usize>,
        /// Memory estimate: weight and activation type [default: what training on the chosen
        /// --device uses: f32 on the CPU, bf16 on CUDA].
        #[arg(long, value_parser = ["bf16", "f16", "f32"])]
        dtype: Option<String>,
        /// Memory estimate: frozen blocks recomputed in backward [default: the experiment's
        /// `[train] recompute`].
        #[arg(long)]
        recompute: bool,
    },
    /// Compare two plans block by block.
    Diff {
        /// The first plan: a file or an experiment name.
        a: PathBuf,
        /// The second plan: a file or an experiment name.
        b: PathBuf,
        /// Base model for both (overrides their [model] base).
        #[arg(long)]
        model: Option<String>,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a plan in another tool's format.
    Export {
        /// Experiment or plan file, or an experiment name.
        file: PathBuf,
        /// mergekit (a passthrough YAML) or llamafactory (a freeze-tuning config).
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Base model (overrides the file's [model] base).
        #[arg(long)]
        model: Option<String>,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// LLaMA-Factory: the expanded model directory its config should load.
        #[arg(long, default_value = "expanded-model")]
        expanded_model: String,
    },
    /// Convert a mergekit passthrough YAML into a slayer plan.
    Import {
        /// The mergekit YAML to convert.
        file: PathBuf,
        /// Base model, to know its depth (so trailing pruned layers are seen) and to validate.
        #[arg(long)]
        model: Option<String>,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Mergekit,
    Llamafactory,
}

pub use crate::jobs::{LoadedPlan, load_plan as load_plan_with};

/// [`load_plan_with`], fetching a known base model on first use (with a progress bar); a
/// syntax error's diagnostic is printed on its own line, before the error.
pub fn load_plan(path: &Path, model: Option<&str>, data_dir: &Path) -> Result<LoadedPlan> {
    load_plan_with(path, model, data_dir, &resolve_or_fetch).map_err(|e| {
        match e.downcast::<crate::jobs::PlanUnreadable>() {
            Ok(unreadable) => {
                errln!("{}", unreadable.diagnostic);
                anyhow::anyhow!("{}: cannot parse the plan", unreadable.path.display())
            }
            Err(e) => e,
        }
    })
}

/// Prints a loaded plan's diagnostics to stderr as `file:line:col: …`; returns whether there
/// were errors.
pub fn report_diagnostics(loaded: &LoadedPlan) -> bool {
    for d in loaded.diagnostics() {
        errln!("{d}");
    }
    loaded.resolution.has_errors()
}

fn element_bytes(dtype: &str) -> usize {
    if dtype == "f32" { 4 } else { 2 }
}

pub fn run(
    cmd: PlanCommand,
    data_dir: &Path,
    device: crate::core::device::DeviceChoice,
) -> Result<i32> {
    match cmd {
        PlanCommand::Check {
            file,
            model,
            json,
            batch,
            seq_len,
            dtype,
            recompute,
        } => {
            let file = crate::templates::find_experiment(data_dir, &file)?;
            let loaded = load_plan(&file, model.as_deref(), data_dir)?;
            // The estimate assumes what training this file would do: its `[train]` (as the
            // console's editor does), on the device chosen; flags override either.
            let train = crate::core::experiment::Experiment::load(&file)
                .ok()
                .map(|e| e.train);
            let dtype = dtype.unwrap_or_else(|| {
                match crate::core::device::expected_dtype(device) {
                    candle_core::DType::F32 => "f32",
                    _ => "bf16",
                }
                .to_string()
            });
            let mem = MemoryParams {
                batch: batch.or(train.as_ref().map(|t| t.batch_size)).unwrap_or(1),
                seq_len: seq_len
                    .or(train.as_ref().map(|t| t.seq_len))
                    .unwrap_or(2048),
                element_bytes: element_bytes(&dtype),
                recompute: recompute || train.as_ref().is_some_and(|t| t.recompute),
                cpu_threads: (dtype == "f32" && crate::core::device::expects_cpu(device))
                    .then(|| crate::threads::in_use().threads.get()),
            };
            let totals = loaded
                .resolution
                .map
                .as_ref()
                .map(|m| Totals::compute(m, loaded.config(), mem));
            if json {
                let diagnostics: Vec<serde_json::Value> = loaded
                    .resolution
                    .diagnostics
                    .iter()
                    .map(|d| diagnostic_json(d, &loaded.text))
                    .collect();
                let out = serde_json::json!({
                    "file": file.display().to_string(),
                    "base_model": loaded.base_arg,
                    "valid": !loaded.resolution.has_errors(),
                    "map": loaded.resolution.map,
                    "totals": totals,
                    "diagnostics": diagnostics,
                });
                outln!("{}", serde_json::to_string_pretty(&out)?)?;
            } else {
                let _ = report_diagnostics(&loaded);
                if let (Some(map), Some(totals)) = (&loaded.resolution.map, &totals) {
                    out!("{}", render_map(map, &loaded.base_arg))?;
                    out!("{}", render_totals(totals, &dtype))?;
                }
            }
            Ok(i32::from(loaded.resolution.has_errors()))
        }
        PlanCommand::Diff { a, b, model, json } => {
            let pa = load_plan(&a, model.as_deref(), data_dir)?;
            let pb = load_plan(&b, model.as_deref(), data_dir)?;
            let errors = report_diagnostics(&pa) | report_diagnostics(&pb);
            if errors {
                return Ok(1);
            }
            let rows = diff::diff(pa.map()?, pb.map()?);
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                out!(
                    "{}",
                    render_diff(&rows, &a.display().to_string(), &b.display().to_string())
                )?;
            }
            Ok(0)
        }
        PlanCommand::Export {
            file,
            format,
            model,
            out,
            expanded_model,
        } => {
            let loaded = load_plan(&file, model.as_deref(), data_dir)?;
            if report_diagnostics(&loaded) {
                return Ok(1);
            }
            let converted = match format {
                ExportFormat::Mergekit => {
                    interchange::to_mergekit(loaded.map()?, &loaded.base_arg, "bfloat16")
                }
                ExportFormat::Llamafactory => {
                    interchange::to_llamafactory(loaded.map()?, &expanded_model)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                }
            };
            for w in &converted.warnings {
                errln!("warning: {w}");
            }
            write_output(out.as_deref(), &converted.text)?;
            Ok(0)
        }
        PlanCommand::Import { file, model, out } => {
            let yaml = crate::core::corpus::read_settings(&file, "mergekit config")?;
            let layers = match &model {
                Some(m) => Some(
                    open_source(&resolve_or_fetch(data_dir, m)?)?
                        .config()
                        .num_hidden_layers,
                ),
                None => None,
            };
            let converted = interchange::from_mergekit(&yaml, layers)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            for w in &converted.warnings {
                errln!("warning: {w}");
            }
            if let Some(n) = layers {
                let parsed = plan::parse(&converted.text).map_err(|d| {
                    anyhow::anyhow!("{} (as converted): {}", file.display(), d.message)
                })?;
                let r = plan::resolve(&parsed.plan, n);
                for d in &r.diagnostics {
                    errln!(
                        "{}",
                        d.render(
                            &format!("{} (as converted)", file.display()),
                            &converted.text
                        )
                    );
                }
                if r.has_errors() {
                    return Ok(1);
                }
            }
            write_output(out.as_deref(), &converted.text)?;
            Ok(0)
        }
    }
}

fn write_output(out: Option<&Path>, text: &str) -> Result<()> {
    if let Some(p) = out {
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))
    } else {
        out!("{text}")?;
        Ok(())
    }
}

fn diagnostic_json(d: &Diagnostic, source: &str) -> serde_json::Value {
    let (line, column) = d
        .position(source)
        .map_or((None, None), |(l, c)| (Some(l), Some(c)));
    serde_json::json!({ "severity": d.severity, "message": d.message, "line": line, "column": column })
}

fn short_tensor(name: &str) -> &str {
    let t = name.strip_suffix(".weight").unwrap_or(name);
    t.rsplit('.').next().unwrap_or(t)
}

/// The layer map as a table: final index, where the block comes from, and whether it trains.
#[must_use]
pub fn render_map(map: &LayerMap, base: &str) -> String {
    let mut s = String::new();
    let new = map.layers.iter().filter(|l| l.is_new()).count();
    let _ = writeln!(
        s,
        "{} → {} blocks (+{new} new, −{} pruned){}",
        sanitize_for_terminal(base),
        map.layers.len(),
        map.pruned.len(),
        map.preset
            .as_ref()
            .map(|p| format!(", preset {p}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "{:>5}  {:<14} {:<34} trains",
        "final", "block", "initialisation"
    );
    for l in &map.layers {
        let (what, init) = match &l.origin {
            Origin::Original { index } => (format!("orig {index}"), String::new()),
            Origin::New {
                after,
                init,
                zero,
                scale,
            } => {
                let mut desc = match init {
                    plan::Init::Copy { source } => format!("copy {source}"),
                    plan::Init::Average { sources } => format!("avg {}+{}", sources[0], sources[1]),
                };
                if !zero.is_empty() {
                    let _ = write!(
                        desc,
                        ", zero {}",
                        zero.iter()
                            .map(|z| short_tensor(z))
                            .collect::<Vec<_>>()
                            .join("+")
                    );
                }
                for (t, f) in scale {
                    let _ = write!(desc, ", {}×{f}", short_tensor(t));
                }
                (
                    if *after < 0 {
                        "new (first)".to_string()
                    } else {
                        format!("new (after {after})")
                    },
                    desc,
                )
            }
        };
        let line = format!(
            "{:>5}  {what:<14} {init:<34} {}",
            l.index,
            if l.trainable { "yes" } else { "" }
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    if !map.pruned.is_empty() {
        let list: Vec<String> = map.pruned.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "pruned originals: {}", list.join(", "));
    }
    s
}

/// Parameter counts and the memory estimate.
#[must_use]
pub fn render_totals(t: &Totals, dtype: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "parameters   {} (base {}, {:+.1}%)",
        human_count(t.params),
        human_count(t.base_params),
        (t.params as f64 / t.base_params as f64 - 1.0) * 100.0
    );
    let _ = writeln!(
        s,
        "trainable    {} ({:.1}% of base)",
        human_count(t.trainable_params),
        t.trainable_share * 100.0
    );
    let m = &t.memory;
    let _ = writeln!(
        s,
        "memory       {} total for training ({dtype} weights, batch {} × {}{}): weights {}, gradients {}, AdamW {}, activations {}",
        human_bytes(m.total),
        t.assumptions.batch,
        t.assumptions.seq_len,
        if t.assumptions.recompute {
            ", recomputed"
        } else {
            ""
        },
        human_bytes(m.weights),
        human_bytes(m.gradients),
        human_bytes(m.optimizer),
        human_bytes(m.activations)
    );
    s
}

/// Two plans side by side; `*` marks rows that differ.
#[must_use]
pub fn render_diff(rows: &[diff::DiffRow], a: &str, b: &str) -> String {
    let mut s = String::new();
    // Each side: its final index, then the block; an original block missing on one side was
    // pruned there, a new block missing was not inserted there.
    let side = |l: &Option<plan::FinalLayer>, original: Option<usize>| match (l, original) {
        (Some(l), _) => format!("{:>4}  {}", l.index, diff::describe(l)),
        (None, Some(_)) => "   -  pruned".to_string(),
        (None, None) => "   -".to_string(),
    };
    let _ = writeln!(
        s,
        "  {:<30} {:<30}",
        sanitize_for_terminal(a),
        sanitize_for_terminal(b)
    );
    let _ = writeln!(s, "  {:<30} {:<30}", "final block", "final block");
    for r in rows {
        let _ = writeln!(
            s,
            "{} {:<30} {:<30}",
            if r.changed() { '*' } else { ' ' },
            side(&r.a, r.original),
            side(&r.b, r.original)
        );
    }
    let changed = rows.iter().filter(|r| r.changed()).count();
    let originals = rows.iter().filter(|r| r.original.is_some()).count();
    let _ = writeln!(
        s,
        "{changed} of {} rows differ ({originals} original blocks, {} places for new ones)",
        rows.len(),
        rows.len() - originals
    );
    s
}
