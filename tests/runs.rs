//! Runs that outlive the terminal, on a tiny random model through the real binary: detached
//! runs survive their parent's session, kill -9 at any moment loses no step, the store's
//! ingestion is idempotent and equals a rebuild, and bad input gets messages naming the file.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    joined, ok, runs, slayer, status, stderr, tiny_experiment, tiny_model_dir, tiny_study,
    wait_until, without_wall_time,
};
use slayer::core::events::EventKind;
use slayer::runner::{RunDir, read_events};
use slayer::store::{Store, StoreError};

fn complete_checkpoints(run: &Path) -> Vec<u64> {
    slayer::core::train::list_checkpoints(&run.join("checkpoints"))
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect()
}

fn partial_checkpoints(run: &Path) -> usize {
    std::fs::read_dir(run.join("checkpoints")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .count()
    })
}

fn train_child(home: &Path, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(["--device", "cpu", "train"])
        .args(args)
        .env("SLAYER_HOME", home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// kill -9 of the worker `iterations` times, each a random few milliseconds after a new
/// checkpoint completed (so the kill lands in a step, or in the next checkpoint's writing):
/// every time the run shows as lost, the next resume starts from the newest complete checkpoint,
/// and the joined history in the end holds every step once with the losses of an uninterrupted
/// run. Returns how many kills interrupted a checkpoint being written.
fn kill_loop(iterations: u64) -> usize {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let steps = iterations * 8 + 20;
    let exp = tiny_experiment(home.path(), "k", steps, 3);
    // The reference: the same experiment, never interrupted.
    let reference = tiny_experiment(home.path(), "ref", steps, 1000);
    let out = slayer(
        home.path(),
        &["--device", "cpu", "train", reference.to_str().unwrap()],
    );
    ok(&out);
    let ref_id = runs(home.path())[0].0.clone();
    let want = joined(&home.path().join("runs").join(&ref_id));

    // A different schedule each run (printed, to reproduce a failure).
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}");
    let mut random_ms = move |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % max
    };
    let mut id = String::new();
    let mut expected_resumes: Vec<u64> = Vec::new();
    let mut mid_checkpoint = 0;
    for i in 0..iterations {
        let mut child = if i == 0 {
            train_child(home.path(), &[exp.to_str().unwrap()])
        } else {
            train_child(home.path(), &["--resume", &id])
        };
        if i == 0 {
            wait_until("the run directory", Duration::from_secs(30), || {
                runs(home.path()).len() == 2
            });
            id = runs(home.path())
                .into_iter()
                .find(|r| r.0 != ref_id)
                .unwrap()
                .0;
        }
        let run = home.path().join("runs").join(&id);
        let before = complete_checkpoints(&run).last().copied().unwrap_or(0);
        if i % 2 == 0 {
            // Mid-step (mostly): a random moment after a new checkpoint is complete.
            wait_until("a new checkpoint", Duration::from_secs(60), || {
                complete_checkpoints(&run).last().copied().unwrap_or(0) > before
            });
            std::thread::sleep(Duration::from_millis(random_ms(12)));
        } else {
            // Mid-checkpoint: as soon as this worker is seen writing a checkpoint. It removes
            // the partial one its predecessor left before it logs its start.
            let starts = |run: &Path| {
                std::fs::read_to_string(run.join("events.jsonl"))
                    .unwrap_or_default()
                    .matches("\"type\":\"run_start\"")
                    .count()
            };
            let started = starts(&run);
            wait_until("the worker's start", Duration::from_secs(60), || {
                starts(&run) > started
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            while partial_checkpoints(&run) == 0 {
                assert!(Instant::now() < deadline, "no checkpoint being written");
                std::hint::spin_loop();
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if partial_checkpoints(&run) > 0 {
            mid_checkpoint += 1;
        }
        let newest = complete_checkpoints(&run).last().copied().unwrap();
        let state = status(home.path(), &id);
        if state == "finished" {
            break;
        }
        assert_eq!(state, "lost", "iteration {i}");
        expected_resumes.push(newest);
    }
    // Let it finish.
    let run = home.path().join("runs").join(&id);
    ok(&slayer(
        home.path(),
        &["--device", "cpu", "train", "--resume", &id],
    ));
    assert_eq!(status(home.path(), &id), "finished");
    let events = read_events(&run.join("events.jsonl")).unwrap();
    let resumed_from: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::RunStart { resumed_from, .. } => resumed_from,
            _ => None,
        })
        .collect();
    assert_eq!(
        resumed_from, expected_resumes,
        "each resume starts from the newest complete checkpoint"
    );
    let got = joined(&run);
    assert_eq!(
        got.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=steps).collect::<Vec<_>>(),
        "every step exactly once"
    );
    assert_eq!(got, want, "the joined history is the uninterrupted run's");
    mid_checkpoint
}

/// 50 cycles take under 10 s on the tiny model, so the whole loop runs in CI.
#[test]
fn kill_nine_fifty_times_mid_step_and_mid_checkpoint_loses_no_step() {
    let mid_checkpoint = kill_loop(50);
    eprintln!("{mid_checkpoint} of 50 kills interrupted a checkpoint being written");
    assert!(mid_checkpoint > 0, "no kill landed in a checkpoint");
}

/// Starts `slayer train EXP --detach` from a shell in a session of its own, which then exits;
/// the whole session gets SIGHUP (what a closed terminal or dropped SSH connection sends).
#[test]
fn detached_run_survives_its_parent_and_a_hangup_of_its_session() {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "hup", 1500, 500);
    let script = format!(
        "'{}' --device cpu train '{}' --detach > '{}/id' 2>/dev/null; sleep 30",
        env!("CARGO_BIN_EXE_slayer"),
        exp.display(),
        home.path().display()
    );
    // SIGHUP as a terminal would deliver it: restored to its default, so a test suite run
    // under `nohup` (which ignores it, for every child) still tests the hang-up.
    let mut shell = std::process::Command::new("setsid")
        .args(["env", "--default-signal=HUP", "sh", "-c", &script])
        .env("SLAYER_HOME", home.path())
        .spawn()
        .unwrap();
    let id_file = home.path().join("id");
    wait_until("the run id", Duration::from_secs(30), || {
        std::fs::read_to_string(&id_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let id = std::fs::read_to_string(&id_file)
        .unwrap()
        .trim()
        .to_string();
    let run = home.path().join("runs").join(&id);
    wait_until("the first step", Duration::from_secs(30), || {
        std::fs::read_to_string(run.join("events.jsonl")).is_ok_and(|s| s.contains("\"step\""))
    });
    // The worker left the shell's session.
    let worker: i32 = std::fs::read_to_string(run.join("worker.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sid = nix::unistd::Pid::from_raw(shell.id() as i32);
    assert_ne!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(worker))).unwrap(),
        sid
    );
    // The shell leads its session; SIGHUP to its process group, as the terminal would.
    nix::sys::signal::killpg(sid, nix::sys::signal::Signal::SIGHUP).unwrap();
    shell.wait().unwrap();
    assert_eq!(
        status(home.path(), &id),
        "running",
        "the hang-up reached the run"
    );
    wait_until("the end", Duration::from_secs(120), || {
        status(home.path(), &id) == "finished"
    });
    assert_eq!(joined(&run).len(), 1500);
}

/// `slayer train EXP --detach` on the CPU; returns the run id.
fn launch_detached(home: &Path, exp: &Path) -> String {
    ok(&slayer(
        home,
        &[
            "--device",
            "cpu",
            "train",
            exp.to_str().unwrap(),
            "--detach",
        ],
    ))
    .trim()
    .to_string()
}

/// Two runs: one finished, one killed and resumed (so its log replaces lost steps).
fn two_runs(home: &Path) -> Vec<RunDir> {
    tiny_model_dir(home);
    let a = tiny_experiment(home, "a", 12, 4);
    ok(&slayer(
        home,
        &["--device", "cpu", "train", a.to_str().unwrap()],
    ));
    let b = tiny_experiment(home, "b", 400, 2);
    let mut child = train_child(home, &[b.to_str().unwrap()]);
    wait_until("a checkpoint of b", Duration::from_secs(60), || {
        slayer::runner::list_runs(home)
            .iter()
            .any(|r| r.id.ends_with("-b") && !complete_checkpoints(&r.path).is_empty())
    });
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap();
    child.wait().unwrap();
    let id = slayer::runner::list_runs(home)
        .into_iter()
        .find(|r| r.id.ends_with("-b"))
        .unwrap()
        .id;
    ok(&slayer(
        home,
        &["--device", "cpu", "train", "--resume", &id],
    ));
    slayer::runner::list_runs(home)
}

#[test]
fn ingestion_is_idempotent_equals_a_rebuild_and_waits_for_half_lines() {
    let home = tempfile::tempdir().unwrap();
    let runs = two_runs(home.path());
    std::fs::create_dir_all(home.path().join("experiments")).unwrap();
    std::fs::write(
        home.path().join("experiments/mine.toml"),
        "name = \"mine\"\n[plan]\npreset = \"slayer\"\n",
    )
    .unwrap();
    let store = Store::open(home.path(), "test").unwrap();
    let first = store.ingest_all(home.path(), &[]).unwrap();
    assert_eq!(first.runs, 2);
    assert!(first.events > 400);
    let second = store.ingest_all(home.path(), &[]).unwrap();
    assert_eq!(second.events, 0, "nothing is ingested twice");
    let twice = store.dump().unwrap();
    // The series are the joined histories (the killed worker's lost steps replaced).
    for run in &runs {
        let losses = store.series(&run.id, "loss").unwrap();
        assert_eq!(
            losses.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
            joined(&run.path)
        );
    }
    // One projection: the store's record (carried on from batch to batch of the tail), the
    // console's run data (fed in uneven batches) and a fold of the whole log agree, run by run.
    for run in &runs {
        let events = run.read_events().unwrap();
        let whole = slayer::runner::RunProjection::of(&events);
        assert_eq!(
            store.run(&run.id).unwrap().unwrap().run,
            whole,
            "{}",
            run.id
        );
        let mut console = slayer::tui::run_data::RunData::new(&run.id);
        for batch in events.chunks(7) {
            console.apply(false, batch);
        }
        assert_eq!(console.run, whole, "{}", run.id);
        // The step history: the store's (as the console reads it, whole and carried on from a
        // step) is the fold of the log, and its steps are the CLI's joined steps.
        let folded = slayer::runner::series::RunSeries::of(&events);
        let stored = store.run_series(&run.id, 0).unwrap();
        assert_eq!(stored, folded, "{}", run.id);
        assert!(!stored.blocks.is_empty(), "{}", run.id);
        let middle = folded.steps[folded.steps.len() / 2].step;
        let mut carried = store.run_series(&run.id, 0).unwrap();
        carried.truncate_after(middle - 1);
        carried.splice(middle, store.run_series(&run.id, middle).unwrap());
        assert_eq!(carried, folded, "{}", run.id);
        assert_eq!(
            stored.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
            slayer::runner::joined_steps(&events)
                .iter()
                .map(|e| match e.kind {
                    slayer::core::events::EventKind::Step { step, .. } => step,
                    _ => 0,
                })
                .collect::<Vec<_>>()
        );
    }
    // The store as the console's read model: its run table is the directory scan's.
    let ageless = |mut rows: Vec<slayer::runner::RunSummary>| {
        for r in &mut rows {
            r.age_secs = 0.0;
        }
        rows
    };
    assert_eq!(
        ageless(store.run_table(home.path()).unwrap()),
        ageless(slayer::runner::RunTable::default().refresh(home.path()))
    );
    let b = runs.iter().find(|r| r.id.ends_with("-b")).unwrap();
    assert!(
        store
            .metrics(&b.id)
            .unwrap()
            .contains(&"grad_norm/002".to_string())
    );
    let record = store.run(&b.id).unwrap().unwrap();
    assert_eq!(
        (record.run.step, record.run.total_steps, record.run.resumes),
        (400, 400, 1)
    );
    assert_eq!(record.run.plan.new, vec![2]);
    let lineage = store.lineage(&b.id).unwrap().unwrap();
    assert_eq!(lineage.same_plan.len(), 1, "run a trained the same plan");
    assert_eq!(
        lineage
            .evals
            .iter()
            .map(|e| e.0.as_str())
            .collect::<Vec<_>>(),
        vec!["base", "expanded", "final"]
    );
    drop(store);
    let (rebuilt, _) = Store::rebuild(home.path(), "test", &[], Duration::ZERO).unwrap();
    assert_eq!(
        rebuilt.dump().unwrap(),
        twice,
        "a rebuild equals incremental ingestion"
    );
    // A half-written last line waits for its newline.
    let log = b.events_path();
    let mut text = std::fs::read_to_string(&log).unwrap();
    let seq = read_events(&log).unwrap().last().unwrap().seq + 1;
    let line = format!(
        "{{\"seq\":{seq},\"time\":1.0,\"type\":\"eval\",\"label\":\"late\",\"step\":400,\"ppl\":[],\"tasks\":[]}}\n"
    );
    let (head, rest) = line.split_at(20);
    text.push_str(head);
    std::fs::write(&log, &text).unwrap();
    rebuilt.ingest_all(home.path(), &[]).unwrap();
    assert_eq!(rebuilt.evals(&b.id).unwrap().len(), 3);
    text.push_str(rest);
    std::fs::write(&log, &text).unwrap();
    rebuilt.ingest_all(home.path(), &[]).unwrap();
    assert_eq!(rebuilt.evals(&b.id).unwrap().len(), 4);
    let incremental = rebuilt.dump().unwrap();
    drop(rebuilt);
    let (again, _) = Store::rebuild(home.path(), "test", &[], Duration::ZERO).unwrap();
    assert_eq!(again.dump().unwrap(), incremental);
    // Experiment history: the file, and each run's text.
    let names: Vec<String> = again
        .experiments()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["a", "b", "mine"]);
}

#[test]
fn store_commands_wait_for_a_holder_and_name_one_that_keeps_it() {
    let home = tempfile::tempdir().unwrap();
    // Held for a moment (as the console holds it for a sync): the command waits and answers.
    let store = Store::open(home.path(), "slayer console").unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(["store", "status"])
        .env("SLAYER_HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(store);
    let out = child.wait_with_output().unwrap();
    assert!(ok(&out).contains("0 runs"));
    // Held throughout: refused after the wait, naming the holder.
    let store = Store::open(home.path(), "slayer console").unwrap();
    let started = std::time::Instant::now();
    let out = slayer(home.path(), &["store", "status"]);
    assert!(!out.status.success());
    assert!(started.elapsed() >= Duration::from_secs(9), "it waited");
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!(
            "in use by pid {} (slayer console",
            std::process::id()
        )),
        "{msg}"
    );
    // In-process too: an error, not a crash.
    assert!(matches!(
        Store::open(home.path(), "again"),
        Err(StoreError::InUse { .. })
    ));
    drop(store);
    ok(&slayer(home.path(), &["store", "status"]));
}

#[test]
fn a_newer_or_damaged_store_is_refused_with_a_way_out() {
    let home = tempfile::tempdir().unwrap();
    Store::open(home.path(), "t")
        .unwrap()
        .set_format(99)
        .unwrap();
    let out = slayer(home.path(), &["store", "status"]);
    let msg = stderr(&out);
    assert!(!out.status.success());
    assert!(
        msg.contains("newer slayer (format 99") && msg.contains("store rebuild"),
        "{msg}"
    );
    ok(&slayer(home.path(), &["store", "rebuild"]));
    ok(&slayer(home.path(), &["store", "status"]));
    // Garbage where sled keeps its data.
    let db = home.path().join("store/db");
    for entry in std::fs::read_dir(&db).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, b"\xffnot a sled file at all").unwrap();
        }
    }
    let out = slayer(home.path(), &["store", "status"]);
    let msg = stderr(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains("store rebuild") && msg.contains("store/db"),
        "{msg}"
    );
    ok(&slayer(home.path(), &["store", "rebuild"]));
}

#[test]
fn a_foreign_or_corrupt_event_log_is_named_and_other_runs_are_unaffected() {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let good = tiny_experiment(home.path(), "good", 4, 2);
    ok(&slayer(
        home.path(),
        &["--device", "cpu", "train", good.to_str().unwrap()],
    ));
    let foreign = home.path().join("runs/foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("events.jsonl"),
        "{\"hello\": 1}\nnot json\n{}\n",
    )
    .unwrap();
    let corrupt = home.path().join("runs/corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("experiment.toml"), "name = \"c\"\n").unwrap();
    std::fs::write(corrupt.join("events.jsonl"), b"\x00\xff\xfe garbage\n").unwrap();
    let listed = runs(home.path());
    assert_eq!(listed.len(), 3);
    for (id, state, problem) in &listed {
        if id.ends_with("-good") {
            assert_eq!((state.as_str(), problem), ("finished", &None));
        } else {
            let p = problem.as_deref().unwrap_or_default();
            assert!(
                p.contains(&format!("runs/{id}/events.jsonl")) && p.contains("line 1"),
                "{p}"
            );
        }
    }
    let out = slayer(home.path(), &["store", "sync"]);
    let msg = stderr(&out);
    assert!(out.status.success(), "{msg}");
    assert!(
        msg.contains("runs/foreign/events.jsonl line 1: not a slayer event"),
        "{msg}"
    );
    assert!(
        msg.contains("runs/corrupt/events.jsonl line 1: not UTF-8"),
        "{msg}"
    );
    let out = slayer(home.path(), &["runs", "tail", "foreign"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
}

#[test]
fn an_unwritable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model_dir(dir.path());
    let exp = tiny_experiment(dir.path(), "x", 2, 2);
    // A data directory below a regular file cannot be created, even by root.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let home = blocker.join("home");
    for args in [
        vec![
            "--device",
            "cpu",
            "train",
            exp.to_str().unwrap(),
            "--detach",
        ],
        vec!["store", "rebuild"],
    ] {
        let out = slayer(&home, &args);
        let msg = stderr(&out);
        assert!(!out.status.success());
        assert!(
            msg.contains(&home.display().to_string()) && msg.contains("Not a directory"),
            "{args:?}: {msg}"
        );
        assert!(!msg.contains("panicked"), "{msg}");
    }
}

/// Queued runs keep the experiment text they were launched with; a run directory that lost
/// its own copy fails with a message instead of blocking the queue.
#[test]
fn queued_runs_survive_their_experiment_file_being_removed() {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let first = tiny_experiment(home.path(), "first", 800, 400);
    let second = tiny_experiment(home.path(), "second", 4, 2);
    let third = tiny_experiment(home.path(), "third", 4, 2);
    let launch = |exp: &PathBuf| launch_detached(home.path(), exp);
    let ids: Vec<String> = [&first, &second, &third]
        .iter()
        .map(|e| launch(e))
        .collect();
    assert_eq!(status(home.path(), &ids[1]), "queued");
    std::fs::remove_file(&second).unwrap();
    std::fs::remove_file(
        home.path()
            .join("runs")
            .join(&ids[2])
            .join("experiment.toml"),
    )
    .unwrap();
    wait_until("the queue to drain", Duration::from_secs(120), || {
        let s: Vec<String> = ids.iter().map(|id| status(home.path(), id)).collect();
        s[0] == "finished" && s[1] == "finished" && s[2] == "failed"
    });
    let tail = ok(&slayer(home.path(), &["runs", "tail", &ids[2]]));
    assert!(tail.contains("experiment.toml is missing"), "{tail}");
}

/// Templates: listed, copied into the data directory, and a template name trains directly.
#[test]
fn shipped_experiments_are_offered_as_templates() {
    assert_eq!(
        slayer::templates::TEMPLATES.len(),
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml"))
            .count()
    );
    let home = tempfile::tempdir().unwrap();
    let ls = ok(&slayer(home.path(), &["experiments", "ls"]));
    assert!(
        ls.contains("smollm2-llama-pro") && ls.contains("(none yet"),
        "{ls}"
    );
    let out = ok(&slayer(
        home.path(),
        &["experiments", "new", "mine", "--from", "smollm2-llama-pro"],
    ));
    let path = PathBuf::from(out.trim());
    let exp = slayer::core::experiment::Experiment::load(&path).unwrap();
    assert_eq!(exp.name, "mine");
    assert!(
        stderr(&slayer(home.path(), &["experiments", "new", "mine"])).contains("cannot create")
    );
    let ls = ok(&slayer(home.path(), &["experiments", "ls"]));
    assert!(ls.contains("  mine\n"), "{ls}");
}

/// A worker killed outright (kill -9, the OOM killer) cannot hand its slot on itself: its
/// supervisor records how it died and starts the next queued run, with no console open.
#[test]
fn the_queue_moves_on_when_a_worker_is_killed() {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let long = tiny_experiment(home.path(), "long", 100_000, 1000);
    let short = tiny_experiment(home.path(), "short", 4, 2);
    let launch = |exp: &PathBuf| launch_detached(home.path(), exp);
    let (a, b) = (launch(&long), launch(&short));
    wait_until("the first run's steps", Duration::from_secs(30), || {
        std::fs::read_to_string(home.path().join("runs").join(&a).join("events.jsonl"))
            .is_ok_and(|s| s.contains("\"step\""))
    });
    assert_eq!(status(home.path(), &b), "queued");
    ok(&slayer(home.path(), &["runs", "kill", &a]));
    let deadline = Instant::now() + Duration::from_secs(240);
    while status(home.path(), &b) != "finished" {
        assert!(
            Instant::now() < deadline,
            "the queued run did not finish; runs:\n{}\nlog of {a}:\n{}\nlog of {b}:\n{}",
            ok(&slayer(home.path(), &["runs", "ls"])),
            std::fs::read_to_string(home.path().join("runs").join(&a).join("log"))
                .unwrap_or_default(),
            std::fs::read_to_string(home.path().join("runs").join(&b).join("log"))
                .unwrap_or_default(),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(home.path(), &a), "lost");
    let tail = ok(&slayer(home.path(), &["runs", "tail", &a]));
    assert!(tail.contains("killed by SIGKILL"), "{tail}");
}

/// `slayer eval RUN@STEP`: the run's model at that checkpoint on the run's own sets, recorded in
/// its events when no worker is writing them.
#[test]
fn a_run_checkpoint_is_evaluated_on_its_own_sets() {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "ev", 4, 2);
    ok(&slayer(
        home.path(),
        &["--device", "cpu", "train", exp.to_str().unwrap()],
    ));
    let id = runs(home.path())[0].0.clone();
    let out = slayer(
        home.path(),
        &["--device", "cpu", "eval", &format!("{id}@2"), "--json"],
    );
    let record: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(record["label"], "checkpoint");
    assert_eq!(record["step"], 2);
    assert!(record["ppl"][0]["perplexity"].as_f64().unwrap() > 1.0);
    let events = read_events(&home.path().join("runs").join(&id).join("events.jsonl")).unwrap();
    assert!(
        matches!(&events.last().unwrap().kind, EventKind::Eval(r) if r.label == "checkpoint" && r.step == 2)
    );
    let out = slayer(home.path(), &["eval", &format!("{id}@3")]);
    assert!(
        stderr(&out).contains("no checkpoint at step 3"),
        "{}",
        stderr(&out)
    );
}

/// A study on the tiny model (two strategies, one seed, a few steps) end to end through the
/// queue: the table has every cell filled, and a fresh data directory reproduces its numbers.
#[test]
fn a_study_runs_its_grid_and_reproduces() {
    let run_study = || {
        let home = tempfile::tempdir().unwrap();
        let file = tiny_study(home.path());
        let out = slayer(
            home.path(),
            &[
                "--device",
                "cpu",
                "study",
                "run",
                file.to_str().unwrap(),
                "--wait",
            ],
        );
        let table = ok(&out);
        let again = ok(&slayer(
            home.path(),
            &["study", "show", file.to_str().unwrap()],
        ));
        assert_eq!(table, again);
        // The study as run is saved with its cells: `study show NAME` needs no file.
        let by_name = ok(&slayer(home.path(), &["study", "show", "tiny-study"]));
        assert_eq!(table, by_name);
        (home, table)
    };
    let (_home, table) = run_study();
    println!("{table}");
    assert!(table.contains("## corpus words"), "{table}");
    // One base evaluation serves the table (the first cell's), with its own row.
    assert!(table.contains("| base model | — | 0 | — |"), "{table}");
    for strategy in ["shallow", "deep"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {strategy} ")))
            .unwrap();
        assert!(row.ends_with("| 1/1 |"), "{row}");
        assert!(
            row.contains("heldout") || table.contains("heldout ppl"),
            "{table}"
        );
        assert!(!row.contains('—'), "every cell filled: {row}");
    }
    assert!(table.contains("2 of 2 runs ended; from the first start to the last end: "));
    // Wall time differs between runs; everything else reproduces.
    let (_home2, table2) = run_study();
    assert_eq!(without_wall_time(&table), without_wall_time(&table2));
}

/// A study reading a file that is not there (its corpora not fetched yet) is refused before
/// anything is queued, naming the file and the cell.
#[test]
fn a_study_with_a_missing_corpus_queues_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model_dir(home.path());
    let file = home.path().join("study.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"gap\"\n[base.model]\nbase = \"{}\"\n\
             [[strategy]]\nname = \"a\"\nplan = {{ insert = [{{ after = 0 }}] }}\n\
             [[corpus]]\nname = \"code\"\ndata = {{ train = \"corpora/absent\" }}\n",
            model.display()
        ),
    )
    .unwrap();
    let out = slayer(home.path(), &["study", "run", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("study.toml") && err.contains("corpora/absent") && err.contains("code-a-s0"),
        "{err}"
    );
    assert!(slayer::runner::list_runs(home.path()).is_empty());
}

/// Every evaluation answers sample prompts greedily: the experiment's own, or else the first
/// questions of its first task set with their expected answers. The expanded model at step 0
/// computes the base model's function (identity initialisation), so its answers are the
/// base model's, word for word.
#[test]
fn evaluations_record_sample_generations() {
    let root = tempfile::tempdir().unwrap();
    let (model, corpus) = tiny_model_dir(root.path());
    let task = root.path().join("probe.jsonl");
    std::fs::write(
        &task,
        ["the cat", "the dog", "a bird", "the river", "old mill"]
            .iter()
            .enumerate()
            .fold(String::new(), |mut out, (i, context)| {
                let _ = writeln!(
                    out,
                    "{{\"context\": \"{context}\", \"choices\": [\" sat\", \" ran\"], \"gold\": {}}}",
                    i % 2
                );
                out
            }),
    )
    .unwrap();
    let experiment = |name: &str, samples: &str| {
        let path = root.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\n[model]\nbase = \"{}\"\n[plan]\ninsert = [{{ after = 1 }}]\n\
                 [data]\ntrain = \"{}\"\n[train]\nsteps = 2\nbatch_size = 2\nseq_len = 16\n\
                 [eval]\nmax_tokens = 64\ntasks = [\"{}\"]\nsample_tokens = 6\n{samples}",
                model.display(),
                corpus.display(),
                task.display()
            ),
        )
        .unwrap();
        path
    };
    let home = root.path().join("home");
    let evals_of = |exp: &Path| {
        let out = slayer(&home, &["--device", "cpu", "train", exp.to_str().unwrap()]);
        ok(&out);
        // Run ids start with the second they began: two runs of one second sort by name.
        let name = exp.file_stem().unwrap().to_str().unwrap();
        let dir = slayer::runner::list_runs(&home)
            .into_iter()
            .find(|r| r.id.ends_with(name))
            .unwrap();
        read_events(&dir.events_path())
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Eval(r) => Some(r),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let evals = evals_of(&experiment("probe-samples", ""));
    let labels: Vec<&str> = evals.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(labels, ["base", "expanded", "final"]);
    for e in &evals {
        assert_eq!(e.samples.len(), 3, "{e:?}");
        assert_eq!(e.samples[1].expected.as_deref(), Some("ran"));
    }
    assert_eq!(
        evals[0].samples, evals[1].samples,
        "identity insertion changes no answer"
    );
    let evals = evals_of(&experiment(
        "own-samples",
        "samples = [\"the dog\", \"a cat sat\"]\n",
    ));
    let prompts: Vec<&str> = evals[0].samples.iter().map(|s| s.prompt.as_str()).collect();
    assert_eq!(prompts, ["the dog", "a cat sat"]);
    assert!(evals[0].samples.iter().all(|s| s.expected.is_none()));
}

/// `slayer data preview` shows what an experiment trains on without training: documents cut
/// into the tokenizer's pieces, the split, the sequences and the epochs its steps make.
#[test]
fn the_training_data_is_previewed() {
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let exp = tiny_experiment(root.path(), "preview", 30, 10);
    let home = root.path().join("home");
    let out = slayer(&home, &["data", "preview", exp.to_str().unwrap(), "--json"]);
    let p: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(p["documents"], 200);
    let (train, heldout) = (
        p["train_documents"].as_u64().unwrap(),
        p["heldout_documents"].as_u64().unwrap(),
    );
    assert_eq!(train + heldout, 200);
    assert!(
        heldout > 5 && heldout < 40,
        "about a tenth held out: {heldout}"
    );
    // Each sentence is 12 words plus an end-of-text: 13 tokens.
    assert_eq!(p["train_tokens"].as_u64().unwrap(), train * 13);
    let sequences = p["sequences"].as_u64().unwrap();
    assert_eq!(sequences, train * 13 / 17);
    let epochs = p["epochs"].as_f64().unwrap();
    assert!((epochs - 30.0 * 2.0 / sequences as f64).abs() < 1e-9);
    let first = &p["first"][0];
    assert_eq!(first["tokens"], 12);
    assert_eq!(first["pieces"].as_array().unwrap().len(), 12);
    assert!(
        first["text"]
            .as_str()
            .unwrap()
            .starts_with(first["pieces"][0].as_str().unwrap())
    );
    let out = slayer(&home, &["data", "preview", exp.to_str().unwrap()]);
    let text = ok(&out);
    assert!(
        text.contains("200 documents") && text.contains("epochs"),
        "{text}"
    );
}

/// Launching checks the plan before a run exists: a plan with errors is refused with every
/// error named and leaves no run directory behind (the console and studies launch the same way).
#[test]
fn a_plan_with_errors_launches_nothing() {
    let home = tempfile::tempdir().unwrap();
    tiny_model_dir(home.path());
    let exp = tiny_experiment(home.path(), "bad", 4, 2);
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("insert = [{ after = 1 }]", "insert = [{ after = 9 }]");
    std::fs::write(&exp, text).unwrap();
    let out = slayer(
        home.path(),
        &[
            "--device",
            "cpu",
            "train",
            exp.to_str().unwrap(),
            "--detach",
        ],
    );
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains("bad.toml") && msg.contains("the plan has errors"),
        "{msg}"
    );
    assert!(msg.contains("insert after 9 is out of range"), "{msg}");
    assert!(slayer::runner::list_runs(home.path()).is_empty());
}

/// The console's jobs are library calls on threads (`slayer::jobs`), stopped by their flag:
/// an expansion cancelled part-way (the flag set from its own progress, as `C` sets it from
/// the console) ends as interrupted and leaves nothing at its output; an evaluation whose flag
/// is set before it starts records nothing in the run.
#[test]
fn a_job_stops_when_its_flag_is_set_and_leaves_nothing_behind() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let home = tempfile::tempdir().unwrap();
    let runs = two_runs(home.path());
    let exp = home.path().join("a.toml");
    let loaded =
        slayer::jobs::load_plan(&exp, None, home.path(), &|_, base| Ok(PathBuf::from(base)))
            .unwrap();
    let out = home.path().join("expanded");
    let request = slayer::jobs::ExpandRequest {
        out: out.clone(),
        verify: true,
        sample: None,
        dtype: None,
        force: false,
    };
    let cancel = AtomicBool::new(false);
    let mut seen = 0;
    let err = slayer::jobs::expand(&loaded, &request, &cancel, |done, _| {
        seen = done;
        if done >= 2 {
            cancel.store(true, Ordering::SeqCst);
        }
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("interrupted"), "{err:#}");
    assert!(seen >= 2, "it made progress first");
    assert!(!out.exists(), "a cancelled expansion leaves no directory");
    // Not cancelled, the same request writes the model and verifies it.
    cancel.store(false, Ordering::SeqCst);
    let summary = slayer::jobs::expand(&loaded, &request, &cancel, |_, _| {}).unwrap();
    assert!(summary.verification.unwrap().passed());
    let run = &runs[0];
    let before = run.read_events().unwrap().len();
    let err = slayer::jobs::evaluate_run(
        home.path(),
        run,
        None,
        &candle_core::Device::Cpu,
        slayer::core::model::Quant::Q8_0,
        &AtomicBool::new(true),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("interrupted"), "{err:#}");
    assert_eq!(run.read_events().unwrap().len(), before);
}

/// The queue reads a run's device typed: a `queued` file naming no device (edited by hand: an
/// unknown name, escapes, bytes that are not UTF-8, a megabyte) ends that run as failed,
/// naming the file, and starts nothing for it.
#[test]
fn a_queued_run_for_an_unknown_device_fails_naming_the_file() {
    let marks: [(Vec<u8>, &str); 4] = [
        (
            b"quantum\n".to_vec(),
            "unknown device `quantum` (cpu, cuda, auto)",
        ),
        (b"\x1b]0;pwned\x07".to_vec(), "unknown device"),
        (b"\xff\xfe".to_vec(), "queued"),
        (vec![b'x'; 1 << 20], "too large"),
    ];
    for (mark, says) in marks {
        let home = tempfile::tempdir().unwrap();
        let run = RunDir::create(home.path(), "odd").unwrap();
        std::fs::write(run.experiment_path(), "name = \"odd\"\n").unwrap();
        std::fs::write(run.path.join("queued"), &mark).unwrap();
        let started = slayer::runner::queue::advance(home.path(), &|_, d| {
            panic!("nothing may start (asked for {d})")
        })
        .unwrap();
        assert!(started.is_empty());
        let events = run.read_events().unwrap();
        let Some(slayer::core::events::EventKind::End {
            status, message, ..
        }) = events.last().map(|e| &e.kind)
        else {
            panic!("{events:?}")
        };
        assert_eq!(*status, slayer::core::events::RunStatus::Failed);
        assert!(
            message.contains("queued") && message.contains(says),
            "{message}"
        );
        assert!(!run.path.join("queued").exists());
    }
}
