//! Tokenizers: loaded from `tokenizer.json`, or built from a GGUF vocabulary and merges with the
//! pre-tokenizer its `tokenizer.ggml.pre` names. Also the special tokens and the chat template.
//!
//! candle's GGUF tokenizer adds a prefix space for SmolLM2 (`"user"` → `"Ġuser"`), which breaks
//! ChatML; the pre-tokenizers here mirror the HF `tokenizer.json` of each family instead.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::checkpoint::gguf::{GgufFile, GgufValue};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// The Llama 3 ("llama-bpe") pre-tokenisation pattern, as in its `tokenizer.json`.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer of a GGUF `tokenizer.ggml.pre` name, as the family's `tokenizer.json` has it.
fn pre_tokenizer(pre: &str, path: &Path) -> Result<PreTokenizerWrapper> {
    match pre {
        "smollm" => Ok(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into()),
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::format(path, e.to_string()))?;
            Ok(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into())
        }
        other => Err(Error::unsupported(
            path,
            format!("pre-tokenizer `{other}` (supported: smollm, llama-bpe)"),
        )),
    }
}

/// Refuses a tokenizer that can produce an id the model has no embedding row for (its vocabulary
/// is larger than the config's `vocab_size`): every such token would fail deep inside the model.
fn check_ids_fit(
    tokenizer: &tokenizers::Tokenizer,
    config: &LlamaConfig,
    tokenizer_path: &Path,
    config_path: &Path,
) -> Result<()> {
    let Some((token, id)) = tokenizer
        .get_vocab(true)
        .into_iter()
        .max_by_key(|(_, id)| *id)
    else {
        return Ok(());
    };
    if (id as usize) < config.vocab_size {
        return Ok(());
    }
    let config_path = if config_path == tokenizer_path {
        "its metadata".to_string()
    } else {
        config_path.display().to_string()
    };
    Err(Error::format(
        tokenizer_path,
        format!(
            "the tokenizer has token id {id} (`{token}`), but the model's vocabulary ends at {} \
             (`vocab_size` = {} in {config_path}): the tokenizer does not belong to this model",
            config.vocab_size - 1,
            config.vocab_size
        ),
    ))
}

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    chat_template: Option<String>,
    /// `tokenizer_config.json` as read (or built), kept so saving preserves unknown fields.
    config_json: serde_json::Value,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("eos_ids", &self.eos_ids)
            .field("chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

/// A special token in `tokenizer_config.json` is a string or `{ "content": ... }`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from an HF directory; `None` when the
    /// directory has no `tokenizer.json`.
    pub fn from_hf_dir(dir: &Path, config: &LlamaConfig) -> Result<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Ok(None);
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::format(&path, format!("invalid tokenizer: {e}")))?;
        let config_path = dir.join("tokenizer_config.json");
        let tokenizer_config = if config_path.is_file() {
            let text = crate::corpus::read_settings(&config_path, "tokenizer config")?;
            serde_json::from_str(&text)
                .map_err(|e| Error::format(&config_path, format!("invalid JSON: {e}")))?
        } else {
            serde_json::json!({})
        };
        let mut chat_template = match tokenizer_config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take the default one.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.is_file() {
            chat_template = Some(crate::corpus::read_settings(&jinja, "chat template")?);
        }
        let bos_token = token_string(tokenizer_config.get("bos_token"));
        let eos_token = token_string(tokenizer_config.get("eos_token"));
        check_ids_fit(&inner, config, &path, &dir.join("config.json"))?;
        Ok(Some(Self::assemble(
            inner,
            bos_token,
            eos_token,
            chat_template,
            tokenizer_config,
            config,
        )))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
        chat_template: Option<String>,
        tokenizer_config: serde_json::Value,
        config: &LlamaConfig,
    ) -> Self {
        let mut eos_ids = config.eos_ids();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t))
            && !eos_ids.contains(&id)
        {
            eos_ids.push(id);
        }
        Self {
            inner,
            bos_token,
            eos_token,
            eos_ids,
            chat_template,
            config_json: tokenizer_config,
        }
    }

    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    pub fn from_gguf(file: &GgufFile, config: &LlamaConfig, path: &Path) -> Result<Self> {
        let get = |k: &str| file.get(&format!("tokenizer.ggml.{k}"));
        let model = get("model").and_then(GgufValue::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(Error::unsupported(
                path,
                format!("tokenizer model `{model}` (supported: gpt2-style BPE: smollm, llama-bpe)"),
            ));
        }
        let pre = get("pre").and_then(GgufValue::as_str).unwrap_or("default");
        let strings = |k: &str| -> Result<Vec<&str>> {
            Ok(get(k)
                .and_then(GgufValue::as_array)
                .ok_or_else(|| Error::format(path, format!("no `tokenizer.ggml.{k}` array")))?
                .as_strings()
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!("`tokenizer.ggml.{k}` is not an array of strings"),
                    )
                })?
                .iter()
                .collect())
        };
        let tokens = strings("tokens")?;
        // Bounds before the vocabulary is built (it costs ~100 bytes a token): the tokens fit the
        // model's embedding, and each merge makes one token, so there are fewer merges than tokens.
        if tokens.len() > config.vocab_size {
            return Err(Error::format(
                path,
                format!(
                    "`tokenizer.ggml.tokens` has {} tokens, more than the model's vocabulary of {}",
                    tokens.len(),
                    config.vocab_size
                ),
            ));
        }
        let merge_count = get("merges")
            .and_then(GgufValue::as_array)
            .map_or(0, super::checkpoint::gguf::GgufArray::len);
        if merge_count > tokens.len() {
            return Err(Error::format(
                path,
                format!(
                    "`tokenizer.ggml.merges` has {merge_count} merges for {} tokens: a BPE vocabulary has fewer merges than tokens",
                    tokens.len()
                ),
            ));
        }
        let merges: Vec<(String, String)> = strings("merges")?
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::format(path, format!("merge `{m}` has no space")))
            })
            .collect::<Result<_>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::format(path, format!("invalid BPE vocabulary: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre, path)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let types: Vec<u64> = get("token_type")
            .and_then(GgufValue::as_array)
            .map(|a| (0..a.len()).map(|i| a.u64_at(i).unwrap_or(1)).collect())
            .unwrap_or_default();
        let (mut special, mut user) = (Vec::new(), Vec::new());
        for (i, ty) in types.iter().enumerate() {
            let Some(tok) = tokens.get(i) else { break };
            match ty {
                3 => special.push(AddedToken::from((*tok).to_string(), true)),
                4 => user.push(AddedToken::from((*tok).to_string(), false).normalized(false)),
                _ => {}
            }
        }
        inner
            .add_special_tokens(special)
            .map_err(|e| Error::format(path, format!("special tokens: {e}")))?;
        inner
            .add_tokens(user)
            .map_err(|e| Error::format(path, format!("added tokens: {e}")))?;
        let id_token = |k: &str| {
            get(k)
                .and_then(GgufValue::as_u64)
                .and_then(|id| tokens.get(id as usize))
                .map(|t| (*t).to_string())
        };
        let bos_token = id_token("bos_token_id");
        let eos_token = id_token("eos_token_id");
        let add_bos = matches!(get("add_bos_token"), Some(GgufValue::Bool(true)));
        if add_bos && let (Some(bos), Some(id)) = (&bos_token, config.bos_token_id) {
            let processor = TemplateProcessing::builder()
                .try_single(format!("{bos} $A"))
                .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
                .map_err(|e| Error::format(path, e.clone()))?
                .special_tokens(vec![(bos.clone(), id)])
                .build()
                .map_err(|e| Error::format(path, e.to_string()))?;
            inner.with_post_processor(Some(processor));
        }
        let chat_template = file
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .map(str::to_string);
        check_ids_fit(&inner, config, path, path)?;
        let tokenizer_config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_bos_token": add_bos,
            "clean_up_tokenization_spaces": false,
            "model_max_length": config.max_position_embeddings,
        });
        Ok(Self::assemble(
            inner,
            bos_token,
            eos_token,
            chat_template,
            tokenizer_config,
            config,
        ))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (with the chat template) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        self.inner
            .save(&path, false)
            .map_err(|e| Error::format(&path, format!("cannot save tokenizer: {e}")))?;
        let mut cfg = self.config_json.clone();
        if let serde_json::Value::Object(map) = &mut cfg {
            if let Some(t) = &self.chat_template {
                map.insert("chat_template".into(), t.clone().into());
            }
            map.entry("tokenizer_class")
                .or_insert_with(|| "PreTrainedTokenizerFast".into());
        }
        crate::atomic::write_json(&dir.join("tokenizer_config.json"), &cfg)
    }

    /// Token ids of `text`. `add_special_tokens` applies the post-processor (e.g. a BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Token ids of a long text (a corpus), at most `max_tokens` of them, encoded a piece of at
    /// most [`ENCODE_PIECE_BYTES`] at a time. The tokenizers crate keeps ~100–400 bytes per token
    /// while it encodes (the token strings, offsets and masks beside the ids), so a 9 MB text
    /// encoded in one call peaked near 1 GB; by pieces, memory is the ids plus one piece.
    /// Pieces end after a newline that a non-space follows, or else before a space between a
    /// word and a word, where pre-tokenizers split anyway; a text of one piece is encoded
    /// exactly as [`Self::encode`] does.
    pub fn encode_long(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() && ids.len() < max_tokens {
            let end = piece_end(rest, ENCODE_PIECE_BYTES);
            ids.extend(self.encode(&rest[..end], false)?);
            rest = &rest[end..];
        }
        ids.truncate(max_tokens);
        Ok(ids)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token string.
    #[must_use]
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    #[must_use]
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// SHA-256 of everything that decides how text is cut: the tokenizer's whole JSON (model,
    /// vocabulary, merges, normalizer, added tokens) and its end-of-text ids. Two tokenizers of
    /// one vocabulary size differ here.
    pub fn content_fingerprint(&self) -> Result<[u8; 32]> {
        use sha2::Digest as _;
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| Error::Invalid(format!("the tokenizer cannot be serialised: {e}")))?;
        let mut hash = sha2::Sha256::new();
        hash.update(json.as_bytes());
        for id in &self.eos_ids {
            hash.update(id.to_le_bytes());
        }
        Ok(hash.finalize().into())
    }

    #[must_use]
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    #[must_use]
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Ids that end generation.
    #[must_use]
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Adds ids that end generation (e.g. from `generation_config.json`).
    pub fn add_eos_ids(&mut self, ids: &[u32]) {
        for id in ids {
            if !self.eos_ids.contains(id) {
                self.eos_ids.push(*id);
            }
        }
    }

    /// The model's Jinja chat template, if it has one.
    #[must_use]
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// The longest text [`Tokenizer::encode_long`] encodes in one call.
pub const ENCODE_PIECE_BYTES: usize = 1 << 20;

/// Where the first piece of `text` (at most `max` bytes) ends; see [`Tokenizer::encode_long`].
fn piece_end(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let mut limit = max;
    while !text.is_char_boundary(limit) {
        limit -= 1;
    }
    let window = &text[..limit];
    let floor = limit / 2;
    let next_char = |i: usize| text[i..].chars().next();
    let after_newline = window
        .rmatch_indices('\n')
        .map(|(i, _)| i + 1)
        .take_while(|&i| i > floor)
        .find(|&i| next_char(i).is_some_and(|c| !c.is_whitespace()));
    if let Some(end) = after_newline {
        return end;
    }
    let between_words = window
        .rmatch_indices(' ')
        .map(|(i, _)| i)
        .take_while(|&i| i > floor)
        .find(|&i| {
            window[..i]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric)
                && next_char(i + 1).is_some_and(char::is_alphabetic)
        });
    // A text with neither (a megabyte without spaces) is cut at a character: tokens may differ
    // there, once a megabyte.
    between_words.unwrap_or(limit)
}

/// Turns a growing list of token ids into text deltas, holding back incomplete UTF-8.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TextStream {
    /// Adds one token; returns newly completed text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tokenizer.decode(&self.ids[self.prefix..], true)?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let delta = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(delta))
        } else {
            Ok(None)
        }
    }

    /// Whatever is still held back.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tokenizer.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(
            (now.len() > before.len() && now.is_char_boundary(before.len()))
                .then(|| now[before.len()..].to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::piece_end;

    #[test]
    fn pieces_end_where_pre_tokenizers_split() {
        // After a newline that a word follows.
        let text = format!("{}\nword and more", "a".repeat(90));
        assert_eq!(piece_end(&text, 100), 91);
        // A newline followed by space is passed over for a space between two words.
        let text = format!("{} then\n x{}", "b".repeat(80), "c".repeat(50));
        assert_eq!(&text[piece_end(&text, 95)..][..5], " then");
        // Within the limit: the whole text.
        assert_eq!(piece_end("short", 100), 5);
        // Nowhere to split: at the limit, on a character boundary.
        let text = "é".repeat(100);
        let end = piece_end(&text, 51);
        assert_eq!(end, 50);
        assert!(text.is_char_boundary(end));
    }
}
