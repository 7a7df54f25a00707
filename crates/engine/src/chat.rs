//! A conversation with one model: history, system prompt, template rendering, KV-cache reuse
//! across turns, and context-window management. Front ends (CLI REPL, console) drive it.

use std::sync::atomic::AtomicBool;

use crate::chat_template::{ChatMessage, render};
use crate::error::{Error, Result};
use crate::generate::{
    GenerationStats, Sampler, SamplingParams, StopConditions, StopReason, generate,
};
use crate::model::{KvCache, Llama};
use crate::tokenizer::{TextStream, Tokenizer};

/// One model's side of a chat.
pub struct ChatSession<'a> {
    model: &'a Llama,
    tokenizer: &'a Tokenizer,
    system: Option<String>,
    history: Vec<ChatMessage>,
    sampler: Sampler,
    max_tokens: usize,
    cache: KvCache,
    /// Token ids the cache holds, to reuse it when the next prompt extends them.
    cached_ids: Vec<u32>,
}

/// The result of one turn.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub stats: GenerationStats,
}

impl<'a> ChatSession<'a> {
    pub fn new(model: &'a Llama, tokenizer: &'a Tokenizer, params: SamplingParams) -> Result<Self> {
        if tokenizer.chat_template().is_none() {
            return Err(Error::Invalid(
                "this model has no chat template (tokenizer_config.json `chat_template`)".into(),
            ));
        }
        let max_tokens = params.max_tokens;
        Ok(Self {
            model,
            tokenizer,
            system: None,
            history: Vec::new(),
            sampler: Sampler::new(params)?,
            max_tokens,
            cache: KvCache::new(model.blocks.len()),
            cached_ids: Vec::new(),
        })
    }

    /// Sets (or clears) the system prompt; the conversation starts over.
    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system.filter(|s| !s.trim().is_empty());
        self.reset();
    }

    /// Forgets the conversation (keeps the system prompt).
    pub fn reset(&mut self) {
        self.history.clear();
        self.cache = KvCache::new(self.model.blocks.len());
        self.cached_ids.clear();
    }

    /// Turns so far.
    #[must_use]
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    fn messages(&self, from_turn: usize) -> Vec<ChatMessage> {
        let mut m = Vec::with_capacity(self.history.len() + 1);
        if let Some(s) = &self.system {
            m.push(ChatMessage::new("system", s));
        }
        m.extend_from_slice(&self.history[from_turn..]);
        m
    }

    fn prompt_ids(&self, from_turn: usize) -> Result<Vec<u32>> {
        let template = self.tokenizer.chat_template().unwrap_or_default();
        let text = render(
            template,
            &self.messages(from_turn),
            true,
            self.tokenizer.bos_token(),
            self.tokenizer.eos_token(),
        )?;
        // The template writes any BOS itself.
        self.tokenizer.encode(&text, false)
    }

    /// Answers `user`, streaming text deltas to `on_text`. Older turns are dropped when the
    /// conversation no longer fits the context window.
    pub fn send(
        &mut self,
        user: &str,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<Reply> {
        self.history.push(ChatMessage::new("user", user));
        let limit = self.model.max_positions();
        let mut from_turn = 0;
        let mut ids = self.prompt_ids(from_turn)?;
        while ids.len() + self.max_tokens.min(limit / 2) > limit
            && from_turn + 1 < self.history.len()
        {
            from_turn += 2;
            ids = self.prompt_ids(from_turn.min(self.history.len() - 1))?;
        }
        if ids.len() >= limit {
            self.history.pop();
            return Err(Error::Invalid(format!(
                "the message needs {} tokens; the model's context holds {limit}",
                ids.len()
            )));
        }
        let reuse = self.cached_ids.len() < ids.len() && ids.starts_with(&self.cached_ids);
        if !reuse {
            self.cache = KvCache::new(self.model.blocks.len());
            self.cached_ids.clear();
        }
        let new_ids = ids[self.cached_ids.len()..].to_vec();
        let mut stream = TextStream::default();
        let tokenizer = self.tokenizer;
        let max = self.max_tokens.min(limit - ids.len());
        let (generated, stats) = generate(
            self.model,
            &mut self.cache,
            &new_ids,
            &mut self.sampler,
            StopConditions {
                max_tokens: max,
                eos_ids: tokenizer.eos_ids(),
                cancel,
            },
            |id| {
                if let Some(delta) = stream.push(tokenizer, id)? {
                    on_text(&delta);
                }
                Ok(())
            },
        )?;
        if let Some(rest) = stream.finish(tokenizer)? {
            on_text(&rest);
        }
        let text = tokenizer.decode(&generated, true)?;
        self.cached_ids = ids;
        self.cached_ids.extend_from_slice(&generated);
        if let (StopReason::Eos, Some(eos)) = (stats.stop, stats.stop_token) {
            // generate() fed the stop token into the cache.
            self.cached_ids.push(eos);
        } else {
            // The cache does not end where the template would continue: start fresh next turn.
            self.cached_ids.clear();
            self.cache = KvCache::new(self.model.blocks.len());
        }
        self.history.push(ChatMessage::new("assistant", &text));
        Ok(Reply { text, stats })
    }
}
