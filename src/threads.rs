//! The process's numerics thread count: chosen once at the start of `main`, before any thread
//! exists ([`decide`]), written into the variables candle 0.11 sizes its CPU pools from, and kept
//! from the background processes this one starts (each decides its own: a background run from
//! its experiment's `[train] threads`, else its CPUs).

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use crate::core::threads::{self, ThreadCount, ThreadSource};

/// candle's variables: its barrier pool's and rayon's.
const CANDLE_VARIABLES: [&str; 2] = ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"];

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
    for name in CANDLE_VARIABLES {
        // SAFETY: `cli::main` calls this first, after parsing the arguments and before logging,
        // the interrupt handler or any compute start a thread; nothing else runs to read the
        // environment meanwhile. candle reads these variables when its pools first start.
        unsafe { std::env::set_var(name, &value) };
    }
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
