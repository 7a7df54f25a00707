//! How many CPU threads the numerics use, and what the CPU is.
//!
//! candle 0.11 sizes its CPU pools once, at first use: its barrier pool from
//! `CANDLE_NUM_THREADS`, the rayon pool its matmuls run on from `RAYON_NUM_THREADS`, and both,
//! when unset, from the physical cores — the whole machine's, not the CPUs this process may use
//! (its affinity mask, its cgroup's quota). On a shared machine more threads than that spin
//! waiting for cores they do not get (measured in bench/RESULTS.md). So the front end decides one
//! count before any compute starts ([`choose`]) and writes it into both variables; this module
//! has no say over the process environment itself.

use std::num::NonZeroUsize;

/// The most threads accepted from a setting (a typo must not start thousands).
pub const MAX_THREADS: usize = 1024;

/// Where the thread count came from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadSource {
    /// `--threads` (or `SLAYER_THREADS`).
    Flag,
    /// The experiment's `[train] threads`.
    Experiment,
    /// `CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS`, set by whoever started slayer.
    Environment,
    /// The CPUs this process may use (affinity and cgroup quota).
    Available,
}

impl ThreadSource {
    /// How the source is said beside the count (`2 threads (--threads)`).
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Flag => "--threads",
            Self::Experiment => "[train] threads",
            Self::Environment => "CANDLE_NUM_THREADS / RAYON_NUM_THREADS",
            Self::Available => "the CPUs this process may use",
        }
    }
}

/// The numerics' thread count and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCount {
    pub threads: NonZeroUsize,
    pub source: ThreadSource,
}

/// The CPUs this process may use: its affinity mask and its cgroup's CPU quota, as the standard
/// library reads them.
#[must_use]
pub fn available() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Reads a thread count from a setting's text; `None` for anything but 1 ..= [`MAX_THREADS`].
#[must_use]
pub fn parse_count(text: &str) -> Option<NonZeroUsize> {
    text.trim()
        .parse::<NonZeroUsize>()
        .ok()
        .filter(|n| n.get() <= MAX_THREADS)
}

/// The count to use: the flag, else the experiment, else a count set in candle's own variables
/// (`env` reads one), else the CPUs this process may use.
pub fn choose(
    flag: Option<NonZeroUsize>,
    experiment: Option<NonZeroUsize>,
    env: impl Fn(&str) -> Option<String>,
) -> ThreadCount {
    let from_env = || {
        ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
            .iter()
            .find_map(|name| env(name).as_deref().and_then(parse_count))
    };
    let (threads, source) = if let Some(n) = flag {
        (n, ThreadSource::Flag)
    } else if let Some(n) = experiment {
        (n, ThreadSource::Experiment)
    } else if let Some(n) = from_env() {
        (n, ThreadSource::Environment)
    } else {
        (available(), ThreadSource::Available)
    };
    ThreadCount { threads, source }
}

/// The CPU, as a benchmark or a run records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name` from `/proc/cpuinfo` (empty where there is none).
    pub model: String,
    /// The widest vector instructions candle's kernels can use here.
    pub simd: &'static str,
}

/// What this machine's CPU is.
#[must_use]
pub fn cpu_info() -> CpuInfo {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_default();
    CpuInfo {
        model,
        simd: simd_level(),
    }
}

#[cfg(target_arch = "x86_64")]
fn simd_level() -> &'static str {
    if std::arch::is_x86_feature_detected!("avx512f") {
        "avx512"
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        "avx2+fma"
    } else if std::arch::is_x86_feature_detected!("sse4.1") {
        "sse4.1"
    } else {
        "sse2"
    }
}

#[cfg(target_arch = "aarch64")]
fn simd_level() -> &'static str {
    "neon"
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn simd_level() -> &'static str {
    "none"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn n(k: usize) -> Option<NonZeroUsize> {
        NonZeroUsize::new(k)
    }

    #[test]
    fn the_flag_wins_then_the_experiment_then_candles_variables_then_the_cpus() {
        let env = |name: &str| (name == "RAYON_NUM_THREADS").then(|| "3".to_string());
        let none = |_: &str| None;
        assert_eq!(
            choose(n(2), n(5), env),
            ThreadCount {
                threads: n(2).unwrap(),
                source: ThreadSource::Flag
            }
        );
        assert_eq!(choose(None, n(5), env).source, ThreadSource::Experiment);
        let from_env = choose(None, None, env);
        assert_eq!(
            (from_env.threads.get(), from_env.source),
            (3, ThreadSource::Environment)
        );
        let available_only = choose(None, None, none);
        assert_eq!(available_only.source, ThreadSource::Available);
        assert_eq!(available_only.threads, available());
        // A malformed variable is passed over, not taken for a count.
        let bad = |_: &str| Some("lots".to_string());
        assert_eq!(choose(None, None, bad).source, ThreadSource::Available);
    }

    #[test]
    fn counts_outside_one_to_the_limit_are_refused() {
        assert_eq!(parse_count(" 4 "), n(4));
        for bad in ["0", "-1", "1025", "two", ""] {
            assert_eq!(parse_count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_cpu_is_described() {
        let cpu = cpu_info();
        assert!(!cpu.simd.is_empty());
        assert!(!cpu.model.contains('\n'), "{cpu:?}");
    }
}
