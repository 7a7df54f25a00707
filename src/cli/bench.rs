//! `slayer bench train|decode`: throughput and peak memory of training and of KV-cached decoding
//! on this machine, for a model shape with random weights. It sizes a GPU box before a run, and
//! `bench/gpu-check.sh` runs it beside the PyTorch reference on the same GPU.
//!
//! The training step is the one `slayer train` takes ([`train::optimizer_step`]): the expanded
//! model in the device's dtype, only the plan's new blocks trainable, AdamW with f32 moments (and
//! f32 master weights in 16-bit training), global-norm clipping.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::model::parse_dtype;
use crate::core::checkpoint::hf::torch_dtype_name;
use crate::core::config::{LlamaConfig, RopeScaling};
use crate::core::device::{self, DeviceChoice};
use crate::core::generate::{Sampler, SamplingParams, StopConditions, generate};
use crate::core::model::{KvCache, Llama, random};
use crate::core::plan::{self, LayerMap};
use crate::core::surgery::expanded_config;
use crate::core::train::{self, AdamW, TrainConfig};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Optimizer steps on random data: tokens/s, step time and peak memory.
    Train(TrainBenchArgs),
    /// Greedy KV-cached decoding at batch 1 (as in chat): tokens/s.
    Decode(DecodeBenchArgs),
    /// Every hand-written forward/backward op on this device in a dtype against the CPU in f32:
    /// relative errors, pass or fail (exit 1 on a failure).
    Ops(OpsArgs),
}

#[derive(Debug, Args)]
pub struct OpsArgs {
    /// f32, bf16 or f16.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Print the measurements as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The model measured: a named shape or a `config.json`, expanded by a plan.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// smollm2-135m, llama-3.2-1b, llama-3-8b, or the path of an HF `config.json`.
    #[arg(long, default_value = "smollm2-135m")]
    pub shape: String,
    /// New blocks of the S strategy (the slayer preset); default: the shape's benchmark plan
    /// (+6 for SmolLM2, +4 for the 1B, +8 for the 8B) or the preset's default for a config.
    #[arg(long)]
    pub new_blocks: Option<usize>,
    /// Deep blocks pruned (default: the shape's benchmark plan, −3, −2, −4).
    #[arg(long)]
    pub prune_last: Option<usize>,
    /// A plan file (or experiment) instead of the slayer preset.
    #[arg(long, conflicts_with_all = ["new_blocks", "prune_last"])]
    pub plan: Option<PathBuf>,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on the CPU).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
    /// Seed of the random weights and data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the random weights are drawn: `device` (its own generator: fast, values differ
    /// between devices) or `host` (the same values on every device, slow for billions).
    #[arg(long, value_enum, default_value = "device")]
    pub init: Init,
    /// Print the expanded `config.json` and the trainable block indices as JSON and exit (what
    /// `bench/pytorch_gpu_train.py` builds its model from).
    #[arg(long)]
    pub describe: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Init {
    Device,
    Host,
}

#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Measured steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Recompute frozen blocks in backward instead of keeping their activations
    /// (`[train] recompute`).
    #[arg(long)]
    pub recompute: bool,
    /// Wait for the device between forward, backward and optimizer, and report each phase
    /// (slightly slower steps; the split is exact).
    #[arg(long)]
    pub profile: bool,
    /// Steps run first and not measured (allocator and kernel warm-up).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// One JSON object instead of a table row.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DecodeBenchArgs {
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Tokens of the prompt (prefilled before decoding).
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Tokens generated (the first is not counted: it comes from the prompt's forward).
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Weights for inference: none (dense), q8_0, q4_k (default: as `chat` on the device).
    #[arg(long)]
    pub quant: Option<crate::core::model::Quant>,
    /// One JSON object instead of a table row.
    #[arg(long)]
    pub json: bool,
}

/// A benchmark's result, as printed.
#[derive(Debug, Serialize)]
struct Measurement {
    bench: &'static str,
    shape: String,
    plan: String,
    layers: usize,
    params: usize,
    trainable: usize,
    device: String,
    dtype: String,
    batch: usize,
    seq_len: usize,
    steps: usize,
    tokens_per_sec: f64,
    step_ms: f64,
    peak_bytes: Option<u64>,
    /// Loss of each measured step (training only): random data, so it shows only that the step
    /// computes something sane.
    losses: Vec<f64>,
    trainable_blocks: Vec<usize>,
    recompute: bool,
    /// Mean ms per step in forward, backward and the optimizer (training; exact with
    /// `--profile`).
    phase_ms: [f64; 3],
    profiled: bool,
    /// The numerics' CPU threads, where that count came from, the CPUs this process may use,
    /// and the CPU (every figure is said with them): what a run records as its environment.
    #[serde(flatten)]
    machine: crate::core::events::Environment,
    /// Decoding only: the prompt's length and its prefill speed (tokens/s), beside decode's.
    prefill: Option<(usize, f64)>,
    /// Decoding only: the quantisation of the model's matrices.
    #[serde(skip_serializing_if = "Option::is_none")]
    quant: Option<crate::core::model::Quant>,
}

/// The model a benchmark builds, without building it.
#[derive(Debug, Serialize)]
struct Description {
    plan: String,
    config: serde_json::Value,
    trainable_blocks: Vec<usize>,
    params: usize,
}

pub fn run(cmd: BenchCommand, device: DeviceChoice) -> Result<i32> {
    match cmd {
        BenchCommand::Train(args) => bench_train(&args, device),
        BenchCommand::Decode(args) => bench_decode(&args, device),
        BenchCommand::Ops(args) => bench_ops(&args, device),
    }
}

fn bench_ops(args: &OpsArgs, choice: DeviceChoice) -> Result<i32> {
    let device = device::open(choice)?;
    let checks = crate::core::model::op_check::check_ops(&device, args.dtype)?;
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if args.json {
        outln!("{}", serde_json::to_string(&checks)?)?;
    } else {
        outln!(
            "{} against the CPU in f32, {}:",
            device_name(&device),
            dtype_name(args.dtype)
        )?;
        outln!("| op | forward error | gradient error | tolerance | finite | result |")?;
        outln!("|---|---|---|---|---|---|")?;
        for c in &checks {
            outln!(
                "| {} | {:.2e} | {:.2e} | {:.0e} | {} | {} |",
                c.op,
                c.forward_error,
                c.gradient_error,
                c.tolerance,
                if c.finite { "yes" } else { "NO" },
                if c.passed() { "pass" } else { "FAIL" }
            )?;
        }
    }
    Ok(i32::from(failed > 0))
}

/// A named benchmark shape: the base architecture and its benchmark plan (new, pruned).
fn named_shape(name: &str) -> Option<(LlamaConfig, usize, usize)> {
    let llama3 = |hidden, inter, layers, heads, head_dim, tied, max_pos, scaling| LlamaConfig {
        vocab_size: 128_256,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: 8,
        head_dim,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: scaling,
        max_position_embeddings: max_pos,
        tie_word_embeddings: tied,
        bos_token_id: Some(128_000),
        eos_token_id: None,
    };
    match name {
        "smollm2-135m" => Some((
            LlamaConfig {
                vocab_size: 49_152,
                hidden_size: 576,
                intermediate_size: 1536,
                num_hidden_layers: 30,
                num_attention_heads: 9,
                num_key_value_heads: 3,
                head_dim: 64,
                rms_norm_eps: 1e-5,
                rope_theta: 100_000.0,
                rope_scaling: None,
                max_position_embeddings: 8192,
                tie_word_embeddings: true,
                bos_token_id: Some(1),
                eos_token_id: None,
            },
            6,
            3,
        )),
        "llama-3.2-1b" => Some((
            llama3(
                2048,
                8192,
                16,
                32,
                64,
                true,
                131_072,
                Some(RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
            ),
            4,
            2,
        )),
        "llama-3-8b" => Some((llama3(4096, 14_336, 32, 32, 128, false, 8192, None), 8, 4)),
        _ => None,
    }
}

/// The expanded model's config and layer map, and a label for the plan.
fn resolve_shape(args: &ShapeArgs) -> Result<(LlamaConfig, LayerMap, String)> {
    let (base, default_new, default_prune) = if let Some((config, new, prune)) =
        named_shape(&args.shape)
    {
        (config, Some(new), Some(prune))
    } else {
        let path = Path::new(&args.shape);
        if !path.is_file() {
            bail!(
                "unknown shape `{}`: smollm2-135m, llama-3.2-1b, llama-3-8b, or the path of a config.json",
                args.shape
            );
        }
        (LlamaConfig::from_file(path)?, None, None)
    };
    let (source, label) = if let Some(path) = &args.plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (text, path.display().to_string())
    } else {
        let new = args.new_blocks.or(default_new);
        let prune = args.prune_last.or(default_prune);
        let mut text = String::from("[plan]\npreset = \"slayer\"\n");
        if let Some(n) = new {
            let _ = writeln!(text, "new_blocks = {n}");
        }
        if let Some(n) = prune {
            let _ = writeln!(text, "prune_last = {n}");
        }
        let label = format!(
            "slayer +{} −{}",
            new.map_or_else(|| "default".into(), |n| n.to_string()),
            prune.map_or_else(|| "default".into(), |n| n.to_string())
        );
        (text, label)
    };
    let file = plan::parse(&source).map_err(|d| anyhow::anyhow!(d.render(&label, &source)))?;
    let resolution = plan::resolve(&file.plan, base.num_hidden_layers);
    let failed = resolution.has_errors();
    let Some(map) = resolution.map.filter(|_| !failed) else {
        let messages: Vec<String> = resolution
            .diagnostics
            .iter()
            .map(|d| d.render(&label, &source))
            .collect();
        bail!(
            "{label}: the plan does not resolve:\n{}",
            messages.join("\n")
        );
    };
    Ok((expanded_config(&base, &map), map, label))
}

/// The short name the tables and JSON use (`f32`, `bf16`, `f16`).
fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// A benchmark's model: random weights of the expanded shape, the plan's trainable blocks
/// trainable.
struct Built {
    model: Llama,
    plan: String,
    dtype: DType,
    trainable_blocks: Vec<usize>,
}

/// Prints `--describe`'s JSON; true when the caller should stop there.
fn describe(args: &ShapeArgs) -> Result<bool> {
    if !args.describe {
        return Ok(false);
    }
    let (config, map, plan) = resolve_shape(args)?;
    let d = Description {
        plan,
        config: config.to_json(None, torch_dtype_name(args.dtype.unwrap_or(DType::BF16))),
        trainable_blocks: map.trainable_indices(),
        params: config.total_params(),
    };
    outln!("{}", serde_json::to_string(&d)?)?;
    Ok(true)
}

fn build_model(args: &ShapeArgs, positions: usize, device: &Device) -> Result<Built> {
    let (config, map, plan) = resolve_shape(args)?;
    if positions > config.max_position_embeddings {
        bail!(
            "{positions} positions exceed the {} positions of {} (--seq-len, or --prompt-len + --tokens)",
            config.max_position_embeddings,
            args.shape
        );
    }
    let dtype = args.dtype.unwrap_or_else(|| device::default_dtype(device));
    let mut model = match args.init {
        Init::Device => random::llama_on_device(&config, args.seed, dtype, device)?,
        Init::Host => random::llama(&config, args.seed, dtype, device)?,
    };
    let trainable_blocks = map.trainable_indices();
    for &index in &trainable_blocks {
        model.set_block_trainable(index, true)?;
    }
    Ok(Built {
        model,
        plan,
        dtype,
        trainable_blocks,
    })
}

fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", crate::threads::in_use().threads),
        other => format!("{:?}", other.location()),
    }
}

/// The device and the model of a benchmark that needs `positions` positions, or `None` after
/// `--describe` printed the shape.
fn prepare(
    shape: &ShapeArgs,
    positions: usize,
    choice: DeviceChoice,
) -> Result<Option<(Device, Built)>> {
    if describe(shape)? {
        return Ok(None);
    }
    let device = device::open(choice)?;
    let built = build_model(shape, positions, &device)?;
    Ok(Some((device, built)))
}

fn bench_train(args: &TrainBenchArgs, choice: DeviceChoice) -> Result<i32> {
    if args.steps == 0 || args.batch == 0 || args.seq_len == 0 {
        bail!("--steps, --batch and --seq-len must be at least 1");
    }
    let tokens_per_batch = args
        .seq_len
        .checked_add(1)
        .and_then(|row| row.checked_mul(args.batch))
        .context("--batch × --seq-len is too large")?;
    let Some((device, built)) = prepare(&args.shape, args.seq_len, choice)? else {
        return Ok(0);
    };
    let Built {
        mut model,
        plan: label,
        dtype,
        trainable_blocks,
    } = built;
    model.recompute = args.recompute;
    model.prepare_frozen_linears()?;
    let vars = model.trainable_vars();
    let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let cfg = TrainConfig {
        batch_size: args.batch,
        seq_len: args.seq_len,
        ..TrainConfig::default()
    };
    let mut optimizer = AdamW::new(vars, cfg.decay_norms)?;
    let vocab = u32::try_from(model.config.vocab_size).context("vocabulary too large")?;
    let mut rng_state = args.shape.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut batch = || -> Result<Tensor> {
        // xorshift: random token ids, different each step, the same for every run of a seed.
        let ids: Vec<u32> = (0..tokens_per_batch)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                (rng_state % u64::from(vocab)) as u32
            })
            .collect();
        Ok(Tensor::from_vec(
            ids,
            (args.batch, args.seq_len + 1),
            &device,
        )?)
    };
    let opts = train::StepOptions {
        update_norms: false,
        profile: args.profile,
    };
    let progress = super::progress::bar((args.warmup + args.steps) as u64, "bench train", "steps");
    for _ in 0..args.warmup {
        train::optimizer_step(&model, &mut optimizer, &cfg, &[batch()?], cfg.lr, opts)?;
        device.synchronize()?;
        progress.inc(1);
    }
    device::reset_peak_memory(&device);
    let mut losses = Vec::with_capacity(args.steps);
    let mut phase_secs = [0.0; 3];
    let started = Instant::now();
    for _ in 0..args.steps {
        let input = batch()?;
        let report = train::optimizer_step(&model, &mut optimizer, &cfg, &[input], cfg.lr, opts)?;
        losses.push(report.loss);
        for (total, phase) in phase_secs.iter_mut().zip(report.phase_secs) {
            *total += phase;
        }
        progress.inc(1);
        if super::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
    }
    device.synchronize()?;
    let secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let m = Measurement {
        bench: "train",
        shape: args.shape.shape.clone(),
        plan: label,
        layers: model.config.num_hidden_layers,
        params: model.param_count(),
        trainable,
        device: device_name(&device),
        dtype: dtype_name(dtype),
        batch: args.batch,
        seq_len: args.seq_len,
        steps: args.steps,
        tokens_per_sec: (args.steps * args.batch * args.seq_len) as f64 / secs,
        step_ms: secs * 1e3 / args.steps as f64,
        peak_bytes: device::peak_memory(&device),
        losses,
        trainable_blocks,
        recompute: args.recompute,
        phase_ms: phase_secs.map(|s| s * 1e3 / args.steps as f64),
        profiled: args.profile,
        machine: crate::threads::environment(),
        prefill: None,
        quant: None,
    };
    print_measurement(&m, args.json)?;
    Ok(0)
}

fn bench_decode(args: &DecodeBenchArgs, choice: DeviceChoice) -> Result<i32> {
    if args.tokens < 2 || args.prompt_len == 0 {
        bail!("--tokens must be at least 2 and --prompt-len at least 1");
    }
    let positions = args
        .prompt_len
        .checked_add(args.tokens)
        .context("--prompt-len + --tokens is too large")?;
    let Some((device, built)) = prepare(&args.shape, positions, choice)? else {
        return Ok(0);
    };
    let (label, dtype) = (built.plan, built.dtype);
    let mut model = built.model;
    model.freeze_all()?;
    let (quant, _) = super::model::quant_choice(args.quant, &device);
    model.quantize(quant)?;
    if positions >= model.max_positions() {
        bail!(
            "prompt and tokens exceed the model's {} positions",
            model.max_positions()
        );
    }
    let vocab = model.config.vocab_size as u64;
    let prompt: Vec<u32> = (0..args.prompt_len as u64)
        .map(|i| ((i * 7919 + args.shape.seed * 104_729) % vocab) as u32)
        .collect();
    let cancel = AtomicBool::new(false);
    let run = |model: &Llama| -> Result<crate::core::generate::GenerationStats> {
        let mut cache = KvCache::new(model.blocks.len());
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        })?;
        let stop = StopConditions {
            max_tokens: args.tokens,
            // Random weights: no end-of-sequence id, every run generates the full count.
            eos_ids: &[],
            cancel: &cancel,
        };
        let (_, stats) = generate(model, &mut cache, &prompt, &mut sampler, stop, |_| Ok(()))?;
        Ok(stats)
    };
    // A short warm-up generation (kernel loading, allocator pools), then the measured one.
    run(&model)?;
    device::reset_peak_memory(&device);
    let stats = run(&model)?;
    let m = Measurement {
        bench: "decode",
        shape: args.shape.shape.clone(),
        plan: label,
        layers: model.config.num_hidden_layers,
        params: model.param_count(),
        trainable: 0,
        device: device_name(&device),
        dtype: dtype_name(dtype),
        batch: 1,
        seq_len: positions,
        steps: stats.generated_tokens,
        tokens_per_sec: stats.decode_tokens_per_sec(),
        step_ms: stats.decode_secs * 1e3 / (stats.generated_tokens.max(2) - 1) as f64,
        peak_bytes: device::peak_memory(&device),
        losses: Vec::new(),
        trainable_blocks: Vec::new(),
        recompute: false,
        phase_ms: [0.0; 3],
        profiled: false,
        machine: crate::threads::environment(),
        prefill: Some((stats.prompt_tokens, stats.prefill_tokens_per_sec())),
        quant: Some(quant),
    };
    print_measurement(&m, args.json)?;
    Ok(0)
}

fn print_measurement(m: &Measurement, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string(m)?)?;
        return Ok(());
    }
    let peak = m.peak_bytes.map_or_else(
        || "?".into(),
        |b| format!("{:.1}", b as f64 / f64::from(1 << 30)),
    );
    outln!(
        "| shape | plan | layers | params | trainable | device | dtype | batch × seq | tokens/s | step ms | peak GiB |"
    )?;
    outln!("|---|---|---|---|---|---|---|---|---|---|---|")?;
    outln!(
        "| {} | {} | {} | {:.3}B | {:.3}B | {} | {} | {} × {} | {:.0} | {:.1} | {peak} |",
        m.shape,
        m.plan,
        m.layers,
        m.params as f64 / 1e9,
        m.trainable as f64 / 1e9,
        m.device,
        match m.quant {
            Some(q) if !q.is_none() => format!("{} + {q}", m.dtype),
            _ => m.dtype.clone(),
        },
        m.batch,
        m.seq_len,
        m.tokens_per_sec,
        m.step_ms
    )?;
    if let Some((prompt, rate)) = m.prefill {
        outln!("prefill: {rate:.0} tokens/s ({prompt}-token prompt); decode above")?;
    }
    outln!(
        "CPU: {} ({}); numerics threads: {} ({}); CPUs available: {}",
        if m.machine.cpu.is_empty() {
            "unnamed"
        } else {
            &m.machine.cpu
        },
        m.machine.simd,
        m.machine.threads,
        m.machine.thread_source,
        m.machine.cpus_available
    )?;
    if !m.losses.is_empty() {
        let shown: Vec<String> = m.losses.iter().map(|l| format!("{l:.4}")).collect();
        errln!("losses: {}", shown.join(" "));
        let [forward, backward, optimizer] = m.phase_ms;
        errln!(
            "per step: forward {forward:.1} ms, backward {backward:.1} ms, optimizer {optimizer:.1} ms{}",
            if m.profiled {
                ""
            } else {
                " (approximate on a GPU without --profile)"
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str) -> ShapeArgs {
        ShapeArgs {
            shape: name.into(),
            new_blocks: None,
            prune_last: None,
            plan: None,
            dtype: None,
            seed: 0,
            init: Init::Host,
            describe: false,
        }
    }

    /// The three shapes of the GPU issue's baseline table: depth after the plan, total and
    /// trainable parameters as PyTorch counted them (0.145B/0.021B, 1.357B/0.243B, 8.903B/1.745B).
    #[test]
    fn named_shapes_match_the_baseline_table() {
        for (name, layers, params, trainable) in [
            ("smollm2-135m", 33, 145, 21),
            ("llama-3.2-1b", 18, 1357, 243),
            ("llama-3-8b", 36, 8903, 1745),
        ] {
            let (config, map, _) = resolve_shape(&shape(name)).expect(name);
            assert_eq!(config.num_hidden_layers, layers, "{name}");
            // In millions, rounded as the table prints billions to three places.
            let millions = |n: usize| (n + 500_000) / 1_000_000;
            assert_eq!(millions(config.total_params()), params, "{name}");
            let new = map.trainable_indices().len() * config.block_params();
            assert_eq!(millions(new), trainable, "{name}");
        }
    }

    #[test]
    fn an_unknown_shape_is_named_in_the_error() {
        let err = resolve_shape(&shape("llama-9")).unwrap_err().to_string();
        assert!(err.contains("unknown shape `llama-9`"), "{err}");
    }
}
