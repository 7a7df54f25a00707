//! Helpers shared by the benchmark binaries.
#![allow(dead_code, reason = "each benchmark uses a subset")]

use std::path::PathBuf;

/// The SmolLM2 directory and GGUF, fetched into the data dir if needed.
pub fn smollm2() -> anyhow::Result<(PathBuf, PathBuf)> {
    let data = slayer::fetch::default_data_dir();
    let known =
        slayer::fetch::known_model("smollm2").ok_or_else(|| anyhow::anyhow!("no smollm2"))?;
    let dir = slayer::fetch::fetch(
        &data,
        known,
        None,
        false,
        None,
        |m| eprintln!("{m}"),
        |_, _| {},
    )?;
    Ok((dir, data.join("downloads/SmolLM2-135M-Instruct.Q4_1.gguf")))
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One line describing the machine.
pub fn machine() -> String {
    let cpu = slayer::core::threads::cpu_info().model;
    let cpu = if cpu.is_empty() {
        "unknown CPU".into()
    } else {
        cpu
    };
    format!("{cpu}, {} threads", slayer::core::threads::available())
}
