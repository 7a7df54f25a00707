//! Regression tests for the reliability issue's classes, through the real binary on a tiny random
//! model: `runs rm` never leaves `<data>/runs`, bad event-log lines hide nothing, a closed pipe
//! ends a command quietly, the queue never gives one slot to two runs (a stress test), damaged
//! checkpoints fall back, failures are recorded where they happened, a full disk loses nothing,
//! and messages name what is wrong once. The hostile-input suite (`tests/hostile.rs`) walks
//! every reader through malformed files; these are the behaviours around them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is the failure report"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{joined, ok, runs, slayer, status, stderr, tiny_model_dir, wait_until};
use slayer::core::events::{EventKind, RunStatus};
use slayer::runner::read_events;

/// An experiment on the tiny model without evaluations (fast to start), `steps` steps, a
/// checkpoint every `every`, keeping `keep`.
fn quick_experiment(dir: &Path, name: &str, steps: u64, every: u64, keep: usize) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[model]\nbase = \"{}\"\n[plan]\ninsert = [{{ after = 1 }}]\n\
             [data]\ntrain = \"{}\"\n[train]\nsteps = {steps}\nbatch_size = 2\nseq_len = 16\n\
             checkpoint_every = {every}\nkeep_checkpoints = {keep}\n[eval]\nbefore = []\n\
             heldout = false\nmax_tokens = 32\n",
            dir.join("tiny-model").display(),
            dir.join("tiny-corpus.txt").display()
        ),
    )
    .unwrap();
    path
}

fn run_dir(home: &Path, id: &str) -> PathBuf {
    home.join("runs").join(id)
}

/// Trains `exp` in the foreground to the end; returns the run id.
fn train(home: &Path, exp: &Path) -> String {
    let out = slayer(
        home,
        &["--device", "cpu", "train", &exp.display().to_string()],
    );
    ok(&out);
    let ids: Vec<String> = runs(home).into_iter().map(|r| r.0).collect();
    ids.last().unwrap().clone()
}

fn events(home: &Path, id: &str) -> Vec<slayer::core::events::Event> {
    read_events(&run_dir(home, id).join("events.jsonl")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. `runs rm` resolves run ids under <data>/runs only

#[test]
fn runs_rm_never_touches_anything_outside_the_runs_directory() {
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let home = root.path().join("home");
    let exp = quick_experiment(root.path(), "keep", 2, 1, 2);
    let id = train(&home, &exp);
    // A directory that merely looks like a run, with work of its own inside, reached four ways.
    let outside = root.path().join("thesis");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("experiment.toml"), "name = \"x\"\n").unwrap();
    std::fs::write(outside.join("events.jsonl"), "").unwrap();
    std::fs::write(outside.join("chapter1.tex"), "years of work").unwrap();
    std::os::unix::fs::symlink(&outside, home.join("runs/linked")).unwrap();
    for target in [
        outside.display().to_string(),
        "../../thesis".to_string(),
        format!("{id}/../../../thesis"),
        "linked".to_string(),
    ] {
        let out = slayer(&home, &["runs", "rm", &target, "--yes"]);
        assert_eq!(out.status.code(), Some(1), "{target}: {}", stderr(&out));
        assert!(
            outside.join("chapter1.tex").is_file(),
            "{target} removed it"
        );
    }
    assert!(stderr(&slayer(&home, &["runs", "rm", "linked"])).contains("symbolic link"));
    // The run has checkpoints: without a terminal to ask at, --yes is needed.
    let out = slayer(&home, &["runs", "rm", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert!(run_dir(&home, &id).is_dir());
    ok(&slayer(&home, &["runs", "rm", &id, "--yes"]));
    assert!(!run_dir(&home, &id).exists());
    // A run with no checkpoint is removed without asking.
    std::fs::create_dir_all(run_dir(&home, "empty")).unwrap();
    std::fs::write(run_dir(&home, "empty").join("experiment.toml"), "").unwrap();
    ok(&slayer(&home, &["runs", "rm", "empty"]));
    assert!(outside.join("chapter1.tex").is_file());
}

/// At a terminal, `runs rm` of a run with checkpoints asks: "n" keeps it, "y" removes it.
#[test]
fn runs_rm_asks_at_a_terminal_before_removing_checkpoints() {
    use std::io::{Read as _, Write as _};
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let home = root.path().join("home");
    let id = train(&home, &quick_experiment(root.path(), "ask", 2, 1, 2));
    for (answer, kept) in [("n\n", true), ("y\n", false)] {
        let (mut child, mut master) = common::spawn_in_pty(
            Command::new(env!("CARGO_BIN_EXE_slayer"))
                .args(["runs", "rm", &id])
                .env("SLAYER_HOME", &home),
            24,
            80,
        );
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&seen).contains("[y/N]") {
            let n = master.read(&mut buf).unwrap();
            seen.extend(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&seen).contains("has 2 checkpoints (step 1, 2)"));
        master.write_all(answer.as_bytes()).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.success(), !kept);
        assert_eq!(run_dir(&home, &id).is_dir(), kept, "after {answer:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. One bad line in events.jsonl hides nothing

#[test]
fn a_bad_line_in_the_event_log_is_skipped_by_every_reader() {
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let home = root.path().join("home");
    let id = train(&home, &quick_experiment(root.path(), "bad-line", 3, 1, 1));
    let log = run_dir(&home, &id).join("events.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "}} a stray edit {{");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    // runs ls: finished at step 3, the bad line named — not "lost 0/0".
    let row = runs(&home).into_iter().find(|r| r.0 == id).unwrap();
    assert_eq!(row.1, "finished");
    let problem = row.2.expect("the skipped line is reported");
    assert!(problem.contains("events.jsonl line 3"), "{problem}");
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&slayer(&home, &["runs", "ls", "--json"]))).unwrap();
    assert_eq!(ls[0]["step"], 3);
    // show, export and tail carry on, with one warning naming file and line.
    for args in [
        vec!["runs", "show", &id],
        vec!["runs", "export", &id],
        vec!["runs", "tail", &id],
    ] {
        let out = slayer(&home, &args);
        let warning = stderr(&out);
        assert!(out.status.success(), "{args:?}: {warning}");
        assert!(
            warning.contains("events.jsonl line 3"),
            "{args:?}: {warning}"
        );
        assert_eq!(
            warning.matches("line 3").count(),
            1,
            "{args:?}: one warning: {warning}"
        );
    }
    let csv = ok(&slayer(&home, &["runs", "export", &id]));
    assert_eq!(csv.lines().count(), 4, "a header and three steps: {csv}");
    // resume reads the run as it is: finished.
    let out = slayer(&home, &["runs", "resume", &id]);
    assert!(stderr(&out).contains("has finished"), "{}", stderr(&out));
    // The store indexes the rest of the run and names the line.
    ok(&slayer(&home, &["store", "rebuild"]));
    let store = slayer::store::Store::open(&home, "test").unwrap();
    let record = store.run(&id).unwrap().unwrap();
    assert_eq!(record.run.step, 3);
    // The console's run table from the store says what the directory scan says, warning too.
    let ageless = |mut rows: Vec<slayer::runner::RunSummary>| {
        for r in &mut rows {
            r.age_secs = 0.0;
        }
        rows
    };
    assert_eq!(
        ageless(store.run_table(&home).unwrap()),
        ageless(slayer::runner::RunTable::default().refresh(&home))
    );
    assert!(
        record
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("line 3"))
    );
}

/// A running run whose log cannot be read (or holds only garbage) is still shown as running.
#[test]
fn a_running_run_is_never_shown_as_lost() {
    let home = tempfile::tempdir().unwrap();
    let run = slayer::runner::RunDir::create(home.path(), "live").unwrap();
    std::fs::write(run.experiment_path(), "name = \"live\"\n").unwrap();
    std::fs::write(run.events_path(), "garbage\nmore garbage\n").unwrap();
    // This test process is the run's worker.
    run.claim_worker().unwrap();
    assert_eq!(status(home.path(), &run.id), "running");
    // An unreadable log (a directory where the file should be): still running.
    std::fs::remove_file(run.events_path()).unwrap();
    std::fs::create_dir(run.events_path()).unwrap();
    assert_eq!(status(home.path(), &run.id), "running");
    let mut table = slayer::runner::RunTable::default();
    assert_eq!(
        table.refresh(home.path())[0].status,
        slayer::runner::RunState::Running
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A closed stdout ends a command quietly

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let home = root.path().join("home");
    let id = train(&home, &quick_experiment(root.path(), "pipe", 40, 40, 1));
    for args in [
        vec!["experiments", "ls"],
        vec!["runs", "ls"],
        vec!["runs", "ls", "--json"],
        vec!["runs", "export", &id],
        vec!["runs", "export", &id, "--format", "json"],
        vec!["runs", "tail", &id],
        vec!["runs", "show", &id],
        vec!["--help"],
    ] {
        // A pipe whose reader is gone before the command writes (like `| head -0`).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_slayer"))
            .args(&args)
            .env("SLAYER_HOME", &home)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert!(
            matches!(out.status.code(), Some(0)),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. The device queue never gives one slot to two runs

/// One worker's time on the device: from its run start to its end (or the record of its kill).
#[derive(Debug, Clone)]
struct Segment {
    run: String,
    start: f64,
    end: f64,
}

fn segments(home: &Path, id: &str) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut open: Option<f64> = None;
    for e in events(home, id) {
        match &e.kind {
            EventKind::RunStart { .. } => {
                assert!(open.is_none(), "run {id}: a start while a worker ran");
                open = Some(e.time);
            }
            EventKind::End { .. } => {
                if let Some(start) = open.take() {
                    out.push(Segment {
                        run: id.to_string(),
                        start,
                        end: e.time,
                    });
                }
            }
            EventKind::Warning { message } if message.contains("killed") => {
                if let Some(start) = open.take() {
                    out.push(Segment {
                        run: id.to_string(),
                        start,
                        end: e.time,
                    });
                }
            }
            _ => {}
        }
    }
    assert!(open.is_none(), "run {id} never ended");
    out
}

/// Runs every command line of `commands` at the same moment; returns their outputs in order.
fn at_once(home: &Path, commands: &[Vec<String>]) -> Vec<std::process::Output> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(commands.len()));
    let handles: Vec<_> = commands
        .iter()
        .map(|args| {
            let (home, args, barrier) = (home.to_path_buf(), args.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                Command::new(env!("CARGO_BIN_EXE_slayer"))
                    .args(&args)
                    .env("SLAYER_HOME", &home)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Many launches and resumes racing from several processes, repeated. Each round launches four
/// runs at once, stops each as it starts until all four are stopped, then starts twelve
/// processes at once that resume them (three per run), and waits for all to finish. Afterwards
/// the workers' recorded start and end times never overlap (one CPU slot), every run holds
/// every step once, and of the processes racing to resume one run at most one resumed it.
#[test]
fn racing_launches_and_resumes_never_share_a_slot() {
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let home = root.path().join("home");
    let steps = 40;
    let exps: Vec<PathBuf> = (0..4)
        .map(|i| quick_experiment(root.path(), &format!("race{i}"), steps, 4, 2))
        .collect();
    let strings =
        |items: &[&str]| -> Vec<String> { items.iter().map(|s| (*s).to_string()).collect() };
    let mut resumes = 0;
    // Runs stopped before they finished (a quick one may finish first): each resumes once.
    let mut stopped_total = 0;
    for round in 0..3 {
        let launches: Vec<Vec<String>> = exps
            .iter()
            .map(|e| {
                strings(&[
                    "--device",
                    "cpu",
                    "train",
                    &e.display().to_string(),
                    "--detach",
                ])
            })
            .collect();
        for out in at_once(&home, &launches) {
            ok(&out);
        }
        let mine: Vec<String> = runs(&home)
            .into_iter()
            .map(|r| r.0)
            .skip(round * 4)
            .collect();
        assert_eq!(mine.len(), 4);
        // Stop each run as the queue starts it, until none runs or waits.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let table: Vec<_> = runs(&home)
                .into_iter()
                .filter(|r| mine.contains(&r.0))
                .collect();
            if table
                .iter()
                .all(|r| matches!(r.1.as_str(), "stopped" | "finished"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: {table:?}");
            for (id, state, _) in &table {
                if state == "running" {
                    let _ = slayer(&home, &["runs", "stop", id]);
                }
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        // Twelve resumes at once: three racing for each run.
        let stopped: Vec<String> = runs(&home)
            .into_iter()
            .filter(|r| mine.contains(&r.0) && r.1 == "stopped")
            .map(|r| r.0)
            .collect();
        let requests: Vec<Vec<String>> = stopped
            .iter()
            .flat_map(|id| {
                std::iter::repeat_n(strings(&["--device", "cpu", "runs", "resume", id]), 3)
            })
            .collect();
        stopped_total += stopped.len();
        let outs = at_once(&home, &requests);
        for (id, outs) in stopped.iter().zip(outs.chunks(3)) {
            let winners = outs
                .iter()
                .filter(|o| stderr(o).contains("resumed in the background"))
                .count();
            assert!(winners <= 1, "{winners} processes resumed run {id}");
            for o in outs {
                let e = stderr(o);
                assert!(
                    e.contains("resumed in the background")
                        || e.contains("is queued to resume")
                        || e.contains("is already running"),
                    "{e}"
                );
            }
        }
        resumes += requests.len();
        wait_until(
            "every run of the round to finish",
            Duration::from_secs(300),
            || {
                runs(&home)
                    .iter()
                    .filter(|r| mine.contains(&r.0))
                    .all(|r| r.1 == "finished")
            },
        );
    }
    let table = runs(&home);
    assert_eq!(table.len(), 12);
    let mut all: Vec<Segment> = Vec::new();
    for (id, _, _) in &table {
        let got: Vec<u64> = joined(&run_dir(&home, id)).iter().map(|s| s.0).collect();
        assert_eq!(got, (1..=steps).collect::<Vec<_>>(), "run {id}");
        all.extend(segments(&home, id));
    }
    all.sort_by(|a, b| a.start.total_cmp(&b.start));
    for pair in all.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "the CPU slot was held by {} and {} at once: {pair:?}",
            pair[0].run,
            pair[1].run
        );
    }
    // One segment per launch and one per resume of a stopped run.
    assert!(stopped_total > 0, "no run was stopped before it finished");
    assert_eq!(
        all.len(),
        table.len() + stopped_total,
        "{stopped_total} runs were stopped and resumed"
    );
    eprintln!(
        "{} worker segments over {} runs, {resumes} racing resumes, no overlap",
        all.len(),
        table.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Recovery that recovers

/// A damaged newest checkpoint: resuming falls back to the older intact one (with a warning
/// naming it), the joined history is whole, and chat and eval of the run use the intact one.
#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let home = root.path().join("home");
    let exp = quick_experiment(root.path(), "fallback", 8, 2, 3);
    let id = train(&home, &exp);
    let run = run_dir(&home, &id);
    // Make it a stopped run at step 6 with checkpoints 2, 4, 6 … then damage step 6.
    let log = run.join("events.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .take_while(|l| !l.contains("\"step\":7"))
        .collect();
    let mut text = kept.join("\n");
    text.push_str(
        "\n{\"seq\":999,\"time\":1.0,\"type\":\"end\",\"status\":\"stopped\",\"step\":6,\"message\":\"x\"}\n",
    );
    std::fs::write(&log, text).unwrap();
    std::fs::remove_dir_all(run.join("checkpoints/step-8")).unwrap();
    let weights = run.join("checkpoints/step-6/trainable.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // chat picks the intact step 4 and says why.
    let out = slayer(&home, &["--device", "cpu", "eval", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("step-6 is damaged"),
        "{}",
        stderr(&out)
    );
    // The checkpoint, trained blocks and all, was evaluated quantised (the CPU's default), and
    // both the output and the recorded evaluation say so.
    assert!(
        stderr(&out).contains("weights q8_0:") && stderr(&out).contains("the CPU's default"),
        "{}",
        stderr(&out)
    );
    let recorded = events(&home, &id)
        .into_iter()
        .rev()
        .find_map(|e| match e.kind {
            EventKind::Eval(r) if r.label == "checkpoint" => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(recorded.quant, slayer::core::model::Quant::Q8_0);
    // Resuming continues from step 4.
    let out = slayer(&home, &["--device", "cpu", "train", "--resume", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = events(&home, &id);
    let resumed_from = events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::RunStart { resumed_from, .. } => Some(*resumed_from),
            _ => None,
        })
        .unwrap();
    assert_eq!(resumed_from, Some(4));
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::Warning { message } if message.contains("step-6 is damaged") && message.contains("trainable.safetensors"))));
    let steps: Vec<u64> = joined(&run).iter().map(|s| s.0).collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    assert_eq!(status(&home, &id), "finished");
}

/// A run that fails mid-way records the step it reached, and a worker that wrote no event is
/// shown as lost with the last line of its output, not as queued for ever.
#[test]
fn failures_are_recorded_where_they_happened() {
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let home = root.path().join("home");
    // Checkpoints cannot be written (a file is where their directory goes): the run trains
    // steps 1 and 2, then fails writing the first checkpoint.
    let exp = quick_experiment(root.path(), "fails", 6, 2, 1);
    let out = Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args([
            "--device",
            "cpu",
            "train",
            &exp.display().to_string(),
            "--detach",
        ])
        .env("SLAYER_HOME", &home)
        .output()
        .unwrap();
    let id = ok(&out).trim().to_string();
    let run = run_dir(&home, &id);
    // The worker may already be past the point; the file goes in at once.
    let _ = std::fs::write(run.join("checkpoints"), "not a directory");
    wait_until("the run to end", Duration::from_secs(120), || {
        !matches!(status(&home, &id).as_str(), "running" | "queued")
    });
    let end = events(&home, &id)
        .into_iter()
        .rev()
        .find_map(|e| match e.kind {
            EventKind::End {
                status,
                step,
                message,
            } => Some((status, step, message)),
            _ => None,
        })
        .unwrap();
    if run.join("checkpoints").is_file() {
        assert_eq!(end.0, RunStatus::Failed, "{end:?}");
        assert_eq!(end.1, 2, "failed at the step it reached: {end:?}");
        assert!(end.2.contains("checkpoints"), "{end:?}");
    }
    // A worker recorded but silent: lost, with its output's last line.
    let silent = slayer::runner::RunDir::create(&home, "silent").unwrap();
    std::fs::write(silent.experiment_path(), "name = \"silent\"\n").unwrap();
    std::fs::write(silent.path.join("worker.pid"), "999999999 1\n").unwrap();
    std::fs::write(
        silent.path.join("log"),
        "loading\nerror: No space left on device\n",
    )
    .unwrap();
    let row = runs(&home).into_iter().find(|r| r.0 == silent.id).unwrap();
    assert_eq!(row.1, "lost");
    assert!(
        row.2
            .as_deref()
            .is_some_and(|p| p.contains("No space left on device")),
        "{row:?}"
    );
}

/// A real full disk (a 4 MiB tmpfs in a user and mount namespace): a run that fills it fails
/// with a message naming the file, at the step it reached, keeping its earlier checkpoint;
/// `store rebuild` on the full disk fails and keeps the index it had; nothing of the logger
/// reaches the terminal.
#[test]
fn a_full_disk_loses_nothing() {
    if Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "unshare -rm is needed for the full-disk test (util-linux, user namespaces)"
        );
        eprintln!("SKIPPED: a_full_disk_loses_nothing needs `unshare -rm` (user namespaces)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    tiny_model_dir(root.path());
    let exp = quick_experiment(root.path(), "full", 400, 2, 2);
    let disk = root.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let bin = env!("CARGO_BIN_EXE_slayer");
    let script = format!(
        r#"set -u
mount -t tmpfs -o size=4m tmpfs {disk}
export SLAYER_HOME={disk}/home
{bin} store rebuild >/dev/null 2>&1
dd if=/dev/zero of={disk}/spacer bs=64k count=1 2>/dev/null
echo "== train"
{bin} --device cpu train {exp} > {disk}/train.out 2>&1 &
pid=$!
# Once a checkpoint is written, the disk fills up but for 64 KiB: room for event lines, not
# for the next checkpoint.
until ls -d $SLAYER_HOME/runs/*/checkpoints/step-* >/dev/null 2>&1; do sleep 0.02; done
dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null; rm {disk}/spacer
wait $pid; echo "exit $?"
tail -n 3 {disk}/train.out
echo "== runs"
{bin} runs ls --json
echo "== fill"
dd if=/dev/zero of={disk}/filler2 bs=4k 2>/dev/null; true
echo "== rebuild"
{bin} store rebuild; echo "exit $?"
echo "== db"
ls {disk}/home/store
echo "== checkpoints"
ls {disk}/home/runs/*/checkpoints
"#,
        disk = disk.display(),
        exp = exp.display()
    );
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = stderr(&out);
    let section = |name: &str| {
        text.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_default()
            .to_string()
    };
    let train_out = section("train");
    assert!(train_out.starts_with("exit 1"), "{text}\n{err}");
    assert!(
        train_out.contains("No space left on device"),
        "the cause is named: {train_out}"
    );
    assert!(!text.contains("tracing-subscriber") && !err.contains("tracing-subscriber"));
    let listed: serde_json::Value = serde_json::from_str(&section("runs")).unwrap();
    let run = &listed[0];
    assert_eq!(run["status"], "failed", "{run}");
    let reached = run["step"].as_u64().unwrap();
    assert!(reached >= 2, "{run}");
    let checkpoints = section("checkpoints");
    assert!(
        checkpoints.contains("step-"),
        "an earlier checkpoint survives: {checkpoints}"
    );
    let rebuild = section("rebuild");
    assert!(rebuild.contains("exit 1"), "{rebuild}\n{err}");
    assert!(
        err.contains("index there is as it was"),
        "rebuild says the old index is kept: {err}"
    );
    assert!(
        section("db").lines().any(|l| l == "db"),
        "the old index is still there: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Messages that say what is wrong, once

/// A copy of the model directory `model` at `to`, with the JSON file `file` edited.
fn edited_copy(
    model: &Path,
    to: &Path,
    file: &str,
    edit: &dyn Fn(&mut serde_json::Value),
) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), to.join(f)).unwrap();
    }
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join(file)).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(to.join(file), json.to_string()).unwrap();
    to.to_path_buf()
}

#[test]
fn messages_name_the_problem_once() {
    let root = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model_dir(root.path());
    let home = root.path().join("home");
    let run = |args: &[&str]| {
        let out = slayer(&home, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        stderr(&out)
    };
    // The OS reason once, not twice.
    let missing = root.path().join("missing-config");
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::write(missing.join("config.json"), "{").unwrap();
    std::fs::remove_file(missing.join("config.json")).unwrap();
    std::fs::create_dir(missing.join("config.json")).unwrap();
    let e = run(&["model", "info", &missing.display().to_string()]);
    assert!(e.contains("config.json"), "{e}");
    let e = run(&[
        "eval",
        &model.display().to_string(),
        "--ppl",
        "/nonexistent/x.txt",
    ]);
    assert_eq!(e.matches("os error 2").count(), 1, "{e}");
    // An empty plan is an empty plan.
    let empty = root.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let e = run(&["plan", "check", &empty.display().to_string()]);
    assert!(e.contains("the plan is empty"), "{e}");
    // A diagnostic returned as an error says "error" once.
    let bad = root.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"b\"\n[data]\ntrain = \"x\"\n[train]\nstpes = 1\n",
    )
    .unwrap();
    let e = run(&["train", &bad.display().to_string()]);
    assert_eq!(e.matches("error").count(), 1, "{e}");
    assert!(e.contains("bad.toml:5:1"), "{e}");
    // A config that contradicts itself.
    let qwen = edited_copy(
        &model,
        &root.path().join("qwen"),
        "config.json",
        &|config| {
            config["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        },
    );
    let e = run(&["model", "info", &qwen.display().to_string()]);
    assert!(
        e.contains("Qwen2ForCausalLM") && e.contains("config.json"),
        "{e}"
    );
    // Sampling settings are checked before any model is loaded.
    let started = Instant::now();
    let e = run(&["chat", "/nonexistent/model", "--top-p", "7"]);
    assert!(e.contains("top-p 7"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Counts that compute nothing, and bounds on generated data.
    for args in [
        vec!["eval", "m", "--window", "0"],
        vec!["eval", "m", "--max-tokens", "0"],
        vec![
            "data",
            "synth-facts",
            "--out",
            "x",
            "--entities",
            "100000000",
        ],
    ] {
        let out = slayer(&home, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // A task item longer than the model's context names its file and line.
    let task = root.path().join("long.jsonl");
    let item = |ctx: &str| {
        format!("{{\"context\": \"{ctx}\", \"choices\": [\" cat\", \" dog\"], \"gold\": 0}}\n")
    };
    std::fs::write(
        &task,
        format!("{}{}", item("the"), item(&"the cat sat ".repeat(400))),
    )
    .unwrap();
    let e = run(&[
        "--device",
        "cpu",
        "eval",
        &model.display().to_string(),
        "--task",
        &task.display().to_string(),
    ]);
    assert!(e.contains("long.jsonl: line 2"), "{e}");
    // A tokenizer larger than the model names both files.
    let big = edited_copy(
        &model,
        &root.path().join("big"),
        "tokenizer.json",
        &|tokenizer| {
            tokenizer["model"]["vocab"]["far"] = 9690.into();
        },
    );
    let e = run(&[
        "--device",
        "cpu",
        "chat",
        &big.display().to_string(),
        "--prompt",
        "the",
    ]);
    assert!(
        e.contains("tokenizer.json") && e.contains("config.json") && e.contains("9690"),
        "{e}"
    );
}
