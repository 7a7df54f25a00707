//! Rotary position embeddings in HF's half-split layout, with Llama 3 and linear frequency scaling.

use candle_core::{DType, Device, Result, Tensor};

use crate::core::config::{LlamaConfig, RopeScaling};

/// Positions beyond this are not precomputed (the table would dominate memory for 128k models);
/// longer sequences are refused by the model.
const MAX_TABLE_POSITIONS: usize = 131_072;

/// Precomputed cos/sin tables of shape (positions, head_dim / 2).
#[derive(Clone, Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// Inverse frequencies for each pair of dimensions, scaling applied.
#[must_use]
pub fn inv_freqs(config: &LlamaConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    match &config.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let orig = *original_max_position_embeddings as f64;
            let low_wavelen = orig / low_freq_factor;
            let high_wavelen = orig / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (orig / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl Rotary {
    pub fn new(config: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let positions = config.max_position_embeddings.min(MAX_TABLE_POSITIONS);
        let freqs = inv_freqs(config);
        let half = freqs.len();
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(freqs.iter().map(|f| (p as f64 * f) as f32));
        }
        let angles = Tensor::from_vec(angles, (positions, half), device)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// Number of positions available.
    #[must_use]
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x` of shape (batch, heads, seq, head_dim) for positions `offset..offset + seq`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        if x.track_op() {
            candle_nn::rotary_emb::rope_slow(x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
        }
    }
}
