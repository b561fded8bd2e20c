//! The tokenizer and chat-template layer (`pupil::tokenizer`).
//!
//! On the real default model (SmolLM2-135M-Instruct, fetched by scripts/fetch-model.sh):
//! token ids, decodes, streaming decodes and chat renders against fixtures made by Hugging Face
//! `tokenizers`/`transformers` (scripts/fixtures/make_tokenizer_fixtures.py). Skipped when the
//! file is absent unless PUPIL_REQUIRE_MODELS=1 (scripts/test.sh sets it).
//!
//! Without the model: a tiny synthetic GGUF (GgufWriter) for the BPE path, special tokens,
//! streaming across split characters, and every error case (missing and ill-typed keys,
//! unsupported models, ids out of range, template errors) — typed errors, never panics.
//!
//! Encoding speed (not a test): `cargo test --release --test tokenizer -- --ignored --nocapture`.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use pupil::model::gguf::{parse_header, GgufHeader, GgufWriter, Value};
use pupil::tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, TokenType, Tokenizer};
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

fn smollm2() -> Option<&'static (GgufHeader, Tokenizer)> {
    static MODEL: OnceLock<Option<(GgufHeader, Tokenizer)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = common::smollm2_path();
            match read_header(&path) {
                Ok(h) => {
                    let t = Tokenizer::from_gguf(&h).expect("SmolLM2's tokenizer loads");
                    Some((h, t))
                }
                Err(e) => {
                    assert!(
                        std::env::var("PUPIL_REQUIRE_MODELS").is_err(),
                        "{}: {e} (run scripts/fetch-model.sh)",
                        path.display()
                    );
                    eprintln!("skipped: {} not found (scripts/fetch-model.sh fetches it)", path.display());
                    None
                }
            }
        })
        .as_ref()
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

#[test]
fn smollm2_decode_matches_hf_tokenizers() {
    let Some((_, t)) = smollm2() else { return };
    let f = fixture();
    for c in f["cases"].as_array().unwrap() {
        let s = text(&c["text"]);
        assert_eq!(t.decode(&ids(&c["ids"]), false).unwrap(), text(&c["decoded"]), "{s:?}");
        assert_eq!(t.decode(&ids(&c["ids"]), true).unwrap(), text(&c["decoded_skip_special"]), "{s:?}");
        assert_eq!(t.decode(&ids(&c["ids_no_special"]), false).unwrap(), text(&c["decoded_no_special"]), "{s:?}");
    }
    // Arbitrary id sequences, incl. lone bytes of multi-byte characters (U+FFFD placement).
    for c in f["decodes"].as_array().unwrap() {
        let v = ids(&c["ids"]);
        assert_eq!(t.decode(&v, false).unwrap(), text(&c["text"]), "{v:?}");
        assert_eq!(t.decode(&v, true).unwrap(), text(&c["text_skip_special"]), "{v:?}");
    }
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

/// ~100 KB of mixed text: English, code, CJK, emoji and digits, never repeating whole lines.
fn sample_text(t: &Tokenizer, bytes: usize) -> String {
    let mut rng = pupil::rng::SplitMix64::new(7);
    let mut s = String::with_capacity(bytes + 1024);
    let cases = fixture()["cases"].as_array().unwrap();
    while s.len() < bytes {
        // Mostly ordinary tokens chosen at random (few cache hits), with fixture strings mixed in.
        for _ in 0..40 {
            let id = (rng.next_u64() % 20_000) as u32 + 100;
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
    use std::time::Instant;
    let Some((h, t)) = smollm2() else { return };
    let s = sample_text(t, 100_000);
    let t0 = Instant::now();
    let t = Tokenizer::from_gguf(h).unwrap(); // fresh: empty BPE cache
    let load = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let v = t.encode(&s, true).unwrap();
    let cold = t0.elapsed().as_secs_f64();
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        assert_eq!(t.encode(&s, true).unwrap().len(), v.len());
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
        "tokenizer load {:.1} ms; encode {} bytes -> {} tokens: first pass {:.1} ms ({:.0} tokens/s), \
         warm BPE cache {:.1} ms ({:.0} tokens/s, {:.1} MB/s); decode {:.2} ms, streamed {:.2} ms",
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
    let e = err_of(Synth::new().set("tokenizer.ggml.model", s("llama")));
    assert!(e.contains("`llama`") && e.contains("SentencePiece") && e.contains("gpt2"), "{e}");
    let e = err_of(Synth::new().set("tokenizer.ggml.model", s("bert")));
    assert!(e.contains("unsupported") && e.contains("`bert`") && e.contains("gpt2"), "{e}");
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
