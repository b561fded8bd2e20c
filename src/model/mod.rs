//! Model files and architectures: the GGUF container (`gguf`), hyper-parameters read from its
//! metadata (`config`) and the `llama` architecture (`llama`).

pub mod config;
pub mod gguf;
pub mod llama;
pub mod synth;

pub use config::{ModelConfig, RopeScaling};
pub use llama::{LlamaModel, LoadPlan, Logits, ModelOptions, Overflow};
