//! The CPU kernels of a training step, one by one, on SmolLM2-135M's shapes (256 rows, f32,
//! random values): what chose their layouts and what each fusion saves. Prints Markdown tables;
//! each figure is the median of `ROUNDS` runs.
//!
//! 1. gemm on one thread, each product of a block with the weight read row-major (the prepared
//!    layout) and as the transposed view of the stored `(out, in)` weight.
//! 2. Each product shared by candle's pool (`kernels::matmul_threaded`) against one thread.
//! 3. A frozen block's forward and backward with the input tracked (what every frozen block
//!    above a trainable one costs a step): prepared (`Block::prepare_frozen_linears`, two graph
//!    nodes) against its per-op path, and causal attention fused against candle's ops by query
//!    chunks (`autograd::causal_attention`, the path bf16 and CUDA take).
//!
//!     cargo run --release --example bench-cpu-kernels [-- ROUNDS]

#[path = "common.rs"]
mod common;

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use slayer::core::model::kernels::{Mat, Strides, matmul, matmul_threaded};
use slayer::core::model::{Rotary, autograd, causal_mask, random};

/// Median milliseconds of `f` over `rounds` timings of `reps` calls each (after one warm-up).
fn time(rounds: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ms = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        ms.push(start.elapsed().as_secs_f64() * 1e3 / reps as f64);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.37 + seed).sin()).collect()
}

fn main() -> Result<()> {
    slayer::allocator::keep_freed_memory();
    slayer::threads::decide(None, None);
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!(
        "machine: {}; threads {}; {rounds} rounds, medians",
        common::machine(),
        slayer::threads::in_use().threads
    );
    let rows = 256;
    // (name, in, out) of SmolLM2's products, q/k/v and gate/up as the prepared block runs them.
    let products = [
        ("q/k/v", 576, 960),
        ("o", 576, 576),
        ("gate/up", 576, 3072),
        ("down", 1536, 576),
        ("dX of gate/up", 3072, 576),
    ];
    println!();
    println!(
        "| product (256 rows) | one thread, row-major weight | one thread, transposed view | pool, row-major | pool, transposed view | speed-up of the pool |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, k, n) in products {
        let x = values(rows * k, 0.1);
        let w = values(k * n, 0.7); // (in, out) row-major
        let w_out_in: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let mut y = vec![0f32; rows * n];
        let flops = 2.0 * (rows * k * n) as f64 / 1e6;
        let lhs = Mat(&x[..], Strides::rows(rows, k, k));
        let row_major = Mat(&w[..], Strides::rows(k, n, n));
        let view = Mat(&w_out_in[..], Strides::transposed(n, k, k));
        let dst = Strides::rows(rows, n, n);
        let one = time(rounds, 20, || {
            matmul(&mut y, dst, lhs, row_major, 1.0, false);
            Ok(())
        })?;
        let viewed = time(rounds, 20, || {
            matmul(&mut y, dst, lhs, view, 1.0, false);
            Ok(())
        })?;
        let pool = time(rounds, 20, || {
            matmul_threaded(&mut y, dst, lhs, row_major, 1.0, false);
            Ok(())
        })?;
        let pool_viewed = time(rounds, 20, || {
            matmul_threaded(&mut y, dst, lhs, view, 1.0, false);
            Ok(())
        })?;
        println!(
            "| {name} {k}→{n} | {one:.3} ms ({:.0} GFLOP/s) | {viewed:.3} ms ({:.0}) | {pool:.3} ms ({:.0}) | {pool_viewed:.3} ms ({:.0}) | {:.2}× |",
            flops / one,
            flops / viewed,
            flops / pool,
            flops / pool_viewed,
            one / pool
        );
    }

    let mut config = random::tiny_config();
    config.vocab_size = 49_152;
    config.hidden_size = 576;
    config.intermediate_size = 1536;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 9;
    config.num_key_value_heads = 3;
    config.head_dim = 64;
    config.max_position_embeddings = 2048;
    config.rope_theta = 1e5;
    let model = random::llama(&config, 0, DType::F32, &Device::Cpu)?;
    let plain = model.blocks[1].clone();
    let mut prepared = plain.clone();
    prepared.prepare_frozen_linears()?;
    let rotary = Rotary::new(&config, DType::F32, &Device::Cpu)?;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, rows, 576), &Device::Cpu)?)?;
    let block_step = |block: &slayer::core::model::Block| {
        block
            .forward(x.as_tensor(), &rotary, 0, None, None)?
            .sum_all()?
            .backward()?;
        Ok(())
    };
    let (q, k, v) = (
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 9, rows, 64), &Device::Cpu)?)?,
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, rows, 64), &Device::Cpu)?)?,
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, rows, 64), &Device::Cpu)?)?,
    );
    let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, rows, 960), &Device::Cpu)?)?;
    let mask = causal_mask(rows, 0, DType::F32, &Device::Cpu)?;
    let (cos, sin) = rotary.tables(0, rows)?;
    println!();
    println!("| frozen block, input tracked (256 tokens) | forward + backward |");
    println!("|---|---|");
    let prepared_ms = time(rounds, 10, || block_step(&prepared))?;
    let plain_ms = time(rounds, 10, || block_step(&plain))?;
    println!("| prepared: two graph nodes | {prepared_ms:.2} ms |");
    println!("| op by op (fused kernels, unprepared) | {plain_ms:.2} ms |");
    let fused = time(rounds, 10, || {
        slayer::core::model::kernels::attention::self_attention(
            qkv.as_tensor(),
            (&cos, &sin),
            (9, 3, 64),
            0.125,
        )?
        .sum_all()?
        .backward()?;
        Ok(())
    })?;
    let chunked = time(rounds, 10, || {
        let q = rotary.apply(q.as_tensor(), 0)?;
        let k = rotary.apply(k.as_tensor(), 0)?;
        autograd::causal_attention(&q, &k, v.as_tensor(), 0.125, &mask)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    println!("| attention alone, fused (rotation included) | {fused:.2} ms |");
    println!(
        "| attention alone, candle's ops by query chunks (rotation included) | {chunked:.2} ms |"
    );
    Ok(())
}
