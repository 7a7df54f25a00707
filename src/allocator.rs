//! The process allocator's settings. `src/main.rs` installs mimalloc; this module tunes it.
//!
//! A training step frees and allocates the same tensor sizes over and over (activations kept
//! until backward, gradients, kernel scratch). mimalloc (v3) hands memory back to the kernel a
//! second after it is freed; once a step takes longer than that, the next step faults the same
//! pages back in and the kernel zeroes them: at 1 × 1024 tokens on SmolLM2, 64,000 page faults
//! a step and a fifth of its time in `clear_page_erms`, 196 tokens/s against 246 with the
//! memory kept (bench/RESULTS.md, "CPU training: fused kernels"). A minute covers any step;
//! an idle console still gives its memory back.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc's option enum (v2 and v3 alike), which
/// `libmimalloc-sys` does not name: between its `mi_option_eager_commit_delay` (14) and
/// `mi_option_use_numa_nodes` (16). A test checks it reads the option's default.
const PURGE_DELAY: mi_option_t = 15;

/// How long freed memory is kept for reuse, in milliseconds.
const KEEP_FREED_MS: std::ffi::c_long = 60_000;

/// Keeps freed memory for reuse for a minute. Call before any other thread starts
/// (mimalloc's options are not thread-safe); `MIMALLOC_PURGE_DELAY` in the environment wins.
#[expect(
    unsafe_code,
    reason = "mimalloc's C option API, called once before other threads exist"
)]
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: setting an option of the linked mimalloc while this is the only thread.
    unsafe { mi_option_set(PURGE_DELAY, KEEP_FREED_MS) };
}

/// The purge delay in effect, in milliseconds.
#[must_use]
#[expect(unsafe_code, reason = "reading an option of the linked mimalloc")]
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: a read of an option.
    unsafe { mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    /// The option index is the purge delay's: before anything sets it, it reads mimalloc v3's
    /// default (1,000 ms; its header comment still says 10).
    #[test]
    fn the_purge_delay_option_is_found() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(super::purge_delay_ms(), 1000);
    }
}
