//! Running a loaded model: sessions (a KV cache and the tokens in it), the generation loop,
//! text generation with stop strings over it, the split of a reasoning model's `<think>` thought
//! from its answer, perplexity scoring, and speculative decoding (a student drafts, its
//! teacher verifies).

pub mod generate;
pub mod perplexity;
pub mod reasoning;
pub mod session;
pub mod speculative;
pub mod text;

pub use generate::{generate, Flow, GenerateOptions, GenerationStats, StopReason, TokenPicker};
pub use perplexity::{perplexity, PerplexityReport};
pub use reasoning::{split_reasoning, ReasoningSplit, SplitDelta};
pub use session::Session;
pub use speculative::{generate_speculative, SpeculativeOptions, SpeculativeStats};
pub use text::{
    generate_text, generate_text_speculative, openai_logprobs, FinishReason, OnText, SpeculativeText, TextGeneration,
    TextOptions,
};
