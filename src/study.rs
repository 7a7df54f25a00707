//! Studies: a grid of strategies × corpora × seeds over one shared experiment, run through the
//! normal queue, and the comparison table built from the runs' own evaluations.
//!
//! A study file is an experiment without a plan (`[base]`: model, data, train, eval), a list of
//! `[[strategy]]` (a name and a `plan` table, optionally `train` overrides), optional
//! `[[corpus]]` entries (a name and a `data` table, optionally `eval`) and `seeds`. Each cell
//! becomes an ordinary experiment file under `<data>/studies/<name>/`, launched like any other
//! run; `cells.json` there maps cells to runs so a study can be resumed and shown later.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::core::events::{EvalRecord, EventKind, RunStatus};
use crate::runner::{RunDir, RunState};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    base: toml::Table,
    #[serde(rename = "strategy")]
    strategies: Vec<Strategy>,
    #[serde(default, rename = "corpus")]
    corpora: Vec<Corpus>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One layout under comparison.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    pub name: String,
    pub plan: toml::Table,
    #[serde(default)]
    pub train: Option<toml::Table>,
}

/// One training corpus (with its evaluation sets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corpus {
    pub name: String,
    pub data: toml::Table,
    #[serde(default)]
    pub eval: Option<toml::Table>,
}

/// A parsed study.
#[derive(Debug, Clone)]
pub struct Study {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    pub seeds: Vec<u64>,
    base: toml::Table,
    pub strategies: Vec<Strategy>,
    pub corpora: Vec<Corpus>,
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    pub corpus: String,
    pub strategy: String,
    pub seed: u64,
}

impl Cell {
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}-{}-s{}", self.corpus, self.strategy, self.seed)
    }
}

/// Makes relative paths in `value` (strings under `keys`) absolute against `dir`.
fn anchor(table: &mut toml::Table, keys: &[&str], dir: &Path) {
    for key in keys {
        let fix = |s: &str| {
            toml::Value::String(if Path::new(s).is_absolute() {
                s.to_string()
            } else {
                dir.join(s).display().to_string()
            })
        };
        match table.get_mut(*key) {
            Some(toml::Value::String(s)) => {
                let v = fix(s);
                table.insert((*key).to_string(), v);
            }
            Some(toml::Value::Array(items)) => {
                for item in items.iter_mut() {
                    if let toml::Value::String(s) = item {
                        *item = fix(s);
                    }
                }
            }
            _ => {}
        }
    }
}

fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Study {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::core::corpus::read_text(path)?;
        let file: StudyFile = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| crate::core::plan::line_col(&text, s.start).0);
            anyhow::anyhow!(
                "{}{}: {}",
                path.display(),
                at.map(|l| format!(" line {l}")).unwrap_or_default(),
                e.message()
            )
        })?;
        if file.strategies.is_empty() {
            bail!(
                "{}: a study needs at least one [[strategy]]",
                path.display()
            );
        }
        if file.seeds.is_empty() {
            bail!("{}: seeds is empty", path.display());
        }
        // Names become directory and file names (`studies/NAME/CORPUS-STRATEGY-sSEED.toml`).
        let names = std::iter::once(("study", &file.name))
            .chain(file.strategies.iter().map(|s| ("strategy", &s.name)))
            .chain(file.corpora.iter().map(|c| ("corpus", &c.name)));
        for (what, name) in names {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "{}: {what} name {name:?}: use letters, digits, '-' and '_'",
                    path.display()
                );
            }
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let mut base = file.base;
        let mut corpora = file.corpora;
        if corpora.is_empty() {
            let data = base
                .get("data")
                .and_then(|d| d.as_table())
                .cloned()
                .unwrap_or_default();
            corpora.push(Corpus {
                name: "default".into(),
                data,
                eval: None,
            });
        }
        for c in &mut corpora {
            anchor(&mut c.data, &["train"], &dir);
            if let Some(e) = &mut c.eval {
                anchor(e, &["ppl", "tasks"], &dir);
            }
        }
        if let Some(toml::Value::Table(e)) = base.get_mut("eval") {
            anchor(e, &["ppl", "tasks"], &dir);
        }
        let study = Self {
            path: path.to_path_buf(),
            name: file.name,
            description: file.description,
            seeds: file.seeds,
            base,
            strategies: file.strategies,
            corpora,
        };
        // Every cell must be a valid experiment before anything runs.
        for cell in study.cells() {
            let text = study.experiment_text(&cell);
            crate::core::experiment::Experiment::parse(Path::new(&cell.key()), &text).map_err(
                |d| anyhow::anyhow!("{}: cell {}: {}", path.display(), cell.key(), d.message),
            )?;
        }
        Ok(study)
    }

    /// Every cell: corpus × strategy × seed.
    #[must_use]
    pub fn cells(&self) -> Vec<Cell> {
        let mut out = Vec::new();
        for c in &self.corpora {
            for s in &self.strategies {
                for seed in &self.seeds {
                    out.push(Cell {
                        corpus: c.name.clone(),
                        strategy: s.name.clone(),
                        seed: *seed,
                    });
                }
            }
        }
        out
    }

    /// The experiment a cell runs.
    #[must_use]
    pub fn experiment_text(&self, cell: &Cell) -> String {
        let mut t = self.base.clone();
        t.insert(
            "name".into(),
            toml::Value::String(format!("{}-{}", self.name, cell.key())),
        );
        t.insert(
            "description".into(),
            toml::Value::String(format!("study {} cell {}", self.name, cell.key())),
        );
        if let Some(s) = self.strategies.iter().find(|s| s.name == cell.strategy) {
            t.insert("plan".into(), toml::Value::Table(s.plan.clone()));
            if let Some(train) = &s.train {
                let entry = t
                    .entry("train")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(tt) = entry {
                    merge(tt, train);
                }
            }
        }
        if let Some(c) = self.corpora.iter().find(|c| c.name == cell.corpus) {
            t.insert("data".into(), toml::Value::Table(c.data.clone()));
            if let Some(e) = &c.eval {
                let entry = t
                    .entry("eval")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(et) = entry {
                    merge(et, e);
                }
            }
        }
        let entry = t
            .entry("train")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(tt) = entry {
            tt.insert("seed".into(), toml::Value::Integer(cell.seed as i64));
        }
        toml::to_string(&t).unwrap_or_default()
    }

    /// Where the study keeps its cell experiments and its cell → run map.
    #[must_use]
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join("studies").join(&self.name)
    }
}

/// The cell → run map of a study.
#[must_use]
pub fn load_cells(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read(dir.join("cells.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save_cells(dir: &Path, cells: &BTreeMap<String, String>) -> Result<()> {
    crate::core::checkpoint::hf::replace_file(
        &dir.join("cells.json"),
        &serde_json::to_vec_pretty(cells)?,
    )?;
    Ok(())
}

/// What one finished cell measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CellResult {
    pub cell: Option<Cell>,
    pub run: String,
    pub status: String,
    pub trainable_params: u64,
    pub steps: u64,
    pub wall_secs: f64,
    /// Metric name (`facts acc`, `general ppl`, …) → value after training.
    pub after: BTreeMap<String, f64>,
    /// The same metrics of the base model.
    pub before: BTreeMap<String, f64>,
}

fn metrics(r: &EvalRecord) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for p in &r.ppl {
        m.insert(format!("{} ppl", p.name), p.perplexity);
    }
    for t in &r.tasks {
        m.insert(format!("{} acc", t.name), t.acc);
    }
    m
}

/// A cell's result from its run directory.
#[must_use]
pub fn cell_result(run: &RunDir) -> CellResult {
    let events = run.read_events().unwrap_or_default();
    let mut out = CellResult {
        run: run.id.clone(),
        status: run.state(&events).to_string(),
        ..CellResult::default()
    };
    let mut segment_start: Option<f64> = None;
    for e in &events {
        match &e.kind {
            EventKind::RunStart {
                trainable_params,
                total_steps,
                ..
            } => {
                out.trainable_params = *trainable_params;
                out.steps = *total_steps;
                segment_start = Some(e.time);
            }
            EventKind::Eval(r) if r.label == "base" => out.before = metrics(r),
            EventKind::Eval(r) if r.label == "final" => out.after = metrics(r),
            EventKind::End { status, .. } => {
                if let Some(s) = segment_start.take() {
                    out.wall_secs += e.time - s;
                }
                if *status != RunStatus::Finished {
                    out.after.clear();
                }
            }
            _ => {}
        }
    }
    out
}

/// mean ± sample standard deviation (0 for one value).
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let sd = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

/// The comparison table of one corpus, as markdown: one row per strategy, mean ± sd over seeds.
#[must_use]
pub fn table(study: &Study, corpus: &str, results: &[CellResult]) -> String {
    let rows: Vec<&CellResult> = results
        .iter()
        .filter(|r| r.cell.as_ref().is_some_and(|c| c.corpus == corpus))
        .collect();
    let mut names: Vec<String> = rows.iter().flat_map(|r| r.after.keys().cloned()).collect();
    names.sort();
    names.dedup();
    let fmt = |vals: &[f64], digits: usize| {
        if vals.is_empty() {
            return "—".to_string();
        }
        let (m, sd) = mean_sd(vals);
        if vals.len() > 1 {
            format!("{m:.digits$} ± {sd:.digits$}")
        } else {
            format!("{m:.digits$}")
        }
    };
    let mut s = format!(
        "| strategy | trainable params | steps | wall s | {} | seeds done |\n|---|---|---|---|{}---|\n",
        names
            .iter()
            .map(|n| format!("{n} (base → after)"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(names.len())
    );
    // The base model's values are the same for every strategy: show them once per metric.
    for strategy in &study.strategies {
        let cells: Vec<&&CellResult> = rows
            .iter()
            .filter(|r| r.cell.as_ref().is_some_and(|c| c.strategy == strategy.name))
            .collect();
        let done: Vec<&&&CellResult> = cells.iter().filter(|r| !r.after.is_empty()).collect();
        let mut line = format!(
            "| {} | {} | {} | {} |",
            strategy.name,
            cells
                .first()
                .map_or("—".into(), |r| crate::core::plan::totals::human_count(
                    r.trainable_params
                )),
            cells.first().map_or("—".into(), |r| r.steps.to_string()),
            fmt(&done.iter().map(|r| r.wall_secs).collect::<Vec<_>>(), 0),
        );
        for n in &names {
            let digits = if n.ends_with("acc") { 3 } else { 2 };
            let before: Vec<f64> = done
                .iter()
                .filter_map(|r| r.before.get(n).copied())
                .collect();
            let after: Vec<f64> = done
                .iter()
                .filter_map(|r| r.after.get(n).copied())
                .collect();
            let _ = write!(
                line,
                " {} → {} |",
                before
                    .first()
                    .map_or("—".into(), |b| format!("{b:.digits$}")),
                fmt(&after, digits)
            );
        }
        let _ = writeln!(line, " {}/{} |", done.len(), cells.len());
        s.push_str(&line);
    }
    s
}

/// Every cell's result, in grid order (missing runs have an empty result).
#[must_use]
pub fn results(study: &Study, data_dir: &Path) -> Vec<CellResult> {
    let cells = load_cells(&study.dir(data_dir));
    study
        .cells()
        .into_iter()
        .map(|cell| {
            let mut r = cells
                .get(&cell.key())
                .and_then(|id| RunDir::open(data_dir, id).ok())
                .map_or_else(
                    || CellResult {
                        status: "not started".into(),
                        ..CellResult::default()
                    },
                    |run| cell_result(&run),
                );
            r.cell = Some(cell);
            r
        })
        .collect()
}

/// Whether every cell's run has ended (finished, failed or stopped).
#[must_use]
pub fn all_ended(results: &[CellResult]) -> bool {
    results.iter().all(|r| {
        [RunState::Finished, RunState::Failed, RunState::Stopped]
            .iter()
            .any(|s| s.to_string() == r.status)
    })
}
