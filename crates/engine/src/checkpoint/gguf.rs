//! GGUF: a bounds-checked reader (the fuzzed surface), dequantisation through candle's kernels,
//! and the mapping from llama.cpp tensor names and Q/K layout to HF's.
//!
//! candle's own `gguf_file` reader trusts the file's lengths (a huge string length allocates
//! before failing; a short tensor is read out of bounds), so untrusted files go through this one.
//! Memory stays proportional to the file: every count is checked against the bytes left before
//! anything is allocated, and metadata arrays are stored packed by element type (a u8 array
//! costs a byte an element, a string array its text and one offset a string), never as one enum
//! value per element (which cost 32 bytes for each byte of a u8 array).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Tensor};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// A metadata array, packed by element type. Arrays of arrays are refused by the reader.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(StringArray),
}

/// Strings stored end to end in one buffer, with the end offset of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringArray {
    text: String,
    ends: Vec<usize>,
}

impl StringArray {
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`-th string.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    /// The strings in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }
}

impl GgufArray {
    /// Number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th element as an unsigned integer, when it is a non-negative integer.
    #[must_use]
    pub fn u64_at(&self, i: usize) -> Option<u64> {
        match self {
            Self::U8(v) => v.get(i).map(|&x| x.into()),
            Self::U16(v) => v.get(i).map(|&x| x.into()),
            Self::U32(v) => v.get(i).map(|&x| x.into()),
            Self::U64(v) => v.get(i).copied(),
            Self::I8(v) => v.get(i).and_then(|&x| u64::try_from(x).ok()),
            Self::I16(v) => v.get(i).and_then(|&x| u64::try_from(x).ok()),
            Self::I32(v) => v.get(i).and_then(|&x| u64::try_from(x).ok()),
            Self::I64(v) => v.get(i).and_then(|&x| u64::try_from(x).ok()),
            _ => None,
        }
    }

    /// The strings, when this is a string array.
    #[must_use]
    pub fn as_strings(&self) -> Option<&StringArray> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is numeric.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    #[must_use]
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description, checked against the file size.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions in row-major (PyTorch) order: GGUF stores them innermost first.
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A parsed GGUF file: metadata and tensor descriptions (no tensor data is copied).
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
}

const MAX_DIMS: u32 = 8;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length that must fit in what is left of the file, given a minimum size per element.
    fn count(&mut self, what: &str, min_elem_bytes: usize) -> Result<usize, String> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_elem_bytes))
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(format!(
                "{what} = {n} cannot fit in the {} bytes left of the file",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(what, 1)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    /// `n` elements of a fixed size, decoded by `f` (the count was checked against the file).
    fn packed<T, const N: usize>(
        &mut self,
        n: usize,
        key: &str,
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, String> {
        let bytes = self.take(n * N, key)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }

    fn array_value(&mut self, key: &str) -> Result<GgufArray, String> {
        let elem_ty = self.u32(key)?;
        // Each element takes at least its own width (a string at least its 8-byte length).
        let width = match elem_ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => return Err(format!("metadata `{key}`: nested arrays are not supported")),
            t => return Err(format!("metadata `{key}`: unknown array element type {t}")),
        };
        let n = self.count(key, width)?;
        Ok(match elem_ty {
            0 => GgufArray::U8(self.take(n, key)?.to_vec()),
            1 => GgufArray::I8(self.packed(n, key, i8::from_le_bytes)?),
            2 => GgufArray::U16(self.packed(n, key, u16::from_le_bytes)?),
            3 => GgufArray::I16(self.packed(n, key, i16::from_le_bytes)?),
            4 => GgufArray::U32(self.packed(n, key, u32::from_le_bytes)?),
            5 => GgufArray::I32(self.packed(n, key, i32::from_le_bytes)?),
            6 => GgufArray::F32(self.packed(n, key, f32::from_le_bytes)?),
            7 => {
                let bytes = self.take(n, key)?;
                let mut out = Vec::with_capacity(n);
                for &b in bytes {
                    out.push(match b {
                        0 => false,
                        1 => true,
                        b => return Err(format!("metadata `{key}`: bool byte {b}")),
                    });
                }
                GgufArray::Bool(out)
            }
            8 => {
                let mut strings = StringArray {
                    text: String::new(),
                    ends: Vec::with_capacity(n),
                };
                for _ in 0..n {
                    let len = self.count(key, 1)?;
                    let bytes = self.take(len, key)?;
                    let s = std::str::from_utf8(bytes)
                        .map_err(|_| format!("metadata `{key}`: a string is not valid UTF-8"))?;
                    strings.push(s);
                }
                GgufArray::String(strings)
            }
            10 => GgufArray::U64(self.packed(n, key, u64::from_le_bytes)?),
            11 => GgufArray::I64(self.packed(n, key, i64::from_le_bytes)?),
            _ => GgufArray::F64(self.packed(n, key, f64::from_le_bytes)?),
        })
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("metadata `{key}`: bool byte {b}")),
            },
            8 => GgufValue::String(self.string(key)?),
            9 => GgufValue::Array(self.array_value(key)?),
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(format!("metadata `{key}`: unknown value type {t}")),
        })
    }
}

/// The ggml type for a GGUF type id, for the types candle can dequantise.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

impl GgufFile {
    /// Parses the header, metadata and tensor table of a GGUF file held in `bytes`, checking that
    /// every tensor lies inside the file. Errors are messages without the path.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c
            .take(4, "magic")
            .map_err(|_| "file is too short to be GGUF".to_string())?;
        if magic != b"GGUF" {
            return Err(format!(
                "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
            ));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 or 3)"));
        }
        // A tensor description takes at least 24 bytes, a metadata entry at least 13.
        let tensor_count = c.count("tensor count", 24)?;
        let kv_count = c.count("metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = c.string("metadata key").map_err(|m| {
                format!(
                    "metadata entry {} of {kv_count}: {m}; is the metadata count right?",
                    i + 1
                )
            })?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata `{key}` appears twice"));
            }
        }
        let mut raw = Vec::with_capacity(tensor_count);
        let mut names = std::collections::HashSet::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let name = c.string("tensor name").map_err(|m| {
                format!(
                    "tensor description {} of {tensor_count}: {m}; is the tensor count right?",
                    i + 1
                )
            })?;
            if !names.insert(name.clone()) {
                return Err(format!("tensor `{name}` appears twice"));
            }
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(format!("tensor `{name}`: {n_dims} dimensions"));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&name)?;
                shape.push(
                    usize::try_from(d).map_err(|_| format!("tensor `{name}`: dimension {d}"))?,
                );
            }
            shape.reverse();
            let ty = c.u32(&name)?;
            let dtype = ggml_dtype(ty)
                .ok_or_else(|| format!("tensor `{name}`: unsupported ggml type {ty}"))?;
            let offset = c.u64(&name)?;
            raw.push((name, shape, dtype, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
                _ => return Err(format!("general.alignment {v:?} is not a power of two")),
            },
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, shape, dtype, offset) in raw {
            let elems = super::safetensors::checked_elems(&shape)
                .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
            if elems % dtype.block_size() != 0 {
                return Err(format!(
                    "tensor `{name}`: {elems} elements is not a multiple of the {dtype:?} block size"
                ));
            }
            let size = (elems / dtype.block_size())
                .checked_mul(dtype.type_size())
                .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(|| format!("tensor `{name}`: offset {offset} overflows"))?;
            let end = start
                .checked_add(size)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    format!(
                        "tensor `{name}`: data [{start}, {start}+{size}) runs past the end of the file ({} bytes): truncated?",
                        bytes.len()
                    )
                })?;
            tensors.push(GgufTensorInfo {
                name,
                shape,
                dtype,
                start,
                end,
            });
        }
        Ok(Self {
            version,
            metadata,
            tensors,
        })
    }

    /// A metadata value by key.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A tensor description by name.
    #[must_use]
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Dequantises one tensor from the file bytes to f32 on the CPU.
pub fn dequantize(bytes: &[u8], info: &GgufTensorInfo) -> candle_core::Result<Tensor> {
    let raw = bytes
        .get(info.start..info.end)
        .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{}` out of bounds", info.name)))?;
    // candle reinterprets the bytes as block structs, so they must be suitably aligned: copy into
    // an 8-byte-aligned buffer (the mmap offset of a tensor need not be).
    let mut aligned = vec![0u64; raw.len().div_ceil(8)];
    let view: &mut [u8] = bytemuck::cast_slice_mut(&mut aligned);
    view[..raw.len()].copy_from_slice(raw);
    let q = qtensor_from_ggml(
        info.dtype,
        &view[..raw.len()],
        info.shape.clone(),
        &Device::Cpu,
    )?;
    q.dequantize(&Device::Cpu)
}

/// Undoes llama.cpp's Q/K row permutation (for its interleaved RoPE) so the weight uses HF's
/// half-split RoPE convention: rows grouped (heads, 2, head_dim/2) become (heads, head_dim/2, 2).
pub fn unpermute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let head_dim = rows / heads;
    w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The HF tensor name for a llama.cpp tensor name, if it is a model weight.
#[must_use]
pub fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (idx, part) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let hf = crate::model::BlockTensor::from_gguf_name(part)?.name();
    Some(format!("model.layers.{idx}.{hf}"))
}

/// Reads a GGUF file's bytes with the path in any error.
pub fn parse_file(path: &Path, bytes: &[u8]) -> crate::error::Result<GgufFile> {
    GgufFile::parse(bytes).map_err(|m| crate::error::Error::format(path, m))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a GGUF v3 file in memory: metadata as (key, type, raw value bytes), f32 tensors.
    pub(crate) fn build(
        meta: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, Vec<u64>, Vec<f32>)],
    ) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64).to_le_bytes());
        for (k, ty, v) in meta {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        for (name, dims, data) in tensors {
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(0u32.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() * 4).div_ceil(32) as u64 * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for (_, _, data) in tensors {
            let start = b.len();
            for v in data {
                b.extend(v.to_le_bytes());
            }
            while !(b.len() - start).is_multiple_of(32) {
                b.push(0);
            }
        }
        b
    }

    pub(crate) fn str_value(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    #[test]
    fn parses_metadata_and_dequantizes_f32() {
        let b = build(
            &[
                ("general.architecture", 8, str_value("llama")),
                ("x", 4, 7u32.to_le_bytes().to_vec()),
            ],
            &[("t", vec![3, 2], vec![1., 2., 3., 4., 5., 6.])],
        );
        let g = GgufFile::parse(&b).unwrap();
        assert_eq!(
            g.get("general.architecture").and_then(GgufValue::as_str),
            Some("llama")
        );
        assert_eq!(g.get("x").and_then(GgufValue::as_u64), Some(7));
        let info = g.tensor_info("t").unwrap();
        assert_eq!(info.shape, vec![2, 3]);
        let t = dequantize(&b, info).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![1., 2., 3.], vec![4., 5., 6.]]
        );
    }

    #[test]
    fn wrong_magic_is_reported() {
        let mut b = build(&[], &[]);
        b[0] = b'X';
        assert!(GgufFile::parse(&b).unwrap_err().contains("not a GGUF file"));
    }

    #[test]
    fn absurd_counts_are_refused_without_allocating() {
        let mut b = build(&[], &[]);
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::parse(&b).unwrap_err().contains("cannot fit"));
        let mut b = build(&[("k", 8, str_value("v"))], &[]);
        // The string length of the key.
        b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(GgufFile::parse(&b).unwrap_err().contains("cannot fit"));
    }

    #[test]
    fn truncated_tensor_data_is_reported() {
        let b = build(&[], &[("t", vec![8], vec![0.0; 8])]);
        let cut = &b[..b.len() - 8];
        assert!(GgufFile::parse(cut).unwrap_err().contains("truncated"));
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // llama.cpp: reshape(heads, 2, hd/2, cols).swapaxes(1, 2).
        let heads = 2;
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((12, 4))
            .unwrap();
        let permuted = w
            .reshape((heads, 2, 3, 4))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((12, 4))
            .unwrap();
        let back = unpermute_qk(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
