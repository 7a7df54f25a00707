//! Quantised weights for inference (chat, evaluation): which format a model's matrices take,
//! and what quantising a model did.
//!
//! On the CPU decoding one token reads every weight once, so its speed is the bytes read:
//! Q8_0 reads 1.06 bytes a weight where f32 reads 4. Q8_0 runs on our own kernel on the CPU
//! ([`super::q8`]: why, there); Q4_K (and Q8_0 on a GPU) on candle's `QMatMul`, the kernels
//! `quantized_llama` runs. Quantising is per row of `in_features` values, so a matrix whose rows
//! do not fill whole blocks takes the fallback llama.cpp gives the same format (and failing that
//! stays dense).

use std::fmt::{self, Write as _};
use std::str::FromStr;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use super::q8::Q8Matrix;

/// The format of a model's matrices for inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    /// Dense weights in the compute dtype (f32 on the CPU, bf16 on CUDA).
    #[default]
    None,
    /// 8-bit, blocks of 32 with an f16 scale: within a fraction of a percent of f32's perplexity.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// llama.cpp's 4-bit k-quant (super-blocks of 256); rows of other lengths take Q5_0, as
    /// llama.cpp's quantiser does.
    #[serde(rename = "q4_k")]
    Q4K,
}

impl Quant {
    pub const ALL: [Self; 3] = [Self::None, Self::Q8_0, Self::Q4K];

    /// The default for generation and evaluation on `device`: Q8_0 on the CPU, where decode is
    /// bound by the bytes of weight read per token (bench/RESULTS.md, "Quantised chat"); dense on
    /// CUDA, whose quantised kernels have not been checked on a GPU yet.
    #[must_use]
    pub fn default_for(device: &Device) -> Self {
        if device.is_cpu() {
            Self::Q8_0
        } else {
            Self::None
        }
    }

    /// Whether the matrices stay dense.
    #[must_use]
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }

    /// The spelling on the command line and in records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
        }
    }

    /// The format a matrix with rows of `k` values takes and the zero columns appended to each
    /// row (and to each input row), or `None` to keep it dense. `tiled_kernel`: whether
    /// candle's tiled x86 kernel runs here ([`tiled_kernel_available`]).
    ///
    /// That kernel (`repack_x86`) takes only rows that are a multiple of 256, the k-quant
    /// super-block; Q4_K rows of other lengths would go to a slow path, so where it runs a row
    /// of 576 (SmolLM2's hidden size) is padded to 768: a third more bytes, and still several
    /// times faster (bench/RESULTS.md, "Quantised chat"). Padding beyond half a row again is not
    /// worth it. Q8_0 is never padded: our own kernel ([`super::q8`]) takes any multiple of 32.
    #[must_use]
    pub fn layout(self, k: usize, tiled_kernel: bool) -> Option<(GgmlDType, usize)> {
        let fits = |d: GgmlDType| k > 0 && k.is_multiple_of(d.block_size());
        let pad = k.next_multiple_of(QK_K) - k;
        match self {
            Self::None => None,
            Self::Q8_0 => fits(GgmlDType::Q8_0).then_some((GgmlDType::Q8_0, 0)),
            Self::Q4K if k > 0 && pad == 0 => Some((GgmlDType::Q4K, 0)),
            Self::Q4K if tiled_kernel && pad * 2 <= k => Some((GgmlDType::Q4K, pad)),
            // llama.cpp (llama-quant.cpp) falls back from Q4_K to Q5_0 for rows that are not a
            // multiple of 256: about the same bits per weight, blocks of 32.
            Self::Q4K => fits(GgmlDType::Q5_0).then_some((GgmlDType::Q5_0, 0)),
        }
    }
}

/// The k-quant super-block: the row multiple candle's tiled kernels take.
const QK_K: usize = 256;

/// Whether candle's tiled x86 kernel for Q4_K runs on this CPU: it needs AVX2 and FMA, detected
/// as `repack_x86` detects them.
#[must_use]
pub fn tiled_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Quant {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|q| q.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown quantisation {s:?} (expected none, q8_0 or q4_k)"))
    }
}

/// What quantising a model did: how many matrices took which format, and the bytes before and
/// after (of the matrices quantised).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuantSummary {
    pub quant: Quant,
    /// Matrices per format, in the order first met.
    pub formats: Vec<(GgmlDType, usize)>,
    /// Matrices kept dense because their rows fill no block of any format offered.
    pub kept_dense: Vec<String>,
    pub dense_bytes: usize,
    pub quantized_bytes: usize,
}

impl QuantSummary {
    pub(crate) fn add(&mut self, format: GgmlDType, dense_bytes: usize, quantized_bytes: usize) {
        match self.formats.iter_mut().find(|(f, _)| *f == format) {
            Some((_, n)) => *n += 1,
            None => self.formats.push((format, 1)),
        }
        self.dense_bytes += dense_bytes;
        self.quantized_bytes += quantized_bytes;
    }

    /// One line for the user: `weights q8_0: 211 matrices, 513.8 MiB -> 136.5 MiB`.
    #[must_use]
    pub fn describe(&self) -> String {
        if self.quant == Quant::None {
            return "weights dense (no quantisation)".into();
        }
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        let formats: Vec<String> = self
            .formats
            .iter()
            .map(|(f, n)| format!("{n} {}", format_name(*f)))
            .collect();
        let mut line = format!(
            "weights {}: {} matrices, {:.1} MiB -> {:.1} MiB",
            self.quant,
            formats.join(" + "),
            mib(self.dense_bytes),
            mib(self.quantized_bytes)
        );
        if !self.kept_dense.is_empty() {
            let _ = write!(
                line,
                "; {} kept dense (rows fill no block): {}",
                self.kept_dense.len(),
                self.kept_dense.join(", ")
            );
        }
        line
    }
}

/// llama.cpp's name of a format (`q8_0`, `q4_k`, `q5_0`).
#[must_use]
pub fn format_name(format: GgmlDType) -> &'static str {
    match format {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// A weight matrix quantised for inference, never differentiated: Q8_0 on the CPU in our own
/// layout ([`super::q8`]), every other format (and any format on a GPU) through candle's
/// quantised matmul.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    storage: Storage,
    format: GgmlDType,
    shape: candle_core::Shape,
}

#[derive(Clone, Debug)]
enum Storage {
    Q8(Q8Matrix),
    Candle {
        matmul: QMatMul,
        /// Zero columns appended to each row (and to each input row) so that candle's tiled
        /// x86 kernel takes the matrix ([`Quant::layout`]).
        pad: usize,
    },
}

/// Activation rows up to which the Q8_0 kernel runs; above, the matrix is dequantised once and
/// multiplied densely (prefill, evaluation windows), which is faster there and exact to the
/// weights' rounding.
const KERNEL_MAX_ROWS: usize = 8;

/// Weight rows dequantised at a time for the dense product (2.3 MiB of f32 at SmolLM2's 576;
/// 256 rows were slower at a 128-token prompt, 4096 no faster).
const DENSE_TILE_ROWS: usize = 1024;

impl QuantizedWeight {
    /// Quantises `w` (out, in) to `format`, each row padded with `pad` zeros, on `w`'s device.
    pub fn new(w: &Tensor, format: GgmlDType, pad: usize) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        let dense = w.to_dtype(DType::F32)?;
        let storage = if format == GgmlDType::Q8_0 && pad == 0 && w.device().is_cpu() {
            let values = dense.flatten_all()?.to_vec1::<f32>()?;
            Storage::Q8(Q8Matrix::quantize(&values, rows, cols).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "q8_0: rows of {cols} values do not fill blocks of {}",
                    super::q8::BLOCK
                ))
            })?)
        } else {
            let q = QTensor::quantize(&dense.pad_with_zeros(1, 0, pad)?, format)?;
            Storage::Candle {
                matmul: QMatMul::from_qtensor(q)?,
                pad,
            }
        };
        Ok(Self {
            storage,
            format,
            shape: w.shape().clone(),
        })
    }

    #[must_use]
    pub fn format(&self) -> GgmlDType {
        self.format
    }

    #[must_use]
    pub fn shape(&self) -> &candle_core::Shape {
        &self.shape
    }

    /// Bytes the quantised matrix occupies.
    #[must_use]
    pub fn size_in_bytes(&self) -> usize {
        match &self.storage {
            Storage::Q8(q) => q.size_in_bytes(),
            Storage::Candle { matmul, .. } => match matmul {
                QMatMul::QTensor(q) => q.storage_size_in_bytes(),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                    t.elem_count() * t.dtype().size_in_bytes()
                }
            },
        }
    }

    /// `x @ w^T` for `x` of shape (..., in), in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use candle_core::Module as _;
        let dtype = x.dtype();
        // The kernels take f32 activations; a bf16 stream is widened and narrowed back.
        let x32 = x.to_dtype(DType::F32)?;
        let (cols, lead) = match x32.dims().split_last() {
            Some((k, lead)) => (*k, lead.to_vec()),
            None => candle_core::bail!("quantised linear: scalar input"),
        };
        let y = match &self.storage {
            Storage::Q8(q) => {
                if cols != q.cols() {
                    candle_core::bail!(
                        "quantised linear: input has {cols} features, weight expects {}",
                        q.cols()
                    );
                }
                let m: usize = lead.iter().product();
                let mut out_dims = lead;
                out_dims.push(q.rows());
                if m <= KERNEL_MAX_ROWS {
                    let xs = x32.flatten_all()?.to_vec1::<f32>()?;
                    let mut out = vec![0f32; m * q.rows()];
                    q.matmul(&xs, m, &mut out);
                    Tensor::from_vec(out, out_dims, x.device())?
                } else {
                    // By tiles of rows: a tile's f32 copy stays in cache and is a small
                    // allocation (a whole dequantised matrix is a fresh, page-faulting one per
                    // call: the head alone is 113 MB for SmolLM2).
                    let tiles = (0..q.rows())
                        .step_by(DENSE_TILE_ROWS)
                        .map(|first| {
                            let n = DENSE_TILE_ROWS.min(q.rows() - first);
                            let w = Tensor::from_vec(
                                q.dequantize_rows(first, n),
                                (n, cols),
                                x.device(),
                            )?;
                            x32.broadcast_matmul(&w.t()?)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&tiles, candle_core::D::Minus1)?
                }
            }
            Storage::Candle { matmul, pad } => {
                let x32 = if *pad > 0 {
                    x32.pad_with_zeros(candle_core::D::Minus1, 0, *pad)?
                } else {
                    x32
                };
                // candle's kernels read their input in place: it must be contiguous.
                matmul.forward(&x32.contiguous()?)?
            }
        };
        y.to_dtype(dtype)
    }

    /// Rows `ids` of the matrix (an embedding lookup), dequantised: (ids..., in). An id past
    /// the last row is an error, for either storage (candle's lookup would index out of bounds).
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let (n_rows, cols) = self.shape.dims2()?;
        let mut dims = ids.dims().to_vec();
        dims.push(cols);
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(id) = flat.iter().find(|id| **id as usize >= n_rows) {
            candle_core::bail!("token id {id} outside the {n_rows} rows");
        }
        match &self.storage {
            Storage::Q8(q) => {
                let mut out = vec![0f32; flat.len() * cols];
                for (row, id) in out.chunks_exact_mut(cols).zip(&flat) {
                    q.dequantize_row(*id as usize, row);
                }
                Tensor::from_vec(out, dims, &Device::Cpu)
            }
            Storage::Candle { matmul, pad } => {
                let rows = matmul.embedding(ids)?;
                if *pad == 0 {
                    return Ok(rows);
                }
                rows.narrow(candle_core::D::Minus1, 0, cols)?.contiguous()
            }
        }
    }

    /// The whole matrix, dequantised to f32 on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let cols = self.shape.dim(1)?;
        match &self.storage {
            Storage::Q8(q) => Tensor::from_vec(q.dequantize(), (q.rows(), cols), device),
            Storage::Candle { matmul, .. } => {
                let full = match matmul {
                    QMatMul::QTensor(q) => q.dequantize(device)?,
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(DType::F32)?,
                };
                full.narrow(1, 0, cols)?.contiguous()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn quantisations_parse_as_they_are_written() {
        for q in Quant::ALL {
            assert_eq!(q.as_str().parse::<Quant>(), Ok(q));
            assert_eq!(q.to_string(), q.as_str());
        }
        assert_eq!("Q8_0".parse::<Quant>(), Ok(Quant::Q8_0));
        let err = "q3".parse::<Quant>().unwrap_err();
        assert!(err.contains("q3") && err.contains("q8_0"), "{err}");
    }

    #[test]
    fn each_row_length_takes_the_format_it_fills_padded_where_the_tiled_kernel_runs() {
        use GgmlDType::{Q4K, Q5_0, Q8_0};
        for tiled in [false, true] {
            assert_eq!(Quant::None.layout(4096, tiled), None);
            assert_eq!(Quant::Q8_0.layout(4096, tiled), Some((Q8_0, 0)));
            assert_eq!(Quant::Q8_0.layout(576, tiled), Some((Q8_0, 0)));
            assert_eq!(
                Quant::Q8_0.layout(100, tiled),
                None,
                "not whole blocks of 32"
            );
            assert_eq!(Quant::Q8_0.layout(0, tiled), None);
            assert_eq!(Quant::Q4K.layout(1536, tiled), Some((Q4K, 0)));
            assert_eq!(Quant::Q4K.layout(48, tiled), None);
            // 64 columns would be padded fourfold: never.
            assert_eq!(Quant::Q4K.layout(64, tiled), Some((Q5_0, 0)));
        }
        // SmolLM2's hidden size, 576 = 2.25 super-blocks.
        assert_eq!(Quant::Q4K.layout(576, false), Some((Q5_0, 0)));
        assert_eq!(Quant::Q4K.layout(576, true), Some((Q4K, 192)));
        assert_eq!(Quant::default_for(&Device::Cpu), Quant::Q8_0);
    }

    /// Largest and mean magnitude of a tensor's values.
    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn mean_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// The quantised product agrees with the dense one to each format's precision, a long
    /// input takes the dequantised product and gets the kernel's numbers, and the embedding
    /// rows and the dequantised matrix are the matrix's.
    #[test]
    fn a_quantised_matrix_multiplies_and_looks_up_like_the_dense_one() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 96), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 96), &dev).unwrap();
        let dense = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        for (format, pad, bytes) in [
            // Ours: a byte a value and an f32 scale per 32.
            (GgmlDType::Q8_0, 0, 64 * 96 + 64 * 3 * 4),
            // candle's, padded to a super-block: its tiled kernel where this CPU has one.
            (GgmlDType::Q8_0, 160, 64 * 8 * 34),
            (GgmlDType::Q4K, 160, 64 * 144),
        ] {
            let q = QuantizedWeight::new(&w, format, pad).unwrap();
            assert_eq!(q.shape().dims(), &[64, 96]);
            assert_eq!(q.size_in_bytes(), bytes);
            let quant = q.forward(&x).unwrap();
            assert_eq!(quant.dims(), dense.dims());
            let (err, scale) = (mean_abs(&(&quant - &dense).unwrap()), mean_abs(&dense));
            // Mean error relative to the mean output: ~1% at 8 bits, ~10% at 4 bits with
            // activations quantised too.
            let bound = if format == GgmlDType::Q8_0 {
                0.02
            } else {
                0.15
            };
            assert!(
                err < bound * scale,
                "{format:?} pad {pad}: mean error {err} against {scale}"
            );
            assert_eq!(q.dequantize(&dev).unwrap().dims(), &[64, 96]);
        }
        let ids = Tensor::new(&[[5u32, 0, 63]], &dev).unwrap();
        let want = w
            .index_select(&Tensor::new(&[5u32, 0, 63], &dev).unwrap(), 0)
            .unwrap();
        for pad in [0, 160] {
            let q = QuantizedWeight::new(&w, GgmlDType::Q8_0, pad).unwrap();
            // Our kernel keeps the activations in f32: the error is the weights' rounding alone.
            let (err, scale) = (max_diff(&q.forward(&x).unwrap(), &dense), max_abs(&dense));
            let bound = if pad == 0 { 0.01 } else { 0.02 };
            assert!(
                err < bound * scale,
                "pad {pad}: max error {err} against max {scale}"
            );
            if pad == 0 {
                // Many rows take the dequantised dense product: the same numbers to the
                // kernel's 16-bit rounding of the activations.
                let many = Tensor::randn(0f32, 1.0, (2, 9, 96), &dev).unwrap();
                let by_kernel = (0..9)
                    .map(|i| q.forward(&many.narrow(1, i, 1).unwrap()).unwrap())
                    .collect::<Vec<_>>();
                let by_kernel = Tensor::cat(&by_kernel, 1).unwrap();
                let dense_many = q.forward(&many).unwrap();
                assert!(max_diff(&dense_many, &by_kernel) < 1e-4 * max_abs(&dense_many));
            }
            assert!(q.rows(&Tensor::new(&[64u32], &dev).unwrap()).is_err());
            let rows = q.rows(&ids).unwrap();
            assert_eq!(rows.dims(), &[1, 3, 96]);
            // Q8_0 keeps each value to half a step of its block's scale (max |w| / 127).
            assert!(max_diff(&rows.squeeze(0).unwrap(), &want) < 0.03);
            assert!(max_diff(&q.dequantize(&dev).unwrap(), &w) < 0.03);
        }
    }
}
