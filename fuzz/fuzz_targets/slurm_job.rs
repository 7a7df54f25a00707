//! Any text as Slurm's answer about a job (`scontrol show job -o`, `sacct -P`) and as an
//! experiment's `[slurm]` table: no panic; a parsed job's strings stay short and its brief one
//! line; a table that is accepted renders only `#SBATCH` option lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_data::runner::slurm::{self, Resources};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for job in [slurm::parse_scontrol(&text), slurm::parse_sacct(&text)]
        .into_iter()
        .flatten()
    {
        assert!(job.reason.as_ref().is_none_or(|r| r.chars().count() <= 64));
        assert!(job.node.as_ref().is_none_or(|n| n.chars().count() <= 64));
        assert!(!job.brief().contains('\n'));
        assert!(!slurm::short(job.id, Some(&job)).contains('\n'));
    }
    let path = std::path::Path::new("fuzz.toml");
    if let Ok(resources) = Resources::of_experiment(path, &text) {
        for line in resources.option_lines() {
            assert!(line.starts_with("--") && !line.contains('\n'), "{line:?}");
        }
    }
});
