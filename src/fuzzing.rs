//! The checks behind Pupil's fuzz targets, shared by `fuzz/` (cargo-fuzz, libFuzzer) and the
//! normal test suite (`tests/fuzz_corpus.rs` replays the committed corpora and every crash
//! ever found), so a regression is caught by `cargo test` without a fuzzer.
//!
//! Each function takes arbitrary bytes and must return without panicking, hanging or
//! allocating more than the input justifies; a typed error is a pass. Where the input parses,
//! each also checks a property the parser promises (tensors inside the file, lossless
//! byte-level BPE round trips, stream decoding equal to whole decoding).
//!
//! Run them with `scripts/fuzz.sh <target> [seconds]`; see fuzz/README.md.

use crate::model::config::ModelConfig;
use crate::model::gguf::{parse_header, GgufHeader};
use crate::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

/// Every fuzz target, as named in `fuzz/Cargo.toml` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[&str] = &["gguf_header", "gguf_model", "tokenizer", "chat_template"];

/// Run target `name`'s check on `data` (tokenizer-based targets use `tokenizer`).
pub fn run(name: &str, data: &[u8], tokenizer: &Tokenizer) {
    match name {
        "gguf_header" => gguf_header(data),
        "gguf_model" => gguf_model(data),
        "tokenizer" => tokenizer_bytes(tokenizer, data),
        "chat_template" => chat_template(data),
        other => panic!("unknown fuzz target `{other}`"),
    }
}

/// The GGUF header parser on arbitrary bytes: a parsed header's tensors are non-empty, lie
/// after the data offset and inside the size the header claims, and reading them from the
/// same bytes cannot panic.
pub fn gguf_header(data: &[u8]) {
    let Ok(h) = parse_header(data) else { return };
    for t in &h.tensors {
        let _ = h.tensor_data(data, t);
        assert!(t.size > 0 && t.n_elements() > 0, "tensor {} is empty", t.name);
        assert!(h.data_offset + t.offset + t.size <= h.file_size(), "tensor {} ends past file_size", t.name);
    }
    assert!(h.data_offset as usize <= data.len() + h.alignment as usize);
}

/// Everything a model load derives from the header alone, on arbitrary bytes: the model
/// configuration, the tokenizer (a hostile vocabulary, merges or token types) and the chat
/// template (hostile Jinja from the file), each rendered or used once.
pub fn gguf_model(data: &[u8]) {
    let Ok(h) = parse_header(data) else { return };
    model_header(&h);
}

/// [`gguf_model`] on a parsed header.
pub fn model_header(h: &GgufHeader) {
    if let Ok(cfg) = ModelConfig::from_gguf(h) {
        // Sizes derived from a hostile header must not overflow.
        let _ = cfg.parameter_count();
    }
    if let Ok(tok) = Tokenizer::from_gguf(h) {
        tokenizer_text(&tok, "Hello, world! <|im_start|> 123 ünïcödé 🦀\n\t  x", true);
    }
    if let Ok(template) = ChatTemplate::from_gguf(h) {
        let _ = template.with_time(0).render(&[ChatMessage::system("s"), ChatMessage::user("u")], true);
    }
}

/// The tokenizer on arbitrary bytes: the first byte picks what to do with the rest —
/// encode it as text (with or without special-token parsing) or decode it as token ids
/// (whole and streamed).
pub fn tokenizer_bytes(tok: &Tokenizer, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 | 1 => tokenizer_text(tok, &String::from_utf8_lossy(rest), mode % 3 == 1),
        _ => {
            let n = tok.vocab_size() as u32;
            // Mostly ids inside the vocabulary, sometimes just outside it.
            let ids: Vec<u32> =
                rest.chunks_exact(3).map(|c| u32::from_le_bytes([c[0], c[1], c[2], 0]) % (n + 2)).collect();
            tokenizer_ids(tok, &ids);
        }
    }
}

/// Encode `text`; without special-token parsing byte-level BPE and SentencePiece with byte
/// fallback must round-trip it, and the ids must decode the same whole and streamed.
pub fn tokenizer_text(tok: &Tokenizer, text: &str, parse_special: bool) {
    let Ok(ids) = tok.encode(text, parse_special) else { return };
    let n = tok.vocab_size() as u32;
    assert!(ids.iter().all(|&id| id < n), "encode produced an id outside the vocabulary");
    if !parse_special && tok.kind().0 == "gpt2" {
        // Lossless up to the vocabulary: every byte the vocabulary can spell comes back, in
        // order (a vocabulary without a byte drops it, as HF `tokenizers` does — SmolLM2
        // lacks a few control bytes).
        let table = crate::tokenizer::byte_to_char_table();
        let spellable = |b: &u8| tok.token_id(&table[*b as usize].to_string()).is_some();
        let expected: Vec<u8> = text.bytes().filter(spellable).collect();
        let got: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id).expect("id in vocabulary").to_vec()).collect();
        assert!(got == expected, "byte-level BPE must round-trip {text:?}: got {:?}", String::from_utf8_lossy(&got));
    }
    if !parse_special && tok.has_byte_fallback() {
        // SentencePiece with byte fallback spells everything; only a literal `▁` comes back as
        // the space it stands for (as in `sentencepiece`), and a one-character CONTROL piece
        // decodes as its name.
        use crate::tokenizer::TokenType;
        let special = ids.iter().any(|&id| matches!(tok.token_type(id), Some(TokenType::Control | TokenType::Unknown)));
        let got = tok.decode(&ids, false).expect("ids from encode are in the vocabulary");
        assert!(special || got == text.replace('\u{2581}', " "), "SentencePiece must round-trip {text:?}: got {got:?}");
    }
    tokenizer_ids(tok, &ids);
}

/// Decode ids whole and one at a time: the same text, or the same error.
pub fn tokenizer_ids(tok: &Tokenizer, ids: &[u32]) {
    for skip_special in [false, true] {
        let whole = tok.decode(ids, skip_special);
        let mut stream = tok.stream_decoder(skip_special);
        let mut text = String::new();
        let mut failed = false;
        for &id in ids {
            match stream.push(id) {
                Ok(s) => text.push_str(&s),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        match whole {
            Ok(w) => {
                assert!(!failed, "stream decoding failed where whole decoding did not");
                text.push_str(&stream.finish());
                assert_eq!(text, w, "streamed text differs from the whole decode");
            }
            Err(_) => assert!(failed, "whole decoding failed where stream decoding did not"),
        }
    }
}

/// A chat template from arbitrary bytes: up to the first NUL is the Jinja source, the rest
/// (split at further NULs) the messages' contents. Compiling and rendering must end (the
/// renderer's fuel bounds loops) with text or a typed error.
pub fn chat_template(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let Ok(template) = ChatTemplate::new(&source, Some("<s>"), Some("</s>")) else { return };
    let roles = ["system", "user", "assistant", "tool"];
    let messages: Vec<ChatMessage> = parts
        .take(8)
        .enumerate()
        .map(|(i, c)| ChatMessage::new(roles[i % roles.len()], String::from_utf8_lossy(c)))
        .collect();
    let template = template.with_time(0);
    let _ = template.render(&messages, true);
    let _ = template.render(&messages, false);
}

/// The tokenizer the `tokenizer` target fuzzes: the real SmolLM2 vocabulary (49,152 tokens,
/// 48,900 merges, special tokens) read from the cached model's header when it is there
/// (`PUPIL_SMOLLM2` or `~/.cache/pupil`), else the synthetic tiny model's byte vocabulary.
/// The second value names which.
#[cfg(not(target_arch = "wasm32"))]
pub fn fuzz_tokenizer() -> (Tokenizer, &'static str) {
    use std::io::Read;
    let path = std::env::var_os("PUPIL_SMOLLM2").map(std::path::PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("PUPIL_CACHE").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pupil")
        });
        cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let mut head = Vec::new();
    if let Ok(f) = std::fs::File::open(&path) {
        // The header (vocabulary included) is the first ~2 MB.
        let _ = f.take(8 << 20).read_to_end(&mut head);
        if let Ok(tok) = parse_header(&head).and_then(|h| Tokenizer::from_gguf(&h)) {
            return (tok, "SmolLM2-135M");
        }
    }
    let spec = crate::model::synth::preset("tiny-llama").expect("preset exists");
    let file = crate::model::synth::synthesize(&spec, 1, &mut |_, _| {}).expect("synthetic model");
    let h = parse_header(&file).expect("synthetic header parses");
    (Tokenizer::from_gguf(&h).expect("synthetic tokenizer"), "synthetic tiny-llama")
}
