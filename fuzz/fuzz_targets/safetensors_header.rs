//! Any byte string given to the safetensors header reader yields a header whose every tensor lies
//! inside the file, or an error: no panic, no huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_engine::checkpoint::safetensors::parse_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse_header(data, data.len() as u64) {
        for entry in header.tensors.values() {
            assert!(header.data_offset + entry.end <= data.len());
            assert!(entry.start <= entry.end);
        }
    }
});
