//! Any byte string given to the GGUF reader yields a parsed file or an error: no panic, no
//! out-of-bounds read, no allocation larger than the input justifies. Parsed tensors are
//! dequantised too, which exercises the bounds the reader promised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_engine::checkpoint::gguf::{GgufFile, dequantize};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::parse(data) {
        for info in file.tensors.iter().take(4) {
            // Keep each case fast: skip tensors beyond a few MB of output.
            if info.shape.iter().product::<usize>() <= 1 << 20 {
                let _ = dequantize(data, info);
            }
        }
    }
});
