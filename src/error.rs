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
    /// The GPU device is gone (driver reset, `destroy()`, browser GPU process crash). Every
    /// later call on the same context fails with this too; create a new context (and reload
    /// the model) to go on.
    #[error("the GPU device was lost: {0}; create a new engine to continue")]
    DeviceLost(String),
    /// The driver could not allocate GPU memory although the request was within the limits.
    #[error("the GPU is out of memory: {0}")]
    OutOfMemory(String),
}

pub type Result<T, E = PupilError> = std::result::Result<T, E>;

impl PupilError {
    /// A stable name for the error's kind (the variant), for front ends that branch on it
    /// (the browser worker sends it as `error.name`).
    pub fn kind(&self) -> &'static str {
        match self {
            PupilError::NoAdapter(_) => "NoAdapter",
            PupilError::RequestDevice(_) => "RequestDevice",
            PupilError::Shape { .. } => "Shape",
            PupilError::DType { .. } => "DType",
            PupilError::InvalidArgument { .. } => "InvalidArgument",
            PupilError::TooLarge { .. } => "TooLarge",
            PupilError::MissingFeature(_) => "MissingFeature",
            PupilError::Shader { .. } => "Shader",
            PupilError::Readback(_) => "Readback",
            PupilError::Gpu(_) => "Gpu",
            PupilError::Format(_) => "Format",
            PupilError::Truncated { .. } => "Truncated",
            PupilError::Unsupported(_) => "Unsupported",
            PupilError::ContextOverflow { .. } => "ContextOverflow",
            PupilError::DeviceLost(_) => "DeviceLost",
            PupilError::OutOfMemory(_) => "OutOfMemory",
        }
    }

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
