//! Mean cross-entropy under a frozen output head, with the hidden states' gradient, in one pass
//! over bands of rows.
//!
//! Each task multiplies a band of hidden rows by the head (its logits, `band × vocabulary`,
//! exist only in the task's scratch), takes each row's log-sum-exp with the vectorised
//! exponential, turns the row into `softmax − onehot` in place and multiplies it back by the
//! head: the hidden rows' gradient. candle's chain for the same (max, subtract, exp, sum, log,
//! gather, divide, scatter) is eight passes over the logits with a tensor each.

use candle_core::{DType, Result, Tensor};

use super::{Chunks, Float, Mat, Strides, matmul, parallel_tasks, with_slice};

/// The loss summed over the rows, and (when asked) the gradient of the mean loss with respect
/// to `hidden`, (rows × hidden), in `hidden`'s dtype.
pub struct Output {
    pub loss_sum: f64,
    pub grad: Option<Tensor>,
}

/// Cross-entropy of `targets` (rows, u32) under the logits `hidden · headᵀ` (hidden:
/// rows × d, head: vocabulary × d), f32 or f64 on the CPU ([`super::fused_dtype`]). The
/// gradient is computed only when `with_grad`.
pub fn frozen_head(
    hidden: &Tensor,
    head: &Tensor,
    targets: &Tensor,
    with_grad: bool,
) -> Result<Output> {
    let (rows, d) = hidden.dims2()?;
    let (vocab, head_d) = head.dims2()?;
    if head_d != d || targets.dims() != [rows] || head.dtype() != hidden.dtype() {
        candle_core::bail!(
            "cross-entropy: hidden {:?}, head {:?}, targets {:?} do not fit",
            hidden.dims(),
            head.dims(),
            targets.dims()
        );
    }
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target {t} is outside the vocabulary of {vocab}");
    }
    let shape = (rows, d);
    match hidden.dtype() {
        DType::F32 => run::<f32>(hidden, head, &targets, with_grad, shape),
        DType::F64 => run::<f64>(hidden, head, &targets, with_grad, shape),
        other => candle_core::bail!("cross-entropy takes f32 or f64, not {other:?}"),
    }
}

fn run<T: Float>(
    hidden: &Tensor,
    head: &Tensor,
    targets: &[u32],
    with_grad: bool,
    (rows, d): (usize, usize),
) -> Result<Output> {
    let (loss_sum, grad) = with_slice::<T, _>(hidden, |h| {
        with_slice::<T, _>(head, |w| Ok(kernel(h, w, targets, with_grad, d)))
    })?;
    let grad = grad
        .map(|g| Tensor::from_vec(g, (rows, d), hidden.device()))
        .transpose()?;
    Ok(Output { loss_sum, grad })
}

/// The most logits a task holds at once (32 MiB of f32).
pub const MAX_BAND_LOGITS: usize = 1 << 23;

/// Rows per task with `threads` threads: one band per thread (each band multiplies by the whole
/// head, so more bands repeat its packing), its logits at most [`MAX_BAND_LOGITS`].
#[must_use]
pub fn band_rows(rows: usize, vocab: usize, threads: usize) -> usize {
    rows.div_ceil(threads.max(1))
        .min(MAX_BAND_LOGITS / vocab.max(1))
        .max(1)
}

fn kernel<T: Float>(
    hidden: &[T],
    head: &[T],
    targets: &[u32],
    with_grad: bool,
    d: usize,
) -> (f64, Option<Vec<T>>) {
    let rows = targets.len();
    let vocab = head.len() / d.max(1);
    let band = band_rows(rows, vocab, super::pool_threads());
    let bands = rows.div_ceil(band);
    let mut losses = vec![0f64; rows];
    let mut grad = with_grad.then(|| vec![T::zero(); rows * d]);
    {
        let loss_chunks = Chunks::new(&mut losses, band);
        let grad_chunks = grad.as_mut().map(|g| Chunks::new(g, band * d));
        #[expect(clippy::cast_precision_loss, reason = "a row count")]
        let inverse_rows = T::from_f64(1.0 / rows as f64);
        parallel_tasks(bands, |task, _| {
            let first = task * band;
            let n = band.min(rows - first);
            let mut logits = vec![T::zero(); n * vocab];
            matmul(
                &mut logits,
                Strides::rows(n, vocab, vocab),
                Mat(&hidden[first * d..], Strides::rows(n, d, d)),
                Mat(head, Strides::transposed(vocab, d, d)),
                T::one(),
                false,
            );
            loss_chunks.with(task, |losses| {
                for (i, row) in logits.chunks_mut(vocab).enumerate() {
                    let target = targets[first + i] as usize;
                    let target_logit = row[target];
                    let max = T::max_of(row);
                    let sum = T::exp_shifted(row, T::one(), max);
                    let log_sum_exp = max + sum.ln();
                    losses[i] = (log_sum_exp - target_logit).to_f64();
                    if with_grad {
                        // softmax − onehot (the sum accumulated in f64: see
                        // `Float::exp_shifted`); the mean's 1/rows is applied once, in the
                        // product with the head.
                        for x in row.iter_mut() {
                            *x /= sum;
                        }
                        row[target] -= T::one();
                    }
                }
            });
            if let Some(chunks) = &grad_chunks {
                chunks.with(task, |g| {
                    matmul(
                        g,
                        Strides::rows(n, d, d),
                        Mat(&logits, Strides::rows(n, vocab, vocab)),
                        Mat(head, Strides::rows(vocab, d, d)),
                        inverse_rows,
                        false,
                    );
                });
            }
        });
    }
    (losses.iter().sum(), grad)
}
