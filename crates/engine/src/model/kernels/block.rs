//! A frozen block on the CPU as two graph nodes: its attention half and its MLP half, each one
//! op with a hand-written backward built from the other kernels.
//!
//! candle's backward gives each op's input gradient a zero tensor and adds the gradient into it
//! (`GradStore::or_insert`, then an add): a pass and a fresh allocation per op input. With a
//! node per norm, projection, attention and SwiGLU that was nine activation-sized passes a
//! frozen block (bench/RESULTS.md, "CPU training: fused kernels"); as two nodes it is two, and
//! each half keeps for backward only what its kernels need: the q/k/v projections, the
//! attention output and its rows' softmax statistics; gate/up's projections.
//!
//! The attention half: `x + o(attention(rotate(qkv(norm₁(x)))))`; the MLP half:
//! `h + down(swiglu(gate_up(norm₂(h))))`. Their backward passes run the same kernels in reverse
//! (the projections' input gradients, attention's and SwiGLU's backward, the norm's backward
//! with the residual's gradient added in its pass).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::attention::{self, Dims, Saved};
use super::linear::FrozenLinear;
use super::swiglu::{self, Rows};
use super::{norm, slice_of};

/// A frozen block's weights prepared for the CPU kernels (shared with the block, not copied).
#[derive(Clone, Debug)]
pub struct FrozenBlock {
    /// The two norms' scales and their ε.
    input_norm: Tensor,
    post_attention_norm: Tensor,
    eps: f64,
    /// q, k and v side by side; o; gate and up side by side; down.
    qkv: FrozenLinear,
    o: FrozenLinear,
    gate_up: FrozenLinear,
    down: FrozenLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
}

/// The parts of a block [`FrozenBlock::new`] takes.
pub struct Parts<'a> {
    pub input_norm: &'a Tensor,
    pub post_attention_norm: &'a Tensor,
    pub eps: f64,
    /// q, k, v, o, gate, up, down, each `(out, in)`.
    pub projections: [&'a Tensor; 7],
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl FrozenBlock {
    pub fn new(parts: &Parts<'_>) -> Result<Self> {
        let [q, k, v, o, gate, up, down] = parts.projections;
        let hidden = parts.input_norm.dim(0)?;
        let qkv = FrozenLinear::new(&[q, k, v])?;
        let block = Self {
            input_norm: parts.input_norm.contiguous()?,
            post_attention_norm: parts.post_attention_norm.contiguous()?,
            eps: parts.eps,
            qkv,
            o: FrozenLinear::new(&[o])?,
            gate_up: FrozenLinear::new(&[gate, up])?,
            down: FrozenLinear::new(&[down])?,
            heads: parts.heads,
            kv_heads: parts.kv_heads,
            head_dim: parts.head_dim,
            intermediate: gate.dim(0)?,
        };
        let fits = block.qkv.sizes()
            == (hidden, (parts.heads + 2 * parts.kv_heads) * parts.head_dim)
            && block.o.sizes() == (parts.heads * parts.head_dim, hidden)
            && block.gate_up.sizes() == (hidden, 2 * block.intermediate)
            && block.down.sizes() == (block.intermediate, hidden)
            && parts.post_attention_norm.dims() == [hidden];
        if !fits {
            candle_core::bail!("frozen block: the projections do not fit the block's shape");
        }
        Ok(block)
    }

    /// The block on `x`: (batch, seq, hidden), a whole sequence from position 0, with the
    /// rotary tables of positions `0..seq`; f32 or f64 on the CPU. Differentiable in `x`.
    pub fn forward(&self, x: &Tensor, (cos, sin): (&Tensor, &Tensor)) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        let dims = Dims {
            batch,
            heads: self.heads,
            kv_heads: self.kv_heads,
            seq,
            head_dim: self.head_dim,
        };
        let keep = x.track_op();
        let h = x.contiguous()?.apply_op1(AttentionHalf {
            block: self.clone(),
            dims,
            cos: cos.to_dtype(x.dtype())?.contiguous()?,
            sin: sin.to_dtype(x.dtype())?.contiguous()?,
            keep,
            saved: Mutex::new(None),
        })?;
        h.apply_op1(MlpHalf {
            block: self.clone(),
            keep,
            saved: Mutex::new(None),
        })
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kept tensors of one half, taken by its backward.
fn take(saved: &Mutex<Option<Vec<Tensor>>>, name: &str) -> Result<Vec<Tensor>> {
    match locked(saved).take() {
        Some(v) => Ok(v),
        None => candle_core::bail!("{name}: backward without a kept forward"),
    }
}

/// A result vector as a tensor on the CPU (the halves keep theirs as tensors, of the input's
/// dtype, so one slot holds either).
fn kept<T: candle_core::WithDType>(v: Vec<T>, len: usize) -> Result<Tensor> {
    Tensor::from_vec(v, len, &candle_core::Device::Cpu)
}

/// Runs `f` on the slice of each of `tensors`.
fn with_slices<T: candle_core::WithDType, R>(
    tensors: &[&Tensor],
    f: impl FnOnce(&[&[T]]) -> Result<R>,
) -> Result<R> {
    let guards: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<_>>()?;
    let storages: Vec<_> = guards.iter().map(Tensor::storage_and_layout).collect();
    let mut slices = Vec::with_capacity(storages.len());
    for (storage, layout) in &storages {
        match &**storage {
            candle_core::Storage::Cpu(cpu) => slices.push(slice_of::<T>(cpu, layout)?),
            _ => candle_core::bail!("frozen block: a tensor is not on the CPU"),
        }
    }
    f(&slices)
}

/// `x + o(attention(qkv(norm₁(x))))`.
struct AttentionHalf {
    block: FrozenBlock,
    dims: Dims,
    cos: Tensor,
    sin: Tensor,
    keep: bool,
    /// qkv, out, the rows' softmax statistics.
    saved: Mutex<Option<Vec<Tensor>>>,
}

impl AttentionHalf {
    fn scale(&self) -> f64 {
        1.0 / (self.block.head_dim as f64).sqrt()
    }

    fn forward<T: Rows>(&self, x: &[T]) -> Result<Vec<T>> {
        let b = &self.block;
        let rows = self.dims.batch * self.dims.seq;
        let hidden = x.len() / rows.max(1);
        let (qkv, out, stats) = with_slices::<T, _>(&[&b.input_norm, &self.cos, &self.sin], |s| {
            let normed = norm::forward_rows(x, s[0], b.eps, hidden);
            let qkv = b.qkv.forward_into(&normed, rows, None)?;
            let (out, stats) =
                attention::forward(&qkv, (s[1], s[2]), self.dims, T::from_f64(self.scale()));
            Ok((qkv, out, stats))
        })?;
        let y = b.o.forward_into(&out, rows, Some(x))?;
        if self.keep {
            let lens = (qkv.len(), out.len(), stats.len());
            *locked(&self.saved) = Some(vec![
                kept(qkv, lens.0)?,
                kept(out, lens.1)?,
                kept(stats, lens.2)?,
            ]);
        }
        Ok(y)
    }

    fn backward<T: Rows>(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let [qkv, out, stats]: [Tensor; 3] = take(&self.saved, "attention half")?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("attention half: kept tensors".into()))?;
        let b = &self.block;
        let rows = self.dims.batch * self.dims.seq;
        let tensors = [
            x,
            grad,
            &qkv,
            &out,
            &stats,
            &b.input_norm,
            &self.cos,
            &self.sin,
        ];
        let dx = with_slices::<T, _>(&tensors, |s| {
            let [x, g, qkv, out, stats, w, cos, sin] = s else {
                candle_core::bail!("attention half: eight slices");
            };
            let hidden = x.len() / rows.max(1);
            let d_out = b.o.input_gradient(g, rows)?;
            let saved = Saved {
                out,
                row_stats: stats,
                grad: &d_out,
            };
            let scale = T::from_f64(self.scale());
            let d_qkv = attention::backward(qkv, (cos, sin), &saved, self.dims, scale);
            let d_normed = b.qkv.input_gradient(&d_qkv, rows)?;
            Ok(norm::backward_rows(
                x,
                &d_normed,
                (w, b.eps),
                hidden,
                Some(g),
            ))
        })?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

/// `h + down(swiglu(gate_up(norm₂(h))))`.
struct MlpHalf {
    block: FrozenBlock,
    keep: bool,
    /// gate/up's projections.
    saved: Mutex<Option<Vec<Tensor>>>,
}

impl MlpHalf {
    fn forward<T: Rows>(&self, h: &[T], rows: usize) -> Result<Vec<T>> {
        let b = &self.block;
        let hidden = h.len() / rows.max(1);
        let gate_up = with_slices::<T, _>(&[&b.post_attention_norm], |s| {
            let normed = norm::forward_rows(h, s[0], b.eps, hidden);
            b.gate_up.forward_into(&normed, rows, None)
        })?;
        let hidden_act = swiglu::forward(&gate_up, b.intermediate);
        let y = b.down.forward_into(&hidden_act, rows, Some(h))?;
        if self.keep {
            let len = gate_up.len();
            *locked(&self.saved) = Some(vec![kept(gate_up, len)?]);
        }
        Ok(y)
    }

    fn backward<T: Rows>(&self, h: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let [gate_up]: [Tensor; 1] = take(&self.saved, "mlp half")?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("mlp half: kept tensors".into()))?;
        let b = &self.block;
        let dh = with_slices::<T, _>(&[h, grad, &gate_up, &b.post_attention_norm], |s| {
            let [h, g, gate_up, w] = s else {
                candle_core::bail!("mlp half: four slices");
            };
            let rows = gate_up.len() / (2 * b.intermediate).max(1);
            let hidden = h.len() / rows.max(1);
            let d_act = b.down.input_gradient(g, rows)?;
            let d_gate_up = swiglu::backward(gate_up, &d_act, b.intermediate);
            let d_normed = b.gate_up.input_gradient(&d_gate_up, rows)?;
            Ok(norm::backward_rows(
                h,
                &d_normed,
                (w, b.eps),
                hidden,
                Some(g),
            ))
        })?;
        Tensor::from_vec(dh, h.shape(), h.device())
    }
}

/// Rows of a (…, hidden) layout.
fn rows_of(layout: &Layout) -> usize {
    let dims = layout.shape().dims();
    dims[..dims.len().saturating_sub(1)].iter().product()
}

impl CustomOp1 for AttentionHalf {
    fn name(&self) -> &'static str {
        "frozen-block-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward::<f32>(slice_of(storage, layout)?)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward::<f64>(slice_of(storage, layout)?)?),
            other => candle_core::bail!("frozen block takes f32 or f64, not {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        match x.dtype() {
            DType::F32 => self.backward::<f32>(x, grad).map(Some),
            DType::F64 => self.backward::<f64>(x, grad).map(Some),
            other => candle_core::bail!("frozen block takes f32 or f64, not {other:?}"),
        }
    }
}

impl CustomOp1 for MlpHalf {
    fn name(&self) -> &'static str {
        "frozen-block-mlp"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let rows = rows_of(layout);
        let out = match storage {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.forward::<f32>(slice_of(storage, layout)?, rows)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.forward::<f64>(slice_of(storage, layout)?, rows)?)
            }
            other => candle_core::bail!("frozen block takes f32 or f64, not {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, h: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        match h.dtype() {
            DType::F32 => self.backward::<f32>(h, grad).map(Some),
            DType::F64 => self.backward::<f64>(h, grad).map(Some),
            other => candle_core::bail!("frozen block takes f32 or f64, not {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use crate::model::Rotary;
    use crate::model::random::{llama, tiny_config};

    use super::*;

    /// A prepared block against the same block through its per-op path (each op checked against
    /// candle's autograd of its formula in its own tests): output and input gradient, with two
    /// sequences and a query block and a half; f32 within 1e-5 relative, f64 within 1e-12.
    #[test]
    fn a_prepared_block_matches_its_per_op_path() {
        let mut config = tiny_config();
        let t = attention::BLOCK + 29;
        config.max_position_embeddings = t;
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let model = llama(&config, 3, dtype, &Device::Cpu).unwrap();
            let plain = model.blocks[1].clone();
            let mut prepared = plain.clone();
            assert!(prepared.prepare_frozen_linears().unwrap());
            let rotary = Rotary::new(&config, dtype, &Device::Cpu).unwrap();
            let x0 = Tensor::randn(0f32, 1.0, (2, t, config.hidden_size), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let g = Tensor::randn(0f32, 1.0, (2, t, config.hidden_size), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let run = |block: &crate::model::Block| {
                let x = Var::from_tensor(&x0).unwrap();
                let y = block
                    .forward(x.as_tensor(), &rotary, 0, None, None)
                    .unwrap();
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                [y, grads.get(x.as_tensor()).unwrap().clone()]
            };
            for (name, (a, b)) in ["out", "dx"]
                .iter()
                .zip(run(&prepared).iter().zip(&run(&plain)))
            {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let scale = b.abs().unwrap().max_all().unwrap();
                let rel = (diff / scale).unwrap().to_dtype(DType::F64).unwrap();
                let rel = rel.to_scalar::<f64>().unwrap();
                assert!(rel <= tolerance, "{dtype:?} {name}: {rel}");
            }
        }
    }

    /// Replacing a parameter drops the preparation: the block then runs its per-op path with
    /// the new weight.
    #[test]
    fn replacing_a_parameter_drops_the_preparation() {
        let config = tiny_config();
        let model = llama(&config, 3, DType::F32, &Device::Cpu).unwrap();
        let mut block = model.blocks[0].clone();
        block.prepare_frozen_linears().unwrap();
        assert!(block.is_prepared());
        block.set_trainable(true).unwrap();
        assert!(!block.is_prepared());
        assert!(
            !block.prepare_frozen_linears().unwrap(),
            "a trainable block is not prepared"
        );
    }
}
