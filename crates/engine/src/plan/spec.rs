//! The plan as written in TOML (`[plan]` of an experiment, or a standalone plan file), with byte
//! spans kept so every diagnostic points at `file:line:col`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// How a new block's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitKind {
    /// A copy of one source block (LLaMA Pro).
    Copy,
    /// The mean of two source blocks, by default blocks i and i+1 (SLayer).
    Average,
}

/// One insertion: `count` new blocks placed after original block `after` (−1: before block 0).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsertSpec {
    pub after: Spanned<i64>,
    #[serde(default)]
    pub init: Option<Spanned<InitKind>>,
    /// Source block for `copy` (default: `after`, or 0 when `after` is −1).
    #[serde(default)]
    pub source: Option<Spanned<i64>>,
    /// Source blocks for `average` (default: `after` and `after + 1`).
    #[serde(default)]
    pub sources: Option<Spanned<Vec<i64>>>,
    /// Tensors set to zero (default: the plan's `zero`). Names are block-relative HF suffixes
    /// such as `self_attn.o_proj`, or short forms `o_proj`, `down_proj`.
    #[serde(default)]
    pub zero: Option<Spanned<Vec<String>>>,
    /// Explicit multipliers per tensor, applied after initialisation.
    #[serde(default)]
    pub scale: Option<Spanned<BTreeMap<String, f64>>>,
    /// Several identical insertions at this point.
    #[serde(default)]
    pub count: Option<Spanned<usize>>,
}

/// The `[plan]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// slayer | llama-pro | prefix | suffix | deep | none
    #[serde(default)]
    pub preset: Option<Spanned<String>>,
    /// Preset parameter: how many blocks to insert.
    #[serde(default)]
    pub new_blocks: Option<Spanned<usize>>,
    /// Preset parameter: how many of the last blocks to prune.
    #[serde(default)]
    pub prune_last: Option<Spanned<usize>>,
    /// Default initialisation of the preset's insertions.
    #[serde(default)]
    pub init: Option<Spanned<InitKind>>,
    /// Default tensors zeroed in new blocks (identity start).
    #[serde(default)]
    pub zero: Option<Spanned<Vec<String>>>,
    /// Explicit insertions: replace the preset's.
    #[serde(default)]
    pub insert: Option<Spanned<Vec<Spanned<InsertSpec>>>>,
    /// Original blocks to remove: replaces the preset's.
    #[serde(default)]
    pub prune: Option<Spanned<Vec<Spanned<i64>>>>,
    /// What trains: `"new"`, `"all"`, a list of final indices, or
    /// `{ new = true, final = [...], original = [...] }`.
    #[serde(default)]
    pub train: Option<Spanned<toml::Value>>,
}

/// A standalone plan file: an optional `[model]` and the `[plan]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    #[serde(default)]
    pub model: Option<ModelSpec>,
    #[serde(default)]
    pub plan: PlanSpec,
}

/// `[model]`: which base model the plan applies to.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A model directory, GGUF file, name under the data dir's models/, or a fetchable alias.
    pub base: String,
}

/// Byte range of a value in its file.
pub type Span = Range<usize>;
