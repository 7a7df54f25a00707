//! Grouped-query self-attention with a causal mask and an optional KV cache.

use candle_core::{DType, Result, Tensor};

use super::linear::{Param, linear};
use super::rope::Rotary;

#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Param,
    pub k_proj: Param,
    pub v_proj: Param,
    pub o_proj: Param,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Keys and values of the positions seen so far, for one block.
pub type KvEntry = Option<(Tensor, Tensor)>;

impl Attention {
    /// `residual + attention(x)`. `x`: (batch, seq, hidden); `offset`: position of `x`'s first
    /// token; `mask`: the additive causal (seq, offset + seq) mask, or `None` when a single
    /// token attends to everything (built once per forward and shared by the blocks; made here
    /// when missing).
    pub fn forward(
        &self,
        residual: &Tensor,
        x: &Tensor,
        rotary: &Rotary,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut KvEntry>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        if offset == 0 && t > 1 && cache.is_none() && super::kernels::fused_dtype(x) {
            // A whole sequence, nothing cached, f32 or f64 on the CPU: the fused kernel from the
            // projections to the output projection's input.
            let qkv = Tensor::cat(
                &[
                    linear(x, &self.q_proj)?,
                    linear(x, &self.k_proj)?,
                    linear(x, &self.v_proj)?,
                ],
                2,
            )?;
            let tables = rotary.tables(0, t)?;
            let out = super::kernels::attention::self_attention(
                &qkv,
                (&tables.0, &tables.1),
                (h, kvh, d),
                scale,
            )?;
            return residual + linear(&out, &self.o_proj)?;
        }
        let q = linear(x, &self.q_proj)?
            .reshape((b, t, h, d))?
            .transpose(1, 2)?;
        let k = linear(x, &self.k_proj)?
            .reshape((b, t, kvh, d))?
            .transpose(1, 2)?;
        let v = linear(x, &self.v_proj)?
            .reshape((b, t, kvh, d))?
            .transpose(1, 2)?;
        let q = rotary.apply(&q, offset)?;
        let mut k = rotary.apply(&k, offset)?;
        let mut v = v.contiguous()?;
        if let Some(entry) = cache {
            if let Some((pk, pv)) = entry.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *entry = Some((k.clone(), v.clone()));
        }
        if offset == 0 && t > 1 {
            // A sequence from its start: causal attention by query chunks.
            let built;
            let mask = if let Some(m) = mask {
                m
            } else {
                built = causal_mask(t, 0, q.dtype(), q.device())?;
                &built
            };
            let out = super::autograd::causal_attention(&q, &k, &v, scale, mask)?;
            return residual + linear(&out.transpose(1, 2)?.reshape((b, t, h * d))?, &self.o_proj)?;
        }
        // Continuing a cache: each kv head serves its group of query heads as extra rows, so
        // the cached keys and values are read in place, never repeated per query head.
        let groups = h / kvh;
        let len = k.dim(2)?;
        let rows = q.contiguous()?.reshape((b, kvh, groups * t, d))?;
        let scores = rows.matmul(&k.t()?)?.reshape((b, kvh, groups, t, len))?;
        let probs = super::autograd::attention_probs(&scores, scale, mask)?;
        let out = probs.reshape((b, kvh, groups * t, len))?.matmul(&v)?;
        let out = out
            .reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))?;
        residual + linear(&out, &self.o_proj)?
    }
}

/// The additive causal mask for `seq` new tokens after `offset` cached ones.
pub fn causal_mask(
    seq: usize,
    offset: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let total = offset + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (seq, total), device)?.to_dtype(dtype)
}
