//! Any byte string given to the safetensors header reader yields a header whose every tensor lies
//! inside the file, or an error: no panic, no huge allocation. Differentially: a file the
//! `safetensors` crate (candle's reader, stricter about gaps) accepts, in dtypes slayer reads,
//! is accepted with the same tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_engine::checkpoint::safetensors::parse_header;

const OURS: [&str; 7] = ["F32", "F16", "BF16", "F64", "U8", "U32", "I64"];

fuzz_target!(|data: &[u8]| {
    let ours = parse_header(data, data.len() as u64);
    if let Ok(header) = &ours {
        for entry in header.tensors.values() {
            assert!(header.data_offset + entry.end <= data.len());
            assert!(entry.start <= entry.end);
        }
    }
    if let Ok(reference) = safetensors::SafeTensors::deserialize(data) {
        let tensors = reference.tensors();
        if tensors
            .iter()
            .all(|(_, v)| OURS.contains(&format!("{:?}", v.dtype()).as_str()))
        {
            let header = ours.expect("the reference accepts it: so must we");
            assert_eq!(header.tensors.len(), tensors.len());
            for (name, view) in tensors {
                assert_eq!(header.tensors[&name].shape, view.shape(), "{name}");
            }
        }
    }
});
