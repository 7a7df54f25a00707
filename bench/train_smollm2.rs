//! CPU training speed of SmolLM2-135M with the slayer preset (7 averaged identity blocks, last 2
//! pruned, only the new blocks train), batch 1 × 256 (`--seq-len`), through the real trainer (AdamW, clipping,
//! events), with the threads, pool spin and allocator `slayer` itself uses. `--no-stats` turns
//! per-block statistics off to measure their cost, `--unprepared` leaves the frozen weights
//! unprepared (`Llama::prepare_frozen_linears`) to measure what that buys. Prints one Markdown
//! row: tokens/s (steps after the first), step ms, peak RSS.
//!
//!     cargo run --release --example bench-train-smollm2 -- [--steps N] [--seq-len T] [--no-stats] [--unprepared]

#[path = "common.rs"]
mod common;

// The binary's allocator (src/main.rs says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::AtomicBool;

use anyhow::Result;
use candle_core::{DType, Device};
use slayer::core::checkpoint::{HfDir, load_model};
use slayer::core::events::{EventKind, MemorySink};
use slayer::core::plan;
use slayer::core::surgery;
use slayer::core::train::{TrainConfig, Trainer};

fn main() -> Result<()> {
    // The allocator, threads and the pool's spin as `slayer` itself sets them, before any
    // compute.
    slayer::allocator::keep_freed_memory();
    slayer::threads::decide(None, None);
    let args: Vec<String> = std::env::args().collect();
    let steps: u64 = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seq_len: u32 = args
        .iter()
        .position(|a| a == "--seq-len")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let stats = !args.iter().any(|a| a == "--no-stats");
    let prepared = !args.iter().any(|a| a == "--unprepared");
    let (dir, _) = common::smollm2()?;
    let base = load_model(&HfDir::open(&dir)?, DType::F32, &Device::Cpu)?;
    let spec = plan::parse("[plan]\npreset = \"slayer\"\n")
        .map_err(|d| anyhow::anyhow!(d.message))?
        .plan;
    let map = plan::resolve(&spec, base.blocks.len())
        .map
        .ok_or_else(|| anyhow::anyhow!("plan"))?;
    let mut model = surgery::apply(&base, &map)?;
    drop(base);
    if prepared {
        model.prepare_frozen_linears()?;
    }
    // Deterministic pseudo-text: token ids spread over the vocabulary.
    let data: Vec<Vec<u32>> = (0..64u32)
        .map(|s| {
            (0..=seq_len)
                .map(|i| (i * 7919 + s * 104_729) % 49_152)
                .collect()
        })
        .collect();
    let cfg = TrainConfig {
        steps,
        batch_size: 1,
        seq_len: seq_len as usize,
        block_stats: stats,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let ckpt = tempfile::tempdir()?;
    let mut trainer = Trainer::new(&model, cfg, ckpt.path())?;
    let mut sink = MemorySink::default();
    trainer.run(
        &model,
        &data,
        &mut sink,
        &AtomicBool::new(false),
        &mut |_, _, _| Ok(()),
    )?;
    let rates: Vec<f64> = sink
        .events
        .iter()
        .filter_map(|e| {
            if let EventKind::Step { tokens_per_sec, .. } = e {
                Some(*tokens_per_sec)
            } else {
                None
            }
        })
        .skip(1)
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    println!(
        "| slayer (candle, f32, fused CPU kernels{}){} | {mean:.1} | {:.0} | {:.0} |",
        if prepared {
            ", frozen weights prepared"
        } else {
            ", frozen weights unprepared"
        },
        if stats {
            ", per-block stats"
        } else {
            ", no per-block stats"
        },
        f64::from(seq_len) / mean * 1e3,
        common::peak_rss_mib()
    );
    Ok(())
}
