//! `slayer store rebuild|status|sync`: the index over run directories (see [`crate::store`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;

use crate::core::text::sanitize_for_terminal;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Throw the index away and recreate it from the run directories, experiments and chats.
    Rebuild,
    /// Bring the index up to date with the run directories (only what is new is read).
    Sync,
    /// What the index holds.
    Status {
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A run's lineage: experiment version, plan, base model, checkpoints, evaluations, chats.
    Lineage {
        /// The run id.
        run: String,
        /// Print the lineage as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Directories of experiments besides the data directory's own: none for now (the templates
/// are built in and are not versions of anything until used).
fn extra_experiment_dirs() -> Vec<PathBuf> {
    Vec::new()
}

fn holder() -> String {
    format!(
        "slayer {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )
}

/// How long a store command waits for another holder (the console holds it for a sync, a few
/// milliseconds at a time; a rebuild of a large index, longer).
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

fn open(data_dir: &Path) -> Result<Store> {
    Ok(Store::open_waiting(data_dir, &holder(), PATIENCE)?)
}

/// Opens the store and ingests whatever is new.
pub(crate) fn open_synced(data_dir: &Path) -> Result<Store> {
    let store = open(data_dir)?;
    let stats = store.ingest_all(data_dir, &extra_experiment_dirs())?;
    report_chat_problems(&stats);
    Ok(store)
}

/// Transcripts that could not be indexed, each named with why.
fn report_chat_problems(stats: &crate::store::IngestStats) {
    for p in &stats.chat_problems {
        errln!("warning: {}", sanitize_for_terminal(p));
    }
}

pub fn run(cmd: StoreCommand, data_dir: &Path) -> Result<i32> {
    match cmd {
        StoreCommand::Rebuild => {
            let started = std::time::Instant::now();
            let (store, stats) =
                Store::rebuild(data_dir, &holder(), &extra_experiment_dirs(), PATIENCE)?;
            report_chat_problems(&stats);
            store.flush()?;
            errln!(
                "rebuilt {} from {} runs ({} events), {} experiment versions, {} chats in {:.2} s",
                store.path().display(),
                stats.runs,
                stats.events,
                stats.experiments,
                stats.chats,
                started.elapsed().as_secs_f64()
            );
            report_problems(&store)?;
            Ok(0)
        }
        StoreCommand::Sync => {
            let store = open(data_dir)?;
            let stats = store.ingest_all(data_dir, &extra_experiment_dirs())?;
            report_chat_problems(&stats);
            store.flush()?;
            errln!(
                "{} new events from {} runs, {} new experiment versions, {} chats updated",
                stats.events,
                stats.runs,
                stats.experiments,
                stats.chats
            );
            report_problems(&store)?;
            Ok(0)
        }
        StoreCommand::Status { json } => {
            let store = open_synced(data_dir)?;
            let runs = store.runs()?;
            let experiments = store.experiments()?;
            let chats = store.chats()?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "path": store.path(),
                        "runs": runs,
                        "experiment_versions": experiments.len(),
                        "chats": chats,
                    }))?
                )?;
            } else {
                outln!(
                    "{}: {} runs, {} experiment versions, {} chats",
                    store.path().display(),
                    runs.len(),
                    experiments.len(),
                    chats.len()
                )?;
                report_problems(&store)?;
            }
            Ok(0)
        }
        StoreCommand::Lineage { run, json } => {
            let store = open_synced(data_dir)?;
            let dir = crate::runner::RunDir::open(data_dir, &run)?;
            let id = dir.id.clone();
            let lineage = store
                .lineage(&id)?
                .ok_or_else(|| anyhow::anyhow!("run {id} has no events yet"))?
                .on_disk(&dir.path.join("checkpoints"));
            if json {
                outln!("{}", serde_json::to_string_pretty(&lineage)?)?;
                return Ok(0);
            }
            let p = &lineage.plan;
            outln!(
                "experiment  {} (version {})\nbase model  {}\nplan        {} → {} blocks; new {:?}; trains {:?}; pruned {:?} (plan {})\nrun         {}\ncheckpoints {:?}",
                sanitize_for_terminal(&lineage.experiment),
                lineage.experiment_version,
                sanitize_for_terminal(&lineage.base_model),
                p.base_layers,
                p.layers,
                p.new,
                p.trainable,
                p.pruned,
                lineage.plan_hash,
                lineage.run,
                lineage.checkpoints
            )?;
            if !lineage.removed_checkpoints.is_empty() {
                outln!(
                    "            (removed by rotation: {:?}; `chat {id}@STEP` takes a kept one)",
                    lineage.removed_checkpoints
                )?;
            }
            if !lineage.same_plan.is_empty() {
                outln!("same plan   {}", lineage.same_plan.join(", "))?;
            }
            for (label, step) in &lineage.evals {
                outln!("eval        {label} at step {step}")?;
            }
            for chat in &lineage.chats {
                outln!("chat        {chat}")?;
            }
            Ok(0)
        }
    }
}

fn report_problems(store: &Store) -> Result<()> {
    for r in store.runs()? {
        if let Some(p) = r.problem {
            errln!("run {}: {}", r.id, sanitize_for_terminal(&p));
        }
    }
    Ok(())
}
