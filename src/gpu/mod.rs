//! The GPU layer: device and capabilities, tensors, shaders and pipelines, batching, readback.

mod batch;
mod context;
mod memory;
mod pipelines;
mod readback;
pub mod shader;
mod tensor;

pub use batch::{grid_for, Batch};
pub use context::{classify_gpu_error, Capabilities, ContextOptions, GpuContext};
pub use memory::MemoryTracker;
pub use pipelines::PipelineCache;
pub use shader::{Dialect, KernelKey};
pub use tensor::{DType, Tensor};
