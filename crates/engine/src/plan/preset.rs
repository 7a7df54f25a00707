//! Presets: the layouts of the literature, scaled to any depth. Each gives insertions, pruning
//! and the default trainable set; every field can be overridden in the plan.
//!
//! For a 32-block model (tests hold the full maps):
//! - `slayer` (arXiv 2410.02330): 8 blocks, one after each odd original of the first half
//!   (1, 3, …, 15), initialised as the mean of blocks i and i+1, the last 2 blocks pruned → 38.
//! - `llama-pro` (arXiv 2401.02415): 8 groups of 4, a copy of each group's last block (3, 7, …, 31)
//!   appended to the group → 40.
//! - `prefix` / `suffix`: 8 copies stacked before block 0 / after the last block (the LLaMA Pro
//!   ablation's failing and control layouts).
//! - `deep`: the `slayer` insertions mirrored into the second half (after 16, 18, …, 30); nothing
//!   pruned by default, since the deep blocks are its sources.
//! - `none`: no change; say what trains.

use super::spec::InitKind;

/// Preset names, for messages and completion.
pub const PRESETS: [&str; 6] = ["slayer", "llama-pro", "prefix", "suffix", "deep", "none"];

/// One preset insertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetInsert {
    pub after: i64,
    pub init: InitKind,
}

/// What a preset contributes before overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresetPlan {
    pub insert: Vec<PresetInsert>,
    pub prune: Vec<usize>,
}

/// Default number of new blocks for the S strategy: every odd block of the first half.
fn odd_first_half(layers: usize) -> usize {
    (layers / 2) / 2
}

/// More new blocks than this in one plan is a typo, not an experiment.
pub const MAX_NEW_BLOCKS: usize = 4096;

/// The preset's layout for a model of `layers` blocks.
pub fn preset(
    name: &str,
    layers: usize,
    new_blocks: Option<usize>,
    prune_last: Option<usize>,
) -> Result<PresetPlan, String> {
    if let Some(n) = new_blocks
        && n > MAX_NEW_BLOCKS
    {
        return Err(format!(
            "new_blocks = {n} exceeds the limit of {MAX_NEW_BLOCKS}"
        ));
    }
    let l = layers as i64;
    let quarter = (layers / 4).max(1);
    let prune_default = |default: usize| -> Result<Vec<usize>, String> {
        let n = prune_last.unwrap_or(default);
        if n >= layers {
            return Err(format!("prune_last = {n} would remove all {layers} blocks"));
        }
        Ok((layers - n..layers).collect())
    };
    let plan = match name {
        "slayer" => {
            let n = new_blocks.unwrap_or_else(|| odd_first_half(layers));
            if n > 0 && 2 * n as i64 > l - 1 {
                return Err(format!(
                    "slayer: {n} new blocks need odd originals up to {}, but the model has {layers} blocks",
                    2 * n - 1
                ));
            }
            PresetPlan {
                insert: (0..n as i64)
                    .map(|k| PresetInsert {
                        after: 2 * k + 1,
                        init: InitKind::Average,
                    })
                    .collect(),
                // 2 of 32 in the paper.
                prune: prune_default(((layers as f64 / 16.0).round() as usize).max(1))?,
            }
        }
        "llama-pro" => {
            let groups = new_blocks.unwrap_or(quarter);
            if groups == 0 || groups > layers {
                return Err(format!("llama-pro: {groups} groups for {layers} blocks"));
            }
            // The last block of each group; exact for divisible depths, rounded otherwise.
            let after =
                (1..=groups).map(|g| ((g * layers) as f64 / groups as f64).round() as i64 - 1);
            PresetPlan {
                insert: after
                    .map(|a| PresetInsert {
                        after: a,
                        init: InitKind::Copy,
                    })
                    .collect(),
                prune: prune_default(0)?,
            }
        }
        "prefix" | "suffix" => {
            let n = new_blocks.unwrap_or(quarter);
            let after = if name == "prefix" { -1 } else { l - 1 };
            PresetPlan {
                insert: (0..n)
                    .map(|_| PresetInsert {
                        after,
                        init: InitKind::Copy,
                    })
                    .collect(),
                prune: prune_default(0)?,
            }
        }
        "deep" => {
            let n = new_blocks.unwrap_or_else(|| odd_first_half(layers));
            let half = l / 2;
            if n > 0 && half + 2 * (n as i64 - 1) + 1 >= l {
                return Err(format!(
                    "deep: {n} new blocks do not fit in the second half of {layers} blocks"
                ));
            }
            PresetPlan {
                insert: (0..n as i64)
                    .map(|k| PresetInsert {
                        after: half + 2 * k,
                        init: InitKind::Average,
                    })
                    .collect(),
                prune: prune_default(0)?,
            }
        }
        "none" => PresetPlan {
            insert: Vec::new(),
            prune: prune_default(0)?,
        },
        other => {
            return Err(format!(
                "unknown preset `{other}` (known: {})",
                PRESETS.join(", ")
            ));
        }
    };
    Ok(plan)
}
