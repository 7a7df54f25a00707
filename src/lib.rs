//! slayer: knowledge-injection experiments on Llama-family models by layer expansion.
//!
//! Layers (each depends only on those above it): [`core`] (the engine, no UI or runtime
//! dependencies), [`fetch`] (getting the demo model), [`cli`] (headless commands).

pub mod cli;
pub mod core;
pub mod fetch;
pub mod runner;
pub mod store;
pub mod study;
pub mod templates;
pub mod tui;
