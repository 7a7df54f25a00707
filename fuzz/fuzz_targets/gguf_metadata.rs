//! The GGUF metadata path: any metadata section (the fuzz input, after a valid header that
//! declares no tensors and a metadata count from the first byte) is parsed, turned into a model
//! configuration and a tokenizer, or refused — no panic, and memory proportional to the input
//! (arrays are stored packed; vocabularies are bounded by the model). Run with `-rss_limit_mb`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_engine::checkpoint::gguf::GgufFile;
use slayer_engine::checkpoint::gguf_source::config_from_gguf;
use slayer_engine::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Some((&count, metadata)) = data.split_first() else { return };
    let mut file = b"GGUF".to_vec();
    file.extend(3u32.to_le_bytes());
    file.extend(0u64.to_le_bytes());
    file.extend(u64::from(count).to_le_bytes());
    file.extend(metadata);
    let path = std::path::Path::new("fuzz.gguf");
    let Ok(gguf) = GgufFile::parse(&file) else { return };
    if let Ok(config) = config_from_gguf(&gguf, &file, path) {
        if let Ok(tokenizer) = Tokenizer::from_gguf(&gguf, &config, path) {
            let ids = tokenizer.encode("ab ab", false).unwrap_or_default();
            assert!(ids.iter().all(|&id| (id as usize) < config.vocab_size));
        }
    }
});
