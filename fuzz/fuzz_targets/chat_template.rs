//! Compiling and rendering an arbitrary chat template with arbitrary messages
//! (`pupil::fuzzing::chat_template`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pupil::fuzzing::chat_template(data));
