//! The runs comparison table: every run with its hyperparameters (plan, lr, steps, batch,
//! seed) and its latest metrics as columns, filtered and sorted by any column — what `slayer
//! runs compare` prints and the console's compare screen shows.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::runner::{EventLogRead, RunDir, RunState};
use slayer_engine::events::{EvalRecord, Event, EventKind};

/// One run of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    pub run: String,
    pub experiment: String,
    pub status: RunState,
    /// `slayer +6 −3 (33 blocks)`: preset (or `custom`), new and pruned blocks, final depth.
    pub plan: String,
    pub lr: Option<f64>,
    pub steps: Option<u64>,
    pub batch: Option<usize>,
    pub seed: Option<u64>,
    /// The step reached.
    pub step: u64,
    pub loss: Option<f64>,
    /// The evaluation the metrics come from (`final`, or the newest during training).
    pub evaluated_at: Option<String>,
    /// `NAME ppl` and `NAME acc` of that evaluation.
    pub metrics: BTreeMap<String, f64>,
    /// What was wrong with the run's log (lines skipped, unreadable), as `runs ls` says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The fixed columns, in order; metric columns follow, sorted by name.
pub const FIXED_COLUMNS: [&str; 10] = [
    "run",
    "experiment",
    "status",
    "plan",
    "lr",
    "steps",
    "batch",
    "seed",
    "step",
    "loss",
];

/// A value of a cell, for sorting and printing.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Number(f64),
    Missing,
}

impl Cell {
    /// As printed: numbers with the precision their column needs.
    #[must_use]
    pub fn show(&self, column: &str) -> String {
        match self {
            Self::Text(t) => t.clone(),
            Self::Missing => "—".into(),
            Self::Number(v) => match column {
                "lr" => format!("{v:.1e}"),
                "steps" | "batch" | "seed" | "step" => format!("{v:.0}"),
                c if c.ends_with(" acc") => format!("{v:.3}"),
                _ => format!("{v:.4}"),
            },
        }
    }
}

impl CompareRow {
    /// The cell of `column` (a fixed one or a metric).
    #[must_use]
    pub fn cell(&self, column: &str) -> Cell {
        let num = |v: Option<f64>| v.map_or(Cell::Missing, Cell::Number);
        #[expect(
            clippy::cast_precision_loss,
            reason = "counts shown and sorted as numbers"
        )]
        match column {
            "run" => Cell::Text(self.run.clone()),
            "experiment" => Cell::Text(self.experiment.clone()),
            "status" => Cell::Text(self.status.to_string()),
            "plan" => Cell::Text(self.plan.clone()),
            "lr" => num(self.lr),
            "steps" => num(self.steps.map(|s| s as f64)),
            "batch" => num(self.batch.map(|b| b as f64)),
            "seed" => num(self.seed.map(|s| s as f64)),
            "step" => Cell::Number(self.step as f64),
            "loss" => num(self.loss),
            metric => num(self.metrics.get(metric).copied()),
        }
    }

    /// Whether the row matches a filter: every word appears in its run, experiment, status or
    /// plan (case-insensitive).
    #[must_use]
    pub fn matches(&self, filter: &str) -> bool {
        let haystack = format!(
            "{} {} {} {}",
            self.run, self.experiment, self.status, self.plan
        )
        .to_lowercase();
        filter
            .to_lowercase()
            .split_whitespace()
            .all(|w| haystack.contains(w))
    }
}

/// The columns of `rows`: the fixed ones, then every metric any row has.
#[must_use]
pub fn columns(rows: &[CompareRow]) -> Vec<String> {
    let mut metrics: Vec<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
    metrics.sort();
    metrics.dedup();
    FIXED_COLUMNS
        .iter()
        .map(|c| (*c).to_string())
        .chain(metrics.into_iter().cloned())
        .collect()
}

/// Sorts by `column`; missing values last whichever the direction.
pub fn sort(rows: &mut [CompareRow], column: &str, descending: bool) {
    rows.sort_by(|a, b| {
        let (x, y) = (a.cell(column), b.cell(column));
        let order = match (&x, &y) {
            (Cell::Missing, Cell::Missing) => std::cmp::Ordering::Equal,
            (Cell::Missing, _) => return std::cmp::Ordering::Greater,
            (_, Cell::Missing) => return std::cmp::Ordering::Less,
            (Cell::Number(p), Cell::Number(q)) => p.total_cmp(q),
            (Cell::Text(p), Cell::Text(q)) => p.cmp(q),
            (Cell::Number(_), Cell::Text(_)) => std::cmp::Ordering::Less,
            (Cell::Text(_), Cell::Number(_)) => std::cmp::Ordering::Greater,
        };
        if descending { order.reverse() } else { order }
    });
}

/// The row of one run (its event log read by the caller, once for the summary and the
/// metrics).
#[must_use]
pub fn row(run: &RunDir, log: Result<&EventLogRead, &crate::Error>) -> CompareRow {
    let summary = crate::runner::summarize_read(run, log);
    let events: &[Event] = log.map_or(&[], |l| l.events.as_slice());
    let experiment = slayer_engine::experiment::Experiment::load(&run.experiment_path()).ok();
    let projection = crate::runner::RunProjection::of(events);
    let plan = if projection.plan.layers == 0 {
        "—".into()
    } else {
        describe_plan(&projection.plan)
    };
    let evals: Vec<&EvalRecord> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Eval(r) if r.label != "base" && r.label != "expanded" => Some(r),
            _ => None,
        })
        .collect();
    let latest = evals
        .iter()
        .rev()
        .find(|r| r.label == "final")
        .or_else(|| evals.iter().max_by_key(|r| r.step));
    let mut metrics = BTreeMap::new();
    if let Some(r) = latest {
        for p in &r.ppl {
            metrics.insert(format!("{} ppl", p.name), p.perplexity);
        }
        for t in &r.tasks {
            metrics.insert(format!("{} acc", t.name), t.acc);
        }
    }
    CompareRow {
        run: run.id.clone(),
        experiment: summary.experiment,
        status: summary.status,
        plan,
        lr: experiment.as_ref().map(|e| e.train.lr),
        steps: experiment.as_ref().map(|e| e.train.steps),
        batch: experiment.as_ref().map(|e| e.train.batch_size),
        seed: experiment.as_ref().map(|e| e.train.seed),
        step: summary.step,
        loss: summary.last_loss,
        evaluated_at: latest.map(|r| format!("{} {}", r.label, r.step)),
        metrics,
        problem: summary.problem,
    }
}

/// Every run of the data directory, oldest first (unreadable logs give rows without metrics).
#[must_use]
pub fn rows(data_dir: &Path) -> Vec<CompareRow> {
    crate::runner::list_runs(data_dir)
        .iter()
        .map(|run| row(run, run.read_event_log().as_ref()))
        .collect()
}

/// `slayer +6 −3 (33 blocks)` from a run's resolved layer map.
fn describe_plan(shape: &crate::runner::PlanShape) -> String {
    format!(
        "{} +{} −{} ({} blocks)",
        shape.preset.as_deref().unwrap_or("custom"),
        shape.new.len(),
        shape.pruned.len(),
        shape.layers
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn r(run: &str, lr: Option<f64>, acc: Option<f64>) -> CompareRow {
        CompareRow {
            run: run.into(),
            experiment: "facts".into(),
            status: RunState::Finished,
            plan: "slayer +2 −1 (9 blocks)".into(),
            lr,
            steps: Some(40),
            batch: Some(2),
            seed: Some(0),
            step: 40,
            loss: Some(1.0),
            evaluated_at: Some("final 40".into()),
            problem: None,
            metrics: acc
                .map(|a| BTreeMap::from([("probe acc".to_string(), a)]))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn sorted_by_any_column_with_missing_values_last() {
        let mut rows = vec![
            r("a", Some(1e-3), Some(0.5)),
            r("b", None, Some(0.9)),
            r("c", Some(1e-4), None),
        ];
        sort(&mut rows, "probe acc", true);
        assert_eq!(
            rows.iter().map(|r| r.run.as_str()).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        sort(&mut rows, "lr", false);
        assert_eq!(
            rows.iter().map(|r| r.run.as_str()).collect::<Vec<_>>(),
            ["c", "a", "b"]
        );
        assert_eq!(columns(&rows).last().unwrap(), "probe acc");
        assert_eq!(rows[0].cell("lr").show("lr"), "1.0e-4");
        assert!(rows[0].matches("FACTS slayer") && !rows[0].matches("llama-pro"));
    }

    #[test]
    fn plans_are_described_by_their_counts() {
        let plan = crate::runner::PlanShape {
            preset: Some("slayer".into()),
            base_layers: 3,
            layers: 3,
            new: vec![1],
            trainable: vec![1],
            pruned: vec![3],
        };
        assert_eq!(describe_plan(&plan), "slayer +1 −1 (3 blocks)");
    }
}
