//! The process's numerics thread count: chosen once at the start of `main`, before any thread
//! exists ([`decide`]), written into the variables candle 0.11 sizes its CPU pools from, and kept
//! from the background processes this one starts (each decides its own: a background run from
//! its experiment's `[train] threads`, else its CPUs).
//!
//! It also shortens how long candle's idle pool workers spin before they sleep
//! ([`SPIN_LIMIT`], unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set): candle's 25,000 spins keep a
//! waiting worker on a core the main thread needs when another process wants it too. Measured
//! on 2 CPUs (bench/RESULTS.md, "CPU training: fused kernels"), SmolLM2 training at 1 × 256 with
//! one core kept busy by another process went from 99 to 123 tokens/s; on a quiet machine the
//! difference was within the machine's noise.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use crate::core::threads::{self, ThreadCount, ThreadSource};

/// candle's variables: its barrier pool's and rayon's thread counts.
const CANDLE_VARIABLES: [&str; 2] = ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"];

/// candle's variable for the spins of an idle pool worker before it sleeps.
const SPIN_VARIABLE: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The spins slayer gives it (candle's default is 25,000).
pub const SPIN_LIMIT: u32 = 100;

/// Whether this process set the spin limit (and so keeps it from its children).
static SET_SPIN: OnceLock<bool> = OnceLock::new();

static DECIDED: OnceLock<ThreadCount> = OnceLock::new();

/// Chooses the count ([`threads::choose`]) and gives it to candle.
///
/// Must be called while the process has one thread: it sets environment variables, which is
/// sound only while no other thread can read or write the environment.
#[allow(
    unsafe_code,
    reason = "setting candle's thread variables; see the SAFETY note"
)]
pub fn decide(flag: Option<NonZeroUsize>, experiment: Option<NonZeroUsize>) -> ThreadCount {
    let count = threads::choose(flag, experiment, |name| std::env::var(name).ok());
    let value = count.threads.to_string();
    let set_spin = std::env::var_os(SPIN_VARIABLE).is_none();
    // SAFETY: `cli::main` calls this first, after parsing the arguments and before logging, the
    // interrupt handler or any compute start a thread; nothing else runs to read the environment
    // meanwhile. candle reads these variables when its pools first start.
    unsafe {
        for name in CANDLE_VARIABLES {
            std::env::set_var(name, &value);
        }
        if set_spin {
            std::env::set_var(SPIN_VARIABLE, SPIN_LIMIT.to_string());
        }
    }
    let _ = SET_SPIN.set(set_spin);
    let _ = DECIDED.set(count);
    count
}

/// The count decided at the start (the CPUs available where nothing decided: a test calling
/// library code directly).
#[must_use]
pub fn in_use() -> ThreadCount {
    DECIDED.get().copied().unwrap_or(ThreadCount {
        threads: threads::available(),
        source: ThreadSource::Available,
    })
}

/// Keeps this process's choice from a background child: unless whoever started slayer set
/// candle's variables themselves, the child starts without them and decides its own count.
pub fn leave_to_child(command: &mut std::process::Command) {
    if in_use().source != ThreadSource::Environment {
        for name in CANDLE_VARIABLES {
            command.env_remove(name);
        }
    }
    if SET_SPIN.get() == Some(&true) {
        command.env_remove(SPIN_VARIABLE);
    }
}

/// The environment a run records: the count, where it came from, and the machine.
#[must_use]
pub fn environment() -> crate::core::events::Environment {
    let count = in_use();
    let cpu = threads::cpu_info();
    crate::core::events::Environment {
        slayer: env!("CARGO_PKG_VERSION").into(),
        threads: count.threads.get(),
        thread_source: count.source.describe().into(),
        cpus_available: threads::available().get(),
        cpu: cpu.model,
        simd: cpu.simd.into(),
    }
}
