//! The data directory: everything slayer keeps between commands, its layout spelled once in
//! [`layout`] — run directories and their append-only event logs ([`runner`]: launching, the
//! queue and supervisor, Slurm jobs, following, alerts, comparison, the one projection of a
//! run's events),
//! the index over them ([`store`]), studies ([`study`]), the shipped experiment templates
//! ([`templates`]), fetching the demo model ([`fetch`]) and the conversation both chats hold
//! ([`conversation`], recorded as transcripts). Built on the engine (`slayer_engine`); knows
//! nothing of the command line or the console. Its errors are one type, [`Error`].

pub mod conversation;
mod error;
pub mod fetch;
pub mod layout;
pub mod runner;
#[cfg(feature = "store")]
pub mod store;
pub mod study;
pub mod templates;

pub use error::{Error, Result};
