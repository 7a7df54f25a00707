//! Backward passes written by hand, attached to forwards computed without a graph.
//!
//! candle records every intermediate of a differentiable expression until the step ends. For the
//! expressions that dominate a training step's memory (attention probabilities, the loss over the
//! vocabulary, RMSNorm, a frozen block above a trainable one) the forward runs on detached
//! inputs, through candle's fused kernels where they exist, and [`attach`] links the result to
//! its input with a backward that needs at most the input and the output. The graph then holds
//! one node instead of a chain of full-size intermediates.

use std::sync::{Arc, Mutex};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, D, DType, Layout, Result, Shape, Storage, Tensor,
};

/// `(input, output, output gradient) → input gradient`.
type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// `output`, computed from `input` without a graph, as a differentiable function of `input`
/// whose gradient is `backward(input, output, grad_output)`. Without tracking on `input`,
/// `output` itself.
pub fn attach(
    input: &Tensor,
    output: Tensor,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(output);
    }
    input.apply_op1(Attached {
        output: Mutex::new(Some(output)),
        backward: Arc::new(backward),
    })
}

/// The graph node [`attach`] adds: forward hands over the precomputed output (copied into the
/// node's own storage; the precomputed tensor is dropped), backward calls the closure.
struct Attached {
    output: Mutex<Option<Tensor>>,
    backward: Arc<Backward>,
}

impl Attached {
    fn take(&self) -> Result<Tensor> {
        self.output
            .lock()
            .map_err(|_| candle_core::Error::Msg("attached output lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("attached output used twice".into()))
    }
}

/// A contiguous copy of `s` as laid out by `l` (an op's output must own its storage).
#[expect(
    unsafe_code,
    reason = "an allocation the copy fills entirely, instead of zeroing first"
)]
fn copy_of<S>(s: &S, l: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: `copy_strided_src` writes every one of the `l.shape()` elements allocated here
    // before anything reads them (this runs on every attached op, so a zeroing pass would cost
    // a full write of the output each time).
    let mut out = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
    s.copy_strided_src(&mut out, 0, l)?;
    Ok((out, l.shape().clone()))
}

impl CustomOp1 for Attached {
    fn name(&self) -> &'static str {
        "attached-backward"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let output = self.take()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => copy_of(s, layout),
            _ => candle_core::bail!("attached output is not on the CPU"),
        }
    }

    fn cuda_fwd(&self, _s: &CudaStorage, _l: &Layout) -> Result<(CudaStorage, Shape)> {
        let output = self.take()?;
        let (storage, _) = output.storage_and_layout();
        match &*storage {
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => copy_of(s, output.layout()),
            _ => candle_core::bail!("attached output is not on the GPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        (self.backward)(arg, res, grad_res).map(Some)
    }
}

/// The dtype reductions run in: f32, or f64 for f64 models (which exist for gradient checks).
pub(super) fn wide(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Attention probabilities `softmax(scores · scale + mask)` over the last axis, computed in f32
/// and returned in `scores`' dtype. The graph keeps the scores and the probabilities only;
/// backward is `scale · p ⊙ (g − Σ g ⊙ p)` in f32.
pub fn attention_probs(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let dtype = scores.dtype();
    let scaled = (scores.detach() * scale)?;
    let masked = match mask {
        Some(m) => scaled.broadcast_add(m)?,
        None => scaled,
    };
    let wide = wide(dtype);
    let probs =
        candle_nn::ops::softmax_last_dim(&masked.to_dtype(wide)?.contiguous()?)?.to_dtype(dtype)?;
    attach(scores, probs, move |_, p, g| {
        let p = p.to_dtype(wide)?;
        let g = g.to_dtype(wide)?;
        let dot = (&g * &p)?.sum_keepdim(D::Minus1)?;
        ((g.broadcast_sub(&dot)? * p)? * scale)?.to_dtype(dtype)
    })
}

/// Query rows per chunk of [`causal_attention`]: the scores held at once are
/// `batch × heads × ATTENTION_CHUNK × seq`, not `seq × seq`.
pub const ATTENTION_CHUNK: usize = 256;

/// Causal grouped-query attention over a whole sequence (no cache before it),
/// `softmax(q kᵀ · scale + causal) v`, a chunk of queries at a time: a chunk meets only the keys up
/// to its own last position (half the work of the full square on average), and neither forward
/// nor backward holds more than one chunk's scores. Backward recomputes each chunk's
/// probabilities from q and k (flash attention's scheme, with candle's kernels). Scores are
/// rounded as in the unchunked path: product and scale in the input dtype, softmax in f32,
/// probabilities cast back.
///
/// `q`: (batch, heads, seq, head_dim); `k`, `v`: (batch, kv_heads, seq, head_dim) with heads a
/// multiple of kv_heads (query head `i` reads kv head `i / groups`); `mask`: the additive
/// (seq, seq) causal mask in q's dtype on q's device, built once per forward and shared by every
/// block (each chunk reads its slice). Returns q's shape.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &Tensor,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    if mask.dims() != [t, t] {
        candle_core::bail!("causal attention: mask {:?} for {t} positions", mask.dims());
    }
    let mask = mask.clone();
    let kvh = k.dim(1)?;
    let groups = h / kvh;
    let q5 = q.reshape((b, kvh, groups, t, d))?;
    let track = q.track_op() || k.track_op() || v.track_op();
    let out = attention_forward(&q5.detach(), &k.detach(), &v.detach(), &mask, scale)?
        .reshape((b, h, t, d))?;
    if !track {
        return Ok(out);
    }
    // One input carrying q, k and v, so a single node returns all three gradients.
    let qkv = Tensor::cat(&[&q5, &k.unsqueeze(2)?, &v.unsqueeze(2)?], 2)?;
    attach(&qkv, out, move |qkv, _, grad| {
        let q5 = qkv.narrow(2, 0, groups)?;
        let k = qkv.narrow(2, groups, 1)?.squeeze(2)?;
        let v = qkv.narrow(2, groups + 1, 1)?.squeeze(2)?;
        let grad = grad.reshape((b, kvh, groups, t, d))?;
        let (dq, dk, dv) = attention_backward(&q5, &k, &v, &grad, &mask, scale)?;
        Tensor::cat(&[&dq, &dk.unsqueeze(2)?, &dv.unsqueeze(2)?], 2)
    })
}

/// The query chunks of a sequence of `t` positions: (start, length).
fn chunks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(ATTENTION_CHUNK)
        .map(move |s| (s, ATTENTION_CHUNK.min(t - s)))
}

/// One chunk's probabilities (f32, (b, kvh, g, n, s + n)) and its queries as rows
/// ((b, kvh, g·n, d), contiguous) for queries `s..s + n` of `q5` (b, kvh, g, t, d), given the
/// keys of positions `..s + n`.
fn chunk_probs(
    q5: &Tensor,
    keys: &Tensor,
    mask: &Tensor,
    s: usize,
    n: usize,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let (b, kvh, groups, _, d) = q5.dims5()?;
    let e = s + n;
    let rows = q5
        .narrow(3, s, n)?
        .contiguous()?
        .reshape((b, kvh, groups * n, d))?;
    let scores = (rows.matmul(&keys.t()?)? * scale)?.reshape((b, kvh, groups, n, e))?;
    let mask = mask.narrow(0, s, n)?.narrow(1, 0, e)?;
    let wide = wide(scores.dtype());
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?.to_dtype(wide)?)?;
    Ok((probs, rows))
}

fn attention_forward(
    q5: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, kvh, groups, t, d) = q5.dims5()?;
    let dtype = q5.dtype();
    let mut outs = Vec::new();
    for (s, n) in chunks(t) {
        let (probs, _) = chunk_probs(q5, &k.narrow(2, 0, s + n)?, mask, s, n, scale)?;
        let p = probs
            .to_dtype(dtype)?
            .reshape((b, kvh, groups * n, s + n))?;
        let out = p.matmul(&v.narrow(2, 0, s + n)?.contiguous()?)?;
        outs.push(out.reshape((b, kvh, groups, n, d))?);
    }
    Tensor::cat(&outs, 3)
}

/// Gradients of q5, k and v given the output gradient `grad` (b, kvh, g, t, d).
fn attention_backward(
    q5: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, kvh, groups, t, d) = q5.dims5()?;
    let dtype = q5.dtype();
    let wide = wide(dtype);
    let mut dk = Tensor::zeros((b, kvh, t, d), wide, q5.device())?;
    let mut dv = Tensor::zeros((b, kvh, t, d), wide, q5.device())?;
    let mut dqs = Vec::new();
    for (s, n) in chunks(t) {
        let e = s + n;
        let keys = k.narrow(2, 0, e)?.contiguous()?;
        let (probs, rows) = chunk_probs(q5, &keys, mask, s, n, scale)?;
        let values = v.narrow(2, 0, e)?.contiguous()?;
        let g = grad
            .narrow(3, s, n)?
            .contiguous()?
            .reshape((b, kvh, groups * n, d))?;
        let p = probs.to_dtype(dtype)?.reshape((b, kvh, groups * n, e))?;
        let value_grad = p.t()?.matmul(&g)?.to_dtype(wide)?;
        let dp = g
            .matmul(&values.t()?)?
            .to_dtype(wide)?
            .reshape((b, kvh, groups, n, e))?;
        let dot = (&dp * &probs)?.sum_keepdim(D::Minus1)?;
        let ds = ((dp.broadcast_sub(&dot)? * probs)? * scale)?
            .to_dtype(dtype)?
            .reshape((b, kvh, groups * n, e))?;
        dqs.push(ds.matmul(&keys)?.reshape((b, kvh, groups, n, d))?);
        let key_grad = ds.t()?.matmul(&rows)?.to_dtype(wide)?;
        dk = (dk + key_grad.pad_with_zeros(2, 0, t - e)?)?;
        dv = (dv + value_grad.pad_with_zeros(2, 0, t - e)?)?;
    }
    Ok((
        Tensor::cat(&dqs, 3)?,
        dk.to_dtype(dtype)?,
        dv.to_dtype(dtype)?,
    ))
}

/// RMSNorm with a frozen weight as HF computes it: `x / rms(x)` in f32, cast to `x`'s dtype,
/// times `w`. The graph keeps `x` only; backward is `(w ⊙ g − x̂ · mean(w ⊙ g ⊙ x̂)) / rms` with
/// `x̂ = x / rms`, in f32.
pub fn rms_norm_frozen(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    rms_norm_attached(x, Some(weight), eps)
}

/// `x / rms(x)` in f32, cast to `x`'s dtype, with the backward of [`rms_norm_frozen`]: a
/// trainable norm multiplies this by its weight with candle's product, which yields the weight's
/// gradient while the normalisation keeps only `x`.
pub fn rms_unit(x: &Tensor, eps: f64) -> Result<Tensor> {
    rms_norm_attached(x, None, eps)
}

fn rms_norm_attached(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    if super::kernels::fused_dtype(x) {
        // f32 or f64 on the CPU: one pass each way (f64 then normalises in f64, which the
        // gradient checks want).
        return super::kernels::norm::rms_norm(x, weight, eps);
    }
    let dtype = x.dtype();
    let wide = wide(dtype);
    let x_wide = x.detach().to_dtype(wide)?.contiguous()?;
    let w_wide = weight.map(|w| w.to_dtype(wide)).transpose()?;
    let hidden = x.dim(D::Minus1)?;
    let unit = if wide == DType::F32 {
        let ones = Tensor::ones(hidden, wide, x.device())?;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "epsilon is tiny; f32 holds it"
        )]
        candle_nn::ops::rms_norm(&x_wide, &ones, eps as f32)?
    } else {
        // candle's fused kernel has no f64.
        x_wide.broadcast_div(&(x_wide.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)?
    };
    let unit = unit.to_dtype(dtype)?;
    let normed = match weight {
        Some(w) => unit.broadcast_mul(w)?,
        None => unit,
    };
    attach(x, normed, move |x, _, g| {
        let x = x.to_dtype(wide)?;
        let g = g.to_dtype(wide)?;
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let x_hat = x.broadcast_mul(&inv_rms)?;
        let wg = match &w_wide {
            Some(w) => g.broadcast_mul(w)?,
            None => g,
        };
        let dot = (&wg * &x_hat)?.mean_keepdim(D::Minus1)?;
        (wg - x_hat.broadcast_mul(&dot)?)?
            .broadcast_mul(&inv_rms)?
            .to_dtype(dtype)
    })
}

/// Rows of logits computed at once by [`cross_entropy_frozen_head`]: bounds the f32 logits held
/// to `CE_CHUNK_ROWS × vocabulary` (256 MiB for Llama 3's 128k vocabulary).
pub const CE_CHUNK_ROWS: usize = 512;

/// Mean cross-entropy of `targets` (N) under the logits `hidden @ head^T` (hidden: N × d; the
/// head frozen), computed `CE_CHUNK_ROWS` rows at a time in f32: the full N × vocabulary logits
/// never exist. The gradient with respect to `hidden` is computed in the same pass
/// (`(softmax − onehot) @ head / N`) and kept for backward, so nothing is recomputed.
pub fn cross_entropy_frozen_head(
    hidden: &Tensor,
    head: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    let (rows, _) = hidden.dims2()?;
    let dtype = hidden.dtype();
    let wide = wide(dtype);
    let detached = hidden.detach();
    let track = hidden.track_op();
    if super::kernels::fused_dtype(hidden) {
        // f32 or f64 on the CPU: the fused kernel, which sums in f64.
        let out = super::kernels::cross_entropy::frozen_head(&detached, head, targets, track)?;
        #[expect(clippy::cast_precision_loss, reason = "a row count")]
        let loss = Tensor::new(out.loss_sum / rows as f64, hidden.device())?.to_dtype(wide)?;
        return match out.grad {
            None => Ok(loss),
            Some(grad_hidden) => attach(hidden, loss, move |_, _, g| {
                grad_hidden.broadcast_mul(&g.to_dtype(dtype)?)
            }),
        };
    }
    let mut loss_sum = Tensor::zeros((), wide, hidden.device())?;
    let mut grad_chunks = Vec::new();
    for start in (0..rows).step_by(CE_CHUNK_ROWS) {
        let len = CE_CHUNK_ROWS.min(rows - start);
        let h = detached.narrow(0, start, len)?;
        let t = targets.narrow(0, start, len)?.unsqueeze(1)?;
        let logits = h.matmul(&head.t()?)?.to_dtype(wide)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let exp = shifted.exp()?;
        let sum = exp.sum_keepdim(D::Minus1)?;
        let target_logit = shifted.gather(&t, 1)?;
        loss_sum = (loss_sum + (sum.log()? - target_logit)?.sum_all()?)?;
        if track {
            // softmax − one-hot: 1 taken from each row's target in place of a one-hot tensor.
            let minus_one = Tensor::full(-1f32, (len, 1), hidden.device())?.to_dtype(wide)?;
            let dlogits = exp.broadcast_div(&sum)?.scatter_add(&t, &minus_one, 1)?;
            grad_chunks.push(dlogits.to_dtype(dtype)?.matmul(head)?);
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "a row count")]
    let loss = (loss_sum / rows as f64)?;
    if !track {
        return Ok(loss);
    }
    let grad_hidden = (Tensor::cat(&grad_chunks, 0)?.to_dtype(wide)? / rows as f64)?;
    drop(grad_chunks);
    attach(hidden, loss, move |_, _, g| {
        grad_hidden
            .broadcast_mul(&g.to_dtype(wide)?)?
            .to_dtype(dtype)
    })
}

#[cfg(test)]
mod tests {
    //! Each hand-written backward against candle's autograd of the textbook expression (the
    //! reference), on fresh random inputs: f32 within 1e-5 relative (summation order), bf16
    //! within 2e-2 (its 8-bit mantissa over a few roundings).

    use super::*;
    use candle_core::{Device, Var};

    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.to_dtype(DType::F32).unwrap();
        let b = b.to_dtype(DType::F32).unwrap();
        let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
    }

    fn tolerance(dtype: DType) -> f32 {
        if dtype == DType::F32 { 1e-5 } else { 2e-2 }
    }

    /// Output and gradient within the dtype's tolerance of the reference's.
    fn assert_close(dtype: DType, ours: (&Tensor, &Tensor), reference: (&Tensor, &Tensor)) {
        let d = rel_diff(ours.0, reference.0);
        assert!(d <= tolerance(dtype), "{dtype:?} forward: {d}");
        let d = rel_diff(ours.1, reference.1);
        assert!(d <= tolerance(dtype), "{dtype:?} gradient: {d}");
    }

    /// Output and input gradient of `f` under a random output gradient.
    fn value_and_grad(
        x0: &Tensor,
        g: &Tensor,
        f: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> (Tensor, Tensor) {
        let x = Var::from_tensor(x0).unwrap();
        let y = f(x.as_tensor()).unwrap();
        let surrogate = (y.to_dtype(DType::F32).unwrap() * g.to_dtype(DType::F32).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = surrogate.backward().unwrap();
        (y, grads.get(x.as_tensor()).unwrap().clone())
    }

    fn randn(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn attention_probs_match_autograd_of_the_softmax() {
        let mask = crate::model::attention::causal_mask(6, 2, DType::F32, &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let scores = randn(&[2, 3, 6, 8], dtype);
            let g = randn(&[2, 3, 6, 8], dtype);
            let mask = mask.to_dtype(dtype).unwrap();
            let (ours, our_grad) =
                value_and_grad(&scores, &g, |s| attention_probs(s, 0.3, Some(&mask)));
            let (reference, ref_grad) = value_and_grad(&scores, &g, |s| {
                let s = (s * 0.3)?.broadcast_add(&mask)?.to_dtype(DType::F32)?;
                candle_nn::ops::softmax(&s, D::Minus1)?.to_dtype(dtype)
            });
            assert_close(dtype, (&ours, &our_grad), (&reference, &ref_grad));
        }
    }

    #[test]
    fn rms_norm_matches_autograd_of_the_formula() {
        for dtype in [DType::F32, DType::BF16] {
            let x = randn(&[2, 5, 16], dtype);
            let w = ((randn(&[16], DType::F32) * 0.1).unwrap() + 1.0)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let g = randn(&[2, 5, 16], dtype);
            let (ours, our_grad) = value_and_grad(&x, &g, |x| rms_norm_frozen(x, &w, 1e-5));
            let (reference, ref_grad) = value_and_grad(&x, &g, |x| {
                let x32 = x.to_dtype(DType::F32)?;
                let rms = (x32.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?.sqrt()?;
                x32.broadcast_div(&rms)?.to_dtype(dtype)?.broadcast_mul(&w)
            });
            assert_close(dtype, (&ours, &our_grad), (&reference, &ref_grad));
        }
    }

    /// Three query chunks (the last one partial), grouped heads, against the full square:
    /// repeated k/v, scores, the causal mask, candle's differentiable softmax.
    #[test]
    fn chunked_causal_attention_matches_the_full_square() {
        let t = 2 * ATTENTION_CHUNK + 37;
        let mask = crate::model::attention::causal_mask(t, 0, DType::F32, &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let qkv = randn(&[1, 2, 4, t, 8], dtype);
            let g = randn(&[1, 4, t, 8], dtype);
            let split = |qkv: &Tensor| {
                let q = qkv.narrow(2, 0, 2).unwrap().reshape((1, 4, t, 8)).unwrap();
                let k = qkv.narrow(2, 2, 1).unwrap().squeeze(2).unwrap();
                let v = qkv.narrow(2, 3, 1).unwrap().squeeze(2).unwrap();
                (q, k, v)
            };
            let mask = mask.to_dtype(dtype).unwrap();
            let (ours, our_grad) = value_and_grad(&qkv, &g, |qkv| {
                let (q, k, v) = split(qkv);
                causal_attention(&q, &k, &v, 0.35, &mask)
            });
            let (reference, ref_grad) = value_and_grad(&qkv, &g, |qkv| {
                let (q, k, v) = split(qkv);
                let repeat = |x: &Tensor| {
                    x.unsqueeze(2)?
                        .broadcast_as((1, 2, 2, t, 8))?
                        .reshape((1, 4, t, 8))
                };
                let (k, v) = (repeat(&k)?, repeat(&v)?);
                let s =
                    ((q.matmul(&k.t()?)? * 0.35)?.broadcast_add(&mask)?).to_dtype(DType::F32)?;
                candle_nn::ops::softmax(&s, D::Minus1)?
                    .to_dtype(dtype)?
                    .matmul(&v)
            });
            assert_close(dtype, (&ours, &our_grad), (&reference, &ref_grad));
        }
    }

    /// More rows than one chunk, so the chunking is exercised, against candle-nn's
    /// cross-entropy over the full logits.
    #[test]
    fn chunked_cross_entropy_matches_the_full_logits() {
        let rows = 2 * CE_CHUNK_ROWS + 77;
        for dtype in [DType::F32, DType::BF16] {
            let hidden = randn(&[rows, 8], dtype);
            let head = randn(&[50, 8], dtype);
            let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 7 + 3) % 50).collect();
            let targets = Tensor::new(targets, &Device::Cpu).unwrap();
            let one = Tensor::new(1f32, &Device::Cpu).unwrap();
            let (ours, our_grad) = value_and_grad(&hidden, &one, |h| {
                cross_entropy_frozen_head(h, &head, &targets)
            });
            let (reference, ref_grad) = value_and_grad(&hidden, &one, |h| {
                let logits = h.matmul(&head.t()?)?.to_dtype(DType::F32)?;
                candle_nn::loss::cross_entropy(&logits, &targets)
            });
            assert!(rel_diff(&ours, &reference) <= 1e-5, "{dtype:?} loss");
            let d = rel_diff(&our_grad, &ref_grad);
            assert!(d <= tolerance(dtype), "{dtype:?} gradient: {d}");
        }
    }

    #[test]
    fn without_tracking_attach_returns_the_forward_itself() {
        let x = randn(&[3, 4], DType::F32);
        let y = (&x * 2.0).unwrap();
        let out = attach(&x, y.clone(), |_, _, g| Ok(g.clone())).unwrap();
        assert!(!out.track_op());
        assert!(
            rel_diff(&out, &y) <= 0.0,
            "the forward is returned as it is"
        );
    }
}
