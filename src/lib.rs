//! slayer: knowledge-injection experiments on Llama-family models by layer expansion.
//!
//! Three crates, each depending only on those before it: the engine (`slayer_engine`, here as
//! [`core`]: model, checkpoints, plans, training, evaluation — no UI, async runtime or
//! database), the data directory (`slayer_data`: [`runner`], [`store`], [`study`],
//! [`templates`], [`fetch`]), and this one: the headless commands ([`cli`]) and the console
//! ([`tui`]).

pub use slayer_data::{fetch, runner, store, study, templates};
pub use slayer_engine as core;

pub mod cli;
pub mod tui;
