//! Safetensors: a validating header reader (the fuzzed surface), memory-mapped tensor access, and
//! a writer. The reader checks every claim of the header against the file before any tensor is
//! built, so a corrupt file gives a message instead of a panic or a huge allocation.
//!
//! Written here rather than taken from the `safetensors` crate (already in the graph through
//! candle), which validates the same claims but says less about what is wrong: a shape that
//! disagrees with its offsets is "invalid shape, data type, or offset for tensor" without the
//! tensor's name or the sizes, a truncated file is "incomplete metadata, file not fully
//! covered". Our users need the tensor, the sizes and "truncated?". The crate stays the
//! reference: the tests check that it reads what our writer writes exactly as our reader does.
//! The writer streams one tensor at a time from a producer (an expansion never holds the model);
//! the crate's `serialize_to_file` wants every tensor view at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use memmap2::Mmap;

use crate::error::{Error, Result};

/// Headers larger than this are refused (the format's own reference limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor's entry in a safetensors header, already checked against the file size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    pub start: usize,
    pub end: usize,
}

/// A parsed, validated header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The optional `__metadata__` string map.
    pub metadata: BTreeMap<String, String>,
    /// Offset of the data section from the start of the file.
    pub data_offset: usize,
}

fn dtype_from_str(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

fn dtype_to_str(d: DType) -> &'static str {
    match d {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        _ => "F32",
    }
}

/// Parses the header at the start of `bytes`, where `file_len` is the size of the whole file
/// (`bytes` may be just a prefix holding the header). Every offset is checked against `file_len`.
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<Header, String> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(format!(
            "file is {file_len} bytes, too short for a safetensors header"
        ));
    };
    let mut len_arr = [0u8; 8];
    len_arr.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(len_arr);
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    if header_len + 8 > file_len {
        return Err(format!(
            "header length {header_len} runs past the end of the file ({file_len} bytes): truncated?"
        ));
    }
    let header_len = header_len as usize;
    let Some(json) = bytes.get(8..8 + header_len) else {
        return Err("header is truncated".into());
    };
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("header is not a JSON object".into());
    };
    let data_len = file_len - 8 - header_len as u64;
    let mut header = Header {
        data_offset: 8 + header_len,
        ..Header::default()
    };
    for (name, entry) in map {
        if name == "__metadata__" {
            let serde_json::Value::Object(meta) = entry else {
                return Err("`__metadata__` is not an object".into());
            };
            for (k, v) in meta {
                let serde_json::Value::String(s) = v else {
                    return Err(format!("`__metadata__.{k}` is not a string"));
                };
                header.metadata.insert(k, s);
            }
            continue;
        }
        let entry = parse_entry(&name, &entry, data_len)?;
        header.tensors.insert(name, entry);
    }
    let mut ranges: Vec<(usize, usize, &str)> = header
        .tensors
        .iter()
        .map(|(n, e)| (e.start, e.end, n.as_str()))
        .collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((_, prev_end, prev), (start, _, next)) = (pair[0], pair[1]);
        if start < prev_end {
            return Err(format!(
                "tensors `{prev}` and `{next}` overlap in the data section"
            ));
        }
    }
    Ok(header)
}

fn parse_entry(
    name: &str,
    entry: &serde_json::Value,
    data_len: u64,
) -> Result<TensorEntry, String> {
    let field = |k: &str| {
        entry
            .get(k)
            .ok_or_else(|| format!("tensor `{name}`: missing `{k}`"))
    };
    let dtype_str = field("dtype")?
        .as_str()
        .ok_or_else(|| format!("tensor `{name}`: `dtype` is not a string"))?;
    let dtype = dtype_from_str(dtype_str)
        .ok_or_else(|| format!("tensor `{name}`: unsupported dtype `{dtype_str}`"))?;
    let as_usizes = |k: &str| -> Result<Vec<usize>, String> {
        let arr = field(k)?
            .as_array()
            .ok_or_else(|| format!("tensor `{name}`: `{k}` is not a list"))?;
        arr.iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| format!("tensor `{name}`: `{k}` holds a non-integer"))
            })
            .collect()
    };
    let shape = as_usizes("shape")?;
    let offsets = as_usizes("data_offsets")?;
    let [start, end] = offsets[..] else {
        return Err(format!(
            "tensor `{name}`: `data_offsets` must hold two numbers"
        ));
    };
    if start > end {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] are reversed"
        ));
    }
    if end as u64 > data_len {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] run past the data section ({data_len} bytes): truncated?"
        ));
    }
    let elems = checked_elems(&shape)
        .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
    let bytes = elems
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
    if bytes != end - start {
        return Err(format!(
            "tensor `{name}`: shape {shape:?} of {dtype_str} needs {bytes} bytes, data_offsets give {}",
            end - start
        ));
    }
    Ok(TensorEntry {
        dtype,
        shape,
        start,
        end,
    })
}

/// The element count of `shape`, or `None` when it, or the product of its non-empty dimensions
/// (which strides are computed from), overflows.
#[must_use]
pub fn checked_elems(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A memory-mapped safetensors file with a validated header.
pub struct MappedSafetensors {
    path: PathBuf,
    mmap: Mmap,
    header: Header,
}

impl MappedSafetensors {
    /// Opens, maps and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // Mapping is the one unsafe-adjacent step; memmap2's safe wrapper is used through
        // `Mmap::map`, which is itself `unsafe` only because another process could truncate the
        // file. We accept that for read-only checkpoints, as every safetensors loader does.
        let mmap = map_file(&file).map_err(|e| Error::io(path, e))?;
        let header = parse_header(&mmap, mmap.len() as u64).map_err(|m| Error::format(path, m))?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header,
        })
    }

    /// The validated header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file this was mapped from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies tensor `name` out of the map onto `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let entry = self
            .header
            .tensors
            .get(name)
            .ok_or_else(|| Error::tensor(&self.path, name, "not in this file"))?;
        let base = self.header.data_offset;
        let bytes = self
            .mmap
            .get(base + entry.start..base + entry.end)
            .ok_or_else(|| Error::tensor(&self.path, name, "data out of bounds"))?;
        let tensor = Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, device)?;
        release_pages(&self.mmap, base + entry.start, entry.end - entry.start);
        Ok(tensor)
    }
}

/// Drops the mapped pages of a range once its data has been copied out, so streaming through a
/// checkpoint keeps resident memory near one tensor rather than the whole file. Failure only
/// costs memory, so it is ignored.
#[expect(unsafe_code, reason = "MADV_DONTNEED is `unchecked` in memmap2")]
pub(crate) fn release_pages(mmap: &Mmap, offset: usize, len: usize) {
    // SAFETY: the map is read-only and the data was copied out; after MADV_DONTNEED the pages
    // are read again from the file on the next access, so no data is lost and nothing dangles.
    let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
}

#[expect(
    unsafe_code,
    reason = "memory-mapping a file is inherently unsafe in Rust"
)]
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only; a concurrent truncation by another process is the accepted
    // risk of every mmap-based checkpoint loader.
    unsafe { Mmap::map(file) }
}

/// Writes `tensors` as one safetensors file at `path`, then fsyncs it.
pub fn write_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, t)| TensorSpec {
            name: n.clone(),
            dtype: t.dtype(),
            shape: t.dims().to_vec(),
        })
        .collect();
    let mut by_name: std::collections::HashMap<&str, &Tensor> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_file_streaming(path, &specs, |name| {
        by_name
            .remove(name)
            .cloned()
            .ok_or_else(|| Error::tensor(path, name, "missing"))
    })
}

/// Name, dtype and shape of a tensor to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Writes a safetensors file whose header is known up front from `specs`, asking `produce` for
/// each tensor in order and writing it before asking for the next: only one tensor is resident.
/// The file (inside a temporary directory the caller renames) is fsynced.
pub fn write_file_streaming(
    path: &Path,
    specs: &[TensorSpec],
    mut produce: impl FnMut(&str) -> Result<Tensor>,
) -> Result<()> {
    let mut entries = serde_json::Map::new();
    entries.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for spec in specs {
        let bytes = spec.shape.iter().product::<usize>() * spec.dtype.size_in_bytes();
        entries.insert(
            spec.name.clone(),
            serde_json::json!({
                "dtype": dtype_to_str(spec.dtype),
                "shape": spec.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(entries))
        .map_err(|e| Error::format(path, e.to_string()))?;
    // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for spec in specs {
        let t = produce(&spec.name)?;
        if t.dims() != spec.shape.as_slice() || t.dtype() != spec.dtype {
            return Err(Error::tensor(
                path,
                &spec.name,
                format!(
                    "produced {:?} {:?}, the header says {:?} {:?}",
                    t.dtype(),
                    t.dims(),
                    spec.dtype,
                    spec.shape
                ),
            ));
        }
        write_tensor_data(&mut w, &t)
            .map_err(|e| Error::tensor(path, &spec.name, e.to_string()))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Writes a tensor's data little-endian, converting in fixed-size chunks so no second full-size
/// byte buffer is held next to the tensor.
fn write_tensor_data(w: &mut impl Write, t: &Tensor) -> candle_core::Result<()> {
    fn put<T: Copy, const N: usize>(
        w: &mut impl Write,
        values: &[T],
        to_le: impl Fn(T) -> [u8; N],
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(CHUNK * N);
        for chunk in values.chunks(CHUNK) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&to_le(*v));
            }
            w.write_all(&buf)?;
        }
        Ok(())
    }
    const CHUNK: usize = 1 << 16;
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("tensor not on the CPU after to_device");
    };
    // Borrow the tensor's own buffer: no copy of the data is made.
    let range = layout.start_offset()..layout.start_offset() + t.elem_count();
    let io = |e: std::io::Error| candle_core::Error::Msg(e.to_string());
    match cpu {
        CpuStorage::F16(v) => put(w, &v[range], half::f16::to_le_bytes),
        CpuStorage::BF16(v) => put(w, &v[range], half::bf16::to_le_bytes),
        CpuStorage::F32(v) => put(w, &v[range], f32::to_le_bytes),
        CpuStorage::F64(v) => put(w, &v[range], f64::to_le_bytes),
        CpuStorage::U8(v) => w.write_all(&v[range]),
        CpuStorage::U32(v) => put(w, &v[range], u32::to_le_bytes),
        CpuStorage::I64(v) => put(w, &v[range], i64::to_le_bytes),
        _ => candle_core::bail!("cannot write a {:?} tensor to safetensors", t.dtype()),
    }
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_header(json: &str, data_len: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    fn err(bytes: &[u8]) -> String {
        parse_header(bytes, bytes.len() as u64).unwrap_err()
    }

    #[test]
    fn valid_header_parses() {
        let b = file_with_header(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            16,
        );
        let h = parse_header(&b, b.len() as u64).unwrap();
        assert_eq!(h.tensors["a"].shape, vec![2, 2]);
        assert_eq!(h.metadata["format"], "pt");
    }

    #[test]
    fn header_length_beyond_file_is_reported() {
        let mut b = file_with_header("{}", 0);
        b[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(err(&b).contains("runs past the end"));
    }

    #[test]
    fn huge_header_length_is_refused_without_allocating() {
        let mut b = file_with_header("{}", 0);
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&b).contains("limit"));
    }

    #[test]
    fn truncated_data_is_reported() {
        let b = file_with_header(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        );
        assert!(err(&b).contains("truncated"));
    }

    #[test]
    fn overlapping_offsets_are_reported() {
        let b = file_with_header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        );
        assert!(err(&b).contains("overlap"));
    }

    #[test]
    fn shape_disagreeing_with_offsets_is_reported() {
        let b = file_with_header(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(err(&b).contains("needs 12 bytes"));
    }

    #[test]
    fn overflowing_shape_is_reported() {
        let b = file_with_header(
            r#"{"a":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(err(&b).contains("overflows"));
    }

    /// The `safetensors` crate (0.8, candle's reader) reads what our writer writes, tensor by
    /// tensor, as our reader does: same dtype, shape and bytes, exactly.
    #[test]
    fn the_safetensors_crate_reads_our_files_as_we_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let base = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap();
        let tensors: Vec<(String, Tensor)> = vec![
            ("f32".into(), base.reshape((2, 3, 4)).unwrap()),
            (
                "bf16".into(),
                base.to_dtype(DType::BF16).unwrap().reshape((4, 6)).unwrap(),
            ),
            ("f16".into(), base.to_dtype(DType::F16).unwrap()),
            (
                "u32".into(),
                base.to_dtype(DType::U32).unwrap().reshape((24, 1)).unwrap(),
            ),
            ("scalar".into(), Tensor::new(7f32, &Device::Cpu).unwrap()),
        ];
        write_file(&path, &tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let ours = MappedSafetensors::open(&path).unwrap();
        assert_eq!(reference.len(), ours.header().tensors.len());
        for (name, entry) in &ours.header().tensors {
            let view = reference.tensor(name).unwrap();
            assert_eq!(view.shape(), entry.shape.as_slice(), "{name}");
            assert_eq!(
                format!("{:?}", view.dtype()),
                dtype_to_str(entry.dtype),
                "{name}"
            );
            let start = ours.header().data_offset + entry.start;
            assert_eq!(
                view.data(),
                &bytes[start..ours.header().data_offset + entry.end],
                "{name}"
            );
        }
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = a.to_dtype(DType::BF16).unwrap();
        write_file(&path, &[("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
        let m = MappedSafetensors::open(&path).unwrap();
        let a2 = m.tensor("a", &Device::Cpu).unwrap();
        let b2 = m.tensor("b", &Device::Cpu).unwrap();
        assert_eq!(a2.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(b2.dtype(), DType::BF16);
        assert_eq!(m.header().data_offset % 8, 0);
    }
}
