//! Layer plans: which blocks are copied where, how they start, which are pruned and which train.
//!
//! A plan is written as TOML ([`spec`]), may start from a [`preset`], and resolves against a base
//! depth into a [`LayerMap`]: for every final block its origin and whether it trains. Problems are
//! [`Diagnostic`]s with byte spans, rendered as `file:line:col`.

pub mod diff;
pub mod interchange;
pub mod preset;
pub mod spec;
pub mod totals;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use preset::PRESETS;
pub use spec::{InitKind, ModelSpec, PlanFile, PlanSpec, Span};
pub use totals::{MemoryParams, Totals};

use crate::core::model::BLOCK_TENSORS;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found in a plan, pointing into its file when it can.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    #[serde(skip)]
    pub span: Option<Span>,
}

impl Diagnostic {
    fn error(message: impl Into<String>, span: Option<Span>) -> Self {
        Self { severity: Severity::Error, message: message.into(), span }
    }

    fn warning(message: impl Into<String>, span: Option<Span>) -> Self {
        Self { severity: Severity::Warning, message: message.into(), span }
    }

    /// `file:line:col: error: message` (line and column 1-based; the file alone without a span).
    #[must_use]
    pub fn render(&self, file: &str, source: &str) -> String {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.span {
            Some(span) => {
                let (line, col) = line_col(source, span.start);
                format!("{file}:{line}:{col}: {kind}: {}", self.message)
            }
            None => format!("{file}: {kind}: {}", self.message),
        }
    }

    /// 1-based line and column of the span's start, when it has one.
    #[must_use]
    pub fn position(&self, source: &str) -> Option<(usize, usize)> {
        self.span.as_ref().map(|s| line_col(source, s.start))
    }
}

/// 1-based line and column (in characters) of byte `offset`.
#[must_use]
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// How a new block starts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Init {
    Copy { source: usize },
    Average { sources: [usize; 2] },
}

impl Init {
    /// The original blocks read to build the new one.
    #[must_use]
    pub fn sources(&self) -> Vec<usize> {
        match self {
            Self::Copy { source } => vec![*source],
            Self::Average { sources } => sources.to_vec(),
        }
    }
}

/// Where a final block comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "origin", rename_all = "lowercase")]
pub enum Origin {
    /// Original block `index`, unchanged.
    Original { index: usize },
    /// A new block inserted after original `after` (−1: before block 0).
    New {
        after: i64,
        init: Init,
        /// Block-relative tensor names set to zero (e.g. `self_attn.o_proj.weight`).
        zero: Vec<String>,
        /// Block-relative tensor name → multiplier.
        scale: BTreeMap<String, f64>,
    },
}

/// One block of the resolved model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinalLayer {
    pub index: usize,
    #[serde(flatten)]
    pub origin: Origin,
    pub trainable: bool,
}

impl FinalLayer {
    #[must_use]
    pub fn is_new(&self) -> bool {
        matches!(self.origin, Origin::New { .. })
    }
}

/// A plan resolved against a base depth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerMap {
    pub base_layers: usize,
    pub preset: Option<String>,
    pub layers: Vec<FinalLayer>,
    /// Original blocks removed.
    pub pruned: Vec<usize>,
}

impl LayerMap {
    /// Final indices of new blocks.
    #[must_use]
    pub fn new_indices(&self) -> Vec<usize> {
        self.layers.iter().filter(|l| l.is_new()).map(|l| l.index).collect()
    }

    /// Final indices of trainable blocks.
    #[must_use]
    pub fn trainable_indices(&self) -> Vec<usize> {
        self.layers.iter().filter(|l| l.trainable).map(|l| l.index).collect()
    }

    /// The same map with nothing pruned (for checking that insertion alone keeps the function).
    #[must_use]
    pub fn without_pruning(&self) -> Self {
        let mut layers: Vec<FinalLayer> = Vec::new();
        let mut by_original: BTreeMap<i64, Vec<FinalLayer>> = BTreeMap::new();
        for l in &self.layers {
            if let Origin::New { after, .. } = &l.origin {
                by_original.entry(*after).or_default().push(l.clone());
            }
        }
        for new in by_original.remove(&-1).unwrap_or_default() {
            layers.push(new);
        }
        for i in 0..self.base_layers {
            let trainable = self
                .layers
                .iter()
                .any(|l| l.trainable && l.origin == Origin::Original { index: i });
            layers.push(FinalLayer { index: 0, origin: Origin::Original { index: i }, trainable });
            for new in by_original.remove(&(i as i64)).unwrap_or_default() {
                layers.push(new);
            }
        }
        for (i, l) in layers.iter_mut().enumerate() {
            l.index = i;
        }
        Self { base_layers: self.base_layers, preset: self.preset.clone(), layers, pruned: Vec::new() }
    }
}

/// The outcome of resolving a plan: the map when there are no errors, and every diagnostic.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub map: Option<LayerMap>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Resolution {
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Parses plan TOML: a standalone plan file or an experiment (the `[plan]` and `[model]` tables
/// are read here; the experiment's other sections by their own readers). Syntax and type errors
/// are diagnostics with spans.
pub fn parse(source: &str) -> Result<PlanFile, Diagnostic> {
    /// Every top-level key an experiment may hold, so a misspelt section is an error.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TopLevel {
        #[serde(default)]
        model: Option<ModelSpec>,
        #[serde(default)]
        plan: PlanSpec,
        #[serde(default)]
        #[expect(dead_code, reason = "read by the experiment loader")]
        name: Option<toml::Value>,
        #[serde(default)]
        #[expect(dead_code, reason = "read by the experiment loader")]
        description: Option<toml::Value>,
        #[serde(default)]
        #[expect(dead_code, reason = "read by the experiment loader")]
        data: Option<toml::Value>,
        #[serde(default)]
        #[expect(dead_code, reason = "read by the experiment loader")]
        train: Option<toml::Value>,
        #[serde(default)]
        #[expect(dead_code, reason = "read by the experiment loader")]
        eval: Option<toml::Value>,
    }
    let top: TopLevel = toml::from_str(source).map_err(|e| Diagnostic::error(e.message().trim().to_string(), e.span()))?;
    Ok(PlanFile { model: top.model, plan: top.plan })
}

/// Canonical block-relative tensor name for `zero` / `scale` entries.
fn canonical_tensor(name: &str) -> Option<String> {
    let trimmed = name.strip_suffix(".weight").unwrap_or(name);
    BLOCK_TENSORS
        .iter()
        .find(|full| {
            let base = full.strip_suffix(".weight").unwrap_or(full);
            base == trimmed || base.rsplit('.').next() == Some(trimmed)
        })
        .map(|s| (*s).to_string())
}

/// The default tensors zeroed in new blocks: with o_proj and down_proj zero the block adds
/// nothing to the residual stream, so it starts as the identity.
pub const IDENTITY_ZERO: [&str; 2] = ["self_attn.o_proj.weight", "mlp.down_proj.weight"];

fn span_of<T>(s: &toml::Spanned<T>) -> Option<Span> {
    Some(s.span())
}

/// Resolves `spec` for a base model of `base_layers` blocks.
#[must_use]
pub fn resolve(spec: &PlanSpec, base_layers: usize) -> Resolution {
    let mut diags = Vec::new();
    let l = base_layers as i64;
    if base_layers == 0 {
        diags.push(Diagnostic::error("the base model has no blocks", None));
        return Resolution { map: None, diagnostics: diags };
    }
    let preset_name = spec.preset.as_ref().map(|p| p.get_ref().clone());
    let preset_plan = match &spec.preset {
        None => preset::PresetPlan::default(),
        Some(p) => match preset::preset(
            p.get_ref(),
            base_layers,
            spec.new_blocks.as_ref().map(|n| *n.get_ref()),
            spec.prune_last.as_ref().map(|n| *n.get_ref()),
        ) {
            Ok(plan) => plan,
            Err(msg) => {
                diags.push(Diagnostic::error(msg, span_of(p)));
                return Resolution { map: None, diagnostics: diags };
            }
        },
    };
    if spec.preset.is_none() {
        for (field, span) in [
            ("new_blocks", spec.new_blocks.as_ref().map(toml::Spanned::span)),
            ("prune_last", spec.prune_last.as_ref().map(toml::Spanned::span)),
        ] {
            if let Some(span) = span {
                diags.push(Diagnostic::warning(format!("`{field}` has no effect without a preset"), Some(span)));
            }
        }
    }

    // Default zero list.
    let mut default_zero: Vec<String> = IDENTITY_ZERO.iter().map(|s| (*s).to_string()).collect();
    if let Some(z) = &spec.zero {
        match canonical_list(z.get_ref()) {
            Ok(list) => default_zero = list,
            Err(bad) => diags.push(Diagnostic::error(unknown_tensor(&bad), span_of(z))),
        }
    }
    let default_init = spec.init.as_ref().map(|i| *i.get_ref());

    // Insertions: explicit ones replace the preset's.
    struct Pending {
        after: i64,
        init: Init,
        zero: Vec<String>,
        scale: BTreeMap<String, f64>,
        span: Option<Span>,
    }
    let mut pending: Vec<Pending> = Vec::new();
    let check_index = |i: i64, what: &str, span: Option<Span>, diags: &mut Vec<Diagnostic>| -> Option<usize> {
        if (0..l).contains(&i) {
            Some(i as usize)
        } else {
            diags.push(Diagnostic::error(
                format!("{what} {i} is out of range: the base model has blocks 0..={}", l - 1),
                span,
            ));
            None
        }
    };
    let make_init = |kind: InitKind, after: i64, source: Option<(i64, Option<Span>)>, sources: Option<(Vec<i64>, Option<Span>)>, span: Option<Span>, diags: &mut Vec<Diagnostic>| -> Option<Init> {
        match kind {
            InitKind::Copy => {
                let (src, s_span) = source.unwrap_or((after.max(0), span.clone()));
                check_index(src, "copy source", s_span, diags).map(|source| Init::Copy { source })
            }
            InitKind::Average => {
                let (pair, s_span) = sources.unwrap_or((vec![after, after + 1], span.clone()));
                if pair.len() != 2 {
                    diags.push(Diagnostic::error(format!("`sources` needs two blocks, got {}", pair.len()), s_span));
                    return None;
                }
                if after == l - 1 && pair == [after, after + 1] {
                    diags.push(Diagnostic::error(
                        format!("average init after the last block {after} needs block {}, which does not exist; use init = \"copy\" or give `sources`", after + 1),
                        s_span,
                    ));
                    return None;
                }
                let a = check_index(pair[0], "average source", s_span.clone(), diags)?;
                let b = check_index(pair[1], "average source", s_span, diags)?;
                Some(Init::Average { sources: [a, b] })
            }
        }
    };
    match &spec.insert {
        Some(list) => {
            for item in list.get_ref() {
                let span = span_of(item);
                let ins = item.get_ref();
                let after = *ins.after.get_ref();
                if !(-1..l).contains(&after) {
                    diags.push(Diagnostic::error(
                        format!("insert after {after} is out of range: use -1 (before block 0) to {}", l - 1),
                        span_of(&ins.after),
                    ));
                    continue;
                }
                let kind = ins.init.as_ref().map(|i| *i.get_ref()).or(default_init).unwrap_or(InitKind::Copy);
                let zero = match &ins.zero {
                    None => default_zero.clone(),
                    Some(z) => match canonical_list(z.get_ref()) {
                        Ok(list) => list,
                        Err(bad) => {
                            diags.push(Diagnostic::error(unknown_tensor(&bad), span_of(z)));
                            continue;
                        }
                    },
                };
                let mut scale = BTreeMap::new();
                if let Some(s) = &ins.scale {
                    for (name, factor) in s.get_ref() {
                        match canonical_tensor(name) {
                            Some(c) if factor.is_finite() => {
                                scale.insert(c, *factor);
                            }
                            Some(_) => diags.push(Diagnostic::error(format!("scale for `{name}` is not finite"), span_of(s))),
                            None => diags.push(Diagnostic::error(unknown_tensor(name), span_of(s))),
                        }
                    }
                }
                let source = ins.source.as_ref().map(|s| (*s.get_ref(), span_of(s)));
                let sources = ins.sources.as_ref().map(|s| (s.get_ref().clone(), span_of(s)));
                if kind == InitKind::Copy && sources.is_some() {
                    diags.push(Diagnostic::error("`sources` is for init = \"average\"; copy takes `source`", span.clone()));
                    continue;
                }
                if kind == InitKind::Average && source.is_some() {
                    diags.push(Diagnostic::error("`source` is for init = \"copy\"; average takes `sources`", span.clone()));
                    continue;
                }
                let count = ins.count.as_ref().map_or(1, |c| *c.get_ref());
                if count == 0 {
                    diags.push(Diagnostic::warning("count = 0 inserts nothing", ins.count.as_ref().and_then(span_of)));
                }
                let Some(init) = make_init(kind, after, source, sources, span.clone(), &mut diags) else { continue };
                for _ in 0..count {
                    pending.push(Pending { after, init: init.clone(), zero: zero.clone(), scale: scale.clone(), span: span.clone() });
                }
            }
        }
        None => {
            let span = spec.preset.as_ref().and_then(span_of);
            for p in &preset_plan.insert {
                let kind = default_init.unwrap_or(p.init);
                if let Some(init) = make_init(kind, p.after, None, None, span.clone(), &mut diags) {
                    pending.push(Pending { after: p.after, init, zero: default_zero.clone(), scale: BTreeMap::new(), span: span.clone() });
                }
            }
        }
    }

    // Pruning: explicit list replaces the preset's.
    let mut pruned: BTreeSet<usize> = BTreeSet::new();
    let mut prune_spans: BTreeMap<usize, Option<Span>> = BTreeMap::new();
    match &spec.prune {
        Some(list) => {
            for item in list.get_ref() {
                let i = *item.get_ref();
                if let Some(i) = check_index(i, "prune index", span_of(item), &mut diags) {
                    if !pruned.insert(i) {
                        diags.push(Diagnostic::error(format!("block {i} is pruned twice"), span_of(item)));
                    }
                    prune_spans.insert(i, span_of(item));
                }
            }
        }
        None => {
            let span = spec.prune_last.as_ref().and_then(span_of).or_else(|| spec.preset.as_ref().and_then(span_of));
            for &i in &preset_plan.prune {
                pruned.insert(i);
                prune_spans.insert(i, span.clone());
            }
        }
    }
    for p in &pending {
        for s in p.init.sources() {
            if pruned.contains(&s) {
                diags.push(Diagnostic::error(
                    format!("block {s} is pruned but a new block is initialised from it"),
                    prune_spans.get(&s).cloned().flatten().or(p.span.clone()),
                ));
            }
        }
    }

    // Assemble the final order.
    let mut layers = Vec::new();
    let push_new = |layers: &mut Vec<FinalLayer>, after: i64, pending: &[Pending]| {
        for p in pending.iter().filter(|p| p.after == after) {
            layers.push(FinalLayer {
                index: layers.len(),
                origin: Origin::New { after, init: p.init.clone(), zero: p.zero.clone(), scale: p.scale.clone() },
                trainable: false,
            });
        }
    };
    push_new(&mut layers, -1, &pending);
    for i in 0..base_layers {
        if !pruned.contains(&i) {
            layers.push(FinalLayer { index: layers.len(), origin: Origin::Original { index: i }, trainable: false });
        }
        push_new(&mut layers, i as i64, &pending);
    }
    if layers.is_empty() {
        diags.push(Diagnostic::error("the plan leaves no blocks at all", spec.prune.as_ref().and_then(span_of)));
    }

    // What trains.
    resolve_train(spec, &mut layers, base_layers, &pruned, &mut diags);
    if !layers.iter().any(|l| l.trainable) && !diags.iter().any(|d| d.severity == Severity::Error) {
        diags.push(Diagnostic::error(
            "nothing is trainable: insert blocks or say what trains with `train`",
            spec.train.as_ref().and_then(span_of).or_else(|| spec.preset.as_ref().and_then(span_of)),
        ));
    }

    // Layouts the literature shows to fail.
    let new: Vec<usize> = layers.iter().filter(|l| l.is_new()).map(|l| l.index).collect();
    if new.len() >= 2 && new.iter().enumerate().all(|(k, &i)| i == k) {
        diags.push(Diagnostic::warning(
            format!(
                "all {} new blocks are stacked at the bottom of the model: LLaMA Pro's ablation found this (\"prefix stacking\") collapses (task score 0.81 vs 75.11 interleaved)",
                new.len()
            ),
            spec.insert.as_ref().and_then(span_of).or_else(|| spec.preset.as_ref().and_then(span_of)),
        ));
    }

    let has_errors = diags.iter().any(|d| d.severity == Severity::Error);
    let map = (!has_errors).then(|| LayerMap { base_layers, preset: preset_name, layers, pruned: pruned.into_iter().collect() });
    Resolution { map, diagnostics: diags }
}

/// Canonical names in block order, without repeats.
fn canonical_list(names: &[String]) -> Result<Vec<String>, String> {
    let mut list = names.iter().map(|n| canonical_tensor(n).ok_or_else(|| n.clone())).collect::<Result<Vec<_>, _>>()?;
    list.sort_by_key(|n| BLOCK_TENSORS.iter().position(|t| t == n));
    list.dedup();
    Ok(list)
}

fn unknown_tensor(name: &str) -> String {
    format!(
        "unknown block tensor `{name}` (one of: {})",
        BLOCK_TENSORS.iter().map(|t| t.strip_suffix(".weight").unwrap_or(t)).collect::<Vec<_>>().join(", ")
    )
}

fn resolve_train(spec: &PlanSpec, layers: &mut [FinalLayer], base_layers: usize, pruned: &BTreeSet<usize>, diags: &mut Vec<Diagnostic>) {
    let span = spec.train.as_ref().and_then(span_of);
    let value = spec.train.as_ref().map_or(toml::Value::String("new".into()), |t| t.get_ref().clone());
    let (mut new, mut finals, mut originals): (bool, Vec<i64>, Vec<i64>) = (false, Vec::new(), Vec::new());
    let ints = |v: &toml::Value, what: &str, diags: &mut Vec<Diagnostic>| -> Vec<i64> {
        match v.as_array() {
            Some(a) => a
                .iter()
                .filter_map(|x| {
                    let i = x.as_integer();
                    if i.is_none() {
                        diags.push(Diagnostic::error(format!("`{what}` must hold block indices"), span.clone()));
                    }
                    i
                })
                .collect(),
            None => {
                diags.push(Diagnostic::error(format!("`{what}` must be a list of block indices"), span.clone()));
                Vec::new()
            }
        }
    };
    match &value {
        toml::Value::String(s) => match s.as_str() {
            "new" => new = true,
            "all" => finals = (0..layers.len() as i64).collect(),
            other => diags.push(Diagnostic::error(
                format!("train = \"{other}\": use \"new\", \"all\", a list of final indices, or {{ new = true, final = [...], original = [...] }}"),
                span.clone(),
            )),
        },
        toml::Value::Array(_) => finals = ints(&value, "train", diags),
        toml::Value::Table(t) => {
            new = t.get("new").is_none_or(|v| v.as_bool().unwrap_or(false));
            for key in t.keys() {
                if !["new", "final", "original"].contains(&key.as_str()) {
                    diags.push(Diagnostic::error(format!("unknown key `{key}` in train (new, final, original)"), span.clone()));
                }
            }
            if let Some(f) = t.get("final") {
                finals = ints(f, "train.final", diags);
            }
            if let Some(o) = t.get("original") {
                originals = ints(o, "train.original", diags);
            }
        }
        _ => diags.push(Diagnostic::error("train must be \"new\", \"all\", a list or a table", span.clone())),
    }
    if new {
        for l in layers.iter_mut().filter(|l| l.is_new()) {
            l.trainable = true;
        }
    }
    let n = layers.len() as i64;
    let mut seen = BTreeSet::new();
    for f in finals {
        if !(0..n).contains(&f) {
            diags.push(Diagnostic::error(format!("train index {f} is out of range: the resolved model has blocks 0..={}", n - 1), span.clone()));
        } else if !seen.insert(f) {
            diags.push(Diagnostic::error(format!("final block {f} is listed twice in train"), span.clone()));
        } else {
            layers[f as usize].trainable = true;
        }
    }
    for o in originals {
        if !(0..base_layers as i64).contains(&o) {
            diags.push(Diagnostic::error(format!("train original {o} is out of range: the base model has blocks 0..={}", base_layers - 1), span.clone()));
        } else if pruned.contains(&(o as usize)) {
            diags.push(Diagnostic::error(format!("original block {o} is pruned, so it cannot train"), span.clone()));
        } else if let Some(l) = layers.iter_mut().find(|l| l.origin == Origin::Original { index: o as usize }) {
            l.trainable = true;
        }
    }
}

#[cfg(test)]
mod tests;
