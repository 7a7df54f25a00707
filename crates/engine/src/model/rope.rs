//! Rotary position embeddings in HF's half-split layout, with Llama 3 and linear frequency scaling.

use candle_core::{DType, Device, Result, Tensor};

use crate::config::{LlamaConfig, RopeScaling};

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
    /// How many positions the table of `config` holds: its context, capped.
    #[must_use]
    pub fn positions_of(config: &LlamaConfig) -> usize {
        config.max_position_embeddings.min(MAX_TABLE_POSITIONS)
    }

    pub fn new(config: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let positions = Self::positions_of(config);
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

    /// The cos and sin tables of positions `offset..offset + seq`: (seq, head_dim / 2) each.
    pub fn tables(&self, offset: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.narrow(0, offset, seq)?,
            self.sin.narrow(0, offset, seq)?,
        ))
    }

    /// Rotates `x` of shape (batch, heads, seq, head_dim) for positions `offset..offset + seq`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        let rotated = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, &cos, &sin)?;
        if !x.track_op() {
            return Ok(rotated);
        }
        // The rotation's transpose is the rotation by the opposite angle: backward is the same
        // fused kernel with −sin, and the graph keeps nothing.
        let neg_sin = sin.neg()?;
        super::autograd::attach(x, rotated, move |_, _, g| {
            candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &neg_sin)
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::model::random::tiny_config;

    /// The fused rotation with its hand-written backward against candle's `rope_slow` and its
    /// autograd (the reference), at an offset, f32, within 1e-6 relative.
    #[test]
    fn the_rotation_and_its_gradient_match_rope_slow() {
        let rotary = Rotary::new(&tiny_config(), DType::F32, &Device::Cpu).unwrap();
        let x0 = Tensor::randn(0f32, 1.0, (2, 3, 5, 16), &Device::Cpu).unwrap();
        let g = Tensor::randn(0f32, 1.0, (2, 3, 5, 16), &Device::Cpu).unwrap();
        let run = |slow: bool| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = if slow {
                let cos = rotary.cos.narrow(0, 7, 5).unwrap();
                let sin = rotary.sin.narrow(0, 7, 5).unwrap();
                candle_nn::rotary_emb::rope_slow(x.as_tensor(), &cos, &sin).unwrap()
            } else {
                rotary.apply(x.as_tensor(), 7).unwrap()
            };
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let ((y, gy), (r, gr)) = (run(false), run(true));
        for (a, b) in [(y, r), (gy, gr)] {
            let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
            let scale = b.abs().unwrap().max_all().unwrap();
            let rel = diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap();
            assert!(rel <= 1e-6, "{rel}");
        }
    }
}
