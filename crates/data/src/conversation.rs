//! The one conversation type both chats use — the CLI's `slayer chat` and the console's chat
//! screen: the models answering (one engine [`ChatSession`] each, whose KV caches carry over
//! between turns), the sampling settings in effect, the typed `/` commands
//! ([`ChatInput`]) and the transcript every turn is recorded in. Front ends only read lines and
//! show what [`Conversation::answer`] streams.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::error::{Because as _, Result};
use slayer_engine::chat::{ChatInput, ChatSession};
use slayer_engine::generate::{GenerationStats, SamplingParams, StopReason};

use crate::runner::model::LoadedModel;
use crate::runner::transcript::{ChatModel, ChatReply, ChatTurn, Transcript, run_of_model};

/// What a line the user typed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// A message: answer it with [`Conversation::answer`].
    Message(String),
    /// A command was carried out; the note says what changed (the conversation starts again).
    Done(String),
    Help,
    Quit,
    /// The line cannot be taken (an unknown command, a setting out of range).
    Problem(String),
}

/// What an answer streams to its front end, model by model.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Model `model` starts answering.
    Started {
        model: usize,
        label: &'a str,
    },
    Text {
        model: usize,
        text: &'a str,
    },
    Finished {
        model: usize,
        stats: &'a GenerationStats,
    },
    /// The model could not answer (the message does not fit its context, say).
    Failed {
        model: usize,
        error: String,
    },
}

/// A conversation with one or more models at once.
pub struct Conversation<'m> {
    data_dir: PathBuf,
    models: &'m [LoadedModel],
    sessions: Vec<ChatSession<'m>>,
    sampling: SamplingParams,
    transcript: Transcript,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A fresh transcript of a conversation with `models` (each linked to its run when it has one).
fn new_transcript(
    data_dir: &Path,
    models: &[LoadedModel],
    system: Option<String>,
    sampling: &SamplingParams,
) -> Transcript {
    Transcript::new(
        models
            .iter()
            .map(|m| ChatModel {
                label: m.label.clone(),
                path: m.path.display().to_string(),
                run: run_of_model(data_dir, &m.path),
                quant: m.quantization.quant,
            })
            .collect(),
        system,
        sampling.clone(),
    )
}

impl<'m> Conversation<'m> {
    /// A new conversation (and transcript) with `models`.
    pub fn new(
        data_dir: &Path,
        models: &'m [LoadedModel],
        system: Option<String>,
        sampling: SamplingParams,
    ) -> Result<Self> {
        sampling.validate()?;
        let sessions = models
            .iter()
            .map(|m| {
                let mut s = ChatSession::new(&m.model, &m.tokenizer, sampling.clone())
                    .because(|| format!("cannot chat with {}", m.path.display()))?;
                s.set_system(system.clone());
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            transcript: new_transcript(data_dir, models, system, &sampling),
            data_dir: data_dir.to_path_buf(),
            models,
            sessions,
            sampling,
        })
    }

    #[must_use]
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }

    #[must_use]
    pub fn labels(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.label.as_str()).collect()
    }

    #[must_use]
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// A new transcript with the settings in effect (after a reset, a system prompt or a
    /// sampling setting: each starts the conversation again).
    fn restart(&mut self, system: Option<String>) {
        self.transcript = new_transcript(&self.data_dir, self.models, system, &self.sampling);
    }

    /// Takes one trimmed line: a `/` command is carried out here, a message is handed back.
    pub fn take(&mut self, line: &str) -> Taken {
        match ChatInput::parse(line) {
            Err(problem) => Taken::Problem(problem),
            Ok(ChatInput::Message(text)) => Taken::Message(text),
            Ok(ChatInput::Help) => Taken::Help,
            Ok(ChatInput::Quit) => Taken::Quit,
            Ok(ChatInput::Reset) => {
                self.sessions.iter_mut().for_each(ChatSession::reset);
                self.restart(self.transcript.system.clone());
                Taken::Done("conversation reset".into())
            }
            Ok(ChatInput::System(system)) => {
                let set = system.is_some();
                for s in &mut self.sessions {
                    s.set_system(system.clone());
                }
                self.restart(system);
                Taken::Done(format!(
                    "system prompt {}; conversation reset",
                    if set { "set" } else { "cleared" }
                ))
            }
            Ok(ChatInput::Set(setting, value)) => match setting.apply(&self.sampling, &value) {
                Err(problem) => Taken::Problem(problem),
                Ok(sampling) => {
                    for s in &mut self.sessions {
                        if let Err(e) = s.set_sampling(&sampling) {
                            return Taken::Problem(e.to_string());
                        }
                    }
                    self.sampling = sampling;
                    self.restart(self.transcript.system.clone());
                    Taken::Done(format!("{}; conversation reset", self.sampling.describe()))
                }
            },
        }
    }

    /// Answers `text` with every model in turn, streaming through `progress`; a cancelled
    /// answer ends the turn. The turn is recorded and the transcript saved: the result is where,
    /// or why it could not be (a lost transcript is the caller's warning, not a lost answer).
    pub fn answer(
        &mut self,
        text: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Option<Result<PathBuf>> {
        let mut turn = ChatTurn {
            time: now(),
            user: text.to_string(),
            replies: Vec::new(),
        };
        for (model, session) in self.sessions.iter_mut().enumerate() {
            progress(Progress::Started {
                model,
                label: &self.models[model].label,
            });
            match session.send(text, cancel, |delta| {
                progress(Progress::Text { model, text: delta });
            }) {
                Ok(reply) => {
                    let stats = &reply.stats;
                    progress(Progress::Finished { model, stats });
                    turn.replies.push(ChatReply {
                        model,
                        text: reply.text.clone(),
                        tokens: stats.generated_tokens,
                        tokens_per_sec: stats.decode_tokens_per_sec(),
                        stop: format!("{:?}", stats.stop).to_lowercase(),
                    });
                    if stats.stop == StopReason::Cancelled {
                        break;
                    }
                }
                Err(e) => progress(Progress::Failed {
                    model,
                    error: e.to_string(),
                }),
            }
        }
        if turn.replies.is_empty() {
            return None;
        }
        self.transcript.turns.push(turn);
        Some(self.transcript.save(&self.data_dir))
    }
}
