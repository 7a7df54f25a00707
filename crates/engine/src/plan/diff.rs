//! Layer-by-layer comparison of two resolved plans.

use serde::Serialize;

use super::{FinalLayer, LayerMap, Origin};

/// One row of a plan diff: the same place in both plans, aligned by the original blocks (an
/// original block is a row whether kept or pruned; new blocks inserted after the same
/// original are paired in order), each side with its block and final index, if any.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffRow {
    /// The original block this row is (`Some`), or that the new blocks of this row follow
    /// (`after`; −1 before block 0).
    pub original: Option<usize>,
    pub after: i64,
    pub a: Option<FinalLayer>,
    pub b: Option<FinalLayer>,
}

impl DiffRow {
    /// Whether the two sides differ: present or not, origin, initialisation or trainability —
    /// not where the block ends up (an insertion earlier shifts every later index).
    #[must_use]
    pub fn changed(&self) -> bool {
        let key = |l: &Option<FinalLayer>| l.as_ref().map(|l| (l.origin.clone(), l.trainable));
        key(&self.a) != key(&self.b)
    }
}

/// For each original block `i` (and −1, before block 0): the new blocks after it, in order,
/// and the block itself if kept.
type Slots = std::collections::BTreeMap<i64, (Vec<FinalLayer>, Option<FinalLayer>)>;

fn slots(map: &LayerMap) -> Slots {
    let mut out = Slots::new();
    for layer in &map.layers {
        match &layer.origin {
            Origin::Original { index } => {
                out.entry(i64::try_from(*index).unwrap_or(i64::MAX))
                    .or_default()
                    .1 = Some(layer.clone());
            }
            Origin::New { after, .. } => out.entry(*after).or_default().0.push(layer.clone()),
        }
    }
    out
}

/// The rows of two plans of the same base model, aligned by original block.
#[must_use]
pub fn diff(a: &LayerMap, b: &LayerMap) -> Vec<DiffRow> {
    let (sa, sb) = (slots(a), slots(b));
    let base = a.base_layers.max(b.base_layers);
    let mut rows = Vec::new();
    for anchor in -1..i64::try_from(base).unwrap_or(i64::MAX) {
        if anchor >= 0 {
            let original = usize::try_from(anchor).unwrap_or_default();
            rows.push(DiffRow {
                original: Some(original),
                after: anchor,
                a: sa.get(&anchor).and_then(|s| s.1.clone()),
                b: sb.get(&anchor).and_then(|s| s.1.clone()),
            });
        }
        let empty = Vec::new();
        let new_a = sa.get(&anchor).map_or(&empty, |s| &s.0);
        let new_b = sb.get(&anchor).map_or(&empty, |s| &s.0);
        for k in 0..new_a.len().max(new_b.len()) {
            rows.push(DiffRow {
                original: None,
                after: anchor,
                a: new_a.get(k).cloned(),
                b: new_b.get(k).cloned(),
            });
        }
    }
    rows
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
