//! Plans, surgery and importance on tiny random models, and the plan commands' output for every
//! diagnostic class (fixtures in tests/fixtures/plans, snapshots in tests/snapshots).

#![allow(
    clippy::unwrap_used,
    clippy::float_cmp,
    reason = "tests: a panic is the failure report; exact float equality is the point"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use slayer::core::checkpoint::hf::save_model;
use slayer::core::checkpoint::{HfDir, SaveOptions, WeightSource, load_model};
use slayer::core::config::LlamaConfig;
use slayer::core::importance::{self, Metric};
use slayer::core::model::Llama;
use slayer::core::model::random::{llama, tiny_config};
use slayer::core::plan::{self, Init, LayerMap, Origin};
use slayer::core::surgery;

fn config(layers: usize) -> LlamaConfig {
    LlamaConfig {
        num_hidden_layers: layers,
        ..tiny_config()
    }
}

/// A saved tiny model of `layers` blocks, shared per depth within this test binary.
fn tiny_dir(layers: usize) -> PathBuf {
    static DIRS: OnceLock<std::sync::Mutex<std::collections::HashMap<usize, PathBuf>>> =
        OnceLock::new();
    let dirs = DIRS.get_or_init(Default::default);
    let mut dirs = dirs.lock().unwrap();
    dirs.entry(layers)
        .or_insert_with(|| {
            let root =
                std::env::temp_dir().join(format!("slayer-plans-test-{}", std::process::id()));
            let dir = root.join(format!("tiny{layers}"));
            let model = llama(
                &config(layers),
                10 + layers as u64,
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            save_model(&model, None, None, None, &dir, &SaveOptions::default()).unwrap();
            dir
        })
        .clone()
}

fn resolve(text: &str, layers: usize) -> LayerMap {
    let r = plan::resolve(&plan::parse(text).unwrap().plan, layers);
    assert!(!r.has_errors(), "{:?}", r.diagnostics);
    r.map.unwrap()
}

fn ids(len: usize) -> Tensor {
    let v: Vec<u32> = (0..len as u32).map(|i| (i * 53 + 7) % 256).collect();
    Tensor::from_vec(v, (1, len), &Device::Cpu).unwrap()
}

fn expand_to(base: &Path, map: &LayerMap, out: &Path) -> HfDir {
    let source = HfDir::open(base).unwrap();
    surgery::expand(
        &source,
        map,
        out,
        &SaveOptions::default(),
        Vec::new(),
        |_, _| {},
        None,
    )
    .unwrap();
    HfDir::open(out).unwrap()
}

#[test]
fn expansion_without_pruning_is_bit_identical() {
    let base_dir = tiny_dir(6);
    let tmp = tempfile::tempdir().unwrap();
    for preset in ["slayer", "llama-pro", "suffix", "deep"] {
        let map = resolve(
            &format!("[plan]\npreset = \"{preset}\"\nprune_last = 0\n"),
            6,
        );
        let out = tmp.path().join(preset);
        let written = expand_to(&base_dir, &map, &out);
        assert_eq!(written.config().num_hidden_layers, map.layers.len());
        let base = load_model(&HfDir::open(&base_dir).unwrap(), DType::F32, &Device::Cpu).unwrap();
        let expanded = load_model(&written, DType::F32, &Device::Cpu).unwrap();
        let x = ids(20);
        assert_eq!(
            max_abs_diff(&base.forward(&x).unwrap(), &expanded.forward(&x).unwrap()),
            0.0,
            "{preset}"
        );
    }
}

#[test]
fn averaged_init_is_the_mean_of_the_neighbours() {
    let base_dir = tiny_dir(6);
    let tmp = tempfile::tempdir().unwrap();
    let map = resolve("[plan]\npreset = \"slayer\"\n", 6);
    let written = expand_to(&base_dir, &map, &tmp.path().join("out"));
    let base = HfDir::open(&base_dir).unwrap();
    for layer in map.layers.iter().filter(|l| l.is_new()) {
        let Origin::New {
            init: Init::Average { sources: [a, b] },
            zero,
            ..
        } = &layer.origin
        else {
            panic!("not averaged")
        };
        for suffix in slayer::core::model::BLOCK_TENSORS {
            let got = written
                .load(&format!("model.layers.{}.{suffix}", layer.index))
                .unwrap();
            if zero.iter().any(|z| z == suffix) {
                assert_eq!(
                    got.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap(),
                    0.0,
                    "{suffix} not zero"
                );
            } else {
                let ta = base.load(&format!("model.layers.{a}.{suffix}")).unwrap();
                let tb = base.load(&format!("model.layers.{b}.{suffix}")).unwrap();
                let mean = ((ta + tb).unwrap() * 0.5).unwrap();
                assert!(max_abs_diff(&got, &mean) <= 1e-7, "{suffix}");
            }
        }
    }
}

#[test]
fn pruning_removes_exactly_the_named_blocks() {
    let base_dir = tiny_dir(8);
    let tmp = tempfile::tempdir().unwrap();
    let map = resolve(
        "[plan]\ninsert = [{ after = 1, init = \"copy\" }]\nprune = [3, 6]\n",
        8,
    );
    let written = expand_to(&base_dir, &map, &tmp.path().join("out"));
    let base = HfDir::open(&base_dir).unwrap();
    let expected: Vec<Option<usize>> =
        vec![Some(0), Some(1), None, Some(2), Some(4), Some(5), Some(7)];
    assert_eq!(map.layers.len(), expected.len());
    for (f, orig) in expected.iter().enumerate() {
        let name = format!("model.layers.{f}.mlp.up_proj.weight");
        let got = written.load(&name).unwrap();
        let want = base
            .load(&format!(
                "model.layers.{}.mlp.up_proj.weight",
                orig.unwrap_or(1)
            ))
            .unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "final block {f}");
    }
    // The config agrees with the tensors: exactly 7 blocks, HF's loader rules enforced by HfDir.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["num_hidden_layers"], 7);
    assert!(written.load("model.layers.7.mlp.up_proj.weight").is_err());
}

#[test]
fn in_memory_apply_equals_the_streamed_checkpoint() {
    let base_dir = tiny_dir(6);
    let tmp = tempfile::tempdir().unwrap();
    let map = resolve(
        "[plan]\npreset = \"slayer\"\ntrain = { new = true, original = [0] }\n",
        6,
    );
    let written = expand_to(&base_dir, &map, &tmp.path().join("out"));
    let base = load_model(&HfDir::open(&base_dir).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let mut applied = surgery::apply(&base, &map).unwrap();
    assert_eq!(
        applied
            .blocks
            .iter()
            .map(slayer::core::model::Block::is_trainable)
            .collect::<Vec<_>>(),
        map.layers.iter().map(|l| l.trainable).collect::<Vec<_>>()
    );
    applied.freeze_all().unwrap();
    let from_disk = load_model(&written, DType::F32, &Device::Cpu).unwrap();
    let x = ids(16);
    assert_eq!(
        max_abs_diff(
            &applied.forward(&x).unwrap(),
            &from_disk.forward(&x).unwrap()
        ),
        0.0
    );
}

#[test]
fn expand_refuses_an_existing_output_and_leaves_nothing_when_interrupted() {
    let base_dir = tiny_dir(6);
    let tmp = tempfile::tempdir().unwrap();
    let map = resolve("[plan]\npreset = \"slayer\"\n", 6);
    let out = tmp.path().join("out");
    expand_to(&base_dir, &map, &out);
    let source = HfDir::open(&base_dir).unwrap();
    let err = surgery::expand(
        &source,
        &map,
        &out,
        &SaveOptions::default(),
        Vec::new(),
        |_, _| {},
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already exists"));
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let other = tmp.path().join("other");
    let err = surgery::expand(
        &source,
        &map,
        &other,
        &SaveOptions::default(),
        Vec::new(),
        |_, _| {},
        Some(&cancel),
    )
    .unwrap_err();
    assert!(matches!(err, slayer::core::Error::Interrupted));
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "only the first output remains"
    );
}

fn cosines(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let a = a.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let b = b.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum();
            let nx: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
            dot / (nx * ny)
        })
        .collect()
}

/// Each metric against a direct computation of its formula (DESIGN.md §2), in f64 loops.
#[test]
fn importance_matches_the_formulas() {
    let model: Llama = llama(&config(4), 21, DType::F32, &Device::Cpu).unwrap();
    let samples: Vec<Vec<u32>> = (0..3u32)
        .map(|s| (0..12u32).map(|i| (i * 31 + s * 17 + 3) % 256).collect())
        .collect();
    let report = importance::compute(&model, &samples, &Metric::ALL, |_, _| {}, None).unwrap();
    let n = model.blocks.len();
    let (mut bi, mut ang, mut tokens) = (vec![0.0; n], vec![0.0; n], 0.0);
    for s in &samples {
        let x = Tensor::new(s.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let states = model.residual_states(&x).unwrap();
        for l in 0..n {
            let c = cosines(&states[l], &states[l + 1]);
            bi[l] += c.iter().map(|v| 1.0 - v).sum::<f64>();
            ang[l] += c[c.len() - 1].clamp(-1.0, 1.0).acos() / std::f64::consts::PI;
        }
        tokens += s.len() as f64;
    }
    for l in 0..n {
        assert!(
            (report.scores(Metric::Bi).unwrap()[l] - bi[l] / tokens).abs() < 1e-5,
            "BI block {l}"
        );
        assert!(
            (report.scores(Metric::Angular).unwrap()[l] - ang[l] / samples.len() as f64).abs()
                < 1e-4,
            "angular block {l}"
        );
        let mut without = model.clone();
        without.blocks.remove(l);
        without.sync_config();
        let mean: f64 = samples
            .iter()
            .map(|s| {
                f64::from(
                    without
                        .loss(
                            &Tensor::new(s.as_slice(), &Device::Cpu)
                                .unwrap()
                                .unsqueeze(0)
                                .unwrap(),
                        )
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap(),
                )
            })
            .sum::<f64>()
            / samples.len() as f64;
        // The report reuses the full model's stream below block l; the reference runs the
        // pruned model whole. Same numbers to 1e-5 (relative).
        let (reused, whole) = (report.scores(Metric::Ppl).unwrap()[l], mean.exp());
        assert!(
            (reused - whole).abs() < 1e-5 * whole,
            "ppl block {l}: {reused} vs {whole}"
        );
    }
    // Taylor: |Σ_samples W ⊙ ∂L/∂W| summed over each block's seven matrices.
    let mut m = model.clone();
    for i in 0..n {
        m.set_block_trainable(i, true).unwrap();
    }
    let vars = m.trainable_vars();
    let mut sums: std::collections::HashMap<String, Vec<f64>> = std::collections::HashMap::new();
    for s in &samples {
        let grads = m
            .loss(
                &Tensor::new(s.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in &vars {
            let g: Vec<f32> = grads
                .get(v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let acc = sums
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; w.len()]);
            for ((a, g), w) in acc.iter_mut().zip(g).zip(w) {
                *a += f64::from(g) * f64::from(w);
            }
        }
    }
    for l in 0..n {
        let expected: f64 = sums
            .iter()
            .filter(|(name, _)| {
                name.starts_with(&format!("model.layers.{l}.")) && !name.contains("layernorm")
            })
            .map(|(_, v)| v.iter().map(|x| x.abs()).sum::<f64>())
            .sum();
        let got = report.scores(Metric::Taylor).unwrap()[l];
        assert!(
            (got - expected).abs() <= 1e-3 * expected.max(1e-9),
            "taylor block {l}: {got} vs {expected}"
        );
    }
}

#[test]
fn suggestion_inserts_where_important_and_prunes_where_not() {
    let scores = [0.9, 0.2, 0.5, 0.8, 0.1, 0.3, 0.05, 0.6];
    let (insert, prune) = importance::suggest(&scores, 2, 2);
    assert_eq!(insert, vec![0, 3]);
    // Block 4 is read by the insertion after 3, so the two least important others go.
    assert_eq!(prune, vec![5, 6]);
    let toml = importance::suggestion_toml("smollm2", Metric::Bi, &insert, &prune);
    let map = resolve(&toml, 8);
    assert_eq!(map.new_indices(), vec![1, 5]);
    assert_eq!(map.pruned, vec![5, 6]);
}

fn slayer_cmd(args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SLAYER_HOME", home.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `plan check` on every fixture, against a 32-block model: exit code and diagnostics.
#[test]
fn plan_check_diagnostics_snapshots() {
    let model = tiny_dir(32);
    let model = model.to_str().unwrap();
    let mut fixtures: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plans"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 12);
    for f in fixtures {
        let name = f.file_stem().unwrap().to_str().unwrap().to_string();
        let rel = format!("tests/fixtures/plans/{name}.toml");
        let (code, stdout, stderr) = slayer_cmd(&["plan", "check", &rel, "--model", model]);
        let summary = stdout
            .lines()
            .filter(|l| {
                l.starts_with("parameters") || l.starts_with("trainable") || l.contains("blocks (+")
            })
            .map(|l| l.replace(model, "TINY32"))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(
            format!("plan_check_{name}"),
            format!("exit {code}\n{stderr}{summary}")
        );
    }
}

#[test]
fn plan_check_json_carries_positions() {
    let model = tiny_dir(32);
    let (code, stdout, _) = slayer_cmd(&[
        "plan",
        "check",
        "tests/fixtures/plans/out_of_range.toml",
        "--model",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["line"], 4);
    assert_eq!(v["diagnostics"][0]["column"], 13);
}

#[test]
fn plan_diff_export_import_commands() {
    let model = tiny_dir(32);
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.toml");
    let b = tmp.path().join("b.toml");
    std::fs::write(&a, "[plan]\npreset = \"slayer\"\n").unwrap();
    std::fs::write(&b, "[plan]\npreset = \"llama-pro\"\n").unwrap();
    let (code, stdout, _) = slayer_cmd(&[
        "plan",
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--model",
        model,
    ]);
    assert_eq!(code, 0);
    let stdout = stdout.replace(tmp.path().to_str().unwrap(), "TMP");
    insta::assert_snapshot!("plan_diff_slayer_vs_llama_pro", stdout);
    let yml = tmp.path().join("pro.yml");
    let (code, _, stderr) = slayer_cmd(&[
        "plan",
        "export",
        b.to_str().unwrap(),
        "--format",
        "mergekit",
        "--model",
        model,
        "--out",
        yml.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, imported, stderr) =
        slayer_cmd(&["plan", "import", yml.to_str().unwrap(), "--model", model]);
    assert_eq!(code, 0, "{stderr}");
    let back = tmp.path().join("back.toml");
    std::fs::write(&back, imported).unwrap();
    let (code, stdout, _) = slayer_cmd(&[
        "plan",
        "diff",
        b.to_str().unwrap(),
        back.to_str().unwrap(),
        "--model",
        model,
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("0 of 40 rows differ"), "{stdout}");
    let (code, _, stderr) = slayer_cmd(&[
        "plan",
        "export",
        a.to_str().unwrap(),
        "--format",
        "llamafactory",
        "--model",
        model,
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot train blocks [2, 5, 8"), "{stderr}");
}

#[test]
fn importance_command_rejects_bad_corpora() {
    let model = tiny_dir(4);
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let binary = tmp.path().join("binary.txt");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe]).unwrap();
    // The tiny model has no tokenizer: the corpus is checked first only when it exists; use a
    // model with one to reach the corpus checks.
    let (code, _, stderr) = slayer_cmd(&[
        "importance",
        model.to_str().unwrap(),
        "--corpus",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no tokenizer") || stderr.contains("empty"),
        "{stderr}"
    );
    let err = slayer::core::corpus::read_text(&binary)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("binary.txt") && err.contains("not UTF-8") && err.contains("byte 2"),
        "{err}"
    );
    let err = slayer::core::corpus::read_text(&empty)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty.txt") && err.contains("empty"), "{err}");
}

/// `plan check NAME` takes an experiment's name as `train` does, and its memory estimate
/// assumes the experiment's `[train]` (as the console's editor does) and the dtype training on
/// this build would use; flags override both.
#[test]
fn plan_check_takes_experiment_names_and_their_train_settings() {
    let model = tiny_dir(8);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("experiments")).unwrap();
    std::fs::write(
        home.path().join("experiments/named.toml"),
        format!(
            "name = \"named\"\n[model]\nbase = \"{}\"\n[plan]\npreset = \"slayer\"\n[data]\ntrain = \"corpus.txt\"\n[train]\nbatch_size = 8\nseq_len = 256\n",
            model.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = common::slayer(home.path(), args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            common::stderr(&out),
        )
    };
    let (code, stdout, stderr) = run(&["--device", "cpu", "plan", "check", "named"]);
    assert_eq!(code, 0, "{stderr}");
    let memory = stdout.lines().find(|l| l.starts_with("memory")).unwrap();
    assert!(memory.contains("f32 weights, batch 8 × 256"), "{memory}");
    let (_, stdout, _) = run(&[
        "--device", "cpu", "plan", "check", "named", "--batch", "2", "--dtype", "bf16",
    ]);
    let memory = stdout.lines().find(|l| l.starts_with("memory")).unwrap();
    assert!(memory.contains("bf16 weights, batch 2 × 256"), "{memory}");
    let (code, stdout, _) = run(&["plan", "diff", "named", "named"]);
    assert_eq!(code, 0);
    assert!(!stdout.is_empty());
    let (code, _, stderr) = run(&["plan", "check", "nameless"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("nameless") && stderr.contains("no experiment named so"),
        "{stderr}"
    );
}
