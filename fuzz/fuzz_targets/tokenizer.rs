//! Encoding and (stream) decoding arbitrary text and ids with the real SmolLM2 vocabulary
//! when it is cached (`pupil::fuzzing::tokenizer_bytes`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pupil::tokenizer::Tokenizer;

static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let tok = TOKENIZER.get_or_init(|| {
        let (tok, which) = pupil::fuzzing::fuzz_tokenizer();
        eprintln!("fuzzing the {which} tokenizer");
        tok
    });
    pupil::fuzzing::tokenizer_bytes(tok, data)
});
