//! `slayer experiments ls|new|history`: the data directory's experiments and the shipped templates.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

use crate::core::text::sanitize_for_terminal;
use crate::templates::{TEMPLATES, create_experiment, user_experiments};

#[derive(Debug, Subcommand)]
pub enum ExperimentsCommand {
    /// List the data directory's experiments and the templates shipped with slayer.
    Ls,
    /// Create an experiment in the data directory from a template.
    New {
        /// The new experiment's name (its file is <data>/experiments/NAME.toml).
        name: String,
        /// Template to start from (`slayer experiments ls` lists them).
        #[arg(long, default_value = "smollm2-slayer")]
        from: String,
    },
    /// Every version of an experiment the store has seen (files and runs), oldest first.
    History {
        /// The experiment's name.
        name: String,
    },
}

pub fn run(cmd: ExperimentsCommand, data_dir: &Path) -> Result<i32> {
    match cmd {
        ExperimentsCommand::Ls => {
            let mine = user_experiments(data_dir);
            outln!(
                "experiments in {}:",
                crate::templates::experiments_dir(data_dir).display()
            )?;
            if mine.is_empty() {
                outln!("  (none yet: `slayer experiments new NAME --from TEMPLATE`)")?;
            }
            for path in mine {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let status = match crate::core::experiment::Experiment::load(&path) {
                    Ok(_) => String::new(),
                    Err(e) => format!(
                        "  (does not parse: {})",
                        sanitize_for_terminal(e.lines().next().unwrap_or_default())
                    ),
                };
                outln!("  {}{status}", sanitize_for_terminal(&name))?;
            }
            outln!("templates:")?;
            for t in TEMPLATES {
                let first = t.description();
                let first = first.lines().next().unwrap_or_default();
                outln!("  {:<24} {first}", t.name)?;
            }
            Ok(0)
        }
        ExperimentsCommand::New { name, from } => {
            let path = create_experiment(data_dir, &name, &from)?;
            outln!("{}", path.display())?;
            errln!("created from template {from}; train it with: slayer train {name}");
            Ok(0)
        }
        ExperimentsCommand::History { name } => {
            let store = super::store::open_synced(data_dir)?;
            let versions: Vec<_> = store
                .experiments()?
                .into_iter()
                .filter(|v| v.name == name)
                .collect();
            if versions.is_empty() {
                anyhow::bail!("the store has no experiment named {name:?}");
            }
            for v in versions {
                outln!(
                    "── {} {} (from {})\n{}",
                    v.hash,
                    crate::core::text::utc_stamp_of(v.first_seen),
                    sanitize_for_terminal(&v.source),
                    sanitize_for_terminal(&v.text)
                )?;
            }
            Ok(0)
        }
    }
}
