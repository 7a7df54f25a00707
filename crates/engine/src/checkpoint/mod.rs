//! Checkpoint I/O: HF directories (single or sharded safetensors, memory-mapped) and GGUF files
//! in, HF directories out. Every source is validated against its config before weights load.

pub mod gguf;
pub mod gguf_source;
pub mod hf;
pub mod safetensors;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

pub use gguf_source::GgufSource;
pub use hf::{HfDir, SaveOptions, write_hf_dir};

/// Anything that yields a model's HF-named tensors.
pub trait WeightSource {
    /// The model's configuration.
    fn config(&self) -> &LlamaConfig;
    /// The source's original `config.json` (fields we do not model are preserved on save).
    fn config_json(&self) -> Option<&serde_json::Value>;
    /// The tokenizer, when the source carries one.
    fn tokenizer(&self) -> Option<&Tokenizer>;
    /// `generation_config.json`, when present.
    fn generation_config(&self) -> Option<&serde_json::Value>;
    /// The dtype weights are stored in (after dequantisation for GGUF).
    fn stored_dtype(&self) -> DType;
    /// One tensor by HF name, on the CPU, in its stored dtype.
    fn load(&self, name: &str) -> Result<Tensor>;
    /// Where the weights come from, for messages.
    fn location(&self) -> &Path;
    /// Problems that do not stop loading (shown to the user).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Why [`Self::tokenizer`] is `None`, in words, naming the file.
    fn tokenizer_problem(&self) -> String {
        format!("{}: no tokenizer.json", self.location().display())
    }
}

/// Opens a model from a path: an HF directory or a `.gguf` file.
pub fn open_source(path: &Path) -> Result<Box<dyn WeightSource>> {
    if path.is_dir() {
        Ok(Box::new(HfDir::open(path)?))
    } else if path.is_file() {
        Ok(Box::new(GgufSource::open(path)?))
    } else {
        Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model directory or GGUF file",
            ),
        ))
    }
}

/// Builds a [`Llama`] from a source, converting to `dtype` on `device`. Every weight starts
/// frozen; callers mark blocks trainable. A weight holding NaN or infinity is refused, naming
/// the tensor: such a model would answer garbage and evaluate to NaN without saying why.
pub fn load_model(source: &dyn WeightSource, dtype: DType, device: &Device) -> Result<Llama> {
    let config = source.config().clone();
    Llama::from_tensors(config, dtype, device, |name| {
        let tensor = source.load(name)?;
        check_finite(&tensor, source.location(), name)?;
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    })
}

/// Refuses a floating-point tensor that holds NaN or infinity, naming the file, the tensor and
/// the first such element. Reads the tensor in chunks of a million elements, so checking costs
/// one pass and no copy of the whole tensor.
pub fn check_finite(tensor: &Tensor, path: &Path, name: &str) -> Result<()> {
    fn first_bad<T: Copy>(values: &[T], finite: impl Fn(T) -> bool) -> Option<(usize, T)> {
        values
            .iter()
            .position(|&v| !finite(v))
            .map(|i| (i, values[i]))
    }
    const CHUNK: usize = 1 << 20;
    let flat = tensor.flatten_all()?;
    let n = flat.elem_count();
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let chunk = flat.narrow(0, start, len)?;
        let bad: Option<(usize, f64)> = match tensor.dtype() {
            DType::F32 => {
                first_bad(&chunk.to_vec1::<f32>()?, f32::is_finite).map(|(i, v)| (i, f64::from(v)))
            }
            DType::F64 => first_bad(&chunk.to_vec1::<f64>()?, f64::is_finite),
            DType::BF16 => first_bad(&chunk.to_vec1::<half::bf16>()?, half::bf16::is_finite)
                .map(|(i, v)| (i, v.to_f64())),
            DType::F16 => first_bad(&chunk.to_vec1::<half::f16>()?, half::f16::is_finite)
                .map(|(i, v)| (i, v.to_f64())),
            // Integer tensors cannot hold NaN.
            _ => return Ok(()),
        };
        if let Some((i, v)) = bad {
            return Err(Error::tensor(
                path,
                name,
                format!(
                    "holds a non-finite value ({v}) at element {}: the weights are damaged",
                    start + i
                ),
            ));
        }
        start += len;
    }
    Ok(())
}

/// Checks a tensor's shape against what the config implies.
pub(crate) fn check_shape(
    config: &LlamaConfig,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<()> {
    match Llama::expected_shape(config, name) {
        Some(expected) if expected == shape => Ok(()),
        Some(expected) => Err(Error::tensor(
            path,
            name,
            format!("shape {shape:?} contradicts the config, which implies {expected:?}"),
        )),
        None => Err(Error::tensor(
            path,
            name,
            "is not part of a model with this config",
        )),
    }
}

/// Returns `Error::Interrupted` once `cancel` is set.
pub fn check_cancel(cancel: Option<&AtomicBool>) -> Result<()> {
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
