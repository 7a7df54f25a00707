//! A conversation with one model: history, system prompt, template rendering, KV-cache reuse
//! across turns, and context-window management; and the lines both chats take ([`ChatInput`]:
//! a message or a `/` command). Front ends (CLI REPL, console) drive it.

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

    /// Samples with `params` from now on; the conversation starts over.
    pub fn set_sampling(&mut self, params: &SamplingParams) -> Result<()> {
        self.sampler = Sampler::new(params.clone())?;
        self.max_tokens = params.max_tokens;
        self.reset();
        Ok(())
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

/// A sampling setting a chat line can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Temperature,
    TopP,
    TopK,
    MaxTokens,
    Seed,
}

impl Setting {
    const ALL: [(&'static str, Self); 5] = [
        ("temperature", Self::Temperature),
        ("top_p", Self::TopP),
        ("top_k", Self::TopK),
        ("max_tokens", Self::MaxTokens),
        ("seed", Self::Seed),
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("?", |(n, _)| n)
    }

    /// `params` with this setting at `value`, or why the value cannot be one.
    pub fn apply(
        self,
        params: &SamplingParams,
        value: &str,
    ) -> std::result::Result<SamplingParams, String> {
        let bad = || format!("/{} {value:?}: {}", self.name(), self.expects());
        let number: f64 = value.trim().parse().map_err(|_| bad())?;
        let count = || -> std::result::Result<u64, String> {
            (number >= 0.0 && number.fract() == 0.0 && number <= 1e15)
                .then_some(number as u64)
                .ok_or_else(bad)
        };
        let mut out = params.clone();
        match self {
            Self::Temperature => out.temperature = number,
            Self::TopP => out.top_p = number,
            Self::TopK => out.top_k = usize::try_from(count()?).map_err(|_| bad())?,
            Self::MaxTokens => out.max_tokens = usize::try_from(count()?).map_err(|_| bad())?,
            Self::Seed => out.seed = count()?,
        }
        // The ranges are the sampler's own ([`SamplingParams::validate`]).
        out.validate().map_err(|_| bad())?;
        Ok(out)
    }

    fn expects(self) -> &'static str {
        match self {
            Self::Temperature => "a temperature is a number >= 0 (0: greedy)",
            Self::TopP => "top_p is in (0, 1]",
            Self::TopK => "top_k is a whole number (0: off)",
            Self::MaxTokens => "max_tokens is a whole number >= 1",
            Self::Seed => "a seed is a whole number",
        }
    }
}

/// A line typed into a chat (the CLI's REPL and the console's chat take the same ones).
#[derive(Debug, Clone, PartialEq)]
pub enum ChatInput {
    Message(String),
    /// Forget the conversation.
    Reset,
    /// Set (or with `None` clear) the system prompt; the conversation starts again.
    System(Option<String>),
    /// Change a sampling setting (validated); the conversation starts again.
    Set(Setting, String),
    Help,
    Quit,
}

/// The `/` commands, for help texts.
pub const CHAT_COMMANDS: &str = "/reset  forget the conversation\n/system TEXT  set the system prompt (empty clears it) and reset\n/temperature T, /top_p P, /top_k K, /max_tokens N, /seed S  sampling settings (each resets)\n/help  this text\n/quit  leave";

impl ChatInput {
    /// Parses a trimmed, non-empty line; an unknown `/command` is an error naming it.
    pub fn parse(line: &str) -> std::result::Result<Self, String> {
        let Some(command) = line.strip_prefix('/') else {
            return Ok(Self::Message(line.to_string()));
        };
        let (head, rest) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(h, r)| (h, r.trim()));
        match head {
            "reset" => Ok(Self::Reset),
            "system" => Ok(Self::System((!rest.is_empty()).then(|| rest.to_string()))),
            "help" => Ok(Self::Help),
            "quit" | "exit" => Ok(Self::Quit),
            other => match Setting::ALL.iter().find(|(n, _)| *n == other) {
                Some((_, setting)) if !rest.is_empty() => Ok(Self::Set(*setting, rest.to_string())),
                Some((name, _)) => Err(format!("/{name} needs a value")),
                None => Err(format!("unknown command /{other}; /help lists them")),
            },
        }
    }
}

#[cfg(test)]
mod line_tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn lines_parse_into_messages_and_commands() {
        assert_eq!(
            ChatInput::parse("hello /there"),
            Ok(ChatInput::Message("hello /there".into()))
        );
        assert_eq!(ChatInput::parse("/reset"), Ok(ChatInput::Reset));
        assert_eq!(ChatInput::parse("/system"), Ok(ChatInput::System(None)));
        assert_eq!(
            ChatInput::parse("/system  be brief "),
            Ok(ChatInput::System(Some("be brief".into())))
        );
        assert_eq!(
            ChatInput::parse("/temperature 0"),
            Ok(ChatInput::Set(Setting::Temperature, "0".into()))
        );
        assert!(
            ChatInput::parse("/top_k")
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(ChatInput::parse("/fly 1").unwrap_err().contains("/fly"));
        let p = SamplingParams::default();
        assert!(
            Setting::Temperature
                .apply(&p, "0")
                .unwrap()
                .temperature
                .abs()
                < f64::EPSILON
        );
        assert_eq!(Setting::TopK.apply(&p, "40").unwrap().top_k, 40);
        assert!(Setting::TopP.apply(&p, "1.5").is_err());
        assert!(Setting::Seed.apply(&p, "-1").is_err());
        assert!(Setting::MaxTokens.apply(&p, "2.5").is_err());
        assert!(Setting::Temperature.apply(&p, "nan").is_err());
    }
}
