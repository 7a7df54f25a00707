//! The hostile-input suite: every command that reads a file, walked through a generated corpus of
//! malformed inputs — model directories (config, safetensors, tokenizer), GGUF files, plans,
//! experiments, studies, corpora, task files, event logs, mergekit YAML, keymap and theme files.
//!
//! Each case runs the release-shaped binary as a user would and asserts that it exits 1 or 2
//! (0 where the input is one the command must tolerate, such as a bad line in an event log)
//! and never by a panic (101) or a signal; that the message names the file; that nothing on
//! stdout or stderr is a raw control byte (every hostile string here carries an escape
//! sequence); and that the peak memory stays under 1 GiB (every input is under 10 MiB).
//!
//! One `#[test]` runs the cases one after another: peak memory is read with
//! `getrusage(RUSAGE_CHILDREN)`, the largest resident set of any child waited for so far, so a
//! case that raises it owns the new peak. The case count is printed at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "tests: a panic is the failure report"
)]

mod common;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every input file is smaller than this…
const MAX_INPUT_BYTES: u64 = 10 << 20;
/// …and no command may need more than this for one.
const MAX_PEAK_RSS_BYTES: u64 = 1 << 30;
/// A case that runs longer than this is a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// The sequence hostile strings carry: it sets the terminal's title when printed raw.
const PAYLOAD: &str = "\u{1b}]0;pwned\u{7}\u{1b}[31m";

/// What a command must do with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refuse it: exit 1 or 2, naming the file.
    Refuse,
    /// Carry on: exit 0, and say which file held the bad part.
    Tolerate,
    /// A mutation that may or may not still be valid: exit 0, 1 or 2; a refusal names the file.
    Survive,
}

struct Case {
    name: String,
    home: PathBuf,
    args: Vec<OsString>,
    expect: Expect,
    /// One of these must appear in stderr when the command refuses (or tolerates) the input.
    mentions: Vec<String>,
    /// Inputs whose size is checked against [`MAX_INPUT_BYTES`].
    inputs: Vec<PathBuf>,
}

struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    timed_out: bool,
}

fn run(case: &Case) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(&case.args)
        .env("SLAYER_HOME", &case.home)
        .env("NO_COLOR", "1")
        .env_remove("SLAYER_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        timed_out,
    }
}

/// The first raw control byte (C0 but newline and tab, DEL, or a C1 character) in `bytes`.
fn raw_control(bytes: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(bytes);
    text.char_indices()
        .find(|&(_, c)| c != '\n' && c != '\t' && c.is_control())
        .map(|(i, _)| i)
}

fn children_peak_rss() -> u64 {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    // Linux reports kilobytes.
    u64::try_from(usage.max_rss()).unwrap_or(0) * 1024
}

/// Checks one case; returns what is wrong with the outcome, if anything.
fn check(case: &Case, o: &Outcome) -> Option<String> {
    if o.timed_out {
        return Some(format!("ran past {CASE_TIMEOUT:?}"));
    }
    if let Some(sig) = o.signal {
        return Some(format!("killed by signal {sig}"));
    }
    let code = o.code.unwrap_or(-1);
    let allowed: &[i32] = match case.expect {
        Expect::Refuse => &[1, 2],
        Expect::Tolerate => &[0],
        Expect::Survive => &[0, 1, 2],
    };
    if !allowed.contains(&code) {
        return Some(format!("exit code {code}, expected one of {allowed:?}"));
    }
    for (stream, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        if let Some(at) = raw_control(bytes) {
            return Some(format!("a raw control character in {stream} at byte {at}"));
        }
    }
    let stderr = String::from_utf8_lossy(&o.stderr);
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        return Some("a panic message".into());
    }
    let must_name = match case.expect {
        Expect::Refuse | Expect::Tolerate => true,
        Expect::Survive => code != 0,
    };
    if must_name
        && !case.mentions.is_empty()
        && !case.mentions.iter().any(|m| stderr.contains(m.as_str()))
    {
        return Some(format!("the message names none of {:?}", case.mentions));
    }
    None
}

/// Builds the cases.
struct Corpus {
    root: PathBuf,
    /// The shared data directory of cases that read only.
    home: PathBuf,
    /// A valid tiny HF model directory and a corpus for it.
    model: PathBuf,
    text: PathBuf,
    cases: Vec<Case>,
    files: usize,
    /// Files outside any data directory that must still be there after every case.
    guarded: Vec<PathBuf>,
}

impl Corpus {
    fn new(root: &Path) -> Self {
        let home = root.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let (model, text) = common::tiny_model_dir(root);
        Self {
            root: root.to_path_buf(),
            home,
            model,
            text,
            cases: Vec::new(),
            files: 0,
            guarded: Vec::new(),
        }
    }

    /// A fresh directory for one input.
    fn dir(&mut self, group: &str) -> PathBuf {
        self.files += 1;
        let d = self.root.join(group).join(format!("{:04}", self.files));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes `bytes` as `name` in a fresh directory.
    fn file(&mut self, group: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir(group).join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn add(&mut self, name: String, args: Vec<OsString>, expect: Expect, mentions: &[&str]) {
        let inputs = args
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
        self.cases.push(Case {
            name,
            home: self.home.clone(),
            args,
            expect,
            mentions: mentions.iter().map(|m| (*m).to_string()).collect(),
            inputs,
        });
    }

    fn add_in(
        &mut self,
        home: &Path,
        name: String,
        args: Vec<OsString>,
        expect: Expect,
        mentions: &[&str],
    ) {
        self.add(name, args, expect, mentions);
        self.cases.last_mut().unwrap().home = home.to_path_buf();
    }
}

fn args(items: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--device".into(), "cpu".into()];
    v.extend(items.iter().map(|s| s.as_ref().to_os_string()));
    v
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Prefixes of `bytes` at a spread of lengths (the empty file included).
fn truncations(bytes: &[u8], n: usize) -> Vec<(usize, Vec<u8>)> {
    let mut cuts: Vec<usize> = (0..n).map(|i| bytes.len() * i / n).collect();
    cuts.push(bytes.len().saturating_sub(1));
    cuts.dedup();
    cuts.into_iter().map(|c| (c, bytes[..c].to_vec())).collect()
}

/// `bytes` with the byte at each of `n` spread positions replaced (deterministically).
fn flips(bytes: &[u8], n: usize) -> Vec<(usize, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let at = (bytes.len() * (2 * i + 1) / (2 * n)).min(bytes.len() - 1);
            let mut b = bytes.to_vec();
            b[at] = b[at].wrapping_add(0x5b) ^ 0xa5;
            (at, b)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// GGUF

enum Meta {
    Str(String),
    U32(u32),
    F32(f32),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
    /// Type id and raw value bytes.
    Raw(u32, Vec<u8>),
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn meta_bytes(m: &Meta) -> (u32, Vec<u8>) {
    match m {
        Meta::Str(s) => (8, gguf_string(s)),
        Meta::U32(v) => (4, v.to_le_bytes().to_vec()),
        Meta::F32(v) => (6, v.to_le_bytes().to_vec()),
        Meta::StrArr(items) => {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend((items.len() as u64).to_le_bytes());
            for s in items {
                b.extend(gguf_string(s));
            }
            (9, b)
        }
        Meta::I32Arr(items) => {
            let mut b = 5u32.to_le_bytes().to_vec();
            b.extend((items.len() as u64).to_le_bytes());
            for v in items {
                b.extend(v.to_le_bytes());
            }
            (9, b)
        }
        Meta::Raw(t, b) => (*t, b.clone()),
    }
}

struct GgufTensor {
    name: String,
    /// Row-major (PyTorch) shape.
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// A GGUF v3 file; `tensor_count` overrides the count written in the header.
fn gguf(meta: &[(String, Meta)], tensors: &[GgufTensor], tensor_count: Option<u64>) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensor_count.unwrap_or(tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, m) in meta {
        b.extend(gguf_string(k));
        let (t, v) = meta_bytes(m);
        b.extend(t.to_le_bytes());
        b.extend(v);
    }
    let mut offset = 0u64;
    for t in tensors {
        b.extend(gguf_string(&t.name));
        b.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            b.extend((*d as u64).to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (t.data.len() as u64 * 4).div_ceil(32) * 32;
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    for t in tensors {
        let start = b.len();
        for v in &t.data {
            b.extend(v.to_le_bytes());
        }
        while !(b.len() - start).is_multiple_of(32) {
            b.push(0);
        }
    }
    b
}

/// A valid tiny Llama GGUF: 1 block, hidden 8, 2 heads, 1 KV head, a 4-token BPE vocabulary.
fn tiny_gguf_parts() -> (Vec<(String, Meta)>, Vec<GgufTensor>) {
    let meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str("llama".into())),
        ("llama.embedding_length".into(), Meta::U32(8)),
        ("llama.feed_forward_length".into(), Meta::U32(16)),
        ("llama.block_count".into(), Meta::U32(1)),
        ("llama.attention.head_count".into(), Meta::U32(2)),
        ("llama.attention.head_count_kv".into(), Meta::U32(1)),
        ("llama.context_length".into(), Meta::U32(64)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Meta::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Meta::Str("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Meta::StrArr(vec!["a".into(), "b".into(), "ab".into(), "<|end|>".into()]),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Meta::StrArr(vec!["a b".into()]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Meta::I32Arr(vec![1, 1, 1, 3]),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(3)),
    ];
    let t = |name: &str, shape: &[usize]| {
        let n: usize = shape.iter().product();
        GgufTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05).collect(),
        }
    };
    let tensors = vec![
        t("token_embd.weight", &[4, 8]),
        t("output_norm.weight", &[8]),
        t("blk.0.attn_norm.weight", &[8]),
        t("blk.0.ffn_norm.weight", &[8]),
        t("blk.0.attn_q.weight", &[8, 8]),
        t("blk.0.attn_k.weight", &[4, 8]),
        t("blk.0.attn_v.weight", &[4, 8]),
        t("blk.0.attn_output.weight", &[8, 8]),
        t("blk.0.ffn_gate.weight", &[16, 8]),
        t("blk.0.ffn_up.weight", &[16, 8]),
        t("blk.0.ffn_down.weight", &[8, 16]),
    ];
    (meta, tensors)
}

fn with_meta(key: &str, value: Meta) -> Vec<u8> {
    let (mut meta, tensors) = tiny_gguf_parts();
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => meta.push((key.into(), value)),
    }
    gguf(&meta, &tensors, None)
}

fn without_meta(key: &str) -> Vec<u8> {
    let (mut meta, tensors) = tiny_gguf_parts();
    meta.retain(|(k, _)| k != key);
    gguf(&meta, &tensors, None)
}

fn gguf_cases(c: &mut Corpus) {
    let (meta, tensors) = tiny_gguf_parts();
    let valid = gguf(&meta, &tensors, None);
    let mut variants: Vec<(String, Vec<u8>, Expect)> = Vec::new();
    variants.push(("valid".into(), valid.clone(), Expect::Survive));
    for (at, b) in truncations(&valid, 24) {
        variants.push((format!("truncated at {at}"), b, Expect::Refuse));
    }
    for (at, b) in flips(&valid, 24) {
        variants.push((format!("byte {at} changed"), b, Expect::Survive));
    }
    let mut header = |name: &str, range: std::ops::Range<usize>, bytes: &[u8]| {
        let mut b = valid.clone();
        b[range].copy_from_slice(bytes);
        variants.push((name.into(), b, Expect::Refuse));
    };
    header("bad magic", 0..4, b"GGUX");
    header("version 1", 4..8, &1u32.to_le_bytes());
    header("version 99", 4..8, &99u32.to_le_bytes());
    header("tensor count u64::MAX", 8..16, &u64::MAX.to_le_bytes());
    header("tensor count 2^40", 8..16, &(1u64 << 40).to_le_bytes());
    header("metadata count u64::MAX", 16..24, &u64::MAX.to_le_bytes());
    header(
        "metadata count + 1",
        16..24,
        &(meta.len() as u64 + 1).to_le_bytes(),
    );
    header("first key length 2^60", 24..32, &(1u64 << 60).to_le_bytes());
    variants.push((
        "tensor count off by one".into(),
        gguf(&meta, &tensors, Some(tensors.len() as u64 + 1)),
        Expect::Refuse,
    ));
    variants.push((
        "tensor count one short".into(),
        gguf(&meta, &tensors, Some(tensors.len() as u64 - 1)),
        Expect::Refuse,
    ));
    let huge_array = |elem: u32, n: u64| {
        let mut b = elem.to_le_bytes().to_vec();
        b.extend(n.to_le_bytes());
        Meta::Raw(9, b)
    };
    for (name, value) in [
        ("array of 2^62 u8", huge_array(0, 1 << 62)),
        ("array of u64::MAX strings", huge_array(8, u64::MAX)),
        ("array of 2^40 f64", huge_array(12, 1 << 40)),
        ("nested array", huge_array(9, 1)),
        ("array of an unknown type", huge_array(77, 1)),
        ("unknown value type", Meta::Raw(42, vec![0; 8])),
        ("bool byte 2", Meta::Raw(7, vec![2])),
        (
            "string of 2^50 bytes",
            Meta::Raw(8, (1u64 << 50).to_le_bytes().to_vec()),
        ),
    ] {
        variants.push((name.into(), with_meta("x.bad", value), Expect::Refuse));
    }
    // Large but honest arrays: accepted, in memory proportional to the file (a 9 MB u8 array
    // once cost 34 bytes an element).
    let mut u8s = 0u32.to_le_bytes().to_vec();
    u8s.extend((9u64 << 20).to_le_bytes());
    u8s.extend(std::iter::repeat_n(7u8, 9 << 20));
    variants.push((
        "9 MB u8 array".into(),
        with_meta("x.big", Meta::Raw(9, u8s)),
        Expect::Survive,
    ));
    let empties: Vec<String> = vec![String::new(); 1 << 20];
    variants.push((
        "a million empty strings".into(),
        with_meta("x.strings", Meta::StrArr(empties.clone())),
        Expect::Survive,
    ));
    variants.push((
        "a million tokens for a 4-row embedding".into(),
        with_meta("tokenizer.ggml.tokens", Meta::StrArr(empties)),
        Expect::Survive,
    ));
    variants.push((
        "more merges than tokens".into(),
        with_meta(
            "tokenizer.ggml.merges",
            Meta::StrArr(vec!["a b".into(); 4096]),
        ),
        Expect::Survive,
    ));
    for (key, value) in [
        ("general.architecture", Meta::Str(format!("{PAYLOAD}qwen2"))),
        ("general.architecture", Meta::U32(3)),
        ("general.alignment", Meta::U32(3)),
        ("general.alignment", Meta::U32(0)),
        ("general.alignment", Meta::U32(1 << 20)),
        ("llama.embedding_length", Meta::U32(0)),
        ("llama.embedding_length", Meta::U32(u32::MAX)),
        ("llama.attention.head_count", Meta::U32(3)),
        ("llama.attention.head_count_kv", Meta::U32(0)),
        ("llama.block_count", Meta::U32(5000)),
        ("llama.block_count", Meta::U32(2)),
        ("llama.feed_forward_length", Meta::U32(17)),
        ("llama.context_length", Meta::U32(0)),
        ("llama.rope.dimension_count", Meta::U32(3)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Meta::F32(f32::NAN),
        ),
        ("llama.rope.freq_base", Meta::F32(-1.0)),
        (
            "llama.rope.scaling.type",
            Meta::Str(format!("yarn{PAYLOAD}")),
        ),
        ("llama.vocab_size", Meta::U32(2)),
    ] {
        variants.push((
            format!("{key} = {}", describe_meta(&value)),
            with_meta(key, value),
            Expect::Refuse,
        ));
    }
    for key in [
        "general.architecture",
        "llama.embedding_length",
        "llama.block_count",
        "llama.attention.head_count",
        "llama.feed_forward_length",
    ] {
        variants.push((format!("without {key}"), without_meta(key), Expect::Refuse));
    }
    // Tokenizer problems keep the weights usable: `model info` works and says why.
    for (key, value) in [
        ("tokenizer.ggml.model", Meta::Str("llama".into())),
        ("tokenizer.ggml.pre", Meta::Str(format!("{PAYLOAD}x"))),
        ("tokenizer.ggml.merges", Meta::StrArr(vec!["ab".into()])),
        ("tokenizer.ggml.tokens", Meta::I32Arr(vec![1, 2])),
        ("tokenizer.ggml.bos_token_id", Meta::U32(u32::MAX)),
        (
            "tokenizer.chat_template",
            Meta::Str(format!("{{{{ {PAYLOAD} }}}}")),
        ),
    ] {
        variants.push((
            format!("{key} = {}", describe_meta(&value)),
            with_meta(key, value),
            Expect::Survive,
        ));
    }
    let mut tensor_variant = |name: &str, expect: Expect, edit: &dyn Fn(&mut Vec<GgufTensor>)| {
        let (meta, mut tensors) = tiny_gguf_parts();
        edit(&mut tensors);
        variants.push((name.into(), gguf(&meta, &tensors, None), expect));
    };
    tensor_variant("duplicate tensor name", Expect::Refuse, &|t| {
        t[3].name = t[2].name.clone();
    });
    tensor_variant("missing tensor", Expect::Refuse, &|t| {
        t.remove(5);
    });
    tensor_variant(
        "tensor shape contradicts the config",
        Expect::Refuse,
        &|t| {
            t[4].shape = vec![8, 4];
            t[4].data.truncate(32);
        },
    );
    tensor_variant("zero-sized dimension", Expect::Refuse, &|t| {
        t[1].shape = vec![0];
        t[1].data.clear();
    });
    tensor_variant("nine dimensions", Expect::Refuse, &|t| {
        t[1].shape = vec![1, 1, 1, 1, 1, 1, 1, 1, 8];
    });
    tensor_variant("a NaN weight", Expect::Refuse, &|t| t[4].data[3] = f32::NAN);
    tensor_variant("an infinite weight", Expect::Refuse, &|t| {
        t[9].data[0] = f32::INFINITY;
    });
    tensor_variant("a hostile tensor name", Expect::Survive, &|t| {
        t.push(GgufTensor {
            name: format!("blk.0.{PAYLOAD}.weight"),
            shape: vec![1],
            data: vec![0.0],
        });
        t.swap(0, 11);
    });
    // A tensor whose data offset points past the end.
    {
        let mut b = valid.clone();
        let name = gguf_string("blk.0.ffn_down.weight");
        let at = b
            .windows(name.len())
            .position(|w| w == name.as_slice())
            .unwrap();
        let offset_at = at + name.len() + 4 + 2 * 8 + 4;
        b[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        variants.push((
            "tensor offset past the end".into(),
            b.clone(),
            Expect::Refuse,
        ));
        let type_at = offset_at - 4;
        b[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
        variants.push(("unknown ggml type".into(), b, Expect::Refuse));
    }
    for (what, bytes, expect) in variants {
        let path = c.file("gguf", "model.gguf", &bytes);
        let mentions = ["model.gguf"];
        c.add(
            format!("gguf {what}: model info"),
            args(&[&"model", &"info", &path]),
            expect,
            &mentions,
        );
    }
    // Import and chat read the same files further: a few of the worst through them too.
    let nan = {
        let (meta, mut tensors) = tiny_gguf_parts();
        tensors[4].data[3] = f32::NAN;
        gguf(&meta, &tensors, None)
    };
    for (what, bytes) in [
        ("valid", valid.clone()),
        ("NaN weight", nan),
        ("truncated", valid[..valid.len() - 40].to_vec()),
        (
            "SentencePiece vocabulary",
            with_meta("tokenizer.ggml.model", Meta::Str("llama".into())),
        ),
    ] {
        let path = c.file("gguf", "model.gguf", &bytes);
        let out = path.parent().unwrap().join("imported");
        let expect = if what == "valid" {
            Expect::Survive
        } else {
            Expect::Refuse
        };
        let import_expect = if what.starts_with("Sentence") {
            Expect::Survive
        } else {
            expect
        };
        c.add(
            format!("gguf {what}: model import"),
            args(&[&"model", &"import", &path, &"--out", &out]),
            import_expect,
            &["model.gguf"],
        );
        c.add(
            format!("gguf {what}: chat"),
            args(&[&"chat", &path, &"--prompt", &"ab", &"--max-tokens", &"2"]),
            expect,
            &["model.gguf"],
        );
    }
}

fn describe_meta(m: &Meta) -> String {
    match m {
        Meta::Str(s) => format!("{:?}", s.replace('\u{1b}', "ESC")),
        Meta::U32(v) => v.to_string(),
        Meta::F32(v) => v.to_string(),
        Meta::StrArr(v) => format!("{} strings", v.len()),
        Meta::I32Arr(v) => format!("{} ints", v.len()),
        Meta::Raw(t, b) => format!("type {t}, {} bytes", b.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// HF model directories

/// A copy of the tiny model with `file` replaced by `bytes` (or removed when `None`).
fn model_variant(c: &mut Corpus, file: &str, bytes: Option<&[u8]>) -> PathBuf {
    let dir = c.dir("model").join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&c.model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    match bytes {
        Some(b) => std::fs::write(dir.join(file), b).unwrap(),
        None => std::fs::remove_file(dir.join(file)).unwrap(),
    }
    dir
}

fn config_with(c: &Corpus, edit: &dyn Fn(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.model.join("config.json")).unwrap()).unwrap();
    edit(&mut v);
    serde_json::to_vec_pretty(&v).unwrap()
}

/// A safetensors file from a header (JSON text) and data bytes.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

type Edit = Box<dyn Fn(&mut serde_json::Value)>;

fn model_cases(c: &mut Corpus) {
    let config = std::fs::read(c.model.join("config.json")).unwrap();
    let weights = std::fs::read(c.model.join("model.safetensors")).unwrap();
    let mut variants: Vec<(String, &str, Option<Vec<u8>>, Expect)> = Vec::new();
    variants.push((
        "config.json missing".into(),
        "config.json",
        None,
        Expect::Refuse,
    ));
    for (at, b) in truncations(&config, 6) {
        variants.push((
            format!("config.json cut at {at}"),
            "config.json",
            Some(b),
            Expect::Refuse,
        ));
    }
    variants.push((
        "config.json not UTF-8".into(),
        "config.json",
        Some(b"{\"model_type\": \"\xff\xfe\"}".to_vec()),
        Expect::Refuse,
    ));
    let edits: Vec<(&str, Edit)> = vec![
        (
            "hidden_size a string",
            Box::new(|v| v["hidden_size"] = "64".into()),
        ),
        ("hidden_size 0", Box::new(|v| v["hidden_size"] = 0.into())),
        (
            "hidden_size negative",
            Box::new(|v| v["hidden_size"] = (-64).into()),
        ),
        (
            "hidden_size 1e20",
            Box::new(|v| v["hidden_size"] = serde_json::json!(1e20)),
        ),
        (
            "vocab_size 2^40",
            Box::new(|v| v["vocab_size"] = (1u64 << 40).into()),
        ),
        (
            "num_hidden_layers 1e6",
            Box::new(|v| v["num_hidden_layers"] = 1_000_000.into()),
        ),
        (
            "heads do not divide",
            Box::new(|v| v["num_key_value_heads"] = 3.into()),
        ),
        ("head_dim odd", Box::new(|v| v["head_dim"] = 15.into())),
        (
            "rms_norm_eps negative",
            Box::new(|v| v["rms_norm_eps"] = (-1.0).into()),
        ),
        ("rope_theta 0", Box::new(|v| v["rope_theta"] = 0.into())),
        (
            "hostile model_type",
            Box::new(|v| v["model_type"] = format!("{PAYLOAD}qwen2").into()),
        ),
        (
            "llama beside a Qwen2 class",
            Box::new(|v| v["architectures"] = serde_json::json!(["Qwen2ForCausalLM"])),
        ),
        (
            "hidden_act gelu",
            Box::new(|v| v["hidden_act"] = "gelu".into()),
        ),
        (
            "attention bias",
            Box::new(|v| v["attention_bias"] = true.into()),
        ),
        (
            "rope_scaling garbage",
            Box::new(|v| {
                v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": "x"});
            }),
        ),
        (
            "no vocab_size",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("vocab_size");
            }),
        ),
        (
            "config is a list",
            Box::new(|v| *v = serde_json::json!([1, 2, 3])),
        ),
        (
            "hidden_size 32 (weights are 64)",
            Box::new(|v| v["hidden_size"] = 32.into()),
        ),
        (
            "max_position_embeddings 0",
            Box::new(|v| v["max_position_embeddings"] = 0.into()),
        ),
    ];
    for (what, edit) in &edits {
        variants.push((
            format!("config.json {what}"),
            "config.json",
            Some(config_with(c, edit.as_ref())),
            Expect::Refuse,
        ));
    }
    variants.push((
        "model.safetensors missing".into(),
        "model.safetensors",
        None,
        Expect::Refuse,
    ));
    for (at, b) in truncations(&weights, 8) {
        variants.push((
            format!("model.safetensors cut at {at}"),
            "model.safetensors",
            Some(b),
            Expect::Refuse,
        ));
    }
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let data = &weights[8 + header_len..];
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    let header_with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut h = header.clone();
        edit(&mut h);
        safetensors(&h.to_string(), data)
    };
    let first = header
        .as_object()
        .unwrap()
        .keys()
        .find(|k| *k != "__metadata__")
        .unwrap()
        .clone();
    let f = first.clone();
    let st: Vec<(&str, Vec<u8>)> = vec![
        ("header length u64::MAX", {
            let mut b = weights.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("header length past the end", {
            let mut b = weights.clone();
            b[..8].copy_from_slice(&(weights.len() as u64).to_le_bytes());
            b
        }),
        ("header not JSON", safetensors("{not json", data)),
        (
            "header not UTF-8",
            safetensors("{\"\u{ff}\": 1}", data)
                .into_iter()
                .map(|x| if x == 0xc3 { 0xff } else { x })
                .collect(),
        ),
        (
            "offsets reversed",
            header_with(&|h| {
                let o = h[&f]["data_offsets"].clone();
                h[&f]["data_offsets"] = serde_json::json!([o[1], o[0]]);
            }),
        ),
        (
            "offsets past the end",
            header_with(&|h| {
                h[&f]["data_offsets"] = serde_json::json!([0, 1u64 << 40]);
            }),
        ),
        (
            "unknown dtype",
            header_with(&|h| h[&f]["dtype"] = "F128".into()),
        ),
        (
            "shape disagrees with the bytes",
            header_with(&|h| {
                h[&f]["shape"] = serde_json::json!([3, 3]);
            }),
        ),
        (
            "shape overflows",
            header_with(&|h| {
                h[&f]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]);
            }),
        ),
        (
            "a hostile tensor name",
            header_with(&|h| {
                let t = h[&f].clone();
                h.as_object_mut().unwrap().remove(&f);
                h[format!("{PAYLOAD}{f}")] = t;
            }),
        ),
        (
            "an integer tensor",
            header_with(&|h| h[&f]["dtype"] = "I64".into()),
        ),
    ];
    for (what, bytes) in st {
        variants.push((
            format!("model.safetensors {what}"),
            "model.safetensors",
            Some(bytes),
            Expect::Refuse,
        ));
    }
    // Non-finite weights: refused when the weights are loaded (chat, eval, train).
    for (what, value) in [("NaN", f32::NAN), ("infinity", f32::NEG_INFINITY)] {
        let entry = &header[&first];
        let start = entry["data_offsets"][0].as_u64().unwrap() as usize;
        let mut d = data.to_vec();
        d[start + 8..start + 12].copy_from_slice(&value.to_le_bytes());
        variants.push((
            format!("a {what} weight"),
            "model.safetensors",
            Some(safetensors(&header.to_string(), &d)),
            Expect::Refuse,
        ));
    }
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.model.join("tokenizer.json")).unwrap()).unwrap();
    let mut too_big = tokenizer.clone();
    too_big["model"]["vocab"]["far-away"] = 9690.into();
    variants.push((
        "tokenizer.json beyond vocab_size".into(),
        "tokenizer.json",
        Some(too_big.to_string().into_bytes()),
        Expect::Refuse,
    ));
    for (what, bytes) in [
        ("not JSON", b"{\"model\": ".to_vec()),
        ("not UTF-8", b"\xff\xfe\x00".to_vec()),
        ("empty", Vec::new()),
        (
            "unknown model type",
            br#"{"model": {"type": "Nope"}}"#.to_vec(),
        ),
    ] {
        variants.push((
            format!("tokenizer.json {what}"),
            "tokenizer.json",
            Some(bytes),
            Expect::Refuse,
        ));
    }
    for (what, bytes) in [
        ("not JSON", b"{".to_vec()),
        ("not UTF-8", b"{\"chat_template\": \"\xff\"}".to_vec()),
        (
            "hostile template",
            format!(
                "{{\"chat_template\": \"{{{{ {} }}}}\"}}",
                PAYLOAD.escape_default()
            )
            .into_bytes(),
        ),
    ] {
        let expect = if what == "hostile template" {
            Expect::Survive
        } else {
            Expect::Refuse
        };
        variants.push((
            format!("tokenizer_config.json {what}"),
            "tokenizer_config.json",
            Some(bytes),
            expect,
        ));
    }
    variants.push((
        "index pointing outside".into(),
        "model.safetensors.index.json",
        Some(br#"{"weight_map": {"model.norm.weight": "../../etc/passwd"}}"#.to_vec()),
        Expect::Refuse,
    ));
    variants.push((
        "index without weight_map".into(),
        "model.safetensors.index.json",
        Some(br#"{"metadata": {}}"#.to_vec()),
        Expect::Refuse,
    ));
    variants.push((
        "index naming a missing shard".into(),
        "model.safetensors.index.json",
        Some(br#"{"weight_map": {"model.norm.weight": "model-00002.safetensors"}}"#.to_vec()),
        Expect::Refuse,
    ));
    variants.push((
        "generation_config.json not JSON".into(),
        "generation_config.json",
        Some(b"[".to_vec()),
        Expect::Refuse,
    ));
    let text = c.text.clone();
    for (what, file, bytes, expect) in variants {
        let dir = model_variant(c, file, bytes.as_deref());
        let mentions = [file, "model"];
        c.add(
            format!("model {what}: model info"),
            args(&[&"model", &"info", &dir]),
            // `model info` reads every weight too (the NaN check).
            expect,
            &mentions,
        );
        c.add(
            format!("model {what}: eval"),
            args(&[&"eval", &dir, &"--ppl", &text, &"--max-tokens", &"32"]),
            expect,
            &mentions,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Plans, experiments, studies, mergekit YAML

fn plan_cases(c: &mut Corpus) {
    let valid =
        "[plan]\ninsert = [{ after = 1, init = \"average\" }]\nprune = [3]\ntrain = \"new\"\n";
    let deep = format!(
        "[plan]\nprune = {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut variants: Vec<(String, Vec<u8>, Expect)> = vec![
        ("valid".into(), valid.into(), Expect::Survive),
        ("empty".into(), Vec::new(), Expect::Refuse),
        ("whitespace".into(), b"  \n\n\t\n".to_vec(), Expect::Refuse),
        (
            "not UTF-8".into(),
            b"[plan]\npreset = \"\xff\"\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "not TOML".into(),
            b"[plan\ninsert = ".to_vec(),
            Expect::Refuse,
        ),
        (
            "deeply nested arrays".into(),
            deep.into_bytes(),
            Expect::Refuse,
        ),
        (
            "unknown preset".into(),
            format!("[plan]\npreset = \"{PAYLOAD}x\"\n").into_bytes(),
            Expect::Refuse,
        ),
        (
            "unknown field".into(),
            b"[plan]\ninsrt = []\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "after out of range".into(),
            b"[plan]\ninsert = [{ after = 999 }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "after very negative".into(),
            b"[plan]\ninsert = [{ after = -99 }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "count a billion".into(),
            b"[plan]\ninsert = [{ after = 1, count = 1000000000 }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "count 2^62".into(),
            b"[plan]\ninsert = [{ after = 1, count = 4611686018427387904 }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "count negative".into(),
            b"[plan]\ninsert = [{ after = 1, count = -3 }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "count zero".into(),
            b"[plan]\ninsert = [{ after = 1, count = 0 }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "new_blocks a billion".into(),
            b"[plan]\npreset = \"slayer\"\nnew_blocks = 1000000000\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "prune everything twice".into(),
            b"[plan]\nprune = [0, 1, 2, 3, 0]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "prune out of range".into(),
            b"[plan]\nprune = [77]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "train out of range".into(),
            b"[plan]\ninsert = [{ after = 1 }]\ntrain = [40]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "nothing trains".into(),
            b"[plan]\ntrain = []\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "count a string".into(),
            b"[plan]\ninsert = [{ after = 1, count = \"x\" }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "integer overflow".into(),
            b"[plan]\nprune = [99999999999999999999999]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "source out of range".into(),
            b"[plan]\ninsert = [{ after = 1, init = \"copy\", source = 99 }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "scale NaN".into(),
            b"[plan]\ninsert = [{ after = 1, scale = { up_proj = nan } }]\n".to_vec(),
            Expect::Refuse,
        ),
        (
            "zero unknown tensor".into(),
            format!(
                "[plan]\ninsert = [{{ after = 1, zero = [\"{}\"] }}]\n",
                PAYLOAD.escape_default()
            )
            .into_bytes(),
            Expect::Refuse,
        ),
        (
            "base a hostile path".into(),
            format!(
                "[model]\nbase = \"/nonexistent/{}\"\n[plan]\npreset = \"none\"\n",
                PAYLOAD.escape_default()
            )
            .into_bytes(),
            Expect::Survive,
        ),
    ];
    for (at, b) in truncations(valid.as_bytes(), 10) {
        variants.push((format!("truncated at {at}"), b, Expect::Survive));
    }
    for (what, bytes, expect) in variants {
        let path = c.file("plan", "plan.toml", &bytes);
        let model = c.model.clone();
        c.add(
            format!("plan {what}: plan check"),
            args(&[&"plan", &"check", &path, &"--model", &model]),
            expect,
            &["plan.toml"],
        );
    }
    let good = c.file("plan", "good.toml", valid.as_bytes());
    for (what, bytes) in [
        ("not TOML", b"[plan".to_vec()),
        ("not UTF-8", b"\xff".to_vec()),
    ] {
        let path = c.file("plan", "plan.toml", &bytes);
        let model = c.model.clone();
        c.add(
            format!("plan {what}: plan diff"),
            args(&[&"plan", &"diff", &good, &path, &"--model", &model]),
            Expect::Refuse,
            &["plan.toml"],
        );
        c.add(
            format!("plan {what}: plan export"),
            args(&[
                &"plan",
                &"export",
                &path,
                &"--format",
                &"mergekit",
                &"--model",
                &model,
            ]),
            Expect::Refuse,
            &["plan.toml"],
        );
    }
}

fn experiment_text(c: &Corpus, train: &str, extra: &str) -> String {
    format!(
        "name = \"hostile\"\n[model]\nbase = \"{}\"\n[plan]\ninsert = [{{ after = 1 }}]\n\
         [data]\ntrain = \"{}\"\n[train]\nsteps = 1\nbatch_size = 1\nseq_len = 8\n{train}\n\
         [eval]\nmax_tokens = 16\nbefore = []\n{extra}",
        c.model.display(),
        c.text.display()
    )
}

fn experiment_cases(c: &mut Corpus) {
    let valid = experiment_text(c, "", "");
    let hostile = PAYLOAD.escape_default().to_string();
    let empty_dir = c.dir("corpus-dirs");
    let latin1_dir = c.dir("corpus-dirs");
    std::fs::write(
        latin1_dir.join("notes.txt"),
        b"caf\xe9 au lait\n\nna\xefve\n",
    )
    .unwrap();
    let mut variants: Vec<(String, String, Expect)> = vec![
        ("valid".into(), valid.clone(), Expect::Survive),
        (
            "steps 0".into(),
            experiment_text(c, "steps = 0", ""),
            Expect::Refuse,
        ),
        (
            "lr nan".into(),
            experiment_text(c, "lr = nan", ""),
            Expect::Refuse,
        ),
        (
            "lr inf".into(),
            experiment_text(c, "lr = inf", ""),
            Expect::Refuse,
        ),
        (
            "batch 10^12".into(),
            experiment_text(c, "", "").replace("batch_size = 1", "batch_size = 1000000000000"),
            Expect::Refuse,
        ),
        (
            "seq_len 10^9".into(),
            experiment_text(c, "", "").replace("seq_len = 8", "seq_len = 1000000000"),
            Expect::Refuse,
        ),
        (
            "seq_len past the context".into(),
            experiment_text(c, "", "").replace("seq_len = 8", "seq_len = 4096"),
            Expect::Refuse,
        ),
        (
            "grad_accum 10^9".into(),
            experiment_text(c, "grad_accum = 1000000000", ""),
            Expect::Refuse,
        ),
        (
            "warmup 2".into(),
            experiment_text(c, "warmup = 2.0", ""),
            Expect::Refuse,
        ),
        (
            "window 0".into(),
            experiment_text(c, "", "window = 0"),
            Expect::Refuse,
        ),
        (
            "max_tokens 0".into(),
            experiment_text(c, "", "").replace("max_tokens = 16", "max_tokens = 0"),
            Expect::Refuse,
        ),
        (
            "unknown field".into(),
            experiment_text(c, "stpes = 3", ""),
            Expect::Refuse,
        ),
        (
            "missing corpus with a hostile name".into(),
            valid.replace(
                &c.text.display().to_string(),
                &format!("/nonexistent/{hostile}.txt"),
            ),
            Expect::Refuse,
        ),
        // Directories the test owns: a shared one such as /tmp may hold text files of its own.
        (
            "corpus is an empty directory".into(),
            valid.replace(
                &c.text.display().to_string(),
                &empty_dir.display().to_string(),
            ),
            Expect::Refuse,
        ),
        (
            "corpus directory holds a non-UTF-8 file".into(),
            valid.replace(
                &c.text.display().to_string(),
                &latin1_dir.display().to_string(),
            ),
            Expect::Refuse,
        ),
        (
            "corpus is a device".into(),
            valid.replace(&c.text.display().to_string(), "/dev/zero"),
            Expect::Refuse,
        ),
        (
            "missing base with a hostile name".into(),
            valid.replace(
                &c.model.display().to_string(),
                &format!("/nonexistent/{hostile}"),
            ),
            Expect::Refuse,
        ),
        (
            "synth a billion entities".into(),
            experiment_text(c, "", "")
                .replace("[data]\n", "[data.synth]\nentities = 1000000000\n[data]\n"),
            Expect::Refuse,
        ),
        (
            "eval task missing".into(),
            experiment_text(
                c,
                "",
                &format!("tasks = [\"/nonexistent/{hostile}.jsonl\"]"),
            ),
            Expect::Refuse,
        ),
        (
            "eval ppl a directory".into(),
            experiment_text(c, "", &format!("ppl = [\"{}\"]", empty_dir.display())),
            Expect::Refuse,
        ),
        (
            "hostile name".into(),
            valid.replace(
                "name = \"hostile\"",
                &format!("name = \"{hostile}\"\nbroken = 1"),
            ),
            Expect::Refuse,
        ),
        (
            "train a number".into(),
            valid.replace(&format!("train = \"{}\"", c.text.display()), "train = 3"),
            Expect::Refuse,
        ),
        (
            "plan errors".into(),
            valid.replace("after = 1", "after = 99"),
            Expect::Refuse,
        ),
        ("empty".into(), String::new(), Expect::Refuse),
        (
            "17 sample prompts".into(),
            experiment_text(
                c,
                "",
                &format!("samples = [{}]", vec!["\"the\""; 17].join(", ")),
            ),
            Expect::Refuse,
        ),
        (
            "sample_tokens 10^9".into(),
            experiment_text(c, "", "sample_tokens = 1000000000"),
            Expect::Refuse,
        ),
        (
            "an empty sample prompt".into(),
            experiment_text(c, "", "samples = [\" \"]"),
            Expect::Refuse,
        ),
        (
            "a hostile sample prompt".into(),
            experiment_text(c, "", &format!("samples = [\"{hostile}\"]")),
            Expect::Survive,
        ),
    ];
    for (at, b) in truncations(valid.as_bytes(), 8) {
        variants.push((
            format!("truncated at {at}"),
            String::from_utf8_lossy(&b).into_owned(),
            Expect::Survive,
        ));
    }
    let mentions = [
        "exp.toml",
        "/nonexistent/",
        "/dev/zero",
        "corpus-dirs",
        "tiny-corpus",
        "tiny-model",
    ];
    for (what, text, expect) in variants {
        let path = c.file("experiment", "exp.toml", text.as_bytes());
        let home = path.parent().unwrap().join("home");
        c.add_in(
            &home,
            format!("experiment {what}: train"),
            args(&[&"train", &path]),
            expect,
            &mentions,
        );
        // The data preview reads the experiment and its corpus without training: what train
        // refuses later (a context too short) it may show, so any clean ending will do.
        c.add_in(
            &home,
            format!("experiment {what}: data preview"),
            args(&[&"data", &"preview", &path]),
            Expect::Survive,
            &mentions,
        );
    }
    // The `[slurm]` table, read only when launching with `--on slurm`: every bad value is
    // refused naming the file before sbatch is run or a run directory exists.
    let slurm_variants: Vec<(&str, String)> = vec![
        ("a hostile partition", format!("partition = \"{hostile}\"")),
        ("a partition with a newline", "partition = \"a\\nb\"".into()),
        (
            "an extra line that is no option",
            "extra = [\"rm -rf /\"]".into(),
        ),
        (
            "a hostile extra line",
            format!("extra = [\"--x={hostile}\"]"),
        ),
        ("cpus -1", "cpus = -1".into()),
        ("cpus 0", "cpus = 0".into()),
        ("warning_secs 10^9", "warning_secs = 1000000000".into()),
        ("an unknown key", "nodes = 4".into()),
        ("a table for a string", "partition = { a = 1 }".into()),
    ];
    for (what, line) in slurm_variants {
        let text = experiment_text(c, "", &format!("\n[slurm]\n{line}\n"));
        let path = c.file("experiment", "exp.toml", text.as_bytes());
        let home = path.parent().unwrap().join("home");
        c.add_in(
            &home,
            format!("experiment [slurm] {what}: train --on slurm"),
            args(&[&"train", &path, &"--on", &"slurm"]),
            Expect::Refuse,
            &["exp.toml"],
        );
    }
    let path = c.file("experiment", "exp.toml", b"\xff\xfe[plan]");
    c.add(
        "experiment not UTF-8: train".into(),
        args(&[&"train", &path]),
        Expect::Refuse,
        &["exp.toml"],
    );
}

fn study_cases(c: &mut Corpus) {
    let base = format!(
        "name = \"s\"\nseeds = [1]\n[base]\n[base.model]\nbase = \"{}\"\n[base.data]\ntrain = \"{}\"\n\
         [base.train]\nsteps = 1\nbatch_size = 1\nseq_len = 8\n[[strategy]]\nname = \"a\"\n[strategy.plan]\npreset = \"none\"\n",
        c.model.display(),
        c.text.display()
    );
    let seeds: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    let many_seeds = base.replace("seeds = [1]", &format!("seeds = [{}]", seeds.join(", ")));
    let hostile = PAYLOAD.escape_default().to_string();
    let mut variants: Vec<(String, String, Expect)> = vec![
        ("valid".into(), base.clone(), Expect::Survive),
        ("empty".into(), String::new(), Expect::Refuse),
        ("not TOML".into(), "name = ".into(), Expect::Refuse),
        (
            "no strategy".into(),
            base.split("[[strategy]]").next().unwrap().to_string(),
            Expect::Refuse,
        ),
        (
            "no seeds".into(),
            base.replace("seeds = [1]", "seeds = []"),
            Expect::Refuse,
        ),
        ("20000 seeds".into(), many_seeds, Expect::Refuse),
        (
            "hostile strategy name".into(),
            base.replace("name = \"a\"", &format!("name = \"{hostile}\"")),
            Expect::Refuse,
        ),
        (
            "strategy with a bad plan".into(),
            base.replace("preset = \"none\"", "preset = \"nope\""),
            Expect::Survive,
        ),
        (
            "unknown scale key".into(),
            format!("{base}[scale.gpu]\nbogus = 1\n"),
            Expect::Refuse,
        ),
        (
            "seeds a string".into(),
            base.replace("seeds = [1]", "seeds = \"x\""),
            Expect::Refuse,
        ),
        (
            "steps 0".into(),
            base.replace("steps = 1", "steps = 0"),
            Expect::Refuse,
        ),
    ];
    for (at, b) in truncations(base.as_bytes(), 6) {
        variants.push((
            format!("truncated at {at}"),
            String::from_utf8_lossy(&b).into_owned(),
            Expect::Survive,
        ));
    }
    for (what, text, expect) in variants {
        let path = c.file("study", "study.toml", text.as_bytes());
        c.add(
            format!("study {what}: study show"),
            args(&[&"study", &"show", &path]),
            expect,
            &["study.toml"],
        );
    }
    // `study run` resolves every cell's plan before it queues anything.
    let bad_plan = base.replace("preset = \"none\"", "preset = \"nope\"");
    let path = c.file("study", "study.toml", bad_plan.as_bytes());
    let home = path.parent().unwrap().join("home");
    c.add_in(
        &home,
        "study strategy with a bad plan: study run".into(),
        args(&[&"study", &"run", &path]),
        Expect::Refuse,
        &["study.toml"],
    );
    let path = c.file("study", "study.toml", b"name = \"\xff\"");
    c.add(
        "study not UTF-8: study run".into(),
        args(&[&"study", &"run", &path]),
        Expect::Refuse,
        &["study.toml"],
    ); // A study's cell → run map, read by `runs compare --study`.
    let huge = vec![b' '; 17 << 20];
    for (what, bytes, expect) in [
        (
            "valid",
            br#"{"c-s-s0": "no-such-run"}"#.to_vec(),
            Expect::Survive,
        ),
        ("not JSON", b"{cells".to_vec(), Expect::Refuse),
        ("a list", b"[\"a\", \"b\"]".to_vec(), Expect::Refuse),
        ("not UTF-8", b"{\"\xff\": \"x\"}".to_vec(), Expect::Refuse),
        ("empty", Vec::new(), Expect::Refuse),
        ("17 MiB", huge.clone(), Expect::Refuse),
    ] {
        let home = c.dir("study").join("home");
        let dir = home.join("studies").join("s");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cells.json"), bytes).unwrap();
        c.add_in(
            &home,
            format!("study cell map {what}: runs compare --study"),
            args(&[&"runs", &"compare", &"--study", &"s"]),
            expect,
            &["cells.json"],
        );
    }
}

fn mergekit_cases(c: &mut Corpus) {
    let slice = |a: &str, b: &str| {
        format!(
            "slices:\n  - sources:\n      - model: m\n        layer_range: [{a}, {b}]\nmerge_method: passthrough\n"
        )
    };
    let mut bomb = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for i in 1..10 {
        let (name, p) = ((b'a' + i) as char, (b'a' + i - 1) as char);
        let _ = writeln!(
            bomb,
            "{name}: &{name} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]"
        );
    }
    bomb.push_str("slices: *j\n");
    let many: String = std::iter::once("slices:\n".to_string())
        .chain((0..20_000).map(|_| {
            "  - sources:\n      - model: m\n        layer_range: [0, 4000]\n".to_string()
        }))
        .collect();
    let variants: Vec<(String, String, Expect)> = vec![
        ("valid".into(), slice("0", "4"), Expect::Survive),
        (
            "range 10^11".into(),
            slice("0", "99999999999"),
            Expect::Refuse,
        ),
        (
            "range i64::MAX".into(),
            slice("0", "9223372036854775807"),
            Expect::Refuse,
        ),
        (
            "range past i64".into(),
            slice("0", "99999999999999999999"),
            Expect::Refuse,
        ),
        ("negative range".into(), slice("-5", "2"), Expect::Refuse),
        ("reversed range".into(), slice("3", "1"), Expect::Refuse),
        ("range of floats".into(), slice("0.5", "2"), Expect::Refuse),
        ("20000 slices of 4000 layers".into(), many, Expect::Refuse),
        ("billion laughs".into(), bomb, Expect::Refuse),
        (
            "no slices".into(),
            "merge_method: passthrough\n".into(),
            Expect::Refuse,
        ),
        (
            "slices not a list".into(),
            "slices: 3\n".into(),
            Expect::Refuse,
        ),
        (
            "another merge method".into(),
            slice("0", "2").replace("passthrough", "slerp"),
            Expect::Refuse,
        ),
        (
            "two models".into(),
            format!(
                "{}  - sources:\n      - model: other\n        layer_range: [0, 2]\n",
                slice("0", "2").replace("merge_method: passthrough\n", "")
            ),
            Expect::Refuse,
        ),
        (
            "hostile model name".into(),
            slice("0", "2").replace(
                "model: m",
                &format!("model: \"{}\"", PAYLOAD.escape_default()),
            ),
            Expect::Survive,
        ),
        (
            "scale 0.5".into(),
            slice("0", "2").replace(
                "layer_range: [0, 2]",
                "layer_range: [0, 2]\n        parameters:\n          scale: 0.5",
            ),
            Expect::Refuse,
        ),
        ("not YAML".into(), "slices: [\n".into(), Expect::Refuse),
        (
            "deep nesting".into(),
            format!("slices: {}{}\n", "[".repeat(5_000), "]".repeat(5_000)),
            Expect::Refuse,
        ),
        (
            "tabs".into(),
            "slices:\n\t- sources: []\n".into(),
            Expect::Refuse,
        ),
        ("empty".into(), String::new(), Expect::Refuse),
    ];
    for (what, text, expect) in variants {
        let path = c.file("mergekit", "merge.yml", text.as_bytes());
        c.add(
            format!("mergekit {what}: plan import"),
            args(&[&"plan", &"import", &path]),
            expect,
            &["merge.yml"],
        );
        let model = c.model.clone();
        c.add(
            format!("mergekit {what}: plan import --model"),
            args(&[&"plan", &"import", &path, &"--model", &model]),
            expect,
            &["merge.yml"],
        );
    }
    let path = c.file("mergekit", "merge.yml", b"slices: \xff\n");
    c.add(
        "mergekit not UTF-8: plan import".into(),
        args(&[&"plan", &"import", &path]),
        Expect::Refuse,
        &["merge.yml"],
    );
}

// ---------------------------------------------------------------------------------------------
// Corpora and task files

fn corpus_cases(c: &mut Corpus) {
    let model = c.model.clone();
    let mut variants: Vec<(String, Vec<u8>, Expect)> = vec![
        ("empty".into(), Vec::new(), Expect::Refuse),
        ("whitespace".into(), b" \n \n".to_vec(), Expect::Refuse),
        (
            "not UTF-8".into(),
            b"the cat \xff\xfe sat".to_vec(),
            Expect::Refuse,
        ),
        ("NUL bytes".into(), vec![0; 4096], Expect::Survive),
        (
            "escape sequences".into(),
            format!("the cat {PAYLOAD} sat on the mat . ")
                .repeat(50)
                .into_bytes(),
            Expect::Survive,
        ),
        (
            "one 9 MB line".into(),
            "the cat sat ".repeat(750_000).into_bytes(),
            Expect::Survive,
        ),
        // 4.7 million tokens in 9 MB: the densest text the tiny tokenizer has.
        (
            "4.7 million one-letter words".into(),
            "a ".repeat(4_700_000).into_bytes(),
            Expect::Survive,
        ),
        ("too short".into(), b"cat".to_vec(), Expect::Survive),
    ];
    let valid = std::fs::read(&c.text).unwrap();
    for (at, b) in flips(&valid, 4) {
        variants.push((format!("byte {at} changed"), b, Expect::Survive));
    }
    for (what, bytes, expect) in variants {
        let path = c.file("corpus", "corpus.txt", &bytes);
        c.add(
            format!("corpus {what}: eval --ppl"),
            args(&[&"eval", &model, &"--ppl", &path, &"--max-tokens", &"64"]),
            expect,
            &["corpus.txt"],
        );
        c.add(
            format!("corpus {what}: importance"),
            args(&[
                &"importance",
                &model,
                &"--corpus",
                &path,
                &"--samples",
                &"2",
                &"--seq-len",
                &"8",
            ]),
            expect,
            &["corpus.txt"],
        );
    }
    let empty_dir = c.dir("corpus-dirs").display().to_string();
    for (what, path) in [
        ("missing", "/nonexistent/corpus.txt"),
        ("an empty directory", empty_dir.as_str()),
        ("a device", "/dev/zero"),
    ] {
        c.add(
            format!("corpus {what}: eval --ppl"),
            args(&[&"eval", &model, &"--ppl", &path]),
            Expect::Refuse,
            &[path],
        );
    }
    let item = |ctx: &str| {
        format!("{{\"context\": \"{ctx}\", \"choices\": [\" cat\", \" dog\"], \"gold\": 0}}\n")
    };
    let long_context = "the cat sat on the mat ".repeat(4000);
    let tasks: Vec<(&str, String, Expect)> = vec![
        ("valid", item("the"), Expect::Survive),
        (
            "not JSON on line 2",
            format!("{}{{\"context\": \n", item("the")),
            Expect::Refuse,
        ),
        (
            "gold out of range",
            "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 9}\n".into(),
            Expect::Refuse,
        ),
        (
            "one choice",
            "{\"context\": \"a\", \"choices\": [\"x\"], \"gold\": 0}\n".into(),
            Expect::Refuse,
        ),
        (
            "extra field",
            "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0, \"x\": 1}\n".into(),
            Expect::Refuse,
        ),
        (
            "gold negative",
            "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": -1}\n".into(),
            Expect::Refuse,
        ),
        (
            "a 24000-token line",
            format!("{}{}", item("the"), item(&long_context)),
            Expect::Refuse,
        ),
        ("empty", String::new(), Expect::Refuse),
        ("blank lines only", "\n\n\n".into(), Expect::Refuse),
        (
            "hostile context",
            item(&PAYLOAD.escape_default().to_string()),
            Expect::Survive,
        ),
    ];
    for (what, text, expect) in tasks {
        let path = c.file("task", "task.jsonl", text.as_bytes());
        c.add(
            format!("task {what}: eval --task"),
            args(&[&"eval", &model, &"--task", &path]),
            expect,
            &["task.jsonl"],
        );
    }
    let path = c.file("task", "task.jsonl", b"{\"context\": \"\xff\"}\n");
    c.add(
        "task not UTF-8: eval --task".into(),
        args(&[&"eval", &model, &"--task", &path]),
        Expect::Refuse,
        &["task.jsonl"],
    );
}

// ---------------------------------------------------------------------------------------------
// Event logs and run directories

fn event(seq: u64, kind: &serde_json::Value) -> String {
    let mut v = serde_json::json!({ "seq": seq, "time": 1.0e9 + seq as f64 });
    v.as_object_mut()
        .unwrap()
        .extend(kind.as_object().unwrap().clone());
    format!("{v}\n")
}

/// The lines of a finished two-step run, as the worker writes them.
fn finished_log(experiment_name: &str) -> Vec<String> {
    let step = |s: u64| {
        serde_json::json!({ "type": "step", "step": s, "loss": 2.5, "lr": 0.001, "tokens": 16 * s,
            "tokens_per_sec": 100.0, "grad_norm": 1.0, "clipped": false, "blocks": [] })
    };
    vec![
        event(
            0,
            &serde_json::json!({ "type": "run_start", "run": "r", "experiment": format!("name = \"{experiment_name}\"\n"),
            "plan": null, "config": null, "trainable_params": 10, "total_steps": 2, "resumed_from": null, "environment": null }),
        ),
        event(1, &step(1)),
        event(2, &step(2)),
        event(
            3,
            &serde_json::json!({ "type": "end", "status": "finished", "step": 2, "message": "finished" }),
        ),
    ]
}

fn event_log_cases(c: &mut Corpus) {
    // The event format, as the engine writes it: checked, so the cases below start from a log
    // the readers accept.
    let probe = slayer::core::events::Event {
        seq: 0,
        time: 0.0,
        kind: slayer::core::events::EventKind::End {
            status: slayer::core::events::RunStatus::Finished,
            step: 2,
            message: String::new(),
        },
    };
    let written = serde_json::to_value(&probe).unwrap();
    assert_eq!(
        written["type"], "end",
        "the event format changed: {written}"
    );
    let good = finished_log("h");
    let hostile_name = PAYLOAD.escape_default().to_string();
    let mut variants: Vec<(String, String, Expect)> = vec![
        ("valid".into(), good.concat(), Expect::Survive),
        (
            "garbage in the middle".into(),
            [
                good[..2].concat(),
                "}}not json{{\n".into(),
                good[2..].concat(),
            ]
            .concat(),
            Expect::Tolerate,
        ),
        (
            "a line of U+FFFD".into(),
            [good[..2].concat(), "\u{fffd}".into(), good[2..].concat()].concat(),
            Expect::Tolerate,
        ),
        (
            "wrong field types".into(),
            [
                good[..2].concat(),
                event(9, &serde_json::json!({"type": "step", "step": "two"})),
                good[2..].concat(),
            ]
            .concat(),
            Expect::Tolerate,
        ),
        (
            "unknown event kind".into(),
            [
                good.concat(),
                event(9, &serde_json::json!({"type": "teleport"})),
            ]
            .concat(),
            Expect::Tolerate,
        ),
        (
            "torn last line".into(),
            format!("{}{{\"seq\":4,\"ti", good.concat()),
            Expect::Survive,
        ),
        (
            "a 5 MB line".into(),
            [
                good[..2].concat(),
                "x".repeat(5 << 20),
                "\n".into(),
                good[2..].concat(),
            ]
            .concat(),
            Expect::Tolerate,
        ),
        (
            "hostile experiment name".into(),
            finished_log(&hostile_name).concat(),
            Expect::Survive,
        ),
        (
            "hostile warning".into(),
            [
                good.concat(),
                event(
                    9,
                    &serde_json::json!({"type": "warning", "message": PAYLOAD}),
                ),
            ]
            .concat(),
            Expect::Survive,
        ),
        (
            "sequence numbers going back".into(),
            [good.concat(), good[1].clone()].concat(),
            Expect::Survive,
        ),
        ("empty".into(), String::new(), Expect::Survive),
        ("only garbage".into(), "x\ny\nz\n".into(), Expect::Tolerate),
        (
            "a start whose plan is not a layer map".into(),
            [
                event(
                    0,
                    &serde_json::json!({ "type": "run_start", "run": "r", "experiment": "name = \"p\"\n",
                    "plan": {"layers": 5}, "config": "fast", "trainable_params": 10, "total_steps": 2,
                    "resumed_from": null, "environment": [] }),
                ),
                good[1..].concat(),
            ]
            .concat(),
            Expect::Tolerate,
        ),
        (
            "a start from a newer slayer".into(),
            [
                event(
                    0,
                    &serde_json::json!({ "type": "run_start", "format": 99, "run": "r",
                    "experiment": "name = \"n\"\n", "plan": null, "config": null,
                    "trainable_params": 10, "total_steps": 2, "resumed_from": null,
                    "environment": null }),
                ),
                good[1..].concat(),
            ]
            .concat(),
            Expect::Survive,
        ),
        (
            "a start with a hostile experiment text".into(),
            [
                event(
                    0,
                    &serde_json::json!({ "type": "run_start", "run": "r", "experiment": PAYLOAD,
                    "plan": null, "config": null, "trainable_params": 10, "total_steps": 2,
                    "resumed_from": 7, "environment": null }),
                ),
                good[1..].concat(),
            ]
            .concat(),
            Expect::Survive,
        ),
    ];
    let mut raw = good.concat().into_bytes();
    raw.splice(40..40, [b'\xff', b'\n']);
    let non_utf8 = String::from_utf8_lossy(&raw).into_owned();
    variants.push(("invalid UTF-8 bytes".into(), non_utf8, Expect::Tolerate));
    for (i, (what, log, expect)) in variants.into_iter().enumerate() {
        let home = c.dir("events").join("home");
        let id = format!("20261201-000000-case{i}");
        let run = home.join("runs").join(&id);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("experiment.toml"),
            format!("name = \"{}\"\n", what.replace('"', "")),
        )
        .unwrap();
        let bytes = if what == "invalid UTF-8 bytes" {
            raw.clone()
        } else {
            log.into_bytes()
        };
        std::fs::write(run.join("events.jsonl"), bytes).unwrap();
        let mentions = ["events.jsonl"];
        let id_arg = id.clone();
        for (cmd, a) in [
            ("runs ls", vec!["runs", "ls"]),
            ("runs show", vec!["runs", "show", &id_arg]),
            ("runs export", vec!["runs", "export", &id_arg]),
            (
                "runs export json",
                vec!["runs", "export", &id_arg, "--format", "json"],
            ),
            ("runs tail", vec!["runs", "tail", &id_arg]),
            ("runs compare", vec!["runs", "compare"]),
            ("store rebuild", vec!["store", "rebuild"]),
            ("store status", vec!["store", "status"]),
            ("store lineage", vec!["store", "lineage", &id_arg]),
        ] {
            // `runs ls` reports a skipped line in the run's row; the store names it in its
            // warning; both stay on exit 0. (`runs compare` warns on stderr, as `runs show`.)
            let expect = match (expect, cmd) {
                // A run with nothing indexable has no lineage: a refusal naming the run.
                (Expect::Tolerate, "runs ls" | "store rebuild" | "store status")
                | (_, "store lineage") => Expect::Survive,
                (e, _) => e,
            };
            let argv: Vec<&dyn AsRef<std::ffi::OsStr>> =
                a.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>).collect();
            c.add_in(
                &home,
                format!("event log {what}: {cmd}"),
                args(&argv),
                expect,
                &mentions,
            );
        }
    }
    // Run ids are names: paths, `..`, links and hostile bytes are refused by every command.
    let home = c.dir("events").join("home");
    std::fs::create_dir_all(home.join("runs")).unwrap();
    let outside = c.dir("events").join("precious");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("experiment.toml"), "name = \"x\"\n").unwrap();
    std::fs::write(outside.join("thesis.tex"), "years of work").unwrap();
    std::os::unix::fs::symlink(&outside, home.join("runs").join("link")).unwrap();
    let outside_s = outside.display().to_string();
    let up = format!("../../{}", name_of(&outside));
    let hostile_id = format!("x{PAYLOAD}");
    for id in [
        outside_s.as_str(),
        up.as_str(),
        "link",
        "..",
        ".",
        "",
        "a/b",
        &hostile_id,
    ] {
        for cmd in [
            "show", "rm", "export", "resume", "tail", "stop", "kill", "diff",
        ] {
            let mut argv = args(&[&"runs", &cmd, &id]);
            if cmd == "rm" {
                argv.push("--yes".into());
            }
            if cmd == "diff" {
                argv.push(id.into());
            }
            c.add_in(
                &home,
                format!("run id {:?}: runs {cmd}", id.replace('\u{1b}', "ESC")),
                argv,
                Expect::Refuse,
                &["run"],
            );
        }
    }
    c.guarded.push(outside.join("thesis.tex"));
    c.guarded.push(outside.join("experiment.toml"));
}

// ---------------------------------------------------------------------------------------------
// The console's own files: keymap.toml and themes, read when it opens (in a pseudo-terminal)

fn console_cases(c: &mut Corpus) -> Vec<(String, PathBuf, String)> {
    let hostile = PAYLOAD.escape_default().to_string();
    let mut out = Vec::new();
    let files: Vec<(&str, &str, Vec<u8>)> = vec![
        ("keymap not TOML", "keymap.toml", b"[keys\n".to_vec()),
        (
            "keymap not UTF-8",
            "keymap.toml",
            b"[keys]\n\"\xff\" = \"quit\"\n".to_vec(),
        ),
        (
            "keymap unknown action",
            "keymap.toml",
            format!("[keys]\n\"x\" = \"{hostile}\"\n").into_bytes(),
        ),
        (
            "keymap unknown key",
            "keymap.toml",
            format!("[keys]\n\"{hostile}\" = \"help\"\n").into_bytes(),
        ),
        (
            "keymap unknown context",
            "keymap.toml",
            b"[nowhere]\n\"x\" = \"help\"\n".to_vec(),
        ),
        ("keymap a directory", "keymap.toml", Vec::new()),
        ("theme not TOML", "themes/bad.toml", b"name = \n".to_vec()),
        (
            "theme not UTF-8",
            "themes/bad.toml",
            b"name = \"\xff\"\n".to_vec(),
        ),
        (
            "theme unknown colour",
            "themes/bad.toml",
            format!("name = \"bad\"\n[colors]\ntext = \"{hostile}\"\n").into_bytes(),
        ),
        (
            "theme hostile name",
            "themes/bad.toml",
            format!("name = \"{hostile}\"\n").into_bytes(),
        ),
        (
            "theme unknown role",
            "themes/bad.toml",
            b"name = \"bad\"\n[colors]\nnope = \"red\"\n".to_vec(),
        ),
    ];
    for (what, file, bytes) in files {
        let home = c.dir("console").join("home");
        std::fs::create_dir_all(home.join("experiments")).unwrap();
        std::fs::create_dir_all(home.join("themes")).unwrap();
        // An experiment, so the console opens on it rather than fetching the demo model.
        std::fs::write(home.join("experiments/e.toml"), experiment_text(c, "", "")).unwrap();
        if what == "keymap a directory" {
            std::fs::create_dir_all(home.join(file)).unwrap();
        } else {
            std::fs::write(home.join(file), bytes).unwrap();
        }
        out.push((what.to_string(), home, name_of(Path::new(file))));
    }
    out
}

/// Opens the console in a pseudo-terminal (120×30) on `home`, waits for it to show `mention`
/// (the file it could not use), quits with `q`; returns what is wrong, if anything.
fn run_console(home: &Path, mention: &str) -> Option<String> {
    use std::io::Write as _;
    let (mut child, mut master) = common::spawn_in_pty(
        Command::new(env!("CARGO_BIN_EXE_slayer"))
            .args(["--device", "cpu"])
            .env("SLAYER_HOME", home)
            .env("NO_COLOR", "1"),
        30,
        120,
    );
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let shown = |screen: &[u8]| {
        screen
            .windows(mention.len())
            .any(|w| w == mention.as_bytes())
    };
    let mut screen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shown(&screen) && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(50)) {
            screen.extend(chunk);
        }
    }
    let named = shown(&screen);
    let _ = master.write_all(b"q");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        while let Ok(chunk) = rx.try_recv() {
            screen.extend(chunk);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !named {
        return Some(format!(
            "the console never named {mention}; it showed: {}",
            String::from_utf8_lossy(&screen).escape_debug()
        ));
    }
    if screen.windows(9).any(|w| w == b"\x1b]0;pwned") {
        return Some("the hostile sequence reached the terminal raw".into());
    }
    match status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("the console ended with {s}")),
        None => Some("the console did not leave on q".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Chat transcripts and queue marks in the data directory

/// Transcripts (`chats/*.json`, read by the store and the console) and a run's queue mark
/// (`runs/<id>/queued`, read by the queue): files a person may edit, or a crash may cut.
fn transcript_and_queue_cases(c: &mut Corpus) {
    let valid = serde_json::json!({ "id": "t", "started": 1.0, "models": [], "system": null,
        "sampling": {}, "turns": [] })
    .to_string();
    let transcripts: Vec<(&str, Vec<u8>)> = vec![
        ("valid", valid.clone().into_bytes()),
        ("empty", Vec::new()),
        ("garbage", b"{{not json".to_vec()),
        ("not UTF-8", b"{\"id\": \"\xff\"}".to_vec()),
        ("cut in half", valid.as_bytes()[..valid.len() / 2].to_vec()),
        (
            "sampling of the wrong type",
            valid
                .replace("\"sampling\":{}", "\"sampling\":\"hot\"")
                .into_bytes(),
        ),
        (
            "a hostile id and model",
            serde_json::json!({ "id": PAYLOAD, "started": 1.0, "system": PAYLOAD,
                "models": [{ "label": PAYLOAD, "path": PAYLOAD, "run": "../../x" }],
                "sampling": {}, "turns": [] })
            .to_string()
            .into_bytes(),
        ),
    ];
    for (what, bytes) in transcripts {
        let home = c.dir("chats").join("home");
        std::fs::create_dir_all(home.join("chats")).unwrap();
        std::fs::write(home.join("chats/bad.json"), &bytes).unwrap();
        let expect = match what {
            "valid" | "a hostile id and model" => Expect::Survive,
            _ => Expect::Tolerate,
        };
        for cmd in [
            vec!["store", "status"],
            vec!["store", "rebuild"],
            vec!["store", "sync"],
        ] {
            let argv: Vec<&dyn AsRef<std::ffi::OsStr>> = cmd
                .iter()
                .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
                .collect();
            c.add_in(
                &home,
                format!("transcript {what}: {}", cmd.join(" ")),
                args(&argv),
                expect,
                &["bad.json"],
            );
        }
    }
    // A transcript larger than any chat (sparse: no disk) is refused by its size, not read.
    let home = c.dir("chats").join("home");
    std::fs::create_dir_all(home.join("chats")).unwrap();
    std::fs::File::create(home.join("chats/bad.json"))
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    c.add_in(
        &home,
        "transcript of 65 MiB: store status".into(),
        args(&[&"store", &"status"]),
        Expect::Tolerate,
        &["bad.json"],
    );
    // Queue marks: a hostile device name, a huge one, not UTF-8, beside a finished run. (The
    // queue's own reading of them, which fails such a run naming the file, is
    // `tests/runs.rs::a_queued_run_for_an_unknown_device_fails_naming_the_file`.)
    let marks: Vec<(&str, Vec<u8>)> = vec![
        ("a hostile device", PAYLOAD.as_bytes().to_vec()),
        ("not UTF-8", b"\xff\xfe".to_vec()),
        (
            "a device name a megabyte long",
            "cuda".repeat(1 << 18).into_bytes(),
        ),
    ];
    for (what, bytes) in marks {
        let home = c.dir("queue").join("home");
        let run = home.join("runs/20261201-000000-odd");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("experiment.toml"), "name = \"odd\"\n").unwrap();
        std::fs::write(run.join("queued"), &bytes).unwrap();
        let other = home.join("runs/20261201-000001-other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("events.jsonl"), finished_log("other").concat()).unwrap();
        std::fs::write(other.join("experiment.toml"), "name = \"other\"\n").unwrap();
        c.add_in(
            &home,
            format!("queue mark {what}: runs ls"),
            args(&[&"runs", &"ls"]),
            Expect::Survive,
            &["queued"],
        );
        c.add_in(
            &home,
            format!("queue mark {what}: runs show"),
            args(&[&"runs", &"show", &"20261201-000000-odd"]),
            Expect::Survive,
            &["queued", "odd"],
        );
    }
    // A run's Slurm records (`slurm/job`, `slurm/started`): a hostile, huge or non-UTF-8 job id
    // is no job (the run reads as local); Slurm is not asked about it.
    let records: Vec<(&str, Vec<u8>)> = vec![
        ("a hostile job id", PAYLOAD.as_bytes().to_vec()),
        ("not UTF-8", b"\xff\xfe".to_vec()),
        ("a job id a megabyte long", "9".repeat(1 << 20).into_bytes()),
    ];
    for (what, bytes) in records {
        let home = c.dir("slurm-records").join("home");
        let run = home.join("runs/20261201-000000-odd");
        std::fs::create_dir_all(run.join("slurm")).unwrap();
        std::fs::write(run.join("events.jsonl"), finished_log("odd").concat()).unwrap();
        std::fs::write(run.join("experiment.toml"), "name = \"odd\"\n").unwrap();
        std::fs::write(run.join("slurm/job"), &bytes).unwrap();
        std::fs::write(run.join("slurm/started"), &bytes).unwrap();
        for command in ["ls", "show"] {
            let mut a = args(&[&"runs", &command]);
            if command == "show" {
                a.push("20261201-000000-odd".into());
            }
            c.add_in(
                &home,
                format!("slurm record {what}: runs {command}"),
                a,
                Expect::Survive,
                &["odd"],
            );
        }
    }
}

#[test]
fn every_reader_survives_hostile_input() {
    let root = tempfile::tempdir().unwrap();
    // SLAYER_HOSTILE_KEEP=1 keeps the generated inputs for a look at a failing case.
    let root_path = if std::env::var_os("SLAYER_HOSTILE_KEEP").is_some() {
        let kept = root.keep();
        eprintln!("hostile inputs kept in {}", kept.display());
        kept
    } else {
        root.path().to_path_buf()
    };
    let mut c = Corpus::new(&root_path);
    gguf_cases(&mut c);
    model_cases(&mut c);
    plan_cases(&mut c);
    experiment_cases(&mut c);
    study_cases(&mut c);
    mergekit_cases(&mut c);
    corpus_cases(&mut c);
    event_log_cases(&mut c);
    transcript_and_queue_cases(&mut c);
    let console = console_cases(&mut c);
    let mut failures = Vec::new();
    let (mut worst, mut worst_case) = (children_peak_rss(), String::from("(before the suite)"));
    let started = Instant::now();
    let mut timings = Vec::new();
    for case in &c.cases {
        for input in &case.inputs {
            let len = std::fs::metadata(input).unwrap().len();
            assert!(len < MAX_INPUT_BYTES, "{}: input of {len} bytes", case.name);
        }
        let case_started = Instant::now();
        let outcome = run(case);
        timings.push((case_started.elapsed(), case.name.clone()));
        if std::env::var_os("SLAYER_HOSTILE_VERBOSE").is_some() {
            eprintln!(
                "{:>6.2} s  {}",
                case_started.elapsed().as_secs_f64(),
                case.name
            );
        }
        let peak = children_peak_rss();
        if peak > worst {
            worst = peak;
            worst_case.clone_from(&case.name);
        }
        if peak > MAX_PEAK_RSS_BYTES {
            failures.push(format!("{}: peak memory {} MiB", case.name, peak >> 20));
        }
        if let Some(problem) = check(case, &outcome) {
            failures.push(format!(
                "{}: {problem}\n  args: {:?}\n  exit: {:?}\n  stderr: {}",
                case.name,
                case.args,
                outcome.code,
                String::from_utf8_lossy(&outcome.stderr)
                    .chars()
                    .take(600)
                    .collect::<String>()
                    .escape_debug()
            ));
        }
    }
    for (what, home, mention) in &console {
        if let Some(problem) = run_console(home, mention) {
            failures.push(format!("console {what}: {problem}"));
        }
        let peak = children_peak_rss();
        if peak > worst {
            worst = peak;
            worst_case = format!("console {what}");
        }
    }
    timings.sort();
    for (t, name) in timings.iter().rev().take(12) {
        eprintln!("  slowest: {:>6.2} s  {name}", t.as_secs_f64());
    }
    for path in &c.guarded {
        if !path.is_file() {
            failures.push(format!("{} was removed", path.display()));
        }
    }
    let mut groups: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for case in &c.cases {
        let group = case.name.split([' ', ':']).next().unwrap_or_default();
        *groups.entry(group).or_default() += 1;
    }
    groups.insert("console", console.len());
    eprintln!("  cases by reader: {groups:?}");
    let total = c.cases.len() + console.len();
    eprintln!(
        "hostile inputs: {total} cases in {:.0} s, {} failed; largest peak resident memory {} MiB ({worst_case})",
        started.elapsed().as_secs_f64(),
        failures.len(),
        worst >> 20
    );
    assert!(
        total >= 300,
        "the suite should hold at least 300 cases, it has {total}"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
