//! A real single-node Slurm for the tests that need one (see ../shared/notes/slurm-local.md):
//! munge, slurmctld and slurmd on this host, configured in a temporary directory, on ports of
//! their own, started once per test binary and stopped by a watchdog when the binary exits.
//! Partitions: `debug` (the default, never preempted), `preemptible` (its jobs are requeued by
//! any job of `urgent`, after 10 s of grace), `urgent`.
//!
//! Where it cannot start (no Slurm installed, not root) the tests say so loudly and pass;
//! with `SLAYER_REQUIRE_SLURM` set (`.ci/run` sets it) or `CI=true` they fail instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running cluster: its configuration file, for `SLURM_CONF`. Its directory (configuration,
/// state, logs) is the watchdog's to remove, after the daemons.
pub struct Cluster {
    pub conf: PathBuf,
    /// Where the tests' runs go: never preempted.
    pub partition: String,
    /// The node's CPUs (a job asking for all of them has the node to itself).
    pub cpus: usize,
}

impl Cluster {
    /// The cluster's log files, for failure messages.
    pub fn logs(&self) -> String {
        let dir = self.conf.parent().unwrap().join("log");
        ["ctld.log", "d.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- {f}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A Slurm command against this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

/// The cluster, started on first use; `None` (after a loud message) where it cannot start and
/// `SLAYER_REQUIRE_SLURM` is not set.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| match start() {
            Ok(c) => Some(c),
            Err(why) => {
                assert!(
                    std::env::var_os("SLAYER_REQUIRE_SLURM").is_none()
                        && std::env::var("CI").as_deref() != Ok("true"),
                    "Slurm is required here (SLAYER_REQUIRE_SLURM or CI=true) but cannot start: {why}"
                );
                eprintln!(
                    "\n*** SKIPPING the Slurm tests: {why} (install slurm-wlm and munge and run \
                     as root; .ci/run does) ***\n"
                );
                None
            }
        })
        .as_ref()
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(c: &mut Command) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{c:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn munge_works() -> bool {
    Command::new("sh")
        .args(["-c", "munge -n | unmunge"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start() -> Result<Cluster, String> {
    for program in ["slurmctld", "slurmd", "sbatch", "munged", "munge"] {
        if !found(program) {
            return Err(format!("{program} is not installed"));
        }
    }
    if run(Command::new("id").arg("-u"))?.trim() != "0" {
        return Err("the test cluster's daemons run as root".into());
    }
    let root = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
    let root = root.as_path();
    for sub in ["state", "spool", "log"] {
        std::fs::create_dir_all(root.join(sub)).map_err(|e| e.to_string())?;
    }
    // munge: the system's daemon if it answers, else one started here (and stopped with the
    // cluster).
    let mut started_munged = false;
    if !munge_works() {
        if !Path::new("/etc/munge/munge.key").exists() {
            run(Command::new("mungekey").arg("-c"))?;
            run(Command::new("chown").args(["munge:munge", "/etc/munge/munge.key"]))?;
        }
        run(Command::new("sh").args([
            "-c",
            "mkdir -p /run/munge && chown munge:munge /run/munge && su -s /bin/sh munge -c munged",
        ]))?;
        started_munged = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !munge_works() {
            if Instant::now() > deadline {
                return Err("munged did not answer".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let host = run(Command::new("hostname").arg("-s"))?.trim().to_string();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let (ctld_port, d_port) = (free_port(), free_port());
    let r = root.display();
    let conf = root.join("slurm.conf");
    std::fs::write(
        &conf,
        format!(
            "ClusterName=slayertest\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
             SlurmctldPort={ctld_port}\nSlurmdPort={d_port}\nAuthType=auth/munge\n\
             StateSaveLocation={r}/state\nSlurmdSpoolDir={r}/spool\n\
             SlurmctldPidFile={r}/slurmctld.pid\nSlurmdPidFile={r}/slurmd.pid\n\
             SlurmctldLogFile={r}/log/ctld.log\nSlurmdLogFile={r}/log/d.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             ReturnToService=2\nMinJobAge=600\nKillWait=10\n\
             AuthInfo=cred_expire=10\n\
             PreemptType=preempt/partition_prio\nPreemptMode=REQUEUE\n\
             NodeName={host} CPUs={cpus} RealMemory=20000 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP \
             PriorityTier=1 PreemptMode=OFF\n\
             PartitionName=preemptible Nodes={host} MaxTime=INFINITE State=UP PriorityTier=1 \
             GraceTime=10\n\
             PartitionName=urgent Nodes={host} MaxTime=INFINITE State=UP PriorityTier=2 \
             PreemptMode=OFF\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let cluster = Cluster {
        conf: conf.clone(),
        partition: "debug".into(),
        cpus,
    };
    run(cluster.command("slurmctld").arg("-f").arg(&conf))?;
    run(cluster.command("slurmd").arg("-f").arg(&conf))?;
    // The daemons' pids, read now: the watchdog must not depend on anything left on disk.
    let pid = |file: &str| -> Result<u32, String> {
        let path = root.join(file);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                return Err(format!("{} was not written", path.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (ctld, d) = (pid("slurmctld.pid")?, pid("slurmd.pid")?);
    // The watchdog: when this test binary exits, however it exits, the daemons go with it, then
    // their directory.
    let me = std::process::id();
    let munged = if started_munged {
        "pkill -x munged; "
    } else {
        ""
    };
    Command::new("setsid")
        .args([
            "sh",
            "-c",
            &format!(
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
                 SLURM_CONF='{c}' timeout 5 scancel --user=root 2>/dev/null; sleep 1; \
                 kill {d} {ctld} 2>/dev/null; sleep 1; {munged}rm -rf '{r}'",
                c = conf.display()
            ),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the cluster's watchdog: {e}"))?;
    // Ready when the node is idle. (`cred_expire` above is also how long Slurm holds a requeued
    // job before it may start again: 120 s by default, 10 here.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state =
            run(cluster.command("sinfo").args(["-h", "-N", "-o", "%T"])).unwrap_or_default();
        // One line per partition the node is in.
        if !state.trim().is_empty() && state.lines().all(|l| l.trim() == "idle") {
            return Ok(cluster);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the node did not become idle (sinfo: {state:?})\n{}",
                cluster.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
