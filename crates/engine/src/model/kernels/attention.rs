//! Self-attention from the q/k/v projections to the input of the output projection, forward and
//! backward, fused: rotary embedding, causal grouped-query attention and the layout changes
//! between them.
//!
//! Input: the projections side by side, `(batch, seq, (heads + 2·kv_heads)·head_dim)` —
//! queries, then keys, then values, token-major as the projection writes them. Output:
//! `(batch, seq, heads·head_dim)`, token-major as the output projection reads it. Rotation
//! writes the queries and keys once into a scratch buffer; everything else reads the token-major
//! buffers through strides, so no transpose is ever copied.
//!
//! Flash attention's scheme on the CPU: the sequence is cut into blocks of [`BLOCK`] queries; a
//! task (one query head, one block) computes its scores against the keys up to the block's end
//! with one matrix product, the softmax in place, and its output with a second, keeping per query
//! row only its largest score and its sum of exponentials. Backward recomputes the rotation and each block's
//! probabilities from that, so neither pass holds more than a block's scores per thread and no
//! intermediate becomes a tensor. Key and value gradients are summed per pool thread and added
//! up at the end (the blocks of one kv head run on any thread).
//!
//! Numerically it is the textbook expression — HF's half-split rotation, then
//! `softmax(q kᵀ · scale + causal) v` in the input dtype — checked against candle's autograd of
//! it in the tests.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::{
    Chunks, Float, Mat, Strides, matmul, parallel_tasks, pool_threads, slice_of, with_slice,
};

/// Query rows per task.
pub const BLOCK: usize = 64;

/// The attention of a block on its projections `qkv`: (batch, seq, (heads + 2·kv_heads)·
/// head_dim), queries then keys then values, each head's `head_dim` values together; `cos` and
/// `sin`: the rotary tables of positions `0..seq`, (seq, head_dim / 2). f32 or f64 on the CPU
/// ([`super::fused_dtype`]). Returns (batch, seq, heads·head_dim); differentiable in `qkv`.
pub fn self_attention(
    qkv: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    (heads, kv_heads, head_dim): (usize, usize, usize),
    scale: f64,
) -> Result<Tensor> {
    if scale.is_nan() || scale <= 0.0 {
        candle_core::bail!("fused attention: the scale must be positive, not {scale}");
    }
    let (batch, seq, width) = qkv.dims3()?;
    let dims = Dims {
        batch,
        heads,
        kv_heads,
        seq,
        head_dim,
    };
    if kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || !head_dim.is_multiple_of(2)
        || width != (heads + 2 * kv_heads) * head_dim
        || cos.dims() != [seq, head_dim / 2]
        || sin.dims() != [seq, head_dim / 2]
    {
        candle_core::bail!(
            "fused attention: projections {:?} do not fit {heads} heads over {kv_heads} kv heads \
             of {head_dim} (rotary tables {:?})",
            qkv.dims(),
            cos.dims()
        );
    }
    qkv.contiguous()?.apply_op1(SelfAttention {
        dims,
        scale,
        cos: cos.to_dtype(qkv.dtype())?.contiguous()?,
        sin: sin.to_dtype(qkv.dtype())?.contiguous()?,
        row_stats: Mutex::new(None),
    })
}

/// The sizes of one call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

impl Dims {
    /// Values per token of the input: queries, keys, values.
    fn qkv_width(self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Values per token of the rotated queries and keys.
    fn qk_width(self) -> usize {
        (self.heads + self.kv_heads) * self.head_dim
    }

    /// Values per token of the output (and of the query gradient).
    fn out_width(self) -> usize {
        self.heads * self.head_dim
    }

    /// Values per token of the key (and value) gradient.
    fn kv_width(self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn blocks(self) -> usize {
        self.seq.div_ceil(BLOCK)
    }

    fn tasks(self) -> usize {
        self.batch * self.heads * self.blocks()
    }

    /// Task `i` as (batch, head, block): the longest blocks (the last ones) first, so the short
    /// ones fill in at the end.
    fn task(self, i: usize) -> Task {
        let per_block = self.batch * self.heads;
        let block = self.blocks() - 1 - i / per_block;
        let (batch, head) = ((i % per_block) / self.heads, i % self.heads);
        let start = block * BLOCK;
        Task {
            batch,
            head,
            kv_head: head / (self.heads / self.kv_heads),
            block,
            start,
            rows: BLOCK.min(self.seq - start),
        }
    }

    /// The chunk of a token-major buffer holding the rows of a task's block.
    fn chunk(self, task: &Task) -> usize {
        task.batch * self.blocks() + task.block
    }
}

/// One query head over one block of queries.
struct Task {
    batch: usize,
    head: usize,
    kv_head: usize,
    block: usize,
    /// The block's first query position and its number of queries.
    start: usize,
    rows: usize,
}

impl Task {
    /// Keys the block attends to: every position up to its last query.
    fn keys(&self) -> usize {
        self.start + self.rows
    }
}

/// One chunk per (batch, block) of a token-major buffer of `width` values per token.
fn block_chunks<T>(data: &mut [T], dims: Dims, width: usize) -> Chunks<'_, T> {
    Chunks::from_chunks(
        data.chunks_mut(dims.seq * width)
            .flat_map(|per_batch| per_batch.chunks_mut(BLOCK * width)),
    )
}

/// Rotates `x` (head_dim values of one head at one position) by the position's angles, HF's
/// half-split layout; `direction` −1 rotates back (the transpose, for gradients).
fn rotate<T: Float>(out: &mut [T], x: &[T], cos: &[T], sin: &[T], direction: T) {
    let half = cos.len();
    for c in 0..half {
        let (a, b) = (x[c], x[c + half]);
        let s = sin[c] * direction;
        out[c] = a * cos[c] - b * s;
        out[c + half] = b * cos[c] + a * s;
    }
}

/// The queries and keys of `qkv`, rotated: (batch, seq, (heads + kv_heads)·head_dim).
fn rotated_qk<T: Float>(qkv: &[T], cos: &[T], sin: &[T], dims: Dims) -> Vec<T> {
    let (d, half) = (dims.head_dim, dims.head_dim / 2);
    let (width, qk_width) = (dims.qkv_width(), dims.qk_width());
    let mut qk = vec![T::zero(); dims.batch * dims.seq * qk_width];
    let chunks = block_chunks(&mut qk, dims, qk_width);
    parallel_tasks(dims.batch * dims.blocks(), |chunk, _| {
        let (batch, block) = (chunk / dims.blocks(), chunk % dims.blocks());
        chunks.with(chunk, |rows| {
            for (i, out) in rows.chunks_mut(qk_width).enumerate() {
                let pos = block * BLOCK + i;
                let x = &qkv[(batch * dims.seq + pos) * width..][..qk_width];
                let (cos, sin) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
                for (o, x) in out.chunks_mut(d).zip(x.chunks(d)) {
                    rotate(o, x, cos, sin, T::one());
                }
            }
        });
    });
    qk
}

/// What the tasks read: the rotated queries and keys, the projections (for the values).
struct Inputs<'a, T> {
    qk: &'a [T],
    qkv: &'a [T],
    dims: Dims,
}

impl<T: Float> Inputs<'_, T> {
    /// The task's queries: rows × head_dim.
    fn queries(&self, task: &Task) -> Mat<'_, T> {
        let w = self.dims.qk_width();
        let at = (task.batch * self.dims.seq + task.start) * w + task.head * self.dims.head_dim;
        Mat(
            &self.qk[at..],
            Strides::rows(task.rows, self.dims.head_dim, w),
        )
    }

    /// The task's keys: keys × head_dim.
    fn keys(&self, task: &Task) -> Mat<'_, T> {
        let w = self.dims.qk_width();
        let col = (self.dims.heads + task.kv_head) * self.dims.head_dim;
        let at = task.batch * self.dims.seq * w + col;
        Mat(
            &self.qk[at..],
            Strides::rows(task.keys(), self.dims.head_dim, w),
        )
    }

    /// The task's values: keys × head_dim.
    fn values(&self, task: &Task) -> Mat<'_, T> {
        let w = self.dims.qkv_width();
        let col = (self.dims.heads + self.dims.kv_heads + task.kv_head) * self.dims.head_dim;
        let at = task.batch * self.dims.seq * w + col;
        Mat(
            &self.qkv[at..],
            Strides::rows(task.keys(), self.dims.head_dim, w),
        )
    }

    /// The task's probabilities in `p` (rows × keys): the scores from its queries and keys,
    /// `exp(s · scale − shift_i)` on each row's causal part and 0 past it, where `shift_i` is
    /// what `shift` returns for the row's causal scores. Returns each row's sum.
    fn probabilities(
        &self,
        p: &mut [T],
        task: &Task,
        scale: T,
        mut shift: impl FnMut(usize, &[T]) -> T,
    ) -> Vec<T> {
        let keys = task.keys();
        let Mat(k, k_view) = self.keys(task);
        let k_t = Strides::transposed(k_view.rows, k_view.cols, k_view.row_stride);
        matmul(
            p,
            Strides::rows(task.rows, keys, keys),
            self.queries(task),
            Mat(k, k_t),
            T::one(),
            false,
        );
        p.chunks_mut(keys)
            .enumerate()
            .map(|(i, row)| {
                let (live, masked) = row.split_at_mut(task.start + i + 1);
                let by = shift(i, live);
                masked.fill(T::zero());
                T::exp_shifted(live, scale, by)
            })
            .collect()
    }
}

/// Copies a task's `rows × head_dim` result into its head's columns of a token-major chunk.
fn place<T: Copy>(chunk: &mut [T], local: &[T], width: usize, head_dim: usize, col: usize) {
    for (dst, src) in chunk.chunks_mut(width).zip(local.chunks(head_dim)) {
        dst[col..col + head_dim].copy_from_slice(src);
    }
}

/// Values kept per query row: the row's largest scaled score and the reciprocal of its sum of
/// exponentials, with which backward recomputes exactly the forward's probabilities (a single
/// log-sum-exp would fold both into one rounded value).
pub(super) const ROW_STATS: usize = 2;

/// The output `(batch, seq, heads·head_dim)` and the [`ROW_STATS`] of every query row.
pub(super) fn forward<T: Float>(
    qkv: &[T],
    (cos, sin): (&[T], &[T]),
    dims: Dims,
    scale: T,
) -> (Vec<T>, Vec<T>) {
    let d = dims.head_dim;
    let qk = rotated_qk(qkv, cos, sin, dims);
    let inputs = Inputs { qk: &qk, qkv, dims };
    let width = dims.out_width();
    let mut out = vec![T::zero(); dims.batch * dims.seq * width];
    // (batch, head, position, stat), as the backward reads it.
    let mut stats = vec![T::zero(); dims.batch * dims.heads * dims.seq * ROW_STATS];
    {
        let outs = block_chunks(&mut out, dims, width);
        let stat_chunks = Chunks::from_chunks(
            stats
                .chunks_mut(dims.seq * ROW_STATS)
                .flat_map(|per_head| per_head.chunks_mut(BLOCK * ROW_STATS)),
        );
        parallel_tasks(dims.tasks(), |i, _| {
            let task = dims.task(i);
            let keys = task.keys();
            let mut p = vec![T::zero(); task.rows * keys];
            let mut row_stats = vec![T::zero(); task.rows * ROW_STATS];
            let sums = inputs.probabilities(&mut p, &task, scale, |i, live| {
                let max = T::max_of(live) * scale;
                row_stats[i * ROW_STATS] = max;
                max
            });
            for (stat, sum) in row_stats.chunks_mut(ROW_STATS).zip(sums) {
                stat[1] = T::one() / sum;
            }
            let chunk = (task.batch * dims.heads + task.head) * dims.blocks() + task.block;
            stat_chunks.with(chunk, |s| s.copy_from_slice(&row_stats));
            let mut local = vec![T::zero(); task.rows * d];
            matmul(
                &mut local,
                Strides::rows(task.rows, d, d),
                Mat(&p, Strides::rows(task.rows, keys, keys)),
                inputs.values(&task),
                T::one(),
                false,
            );
            for (row, stat) in local.chunks_mut(d).zip(row_stats.chunks(ROW_STATS)) {
                for x in row {
                    *x *= stat[1];
                }
            }
            outs.with(dims.chunk(&task), |o| {
                place(o, &local, width, d, task.head * d);
            });
        });
    }
    (out, stats)
}

/// The saved forward (`out`, the [`ROW_STATS`]) and the output gradient `grad`.
pub(super) struct Saved<'a, T> {
    pub out: &'a [T],
    pub row_stats: &'a [T],
    pub grad: &'a [T],
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The gradient of the projections, laid out as `qkv`.
pub(super) fn backward<T: Float>(
    qkv: &[T],
    (cos, sin): (&[T], &[T]),
    saved: &Saved<'_, T>,
    dims: Dims,
    scale: T,
) -> Vec<T> {
    let d = dims.head_dim;
    let qk = rotated_qk(qkv, cos, sin, dims);
    let inputs = Inputs { qk: &qk, qkv, dims };
    let (out_width, kv_width) = (dims.out_width(), dims.kv_width());
    let tokens = dims.batch * dims.seq;
    // Gradients of the rotated queries; per pool thread, sums of the rotated keys' and the
    // values' gradients of the blocks it ran.
    let mut dq = vec![T::zero(); tokens * out_width];
    let per_thread: Vec<Mutex<(Vec<T>, Vec<T>)>> = (0..pool_threads())
        .map(|_| {
            let zeros = vec![T::zero(); tokens * kv_width];
            Mutex::new((zeros.clone(), zeros))
        })
        .collect();
    {
        let dqs = block_chunks(&mut dq, dims, out_width);
        parallel_tasks(dims.tasks(), |i, thread| {
            let task = dims.task(i);
            let keys = task.keys();
            let first = (task.batch * dims.seq + task.start) * out_width + task.head * d;
            let rows = Strides::rows(task.rows, d, out_width);
            let (o_rows, g_rows) = (&saved.out[first..], &saved.grad[first..]);
            let first_stat =
                ((task.batch * dims.heads + task.head) * dims.seq + task.start) * ROW_STATS;
            let stats = &saved.row_stats[first_stat..][..task.rows * ROW_STATS];
            let mut p = vec![T::zero(); task.rows * keys];
            inputs.probabilities(&mut p, &task, scale, |i, _| stats[i * ROW_STATS]);
            for (row, stat) in p.chunks_mut(keys).zip(stats.chunks(ROW_STATS)) {
                for x in row {
                    *x *= stat[1];
                }
            }
            // dP = dO · Vᵀ, then dS = P ⊙ (dP − rowsum(dO ⊙ O)) · scale in its place.
            let mut ds = vec![T::zero(); task.rows * keys];
            let Mat(v, v_view) = inputs.values(&task);
            matmul(
                &mut ds,
                Strides::rows(task.rows, keys, keys),
                Mat(g_rows, rows),
                Mat(v, Strides::transposed(keys, d, v_view.row_stride)),
                T::one(),
                false,
            );
            for i in 0..task.rows {
                let at = i * out_width;
                let dot = T::dot(&g_rows[at..][..d], &o_rows[at..][..d]);
                let live = task.start + i + 1;
                let p_row = &p[i * keys..][..live];
                let ds_row = &mut ds[i * keys..][..keys];
                for (g, &pr) in ds_row[..live].iter_mut().zip(p_row) {
                    *g = pr * (*g - dot) * scale;
                }
                ds_row[live..].fill(T::zero());
            }
            let mut local = vec![T::zero(); task.rows * d];
            matmul(
                &mut local,
                Strides::rows(task.rows, d, d),
                Mat(&ds, Strides::rows(task.rows, keys, keys)),
                inputs.keys(&task),
                T::one(),
                false,
            );
            dqs.with(dims.chunk(&task), |chunk| {
                place(chunk, &local, out_width, d, task.head * d);
            });
            let mut sums = locked(&per_thread[thread]);
            let (dk, dv) = &mut *sums;
            let at = task.batch * dims.seq * kv_width + task.kv_head * d;
            let acc = Strides::rows(keys, d, kv_width);
            matmul(
                &mut dk[at..],
                acc,
                Mat(&ds, Strides::transposed(task.rows, keys, keys)),
                inputs.queries(&task),
                T::one(),
                true,
            );
            matmul(
                &mut dv[at..],
                acc,
                Mat(&p, Strides::transposed(task.rows, keys, keys)),
                Mat(g_rows, rows),
                T::one(),
                true,
            );
        });
    }
    let mut sums = per_thread.into_iter().map(|m| {
        m.into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    });
    let (mut dk, mut dv) = sums.next().unwrap_or_default();
    for (k_part, v_part) in sums {
        for (a, b) in dk.iter_mut().zip(k_part).chain(dv.iter_mut().zip(v_part)) {
            *a += b;
        }
    }
    // Back through the rotation, into the projections' layout.
    let (width, half) = (dims.qkv_width(), d / 2);
    let mut dqkv = vec![T::zero(); tokens * width];
    let chunks = block_chunks(&mut dqkv, dims, width);
    parallel_tasks(dims.batch * dims.blocks(), |chunk, _| {
        let (batch, block) = (chunk / dims.blocks(), chunk % dims.blocks());
        chunks.with(chunk, |rows| {
            for (i, out) in rows.chunks_mut(width).enumerate() {
                let pos = block * BLOCK + i;
                let token = batch * dims.seq + pos;
                let (cos, sin) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
                let (q_part, rest) = out.split_at_mut(out_width);
                let (k_part, v_part) = rest.split_at_mut(kv_width);
                let sources = [
                    (q_part, &dq[token * out_width..][..out_width]),
                    (k_part, &dk[token * kv_width..][..kv_width]),
                ];
                for (dst, src) in sources {
                    for (o, g) in dst.chunks_mut(d).zip(src.chunks(d)) {
                        rotate(o, g, cos, sin, T::zero() - T::one());
                    }
                }
                v_part.copy_from_slice(&dv[token * kv_width..][..kv_width]);
            }
        });
    });
    dqkv
}

/// The candle op: forward on raw storage, the log-sum-exp kept for backward.
struct SelfAttention {
    dims: Dims,
    scale: f64,
    cos: Tensor,
    sin: Tensor,
    row_stats: Mutex<Option<Tensor>>,
}

impl SelfAttention {
    fn run_forward<T: Float>(&self, qkv: &[T], scale: T) -> Result<Vec<T>> {
        let (out, stats) = with_slice::<T, _>(&self.cos, |cos| {
            with_slice::<T, _>(&self.sin, |sin| {
                Ok(forward(qkv, (cos, sin), self.dims, scale))
            })
        })?;
        let dims = (self.dims.batch, self.dims.heads, self.dims.seq, ROW_STATS);
        *locked(&self.row_stats) = Some(Tensor::from_vec(stats, dims, &candle_core::Device::Cpu)?);
        Ok(out)
    }

    fn run_backward<T: Float>(
        &self,
        qkv: &Tensor,
        out: &Tensor,
        grad: &Tensor,
        scale: T,
    ) -> Result<Tensor> {
        let Some(row_stats) = locked(&self.row_stats).clone() else {
            candle_core::bail!("fused attention: backward before forward");
        };
        let dqkv = with_slice::<T, _>(qkv, |qkv| {
            with_slice::<T, _>(&self.cos, |cos| {
                with_slice::<T, _>(&self.sin, |sin| {
                    with_slice::<T, _>(out, |out| {
                        with_slice::<T, _>(&row_stats, |row_stats| {
                            with_slice::<T, _>(grad, |grad| {
                                let saved = Saved {
                                    out,
                                    row_stats,
                                    grad,
                                };
                                Ok(backward(qkv, (cos, sin), &saved, self.dims, scale))
                            })
                        })
                    })
                })
            })
        })?;
        Tensor::from_vec(dqkv, qkv.shape(), qkv.device())
    }
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "fused-self-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = Shape::from((self.dims.batch, self.dims.seq, self.dims.out_width()));
        match storage {
            CpuStorage::F32(_) => {
                #[expect(clippy::cast_possible_truncation, reason = "1/sqrt(head_dim)")]
                let scale = self.scale as f32;
                let out = self.run_forward(slice_of(storage, layout)?, scale)?;
                Ok((CpuStorage::F32(out), shape))
            }
            CpuStorage::F64(_) => {
                let out = self.run_forward(slice_of(storage, layout)?, self.scale)?;
                Ok((CpuStorage::F64(out), shape))
            }
            other => {
                candle_core::bail!("fused attention takes f32 or f64, not {:?}", other.dtype())
            }
        }
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        match qkv.dtype() {
            DType::F32 => {
                #[expect(clippy::cast_possible_truncation, reason = "1/sqrt(head_dim)")]
                let scale = self.scale as f32;
                self.run_backward(qkv, out, grad, scale).map(Some)
            }
            DType::F64 => self.run_backward(qkv, out, grad, self.scale).map(Some),
            other => candle_core::bail!("fused attention takes f32 or f64, not {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;
    use crate::model::random::tiny_config;
    use crate::model::rope::Rotary;

    const HEADS: usize = 6;
    const KV_HEADS: usize = 2;
    const HEAD_DIM: usize = 16;

    /// The textbook path through candle's autograd: split, transpose, `rope_slow`, repeated
    /// k/v, the full square of scores with the causal mask, candle's differentiable softmax.
    fn reference(qkv: &Tensor, cos: &Tensor, sin: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, t, _) = qkv.dims3()?;
        let (h, kvh, d) = (HEADS, KV_HEADS, HEAD_DIM);
        let heads = |from: usize, n: usize| {
            qkv.narrow(2, from * d, n * d)?
                .reshape((b, t, n, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = candle_nn::rotary_emb::rope_slow(&heads(0, h)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_slow(&heads(h, kvh)?, cos, sin)?;
        let v = heads(h + kvh, kvh)?;
        let repeat = |x: &Tensor| {
            x.unsqueeze(2)?
                .broadcast_as((b, kvh, h / kvh, t, d))?
                .reshape((b, h, t, d))
        };
        let mask = crate::model::attention::causal_mask(t, 0, q.dtype(), q.device())?;
        let s = (q.matmul(&repeat(&k)?.t()?)? * scale)?.broadcast_add(&mask)?;
        candle_nn::ops::softmax(&s, D::Minus1)?
            .matmul(&repeat(&v)?)?
            .transpose(1, 2)?
            .reshape((b, t, h * d))
    }

    /// Output and projection gradient under a random output gradient.
    fn run(qkv: &Tensor, g: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> [Tensor; 2] {
        let var = Var::from_tensor(qkv).unwrap();
        let y = f(var.as_tensor()).unwrap();
        let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
        [y, grads.get(var.as_tensor()).unwrap().clone()]
    }

    /// Several blocks (the last one partial), two sequences, grouped heads; f32 within 1e-5 of
    /// the largest magnitude, f64 within 1e-12.
    #[test]
    fn fused_attention_matches_autograd_of_the_textbook_expression() {
        let t = 2 * BLOCK + 37;
        let mut config = tiny_config();
        config.head_dim = HEAD_DIM;
        config.max_position_embeddings = t;
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let randn = |shape: &[usize]| {
                Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let rotary = Rotary::new(&config, dtype, &Device::Cpu).unwrap();
            let (cos, sin) = rotary.tables(0, t).unwrap();
            let qkv = randn(&[2, t, (HEADS + 2 * KV_HEADS) * HEAD_DIM]);
            let g = randn(&[2, t, HEADS * HEAD_DIM]);
            let dims = (HEADS, KV_HEADS, HEAD_DIM);
            let ours = run(&qkv, &g, |x| self_attention(x, (&cos, &sin), dims, 0.35));
            let theirs = run(&qkv, &g, |x| reference(x, &cos, &sin, 0.35));
            for (name, (a, b)) in ["out", "dqkv"].iter().zip(ours.iter().zip(&theirs)) {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let scale = b.abs().unwrap().max_all().unwrap();
                let rel = (diff / scale).unwrap().to_dtype(DType::F64).unwrap();
                let rel = rel.to_scalar::<f64>().unwrap();
                assert!(rel <= tolerance, "{dtype:?} {name}: {rel}");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let zeros = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
        let (cos, sin) = (zeros(&[4, 4]), zeros(&[4, 4]));
        let err = self_attention(&zeros(&[1, 4, 7 * 8]), (&cos, &sin), (3, 2, 8), 0.3).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let err = self_attention(&zeros(&[1, 4, 32]), (&cos, &sin), (2, 1, 8), 0.0).unwrap_err();
        assert!(err.to_string().contains("positive"), "{err}");
    }
}
