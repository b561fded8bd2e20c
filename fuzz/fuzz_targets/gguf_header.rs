//! The GGUF header parser on arbitrary bytes (`pupil::fuzzing::gguf_header`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pupil::fuzzing::gguf_header(data));
