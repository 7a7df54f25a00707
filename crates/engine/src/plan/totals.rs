//! Sizes of a resolved plan: parameters, the trainable share, and a memory estimate for training.

use serde::Serialize;

use super::LayerMap;
use crate::config::LlamaConfig;

/// What the memory estimate assumes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryParams {
    pub batch: usize,
    pub seq_len: usize,
    /// Bytes per weight and activation element (4 for f32, 2 for bf16).
    pub element_bytes: usize,
    /// Frozen blocks above the first trainable one are recomputed in backward (`[train]
    /// recompute`).
    pub recompute: bool,
    /// Training in f32 on the CPU with this many threads: the fused kernels
    /// (`model::kernels`), which keep fewer activations and use per-thread scratch. `None`:
    /// candle's ops (a GPU, or 16-bit weights).
    #[serde(default)]
    pub cpu_threads: Option<usize>,
}

impl Default for MemoryParams {
    fn default() -> Self {
        Self {
            batch: 1,
            seq_len: 2048,
            element_bytes: 2,
            recompute: false,
            cpu_threads: None,
        }
    }
}

/// Memory needed to train the plan on one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// Gradients of the trainable blocks, in the weights' dtype (one micro-batch).
    pub gradients: u64,
    /// AdamW moments in f32, plus f32 master weights when weights are 16-bit.
    pub optimizer: u64,
    /// Activations kept for backward from the lowest trainable block up, plus the largest
    /// transient: one attention chunk's scores, one loss chunk's logits, and with
    /// recomputation one block's activations.
    pub activations: u64,
    pub total: u64,
}

/// Parameter counts and memory of a resolved plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Totals {
    pub base_params: u64,
    pub params: u64,
    pub trainable_params: u64,
    /// Trainable parameters as a share of the base model's.
    pub trainable_share: f64,
    pub new_blocks: usize,
    pub pruned_blocks: usize,
    pub final_layers: usize,
    pub memory: MemoryEstimate,
    pub assumptions: MemoryParams,
}

impl Totals {
    #[must_use]
    pub fn compute(map: &LayerMap, config: &LlamaConfig, mem: MemoryParams) -> Self {
        let block = config.block_params() as u64;
        let base_params = config.total_params() as u64;
        let delta = map.layers.len() as i64 - map.base_layers as i64;
        let params = (base_params as i64 + delta * block as i64) as u64;
        let trainable_blocks = map.layers.iter().filter(|l| l.trainable).count() as u64;
        let trainable_params = trainable_blocks * block;
        let e = mem.element_bytes as u64;
        let weights = params * e;
        let gradients = trainable_params * e;
        let optimizer = trainable_params * 4 * 2 + if e < 4 { trainable_params * 4 } else { 0 };
        // Activations per block and token, as the engine keeps them. candle's ops
        // (core::model::autograd): the block input, the norms' inputs and outputs, q/k/v before
        // and after rotation and joined for attention, the attention output and its contiguous
        // copy, the residual, gate/up/SiLU/product. No seq × seq scores anywhere: attention
        // runs by query chunks (or blocks, on the CPU).
        let (h, i) = (config.hidden_size as u64, config.intermediate_size as u64);
        let q = (config.num_attention_heads * config.head_dim) as u64;
        let kv = (config.num_key_value_heads * config.head_dim) as u64;
        let (b, t) = (mem.batch as u64, mem.seq_len as u64);
        let heads = config.num_attention_heads as u64;
        // Per token, what a trainable block keeps and what a frozen one does.
        let (trainable_token, frozen_token) = if mem.cpu_threads.is_some() {
            // CPU kernels. A trainable block, op by op: its input, the norms' outputs, q/k/v
            // apart and side by side, the attention output, o's output, the residual, gate/up
            // apart and side by side, their product, down's output. A frozen block, as two
            // ops (`model::kernels::block`): its input, q/k/v, the attention output and
            // softmax statistics, the residual, gate/up.
            (
                7 * h + 3 * q + 4 * kv + 5 * i,
                2 * h + 2 * q + 2 * kv + 2 * i + 2 * heads,
            )
        } else {
            (
                5 * h + 5 * q + 6 * kv + 4 * i,
                5 * h + 5 * q + 6 * kv + 4 * i,
            )
        };
        let lowest = map
            .layers
            .iter()
            .position(|l| l.trainable)
            .unwrap_or(map.layers.len());
        let tracked = &map.layers[lowest..];
        let trainable_tracked = tracked.iter().filter(|l| l.trainable).count() as u64;
        let frozen_tracked = tracked.len() as u64 - trainable_tracked;
        let tokens = b * t * e;
        let kept = if mem.recompute {
            // A recomputed block keeps its input and output; one block's activations exist at
            // a time while backward recomputes it.
            trainable_tracked * trainable_token * tokens
                + frozen_tracked * 2 * h * tokens
                + frozen_token * tokens
        } else {
            (trainable_tracked * trainable_token + frozen_tracked * frozen_token) * tokens
        };
        // Transients: one chunk of attention scores (product, probabilities in f32 and back, and
        // backward's f32 terms), one chunk of the loss's f32 logits (five live terms), and the
        // loss gradient for the hidden states.
        let (attention_chunk, loss) = if let Some(threads) = mem.cpu_threads {
            // Per thread: a query block's probabilities and their gradient, and the key and
            // value gradient sums; a band of the loss's logits per thread.
            let threads = threads as u64;
            let rows = crate::model::kernels::attention::BLOCK as u64;
            let attention =
                threads * (2 * rows * t + 2 * b * t * kv) * e + b * t * (q + 2 * kv) * e;
            let vocab = config.vocab_size;
            let band = crate::model::kernels::cross_entropy::band_rows(
                (b * t) as usize,
                vocab,
                threads as usize,
            ) as u64;
            let loss = threads.min((b * t).div_ceil(band)) * band * vocab as u64 * e;
            (attention, loss + b * t * h * e)
        } else {
            let chunk = crate::model::autograd::ATTENTION_CHUNK.min(mem.seq_len) as u64;
            let ce_rows = (crate::model::autograd::CE_CHUNK_ROWS as u64).min(b * t);
            (
                b * config.num_attention_heads as u64 * chunk * t * (e + 4 * 3),
                ce_rows * config.vocab_size as u64 * 4 * 5 + b * t * h * 4,
            )
        };
        let activations = if tracked.is_empty() {
            0
        } else {
            kept + attention_chunk + loss
        };
        Self {
            base_params,
            params,
            trainable_params,
            trainable_share: trainable_params as f64 / base_params as f64,
            new_blocks: map.layers.iter().filter(|l| l.is_new()).count(),
            pruned_blocks: map.pruned.len(),
            final_layers: map.layers.len(),
            memory: MemoryEstimate {
                weights,
                gradients,
                optimizer,
                activations,
                total: weights + gradients + optimizer + activations,
            },
            assumptions: mem,
        }
    }
}

/// Bytes in binary units, e.g. `1.5 GiB`.
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A count in short form, e.g. `7.95B`, `134.5M`.
#[must_use]
pub fn human_count(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2}B", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        n.to_string()
    }
}
