//! Training and evaluation on tiny random models: the loss falls, only the plan's blocks move,
//! per-block statistics match a direct computation, clipping and schedule behave, and an
//! interrupted run resumes onto the uninterrupted loss curve bit for bit. Evaluation matches
//! hand-computed log-likelihoods.

#![allow(
    clippy::unwrap_used,
    clippy::float_cmp,
    reason = "tests: a panic is the failure report; exact float equality is the point"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{D, DType, Device, Tensor};
use common::max_abs_diff;
use slayer::core::config::LlamaConfig;
use slayer::core::eval::{self, McItem};
use slayer::core::events::{EventKind, EventSink, MemorySink};
use slayer::core::model::Llama;
use slayer::core::model::random::{llama, tiny_config};
use slayer::core::plan;
use slayer::core::surgery;
use slayer::core::tokenizer::Tokenizer;
use slayer::core::train::{self, Outcome, TrainConfig, Trainer};

fn expanded(seed: u64) -> Llama {
    let base = llama(
        &LlamaConfig {
            num_hidden_layers: 4,
            ..tiny_config()
        },
        seed,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let spec = plan::parse("[plan]\ninsert = [{ after = 1, init = \"average\" }, { after = 2, init = \"copy\" }]\ntrain = { new = true, original = [3] }\n").unwrap().plan;
    let map = plan::resolve(&spec, 4).map.unwrap();
    surgery::apply(&base, &map).unwrap()
}

/// Sequences of a repeating pattern: learnable by a tiny model within a few dozen steps.
fn data(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| {
            (0..len)
                .map(|i| ((i * 7 + s * 3) % 23 + 5) as u32)
                .collect()
        })
        .collect()
}

fn cfg(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        seq_len: 15,
        lr: 3e-3,
        warmup: 0.1,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

fn run(
    trainer: &mut Trainer,
    model: &Llama,
    cancel: &AtomicBool,
    sink: &mut dyn EventSink,
) -> Outcome {
    trainer
        .run(model, &data(12, 16), sink, cancel, &mut |_, _, _| Ok(()))
        .unwrap()
}

fn losses(sink: &MemorySink) -> Vec<f64> {
    sink.events
        .iter()
        .filter_map(|e| {
            if let EventKind::Step { loss, .. } = e {
                Some(*loss)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn loss_falls_and_only_the_plans_blocks_move() {
    let model = expanded(1);
    let trainable: Vec<usize> = model
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_trainable())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        trainable,
        vec![2, 4, 5],
        "new blocks after 1 and 2, and original 3"
    );
    let frozen: Vec<(String, Tensor)> = model
        .named_params()
        .into_iter()
        .filter(|(_, p)| !p.is_trainable())
        .map(|(n, p)| (n, p.dense().unwrap().copy().unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(
        &model,
        TrainConfig {
            weight_decay: 0.0,
            ..cfg(120)
        },
        dir.path(),
    )
    .unwrap();
    let mut sink = MemorySink::default();
    run(&mut trainer, &model, &AtomicBool::new(false), &mut sink);
    let l = losses(&sink);
    assert_eq!(l.len(), 120);
    let first: f64 = l[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = l[115..].iter().sum::<f64>() / 5.0;
    // The frozen random head and final norm bound the logits of this tiny model (ln 256 = 5.55
    // is chance): a drop of over a nat is what the trainable blocks can buy here.
    assert!(last < first - 1.0, "loss {first} → {last}");
    for (name, before) in frozen {
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
    // Every step reports exactly the trainable blocks.
    for e in &sink.events {
        if let EventKind::Step { blocks, .. } = e {
            assert_eq!(
                blocks.iter().map(|b| b.block).collect::<Vec<_>>(),
                trainable
            );
        }
    }
    assert!(dir.path().join("step-120/trainable.safetensors").is_file());
}

#[test]
fn block_statistics_match_a_direct_computation() {
    let model = expanded(2);
    let vars = model.trainable_vars();
    let two: Vec<Vec<u32>> = data(12, 16).into_iter().take(2).collect();
    // With two sequences and a batch of two, the first step sees both, in some order: the mean
    // loss, and so the gradient, does not depend on the order.
    let x = Tensor::from_vec(two.concat(), (2, 16), &Device::Cpu).unwrap();
    let grads = model.loss(&x).unwrap().backward().unwrap();
    let mut expect = std::collections::BTreeMap::<usize, f64>::new();
    for (name, v) in &vars {
        let block: usize = name.split('.').nth(2).unwrap().parse().unwrap();
        let g: Vec<f32> = grads
            .get(v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        *expect.entry(block).or_default() += g.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
    }
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        steps: 1,
        batch_size: 2,
        seq_len: 15,
        clip: 0.0,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, c, dir.path()).unwrap();
    let mut sink = MemorySink::default();
    trainer
        .run(
            &model,
            &two,
            &mut sink,
            &AtomicBool::new(false),
            &mut |_, _, _| Ok(()),
        )
        .unwrap();
    let Some(EventKind::Step {
        blocks,
        grad_norm,
        clipped,
        ..
    }) = sink
        .events
        .iter()
        .find(|e| matches!(e, EventKind::Step { .. }))
    else {
        panic!("no step")
    };
    assert!(!clipped);
    for b in blocks {
        let direct = expect[&b.block].sqrt();
        assert!(
            (b.grad_norm - direct).abs() <= 1e-4 * direct.max(1e-6),
            "block {}: {} vs {direct}",
            b.block,
            b.grad_norm
        );
        assert!(b.update_ratio > 0.0 && b.weight_norm > 0.0);
    }
    let total: f64 = expect.values().sum::<f64>().sqrt();
    assert!((grad_norm - total).abs() <= 1e-4 * total);
}

#[test]
fn clipping_caps_the_update() {
    let model = expanded(3);
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(
        &model,
        TrainConfig {
            clip: 1e-3,
            ..cfg(2)
        },
        dir.path(),
    )
    .unwrap();
    let mut sink = MemorySink::default();
    run(&mut trainer, &model, &AtomicBool::new(false), &mut sink);
    let steps: Vec<&EventKind> = sink
        .events
        .iter()
        .filter(|e| matches!(e, EventKind::Step { .. }))
        .collect();
    assert_eq!(steps.len(), 2);
    for e in steps {
        if let EventKind::Step {
            clipped, grad_norm, ..
        } = e
        {
            assert!(*clipped && *grad_norm > 1e-3);
        }
    }
}

/// Stops after a given step (as SIGINT would), leaving a checkpoint.
struct StopAfter<'a> {
    inner: MemorySink,
    step: u64,
    cancel: &'a AtomicBool,
}

impl EventSink for StopAfter<'_> {
    fn emit(&mut self, kind: EventKind) -> slayer::core::Result<()> {
        if let EventKind::Step { step, .. } = &kind
            && *step == self.step
        {
            self.cancel.store(true, Ordering::SeqCst);
        }
        self.inner.emit(kind)
    }

    fn sync(&mut self) -> slayer::core::Result<()> {
        Ok(())
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_curve_bit_for_bit() {
    let c = cfg(12);
    // Uninterrupted.
    let model = expanded(4);
    let dir_a = tempfile::tempdir().unwrap();
    let mut sink_a = MemorySink::default();
    let mut trainer_a = Trainer::new(&model, c.clone(), dir_a.path()).unwrap();
    run(&mut trainer_a, &model, &AtomicBool::new(false), &mut sink_a);
    // Interrupted after step 5 (12 sequences / batch 2 = 6 per epoch: the resume crosses an epoch).
    let model_b = expanded(4);
    let dir_b = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let mut sink_b = StopAfter {
        inner: MemorySink::default(),
        step: 5,
        cancel: &cancel,
    };
    let mut trainer_b = Trainer::new(&model_b, c.clone(), dir_b.path()).unwrap();
    assert_eq!(
        run(&mut trainer_b, &model_b, &cancel, &mut sink_b),
        Outcome::Stopped
    );
    let (step, latest) = train::list_checkpoints(dir_b.path())
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(step, 5);
    // A fresh process: new model, new trainer, everything else from the checkpoint.
    let model_c = expanded(4);
    let mut trainer_c = Trainer::new(&model_c, c, dir_b.path()).unwrap();
    trainer_c.resume_from(&latest).unwrap();
    let mut sink_c = MemorySink::default();
    run(
        &mut trainer_c,
        &model_c,
        &AtomicBool::new(false),
        &mut sink_c,
    );
    let resumed: Vec<f64> = losses(&sink_b.inner)
        .into_iter()
        .chain(losses(&sink_c))
        .collect();
    assert_eq!(resumed, losses(&sink_a), "resumed curve differs");
    for ((n, a), (_, b)) in model
        .trainable_vars()
        .iter()
        .zip(model_c.trainable_vars().iter())
    {
        assert_eq!(max_abs_diff(a.as_tensor(), b.as_tensor()), 0.0, "{n}");
    }
}

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let model = expanded(5);
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(
        &model,
        TrainConfig {
            lr: 1e30,
            clip: 0.0,
            max_nonfinite: 2,
            ..cfg(20)
        },
        dir.path(),
    )
    .unwrap();
    let mut sink = MemorySink::default();
    let err = trainer
        .run(
            &model,
            &data(12, 16),
            &mut sink,
            &AtomicBool::new(false),
            &mut |_, _, _| Ok(()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    assert!(
        sink.events
            .iter()
            .any(|e| matches!(e, EventKind::SkippedStep { .. }))
    );
}

#[test]
fn a_failed_checkpoint_keeps_the_previous_one() {
    let model = expanded(6);
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(&model, cfg(10), dir.path()).unwrap();
    let mut sink = MemorySink::default();
    trainer.state.step = 3;
    trainer.checkpoint(&mut sink).unwrap();
    // Make the next write fail (as a full disk would): a file where its temporary directory goes.
    std::fs::write(dir.path().join(".step-4.partial"), b"blocker").unwrap();
    trainer.state.step = 4;
    let err = trainer.checkpoint(&mut sink).unwrap_err();
    assert!(err.to_string().contains(".step-4.partial"), "{err}");
    assert!(!dir.path().join("step-4").exists());
    let list = train::list_checkpoints(dir.path()).unwrap();
    assert_eq!(list.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3]);
}

/// A word-level tokenizer over a fixed vocabulary, saved as tokenizer.json.
fn word_tokenizer(words: &[&str]) -> Tokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = std::iter::once("<unk>")
        .chain(words.iter().copied())
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    Tokenizer::from_hf_dir(dir.path(), &tiny_config())
        .unwrap()
        .unwrap()
}

fn manual_ll(model: &Llama, ids: &[u32], from: usize) -> f64 {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let lp =
        candle_nn::ops::log_softmax(&model.forward(&x).unwrap().squeeze(0).unwrap(), D::Minus1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
    (from..ids.len())
        .map(|p| f64::from(lp[p - 1][ids[p] as usize]))
        .sum()
}

/// lm-eval conventions against hand computation: summed log-likelihood of the continuation
/// tokens given the context; acc = argmax ll, acc_norm = argmax ll / characters of the choice.
#[test]
fn multiple_choice_scores_equal_hand_computed_loglikelihoods() {
    let tok = word_tokenizer(&[
        "Question:",
        "capital?",
        "Answer:",
        "Paris",
        "Rome",
        "Lyon",
        "Marseille",
    ]);
    let model = llama(&tiny_config(), 7, DType::F32, &Device::Cpu).unwrap();
    let item = McItem {
        context: "Question: capital? Answer: ".into(),
        // Continuations of 1, 2 and 3 tokens: the batched scoring pads the shorter ones.
        choices: vec![
            "Paris".into(),
            "Rome Lyon".into(),
            "Marseille Paris Lyon".into(),
        ],
        gold: 0,
        target_delimiter: None,
        prefix: None,
        id: None,
    };
    // Trailing space of the context moves to the continuation.
    let (ctx, cont) = eval::encode_pair(&tok, &item.context, " Paris").unwrap();
    assert_eq!((ctx.len(), cont.len()), (3, 1));
    let score = eval::score_item(&model, &tok, &item).unwrap();
    let mut hand = Vec::new();
    for choice in &item.choices {
        let (ctx, cont) = eval::encode_pair(&tok, &item.context, &format!(" {choice}")).unwrap();
        let ids: Vec<u32> = ctx.iter().chain(&cont).copied().collect();
        hand.push(manual_ll(&model, &ids, ctx.len()));
    }
    for (a, b) in score.loglikelihoods.iter().zip(&hand) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let argmax = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
    assert_eq!(score.pred, argmax(&hand));
    let normed: Vec<f64> = hand
        .iter()
        .zip(&item.choices)
        .map(|(l, c)| l / c.len() as f64)
        .collect();
    assert_eq!(score.pred_norm, argmax(&normed));
}

#[test]
fn perplexity_equals_the_hand_computed_value_for_any_window() {
    let words = ["a", "b", "c", "d", "e", "f"];
    let tok = word_tokenizer(&words);
    let model = llama(&tiny_config(), 8, DType::F32, &Device::Cpu).unwrap();
    let text = "a b c d e f a b c d e f a b c";
    let ids = tok.encode(text, false).unwrap();
    let mut seq = vec![tok.eos_ids().first().copied().unwrap_or(0)];
    seq.extend(&ids);
    // One window: every token predicted from everything before it.
    let nll = -manual_ll(&model, &seq, 1);
    let r = eval::perplexity(&model, &tok, text, 100).unwrap();
    assert_eq!(r.tokens, 15);
    assert!((r.nll - nll).abs() < 1e-4, "{} vs {nll}", r.nll);
    assert!((r.perplexity - (nll / 15.0).exp()).abs() < 1e-4);
    assert!((r.bits_per_byte - nll / (text.len() as f64 * std::f64::consts::LN_2)).abs() < 1e-6);
    // Windows of 4 predictions, each seeing the token before it.
    let mut windowed = 0.0;
    let mut pos = 0;
    while pos < ids.len() {
        let end = (pos + 4).min(ids.len());
        windowed -= manual_ll(&model, &seq[pos..=end], 1);
        pos = end;
    }
    let r4 = eval::perplexity(&model, &tok, text, 4).unwrap();
    assert!((r4.nll - windowed).abs() < 1e-4, "{} vs {windowed}", r4.nll);
}

/// bf16 weights with f32 master weights and moments (the CUDA configuration), run on the CPU:
/// the loss falls, and checkpoints hold the f32 master weights.
#[test]
fn bf16_training_keeps_f32_master_weights() {
    let base = llama(
        &LlamaConfig {
            num_hidden_layers: 4,
            ..tiny_config()
        },
        1,
        DType::BF16,
        &Device::Cpu,
    )
    .unwrap();
    let spec = plan::parse("[plan]\ninsert = [{ after = 1, init = \"average\" }, { after = 2, init = \"copy\" }]\ntrain = { new = true, original = [3] }\n").unwrap().plan;
    let model = surgery::apply(&base, &plan::resolve(&spec, 4).map.unwrap()).unwrap();
    assert!(
        model
            .trainable_vars()
            .iter()
            .all(|(_, v)| v.dtype() == DType::BF16)
    );
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(
        &model,
        TrainConfig {
            weight_decay: 0.0,
            ..cfg(60)
        },
        dir.path(),
    )
    .unwrap();
    let mut sink = MemorySink::default();
    run(&mut trainer, &model, &AtomicBool::new(false), &mut sink);
    let l = losses(&sink);
    let (first, last) = (
        l[..5].iter().sum::<f64>() / 5.0,
        l[55..].iter().sum::<f64>() / 5.0,
    );
    assert!(last < first - 0.5, "loss {first} → {last}");
    let saved = slayer::core::checkpoint::safetensors::MappedSafetensors::open(
        &dir.path().join("step-60/trainable.safetensors"),
    )
    .unwrap();
    assert!(
        saved
            .header()
            .tensors
            .values()
            .all(|t| t.dtype == DType::F32)
    );
}

/// `slayer bench train` on a config.json: the plan's new block is the trainable set, every step
/// reports a finite loss near ln(vocab) (random weights, random tokens), and peak memory is read.
/// A malformed plan file is refused with its name.
#[test]
fn bench_train_measures_the_planned_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, tiny_config().to_json(None, "float32").to_string()).unwrap();
    let out = common::slayer(
        dir.path(),
        &[
            "--device",
            "cpu",
            "bench",
            "train",
            "--shape",
            config.to_str().unwrap(),
            "--new-blocks",
            "1",
            "--prune-last",
            "1",
            "--seq-len",
            "16",
            "--batch",
            "2",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["layers"], 4, "4 blocks + 1 new - 1 pruned");
    assert_eq!(m["trainable_blocks"], serde_json::json!([2]));
    assert_eq!(m["trainable"], tiny_config().block_params());
    let losses = m["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 3);
    let ln_vocab = (tiny_config().vocab_size as f64).ln();
    for l in losses {
        assert!((l.as_f64().unwrap() - ln_vocab).abs() < 0.5, "{m}");
    }
    assert!(m["tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert!(m["peak_bytes"].as_u64().unwrap() > 0);
    // Every figure comes with the machine: the numerics' threads (and why), the CPUs, the SIMD.
    assert!(m["threads"].as_u64().unwrap() >= 1, "{m}");
    assert!(m["cpus_available"].as_u64().unwrap() >= 1, "{m}");
    assert!(!m["simd"].as_str().unwrap().is_empty(), "{m}");
    assert_eq!(
        m["prefill"],
        serde_json::Value::Null,
        "training has no prefill"
    );
    let out = common::slayer(
        dir.path(),
        &[
            "--device",
            "cpu",
            "--threads",
            "1",
            "bench",
            "decode",
            "--shape",
            config.to_str().unwrap(),
            "--prompt-len",
            "12",
            "--tokens",
            "4",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (d["threads"].as_u64(), d["thread_source"].as_str()),
        (Some(1), Some("--threads"))
    );
    let prefill = d["prefill"].as_array().unwrap();
    assert_eq!(prefill[0], 12, "{d}");
    assert!(prefill[1].as_f64().unwrap() > 0.0, "{d}");

    // Sizes beyond the shape or beyond memory's arithmetic are refused before anything is built.
    for (args, expected) in [
        (
            ["--seq-len", "99999"],
            "99999 positions exceed the 256 positions",
        ),
        (
            ["--batch", "18446744073709551615"],
            "--batch × --seq-len is too large",
        ),
    ] {
        let mut all = vec![
            "--device",
            "cpu",
            "bench",
            "train",
            "--shape",
            config.to_str().unwrap(),
        ];
        all.extend(args);
        let out = common::slayer(dir.path(), &all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{err}");
    }

    // The device check, as the GPU script runs it (here the CPU in bf16 against itself in f32).
    let out = common::slayer(
        dir.path(),
        &[
            "--device", "cpu", "bench", "ops", "--dtype", "bf16", "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(checks.len(), 5);
    assert!(checks.iter().all(|c| c["finite"] == true), "{checks:?}");

    let plan = dir.path().join("bad-plan.toml");
    std::fs::write(&plan, "[plan]\ninsert = [{ after = 99 }]\n").unwrap();
    let out = common::slayer(
        dir.path(),
        &[
            "bench",
            "train",
            "--shape",
            config.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-plan.toml"), "{err}");
}

/// Recomputing frozen blocks in backward changes what is kept, not what is computed: the loss
/// and every trainable gradient equal those of the plain graph (reference: the same model
/// without recomputation; tolerance 1e-6 relative, for summation order only).
#[test]
fn recomputed_blocks_give_the_same_gradients() {
    let mut model = llama(&tiny_config(), 11, DType::F32, &Device::Cpu).unwrap();
    // Block 1 trainable: blocks 2 and 3 above it are frozen but differentiated, so recomputed.
    model.set_block_trainable(1, true).unwrap();
    let ids = Tensor::new(
        &[[5u32, 9, 3, 200, 17, 4, 4, 81, 99, 2, 7, 13, 250, 1, 0, 64]],
        &Device::Cpu,
    )
    .unwrap();
    let grads = |model: &Llama| {
        let loss = model.loss(&ids).unwrap();
        let store = loss.backward().unwrap();
        let grads: Vec<Tensor> = model
            .trainable_vars()
            .iter()
            .map(|(n, v)| {
                store
                    .get(v)
                    .unwrap_or_else(|| panic!("no gradient for {n}"))
                    .clone()
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (plain_loss, plain) = grads(&model);
    model.recompute = true;
    let (loss, recomputed) = grads(&model);
    assert_eq!(loss, plain_loss);
    assert_eq!(plain.len(), 9);
    for (a, b) in plain.iter().zip(&recomputed) {
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 0.0);
        assert!(
            max_abs_diff(a, b) <= 1e-6 * scale,
            "{} vs {scale}",
            max_abs_diff(a, b)
        );
    }
}

/// The whole backward (hand-written attention, norm, chunked loss, recomputation and the frozen
/// blocks prepared for the CPU's fused kernels included) against central differences of the
/// loss, in f64 on a tiny model: the reference needs no autograd at all. Tolerance 1e-5
/// relative (differences of h = 1e-5 in f64 are good to ~1e-9).
#[test]
fn gradients_match_central_differences() {
    let mut model = llama(&tiny_config(), 5, DType::F64, &Device::Cpu).unwrap();
    model.set_block_trainable(1, true).unwrap();
    let ids = Tensor::new(
        &[[7u32, 200, 3, 3, 41, 90, 18, 255, 0, 64, 12, 5]],
        &Device::Cpu,
    )
    .unwrap();
    let loss_of = |model: &Llama| model.loss(&ids).unwrap().to_scalar::<f64>().unwrap();
    // Clones share the trainable variables, which the differences perturb and restore.
    let mut recomputed = model.clone();
    recomputed.recompute = true;
    let mut prepared = model.clone();
    assert_eq!(
        prepared.prepare_frozen_linears().unwrap(),
        3,
        "the frozen blocks"
    );
    for (variant, model) in [
        ("plain", &model),
        ("recomputed", &recomputed),
        ("prepared", &prepared),
    ] {
        let store = model.loss(&ids).unwrap().backward().unwrap();
        for (name, var) in model.trainable_vars() {
            let grad: Vec<f64> = store
                .get(&var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let original = var.as_tensor().copy().unwrap();
            let values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
            // The largest-gradient entry of each tensor and one fixed entry.
            let largest = (0..grad.len())
                .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                .unwrap();
            for i in [largest, grad.len() / 3] {
                let h = 1e-5;
                let at = |delta: f64| {
                    let mut v = values.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss_of(model)
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                var.set(&original).unwrap();
                let scale = grad[largest].abs().max(1e-12);
                assert!(
                    (numeric - grad[i]).abs() <= 1e-5 * scale,
                    "{name}[{i}] {variant}: autograd {} vs numeric {numeric}",
                    grad[i]
                );
            }
        }
    }
}

/// The token cache is keyed on the tokenizer's content: two tokenizers of one vocabulary size
/// cut the same text differently and must not share a cache entry (they once did: the key was
/// the vocabulary size and the special ids).
#[test]
fn the_token_cache_is_keyed_on_the_tokenizers_content() {
    use slayer::core::data::tokenize_documents;
    let a = word_tokenizer(&["the", "cat", "sat"]);
    let b = word_tokenizer(&["sat", "cat", "the"]);
    assert_eq!(a.vocab_size(), b.vocab_size());
    assert_ne!(
        a.content_fingerprint().unwrap(),
        b.content_fingerprint().unwrap()
    );
    let cache = tempfile::tempdir().unwrap();
    let docs = vec!["the cat sat".to_string()];
    let with_a = tokenize_documents(&a, &docs, Some(cache.path())).unwrap();
    let with_b = tokenize_documents(&b, &docs, Some(cache.path())).unwrap();
    assert_eq!(with_a, vec![vec![1, 2, 3]]);
    assert_eq!(
        with_b,
        vec![vec![3, 2, 1]],
        "b's own ids, not a's cached ones"
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);
    // Read back from the cache: the same ids.
    assert_eq!(
        tokenize_documents(&a, &docs, Some(cache.path())).unwrap(),
        with_a
    );
}

/// The numerics' thread count, as a run records it in its environment: `[train] threads` in the
/// foreground, `--threads` over it, a background run deciding its own from its experiment (the
/// flag does not reach it, and the launch says so), and a count out of range refused by name.
#[test]
fn a_run_records_the_thread_count_it_was_given() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    common::tiny_model_dir(home);
    let with_threads = |name: &str, threads: &str| {
        let path = common::tiny_experiment(home, name, 2, 0);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("[train]\n", &format!("[train]\nthreads = {threads}\n")),
        )
        .unwrap();
        path.display().to_string()
    };
    let environment = |name: &str| {
        let run = slayer::runner::list_runs(home)
            .into_iter()
            .find(|r| r.id.ends_with(&format!("-{name}")))
            .unwrap();
        let events = run.read_events().unwrap();
        events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::RunStart { environment, .. } => environment.clone(),
                _ => None,
            })
            .unwrap()
    };
    let own = with_threads("own", "1");
    common::ok(&common::slayer(home, &["--device", "cpu", "train", &own]));
    let env = environment("own");
    assert_eq!(
        (env.threads, env.thread_source.as_str()),
        (1, "[train] threads")
    );
    assert!(env.cpus_available >= 1 && !env.simd.is_empty(), "{env:?}");
    let own_id = slayer::runner::list_runs(home)
        .into_iter()
        .find(|r| r.id.ends_with("-own"))
        .unwrap()
        .id;
    let shown = common::ok(&common::slayer(home, &["runs", "show", &own_id]));
    assert!(
        shown.contains(&format!(
            "machine    1 threads ([train] threads) of {} CPUs",
            env.cpus_available
        )),
        "{shown}"
    );

    let flagged = with_threads("flagged", "1");
    common::ok(&common::slayer(
        home,
        &["--device", "cpu", "--threads", "2", "train", &flagged],
    ));
    let env = environment("flagged");
    assert_eq!((env.threads, env.thread_source.as_str()), (2, "--threads"));

    let background = with_threads("background", "1");
    let out = common::slayer(
        home,
        &[
            "--device",
            "cpu",
            "--threads",
            "2",
            "train",
            "--detach",
            &background,
        ],
    );
    let id = common::ok(&out).trim().to_string();
    assert!(
        common::stderr(&out).contains("--threads does not reach a background run"),
        "{}",
        common::stderr(&out)
    );
    common::wait_until(
        "the background run",
        std::time::Duration::from_secs(120),
        || common::status(home, &id).contains("finished"),
    );
    let env = environment("background");
    assert_eq!(
        (env.threads, env.thread_source.as_str()),
        (1, "[train] threads")
    );

    let bad = with_threads("bad", "0");
    let out = common::slayer(home, &["--device", "cpu", "train", &bad]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("train.threads = 0 must be from 1 to 1024"),
        "{}",
        common::stderr(&out)
    );
    let out = common::slayer(home, &["--threads", "many", "runs", "ls"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("`many` is not a thread count (1 to 1024)"),
        "{}",
        common::stderr(&out)
    );
}
