//! Chat decode speed on SmolLM2-135M (CPU): our f32 model with KV cache against candle's
//! `quantized_llama` on the same GGUF, as shipped (Q4_1) and requantised to Q8_0, in one run.
//!
//!     cargo run --release --example bench-decode [-- TOKENS]

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
use slayer::core::model::KvCache;

const PROMPT: &str =
    "<|im_start|>user\nTell me about the history of Paris.<|im_end|>\n<|im_start|>assistant\n";

fn main() -> Result<()> {
    let tokens: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let (dir, gguf) = common::smollm2()?;
    let source = HfDir::open(&dir)?;
    let prompt = source
        .tokenizer()
        .ok_or_else(|| anyhow::anyhow!("no tokenizer"))?
        .encode(PROMPT, false)?;
    println!(
        "machine: {}; prompt {} tokens, {tokens} generated tokens, greedy",
        common::machine(),
        prompt.len()
    );
    println!("| implementation | weights | decode tokens/s |");
    println!("|---|---|---|");

    let model = load_model(&source, DType::F32, &Device::Cpu)?;
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
    let (_, stats) = generate(&model, &mut cache, &prompt, &mut sampler, stop, |_| Ok(()))?;
    println!(
        "| slayer (own Llama, KV cache) | f32 (dequantised) | {:.1} |",
        stats.decode_tokens_per_sec()
    );
    drop(model);

    for (label, requant) in [
        ("Q4_1 as shipped", None),
        ("requantised to Q8_0", Some(GgmlDType::Q8_0)),
    ] {
        let mut file = std::fs::File::open(&gguf)?;
        let content = gguf_file::Content::read(&mut file)?;
        let mut model = if let Some(dtype) = requant {
            // Re-quantise every matrix whose rows fit whole blocks, write a GGUF, load that.
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
            let path =
                std::env::temp_dir().join(format!("slayer-bench-{}.gguf", std::process::id()));
            let metadata: Vec<(&str, &gguf_file::Value)> = content
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v))
                .collect();
            let refs: Vec<(&str, &QTensor)> =
                tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            gguf_file::write(&mut std::fs::File::create(&path)?, &metadata, &refs)?;
            let mut f = std::fs::File::open(&path)?;
            let c = gguf_file::Content::read(&mut f)?;
            let m = ModelWeights::from_gguf(c, &mut f, &Device::Cpu)?;
            std::fs::remove_file(&path)?;
            m
        } else {
            ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?
        };
        let mut next = 0u32;
        for (p, id) in prompt.iter().enumerate() {
            let logits = model.forward(&Tensor::new(&[*id], &Device::Cpu)?.unsqueeze(0)?, p)?;
            next = argmax(&logits.squeeze(0)?.to_vec1()?);
        }
        let start = Instant::now();
        for i in 0..tokens {
            let logits = model.forward(
                &Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?,
                prompt.len() + i,
            )?;
            next = argmax(&logits.squeeze(0)?.to_vec1()?);
        }
        let rate = tokens as f64 / start.elapsed().as_secs_f64();
        println!("| candle-transformers quantized_llama | {label} | {rate:.1} |");
    }
    Ok(())
}
