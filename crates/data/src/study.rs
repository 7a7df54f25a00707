//! Studies: a grid of strategies × corpora × seeds over one shared experiment, run through the
//! normal queue, and the comparison table built from the runs' own evaluations.
//!
//! A study file is an experiment without a plan (`[base]`: model, data, train, eval), a list of
//! `[[strategy]]` (a name and a `plan` table, optionally `train` overrides), optional
//! `[[corpus]]` entries (a name and a `data` table, optionally `eval`) and `seeds`. Each cell
//! becomes an ordinary experiment file under `<data>/studies/<name>/`, launched like any other
//! run; `cells.json` there maps cells to runs so a study can be resumed and shown later.
//!
//! `[scale.NAME]` tables are overlays chosen with `--scale NAME` (a GPU variant: longer runs,
//! bigger corpora): `seeds` replaces, `base` merges into `[base]`, and `corpus.C` / `strategy.S`
//! merge into the entry named C / S. The scaled study is named `NAME-SCALE`, so its cells and
//! results never mix with the default scale's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Because as _, Error, Result};
use serde::{Deserialize, Serialize};

use crate::runner::{RunDir, RunState};
use slayer_engine::events::{EvalRecord, EventKind, RunStatus};
use slayer_engine::experiment::Before;

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// `[scale.NAME]` overlays, applied before parsing (see the module docs).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    scale: toml::Table,
}

/// The most cells (runs) one study may hold.
pub const MAX_CELLS: usize = 10_000;

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One layout under comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    pub name: String,
    pub plan: toml::Table,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<toml::Table>,
}

/// One training corpus (with its evaluation sets).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corpus {
    pub name: String,
    pub data: toml::Table,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// The file's `[scale.NAME]` overlays, by name.
    pub scales: Vec<String>,
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

/// Makes relative paths in `value` (strings under `keys`) absolute against `dir`
/// ([`slayer_engine::experiment::anchored`]).
fn anchor(table: &mut toml::Table, keys: &[&str], dir: &Path) {
    for key in keys {
        let fix = |s: &str| {
            toml::Value::String(
                slayer_engine::experiment::anchored(Path::new(s), dir)
                    .display()
                    .to_string(),
            )
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

/// Applies the overlay `[scale.NAME]` of a study's raw table (and drops every `[scale.*]`).
fn apply_scale(path: &Path, raw: &mut toml::Table, scale: Option<&str>) -> Result<()> {
    let scales = match raw.remove("scale") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            return Err(Error::invalid(format!(
                "{}: `scale` must be a table of [scale.NAME] tables",
                path.display()
            )));
        }
        None => toml::Table::new(),
    };
    let Some(name) = scale else {
        return Ok(());
    };
    let Some(toml::Value::Table(overlay)) = scales.get(name) else {
        let known: Vec<&str> = scales.keys().map(String::as_str).collect();
        return Err(Error::invalid(format!(
            "{}: no [scale.{name}] (scales: {})",
            path.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )));
    };
    for (key, value) in overlay {
        match (key.as_str(), value) {
            ("seeds" | "description", v) => {
                raw.insert(key.clone(), v.clone());
            }
            ("base", toml::Value::Table(t)) => {
                let entry = raw
                    .entry("base")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(base) = entry {
                    merge(base, t);
                }
            }
            (list @ ("corpus" | "strategy"), toml::Value::Table(by_name)) => {
                for (target, overlay_entry) in by_name {
                    let toml::Value::Table(overlay_entry) = overlay_entry else {
                        return Err(Error::invalid(format!(
                            "{}: scale.{name}.{list}.{target} must be a table",
                            path.display()
                        )));
                    };
                    let entry = raw
                        .get_mut(list)
                        .and_then(toml::Value::as_array_mut)
                        .and_then(|items| {
                            items
                                .iter_mut()
                                .filter_map(toml::Value::as_table_mut)
                                .find(|t| {
                                    t.get("name").and_then(toml::Value::as_str) == Some(target)
                                })
                        });
                    let Some(entry) = entry else {
                        return Err(Error::invalid(format!(
                            "{}: scale.{name}.{list}.{target}: there is no {list} named {target:?}",
                            path.display()
                        )));
                    };
                    merge(entry, overlay_entry);
                }
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{}: scale.{name}.{key}: a scale sets seeds, description, base, corpus.NAME or strategy.NAME",
                    path.display()
                )));
            }
        }
    }
    let unscaled = raw
        .get("name")
        .and_then(toml::Value::as_str)
        .unwrap_or("study");
    raw.insert(
        "name".into(),
        toml::Value::String(format!("{unscaled}-{name}")),
    );
    Ok(())
}

impl Study {
    /// The study at its default scale.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_scaled(path, None)
    }

    /// The study with the overlay `[scale.NAME]` applied.
    pub fn load_scaled(path: &Path, scale: Option<&str>) -> Result<Self> {
        let text = slayer_engine::corpus::read_settings(path, "study")?;
        let syntax = |e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| slayer_engine::plan::line_col(&text, s.start).0);
            Error::invalid(format!(
                "{}{}: {}",
                path.display(),
                at.map(|l| format!(" line {l}")).unwrap_or_default(),
                e.message()
            ))
        };
        // Without a scale the file is read as written, so errors keep their line numbers.
        let file: StudyFile = if scale.is_none() {
            toml::from_str(&text).map_err(syntax)?
        } else {
            let mut raw: toml::Table = toml::from_str(&text).map_err(syntax)?;
            apply_scale(path, &mut raw, scale)?;
            toml::Value::Table(raw)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    Error::invalid(format!("{}: {}", path.display(), e.message()))
                })?
        };
        if file.strategies.is_empty() {
            return Err(Error::invalid(format!(
                "{}: a study needs at least one [[strategy]]",
                path.display()
            )));
        }
        if file.seeds.is_empty() {
            return Err(Error::invalid(format!(
                "{}: seeds is empty",
                path.display()
            )));
        }
        // The grid is a product: a short file can name a billion cells. Each is a training run,
        // so a study far past this is a typo, and refusing it keeps the grid in memory small.
        let cells = file
            .strategies
            .len()
            .saturating_mul(file.corpora.len().max(1))
            .saturating_mul(file.seeds.len());
        if cells > MAX_CELLS {
            return Err(Error::invalid(format!(
                "{}: {} strategies × {} corpora × {} seeds is {cells} runs, more than the {MAX_CELLS} a study may hold",
                path.display(),
                file.strategies.len(),
                file.corpora.len().max(1),
                file.seeds.len()
            )));
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
                return Err(Error::invalid(format!(
                    "{}: {what} name {name:?}: use letters, digits, '-' and '_'",
                    path.display()
                )));
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
            scales: file.scale.keys().cloned().collect(),
        };
        // A scale is checked when its file is, not first when a GPU box runs it.
        if scale.is_none() {
            for name in &study.scales {
                Self::load_scaled(path, Some(name))?;
            }
        }
        // Every cell must be a valid experiment before anything runs.
        for cell in study.cells() {
            let text = study.experiment_text(&cell);
            slayer_engine::experiment::Experiment::parse(Path::new(&cell.key()), &text).map_err(
                |d| {
                    Error::invalid(format!(
                        "{}: cell {}: {}",
                        path.display(),
                        cell.key(),
                        d.message
                    ))
                },
            )?;
        }
        Ok(study)
    }

    /// Every cell: corpus × strategy × seed (at most [`MAX_CELLS`]).
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
        // Every cell of a corpus starts from the same base model with the same evaluation sets,
        // and every layout starts as the identity: one base evaluation per corpus (its first
        // cell's) serves the whole table, unless the study asks for more.
        let entry = t
            .entry("eval")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(et) = entry
            && !et.contains_key("before")
        {
            let first = self.strategies.first().map(|s| &s.name) == Some(&cell.strategy)
                && self.seeds.first() == Some(&cell.seed);
            let before = if first {
                vec![Before::Base.label().into()]
            } else {
                Vec::new()
            };
            et.insert("before".into(), toml::Value::Array(before));
        }
        toml::to_string(&t).unwrap_or_default()
    }

    /// Files the cells read (training data, evaluation sets) that do not exist, with the cell
    /// that needs them first: checked before anything is queued.
    #[must_use]
    pub fn missing_files(&self) -> Vec<(String, PathBuf)> {
        let mut missing: Vec<(String, PathBuf)> = Vec::new();
        for cell in self.cells() {
            let text = self.experiment_text(&cell);
            let Ok(exp) = slayer_engine::experiment::Experiment::parse(&self.path, &text) else {
                continue;
            };
            let files = exp
                .data
                .train
                .iter()
                .chain(&exp.eval.ppl)
                .chain(&exp.eval.tasks);
            for path in files {
                if !path.exists() && !missing.iter().any(|(_, p)| p == path) {
                    missing.push((cell.key(), path.clone()));
                }
            }
        }
        missing
    }

    /// Cells whose plan does not resolve against its base model (a model not fetched yet is not
    /// checked: the run fetches it), with the plan's first error.
    #[must_use]
    pub fn unresolved_plans(&self, data_dir: &Path) -> Vec<(String, String)> {
        let mut depths: std::collections::HashMap<String, Option<usize>> =
            std::collections::HashMap::new();
        let mut bad = Vec::new();
        for cell in self.cells() {
            let text = self.experiment_text(&cell);
            let Ok(exp) = slayer_engine::experiment::Experiment::parse(&self.path, &text) else {
                continue;
            };
            let Some(base) = exp.model.as_ref().map(|m| m.base.clone()) else {
                continue;
            };
            let depth = *depths.entry(base.clone()).or_insert_with(|| {
                let path = crate::fetch::resolve_model_path(data_dir, &base);
                slayer_engine::checkpoint::open_source(&path)
                    .ok()
                    .map(|s| s.config().num_hidden_layers)
            });
            let Some(depth) = depth else { continue };
            let resolution = slayer_engine::plan::resolve(&exp.plan, depth);
            if let Some(d) = resolution
                .diagnostics
                .iter()
                .find(|d| d.severity == slayer_engine::plan::Severity::Error)
            {
                bad.push((cell.key(), d.message.clone()));
            }
        }
        bad
    }

    /// Where the study keeps its cell experiments and its cell → run map.
    #[must_use]
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        dir(data_dir, &self.name)
    }

    /// The study as run: its scale applied and its paths absolute, as a study file of its own
    /// (saved beside the cells, so the console can show a study without its source file).
    pub fn resolved_text(&self) -> Result<String> {
        let file = StudyFile {
            name: self.name.clone(),
            description: self.description.clone(),
            seeds: self.seeds.clone(),
            base: self.base.clone(),
            strategies: self.strategies.clone(),
            corpora: self.corpora.clone(),
            scale: toml::Table::new(),
        };
        toml::to_string(&file).because(|| format!("cannot write the study {} as run", self.name))
    }

    /// A study as `study run` saved it in the data directory.
    pub fn load_saved(data_dir: &Path, name: &str) -> Result<Self> {
        let path = dir(data_dir, name).join(SAVED_STUDY);
        if !path.exists() {
            // What matters first: a status line cuts the path.
            return Err(Error::invalid(format!(
                "no study {name:?} (`slayer study run FILE` records one) in {}",
                path.display()
            )));
        }
        Self::load(&path)
    }
}

/// The file `study run` writes beside the cells: the study as run.
pub const SAVED_STUDY: &str = "study.toml";

/// The directory of the study `name`.
#[must_use]
pub fn dir(data_dir: &Path, name: &str) -> PathBuf {
    crate::layout::DataDir::at(data_dir).studies().join(name)
}

/// The cell → run map of a study (empty when there is none or it does not read: see
/// [`read_cells`] for why).
#[must_use]
pub fn load_cells(dir: &Path) -> BTreeMap<String, String> {
    read_cells(dir).unwrap_or_default()
}

/// The cell → run map of a study, or what is wrong with its `cells.json` (missing, too large,
/// not a map of names), naming the file.
pub fn read_cells(dir: &Path) -> Result<BTreeMap<String, String>> {
    let path = dir.join("cells.json");
    let text = slayer_engine::corpus::read_settings(&path, "study cell map")?;
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid(format!(
            "{}: not a map of cell names to run ids: {e}",
            path.display()
        ))
    })
}

pub fn save_cells(dir: &Path, cells: &BTreeMap<String, String>) -> Result<()> {
    let path = dir.join("cells.json");
    let json =
        serde_json::to_vec_pretty(cells).because(|| format!("cannot write {}", path.display()))?;
    slayer_engine::atomic::replace_file(&path, &json)?;
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
    /// When the run first started and last ended (seconds since the epoch), if it did.
    pub started: Option<f64>,
    pub ended: Option<f64>,
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
        // The base evaluation is the study's, not the layout's: it is left out of wall time.
        if let EventKind::Eval(r) = &e.kind
            && r.label == Before::Base.label()
            && segment_start.is_some()
        {
            segment_start = Some(e.time);
        }
        match &e.kind {
            EventKind::RunStart {
                trainable_params,
                total_steps,
                ..
            } => {
                out.trainable_params = *trainable_params;
                out.steps = *total_steps;
                segment_start = Some(e.time);
                out.started.get_or_insert(e.time);
            }
            EventKind::Eval(r) if r.label == Before::Base.label() => out.before = metrics(r),
            EventKind::Eval(r) if r.label == "final" => out.after = metrics(r),
            EventKind::End { status, .. } => {
                if let Some(s) = segment_start.take() {
                    out.wall_secs += e.time - s;
                }
                out.ended = Some(e.time);
                if *status != RunStatus::Finished {
                    out.after.clear();
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether a metric measures injection (the held-out probe or held-out domain text) rather than
/// forgetting.
#[must_use]
pub fn is_injection(metric: &str) -> bool {
    metric == "facts acc" || metric == "heldout ppl"
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

/// A comparison table: a header and rows of formatted cells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The table as markdown.
    #[must_use]
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut s = line(&self.header);
        s.push_str(&line(&vec!["---".to_string(); self.header.len()]));
        for row in &self.rows {
            s.push_str(&line(row));
        }
        s
    }
}

/// The comparison of one corpus: a row for the base model, then one per strategy with every
/// metric after training as mean ± sd over the seeds done.
#[must_use]
pub fn comparison(study: &Study, corpus: &str, results: &[CellResult]) -> Table {
    let rows: Vec<&CellResult> = results
        .iter()
        .filter(|r| r.cell.as_ref().is_some_and(|c| c.corpus == corpus))
        .collect();
    let mut names: Vec<String> = rows.iter().flat_map(|r| r.after.keys().cloned()).collect();
    // Injection first (the probe, held-out domain text), then forgetting.
    names.sort_by_key(|n| (!is_injection(n), n.clone()));
    names.dedup();
    let digits = |n: &str| if n.ends_with("acc") { 3 } else { 2 };
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
    let mut table = Table {
        header: ["strategy", "trainable params", "steps", "wall s"]
            .iter()
            .map(ToString::to_string)
            .chain(
                names
                    .iter()
                    .map(|n| format!("{n} {}", if n.ends_with("acc") { "↑" } else { "↓" })),
            )
            .chain(std::iter::once("seeds done".to_string()))
            .collect(),
        rows: Vec::new(),
    };
    // The base model is the same for every strategy: one row, from whichever cell evaluated it.
    if let Some(base) = rows.iter().map(|r| &r.before).find(|b| !b.is_empty()) {
        let mut row: Vec<String> = ["base model", "—", "0", "—"]
            .iter()
            .map(ToString::to_string)
            .collect();
        row.extend(names.iter().map(|n| {
            base.get(n)
                .map_or("—".into(), |v| format!("{v:.prec$}", prec = digits(n)))
        }));
        row.push("—".into());
        table.rows.push(row);
    }
    for strategy in &study.strategies {
        let cells: Vec<&&CellResult> = rows
            .iter()
            .filter(|r| r.cell.as_ref().is_some_and(|c| c.strategy == strategy.name))
            .collect();
        let done: Vec<&&&CellResult> = cells.iter().filter(|r| !r.after.is_empty()).collect();
        let first = cells.iter().find(|r| r.steps > 0);
        let mut row = vec![
            strategy.name.clone(),
            first.map_or("—".into(), |r| {
                slayer_engine::plan::totals::human_count(r.trainable_params)
            }),
            first.map_or("—".into(), |r| r.steps.to_string()),
            fmt(&done.iter().map(|r| r.wall_secs).collect::<Vec<_>>(), 0),
        ];
        for n in &names {
            let after: Vec<f64> = done
                .iter()
                .filter_map(|r| r.after.get(n).copied())
                .collect();
            row.push(fmt(&after, digits(n)));
        }
        row.push(format!("{}/{}", done.len(), cells.len()));
        table.rows.push(row);
    }
    table
}

/// The comparison of one corpus as markdown (see [`comparison`]).
#[must_use]
pub fn table(study: &Study, corpus: &str, results: &[CellResult]) -> String {
    comparison(study, corpus, results).markdown()
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

/// How long the grid took: from the first run's start to the last run's end, with the number of
/// runs that ended. `None` before any run ended.
#[must_use]
pub fn elapsed(results: &[CellResult]) -> Option<(f64, usize)> {
    let start = results
        .iter()
        .filter_map(|r| r.started)
        .fold(f64::INFINITY, f64::min);
    let ended: Vec<f64> = results.iter().filter_map(|r| r.ended).collect();
    let end = ended.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (start.is_finite() && end.is_finite()).then_some((end - start, ended.len()))
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
