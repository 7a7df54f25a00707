//! `slayer chat MODEL [MODEL_B]`: one-shot with `--prompt`, else an interactive REPL with history,
//! `/reset`, `/system`, and Ctrl-C stopping a generation without exiting.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Args;
use rustyline::error::ReadlineError;

use super::model::{parse_dtype, quant_choice, resolve_or_fetch};
use super::{INTERRUPTED, reset_interrupt};
use crate::conversation::{Conversation, Progress, Taken};
use crate::core::device::{self, DeviceChoice};
use crate::core::generate::{SamplingParams, StopReason};
use crate::core::model::Quant;
use crate::runner::model::LoadedModel;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Model directory, GGUF file, name under the data dir's models/, or `smollm2`.
    pub model: String,
    /// A second model answering the same messages (A/B).
    pub model_b: Option<String>,
    /// Ask once, print the answer and exit.
    #[arg(long)]
    pub prompt: Option<String>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature; 0 is greedy and deterministic.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1].
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampler (the same seed and settings give the same answers).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens generated per answer at most.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Compute dtype (default: f32 on CPU, bf16 on CUDA).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
    /// Weights for inference: none (dense), q8_0, q4_k (default: q8_0 on the CPU, none on CUDA).
    #[arg(long)]
    pub quant: Option<Quant>,
}

/// Loads a chat model: a run (`RUN` or `RUN@STEP`: its trained model at that checkpoint), or
/// a model directory, GGUF file, model name or alias (fetched on first use).
fn load(
    data_dir: &Path,
    arg: &str,
    device: &candle_core::Device,
    dtype: DType,
    quant: Option<Quant>,
) -> Result<LoadedModel> {
    let (quant, why) = quant_choice(quant, device);
    let loaded = if let Some((run, step)) = crate::runner::model::run_spec(data_dir, arg)? {
        let (loaded, step) =
            crate::runner::model::load_run(data_dir, &run, step, dtype, device, quant)?;
        errln!("loaded run {} at step {step}", run.id);
        loaded
    } else {
        let path: PathBuf = resolve_or_fetch(data_dir, arg)?;
        crate::runner::model::load_path(&path, arg, dtype, device, quant)?
    };
    for w in &loaded.warnings {
        errln!("warning: {w}");
    }
    errln!("{}: {}{why}", loaded.label, loaded.quantization.describe());
    Ok(loaded)
}

pub fn run(args: &ChatArgs, data_dir: &Path, device: DeviceChoice) -> Result<i32> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        max_tokens: args.max_tokens,
    };
    params.validate()?;
    let device = device::open(device)?;
    let dtype = args.dtype.unwrap_or_else(|| device::default_dtype(&device));
    let mut loaded = vec![load(data_dir, &args.model, &device, dtype, args.quant)?];
    if let Some(b) = &args.model_b {
        loaded.push(load(data_dir, b, &device, dtype, args.quant)?);
    }
    let mut chat = Conversation::new(data_dir, &loaded, args.system.clone(), params)?;
    if let Some(prompt) = &args.prompt {
        turn(&mut chat, prompt)?;
        return Ok(0);
    }
    repl(&mut chat, data_dir)
}

/// Sends `text` to every model in turn, printing the answers as they stream (a transcript that
/// cannot be written is a warning, not a lost answer).
fn turn(chat: &mut Conversation<'_>, text: &str) -> Result<()> {
    let labelled = chat.labels().len() > 1;
    let mut closed: Option<std::io::Error> = None;
    let mut failed: Option<String> = None;
    let saved = chat.answer(text, &INTERRUPTED, &mut |progress| {
        if closed.is_some() {
            return;
        }
        let written = match progress {
            Progress::Started { label, .. } if labelled => outln!("── {label} ──"),
            Progress::Started { .. } => Ok(()),
            Progress::Text { text, .. } => out!("{text}"),
            Progress::Finished { stats, .. } => outln!().map(|()| {
                let stopped = match stats.stop {
                    StopReason::Cancelled => " [stopped]",
                    StopReason::MaxTokens => " [max tokens]",
                    StopReason::ContextFull => " [context full]",
                    StopReason::Eos => "",
                };
                errln!(
                    "[{} tokens, {:.1} tokens/s, prompt {} tokens in {:.0} ms{stopped}]",
                    stats.generated_tokens,
                    stats.decode_tokens_per_sec(),
                    stats.prompt_tokens,
                    stats.prefill_secs * 1e3
                );
            }),
            Progress::Failed { error, .. } => {
                failed = Some(error);
                Ok(())
            }
        };
        if let Err(e) = written {
            // Nobody reads the answer any more: stop generating it.
            INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            closed = Some(e);
        }
    });
    if let Some(e) = closed {
        return Err(e.into());
    }
    if let Some(Err(e)) = saved {
        errln!("warning: the chat transcript was not saved: {e:#}");
    }
    match failed {
        Some(error) => Err(anyhow::anyhow!(error)),
        None => Ok(()),
    }
}

const HELP: &str = concat!(
    "/reset  forget the conversation\n/system TEXT  set the system prompt (empty clears it) and reset\n",
    "/temperature T, /top_p P, /top_k K, /max_tokens N, /seed S  sampling settings (each resets)\n",
    "/help  this text\n/quit  leave (or Ctrl-D)\nCtrl-C stops a generation."
);

/// Reads one line with a fresh editor. rustyline owns SIGINT for as long as an editor exists
/// (its handler is restored only when the editor drops), so the editor must not outlive the
/// prompt: Ctrl-C during a generation then reaches our handler and stops it.
fn read_line(history: &[String]) -> Result<Option<String>> {
    let mut editor = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    for entry in history {
        let _ = editor.add_history_entry(entry.as_str());
    }
    loop {
        match editor.readline("> ") {
            Ok(line) => return Ok(Some(line)),
            Err(ReadlineError::Interrupted) => errln!("(Ctrl-D or /quit to leave)"),
            Err(ReadlineError::Eof) => return Ok(None),
            Err(e) => return Err(e).context("reading input"),
        }
    }
}

fn load_history(path: &Path) -> Vec<String> {
    let Ok(mut editor) = rustyline::DefaultEditor::new() else {
        return Vec::new();
    };
    let _ = editor.load_history(path);
    editor.history().iter().cloned().collect()
}

fn save_history(path: &Path, history: &[String]) {
    if let Ok(mut editor) = rustyline::DefaultEditor::new() {
        for entry in history.iter().rev().take(1000).rev() {
            let _ = editor.add_history_entry(entry.as_str());
        }
        let _ = editor.save_history(path);
    }
}

fn repl(chat: &mut Conversation<'_>, data_dir: &Path) -> Result<i32> {
    let history_path = crate::layout::DataDir::at(data_dir).chat_history();
    let mut history = load_history(&history_path);
    errln!(
        "chatting with {} — /help for commands, Ctrl-D to leave",
        chat.labels().join(" vs ")
    );
    loop {
        reset_interrupt();
        let Some(line) = read_line(&history)? else {
            break;
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if history.last().is_none_or(|h| h != text) {
            history.push(text.to_string());
        }
        match chat.take(text) {
            Taken::Problem(problem) => errln!("{problem}"),
            Taken::Quit => break,
            Taken::Help => errln!("{HELP}"),
            Taken::Done(note) => errln!("({note})"),
            Taken::Message(message) => {
                if let Err(e) = turn(chat, &message) {
                    if crate::out::is_broken_pipe(&e) {
                        save_history(&history_path, &history);
                        return Err(e);
                    }
                    errln!("error: {e:#}");
                }
            }
        }
    }
    save_history(&history_path, &history);
    Ok(0)
}
