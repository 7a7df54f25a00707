//! Runs on a real single-node Slurm (`common/slurm.rs` starts it once for this binary), on a
//! tiny random model through the real binary: a submitted run followed to its end has a local
//! run's history; stop, resume, an outside `scancel` and the time-limit warning each leave a
//! history with every step once; a study through Slurm gives the local queue's table; bad
//! input (an unknown partition, a job Slurm forgot, a node that cannot see the run) is said.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

#[path = "common/slurm.rs"]
mod cluster;
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use cluster::Cluster;
use common::{
    joined, ok, stderr, tiny_experiment, tiny_model_dir, tiny_study, wait_until, without_wall_time,
};

/// The slayer binary against the test cluster.
fn slayer(c: &Cluster, home: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(args)
        .env("SLAYER_HOME", home)
        .env("SLURM_CONF", &c.conf)
        .output()
        .unwrap()
}

/// Cancels every Slurm job of the runs under a test's data directory when the test ends,
/// passing or failing: a job left running would hold the node the other tests wait for. Made
/// after the directory, so dropped before it.
struct CancelJobsAtEnd<'a> {
    cluster: &'a Cluster,
    home: PathBuf,
}

impl<'a> CancelJobsAtEnd<'a> {
    fn new(cluster: &'a Cluster, home: &Path) -> Self {
        Self {
            cluster,
            home: home.to_path_buf(),
        }
    }
}

impl Drop for CancelJobsAtEnd<'_> {
    fn drop(&mut self) {
        let Ok(runs) = std::fs::read_dir(self.home.join("runs")) else {
            return;
        };
        for run in runs.filter_map(Result::ok) {
            if let Ok(id) = std::fs::read_to_string(run.path().join("slurm/job")) {
                let _ = self.cluster.command("scancel").arg(id.trim()).output();
            }
        }
    }
}

/// `runs ls --json`'s entry for `id`.
fn summary(c: &Cluster, home: &Path, id: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&slayer(c, home, &["runs", "ls", "--json"]))).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_default()
}

/// How often Slurm has started the run's job again (0 before any requeue, or while unknown).
fn restarts(c: &Cluster, home: &Path, id: &str) -> u64 {
    summary(c, home, id)["job"]["restarts"]
        .as_u64()
        .unwrap_or(0)
}

fn status(c: &Cluster, home: &Path, id: &str) -> String {
    summary(c, home, id)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until run `id` shows `want`, with the run's log and the cluster's in the failure.
fn wait_for_status(c: &Cluster, home: &Path, id: &str, want: &str, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(c, home, id);
        if s == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} is {s}, not {want}\nruns:\n{}\nlog:\n{}\n{}",
            ok(&slayer(c, home, &["runs", "ls"])),
            std::fs::read_to_string(home.join("runs").join(id).join("log")).unwrap_or_default(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Submits `exp` to the cluster; returns the run id.
fn submit(c: &Cluster, home: &Path, exp: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--device", "cpu", "train", exp.to_str().unwrap()];
    args.extend_from_slice(&["--on", "slurm", "--partition", &c.partition]);
    args.extend_from_slice(extra);
    let out = slayer(c, home, &args);
    let id = ok(&out).trim().to_string();
    assert!(
        stderr(&out).contains("submitted to Slurm as job"),
        "{}",
        stderr(&out)
    );
    id
}

fn run_path(home: &Path, id: &str) -> PathBuf {
    home.join("runs").join(id)
}

/// The run's current Slurm job id.
fn job_of(home: &Path, id: &str) -> u64 {
    std::fs::read_to_string(run_path(home, id).join("slurm/job"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the run has logged a step at least `step`.
fn wait_for_step(home: &Path, id: &str, step: u64) {
    wait_until(
        &format!("step {step} of {id}"),
        Duration::from_secs(300),
        || {
            joined(&run_path(home, id))
                .last()
                .is_some_and(|s| s.0 >= step)
        },
    );
}

/// The same experiment trained in the foreground, locally: the reference history.
fn local_history(home: &Path, exp: &Path) -> Vec<(u64, f64)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(["--device", "cpu", "train", exp.to_str().unwrap()])
        .env("SLAYER_HOME", home)
        .output()
        .unwrap();
    ok(&out);
    let runs = std::fs::read_dir(home.join("runs")).unwrap();
    let dir = runs
        .filter_map(Result::ok)
        .find(|e| e.path().join("events.jsonl").exists())
        .unwrap()
        .path();
    joined(&dir)
}

/// Every step from 1 to `steps` once, in order.
fn assert_every_step_once(history: &[(u64, f64)], steps: u64) {
    let got: Vec<u64> = history.iter().map(|s| s.0).collect();
    assert_eq!(got, (1..=steps).collect::<Vec<_>>());
}

#[test]
fn a_submitted_run_is_followed_to_its_end_with_a_local_runs_history() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "s", 6, 3);
    let id = submit(c, home.path(), &exp, &[]);
    wait_for_status(c, home.path(), &id, "finished", 180);
    let job = job_of(home.path(), &id);
    // The run's end is written before its job's entry exits.
    wait_until("the job to complete", Duration::from_secs(60), || {
        summary(c, home.path(), &id)["job"]["state"] == "completed"
    });
    assert_eq!(summary(c, home.path(), &id)["job"]["id"], job);
    let show = ok(&slayer(c, home.path(), &["runs", "show", &id]));
    assert!(show.contains(&format!("job {job} COMPLETED")), "{show}");
    assert!(show.contains("reached the run directory on "), "{show}");
    assert!(show.contains("#SBATCH --requeue"), "{show}");
    assert!(show.contains("#SBATCH --partition=debug"), "{show}");
    let ls = ok(&slayer(c, home.path(), &["runs", "ls"]));
    assert!(ls.contains(&format!("slurm job {job} COMPLETED")), "{ls}");
    let local_home = tempfile::tempdir().unwrap();
    tiny_model_dir(local_home.path());
    let local_exp = tiny_experiment(local_home.path(), "s", 6, 3);
    assert_eq!(
        joined(&run_path(home.path(), &id)),
        local_history(local_home.path(), &local_exp)
    );
}

#[test]
fn stop_checkpoints_and_resume_on_slurm_joins_the_history() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let steps = 400;
    let exp = tiny_experiment(home.path(), "r", steps, 1000);
    let id = submit(c, home.path(), &exp, &[]);
    wait_for_step(home.path(), &id, 5);
    let out = slayer(c, home.path(), &["runs", "stop", &id]);
    assert!(stderr(&out).contains("Slurm job"), "{}", stderr(&out));
    wait_for_status(c, home.path(), &id, "stopped", 120);
    // Stopped by a user: the job ended and was not requeued.
    let job = job_of(home.path(), &id);
    wait_until("the job to end", Duration::from_secs(60), || {
        summary(c, home.path(), &id)["job"]["state"] == "completed"
    });
    let out = slayer(c, home.path(), &["runs", "resume", &id, "--on", "slurm"]);
    assert!(stderr(&out).contains("to resume"), "{}", stderr(&out));
    assert_ne!(job_of(home.path(), &id), job, "a new job");
    wait_for_status(c, home.path(), &id, "finished", 300);
    assert_every_step_once(&joined(&run_path(home.path(), &id)), steps);
}

#[test]
fn an_outside_scancel_shows_cancelled_and_the_run_resumes() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let steps = 400;
    let exp = tiny_experiment(home.path(), "x", steps, 1000);
    let id = submit(c, home.path(), &exp, &[]);
    wait_for_step(home.path(), &id, 5);
    let job = job_of(home.path(), &id);
    ok(&c.command("scancel").arg(job.to_string()).output().unwrap());
    wait_until(
        "the job to show cancelled",
        Duration::from_secs(120),
        || summary(c, home.path(), &id)["job"]["state"] == "cancelled",
    );
    let s = status(c, home.path(), &id);
    assert!(s == "stopped" || s == "lost", "{s}");
    let ls = ok(&slayer(c, home.path(), &["runs", "ls"]));
    assert!(ls.contains(&format!("job {job} CANCELLED")), "{ls}");
    ok(&slayer(c, home.path(), &["runs", "resume", &id]));
    wait_for_status(c, home.path(), &id, "finished", 300);
    assert_every_step_once(&joined(&run_path(home.path(), &id)), steps);
}

/// Slurm's warning before the time limit is SIGUSR1 to the batch shell (`--signal=B:USR1@…`);
/// sent here as Slurm sends it, so the test does not wait for a real limit: the run
/// checkpoints, its job requeues itself, and the next start continues to the end.
#[test]
fn the_time_limit_warning_checkpoints_requeues_and_the_run_finishes() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let steps = 400;
    let exp = tiny_experiment(home.path(), "t", steps, 1000);
    let id = submit(c, home.path(), &exp, &["--time", "10:00"]);
    wait_for_step(home.path(), &id, 5);
    let job = job_of(home.path(), &id);
    ok(&c
        .command("scancel")
        .args(["--batch", "--signal=USR1", &job.to_string()])
        .output()
        .unwrap());
    wait_until("the job to be requeued", Duration::from_secs(120), || {
        restarts(c, home.path(), &id) >= 1
    });
    wait_for_status(c, home.path(), &id, "finished", 400);
    assert_eq!(job_of(home.path(), &id), job, "the same job, requeued");
    assert_every_step_once(&joined(&run_path(home.path(), &id)), steps);
    let tail = ok(&slayer(c, home.path(), &["runs", "tail", &id]));
    assert!(tail.contains("reached its time limit"), "{tail}");
}

#[test]
fn an_unknown_partition_gives_slurms_reason_and_creates_nothing() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "p", 4, 2);
    let out = slayer(
        c,
        home.path(),
        &[
            "train",
            exp.to_str().unwrap(),
            "--on",
            "slurm",
            "--partition",
            "no-such-partition",
        ],
    );
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("cannot submit run"), "{said}");
    assert!(said.to_lowercase().contains("invalid partition"), "{said}");
    let left = std::fs::read_dir(home.path().join("runs")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .count()
    });
    assert_eq!(left, 0, "no run directory is left behind");
    // Slurm options without --on slurm are refused, not ignored.
    let out = slayer(
        c,
        home.path(),
        &["train", exp.to_str().unwrap(), "--partition", "debug"],
    );
    assert!(stderr(&out).contains("need --on slurm"), "{}", stderr(&out));
}

#[test]
fn a_forgotten_job_or_an_unreachable_directory_is_said() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "f", 4, 2);
    // A job held before it starts; its run directory moved away meanwhile, as if the node
    // could not see it; released, it fails without reaching it.
    let id = submit(c, home.path(), &exp, &["--sbatch", "--hold"]);
    let job = job_of(home.path(), &id);
    assert_eq!(status(c, home.path(), &id), "queued");
    let (here, away) = (run_path(home.path(), &id), home.path().join("away"));
    std::fs::rename(&here, &away).unwrap();
    ok(&c
        .command("scontrol")
        .args(["release", &job.to_string()])
        .output()
        .unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = c
            .command("scontrol")
            .args(["show", "job", &job.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("JobState=FAILED") || text.contains("JobState=COMPLETED") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::rename(&away, &here).unwrap();
    let s = summary(c, home.path(), &id);
    assert_eq!(s["status"], "lost");
    let problem = s["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("without reaching the run directory"),
        "{s}"
    );
    // A job id Slurm never heard of (aged out of its memory): the event log is the record.
    std::fs::write(here.join("slurm/job"), "999999\n").unwrap();
    let show = ok(&slayer(c, home.path(), &["runs", "show", &id]));
    assert!(show.contains("Slurm no longer knows it"), "{show}");
    assert_ne!(status(c, home.path(), &id), "running");
}

#[test]
fn a_study_through_slurm_gives_the_local_queues_table() {
    let Some(c) = cluster::cluster() else { return };
    let run_study = |on_slurm: bool| {
        let home = tempfile::tempdir().unwrap();
        let _jobs = CancelJobsAtEnd::new(c, home.path());
        let file = tiny_study(home.path());
        let mut args = vec![
            "--device",
            "cpu",
            "study",
            "run",
            file.to_str().unwrap(),
            "--wait",
        ];
        if on_slurm {
            args.extend_from_slice(&["--on", "slurm", "--concurrent", "1"]);
        }
        let table = ok(&slayer(c, home.path(), &args));
        (home, table)
    };
    let (slurm_home, on_slurm) = run_study(true);
    let (_local_home, local) = run_study(false);
    // Wall time differs; everything else is the same.
    assert_eq!(without_wall_time(&on_slurm), without_wall_time(&local));
    // Both cells ran as Slurm jobs, one at a time (one job name, `singleton`).
    let runs = std::fs::read_dir(slurm_home.path().join("runs")).unwrap();
    let scripts: Vec<String> = runs
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("slurm/batch.sh")).ok())
        .collect();
    assert_eq!(scripts.len(), 2);
    for s in &scripts {
        assert!(
            s.contains("#SBATCH --job-name=slayer-tiny-study-0\n"),
            "{s}"
        );
        assert!(s.contains("#SBATCH --dependency=singleton\n"), "{s}");
    }
}

/// A preemption (or an administrator's requeue) ends the job with SIGTERM and puts it back in
/// the queue: the run checkpoints, and the job's next start continues it to the end.
#[test]
fn a_job_requeued_from_outside_continues_the_run() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let steps = 400;
    let exp = tiny_experiment(home.path(), "q", steps, 1000);
    let id = submit(c, home.path(), &exp, &[]);
    wait_for_step(home.path(), &id, 5);
    let job = job_of(home.path(), &id);
    ok(&c
        .command("scontrol")
        .args(["requeue", &job.to_string()])
        .output()
        .unwrap());
    wait_for_status(c, home.path(), &id, "finished", 300);
    assert!(restarts(c, home.path(), &id) >= 1);
    assert_every_step_once(&joined(&run_path(home.path(), &id)), steps);
}

/// Without Slurm's commands on PATH, `--on slurm` says so and creates nothing (no cluster
/// needed).
#[test]
fn without_sbatch_the_launch_says_so_and_creates_nothing() {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "n", 4, 2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(["train", exp.to_str().unwrap(), "--on", "slurm"])
        .env("SLAYER_HOME", home.path())
        .env("PATH", home.path().join("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert!(said.contains("sbatch not found"), "{said}");
    let left = std::fs::read_dir(home.path().join("runs")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .count()
    });
    assert_eq!(left, 0, "no run directory is left behind");
}

/// A real preemption: the run holds the whole node in a partition whose jobs Slurm requeues
/// for a job of a higher tier (`PreemptMode=REQUEUE`); a job of that tier arrives, the run's
/// job is sent SIGTERM, checkpoints, is requeued by Slurm and continues once the node is free.
/// The run is long enough never to finish: the test stops it once the next segment has made
/// progress.
#[test]
fn a_preempted_run_is_requeued_by_slurm_and_continues() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "pre", 1_000_000, 1_000_000);
    let cpus = c.cpus.to_string();
    let mut args = vec!["--device", "cpu", "train", exp.to_str().unwrap()];
    args.extend_from_slice(&[
        "--on",
        "slurm",
        "--partition",
        "preemptible",
        "--cpus",
        &cpus,
    ]);
    let id = ok(&slayer(c, home.path(), &args)).trim().to_string();
    wait_for_step(home.path(), &id, 5);
    let urgent = c
        .command("sbatch")
        .args([
            "--partition=urgent",
            &format!("--cpus-per-task={cpus}"),
            "--output=/dev/null",
            "--wrap=sleep 2",
        ])
        .output()
        .unwrap();
    ok(&urgent);
    // Requeued, and running again: until then the first segment may still be stopping.
    wait_until(
        "the run's job to be preempted and start again",
        Duration::from_secs(300),
        || {
            let s = summary(c, home.path(), &id);
            s["job"]["restarts"].as_u64().is_some_and(|r| r >= 1) && s["job"]["state"] == "running"
        },
    );
    let first_segment = joined(&run_path(home.path(), &id)).len() as u64;
    wait_for_step(home.path(), &id, first_segment + 5);
    ok(&slayer(c, home.path(), &["runs", "stop", &id]));
    wait_for_status(c, home.path(), &id, "stopped", 120);
    let history = joined(&run_path(home.path(), &id));
    assert_every_step_once(&history, history.last().unwrap().0);
}

/// A real time limit: two minutes, the warning 30 s before it. Slurm sends the warning (at its
/// own resolution, 60–90 s in); the run checkpoints, its job requeues itself before the limit,
/// and the next start continues the history; the job never times out. The run is long enough
/// never to finish, so the test stops it once the second segment has made progress.
#[test]
fn a_real_time_limit_requeues_before_it_is_reached() {
    let Some(c) = cluster::cluster() else { return };
    let home = tempfile::tempdir().unwrap();
    let _jobs = CancelJobsAtEnd::new(c, home.path());
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "limit", 1_000_000, 1_000_000);
    let id = submit(
        c,
        home.path(),
        &exp,
        &["--time", "2", "--warning-secs", "30"],
    );
    // Requeued, and running again: until then the first segment may still be stopping.
    wait_until(
        "the job to be requeued at its time-limit warning and start again",
        Duration::from_secs(240),
        || {
            let s = summary(c, home.path(), &id);
            s["job"]["restarts"].as_u64().is_some_and(|r| r >= 1) && s["job"]["state"] == "running"
        },
    );
    let first_segment = joined(&run_path(home.path(), &id)).len() as u64;
    assert!(first_segment > 0);
    wait_for_step(home.path(), &id, first_segment + 5);
    ok(&slayer(c, home.path(), &["runs", "stop", &id]));
    wait_for_status(c, home.path(), &id, "stopped", 120);
    let history = joined(&run_path(home.path(), &id));
    let last = history.last().unwrap().0;
    assert_every_step_once(&history, last);
    let s = summary(c, home.path(), &id);
    assert_ne!(s["job"]["state"], "timeout", "{s}");
    let tail = ok(&slayer(c, home.path(), &["runs", "tail", &id]));
    assert!(tail.contains("reached its time limit"), "{tail}");
}
