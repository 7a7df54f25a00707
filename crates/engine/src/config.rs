//! Model configuration: the subset of HF `config.json` that defines a Llama-family network,
//! parsed strictly enough that an unsupported architecture is refused before any weight is read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// RoPE frequency scaling as HF `rope_scaling` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1 / 3.2 wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

/// End-of-sequence ids: HF allows a single id or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids as a list.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// The architecture hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
}

/// The raw fields of `config.json` we read; everything else is kept verbatim for saving.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_max_positions() -> usize {
    2048
}

/// Sanity bounds: a config outside them is corrupt, and accepting it would mean huge allocations.
const MAX_DIM: usize = 1 << 20;
pub const MAX_LAYERS: usize = 4096;

impl LlamaConfig {
    /// Parses and validates `config.json` text. `path` is used in messages only.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_json_value(&value, path)
    }

    /// Parses and validates an already-decoded `config.json`.
    pub fn from_json_value(value: &serde_json::Value, path: &Path) -> Result<Self> {
        if let Some(model_type) = value.get("model_type").and_then(|v| v.as_str())
            && model_type != "llama"
        {
            return Err(Error::unsupported(
                path,
                format!(
                    "architecture `{model_type}` (supported: llama — Llama 2, Llama 3.x, SmolLM2)"
                ),
            ));
        }
        let raw: RawConfig = serde_json::from_value(value.clone())
            .map_err(|e| Error::format(path, format!("config: {e}")))?;
        // A Llama `model_type` beside another architecture's class is a contradiction (an edited
        // or mislabelled config): loading it as Llama would compute something else.
        if let Some(archs) = &raw.architectures
            && !archs.is_empty()
            && !archs.iter().any(|a| a == "LlamaForCausalLM")
        {
            return Err(Error::unsupported(
                path,
                format!(
                    "`architectures` is {archs:?} but slayer loads LlamaForCausalLM only{}",
                    if raw.model_type.is_some() {
                        " (`model_type` says llama: the config contradicts itself)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if raw.model_type.is_none()
            && !raw
                .architectures
                .as_ref()
                .is_some_and(|a| a.iter().any(|s| s == "LlamaForCausalLM"))
        {
            return Err(Error::unsupported(
                path,
                "neither `model_type: llama` nor `LlamaForCausalLM` in `architectures`",
            ));
        }
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(Error::unsupported(
                path,
                format!("hidden_act `{act}` (only silu)"),
            ));
        }
        if raw.attention_bias || raw.mlp_bias {
            return Err(Error::unsupported(path, "attention or MLP biases"));
        }
        let rope_scaling = match &raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(parse_rope_scaling(v, path)?),
        };
        let heads = raw.num_attention_heads;
        let config = Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads `config.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::corpus::read_settings(path, "config")?;
        Self::from_json_str(&text, path)
    }

    /// Checks internal consistency (head counts divide, sizes in sane ranges).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::format(path, m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 || v > MAX_DIM {
                return bad(format!("`{name}` = {v} is out of range (1..={MAX_DIM})"));
            }
        }
        if self.num_hidden_layers > MAX_LAYERS {
            return bad(format!(
                "`num_hidden_layers` = {} is out of range (0..={MAX_LAYERS})",
                self.num_hidden_layers
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "`num_attention_heads` ({}) is not a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "`head_dim` ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "`rms_norm_eps` ({}) must be positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!(
                "`rope_theta` ({}) must be positive",
                self.rope_theta
            ));
        }
        if self.max_position_embeddings == 0 {
            return bad("`max_position_embeddings` must be positive".into());
        }
        Ok(())
    }

    /// Number of query heads per key/value head.
    #[must_use]
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Parameter count of one transformer block.
    #[must_use]
    pub fn block_params(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h
    }

    /// Total parameter count (embedding, blocks, final norm, head if untied).
    #[must_use]
    pub fn total_params(&self) -> usize {
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.hidden_size + self.num_hidden_layers * self.block_params()
    }

    /// All end-of-sequence ids.
    #[must_use]
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// A complete HF `config.json` for this configuration, merged over `base` (the source
    /// model's original config, so fields we do not model survive surgery and conversion).
    #[must_use]
    pub fn to_json(
        &self,
        base: Option<&serde_json::Value>,
        torch_dtype: &str,
    ) -> serde_json::Value {
        let mut map = match base {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        let rope_scaling = match &self.rope_scaling {
            None => serde_json::Value::Null,
            Some(s) => serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
        };
        let fields = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
        });
        if let serde_json::Value::Object(f) = fields {
            map.extend(f);
        }
        if let Some(bos) = self.bos_token_id {
            map.insert("bos_token_id".into(), bos.into());
        }
        if let Some(eos) = &self.eos_token_id {
            map.insert(
                "eos_token_id".into(),
                serde_json::to_value(eos).unwrap_or(serde_json::Value::Null),
            );
        }
        serde_json::Value::Object(map)
    }
}

fn parse_rope_scaling(v: &serde_json::Value, path: &Path) -> Result<RopeScaling> {
    // HF wrote this key as `type` before it became `rope_type`.
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|k| k.as_str())
        .unwrap_or("");
    let num = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| Error::format(path, format!("rope_scaling: missing number `{key}`")))
    };
    match kind {
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "default" => Err(Error::format(path, "rope_scaling `default` should be null")),
        other => Err(Error::unsupported(
            path,
            format!("rope_scaling type `{other}` (supported: llama3, linear)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"bos_token_id":1,"eos_token_id":2,"hidden_act":"silu","hidden_size":576,"intermediate_size":1536,"max_position_embeddings":8192,"mlp_bias":false,"model_type":"llama","num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,"rms_norm_eps":1e-05,"rope_scaling":null,"rope_theta":100000,"tie_word_embeddings":true,"vocab_size":49152}"#;

    const LLAMA32: &str = r#"{"architectures":["LlamaForCausalLM"],"bos_token_id":128000,"eos_token_id":[128001,128008,128009],"head_dim":64,"hidden_act":"silu","hidden_size":2048,"intermediate_size":8192,"max_position_embeddings":131072,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":16,"num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":true,"vocab_size":128256}"#;

    #[test]
    fn smollm2_config_parses_with_known_parameter_count() {
        let c = LlamaConfig::from_json_str(SMOLLM2, Path::new("config.json")).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.kv_groups(), 3);
        // 134,515,008 parameters is SmolLM2-135M's published count.
        assert_eq!(c.total_params(), 134_515_008);
    }

    #[test]
    fn llama32_config_parses_rope_scaling_and_eos_list() {
        let c = LlamaConfig::from_json_str(LLAMA32, Path::new("config.json")).unwrap();
        assert_eq!(c.eos_ids(), vec![128_001, 128_008, 128_009]);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if (factor - 32.0).abs() < 1e-9)
        );
        // Llama-3.2-1B: 1,235,814,400 parameters.
        assert_eq!(c.total_params(), 1_235_814_400);
    }

    #[test]
    fn unknown_architecture_is_refused_with_path() {
        let text = SMOLLM2.replace("\"llama\"", "\"mistral\"");
        let err = LlamaConfig::from_json_str(&text, Path::new("m/config.json")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("m/config.json") && msg.contains("mistral"),
            "{msg}"
        );
    }

    #[test]
    fn missing_key_is_named() {
        let text = SMOLLM2.replace("\"hidden_size\":576,", "");
        let msg = LlamaConfig::from_json_str(&text, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("hidden_size"), "{msg}");
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let text = SMOLLM2.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4");
        let msg = LlamaConfig::from_json_str(&text, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a multiple"), "{msg}");
    }

    #[test]
    fn json_round_trip_keeps_the_config() {
        let c = LlamaConfig::from_json_str(LLAMA32, Path::new("config.json")).unwrap();
        let v = c.to_json(None, "float32");
        let back = LlamaConfig::from_json_value(&v, Path::new("config.json")).unwrap();
        assert_eq!(c, back);
    }
}
