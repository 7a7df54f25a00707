//! Layer-by-layer comparison of two resolved plans.

use serde::Serialize;

use super::{FinalLayer, LayerMap, Origin};

/// One row of a plan diff: the block at this final index in each plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffRow {
    pub index: usize,
    pub a: Option<FinalLayer>,
    pub b: Option<FinalLayer>,
}

impl DiffRow {
    /// Whether the two sides differ (origin, initialisation or trainability).
    #[must_use]
    pub fn changed(&self) -> bool {
        self.a != self.b
    }
}

/// Rows for every final index present in either plan.
#[must_use]
pub fn diff(a: &LayerMap, b: &LayerMap) -> Vec<DiffRow> {
    let n = a.layers.len().max(b.layers.len());
    (0..n)
        .map(|i| DiffRow {
            index: i,
            a: a.layers.get(i).cloned(),
            b: b.layers.get(i).cloned(),
        })
        .collect()
}

/// A short description of a block: `orig 12`, `new avg(1,2)`, `new copy 3`, with ` T` when it trains.
#[must_use]
pub fn describe(layer: &FinalLayer) -> String {
    let what = match &layer.origin {
        Origin::Original { index } => format!("orig {index}"),
        Origin::New { init, .. } => match init {
            super::Init::Copy { source } => format!("new copy {source}"),
            super::Init::Average { sources } => format!("new avg({},{})", sources[0], sources[1]),
        },
    };
    if layer.trainable {
        format!("{what} [train]")
    } else {
        what
    }
}
