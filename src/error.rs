//! One error type for the whole engine. Every variant names what was wrong and where
//! (op, file, key, shape) so the CLI can print it as a single line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {lhs:?} vs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },
    #[error("{op}: {msg}")]
    Op { op: &'static str, msg: String },
    #[error("{op}: dtype {got} not supported here (expected {expected})")]
    DType { op: &'static str, got: crate::tensor::DType, expected: &'static str },
    #[error("{op}: tensors on different devices ({lhs} and {rhs})")]
    DeviceMismatch { op: &'static str, lhs: crate::tensor::Device, rhs: crate::tensor::Device },
    #[error("built without CUDA support (rebuild with --features cuda)")]
    NoCuda,
    #[error("cuda: {0}")]
    Cuda(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: missing tensor '{key}'", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: tensor '{key}' has shape {got:?}, expected {expected:?}", path.display())]
    KeyShape { path: PathBuf, key: String, got: Vec<usize>, expected: Vec<usize> },
    #[error("{}: tensor '{key}' has dtype {got}, expected {expected}", path.display())]
    KeyDType { path: PathBuf, key: String, got: String, expected: &'static str },
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn op(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Op { op, msg: msg.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
}

/// `bail!`-style early return with an [`Error::Op`].
#[macro_export]
macro_rules! op_bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::error::Error::op($op, format!($($arg)*)))
    };
}
