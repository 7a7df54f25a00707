//! `--on local|slurm` and the Slurm resource flags, shared by `train`, `runs resume` and
//! `study run`: they choose the launcher's [`Backend`].

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::launch::Backend;
use crate::runner::slurm::Resources;

/// Where a background run runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum On {
    /// This machine's queue (one run at a time per device).
    Local,
    /// A Slurm batch job (the data directory must be on a filesystem the nodes share).
    Slurm,
}

#[derive(Debug, Clone, Default, Args)]
pub struct BackendArgs {
    /// Where the run's worker runs: `local` (this machine's queue) or `slurm` (a batch job,
    /// resources from the experiment's `[slurm]` table and the flags below). Implies
    /// `--detach`. For `runs resume`, default: where the run ran last.
    #[arg(long, value_enum, help_heading = "Backend")]
    pub on: Option<On>,
    /// Slurm partition (`--partition`).
    #[arg(long, help_heading = "Backend")]
    pub partition: Option<String>,
    /// Slurm generic resources (`--gres`, e.g. `gpu:1`).
    #[arg(long, help_heading = "Backend")]
    pub gres: Option<String>,
    /// Slurm GPUs (`--gpus`, e.g. `1` or `h100:1`).
    #[arg(long, help_heading = "Backend")]
    pub gpus: Option<String>,
    /// Slurm CPUs for the run (`--cpus-per-task`).
    #[arg(long, help_heading = "Backend")]
    pub cpus: Option<u32>,
    /// Slurm memory (`--mem`, e.g. `32G`).
    #[arg(long, help_heading = "Backend")]
    pub mem: Option<String>,
    /// Slurm time limit (`--time`, e.g. `2:00:00`); the run checkpoints before it and
    /// continues in a requeued job.
    #[arg(long, help_heading = "Backend")]
    pub time: Option<String>,
    /// Seconds before the time limit at which the run checkpoints and its job requeues itself
    /// (default 120).
    #[arg(long, help_heading = "Backend")]
    pub warning_secs: Option<u32>,
    /// Slurm account (`--account`).
    #[arg(long, help_heading = "Backend")]
    pub account: Option<String>,
    /// Slurm quality of service (`--qos`).
    #[arg(long, help_heading = "Backend")]
    pub qos: Option<String>,
    /// Another `#SBATCH` option, as sbatch takes it (`--constraint=h100`); repeatable.
    #[arg(
        long = "sbatch",
        value_name = "OPTION",
        allow_hyphen_values = true,
        help_heading = "Backend"
    )]
    pub sbatch: Vec<String>,
}

impl BackendArgs {
    fn resources(&self) -> Resources {
        Resources {
            partition: self.partition.clone(),
            gres: self.gres.clone(),
            gpus: self.gpus.clone(),
            cpus: self.cpus,
            mem: self.mem.clone(),
            time: self.time.clone(),
            account: self.account.clone(),
            qos: self.qos.clone(),
            warning_secs: self.warning_secs,
            extra: self.sbatch.clone(),
            group: None,
        }
    }

    /// The backend asked for (`None`: not said). Slurm flags without `--on slurm` are an
    /// error rather than silently ignored.
    pub fn backend(&self) -> Result<Option<Backend>> {
        let resources = self.resources();
        match self.on {
            Some(On::Slurm) => Ok(Some(Backend::Slurm(Box::new(resources)))),
            _ if resources != Resources::default() => {
                bail!("the Slurm options (--partition, --time, …) need --on slurm")
            }
            Some(On::Local) => Ok(Some(Backend::Local)),
            None => Ok(None),
        }
    }
}
