//! Plans in other tools' formats: mergekit passthrough YAML (export and import) and
//! LLaMA-Factory freeze-tuning YAML (export). Each says what it cannot express.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

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
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# mergekit passthrough config written by slayer; trainable blocks: {:?}",
        map.trainable_indices()
    );
    out.push_str("slices:\n");
    let model = yaml_string(base_model);
    let mut run: Option<(usize, usize)> = None;
    let flush = |out: &mut String, run: &mut Option<(usize, usize)>| {
        if let Some((a, b)) = run.take() {
            let _ = writeln!(
                out,
                "  - sources:\n      - model: {model}\n        layer_range: [{a}, {b}]"
            );
        }
    };
    for layer in &map.layers {
        match &layer.origin {
            Origin::Original { index } => match &mut run {
                Some((_, end)) if *end == *index => *end += 1,
                _ => {
                    flush(&mut out, &mut run);
                    run = Some((*index, index + 1));
                }
            },
            Origin::New {
                init, zero, scale, ..
            } => {
                flush(&mut out, &mut run);
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
                let _ = writeln!(
                    out,
                    "  - sources:\n      - model: {model}\n        layer_range: [{source}, {}]",
                    source + 1
                );
                let mut factors: BTreeMap<&str, f64> = BTreeMap::new();
                for z in zero {
                    factors.insert(short(z), 0.0);
                }
                for (t, f) in scale {
                    let prior = factors.get(short(t)).copied().unwrap_or(1.0);
                    factors.insert(short(t), prior * f);
                }
                if !factors.is_empty() {
                    out.push_str("        parameters:\n          scale:\n");
                    for (filter, value) in &factors {
                        let _ = writeln!(
                            out,
                            "            - filter: {filter}\n              value: {value:?}"
                        );
                    }
                    out.push_str("            - value: 1.0\n");
                }
            }
        }
    }
    flush(&mut out, &mut run);
    let _ = writeln!(out, "merge_method: passthrough\ndtype: {dtype}");
    Converted {
        text: out,
        warnings,
    }
}

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
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
    let mut toml = String::from("# converted by slayer from mergekit passthrough slices\n");
    if let Some(m) = &model {
        let _ = writeln!(toml, "[model]\nbase = {}\n", yaml_string(m));
    }
    toml.push_str("[plan]\ninsert = [\n");
    for (after, source, zero) in &inserts {
        let zero_list: Vec<String> = zero.iter().map(|z| yaml_string(z)).collect();
        let _ = writeln!(
            toml,
            "  {{ after = {after}, init = \"copy\", source = {source}, zero = [{}] }},",
            zero_list.join(", ")
        );
    }
    toml.push_str("]\n");
    let _ = writeln!(toml, "prune = {pruned:?}");
    toml.push_str("train = \"new\"\n");
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
    let mut text =
        String::from("# LLaMA-Factory settings written by slayer for the expanded model\n");
    let _ = writeln!(text, "model_name_or_path: {}", yaml_string(expanded_model));
    text.push_str(
        "stage: pt\ndo_train: true\nfinetuning_type: freeze\nfreeze_trainable_modules: all\n",
    );
    let _ = writeln!(text, "freeze_trainable_layers: {setting}");
    if pro {
        text.push_str("use_llama_pro: true\n");
    }
    Ok(Converted {
        text,
        warnings: Vec::new(),
    })
}
