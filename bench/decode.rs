//! Chat speed on SmolLM2-135M (CPU), prefill and decode: our model dense (f32) and quantised
//! (`--quant q8_0`, `q4_k`) against candle's `quantized_llama` on the same GGUF, as shipped (Q4_1)
//! and requantised to Q8_0, all in one process, one after the other, on the same prompt. The
//! greedy tokens of each are compared with our dense f32 model's (how far quantisation moves
//! the answer).
//!
//!     cargo run --release --example bench-decode [-- TOKENS [ROUNDS]]
//!
//! ROUNDS (default 3) repeats the whole comparison; each figure is the median of its rounds, so
//! a burst of load on a shared machine lands in one round of every implementation, not in one
//! implementation.

#[path = "common.rs"]
mod common;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use slayer::core::checkpoint::{HfDir, WeightSource, load_model};
use slayer::core::generate::{Sampler, SamplingParams, StopConditions, argmax, generate};
use slayer::core::model::{KvCache, Llama, Quant};

/// A user message long enough that prefill is measured over a few hundred tokens.
const QUESTION: &str = "Tell me about the history of Paris: how the city grew from a Roman \
    settlement on an island in the Seine into the capital of France, what the medieval \
    university, the cathedral builders and the kings of the Capetian line made of it, how the \
    revolution of 1789 and the empire that followed changed its streets and its institutions, \
    why Baron Haussmann tore down whole quarters in the nineteenth century and what his \
    boulevards replaced, how the world fairs gave it the Eiffel Tower and the metro, what the \
    occupation of 1940 to 1944 did to it, and how the city and its suburbs have changed since, \
    from the new business district at La Défense to the recent Olympic Games.";

/// One implementation's figures for one round.
struct Round {
    prefill: f64,
    decode: f64,
    tokens: Vec<u32>,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let (dir, gguf) = common::smollm2()?;
    let source = HfDir::open(&dir)?;
    let prompt_text = format!("<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n");
    let prompt = source
        .tokenizer()
        .ok_or_else(|| anyhow::anyhow!("no tokenizer"))?
        .encode(&prompt_text, false)?;
    println!(
        "machine: {}; prompt {} tokens, {tokens} generated tokens, greedy; median of {rounds} rounds",
        common::machine(),
        prompt.len()
    );

    let dense = load_model(&source, DType::F32, &Device::Cpu)?;
    let mut ours = Vec::new();
    for quant in Quant::ALL {
        let mut model = dense.clone();
        let summary = model.quantize(quant)?;
        println!("slayer --quant {quant}: {}", summary.describe());
        ours.push((quant, model));
    }
    drop(dense);
    let theirs = [
        ("Q4_1 as shipped", load_reference(&gguf, None)?),
        (
            "requantised to Q8_0",
            load_reference(&gguf, Some(GgmlDType::Q8_0))?,
        ),
    ];

    let mut ours_rounds: Vec<Vec<Round>> = ours.iter().map(|_| Vec::new()).collect();
    let mut theirs_rounds: Vec<Vec<Round>> = theirs.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for ((_, model), out) in ours.iter().zip(&mut ours_rounds) {
            out.push(run_ours(model, &prompt, tokens)?);
        }
        for ((_, weights), out) in theirs.iter().zip(&mut theirs_rounds) {
            // quantized_llama keeps its cache inside the model: a fresh copy per round.
            out.push(run_reference(&mut weights.clone(), &prompt, tokens)?);
        }
    }

    let reference_tokens = &ours_rounds[0][0].tokens;
    let reference_decode = median(theirs_rounds[1].iter().map(|r| r.decode));
    let reference_prefill = median(theirs_rounds[1].iter().map(|r| r.prefill));
    println!();
    println!(
        "| implementation | weights | prefill tokens/s | decode tokens/s | decode vs quantized_llama Q8_0 | greedy tokens equal to slayer f32's |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, weights: &str, rounds: &[Round]| {
        let prefill = median(rounds.iter().map(|r| r.prefill));
        let decode = median(rounds.iter().map(|r| r.decode));
        let same = rounds[0]
            .tokens
            .iter()
            .zip(reference_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "| {name} | {weights} | {prefill:.1} ({:.2}×) | {decode:.1} | {:.2}× | first {same} of {} |",
            prefill / reference_prefill,
            decode / reference_decode,
            reference_tokens.len()
        );
    };
    for ((quant, _), rounds) in ours.iter().zip(&ours_rounds) {
        let weights = match quant {
            Quant::None => "f32 (dequantised from the GGUF)".to_string(),
            q => format!("--quant {q}"),
        };
        row("slayer (own Llama, KV cache)", &weights, rounds);
    }
    for ((label, _), rounds) in theirs.iter().zip(&theirs_rounds) {
        row("candle-transformers quantized_llama", label, rounds);
    }
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_ours(model: &Llama, prompt: &[u32], tokens: usize) -> Result<Round> {
    let mut sampler = Sampler::new(SamplingParams {
        temperature: 0.0,
        ..Default::default()
    })?;
    let never = AtomicBool::new(false);
    let mut cache = KvCache::new(model.blocks.len());
    let stop = StopConditions {
        max_tokens: tokens,
        eos_ids: &[],
        cancel: &never,
    };
    let (out, stats) = generate(model, &mut cache, prompt, &mut sampler, stop, |_| Ok(()))?;
    Ok(Round {
        prefill: stats.prefill_tokens_per_sec(),
        decode: stats.decode_tokens_per_sec(),
        tokens: out,
    })
}

/// candle's model on the GGUF, as shipped or with every matrix whose rows fit whole blocks
/// re-quantised to `requant` (through a GGUF written and read back, as a user would have it).
fn load_reference(gguf: &std::path::Path, requant: Option<GgmlDType>) -> Result<ModelWeights> {
    let mut file = std::fs::File::open(gguf)?;
    let content = gguf_file::Content::read(&mut file)?;
    let Some(dtype) = requant else {
        return Ok(ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?);
    };
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let t = content.tensor(&mut file, name, &Device::Cpu)?;
        let dims = t.shape().dims().to_vec();
        let t = if dims.len() == 2 && dims[1] % dtype.block_size() == 0 {
            QTensor::quantize(&t.dequantize(&Device::Cpu)?, dtype)?
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    let path = std::env::temp_dir().join(format!("slayer-bench-{}.gguf", std::process::id()));
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(&path)?, &metadata, &refs)?;
    let mut f = std::fs::File::open(&path)?;
    let c = gguf_file::Content::read(&mut f)?;
    let m = ModelWeights::from_gguf(c, &mut f, &Device::Cpu)?;
    std::fs::remove_file(&path)?;
    Ok(m)
}

/// The reference's prefill (the whole prompt in one forward, as `generate` does ours) and greedy
/// decode, timed the same way: prefill includes the first token's logits.
fn run_reference(model: &mut ModelWeights, prompt: &[u32], tokens: usize) -> Result<Round> {
    let start = Instant::now();
    let logits = model.forward(&Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?, 0)?;
    let mut next = argmax(&logits.squeeze(0)?.to_vec1()?);
    let prefill = prompt.len() as f64 / start.elapsed().as_secs_f64();
    let mut out = vec![next];
    let start = Instant::now();
    for i in 1..tokens {
        let logits = model.forward(
            &Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?,
            prompt.len() + i - 1,
        )?;
        next = argmax(&logits.squeeze(0)?.to_vec1()?);
        out.push(next);
    }
    let decode = (tokens - 1) as f64 / start.elapsed().as_secs_f64();
    Ok(Round {
        prefill,
        decode,
        tokens: out,
    })
}
