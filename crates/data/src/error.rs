//! The data crate's error: what went wrong in the data directory, naming the file or the thing
//! asked for. The store has its own (`store::StoreError`), carried here whole.
//!
//! As in the store's, a cause is part of the message rather than a `source`: the front ends
//! print errors both ways (`{e}` on the console's status line, `{e:#}` on stderr), and a message
//! that holds its cause reads the same in both without being said twice in a chain.

use std::path::{Path, PathBuf};

/// What can go wrong in the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation on a path failed (`cannot create /x/runs: …`).
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Refused: what was asked for, or what a file holds, is not what it must be (no such run, a
    /// malformed study, a run that is already running). The message names it.
    #[error("{0}")]
    Invalid(String),
    /// A step failed for a reason from elsewhere (a parser, a process, a nested step): `what`
    /// says which step, `cause` why.
    #[error("{what}: {cause}")]
    Failed {
        what: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The engine refused or failed (a model, a tokenizer, an experiment, an interrupt).
    #[error("{0}")]
    Engine(#[from] slayer_engine::Error),
    #[cfg(feature = "store")]
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// The data crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A refusal that names what is wrong.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// The engine's error, where one is what went wrong (an interrupt, say).
    #[must_use]
    pub fn engine(&self) -> Option<&slayer_engine::Error> {
        match self {
            Self::Engine(e) => Some(e),
            Self::Failed { cause, .. } => cause
                .downcast_ref::<slayer_engine::Error>()
                .or_else(|| cause.downcast_ref::<Self>().and_then(Self::engine)),
            _ => None,
        }
    }
}

/// Names the path and the operation of a failed file-system call.
pub(crate) trait IoContext<T> {
    fn io(self, action: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io(self, action: &'static str, path: &Path) -> Result<T> {
        self.map_err(|cause| Error::Io {
            action,
            path: path.to_path_buf(),
            cause,
        })
    }
}

/// Says which step failed, keeping why.
pub(crate) trait Because<T> {
    fn because(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Because<T> for std::result::Result<T, E> {
    fn because(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|cause| Error::Failed {
            what: what(),
            cause: Box::new(cause),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_message_holds_its_cause_once_however_it_is_printed() {
        let missing = Err::<(), _>(std::io::Error::from(std::io::ErrorKind::NotFound))
            .io("read", Path::new("/x/events.jsonl"))
            .unwrap_err();
        let said = missing.to_string();
        assert!(said.starts_with("cannot read /x/events.jsonl: "), "{said}");
        assert_eq!(format!("{missing:#}"), said);
        assert!(std::error::Error::source(&missing).is_none());
        let nested = Err::<(), _>(missing)
            .because(|| "cannot record the worker of run r".into())
            .unwrap_err();
        assert_eq!(
            nested.to_string(),
            format!("cannot record the worker of run r: {said}")
        );
    }

    #[test]
    fn an_interrupt_is_found_through_the_steps_that_wrap_it() {
        let interrupted = Error::from(slayer_engine::Error::Interrupted);
        let wrapped = Err::<(), _>(interrupted)
            .because(|| "answering".into())
            .unwrap_err();
        assert!(matches!(
            wrapped.engine(),
            Some(slayer_engine::Error::Interrupted)
        ));
        assert!(Error::invalid("no").engine().is_none());
    }
}
