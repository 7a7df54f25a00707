//! Fused CPU kernels for the parts of a step that candle runs as chains of separate ops.
//!
//! On the CPU every candle op allocates its output, makes a full pass over memory and crosses
//! its thread pool's barrier, and its backward gives every op input a zero tensor to add the
//! gradient into; an attention backward of a dozen such ops over small tensors spends more in
//! those than in arithmetic (bench/RESULTS.md, "CPU training: fused kernels", has the per-op
//! profile that chose these). Each kernel here does one such chain in one pass, and a frozen
//! block is two graph nodes ([`block`]).
//!
//! Everything runs on candle's own thread pool (`candle_core::utils::barrier_pool`, the one its
//! element-wise ops use): kernels split their work into tasks over it ([`parallel_tasks`]), and
//! matrix products go to `gemm` (candle's matmul crate) on one thread per task, a layer's
//! product shared out by bands of columns or rows ([`matmul_threaded`]). gemm's own threads
//! would be rayon's, a second pool spinning beside candle's for the same cores.
//!
//! The kernels take f32 and f64 (the dtype of the gradient checks, so finite differences check
//! these very kernels); 16-bit dtypes and other devices keep candle's ops (the callers choose,
//! [`fused_dtype`]). Each is checked against candle's autograd of the textbook expression in
//! its module's tests.

pub mod adamw;
pub mod attention;
pub mod block;
pub mod cross_entropy;
pub mod linear;
pub mod norm;
pub mod swiglu;
pub mod vmath;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor, WithDType};

pub use vmath::Float;

/// Whether `x`'s dtype and device take the fused kernels: f32 or f64 on the CPU.
#[must_use]
pub fn fused_dtype(x: &Tensor) -> bool {
    fused(x.device(), x.dtype())
}

/// Whether tensors of `dtype` on `device` take the fused kernels.
#[must_use]
pub fn fused(device: &Device, dtype: DType) -> bool {
    matches!(device, Device::Cpu) && matches!(dtype, DType::F32 | DType::F64)
}

/// The elements of a contiguous CPU storage of element type `T`, as laid out by `layout`.
pub fn slice_of<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused kernel: input is not contiguous"),
    }
}

/// Calls `f` with the elements of `t` (made contiguous first when it is not), on the CPU.
pub fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice_of(cpu, layout)?),
        _ => candle_core::bail!("fused kernel: tensor is not on the CPU"),
    }
}

/// Threads of candle's pool, the calling thread included: the number of per-thread
/// accumulators a kernel needs.
#[must_use]
pub fn pool_threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `task(i, thread)` for every `i` in `0..tasks` on candle's pool, tasks handed out one at
/// a time from a shared cursor (they differ in cost: causal attention's later query blocks see
/// more keys). `thread` is below [`pool_threads`] and names the thread running the task, for
/// per-thread accumulators.
pub fn parallel_tasks(tasks: usize, task: impl Fn(usize, usize) + Sync) {
    if tasks == 0 {
        return;
    }
    let cursor = AtomicUsize::new(0);
    candle_core::utils::barrier_pool().execute(|thread| {
        loop {
            let i = cursor.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            task(i, thread);
        }
    });
}

/// Disjoint mutable chunks of one buffer, each taken by the one task that writes it (the lock
/// is never contended; it is how a chunk crosses to a pool thread without `unsafe`).
pub struct Chunks<'a, T>(Vec<Mutex<&'a mut [T]>>);

impl<'a, T> Chunks<'a, T> {
    /// `data` in chunks of `len` (the last one shorter).
    pub fn new(data: &'a mut [T], len: usize) -> Self {
        Self(data.chunks_mut(len.max(1)).map(Mutex::new).collect())
    }

    /// Chunks as given, in order.
    pub fn from_chunks(chunks: impl Iterator<Item = &'a mut [T]>) -> Self {
        Self(chunks.map(Mutex::new).collect())
    }

    /// Runs `f` on chunk `i`.
    pub fn with<R>(&self, i: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
        // A poisoned lock means a task panicked while holding it; the pool re-raises that panic.
        let mut guard = match self.0[i].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

/// A strided matrix view: element `(r, c)` at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strides {
    /// A row-major `rows × cols` matrix with `row_stride` between rows.
    #[must_use]
    pub const fn rows(rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of the row-major `rows × cols` matrix with `row_stride` between rows (a
    /// `cols × rows` view).
    #[must_use]
    pub const fn transposed(rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            rows: cols,
            cols: rows,
            row_stride: 1,
            col_stride: row_stride,
        }
    }

    /// One past the last element read: what a slice must hold.
    fn extent(self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// A matrix operand of [`matmul`]: the elements and how they are laid out.
#[derive(Clone, Copy)]
pub struct Mat<'a, T>(pub &'a [T], pub Strides);

/// `dst = (accumulate ? dst : 0) + scale · lhs · rhs` on the calling thread, through `gemm`.
///
/// # Panics
/// When the shapes do not chain or a slice is shorter than its view reaches (a caller's bug,
/// checked before any memory is touched).
pub fn matmul<T: Float>(
    dst: &mut [T],
    dst_view: Strides,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    scale: T,
    accumulate: bool,
) {
    product(dst, dst_view, (lhs, rhs), scale, accumulate);
}

/// [`matmul`] shared by the threads of candle's pool: each multiplies a band of `dst`'s rows
/// (`dst` row-major; `lhs` in any layout). gemm could share it through rayon's pool, but then candle's
/// own pool spins beside rayon's for the same cores (bench/RESULTS.md, "CPU training: fused
/// kernels"); the bands keep every product of a step on one pool.
///
/// # Panics
/// As [`matmul`], and when `dst` is not row-major.
pub fn matmul_threaded<T: Float>(
    dst: &mut [T],
    dst_view: Strides,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    scale: T,
    accumulate: bool,
) {
    let Mat(lhs_data, lhs_view) = lhs;
    let rows = dst_view.rows;
    assert!(
        dst_view.col_stride == 1 && lhs_view.rows == rows,
        "threaded matmul: dst must be row-major, with lhs's rows"
    );
    // One band per thread, of at least 32 rows: each band packs the whole right-hand side
    // again, so more bands cost more than the balance they buy (measured in
    // bench/RESULTS.md, "CPU training: fused kernels").
    let bands = pool_threads().min(rows.div_ceil(32)).max(1);
    let cols = dst_view.cols;
    if cols >= 32 * pool_threads() && (cols > rows || bands < pool_threads()) {
        // The right-hand side is the larger operand, or the rows are too few to share: share
        // the columns, so each thread packs only its part of `rhs`.
        columns_threaded(
            dst,
            dst_view,
            Mat(lhs_data, lhs_view),
            rhs,
            (scale, accumulate),
        );
        return;
    }
    let band = rows.div_ceil(bands);
    let extent = dst_view.extent();
    let chunks = Chunks::new(&mut dst[..extent], band * dst_view.row_stride);
    parallel_tasks(rows.div_ceil(band), |i, _| {
        let first = i * band;
        let n = band.min(rows - first);
        chunks.with(i, |dst| {
            matmul(
                dst,
                Strides {
                    rows: n,
                    ..dst_view
                },
                Mat(
                    &lhs_data[first * lhs_view.row_stride..],
                    Strides {
                        rows: n,
                        ..lhs_view
                    },
                ),
                rhs,
                scale,
                accumulate,
            );
        });
    });
}

fn product<T: Float>(
    dst: &mut [T],
    dst_view: Strides,
    operands: (Mat<'_, T>, Mat<'_, T>),
    scale: T,
    accumulate: bool,
) {
    assert!(
        dst.len() >= dst_view.extent(),
        "fused matmul: a view reaches past its slice"
    );
    let dst = Destination {
        ptr: dst.as_mut_ptr(),
    };
    // `dst` is borrowed mutably for the call and its view is within it.
    dst.product(dst_view, operands, scale, accumulate);
}

/// [`matmul_threaded`] for products with more columns than rows (a weight larger than the
/// activations it multiplies, or a single decoding row): each thread multiplies by a band of
/// `rhs`'s columns into its band of `dst`'s columns, so each packs only its part of the larger
/// operand.
fn columns_threaded<T: Float>(
    dst: &mut [T],
    dst_view: Strides,
    lhs: Mat<'_, T>,
    Mat(rhs_data, rhs_view): Mat<'_, T>,
    (scale, accumulate): (T, bool),
) {
    assert!(
        dst.len() >= dst_view.extent() && rhs_data.len() >= rhs_view.extent(),
        "fused matmul: a view reaches past its slice"
    );
    let cols = dst_view.cols;
    let band = cols.div_ceil(pool_threads());
    let dst = Destination {
        ptr: dst.as_mut_ptr(),
    };
    parallel_tasks(cols.div_ceil(band), |i, _| {
        let first = i * band;
        let n = band.min(cols - first);
        let view = Strides {
            cols: n,
            ..dst_view
        };
        let rhs = Mat(
            &rhs_data[first * rhs_view.col_stride..],
            Strides {
                cols: n,
                ..rhs_view
            },
        );
        // The bands' columns are disjoint, each within `dst`'s view (checked above), and `dst`
        // stays borrowed mutably by this call until every task has returned.
        dst.offset(first * dst_view.col_stride)
            .product(view, (lhs, rhs), scale, accumulate);
    });
}

/// Where a product writes: the start of an exclusively borrowed buffer (or of a part of it no
/// other task writes), shared with the pool's threads.
#[derive(Clone, Copy)]
struct Destination<T> {
    ptr: *mut T,
}

// SAFETY: a `Destination` only crosses threads inside `columns_threaded`, whose tasks write
// disjoint elements of a buffer borrowed mutably for the whole parallel call.
#[expect(unsafe_code, reason = "see the SAFETY note")]
unsafe impl<T: Send> Send for Destination<T> {}
// SAFETY: as for `Send`: shared only by tasks writing disjoint elements.
#[expect(unsafe_code, reason = "see the SAFETY note")]
unsafe impl<T: Send> Sync for Destination<T> {}

impl<T: Float> Destination<T> {
    /// The destination `elements` further on (within the buffer: the caller's view check).
    fn offset(self, elements: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(elements),
        }
    }

    /// `dst = (accumulate ? dst : 0) + scale · lhs · rhs` through gemm, for a `dst_view` the
    /// caller has checked lies within the buffer and that no other thread writes.
    #[expect(
        unsafe_code,
        reason = "gemm takes raw pointers and strides; the operands' views are checked against \
                  their slices here, the destination's by the callers"
    )]
    fn product(
        self,
        dst_view: Strides,
        (Mat(lhs, lhs_view), Mat(rhs, rhs_view)): (Mat<'_, T>, Mat<'_, T>),
        scale: T,
        accumulate: bool,
    ) {
        let (m, k, n) = (lhs_view.rows, lhs_view.cols, rhs_view.cols);
        assert!(
            rhs_view.rows == k && dst_view.rows == m && dst_view.cols == n,
            "fused matmul: ({m}×{k}) · ({}×{n}) into ({}×{})",
            rhs_view.rows,
            dst_view.rows,
            dst_view.cols
        );
        assert!(
            lhs.len() >= lhs_view.extent() && rhs.len() >= rhs_view.extent(),
            "fused matmul: a view reaches past its slice"
        );
        if m == 0 || n == 0 {
            return;
        }
        let signed = |s: usize| s as isize;
        if k == 0 {
            if !accumulate {
                for r in 0..m {
                    for c in 0..n {
                        let at = r * dst_view.row_stride + c * dst_view.col_stride;
                        // SAFETY: within the destination's view (the caller's check).
                        unsafe { self.ptr.add(at).write(T::zero()) };
                    }
                }
            }
            return;
        }
        // SAFETY: the operands' views lie within their slices (asserted above), the
        // destination's within its buffer and written by this call alone (the callers'); the
        // destination is borrowed mutably, so it aliases neither operand.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                self.ptr,
                signed(dst_view.col_stride),
                signed(dst_view.row_stride),
                accumulate,
                lhs.as_ptr(),
                signed(lhs_view.col_stride),
                signed(lhs_view.row_stride),
                rhs.as_ptr(),
                signed(rhs_view.col_stride),
                signed(rhs_view.row_stride),
                T::one(),
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "bit-identical results are the point")]
mod tests {
    use super::*;

    /// The safe wrapper against a plain triple loop, with transposed views and accumulation.
    #[test]
    fn matmul_views_match_a_plain_product() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        // b stored transposed: (n × k) row-major, read as k × n.
        let bt: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect();
        let mut out = vec![1.0f64; m * n];
        matmul(
            &mut out,
            Strides::rows(m, n, n),
            Mat(&a, Strides::rows(m, k, k)),
            Mat(&bt, Strides::transposed(n, k, k)),
            2.0,
            true,
        );
        for r in 0..m {
            for c in 0..n {
                let dot: f64 = (0..k).map(|i| a[r * k + i] * bt[c * k + i]).sum();
                assert!((out[r * n + c] - (1.0 + 2.0 * dot)).abs() < 1e-12);
            }
        }
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0f32; 4];
        let mut out = vec![0f32; 4];
        matmul(
            &mut out,
            Strides::rows(2, 2, 2),
            Mat(&a, Strides::rows(2, 3, 3)),
            Mat(&a, Strides::rows(3, 2, 2)),
            1.0,
            false,
        );
    }

    /// Bands of rows across the pool give the single-threaded product.
    #[test]
    fn the_threaded_product_matches_the_single_one() {
        for (rows, n) in [
            (1, 23),
            (31, 23),
            (33, 23),
            (200, 23),
            (1, 300),
            (5, 301),
            (40, 500),
        ] {
            let k = 19;
            let a: Vec<f64> = (0..rows * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
            let (mut one, mut many) = (vec![0.5; rows * n], vec![0.5; rows * n]);
            let lhs = Mat(&a[..], Strides::rows(rows, k, k));
            let rhs = Mat(&b[..], Strides::rows(k, n, n));
            matmul(&mut one, Strides::rows(rows, n, n), lhs, rhs, 1.5, true);
            matmul_threaded(&mut many, Strides::rows(rows, n, n), lhs, rhs, 1.5, true);
            assert_eq!(one, many, "{rows} rows");
        }
    }

    #[test]
    fn every_task_runs_once() {
        let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        parallel_tasks(hits.len(), |i, thread| {
            assert!(thread < pool_threads());
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }
}
