//! The engine: model, checkpoint I/O, tokenizer and chat template, generation.
//!
//! Depends on no TUI, async runtime or database (a test enforces it), so every front end —
//! the CLI, the console, a worker process — drives the same code.

pub mod atomic;
pub mod chat;
pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod events;
pub mod experiment;
pub mod generate;
pub mod importance;
pub mod model;
pub mod plan;
pub mod run;
pub mod surgery;
pub mod synth;
pub mod text;
pub mod threads;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
