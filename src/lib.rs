//! Pupil: run, fine-tune and distil small language models on the user's GPU through WGSL
//! compute kernels, natively (wgpu) and in the browser (WebGPU via WASM).
//!
//! Layers, each depending only on the ones above it (see ARCHITECTURE.md):
//! - [`gpu`]: device and capabilities, tensors, the shader preprocessor and pipeline cache,
//!   command batching, readback.
//! - [`ops`]: one Rust op per kernel family; checks shapes, picks the variant, dispatches.
//! - [`reference`]: plain-Rust CPU references (f64 accumulation) for every op.
//! - [`selftest`]: the kernel checks (GPU op vs CPU reference), shared by the native tests,
//!   `pupil selftest` and the browser test page.
//! - [`model`]: GGUF files, architecture configs, the llama forward pass.
//! - [`engine`]: sessions over a KV cache and the generation loop.
//! - [`tokenizer`]: tokenizers and chat templates from GGUF metadata (byte-level BPE, minijinja).
//! - [`sampling`]: token sampling (penalty, temperature, top-k/top-p/min-p, seeded draws) over
//!   GPU candidates, identical natively and in the browser.
//! - `web`: wasm-bindgen exports (feature `web`).

// `!(x > 0.0)` is used on purpose: unlike `x <= 0.0` it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod sampling;
pub mod selftest;
pub mod tokenizer;
pub mod train;

#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub mod web;

pub use error::{PupilError, Result};
pub use gpu::{Batch, Capabilities, ContextOptions, DType, GpuContext, Tensor};
