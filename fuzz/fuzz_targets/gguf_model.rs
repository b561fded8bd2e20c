//! Model configuration, tokenizer and chat template from an arbitrary GGUF header
//! (`pupil::fuzzing::gguf_model`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pupil::fuzzing::gguf_model(data));
