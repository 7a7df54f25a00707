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

use serde::{Deserialize, Serialize};

pub use preset::PRESETS;
pub use spec::{InitKind, ModelSpec, PlanFile, PlanSpec, Span};
pub use totals::{MemoryParams, Totals};

use crate::model::BLOCK_TENSORS;

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
        Self {
            severity: Severity::Error,
            message: message.into(),
            span,
        }
    }

    fn warning(message: impl Into<String>, span: Option<Span>) -> Self {
        Self {
            severity: Severity::Warning,
            message: message.into(),
            span,
        }
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

    /// `file:line:col: message`, for a diagnostic returned as an error (whose printer says
    /// "error:" itself).
    #[must_use]
    pub fn locate(&self, file: &str, source: &str) -> String {
        match &self.span {
            Some(span) => {
                let (line, col) = line_col(source, span.start);
                format!("{file}:{line}:{col}: {}", self.message)
            }
            None => format!("{file}: {}", self.message),
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "origin", rename_all = "lowercase")]
pub enum Origin {
    /// Original block `index`, unchanged. Serialised as `source`: the final block's own `index`
    /// sits beside it in the flattened JSON.
    Original {
        #[serde(rename = "source")]
        index: usize,
    },
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        self.layers
            .iter()
            .filter(|l| l.is_new())
            .map(|l| l.index)
            .collect()
    }

    /// Final indices of trainable blocks.
    #[must_use]
    pub fn trainable_indices(&self) -> Vec<usize> {
        self.layers
            .iter()
            .filter(|l| l.trainable)
            .map(|l| l.index)
            .collect()
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
            layers.push(FinalLayer {
                index: 0,
                origin: Origin::Original { index: i },
                trainable,
            });
            for new in by_original.remove(&(i as i64)).unwrap_or_default() {
                layers.push(new);
            }
        }
        for (i, l) in layers.iter_mut().enumerate() {
            l.index = i;
        }
        Self {
            base_layers: self.base_layers,
            preset: self.preset.clone(),
            layers,
            pruned: Vec::new(),
        }
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
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
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
    let top: TopLevel = toml::from_str(source)
        .map_err(|e| Diagnostic::error(e.message().trim().to_string(), e.span()))?;
    Ok(PlanFile {
        model: top.model,
        plan: top.plan,
    })
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
pub const IDENTITY_ZERO: [&str; 2] = [
    crate::model::BlockTensor::OProj.name(),
    crate::model::BlockTensor::DownProj.name(),
];

#[expect(
    clippy::unnecessary_wraps,
    reason = "spans are optional wherever diagnostics take them"
)]
fn span_of<T>(s: &toml::Spanned<T>) -> Option<Span> {
    Some(s.span())
}

/// A new block before its final position is known.
struct Pending {
    after: i64,
    init: Init,
    zero: Vec<String>,
    scale: BTreeMap<String, f64>,
    span: Option<Span>,
}

/// Resolution state: the base depth and the diagnostics gathered so far.
struct Resolver<'a> {
    spec: &'a PlanSpec,
    base_layers: usize,
    diags: Vec<Diagnostic>,
}

impl Resolver<'_> {
    fn layers(&self) -> i64 {
        self.base_layers as i64
    }

    fn error(&mut self, message: impl Into<String>, span: Option<Span>) {
        self.diags.push(Diagnostic::error(message, span));
    }

    fn preset_span(&self) -> Option<Span> {
        self.spec.preset.as_ref().and_then(span_of)
    }

    /// An original block index, or an error saying the valid range.
    fn index(&mut self, i: i64, what: &str, span: Option<Span>) -> Option<usize> {
        if (0..self.layers()).contains(&i) {
            Some(i as usize)
        } else {
            let last = self.layers() - 1;
            self.error(
                format!("{what} {i} is out of range: the base model has blocks 0..={last}"),
                span,
            );
            None
        }
    }

    fn init(
        &mut self,
        kind: InitKind,
        after: i64,
        source: Option<(i64, Option<Span>)>,
        sources: Option<(Vec<i64>, Option<Span>)>,
        span: Option<Span>,
    ) -> Option<Init> {
        match kind {
            InitKind::Copy => {
                let (src, s_span) = source.unwrap_or((after.max(0), span));
                self.index(src, "copy source", s_span)
                    .map(|source| Init::Copy { source })
            }
            InitKind::Average => {
                let (pair, s_span) = sources.unwrap_or((vec![after, after + 1], span));
                if pair.len() != 2 {
                    self.error(
                        format!("`sources` needs two blocks, got {}", pair.len()),
                        s_span,
                    );
                    return None;
                }
                if after == self.layers() - 1 && pair == [after, after + 1] {
                    self.error(
                        format!("average init after the last block {after} needs block {}, which does not exist; use init = \"copy\" or give `sources`", after + 1),
                        s_span,
                    );
                    return None;
                }
                let a = self.index(pair[0], "average source", s_span.clone())?;
                let b = self.index(pair[1], "average source", s_span)?;
                Some(Init::Average { sources: [a, b] })
            }
        }
    }

    fn preset(&mut self) -> Option<preset::PresetPlan> {
        let Some(p) = &self.spec.preset else {
            for (field, span) in [
                (
                    "new_blocks",
                    self.spec.new_blocks.as_ref().map(toml::Spanned::span),
                ),
                (
                    "prune_last",
                    self.spec.prune_last.as_ref().map(toml::Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    self.diags.push(Diagnostic::warning(
                        format!("`{field}` has no effect without a preset"),
                        Some(span),
                    ));
                }
            }
            return Some(preset::PresetPlan::default());
        };
        let plan = preset::preset(
            p.get_ref(),
            self.base_layers,
            self.spec.new_blocks.as_ref().map(|n| *n.get_ref()),
            self.spec.prune_last.as_ref().map(|n| *n.get_ref()),
        );
        match plan {
            Ok(plan) => Some(plan),
            Err(msg) => {
                self.error(msg, span_of(p));
                None
            }
        }
    }

    fn default_zero(&mut self) -> Vec<String> {
        match &self.spec.zero {
            None => IDENTITY_ZERO.iter().map(|s| (*s).to_string()).collect(),
            Some(z) => canonical_list(z.get_ref()).unwrap_or_else(|bad| {
                self.error(unknown_tensor(&bad), span_of(z));
                Vec::new()
            }),
        }
    }

    /// Explicit insertions, or the preset's when none are given.
    fn insertions(&mut self, preset_plan: &preset::PresetPlan) -> Vec<Pending> {
        let default_zero = self.default_zero();
        let default_init = self.spec.init.as_ref().map(|i| *i.get_ref());
        let mut pending = Vec::new();
        let Some(list) = &self.spec.insert else {
            let span = self.preset_span();
            for p in &preset_plan.insert {
                if let Some(init) = self.init(
                    default_init.unwrap_or(p.init),
                    p.after,
                    None,
                    None,
                    span.clone(),
                ) {
                    pending.push(Pending {
                        after: p.after,
                        init,
                        zero: default_zero.clone(),
                        scale: BTreeMap::new(),
                        span: span.clone(),
                    });
                }
            }
            return pending;
        };
        for item in list.get_ref() {
            let span = span_of(item);
            let ins = item.get_ref();
            let after = *ins.after.get_ref();
            if !(-1..self.layers()).contains(&after) {
                let top = self.layers() - 1;
                self.error(
                    format!(
                        "insert after {after} is out of range: use -1 (before block 0) to {top}"
                    ),
                    span_of(&ins.after),
                );
                continue;
            }
            let kind = ins
                .init
                .as_ref()
                .map(|i| *i.get_ref())
                .or(default_init)
                .unwrap_or(InitKind::Copy);
            let zero = match &ins.zero {
                None => default_zero.clone(),
                Some(z) => match canonical_list(z.get_ref()) {
                    Ok(list) => list,
                    Err(bad) => {
                        self.error(unknown_tensor(&bad), span_of(z));
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
                        Some(_) => {
                            self.error(format!("scale for `{name}` is not finite"), span_of(s));
                        }
                        None => self.error(unknown_tensor(name), span_of(s)),
                    }
                }
            }
            let source = ins.source.as_ref().map(|s| (*s.get_ref(), span_of(s)));
            let sources = ins
                .sources
                .as_ref()
                .map(|s| (s.get_ref().clone(), span_of(s)));
            if kind == InitKind::Copy && sources.is_some() {
                self.error(
                    "`sources` is for init = \"average\"; copy takes `source`",
                    span,
                );
                continue;
            }
            if kind == InitKind::Average && source.is_some() {
                self.error(
                    "`source` is for init = \"copy\"; average takes `sources`",
                    span,
                );
                continue;
            }
            let count = ins.count.as_ref().map_or(1, |c| *c.get_ref());
            if pending.len() + count > preset::MAX_NEW_BLOCKS {
                self.error(
                    format!(
                        "more than {} new blocks in one plan",
                        preset::MAX_NEW_BLOCKS
                    ),
                    ins.count.as_ref().and_then(span_of).or(span),
                );
                break;
            }
            if count == 0 {
                self.diags.push(Diagnostic::warning(
                    "count = 0 inserts nothing",
                    ins.count.as_ref().and_then(span_of),
                ));
            }
            let Some(init) = self.init(kind, after, source, sources, span.clone()) else {
                continue;
            };
            for _ in 0..count {
                pending.push(Pending {
                    after,
                    init: init.clone(),
                    zero: zero.clone(),
                    scale: scale.clone(),
                    span: span.clone(),
                });
            }
        }
        pending
    }

    /// Pruned originals with the span that named each.
    fn pruning(&mut self, preset_plan: &preset::PresetPlan) -> BTreeMap<usize, Option<Span>> {
        let mut pruned = BTreeMap::new();
        // Two ways to say which blocks go: one would silently win over the other.
        if self.spec.prune.is_some()
            && let Some(last) = &self.spec.prune_last
        {
            let span = span_of(last);
            self.error(
                "`prune` and `prune_last` both choose the pruned blocks: keep one (`prune` \
                 lists them, `prune_last` removes the deepest N of a preset)"
                    .to_string(),
                span,
            );
        }
        if let Some(list) = &self.spec.prune {
            for item in list.get_ref() {
                if let Some(i) = self.index(*item.get_ref(), "prune index", span_of(item))
                    && pruned.insert(i, span_of(item)).is_some()
                {
                    self.error(format!("block {i} is pruned twice"), span_of(item));
                }
            }
        } else {
            let span = self
                .spec
                .prune_last
                .as_ref()
                .and_then(span_of)
                .or_else(|| self.preset_span());
            for &i in &preset_plan.prune {
                pruned.insert(i, span.clone());
            }
        }
        pruned
    }

    fn warn_about_layout(&mut self, layers: &[FinalLayer]) {
        let new: Vec<usize> = layers
            .iter()
            .filter(|l| l.is_new())
            .map(|l| l.index)
            .collect();
        if new.len() >= 2 && new.iter().enumerate().all(|(k, &i)| i == k) {
            let span = self
                .spec
                .insert
                .as_ref()
                .and_then(span_of)
                .or_else(|| self.preset_span());
            self.diags.push(Diagnostic::warning(
                format!(
                    "all {} new blocks are stacked at the bottom of the model: LLaMA Pro's ablation found this (\"prefix stacking\") collapses (task score 0.81 vs 75.11 interleaved)",
                    new.len()
                ),
                span,
            ));
        }
    }
}

/// Final order: insertions before block 0, then each surviving original followed by the blocks
/// inserted after it (after a pruned original too: `after` places, it does not read).
fn assemble(
    base_layers: usize,
    pending: &[Pending],
    pruned: &BTreeMap<usize, Option<Span>>,
) -> Vec<FinalLayer> {
    let mut layers = Vec::new();
    let push_new = |layers: &mut Vec<FinalLayer>, after: i64| {
        for p in pending.iter().filter(|p| p.after == after) {
            layers.push(FinalLayer {
                index: layers.len(),
                origin: Origin::New {
                    after,
                    init: p.init.clone(),
                    zero: p.zero.clone(),
                    scale: p.scale.clone(),
                },
                trainable: false,
            });
        }
    };
    push_new(&mut layers, -1);
    for i in 0..base_layers {
        if !pruned.contains_key(&i) {
            layers.push(FinalLayer {
                index: layers.len(),
                origin: Origin::Original { index: i },
                trainable: false,
            });
        }
        push_new(&mut layers, i as i64);
    }
    layers
}

/// Resolves `spec` for a base model of `base_layers` blocks.
#[must_use]
pub fn resolve(spec: &PlanSpec, base_layers: usize) -> Resolution {
    let mut r = Resolver {
        spec,
        base_layers,
        diags: Vec::new(),
    };
    if base_layers == 0 {
        r.error("the base model has no blocks", None);
        return Resolution {
            map: None,
            diagnostics: r.diags,
        };
    }
    let Some(preset_plan) = r.preset() else {
        return Resolution {
            map: None,
            diagnostics: r.diags,
        };
    };
    let pending = r.insertions(&preset_plan);
    let pruned = r.pruning(&preset_plan);
    for p in &pending {
        for s in p.init.sources() {
            if let Some(span) = pruned.get(&s) {
                r.error(
                    format!("block {s} is pruned but a new block is initialised from it"),
                    span.clone().or(p.span.clone()),
                );
            }
        }
    }
    let mut layers = assemble(base_layers, &pending, &pruned);
    if layers.is_empty() {
        r.error(
            "the plan leaves no blocks at all",
            spec.prune.as_ref().and_then(span_of),
        );
    }
    let pruned_set: BTreeSet<usize> = pruned.keys().copied().collect();
    resolve_train(spec, &mut layers, base_layers, &pruned_set, &mut r.diags);
    let has_errors = |d: &[Diagnostic]| d.iter().any(|d| d.severity == Severity::Error);
    if !layers.iter().any(|l| l.trainable) && !has_errors(&r.diags) {
        let span = spec
            .train
            .as_ref()
            .and_then(span_of)
            .or_else(|| r.preset_span());
        r.error(
            "nothing is trainable: insert blocks or say what trains with `train`",
            span,
        );
    }
    r.warn_about_layout(&layers);
    let map = (!has_errors(&r.diags)).then(|| LayerMap {
        base_layers,
        preset: spec.preset.as_ref().map(|p| p.get_ref().clone()),
        layers,
        pruned: pruned_set.into_iter().collect(),
    });
    Resolution {
        map,
        diagnostics: r.diags,
    }
}

/// Canonical names in block order, without repeats.
fn canonical_list(names: &[String]) -> Result<Vec<String>, String> {
    let mut list = names
        .iter()
        .map(|n| canonical_tensor(n).ok_or_else(|| n.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    list.sort_by_key(|n| BLOCK_TENSORS.iter().position(|t| t == n));
    list.dedup();
    Ok(list)
}

fn unknown_tensor(name: &str) -> String {
    format!(
        "unknown block tensor `{name}` (one of: {})",
        BLOCK_TENSORS
            .iter()
            .map(|t| t.strip_suffix(".weight").unwrap_or(t))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn resolve_train(
    spec: &PlanSpec,
    layers: &mut [FinalLayer],
    base_layers: usize,
    pruned: &BTreeSet<usize>,
    diags: &mut Vec<Diagnostic>,
) {
    let span = spec.train.as_ref().and_then(span_of);
    let value = spec
        .train
        .as_ref()
        .map_or(toml::Value::String("new".into()), |t| t.get_ref().clone());
    let (mut new, mut finals, mut originals): (bool, Vec<i64>, Vec<i64>) =
        (false, Vec::new(), Vec::new());
    let ints = |v: &toml::Value, what: &str, diags: &mut Vec<Diagnostic>| -> Vec<i64> {
        if let Some(a) = v.as_array() {
            a.iter()
                .filter_map(|x| {
                    let i = x.as_integer();
                    if i.is_none() {
                        diags.push(Diagnostic::error(
                            format!("`{what}` must hold block indices"),
                            span.clone(),
                        ));
                    }
                    i
                })
                .collect()
        } else {
            diags.push(Diagnostic::error(
                format!("`{what}` must be a list of block indices"),
                span.clone(),
            ));
            Vec::new()
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
            diags.push(Diagnostic::error(
                format!(
                    "train index {f} is out of range: the resolved model has blocks 0..={}",
                    n - 1
                ),
                span.clone(),
            ));
        } else if !seen.insert(f) {
            diags.push(Diagnostic::error(
                format!("final block {f} is listed twice in train"),
                span.clone(),
            ));
        } else {
            layers[f as usize].trainable = true;
        }
    }
    for o in originals {
        if !(0..base_layers as i64).contains(&o) {
            diags.push(Diagnostic::error(
                format!(
                    "train original {o} is out of range: the base model has blocks 0..={}",
                    base_layers - 1
                ),
                span.clone(),
            ));
        } else if pruned.contains(&(o as usize)) {
            diags.push(Diagnostic::error(
                format!("original block {o} is pruned, so it cannot train"),
                span.clone(),
            ));
        } else if let Some(l) = layers
            .iter_mut()
            .find(|l| l.origin == Origin::Original { index: o as usize })
        {
            l.trainable = true;
        }
    }
}

#[cfg(test)]
mod tests;
