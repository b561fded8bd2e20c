//! One typed error for everything below the front ends. User input never panics.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PupilError {
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: dtype mismatch: {detail}")]
    DType { op: &'static str, detail: String },
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument { op: &'static str, detail: String },
    #[error("{what} needs {bytes} bytes, over the adapter's limit of {limit} bytes")]
    TooLarge { what: String, bytes: u64, limit: u64 },
    #[error("the adapter lacks the `{0}` feature this request needs")]
    MissingFeature(&'static str),
    #[error("shader `{shader}`: {detail}")]
    Shader { shader: String, detail: String },
    #[error("GPU readback failed: {0}")]
    Readback(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    #[error("malformed file: {0}")]
    Format(String),
    #[error("{what} is truncated: needs {needed} bytes, has {have}")]
    Truncated { what: String, needed: u64, have: u64 },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("context overflow: {needed} positions needed, the context holds {context}")]
    ContextOverflow { needed: usize, context: usize },
}

pub type Result<T, E = PupilError> = std::result::Result<T, E>;

impl PupilError {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        PupilError::Shape { op, detail: detail.into() }
    }
    pub(crate) fn dtype(op: &'static str, detail: impl Into<String>) -> Self {
        PupilError::DType { op, detail: detail.into() }
    }
    pub(crate) fn arg(op: &'static str, detail: impl Into<String>) -> Self {
        PupilError::InvalidArgument { op, detail: detail.into() }
    }
}
