//! The headless command line: argument parsing, logging set-up and dispatch. Human-readable text
//! by default, `--json` where a machine reads the output. Everything printed goes through
//! `crate::out` (sanitised; a closed stdout ends the command quietly).

mod backend;
mod bench;
mod chat;
mod eval;
mod expand;
mod experiments;
mod importance;
mod model;
mod plan;
mod progress;
mod runs;
mod store;
mod study;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::core::device::DeviceChoice;

pub use crate::interrupt::INTERRUPTED;
use crate::interrupt::reset as reset_interrupt;
use crate::out;

#[derive(Debug, Parser)]
#[command(
    name = "slayer",
    version,
    about = "Knowledge injection by layer expansion on Llama-family models"
)]
pub struct Cli {
    /// Where models, experiments and runs live.
    #[arg(long, global = true, env = "SLAYER_HOME")]
    pub data_dir: Option<PathBuf>,
    /// Compute device: cpu, cuda or auto.
    #[arg(long, global = true, default_value = "auto")]
    pub device: DeviceChoice,
    /// CPU threads for the numerics, 1 to 1024 (default: the experiment's `[train] threads`
    /// when training, else the CPUs this process may use). A background run decides its own,
    /// from its experiment.
    #[arg(long, global = true, env = "SLAYER_THREADS", value_parser = parse_threads)]
    pub threads: Option<std::num::NonZeroUsize>,
    // The console's options: before any command only (`slayer --plain`), so that no
    // command's --help lists options it ignores.
    /// Console: plain glyphs (no Braille) in charts.
    #[arg(long, help_heading = "Console")]
    pub plain: bool,
    /// Console: colours to use (0, 16, 256 or 24); default from COLORTERM, none with NO_COLOR.
    #[arg(long, help_heading = "Console", value_parser = ["0", "16", "256", "24"])]
    pub colors: Option<String>,
    /// Console: let the mouse scroll and click (off by default: it breaks terminal selection).
    #[arg(long, help_heading = "Console")]
    pub mouse: bool,
    /// Console: theme to start with (dark, light, high-contrast, or one in <data>/themes).
    #[arg(long, help_heading = "Console")]
    pub theme: Option<String>,
    /// Console: ring the terminal's bell at alerts (a run failed or finished, a non-finite step,
    /// a loss spike, a plateau).
    #[arg(long, help_heading = "Console")]
    pub bell: bool,
    /// Without a command, the full-screen console opens.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch, import and inspect models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Chat with a model (or two side by side).
    Chat(chat::ChatArgs),
    /// Check, compare and convert layer plans.
    #[command(subcommand)]
    Plan(plan::PlanCommand),
    /// Build the expanded model a plan describes (model surgery).
    Expand(expand::ExpandArgs),
    /// Measure per-block importance on a calibration corpus.
    Importance(importance::ImportanceArgs),
    /// Train an experiment's trainable blocks (or resume a run).
    Train(train::TrainArgs),
    /// Evaluate a model: perplexity, bits per byte, multiple-choice accuracy.
    Eval(eval::EvalArgs),
    /// Write a run's trained model as a standalone HF directory.
    Export(train::ExportArgs),
    /// Generate data sets.
    #[command(subcommand)]
    Data(eval::DataCommand),
    /// List, follow, stop, kill, resume, remove and export runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// The data directory's experiments, and the templates shipped with slayer.
    #[command(subcommand)]
    Experiments(experiments::ExperimentsCommand),
    /// The index over run directories: rebuild, sync, status, lineage.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// A grid of strategies × corpora × seeds: run it, compare it.
    #[command(subcommand)]
    Study(study::StudyCommand),
    /// Training and decoding throughput and peak memory for a model shape (random weights).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// A count that must be at least 1 (`--window 0` computes nothing).
pub(crate) fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses arguments and runs the command; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap renders them; usage errors quote what was typed,
        // so they are printed through the sanitising writer.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            err!("{}", e.render());
            return e.exit_code();
        }
    };
    // Before any thread starts: mimalloc's options are not thread-safe.
    crate::allocator::keep_freed_memory();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(crate::fetch::default_data_dir);
    // Before any thread starts: candle sizes its pools from what this sets.
    let experiment_threads = match &cli.command {
        Some(Command::Train(args)) => train::threads_wanted(args, &data_dir),
        _ => None,
    };
    crate::threads::decide(cli.threads, experiment_threads);
    init_logging(&data_dir);
    // A background run's worker, supervisor and Slurm job entry are stopped by SIGTERM (`runs
    // stop`, the console's `s`, `scancel`); a second stop must not kill one mid-checkpoint, so only interactive
    // commands exit at a second signal.
    let background = matches!(
        &cli.command,
        Some(
            Command::Train(train::TrainArgs { worker: true, .. })
                | Command::Runs(
                    runs::RunsCommand::Supervise { .. } | runs::RunsCommand::SlurmJob { .. }
                )
        )
    );
    crate::interrupt::install_handler(!background);
    let Some(command) = cli.command else {
        return match console(&cli, &data_dir) {
            Ok(code) => code,
            Err(e) => report(&e),
        };
    };
    let result = match command {
        Command::Model(cmd) => model::run(cmd, &data_dir, cli.device),
        Command::Chat(args) => chat::run(&args, &data_dir, cli.device),
        Command::Plan(cmd) => plan::run(cmd, &data_dir, cli.device),
        Command::Expand(args) => expand::run(&args, &data_dir),
        Command::Importance(args) => importance::run(&args, &data_dir, cli.device),
        Command::Train(args) => train::run(&args, &data_dir, cli.device),
        Command::Eval(args) => eval::run(&args, &data_dir, cli.device),
        Command::Export(args) => train::export(&args, &data_dir),
        Command::Data(cmd) => eval::data(cmd, &data_dir),
        Command::Runs(cmd) => runs::run(cmd, &data_dir, cli.device),
        Command::Experiments(cmd) => experiments::run(cmd, &data_dir),
        Command::Store(cmd) => store::run(cmd, &data_dir),
        Command::Study(cmd) => study::run(cmd, &data_dir, cli.device),
        Command::Bench(cmd) => bench::run(cmd, cli.device),
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

fn parse_threads(text: &str) -> std::result::Result<std::num::NonZeroUsize, String> {
    crate::core::threads::parse_count(text).ok_or_else(|| {
        format!(
            "`{text}` is not a thread count (1 to {})",
            crate::core::threads::MAX_THREADS
        )
    })
}

/// The exit code of a failed command, after saying why on stderr: 130 when interrupted, 0 when
/// stdout was closed by its reader (nothing left to say to anyone), else 1.
fn report(e: &anyhow::Error) -> i32 {
    if out::is_broken_pipe(e) {
        return 0;
    }
    if crate::interrupt::caused(e) {
        errln!("interrupted");
        return 130;
    }
    errln!("error: {e:#}");
    1
}

/// The console, on the demo when the data directory is new: the SmolLM2 model is fetched (with
/// a progress bar, before the screen is taken) and the `smollm2-facts` template becomes the
/// `demo` experiment.
fn console(cli: &Cli, data_dir: &std::path::Path) -> anyhow::Result<i32> {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() && crate::templates::user_experiments(data_dir).is_empty() {
        model::resolve_or_fetch(data_dir, "smollm2")?;
        crate::templates::create_experiment(data_dir, "demo", "smollm2-facts")?;
    }
    crate::tui::run(
        data_dir,
        &crate::tui::Options {
            plain: cli.plain,
            colors: cli.colors.as_deref().and_then(|c| c.parse().ok()),
            mouse: cli.mouse,
            theme: cli.theme.clone(),
            bell: cli.bell,
        },
    )
}

/// Logs go to `<data>/logs/slayer.log`, never to the terminal. `SLAYER_LOG` sets the filter.
fn init_logging(data_dir: &std::path::Path) {
    let dir = crate::layout::DataDir::at(data_dir).logs();
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("slayer.log"))
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLAYER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        // A full disk must not put "[tracing-subscriber] Unable to write…" on the terminal (or
        // over the console): losing a log line is the lesser harm.
        .log_internal_errors(false)
        .try_init();
}

#[cfg(test)]
mod help_tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use clap::CommandFactory as _;

    /// Every argument and subcommand of every command says what it is in `--help`, and no
    /// command lists the console's options (they apply to `slayer` alone).
    #[test]
    fn every_option_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {}: no about", sub.get_name()));
                }
                walk(sub, &path, missing);
            }
        }
        let root = super::Cli::command();
        let mut missing = Vec::new();
        walk(&root, "", &mut missing);
        assert!(
            missing.is_empty(),
            "without a description:\n{}",
            missing.join("\n")
        );
        for sub in root.get_subcommands() {
            for name in ["plain", "colors", "mouse", "theme", "bell"] {
                assert!(
                    sub.get_arguments().all(|a| a.get_id().as_str() != name),
                    "`slayer {} --help` lists --{name}",
                    sub.get_name()
                );
            }
        }
    }
}
