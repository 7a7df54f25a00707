//! Runs on a Slurm cluster: what a run directory records of its Slurm jobs, the batch script
//! that starts one, and the job's state as Slurm reports it.
//!
//! slayer schedules nothing itself. A Slurm run is an ordinary run directory (on a filesystem
//! the nodes share) whose worker a batch job starts instead of the local queue; the directory
//! stays the record (its event log says what happened), and Slurm's own view of the job
//! (pending and why, running on which node, cancelled, timed out, …) is shown beside it.
//!
//! `<run>/slurm/` holds:
//! - `batch.sh`, the script as submitted (shown by `runs show`);
//! - `job`, the id of the run's newest job (a resume submits a new one);
//! - `started`, written by the job as its first act: the job id and node that reached the
//!   directory (a job that ran but never wrote it could not see the directory);
//! - `stop`, written by `runs stop` before it signals the job, so the job does not requeue
//!   itself after the checkpoint.
//!
//! The commands (`sbatch`, `scontrol`, `squeue`, `scancel`) are run with whatever environment
//! this process has (`SLURM_CONF` included); their errors come back in Slurm's own words.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::error::{Error, IoContext as _, Result};

use super::RunDir;

/// Seconds before the time limit at which Slurm warns the job (`--signal=B:USR1@…`) unless
/// `[slurm] warning_secs` says otherwise: enough for a checkpoint of a large model to reach a
/// shared filesystem. (Slurm may send it up to a minute early.)
pub const WARNING_SECS: u32 = 120;

/// The longest warning accepted (Slurm's own limit for `--signal`'s time is 65,535 s).
const MAX_WARNING_SECS: u32 = 65_535;

/// What a job asks of the cluster: the experiment's `[slurm]` table, each field overridable
/// by a flag. Fields left out are the cluster's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub partition: Option<String>,
    /// Generic resources, as `--gres` takes them (`gpu:1`, `gpu:a100:2`).
    pub gres: Option<String>,
    /// GPUs, as `--gpus` takes them (`1`, `a100:2`).
    pub gpus: Option<String>,
    /// CPUs for the one task (`--cpus-per-task`); the worker uses what it is given.
    pub cpus: Option<u32>,
    /// Memory, as `--mem` takes it (`32G`).
    pub mem: Option<String>,
    /// Time limit, as `--time` takes it (`2:00:00`, `1-00:00:00`).
    pub time: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Seconds before the time limit at which the run checkpoints and the job requeues
    /// itself (default [`WARNING_SECS`]).
    pub warning_secs: Option<u32>,
    /// More `#SBATCH` lines, each an option as sbatch takes it (`--constraint=h100`).
    pub extra: Vec<String>,
    /// Jobs of one group run one at a time: the group is their job name and each waits for
    /// the one before (`--dependency=singleton`). A study's concurrency cap of N is N groups.
    #[serde(skip)]
    pub group: Option<String>,
}

impl Resources {
    /// The `[slurm]` table of an experiment's text (none: the cluster's defaults). `path`
    /// names the file in the error.
    pub fn of_experiment(path: &Path, text: &str) -> Result<Self> {
        // Only `[slurm]` is read here; the engine reads the rest and passes this one by.
        #[derive(Deserialize)]
        struct Loose {
            #[serde(default)]
            slurm: Option<toml::Value>,
        }
        let loose: Loose = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.message())))?;
        let Some(table) = loose.slurm else {
            return Ok(Self::default());
        };
        let parsed: Resources = table.try_into().map_err(|e: toml::de::Error| {
            Error::invalid(format!("{}: [slurm]: {}", path.display(), e.message()))
        })?;
        parsed.checked(path)
    }

    /// `self` with every field `overrides` sets replaced (extra lines are added), checked
    /// again; `path` (the experiment) names the file in the error.
    pub fn with(mut self, overrides: &Self, path: &Path) -> Result<Self> {
        let pick = |a: &mut Option<String>, b: &Option<String>| {
            if b.is_some() {
                a.clone_from(b);
            }
        };
        pick(&mut self.partition, &overrides.partition);
        pick(&mut self.gres, &overrides.gres);
        pick(&mut self.gpus, &overrides.gpus);
        pick(&mut self.mem, &overrides.mem);
        pick(&mut self.time, &overrides.time);
        pick(&mut self.account, &overrides.account);
        pick(&mut self.qos, &overrides.qos);
        if overrides.cpus.is_some() {
            self.cpus = overrides.cpus;
        }
        if overrides.warning_secs.is_some() {
            self.warning_secs = overrides.warning_secs;
        }
        self.extra.extend(overrides.extra.iter().cloned());
        if overrides.group.is_some() {
            self.group.clone_from(&overrides.group);
        }
        self.checked(path)
    }

    /// Refuses values that would break the script's lines: a newline, a control character,
    /// an extra line that is not an option.
    fn checked(self, path: &Path) -> Result<Self> {
        let fields = [
            ("partition", &self.partition),
            ("gres", &self.gres),
            ("gpus", &self.gpus),
            ("mem", &self.mem),
            ("time", &self.time),
            ("account", &self.account),
            ("qos", &self.qos),
            ("group", &self.group),
        ];
        for (name, value) in fields {
            if let Some(v) = value
                && (v.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()))
            {
                return Err(Error::invalid(format!(
                    "{}: [slurm] {name} = {v:?}: must be one word without spaces or control characters",
                    path.display()
                )));
            }
        }
        if let Some(w) = self.warning_secs
            && !(1..=MAX_WARNING_SECS).contains(&w)
        {
            return Err(Error::invalid(format!(
                "{}: [slurm] warning_secs = {w}: must be 1 to {MAX_WARNING_SECS}",
                path.display()
            )));
        }
        if self.cpus == Some(0) {
            return Err(Error::invalid(format!(
                "{}: [slurm] cpus = 0: a job needs at least one CPU",
                path.display()
            )));
        }
        for line in &self.extra {
            if !line.starts_with("--") || line.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "{}: [slurm] extra: {line:?} is not an sbatch option (`--name=value`, one line)",
                    path.display()
                )));
            }
        }
        Ok(self)
    }

    /// The `#SBATCH` options for these resources, one a line.
    #[must_use]
    pub fn option_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut opt = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push(format!("--{name}={v}"));
            }
        };
        opt("partition", &self.partition);
        opt("gres", &self.gres);
        opt("gpus", &self.gpus);
        opt("mem", &self.mem);
        opt("time", &self.time);
        opt("account", &self.account);
        opt("qos", &self.qos);
        if let Some(c) = self.cpus {
            out.push(format!("--cpus-per-task={c}"));
        }
        out.extend(self.extra.iter().cloned());
        out
    }
}

/// Quotes `s` for a POSIX shell (single quotes, each `'` closed, escaped and reopened).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script that runs `run`: Slurm options, then the job's entry point (`slayer runs
/// slurm-job`, which checkpoints on a stop or the time-limit warning and requeues itself when
/// the limit, not a user, ended it). `exec` makes slayer the batch shell itself, so the
/// warning signal (`B:`, the batch shell only) reaches it.
#[must_use]
pub fn batch_script(
    run: &RunDir,
    data_dir: &Path,
    exe: &Path,
    device: &str,
    resources: &Resources,
) -> String {
    let log = run.path.join("log");
    let mut text = String::from("#!/bin/sh\n");
    let mut line = |l: String| {
        text.push_str("#SBATCH ");
        text.push_str(&l);
        text.push('\n');
    };
    // Slurm reads `#SBATCH` values up to the end of the line without a shell: no quoting.
    match &resources.group {
        Some(group) => {
            line(format!("--job-name={group}"));
            line("--dependency=singleton".into());
        }
        None => line(format!("--job-name=slayer-{}", run.id)),
    }
    line(format!("--output={}", log.display()));
    line("--open-mode=append".into());
    line("--ntasks=1".into());
    line("--requeue".into());
    line(format!(
        "--signal=B:USR1@{}",
        resources.warning_secs.unwrap_or(WARNING_SECS)
    ));
    for l in resources.option_lines() {
        line(l);
    }
    let _ = writeln!(
        text,
        "exec {} --data-dir {} --device {} runs slurm-job {}",
        shell_quote(&exe.display().to_string()),
        shell_quote(&data_dir.display().to_string()),
        shell_quote(device),
        shell_quote(&run.id)
    );
    text
}

/// The run's Slurm directory.
#[must_use]
pub fn dir(run: &RunDir) -> PathBuf {
    run.path.join("slurm")
}

/// The largest record read back: a job id, or a job id and a node name.
const MAX_RECORD_BYTES: u64 = 512;

fn read_record(path: &Path) -> Option<String> {
    slayer_engine::corpus::read_text_file(path, "Slurm record", Some(MAX_RECORD_BYTES)).ok()
}

/// The id of the run's newest job, if it was ever submitted to Slurm.
#[must_use]
pub fn job_of(run: &RunDir) -> Option<u64> {
    read_record(&dir(run).join("job"))?.trim().parse().ok()
}

/// What the job wrote when it reached the run directory: its id and node.
#[must_use]
pub fn started_of(run: &RunDir) -> Option<(u64, String)> {
    let text = read_record(&dir(run).join("started"))?;
    let mut parts = text.split_whitespace();
    let id = parts.next()?.parse().ok()?;
    Some((id, parts.next().unwrap_or("?").to_string()))
}

/// Records the job's first act: `job` on `node` sees the run directory.
pub fn record_started(run: &RunDir, job: u64, node: &str) -> Result<()> {
    let path = dir(run).join("started");
    slayer_engine::atomic::write_synced(&path, format!("{job} {node}\n").as_bytes())
        .map_err(Error::from)
}

/// Sets the run's Slurm job aside (`job` becomes `job.previous`): the run is resumed locally,
/// and its state is its local worker's again.
pub fn forget_job(run: &RunDir) -> Result<()> {
    let d = dir(run);
    let (from, to) = (d.join("job"), d.join("job.previous"));
    std::fs::rename(&from, &to).io("rename", &from)
}

/// Why a job that is over never ran the run, if it did not: it ended without writing its
/// start record (its node could not see the run directory, or it was cancelled first).
#[must_use]
pub fn unreached_problem(run: &RunDir, job: &Job) -> Option<String> {
    if job.state.active() || started_of(run).is_some_and(|(id, _)| id == job.id) {
        return None;
    }
    Some(if job.state == JobState::Cancelled {
        format!("Slurm job {} was cancelled before it started", job.id)
    } else {
        format!(
            "Slurm job {} ended {}{} without reaching the run directory: the data directory \
             must be on a filesystem the nodes share (Slurm's own output for the job is where \
             its --output pointed)",
            job.id,
            job.state,
            job.node
                .as_ref()
                .map_or_else(String::new, |n| format!(" on {n}"))
        )
    })
}

/// Whether `runs stop` asked this run to stop (so its job must not requeue itself).
#[must_use]
pub fn stop_requested(run: &RunDir) -> bool {
    dir(run).join("stop").is_file()
}

/// Marks the run as asked to stop, before the job is signalled.
pub fn request_stop(run: &RunDir) -> Result<()> {
    let path = dir(run).join("stop");
    slayer_engine::atomic::write_synced(&path, b"stop\n").map_err(Error::from)
}

/// The states Slurm reports for a job (`scontrol show job`'s `JobState`, `squeue`'s `%T`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Configuring,
    Running,
    Completing,
    Suspended,
    Requeued,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    Preempted,
    NodeFail,
    OutOfMemory,
    BootFail,
    Deadline,
    /// A state this build does not know, as Slurm spelled it.
    Other(String),
}

impl JobState {
    fn parse(s: &str) -> Self {
        // `CANCELLED by 0` (sacct) and `CANCELLED+` (squeue, truncated) are cancelled too.
        let word = s
            .split(|c: char| c.is_whitespace() || c == '+')
            .next()
            .unwrap_or("");
        match word {
            "PENDING" => Self::Pending,
            "CONFIGURING" => Self::Configuring,
            "RUNNING" => Self::Running,
            "COMPLETING" => Self::Completing,
            "SUSPENDED" => Self::Suspended,
            "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" => Self::Requeued,
            "COMPLETED" => Self::Completed,
            "FAILED" => Self::Failed,
            "CANCELLED" => Self::Cancelled,
            "TIMEOUT" => Self::Timeout,
            "PREEMPTED" => Self::Preempted,
            "NODE_FAIL" => Self::NodeFail,
            "OUT_OF_MEMORY" => Self::OutOfMemory,
            "BOOT_FAIL" => Self::BootFail,
            "DEADLINE" => Self::Deadline,
            other => Self::Other(other.chars().take(32).collect()),
        }
    }

    /// Whether the job still holds, or waits for, its place on the cluster.
    #[must_use]
    pub fn active(&self) -> bool {
        matches!(
            self,
            Self::Pending
                | Self::Configuring
                | Self::Running
                | Self::Completing
                | Self::Suspended
                | Self::Requeued
        )
    }

    /// Waiting for a node (pending or requeued and not yet started again).
    #[must_use]
    pub fn waiting(&self) -> bool {
        matches!(self, Self::Pending | Self::Requeued | Self::Configuring)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Pending => "PENDING",
            Self::Configuring => "CONFIGURING",
            Self::Running => "RUNNING",
            Self::Completing => "COMPLETING",
            Self::Suspended => "SUSPENDED",
            Self::Requeued => "REQUEUED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Timeout => "TIMEOUT",
            Self::Preempted => "PREEMPTED",
            Self::NodeFail => "NODE_FAIL",
            Self::OutOfMemory => "OUT_OF_MEMORY",
            Self::BootFail => "BOOT_FAIL",
            Self::Deadline => "DEADLINE",
            Self::Other(s) => s,
        };
        f.write_str(s)
    }
}

/// A job as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    pub id: u64,
    pub state: JobState,
    /// Why it waits or ended (`Resources`, `Priority`, `PartitionDown`); none when Slurm says
    /// `None`.
    pub reason: Option<String>,
    /// Where it runs or ran.
    pub node: Option<String>,
    /// How often Slurm started it again (a requeue after the time limit or a preemption).
    pub restarts: u32,
}

impl Job {
    /// One line for tables: `RUNNING on n1`, `PENDING (Resources)`.
    #[must_use]
    pub fn brief(&self) -> String {
        let mut s = format!("job {} {}", self.id, self.state);
        if let Some(node) = &self.node
            && !self.state.waiting()
        {
            let _ = write!(s, " on {node}");
        }
        if let Some(reason) = &self.reason {
            let _ = write!(s, " ({reason})");
        }
        s
    }
}

/// Where a run runs, in a few characters, for tables: `slurm 42 on n7`, `slurm 43 PENDING
/// (Resources)`, `slurm 44 CANCELLED`; `slurm 45 ?` when Slurm has forgotten the job.
#[must_use]
pub fn short(id: u64, job: Option<&Job>) -> String {
    match job {
        None => format!("slurm {id} ?"),
        Some(j) => match (&j.state, &j.node) {
            (JobState::Running | JobState::Completing, Some(node)) => {
                format!("slurm {id} on {node}")
            }
            (state, _) => match &j.reason {
                Some(reason) if state.waiting() => format!("slurm {id} {state} ({reason})"),
                _ => format!("slurm {id} {state}"),
            },
        },
    }
}

/// Parses `scontrol show job -o ID`'s one line of `Key=Value` pairs. Values may hold spaces
/// only where the key is the last on the line; the keys read here never do. `None` when the
/// line names no job id or state.
#[must_use]
pub fn parse_scontrol(text: &str) -> Option<Job> {
    let mut id = None;
    let mut state = None;
    let mut reason = None;
    let mut node = None;
    let mut restarts = 0;
    for field in text.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "JobId" if id.is_none() => id = value.parse().ok(),
            "JobState" => state = Some(JobState::parse(value)),
            "Reason" if value != "None" => reason = Some(value.chars().take(64).collect()),
            // The batch host is where the run is; the node list, where there is no batch host.
            "NodeList" | "BatchHost"
                if value != "(null)"
                    && !value.is_empty()
                    && (node.is_none() || key == "BatchHost") =>
            {
                node = Some(value.chars().take(64).collect());
            }
            "Restarts" => restarts = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    Some(Job {
        id: id?,
        state: state?,
        reason,
        node,
        restarts,
    })
}

/// Parses `sacct -n -P -X -o JobID,State,NodeList,Reason`'s first line (`|`-separated).
#[must_use]
pub fn parse_sacct(text: &str) -> Option<Job> {
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let mut f = line.split('|');
    let id = f.next()?.split(['_', '.']).next()?.trim().parse().ok()?;
    let state = JobState::parse(f.next()?.trim());
    let node = f
        .next()
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "None assigned")
        .map(|n| n.chars().take(64).collect());
    let reason = f
        .next()
        .map(str::trim)
        .filter(|r| !r.is_empty() && *r != "None")
        .map(|r| r.chars().take(64).collect());
    Some(Job {
        id,
        state,
        reason,
        node,
        restarts: 0,
    })
}

/// Runs a Slurm command; its stdout, or an error in Slurm's words naming the command.
fn slurm(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::invalid(format!(
                "{program} not found: Slurm's commands must be on PATH to use --on slurm"
            ))
        } else {
            Error::invalid(format!("cannot run {program}: {e}"))
        }
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = slayer_engine::text::sanitize_for_terminal(said.trim()).into_owned();
        Err(Error::invalid(format!(
            "{program} {}: {}",
            args.join(" "),
            if said.is_empty() {
                format!("failed ({})", out.status)
            } else {
                said
            }
        )))
    }
}

/// The job as Slurm knows it now: `scontrol` while the controller remembers it, then `sacct`
/// where accounting is kept. `Ok(None)`: Slurm has forgotten it (finished long enough ago, no
/// accounting); the run's event log is then all there is.
pub fn query(id: u64) -> Result<Option<Job>> {
    let id_arg = id.to_string();
    match slurm("scontrol", &["show", "job", "-o", &id_arg]) {
        Ok(text) => {
            if let Some(job) = parse_scontrol(&text) {
                return Ok(Some(job));
            }
        }
        Err(e) if e.to_string().contains("Invalid job id") => {}
        Err(e) => return Err(e),
    }
    match slurm(
        "sacct",
        &[
            "-n",
            "-P",
            "-X",
            "-j",
            &id_arg,
            "-o",
            "JobID,State,NodeList,Reason",
        ],
    ) {
        Ok(text) => Ok(parse_sacct(&text)),
        // No accounting storage (`sacct` refuses) or no sacct at all: forgotten.
        Err(_) => Ok(None),
    }
}

/// How long a job's state is reused: a table of runs asks once per refresh, not per column.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the state of a job that is over is reused: it changes only if someone requeues
/// the job by hand, and a console showing many finished Slurm runs would otherwise run
/// `scontrol` for each of them every second.
const CACHE_OVER_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// [`query`], reused for a second (half a minute once the job is over), with an error read as
/// "unknown" (`None`): a run whose job cannot be asked about is never shown as running. The
/// error is logged.
#[must_use]
pub fn query_cached(id: u64) -> Option<Job> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    type Answers = HashMap<u64, (Instant, Option<Job>)>;
    static CACHE: OnceLock<Mutex<Answers>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Ok(map) = cache.lock()
        && let Some((at, job)) = map.get(&id)
        && at.elapsed()
            < match job {
                Some(j) if !j.state.active() => CACHE_OVER_FOR,
                _ => CACHE_FOR,
            }
    {
        return job.clone();
    }
    let job = query(id).unwrap_or_else(|e| {
        tracing::warn!("cannot ask Slurm about job {id}: {e}");
        None
    });
    if let Ok(mut map) = cache.lock() {
        map.insert(id, (Instant::now(), job.clone()));
    }
    job
}

/// Submits `script` (a file) and returns the job id (`sbatch --parsable`: `ID` or `ID;cluster`).
pub fn submit(script: &Path) -> Result<u64> {
    let out = slurm("sbatch", &["--parsable", &script.display().to_string()])?;
    out.trim()
        .split(';')
        .next()
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| Error::invalid(format!("sbatch printed no job id: {:?}", out.trim())))
}

/// Writes the run's batch script and submits it; records the job id. Nothing is recorded when
/// sbatch refuses (its reason is the error).
pub fn write_and_submit(run: &RunDir, script: &str) -> Result<u64> {
    let d = dir(run);
    std::fs::create_dir_all(&d).io("create", &d)?;
    // A new job: the previous one's stop request and start record are history.
    for stale in ["stop", "started"] {
        let p = d.join(stale);
        if p.exists() {
            std::fs::remove_file(&p).io("remove", &p)?;
        }
    }
    let path = d.join("batch.sh");
    slayer_engine::atomic::write_synced(&path, script.as_bytes())?;
    let id = submit(&path)?;
    slayer_engine::atomic::write_synced(&d.join("job"), format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// Sends `signal` to the job's batch shell (`scancel --batch --signal=…`): the job's entry
/// passes it to the worker.
pub fn signal_batch(id: u64, signal: &str) -> Result<()> {
    slurm(
        "scancel",
        &["--batch", &format!("--signal={signal}"), &id.to_string()],
    )
    .map(drop)
}

/// Cancels the job (`scancel`): Slurm terminates it, then kills it.
pub fn cancel(id: u64) -> Result<()> {
    slurm("scancel", &[&id.to_string()]).map(drop)
}

/// Asks Slurm to start the job again from the queue once it ends (`scontrol requeue`).
pub fn requeue(id: u64) -> Result<()> {
    slurm("scontrol", &["requeue", &id.to_string()]).map(drop)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn scontrol_lines_give_state_reason_and_node() {
        let running = "JobId=42 JobName=slayer-r UserId=root(0) Priority=1 JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=2 BatchFlag=1 NodeList=n7 BatchHost=n7";
        let job = parse_scontrol(running).unwrap();
        assert_eq!(job.id, 42);
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.reason, None);
        assert_eq!(job.node.as_deref(), Some("n7"));
        assert_eq!(job.restarts, 2);
        assert_eq!(job.brief(), "job 42 RUNNING on n7");
        let pending =
            "JobId=43 JobState=PENDING Reason=PartitionDown Dependency=(null) NodeList=(null)";
        let job = parse_scontrol(pending).unwrap();
        assert!(job.state.waiting() && job.state.active());
        assert_eq!(job.brief(), "job 43 PENDING (PartitionDown)");
        assert!(parse_scontrol("slurm_load_jobs error: Invalid job id specified").is_none());
        assert_eq!(
            parse_scontrol("JobId=1 JobState=SOMETHING_NEW")
                .unwrap()
                .state,
            JobState::Other("SOMETHING_NEW".into())
        );
    }

    #[test]
    fn sacct_lines_give_the_end() {
        let job = parse_sacct("17|CANCELLED by 0|n1|None\n").unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert!(!job.state.active());
        assert_eq!(job.node.as_deref(), Some("n1"));
        assert_eq!(
            parse_sacct("18|OUT_OF_MEMORY|n2|\n").unwrap().state,
            JobState::OutOfMemory
        );
        assert!(parse_sacct("").is_none());
    }

    #[test]
    fn the_slurm_table_is_read_checked_and_overridden() {
        let path = Path::new("e.toml");
        let text = "name = \"e\"\n[slurm]\npartition = \"gpu\"\ncpus = 8\ntime = \"1:00:00\"\nextra = [\"--constraint=h100\"]\n";
        let r = Resources::of_experiment(path, text).unwrap();
        assert_eq!(r.partition.as_deref(), Some("gpu"));
        assert_eq!(r.cpus, Some(8));
        let r = r
            .with(
                &Resources {
                    partition: Some("debug".into()),
                    ..Resources::default()
                },
                path,
            )
            .unwrap();
        assert_eq!(
            r.option_lines(),
            [
                "--partition=debug",
                "--time=1:00:00",
                "--cpus-per-task=8",
                "--constraint=h100"
            ]
        );
        assert_eq!(
            Resources::of_experiment(path, "name = \"e\"\n").unwrap(),
            Resources::default()
        );
        let bad = Resources::of_experiment(path, "[slurm]\npartition = \"a\\nb\"\n").unwrap_err();
        assert!(bad.to_string().contains("partition"), "{bad}");
        let unknown = Resources::of_experiment(path, "[slurm]\nnodes = 2\n").unwrap_err();
        assert!(unknown.to_string().contains("nodes"), "{unknown}");
        let warning = Resources::of_experiment(path, "[slurm]\nwarning_secs = 0\n").unwrap_err();
        assert!(warning.to_string().contains("warning_secs"), "{warning}");
        let extra =
            Resources::of_experiment(path, "[slurm]\nextra = [\"rm -rf /\"]\n").unwrap_err();
        assert!(
            extra.to_string().contains("not an sbatch option"),
            "{extra}"
        );
    }

    #[test]
    fn the_script_quotes_what_the_shell_reads() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "e").unwrap();
        let script = batch_script(
            &run,
            Path::new("/data/it's"),
            Path::new("/bin/slayer"),
            "cpu",
            &Resources::default(),
        );
        assert!(script.starts_with("#!/bin/sh\n#SBATCH --job-name=slayer-"));
        assert!(script.contains("#SBATCH --requeue\n"));
        assert!(script.contains(&format!("#SBATCH --signal=B:USR1@{WARNING_SECS}\n")));
        assert!(
            script.contains(
                "exec '/bin/slayer' --data-dir '/data/it'\\''s' --device 'cpu' runs slurm-job"
            ),
            "{script}"
        );
    }
}
