//! Model files and architectures: the GGUF container (`gguf`), where its bytes come from
//! (`source`: in memory, or byte ranges of a browser `Blob`), hyper-parameters read from its
//! metadata (`config`) and the `llama` architecture (`llama`).

pub mod config;
pub mod gguf;
pub mod llama;
pub mod prune;
pub mod safetensors;
pub mod source;
pub mod split;
pub mod synth;

pub use config::{ModelConfig, RopeScaling};
pub use llama::{
    HiddenAlignment, LlamaModel, LoadPlan, Logits, LoraConfig, LoraTarget, ModelOptions, Overflow, StepReport,
    TeacherRow, TopK, Trainer,
};
pub use safetensors::{index_shards, read_safetensors, to_gguf, SafetensorsSource};
pub use source::{read_header, ModelSource};
pub use split::{read_split, shard_paths, ShardedSource};
