//! The console in a real terminal: tmux runs it, send-keys drives it and capture-pane reads the
//! screen. Open the experiment, edit the plan and watch the layer map change, launch a short CPU
//! run, watch its step counter advance (and ask the store about it from a shell meanwhile),
//! leave with the run still going, reopen, find the run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is the failure report"
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tiny_model_dir;

/// One tmux server for all tests of this binary (its socket is named after the process); each
/// test has its own session in it.
struct Tmux {
    session: String,
}

fn socket() -> String {
    format!("slayer-tests-{}", std::process::id())
}

impl Tmux {
    fn new(session: &str) -> Self {
        Self {
            session: session.to_string(),
        }
    }

    #[expect(
        clippy::unused_self,
        reason = "every tmux call goes through a session's handle"
    )]
    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &socket()])
            .args(args)
            .output()
            .expect("tmux is needed for this test (.ci/run installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&self, home: &Path) {
        let cmd = format!(
            "SLAYER_HOME='{}' '{}'; echo console-exited; sleep 60",
            home.display(),
            env!("CARGO_BIN_EXE_slayer")
        );
        self.cmd(&[
            "new-session",
            "-d",
            "-s",
            &self.session,
            "-x",
            "160",
            "-y",
            "48",
            &cmd,
        ]);
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.cmd(&["send-keys", "-t", &self.session, k]);
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", &self.session])
    }

    /// Waits until the screen satisfies `pred`; returns it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    /// The session goes; the server ends with its last session.
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &socket(), "kill-session", "-t", &self.session])
            .output();
    }
}

/// A data directory holding one experiment, `x`, so the console opens on it instead of creating
/// the demo (and fetching its model).
fn home_with_one_experiment() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("experiments")).unwrap();
    std::fs::write(
        home.path().join("experiments/x.toml"),
        "name = \"x\"\n[model]\nbase = \"m\"\n[plan]\npreset = \"slayer\"\n",
    )
    .unwrap();
    home
}

/// The step counter of the monitor's header (`step N/M`).
fn step_of(screen: &str) -> Option<u64> {
    let at = screen.find(" step ")?;
    screen[at + 6..].split('/').next()?.trim().parse().ok()
}

#[test]
fn drive_the_console_through_a_run_and_back() {
    let home = tempfile::tempdir().unwrap();
    let (model, corpus) = tiny_model_dir(home.path());
    std::fs::create_dir_all(home.path().join("experiments")).unwrap();
    std::fs::write(
        home.path().join("experiments/tiny.toml"),
        format!(
            "name = \"tiny\"\n[model]\nbase = \"{}\"\n[plan]\ninsert = [{{ after = 1 }}]\n[data]\ntrain = \"{}\"\nheldout_fraction = 0.1\n[train]\nsteps = 4000\nbatch_size = 2\nseq_len = 16\ncheckpoint_every = 1000\n[eval]\nmax_tokens = 64\n",
            model.display(),
            corpus.display()
        ),
    )
    .unwrap();
    let tmux = Tmux::new("drive");
    tmux.start(home.path());
    tmux.wait_for("the experiment list", |s| {
        s.contains("tiny") && s.contains("experiments")
    });
    // The plan editor: one new block after block 1 ("new ← 1"); make it after block 2.
    tmux.keys(&["Enter"]);
    tmux.wait_for("the layer map", |s| {
        s.contains("layer map") && s.contains("new ← 1")
    });
    tmux.keys(&[
        "Down", "Down", "Down", "Down", "End", "Left", "Left", "Left", "BSpace", "2",
    ]);
    let s = tmux.wait_for("the layer map to change", |s| s.contains("new ← 2"));
    assert!(s.contains("tiny.toml [+]"), "{s}");
    tmux.keys(&["C-s", "Escape"]);
    tmux.wait_for("the list again", |s| s.contains("lineage"));
    assert!(
        std::fs::read_to_string(home.path().join("experiments/tiny.toml"))
            .unwrap()
            .contains("after = 2")
    );
    // Train it and watch.
    tmux.keys(&["t"]);
    tmux.wait_for("the run to start", |s| s.contains("1 running"));
    tmux.keys(&["2", "Enter"]);
    let first = tmux.wait_for("steps", |s| step_of(s).is_some_and(|n| n > 0));
    let n0 = step_of(&first).unwrap();
    let later = tmux.wait_for("the step counter to advance", |s| {
        step_of(s).is_some_and(|n| n > n0)
    });
    assert!(later.contains("blocks × steps"), "{later}");
    // The setup our users have: the console watching a live run in one pane, a shell in
    // another. The store's read commands answer there (the console holds the store only for
    // each sync), and the lineage has the run's first checkpoint once it is written.
    let id = slayer::runner::list_runs(home.path())[0].id.clone();
    for _ in 0..5 {
        let status = common::ok(&common::slayer(home.path(), &["store", "status"]));
        assert!(status.contains("1 runs"), "{status}");
    }
    let lineage = common::ok(&common::slayer(home.path(), &["store", "lineage", &id]));
    assert!(
        lineage.contains(&format!("run         {id}")) && lineage.contains("experiment  tiny"),
        "{lineage}"
    );
    tmux.wait_for("the run still streaming", |s| {
        step_of(s).is_some_and(|n| n > n0 + 1)
    });
    // Leave: the run keeps going (the default answer).
    tmux.keys(&["q"]);
    tmux.wait_for("the quit question", |s| s.contains("leave them running"));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the console to exit", |s| s.contains("console-exited"));
    let runs = slayer::runner::list_runs(home.path());
    assert_eq!(runs.len(), 1);
    // Reopen and find it: in a new session, opened before the old one goes (the shared server
    // exits with its last session, and a session opened while it exits is lost).
    let again = Tmux::new("drive-again");
    again.start(home.path());
    drop(tmux);
    let tmux = again;
    tmux.wait_for("the console", |s| s.contains("experiments"));
    tmux.keys(&["2"]);
    let s = tmux.wait_for("the run in the list", |s| s.contains(&runs[0].id));
    assert!(s.contains("running") || s.contains("finished"), "{s}");
    tmux.keys(&["q"]);
    if tmux.screen().contains("leave them running") {
        tmux.keys(&["Right", "Enter"]);
    }
    tmux.wait_for("the console to exit", |s| s.contains("console-exited"));
    // Stopped from the console's quit question, or finished by now.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !slayer::runner::list_runs(home.path()).iter().all(|r| {
        matches!(
            r.state(&r.read_events().unwrap()),
            slayer::runner::RunState::Stopped | slayer::runner::RunState::Finished
        )
    }) {
        assert!(
            Instant::now() < deadline,
            "the run neither stopped nor finished"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A paste of 1,000 characters (20 lines) reaches the plan editor at once: keys that arrive
/// together are drained together (they once came through at about 4 a second, so this paste
/// took minutes). The time is printed; bench/RESULTS.md has the latency measurements.
#[test]
fn a_paste_lands_in_the_editor_at_once() {
    let home = home_with_one_experiment();
    let tmux = Tmux::new("paste");
    tmux.start(home.path());
    tmux.wait_for("the experiment list", |s| s.contains("lineage"));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the editor", |s| s.contains("x.toml"));
    let lines: Vec<String> = (1..=20)
        .map(|i| format!("# paste-{i:02} {}", "x".repeat(38)))
        .collect();
    let text = lines.join("\n") + "\n";
    assert_eq!(text.chars().count(), 1000);
    tmux.cmd(&["set-buffer", "-b", "paste", &text]);
    let pasted = Instant::now();
    tmux.cmd(&["paste-buffer", "-b", "paste", "-t", &tmux.session]);
    let screen = tmux.wait_for("the whole paste", |s| s.contains("# paste-20"));
    let elapsed = pasted.elapsed();
    for line in &lines {
        assert!(screen.contains(line.as_str()), "missing {line}:\n{screen}");
    }
    eprintln!(
        "1,000 pasted characters on screen {} ms after the paste",
        elapsed.as_millis()
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "the paste took {elapsed:?} to show"
    );
    tmux.keys(&["C-s", "Escape", "q"]);
    tmux.wait_for("the console to exit", |s| s.contains("console-exited"));
    let saved = std::fs::read_to_string(home.path().join("experiments/x.toml")).unwrap();
    assert!(saved.starts_with(&text), "{saved}");
}

/// A terminal that goes away (the SSH connection drops: the pty closes) ends the console within
/// a few seconds, instead of leaving it spinning on a dead terminal.
#[test]
fn the_console_leaves_when_its_terminal_goes_away() {
    let home = home_with_one_experiment();
    let tmux = Tmux::new("hup");
    let pid_file = home.path().join("console.pid");
    let cmd = format!(
        "echo $$ > '{}'; SLAYER_HOME='{}' exec '{}'",
        pid_file.display(),
        home.path().display(),
        env!("CARGO_BIN_EXE_slayer")
    );
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        &tmux.session,
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    tmux.wait_for("the console", |s| {
        s.contains("experiments") && s.contains('x')
    });
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let proc_dir = Path::new("/proc").join(&pid);
    assert!(proc_dir.exists());
    // Its terminal goes: the session (and so the pane's pseudo-terminal) is killed.
    tmux.cmd(&["kill-session", "-t", &tmux.session]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "the console (pid {pid}) is still running 5 s after its terminal went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A keymap.toml rebinding keys per context changes what those keys do in the real console:
/// on the experiments screen (`n` unbound, `N` new), in a popup (`x` closes) and in a text
/// field (`ctrl-j` runs the `:` line).
#[test]
fn rebound_keys_act_per_context() {
    let home = home_with_one_experiment();
    std::fs::write(
        home.path().join("keymap.toml"),
        "[experiments]\n\"n\" = \"none\"\n\"N\" = \"new\"\n[popup]\n\"x\" = \"back\"\n[input]\n\"ctrl-j\" = \"send\"\n",
    )
    .unwrap();
    let tmux = Tmux::new("rebind");
    tmux.start(home.path());
    let s = tmux.wait_for("the experiment list", |s| s.contains("lineage"));
    assert!(!s.contains("keymap.toml"), "the keymap was refused:\n{s}");
    tmux.keys(&["n"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!tmux.screen().contains("new experiment"), "n still opens");
    tmux.keys(&["N"]);
    tmux.wait_for("the template picker", |s| s.contains("new experiment"));
    tmux.keys(&["x"]);
    tmux.wait_for("the picker to close", |s| !s.contains("new experiment"));
    tmux.keys(&[":", "r", "u", "n", "s", "C-j"]);
    tmux.wait_for("the runs screen", |s| s.contains("No runs yet"));
    tmux.keys(&["q"]);
    tmux.wait_for("the console to exit", |s| s.contains("console-exited"));
}
