//! The core's error type: every failure names the file (or object) and what is wrong with it.

use std::path::PathBuf;

/// Errors raised by the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written. The OS error is part of the message and is not
    /// also given as the error's source: a report that prints the chain would say it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A file exists but its content is malformed.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A configuration describes a model this crate does not support.
    #[error("{path}: unsupported model: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// A tensor's shape or dtype disagrees with what the config requires.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
    /// An argument given by the caller is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The operation was interrupted by the user.
    #[error("interrupted")]
    Interrupted,
    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template failure.
    #[error("chat template: {0}")]
    Template(String),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        name: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.into(),
            name: name.into(),
            message: message.into(),
        }
    }
}
