//! Token generation with a KV cache: sampling (greedy, temperature, top-k, top-p), stop
//! conditions, cancellation and timing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{KvCache, Llama};

/// How to pick each next token. Serialised as a transcript's `sampling` (both chats), so that a
/// conversation can be replayed with the same settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (deterministic argmax).
    pub temperature: f64,
    /// Nucleus threshold in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    pub seed: u64,
    pub max_tokens: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
            seed: 0,
            max_tokens: 512,
        }
    }
}

/// Picks tokens from logits.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl SamplingParams {
    /// The settings as a chat shows them: `temperature 0.7 · top_p 0.9 · top_k off ·
    /// max_tokens 256 · seed 0` (temperature 0 is greedy).
    #[must_use]
    pub fn describe(&self) -> String {
        let temperature = if self.temperature == 0.0 {
            "0 (greedy)".to_string()
        } else {
            format!("{}", self.temperature)
        };
        let top_k = if self.top_k == 0 {
            "off".to_string()
        } else {
            self.top_k.to_string()
        };
        format!(
            "temperature {temperature} · top_p {} · top_k {top_k} · max_tokens {} · seed {}",
            self.top_p, self.max_tokens, self.seed
        )
    }

    /// Refuses settings that cannot sample (checked before a model is loaded, so a typo costs
    /// nothing).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Invalid(format!(
                "temperature {} must be >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!(
                "top-p {} must be in (0, 1]",
                self.top_p
            )));
        }
        if self.max_tokens == 0 {
            return Err(Error::Invalid("max tokens must be at least 1".into()));
        }
        Ok(())
    }
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// The next token for a (vocab,) logits vector.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
        if self.params.temperature == 0.0 {
            return Ok(argmax(&logits));
        }
        let t = self.params.temperature as f32;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.params.top_k > 0 {
            order.truncate(self.params.top_k);
        }
        let max = logits[order[0]];
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| f64::from(((logits[i] - max) / t).exp()))
            .collect();
        let total: f64 = weights.iter().sum();
        // Smallest prefix whose probability mass reaches top_p.
        let mut keep = weights.len();
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            for (n, w) in weights.iter().enumerate() {
                acc += w / total;
                if acc >= self.params.top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept: f64 = weights[..keep].iter().sum();
        let mut r = self.rng.random::<f64>() * kept;
        for (n, w) in weights[..keep].iter().enumerate() {
            if r < *w {
                return Ok(order[n] as u32);
            }
            r -= w;
        }
        Ok(order[keep - 1] as u32)
    }
}

/// Index of the largest value (the first one on ties).
#[must_use]
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
    ContextFull,
}

/// Counts and timings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub stop: StopReason,
    /// The end-of-sequence id that stopped generation (it was fed into the cache).
    pub stop_token: Option<u32>,
}

impl GenerationStats {
    /// Prompt processing speed: prompt tokens per second of the prefill (which also yields the
    /// first generated token).
    #[must_use]
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        if self.prefill_secs > 0.0 {
            self.prompt_tokens as f64 / self.prefill_secs
        } else {
            0.0
        }
    }

    /// Decode speed, tokens generated after the first per second.
    #[must_use]
    pub fn decode_tokens_per_sec(&self) -> f64 {
        if self.decode_secs > 0.0 && self.generated_tokens > 1 {
            (self.generated_tokens - 1) as f64 / self.decode_secs
        } else {
            0.0
        }
    }
}

/// When generation ends, besides a full context window.
#[derive(Debug, Clone, Copy)]
pub struct StopConditions<'a> {
    pub max_tokens: usize,
    pub eos_ids: &'a [u32],
    /// Polled before each token; set from a signal handler or another thread.
    pub cancel: &'a AtomicBool,
}

/// Generates after `prompt`, calling `on_token` with each new id (the stop token excluded).
/// `cache` may hold earlier turns: `prompt` then continues them.
pub fn generate(
    model: &Llama,
    cache: &mut KvCache,
    prompt: &[u32],
    sampler: &mut Sampler,
    stop: StopConditions<'_>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let StopConditions {
        max_tokens,
        eos_ids,
        cancel,
    } = stop;
    if prompt.is_empty() {
        return Err(Error::Invalid("empty prompt".into()));
    }
    let device = model.device();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated_tokens: 0,
        prefill_secs: 0.0,
        decode_secs: 0.0,
        stop: StopReason::MaxTokens,
        stop_token: None,
    };
    if cache.len() + prompt.len() >= model.max_positions() {
        stats.stop = StopReason::ContextFull;
        return Ok((Vec::new(), stats));
    }
    let start = Instant::now();
    let input = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut logits = model.forward_step(&input, cache)?.squeeze(0)?;
    stats.prefill_secs = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut out = Vec::new();
    loop {
        if cancel.load(Ordering::Relaxed) {
            stats.stop = StopReason::Cancelled;
            break;
        }
        if out.len() >= max_tokens {
            stats.stop = StopReason::MaxTokens;
            break;
        }
        let next = sampler.sample(&logits)?;
        if eos_ids.contains(&next) {
            stats.stop = StopReason::Eos;
            stats.stop_token = Some(next);
            // Keep the stop token in the cache so a following turn continues the conversation.
            let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
            if cache.len() < model.max_positions() {
                model.forward_step(&input, cache)?;
            }
            break;
        }
        out.push(next);
        stats.generated_tokens += 1;
        on_token(next)?;
        if cache.len() + 1 >= model.max_positions() {
            stats.stop = StopReason::ContextFull;
            break;
        }
        let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
        logits = model.forward_step(&input, cache)?.squeeze(0)?;
    }
    stats.decode_secs = decode_start.elapsed().as_secs_f64();
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn logits(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&logits(&[0.1, 3.0, 3.0, -1.0])).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits(&[0.0, 1.0, 0.5])).unwrap(), 1);
        }
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50)
                .map(|_| s.sample(&logits(&[0.0, 0.2, 0.4, 0.1])).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&p), draw(&p));
        assert!(
            draw(&p).iter().any(|&t| t != 2),
            "sampling should not be greedy at T=1"
        );
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Probabilities ~ [0.867, 0.117, 0.016]: top_p 0.8 keeps only the first.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..100 {
            assert_eq!(s.sample(&logits(&[4.0, 2.0, 0.0])).unwrap(), 0);
        }
    }

    #[test]
    fn invalid_params_are_refused() {
        assert!(
            Sampler::new(SamplingParams {
                temperature: -1.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
