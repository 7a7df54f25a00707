//! Every line the program prints goes through one sanitising writer (`src/out.rs`), so no
//! string from a file or another process reaches a terminal raw. This test reads the sources (of
//! every crate of the workspace) and
//! fails on any other way to stdout or stderr: the print macros, `dbg!`, and handles to the
//! standard streams, outside the writer itself and the console's terminal set-up (which writes
//! only through ratatui, whose spans drop control characters).

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::path::{Path, PathBuf};

/// Ways to the terminal that bypass the sanitising writer.
const RAW_WRITES: &[&str] = &[
    "println!",
    "print!",
    "eprintln!",
    "eprint!",
    "dbg!",
    "io::stdout()",
    "io::stderr()",
    "stdout().lock()",
    "stderr().lock()",
];

/// Files allowed some of them, and which.
const ALLOWED: &[(&str, &[&str])] = &[
    // The writer itself.
    ("src/out.rs", RAW_WRITES),
    // The console's backend and terminal modes (ratatui draws; nothing is printed).
    ("src/tui/mod.rs", &["io::stdout()"]),
    // Whether stdout is a terminal (the console opens only on one).
    ("src/cli/mod.rs", &["io::stdout()"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source of a file without its `#[cfg(test)]` modules (tests may print).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

#[test]
fn nothing_reaches_the_terminal_but_through_the_sanitising_writer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "crates/engine/src", "crates/data/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 80, "the sources were not found");
    let mut found = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let allowed: &[&str] = ALLOWED
            .iter()
            .find(|(f, _)| *f == rel)
            .map_or(&[], |(_, a)| a);
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in without_tests(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for pattern in RAW_WRITES {
                if code.contains(pattern) && !allowed.contains(pattern) {
                    found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "writes to the terminal outside src/out.rs (use outln!/errln!):\n{}",
        found.join("\n")
    );
}

/// The writer strips what the hostile-input suite checks for, and keeps layout.
#[test]
fn the_writer_strips_escapes_and_keeps_newlines_and_tabs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(["runs", "show", "x\u{1b}]0;pwned\u{7}\u{9b}31m"])
        .env(
            "SLAYER_HOME",
            std::env::temp_dir().join("slayer-output-paths"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x]0;pwned31m"), "{err}");
    assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "{err:?}");
}

/// Without a terminal the console says which commands to use and exits 2, whichever side is
/// not a terminal (`echo | slayer` and `slayer | cat` once seemed to differ: the shell reports
/// cat's status); an unknown `--theme` is refused before the screen is taken.
#[test]
fn the_console_needs_a_terminal_on_both_sides() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("experiments")).unwrap();
    std::fs::write(home.path().join("experiments/x.toml"), "name = \"x\"\n").unwrap();
    let console = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slayer"));
        c.env("SLAYER_HOME", home.path());
        c
    };
    let pty = || {
        let size = nix::libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(&size, None).unwrap();
        (std::fs::File::from(p.master), std::fs::File::from(p.slave))
    };
    // Neither side, stdin only, stdout only.
    let out = console().stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"));
    for piped_stdin in [true, false] {
        let (mut master, slave) = pty();
        let mut c = console();
        if piped_stdin {
            c.stdin(Stdio::piped()).stdout(slave.try_clone().unwrap());
        } else {
            c.stdin(slave.try_clone().unwrap()).stdout(Stdio::piped());
        }
        let status = c.stderr(slave).status().unwrap();
        assert_eq!(status.code(), Some(2), "piped stdin: {piped_stdin}");
        let mut shown = vec![0u8; 4096];
        let n = master.read(&mut shown).unwrap_or(0);
        assert!(
            String::from_utf8_lossy(&shown[..n]).contains("needs a terminal"),
            "piped stdin: {piped_stdin}"
        );
    }
    // A terminal on both sides, and a theme that does not exist.
    let (mut master, slave) = pty();
    let status = console()
        .args(["--theme", "nosuch"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let mut shown = vec![0u8; 4096];
    let n = master.read(&mut shown).unwrap_or(0);
    let shown = String::from_utf8_lossy(&shown[..n]);
    assert!(
        shown.contains("\"nosuch\"") && shown.contains("high-contrast"),
        "{shown}"
    );
}
