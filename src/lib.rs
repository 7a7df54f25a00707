//! slayer: knowledge-injection experiments on Llama-family models by layer expansion.
//!
//! Three crates, each depending only on those before it: the engine (`slayer_engine`, here as
//! [`core`]: model, checkpoints, plans, training, evaluation — no UI, async runtime or
//! database), the data directory (`slayer_data`: [`runner`], [`store`], [`study`],
//! [`templates`], [`fetch`]), and this one: the headless commands ([`cli`]) and the console
//! ([`tui`]), which share the sanitising writer (`out`) and the interrupt flag ([`interrupt`]);
//! the console does not depend on the command line.

pub use slayer_data::{conversation, fetch, layout, runner, store, study, templates};
pub use slayer_engine as core;

// The sanitising writer first: its macros are then in scope in every module below.
#[macro_use]
pub(crate) mod out;
pub mod allocator;
pub mod cli;
pub mod interrupt;
pub mod jobs;
pub mod launch;
pub mod threads;
pub mod tui;
