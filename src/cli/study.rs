//! `slayer study run FILE [--wait]`, `slayer study show FILE [--json]`: the grid of strategies ×
//! corpora × seeds (see [`crate::study`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::core::device::DeviceChoice;
use crate::study::{Study, all_ended, load_cells, results, save_cells, table};

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Queue every cell of the study that has no run yet (they run one at a time per device).
    Run {
        /// Study file, or the name of a shipped study.
        file: PathBuf,
        /// Wait for every cell to end, then print the tables.
        #[arg(long)]
        wait: bool,
        /// Apply the study's `[scale.NAME]` overlay (for example `gpu`: longer runs, bigger
        /// corpora); its runs and results are the study `NAME-SCALE`.
        #[arg(long)]
        scale: Option<String>,
        /// With `--on slurm`: at most this many of the study's jobs run at once.
        #[arg(long, value_parser = super::at_least_one)]
        concurrent: Option<usize>,
        #[command(flatten)]
        backend: Box<super::backend::BackendArgs>,
    },
    /// The comparison tables, from the cells' runs (written to `results.md` and `.json` too).
    /// FILE may also be the name of a study run before (`<data>/studies/NAME`).
    Show {
        /// Study file, or the name of a study run before.
        file: PathBuf,
        /// Print the tables as JSON.
        #[arg(long)]
        json: bool,
        /// The `[scale.NAME]` overlay the study was run with (its results are the study NAME-SCALE).
        #[arg(long)]
        scale: Option<String>,
    },
}

pub fn run(cmd: StudyCommand, data_dir: &Path, device: DeviceChoice) -> Result<i32> {
    match cmd {
        StudyCommand::Run {
            file,
            wait,
            scale,
            concurrent,
            backend,
        } => {
            let backend = backend.backend()?.unwrap_or_default();
            if concurrent.is_some() && backend == crate::launch::Backend::Local {
                anyhow::bail!(
                    "--concurrent limits a study's Slurm jobs; the local queue runs one cell at a time per device"
                );
            }
            let study = Study::load_scaled(&file, scale.as_deref())?;
            // Thirty runs failing one after another on a missing corpus helps no one.
            let missing = study.missing_files();
            if !missing.is_empty() {
                let list: Vec<String> = missing
                    .iter()
                    .map(|(cell, path)| format!("  {} (cell {cell})", path.display()))
                    .collect();
                anyhow::bail!(
                    "{}: files the study reads do not exist (the study file says where they come from):\n{}",
                    file.display(),
                    list.join("\n")
                );
            }
            // Likewise a plan that cannot resolve: say so for every cell before queueing any.
            let unresolved = study.unresolved_plans(data_dir);
            if !unresolved.is_empty() {
                let list: Vec<String> = unresolved
                    .iter()
                    .map(|(cell, why)| format!("  cell {cell}: {why}"))
                    .collect();
                anyhow::bail!(
                    "{}: plans that do not resolve against their base model:\n{}",
                    file.display(),
                    list.join("\n")
                );
            }
            let dir = study.dir(data_dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // The study as run, for `study show` without the source file and for the console.
            let saved = dir.join(crate::study::SAVED_STUDY);
            crate::core::atomic::replace_file(&saved, study.resolved_text()?.as_bytes())
                .with_context(|| format!("cannot write {}", saved.display()))?;
            let mut cells = load_cells(&dir);
            let mut launched = 0;
            for (index, cell) in study.cells().into_iter().enumerate() {
                if cells
                    .get(&cell.key())
                    .is_some_and(|id| crate::runner::RunDir::open(data_dir, id).is_ok())
                {
                    continue;
                }
                let path = dir.join(format!("{}.toml", cell.key()));
                std::fs::write(&path, study.experiment_text(&cell))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                // A cap of N: the cells take N job names in turn, and Slurm runs one job of a
                // name at a time (`--dependency=singleton`).
                let cell_backend = match (&backend, concurrent) {
                    (crate::launch::Backend::Slurm(r), Some(n)) => {
                        crate::launch::Backend::Slurm(Box::new(crate::runner::slurm::Resources {
                            group: Some(format!("slayer-{}-{}", study.name, index % n)),
                            ..(**r).clone()
                        }))
                    }
                    _ => backend.clone(),
                };
                let cell_run = crate::launch::launch(
                    data_dir,
                    &path,
                    None,
                    device,
                    &super::model::resolve_or_fetch,
                    &cell_backend,
                )
                .with_context(|| format!("cell {}", cell.key()))?;
                let id = cell_run.run.id;
                cells.insert(cell.key(), id);
                save_cells(&dir, &cells)?;
                launched += 1;
            }
            let total = study.cells().len();
            errln!(
                "study {}: {launched} cells queued, {} already had runs ({total} in all); `slayer runs ls` or the console shows them",
                study.name,
                total - launched
            );
            if !wait {
                return Ok(0);
            }
            let pb = super::progress::bar(total as u64, "study", "cells");
            loop {
                let r = results(&study, data_dir);
                let ended = r
                    .iter()
                    .filter(|c| all_ended(std::slice::from_ref(c)))
                    .count();
                pb.set_position(ended as u64);
                if ended == total {
                    break;
                }
                if super::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                    pb.finish_and_clear();
                    errln!("stopped waiting; the cells keep running (`slayer study show` later)");
                    return Ok(130);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            pb.finish_and_clear();
            show(&study, data_dir, false)
        }
        StudyCommand::Show { file, json, scale } => {
            // A name that is not a file is a study already run in the data directory.
            let study = match file.to_str() {
                Some(name) if !file.exists() && scale.is_none() && !name.contains('/') => {
                    Study::load_saved(data_dir, name)?
                }
                _ => Study::load_scaled(&file, scale.as_deref())?,
            };
            show(&study, data_dir, json)
        }
    }
}

fn show(study: &Study, data_dir: &Path, json: bool) -> Result<i32> {
    let r = results(study, data_dir);
    let mut md = format!("# {}\n\n{}\n", study.name, study.description.trim());
    for c in &study.corpora {
        let _ = write!(
            md,
            "\n## corpus {}\n\n{}",
            c.name,
            table(study, &c.name, &r)
        );
    }
    if let Some((secs, ended)) = crate::study::elapsed(&r) {
        let _ = write!(
            md,
            "\n{ended} of {} runs ended; from the first start to the last end: {}\n",
            r.len(),
            crate::core::text::duration(secs)
        );
    }
    let dir = study.dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("results.md"), &md)
        .with_context(|| format!("cannot write {}", dir.join("results.md").display()))?;
    let value = serde_json::to_value(&r)?;
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&value)?)
        .with_context(|| format!("cannot write {}", dir.join("results.json").display()))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        out!("{md}")?;
        errln!("(written to {})", dir.join("results.md").display());
    }
    Ok(0)
}
