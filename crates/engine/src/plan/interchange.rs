//! Plans in other tools' formats: mergekit passthrough YAML (export and import) and
//! LLaMA-Factory freeze-tuning YAML (export). Each says what it cannot express.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Init, LayerMap, Origin};

/// A converted file and what was lost on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub text: String,
    pub warnings: Vec<String>,
}

fn short(tensor: &str) -> &str {
    let t = tensor.strip_suffix(".weight").unwrap_or(tensor);
    t.rsplit('.').next().unwrap_or(t)
}

/// mergekit passthrough slices reproducing the map's layer order. Averaged initialisation cannot
/// be expressed (passthrough copies one layer): such blocks are exported as a copy of their first
/// source, with a warning. The trainable set is not part of mergekit's format.
#[must_use]
pub fn to_mergekit(map: &LayerMap, base_model: &str, dtype: &str) -> Converted {
    let mut warnings = Vec::new();
    let mut slices: Vec<SliceOut> = Vec::new();
    let slice = |range: [i64; 2], parameters: Option<MergekitParameters>| SliceOut {
        sources: vec![SourceOut {
            model: base_model.to_string(),
            layer_range: range,
            parameters,
        }],
    };
    // A run of consecutive original layers is one slice.
    let mut run: Option<(usize, usize)> = None;
    for layer in &map.layers {
        match &layer.origin {
            Origin::Original { index } => match &mut run {
                Some((_, end)) if *end == *index => *end += 1,
                _ => {
                    if let Some((a, b)) = run.take() {
                        slices.push(slice([a as i64, b as i64], None));
                    }
                    run = Some((*index, index + 1));
                }
            },
            Origin::New {
                init, zero, scale, ..
            } => {
                if let Some((a, b)) = run.take() {
                    slices.push(slice([a as i64, b as i64], None));
                }
                let source = match init {
                    Init::Copy { source } => *source,
                    Init::Average { sources } => {
                        warnings.push(format!(
                            "block {}: average of blocks {} and {} exported as a copy of block {}: mergekit passthrough cannot average",
                            layer.index, sources[0], sources[1], sources[0]
                        ));
                        sources[0]
                    }
                };
                let mut factors: BTreeMap<&str, f64> = BTreeMap::new();
                for z in zero {
                    factors.insert(short(z), 0.0);
                }
                for (t, f) in scale {
                    let prior = factors.get(short(t)).copied().unwrap_or(1.0);
                    factors.insert(short(t), prior * f);
                }
                let parameters = (!factors.is_empty()).then(|| MergekitParameters {
                    scale: factors
                        .iter()
                        .map(|(filter, value)| ScaleEntry {
                            filter: Some((*filter).to_string()),
                            value: *value,
                        })
                        // Everything else in the block keeps its weights.
                        .chain(std::iter::once(ScaleEntry {
                            filter: None,
                            value: 1.0,
                        }))
                        .collect(),
                });
                slices.push(slice([source as i64, source as i64 + 1], parameters));
            }
        }
    }
    if let Some((a, b)) = run.take() {
        slices.push(slice([a as i64, b as i64], None));
    }
    let config = MergekitOut {
        slices,
        merge_method: "passthrough",
        dtype,
    };
    let header = format!(
        "# mergekit passthrough config written by slayer; trainable blocks: {:?}\n",
        map.trainable_indices()
    );
    Converted {
        text: header + &serde_norway::to_string(&config).unwrap_or_default(),
        warnings,
    }
}

/// A plan file as slayer writes one from another tool's format (and from importance's
/// suggestion): `[model] base` and the `[plan]`.
#[derive(Serialize)]
pub struct PlanFileOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelOut>,
    pub plan: PlanOut<'a>,
}

#[derive(Serialize)]
pub struct ModelOut {
    pub base: String,
}

#[derive(Serialize)]
pub struct PlanOut<'a> {
    pub insert: Vec<InsertOut<'a>>,
    pub prune: Vec<i64>,
    pub train: &'a str,
}

#[derive(Serialize)]
pub struct InsertOut<'a> {
    pub after: i64,
    pub init: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero: Option<Vec<String>>,
}

/// What [`to_mergekit`] writes (the reader, [`MergekitConfig`], is more lenient).
#[derive(Serialize)]
struct MergekitOut<'a> {
    slices: Vec<SliceOut>,
    merge_method: &'a str,
    dtype: &'a str,
}

#[derive(Serialize)]
struct SliceOut {
    sources: Vec<SourceOut>,
}

#[derive(Serialize)]
struct SourceOut {
    model: String,
    layer_range: [i64; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<MergekitParameters>,
}

/// A slice source's `parameters`: per-tensor scale factors, the last without a filter.
#[derive(Serialize)]
struct MergekitParameters {
    scale: Vec<ScaleEntry>,
}

#[derive(Serialize)]
struct ScaleEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    value: f64,
}

#[derive(Debug, Deserialize)]
struct MergekitConfig {
    slices: Vec<Slice>,
    #[serde(default)]
    merge_method: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Slice {
    sources: Vec<SliceSource>,
}

#[derive(Debug, Deserialize)]
struct SliceSource {
    model: String,
    layer_range: [i64; 2],
    /// Any YAML: mergekit's forms vary ([`scale_filters`] reads what slayer understands).
    #[serde(default)]
    parameters: Option<serde_norway::Value>,
}

/// Converts mergekit passthrough YAML into slayer plan TOML. Layers that appear again after
/// their first use become new blocks (copies); layers never used are pruned. mergekit files do not
/// record the base depth, so trailing pruned layers are visible only when `base_layers` is given.
pub fn from_mergekit(yaml: &str, base_layers: Option<usize>) -> Result<Converted, String> {
    let config: MergekitConfig =
        serde_norway::from_str(yaml).map_err(|e| format!("not a mergekit config: {e}"))?;
    match config.merge_method.as_deref() {
        Some("passthrough") | None => {}
        Some(other) => {
            return Err(format!(
                "merge_method `{other}`: only passthrough slices describe a layer plan"
            ));
        }
    }
    let mut warnings = Vec::new();
    let mut model: Option<String> = None;
    let mut emitted = std::collections::BTreeSet::new();
    let mut last_original: i64 = -1;
    let mut inserts = Vec::new();
    let mut max_layer: i64 = -1;
    // Ranges are checked against the base's depth (or the largest depth a config may declare)
    // before they are walked, and so is the depth they add up to: a range of 10^11 layers in a
    // 50-byte file is refused, not expanded.
    let depth_limit = base_layers.unwrap_or(crate::config::MAX_LAYERS) as i64;
    let mut expanded: i64 = 0;
    for (n, slice) in config.slices.iter().enumerate() {
        let [src] = slice.sources.as_slice() else {
            return Err(format!(
                "slice {n} has {} sources: a passthrough plan takes one model per slice",
                slice.sources.len()
            ));
        };
        match &model {
            None => model = Some(src.model.clone()),
            Some(m) if *m != src.model => {
                return Err(format!(
                    "slice {n} uses model `{}`, earlier slices `{m}`: plans expand one base model",
                    src.model
                ));
            }
            Some(_) => {}
        }
        let [a, b] = src.layer_range;
        if a < 0 || b <= a {
            return Err(format!(
                "slice {n}: layer_range [{a}, {b}] is empty or negative"
            ));
        }
        if b > depth_limit {
            return Err(match base_layers {
                Some(layers) => format!(
                    "slice {n}: layer_range [{a}, {b}] reaches past the base model's {layers} layers"
                ),
                None => format!(
                    "slice {n}: layer_range [{a}, {b}] reaches past {depth_limit} layers, more than any model slayer loads"
                ),
            });
        }
        expanded += b - a;
        if expanded > crate::config::MAX_LAYERS as i64 {
            return Err(format!(
                "slice {n}: the slices add up to more than {} layers",
                crate::config::MAX_LAYERS
            ));
        }
        let zero = scale_filters(src.parameters.as_ref(), n)?;
        for k in a..b {
            max_layer = max_layer.max(k);
            if k > last_original && !emitted.contains(&k) {
                if !zero.is_empty() {
                    warnings.push(format!("slice {n}: layer {k} is used for the first time with scale filters; taken as the original, unscaled"));
                }
                emitted.insert(k);
                last_original = k;
            } else {
                inserts.push((last_original, k, zero.clone()));
            }
        }
    }
    let base_layers = match base_layers {
        Some(n) if (n as i64) <= max_layer => {
            return Err(format!(
                "the slices use layer {max_layer}, but the base model has {n} layers"
            ));
        }
        Some(n) => n as i64,
        None => {
            warnings.push(format!(
                "the base depth is unknown (pass the base model): assuming {} layers, so layers the slices drop at the top are not pruned",
                max_layer + 1
            ));
            max_layer + 1
        }
    };
    let pruned: Vec<i64> = (0..base_layers).filter(|k| !emitted.contains(k)).collect();
    let file = PlanFileOut {
        model: model.map(|base| ModelOut { base }),
        plan: PlanOut {
            insert: inserts
                .into_iter()
                .map(|(after, source, zero)| InsertOut {
                    after,
                    init: "copy",
                    source: Some(source),
                    zero: Some(zero),
                })
                .collect(),
            prune: pruned,
            train: "new",
        },
    };
    let toml = String::from("# converted by slayer from mergekit passthrough slices\n")
        + &toml::to_string(&file).map_err(|e| e.to_string())?;
    Ok(Converted {
        text: toml,
        warnings,
    })
}

/// Tensor filters whose scale is zero, from a slice's `parameters` (`scale` as a number or a list
/// of `{ filter, value }`).
fn scale_filters(
    params: Option<&serde_norway::Value>,
    slice: usize,
) -> Result<Vec<String>, String> {
    let Some(scale) = params.and_then(|p| p.get("scale")) else {
        return Ok(Vec::new());
    };
    let mut zero = Vec::new();
    match scale {
        serde_norway::Value::Sequence(items) => {
            for item in items {
                let value = item
                    .get("value")
                    .and_then(serde_norway::Value::as_f64)
                    .ok_or_else(|| format!("slice {slice}: scale entry without a numeric value"))?;
                match item.get("filter").and_then(serde_norway::Value::as_str) {
                    Some(filter) if value == 0.0 => zero.push(filter.to_string()),
                    Some(filter) if (value - 1.0).abs() > f64::EPSILON => {
                        return Err(format!(
                            "slice {slice}: scale {value} on `{filter}`: only 0 (identity init) and 1 are understood"
                        ));
                    }
                    _ => {}
                }
            }
        }
        v if v.as_f64() == Some(1.0) => {}
        other => return Err(format!("slice {slice}: unsupported scale {other:?}")),
    }
    Ok(zero)
}

/// The LLaMA-Factory settings [`to_llamafactory`] writes.
#[derive(Serialize)]
struct LlamaFactoryFreeze<'a> {
    model_name_or_path: &'a str,
    stage: &'a str,
    do_train: bool,
    finetuning_type: &'a str,
    freeze_trainable_modules: &'a str,
    freeze_trainable_layers: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    use_llama_pro: Option<bool>,
}

/// LLaMA-Factory freeze-tuning settings for the expanded model. LLaMA-Factory selects trainable
/// layers only as the last n, the first n, or (with `use_llama_pro`) every (L/n)-th layer ending
/// at the top; any other set cannot be expressed and is an error naming the set.
pub fn to_llamafactory(map: &LayerMap, expanded_model: &str) -> Result<Converted, String> {
    let trainable = map.trainable_indices();
    let l = map.layers.len();
    let n = trainable.len();
    if n == 0 {
        return Err("nothing is trainable".into());
    }
    let last_n: Vec<usize> = (l - n..l).collect();
    let first_n: Vec<usize> = (0..n).collect();
    let stride = l / n;
    let llama_pro: Vec<usize> = (stride - 1..l + stride - 1)
        .step_by(stride.max(1))
        .filter(|&i| i < l)
        .collect();
    let (setting, pro) = if trainable == llama_pro && l.is_multiple_of(n) {
        (n as i64, true)
    } else if trainable == last_n {
        (n as i64, false)
    } else if trainable == first_n {
        (-(n as i64), false)
    } else {
        return Err(format!(
            "LLaMA-Factory freeze tuning cannot train blocks {trainable:?} of {l}: it selects only the last n, the first n, or every (L/n)-th block (use_llama_pro)"
        ));
    };
    let settings = LlamaFactoryFreeze {
        model_name_or_path: expanded_model,
        stage: "pt",
        do_train: true,
        finetuning_type: "freeze",
        freeze_trainable_modules: "all",
        freeze_trainable_layers: setting,
        use_llama_pro: pro.then_some(true),
    };
    let text = String::from("# LLaMA-Factory settings written by slayer for the expanded model\n")
        + &serde_norway::to_string(&settings).map_err(|e| e.to_string())?;
    Ok(Converted {
        text,
        warnings: Vec::new(),
    })
}
