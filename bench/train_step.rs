//! Forward + backward speed and peak memory for SmolLM2-135M with two identity blocks inserted
//! (trainable, AdamW), batch 1 × 128, with and without the dX-only frozen linear. Each variant
//! runs in its own process so peak RSS is its own.
//!
//!     cargo run --release --example bench-train-step [-- STEPS]

#[path = "common.rs"]
mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use slayer::core::checkpoint::{HfDir, load_model};
use slayer::core::model::Param;
use slayer::core::model::linear::PLAIN_FROZEN_MATMUL;

const SEQ: usize = 128;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--variant") => {
            let plain = args.next().as_deref() == Some("plain");
            let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
            run_variant(plain, steps)
        }
        other => {
            let steps = other.and_then(|s| s.parse().ok()).unwrap_or(8usize);
            common::smollm2()?;
            println!(
                "machine: {}; SmolLM2-135M + 2 identity blocks (after 3 and 7), batch 1 x {SEQ}, {steps} steps after 1 warm-up",
                common::machine()
            );
            println!("| frozen linear | tokens/s | step ms | peak RSS MiB |");
            println!("|---|---|---|---|");
            let exe = std::env::current_exe()?;
            for variant in ["plain", "dx-only"] {
                let out = Command::new(&exe)
                    .args(["--variant", variant, &steps.to_string()])
                    .output()?;
                if !out.status.success() {
                    anyhow::bail!("{variant}: {}", String::from_utf8_lossy(&out.stderr));
                }
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
            Ok(())
        }
    }
}

fn run_variant(plain: bool, steps: usize) -> Result<()> {
    PLAIN_FROZEN_MATMUL.store(plain, Ordering::Relaxed);
    let (dir, _) = common::smollm2()?;
    let source = HfDir::open(&dir)?;
    let mut model = load_model(&source, DType::F32, &Device::Cpu)?;
    for src in [7, 3] {
        let mut block = model.blocks[src].clone();
        block.self_attn.o_proj = Param::Frozen(block.self_attn.o_proj.dense()?.zeros_like()?);
        block.mlp.down_proj = Param::Frozen(block.mlp.down_proj.dense()?.zeros_like()?);
        model.blocks.insert(src + 1, block);
    }
    model.sync_config();
    model.set_block_trainable(4, true)?;
    model.set_block_trainable(9, true)?;
    let vars = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-4,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let ids: Vec<u32> = (0..=SEQ as u32).map(|i| (i * 7919) % 49_152).collect();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let mut timed = 0.0;
    for step in 0..=steps {
        let start = Instant::now();
        let loss = model.loss(&x)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        if step > 0 {
            timed += start.elapsed().as_secs_f64();
        }
    }
    let step_ms = timed / steps as f64 * 1e3;
    println!(
        "| {} | {:.0} | {step_ms:.0} | {:.0} |",
        if plain {
            "candle matmul (computes dW)"
        } else {
            "dX-only custom op"
        },
        SEQ as f64 / (step_ms / 1e3),
        common::peak_rss_mib()
    );
    Ok(())
}
