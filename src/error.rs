//! One error type for the whole crate. Every variant says *what* was wrong and *where*
//! (file, tensor, limit), so a user can act on the message without a debugger.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or fetched at all.
    #[error("{file}: {reason}")]
    Io { file: String, reason: String },

    /// A file was read but its contents are malformed (truncated, lying header, bad JSON...).
    #[error("{file}: {reason}")]
    Format { file: String, reason: String },

    /// A tensor is missing, has the wrong shape or an unsupported dtype.
    #[error("{file}: tensor '{tensor}': {reason}")]
    Tensor { file: String, tensor: String, reason: String },

    /// config.json describes something we do not run (unknown architecture, bad sizes...).
    #[error("config.json: {0}")]
    Config(String),

    /// A request that does not fit the model or the engine (prompt too long, bad token id...).
    #[error("{0}")]
    Input(String),

    /// Something the GPU or its limits do not allow (no adapter, a tensor larger than a binding...).
    #[error("GPU: {0}")]
    Gpu(String),

    /// The GPU device was lost (a driver reset, the browser reclaiming the GPU, a destroyed
    /// device): nothing on it survives, but nothing was wrong with the request. Retryable:
    /// rebuild the engine on a new device (`Engine::rebuilt`) and ask again.
    #[error("GPU: the device was lost ({0}); rebuild the engine and retry the request")]
    DeviceLost(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(file: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Io { file: file.to_string(), reason: reason.to_string() }
    }
    pub fn format(file: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Format { file: file.to_string(), reason: reason.to_string() }
    }
    pub fn tensor(file: impl fmt::Display, tensor: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Tensor { file: file.to_string(), tensor: tensor.to_string(), reason: reason.to_string() }
    }
    pub fn config(reason: impl fmt::Display) -> Self {
        Error::Config(reason.to_string())
    }
    /// A config check's error for a config that did not come from config.json (GGUF
    /// metadata, a packed manifest): named by that file instead.
    pub fn config_in(self, file: impl fmt::Display) -> Self {
        match self {
            Error::Config(r) => Error::format(file, format!("model config: {r}")),
            e => e,
        }
    }
    pub fn input(reason: impl fmt::Display) -> Self {
        Error::Input(reason.to_string())
    }
    pub fn gpu(reason: impl fmt::Display) -> Self {
        Error::Gpu(reason.to_string())
    }
    /// Whether the same request can succeed once the engine is rebuilt (a lost device).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::DeviceLost(_))
    }
}
