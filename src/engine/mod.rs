//! Running a loaded model: sessions (a KV cache and the tokens in it), the generation loop and
//! perplexity scoring.

pub mod generate;
pub mod perplexity;
pub mod session;

pub use generate::{generate, Flow, GenerateOptions, GenerationStats, StopReason, TokenPicker};
pub use perplexity::{perplexity, PerplexityReport};
pub use session::Session;
