//! Tokenizers and chat templates built from GGUF metadata, natively and on wasm32.
//!
//! [`Tokenizer::from_gguf`] reads `tokenizer.ggml.*` (model, pre, tokens, merges or scores,
//! token_type, special ids, add_bos/add_eos) and builds one of two kinds:
//!
//! - byte-level BPE (`tokenizer.ggml.model` = `gpt2`) with the pre-tokenizer named by
//!   `tokenizer.ggml.pre` (`smollm`, `gpt2`, `qwen2`, `deepseek-r1-qwen`, `llama-bpe`; the table
//!   is in `pretok.rs`). The BPE merge loop and the pre-tokenizers are Hugging Face's
//!   `tokenizers` crate (with fancy-regex, so it builds for the browser), checked against the
//!   Python `tokenizers` on the real SmolLM2 vocabulary (`tests/tokenizer.rs`, fixtures by
//!   `scripts/fixtures/make_tokenizer_fixtures.py`). Input bytes the vocabulary has no token
//!   for are dropped (SmolLM2 lacks a few control and 0xF1.. bytes), as HF's BPE without an
//!   unknown token and llama.cpp both do.
//! - SentencePiece BPE (`llama`: Gemma; `spm.rs`): score-ordered merges over the text with
//!   spaces escaped to `▁`, byte fallback, checked against the `sentencepiece` library on the
//!   real Gemma 3 vocabulary (`scripts/fixtures/make_gemma_tokenizer_fixtures.py`).
//!   `tokenizer.ggml.pre` is not used (llama.cpp ignores it too); `add_space_prefix` (a dummy
//!   `▁` before the text, Llama 2) is not supported yet.
//!
//! Special tokens follow llama.cpp: text matching a CONTROL token (type 3) becomes that token
//! only when `parse_special` is set; USER_DEFINED tokens (type 4) always match. Matching is
//! leftmost-longest, as Hugging Face's added vocabulary and SentencePiece's user-defined
//! symbols do (for SentencePiece in the escaped text, so Gemma's `"  "` piece matches two
//! spaces). Decoding is done here: each token is turned into bytes once at load (CONTROL and
//! USER_DEFINED tokens are their text; byte-level BPE tokens go through GPT-2's byte ↔ char map;
//! SentencePiece pieces have `▁` turned back into spaces, `<0xXX>` pieces are that byte) and the
//! bytes of a sequence become text with invalid UTF-8 replaced by U+FFFD — one per maximal
//! invalid sequence for byte-level BPE (HF's ByteLevel decoder), one per invalid byte for
//! SentencePiece (the `sentencepiece` decoder). [`StreamDecoder`] yields text as tokens arrive
//! without ever splitting a character. [`ChatTemplate`] renders `tokenizer.chat_template` with
//! minijinja configured as transformers configures jinja2; a Gemma file without one gets Gemma
//! 3's template ([`GEMMA3_TEMPLATE`]).

mod chat;
mod pretok;
mod spm;
mod stream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizedString};

pub use chat::{ChatMessage, ChatTemplate, TemplateValue, CHATML_TEMPLATE, GEMMA3_TEMPLATE};
pub(crate) use pretok::byte_to_char_table;
pub use stream::StreamDecoder;

use crate::error::{PupilError, Result};
use crate::model::gguf::{GgufHeader, Value};

/// GGUF token types (`tokenizer.ggml.token_type`, llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    /// Special tokens such as `<|im_start|>`: matched in text only with `parse_special`,
    /// dropped by `decode(.., skip_special = true)`.
    Control,
    /// Added tokens stored as plain text: always matched in text, decoded as their text.
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Text of end-of-generation tokens that llama.cpp also treats as stop tokens when the model
/// has them as CONTROL or USER_DEFINED tokens (besides `eos`, `eot` and `eom` ids).
const STOP_TOKEN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// A tokenizer read from GGUF metadata. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

/// The encoding algorithm.
enum Algo {
    /// Byte-level BPE: HF `tokenizers`' merge loop after the named pre-tokenizer (boxed: the
    /// BPE model is most of the enum's size).
    Bpe { bpe: Box<BPE>, pre_tokenizer: pretok::PreTokenizerChain },
    /// SentencePiece BPE on the `▁`-escaped text.
    Spm(spm::Spm),
}

struct Inner {
    model: String,
    pre: String,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// What each token decodes to.
    bytes: Vec<Box<[u8]>>,
    /// Token text → id (`token_id`); later duplicates win.
    vocab: HashMap<String, u32>,
    algo: Algo,
    /// CONTROL + USER_DEFINED tokens (parse_special) and USER_DEFINED alone, matched in the text
    /// as the model sees it (escaped for SentencePiece).
    special: Option<(AhoCorasick, Vec<u32>)>,
    user_defined: Option<(AhoCorasick, Vec<u32>)>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    stop: Vec<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Tokenizer")
            .field("model", &i.model)
            .field("pre", &i.pre)
            .field("vocab_size", &i.tokens.len())
            .field("bos", &i.bos)
            .field("eos", &i.eos)
            .field("stop", &i.stop)
            .finish()
    }
}

// ---- GGUF metadata access with errors that name the key ----

pub(crate) fn value_kind(v: &Value) -> String {
    match v {
        Value::U8(_) => "u8".into(),
        Value::I8(_) => "i8".into(),
        Value::U16(_) => "u16".into(),
        Value::I16(_) => "i16".into(),
        Value::U32(_) => "u32".into(),
        Value::I32(_) => "i32".into(),
        Value::F32(_) => "f32".into(),
        Value::Bool(_) => "bool".into(),
        Value::String(_) => "string".into(),
        Value::Array(a) => match a.first() {
            Some(x) => format!("array of {}", value_kind(x)),
            None => "empty array".into(),
        },
        Value::U64(_) => "u64".into(),
        Value::I64(_) => "i64".into(),
        Value::F64(_) => "f64".into(),
    }
}

pub(crate) fn meta_err(key: &str, detail: impl fmt::Display) -> PupilError {
    PupilError::Format(format!("GGUF tokenizer metadata: `{key}` {detail}"))
}

pub(crate) fn wrong_type(key: &str, want: &str, v: &Value) -> PupilError {
    meta_err(key, format_args!("should be {want}, found {}", value_kind(v)))
}

pub(crate) fn req_str<'a>(h: &'a GgufHeader, key: &str) -> Result<&'a str> {
    let v = h.get(key).ok_or_else(|| meta_err(key, "is missing"))?;
    v.as_str().ok_or_else(|| wrong_type(key, "a string", v))
}

pub(crate) fn opt_str<'a>(h: &'a GgufHeader, key: &str) -> Result<Option<&'a str>> {
    h.get(key).map(|v| v.as_str().ok_or_else(|| wrong_type(key, "a string", v))).transpose()
}

fn opt_bool(h: &GgufHeader, key: &str) -> Result<Option<bool>> {
    h.get(key)
        .map(|v| match v {
            Value::Bool(b) => Ok(*b),
            _ => Err(wrong_type(key, "a bool", v)),
        })
        .transpose()
}

pub(crate) fn str_array<'a>(h: &'a GgufHeader, key: &str) -> Result<Vec<&'a str>> {
    let v = h.get(key).ok_or_else(|| meta_err(key, "is missing"))?;
    let a = v.as_array().ok_or_else(|| wrong_type(key, "an array of strings", v))?;
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str()
                .ok_or_else(|| meta_err(key, format_args!("element {i} should be a string, found {}", value_kind(x))))
        })
        .collect()
}

/// An optional token id: present ids must be unsigned integers below `n_vocab`.
pub(crate) fn opt_id(h: &GgufHeader, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(v) = h.get(key) else { return Ok(None) };
    let id = v.as_u64().ok_or_else(|| wrong_type(key, "an unsigned integer token id", v))?;
    if id >= n_vocab as u64 {
        return Err(meta_err(key, format_args!("is {id}, outside the vocabulary of {n_vocab} tokens")));
    }
    Ok(Some(id as u32))
}

fn tok_err(what: &str, e: impl fmt::Display) -> PupilError {
    PupilError::Format(format!("GGUF tokenizer metadata: {what}: {e}"))
}

/// What each byte-level BPE token decodes to: CONTROL and USER_DEFINED tokens are their text,
/// others go through GPT-2's char → byte map (HF's ByteLevel decoder: a token with a char
/// outside the map is its UTF-8).
fn byte_level_bytes(tokens: &[String], types: &[TokenType]) -> Vec<Box<[u8]>> {
    let table = pretok::byte_to_char_table();
    let mut char_to_byte: HashMap<char, u8> = HashMap::with_capacity(256);
    for (b, &c) in table.iter().enumerate() {
        char_to_byte.insert(c, b as u8);
    }
    tokens
        .iter()
        .zip(types)
        .map(|(t, ty)| match ty {
            TokenType::Control | TokenType::UserDefined => t.as_bytes().into(),
            _ => t
                .chars()
                .map(|c| char_to_byte.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| t.as_bytes().to_vec())
                .into_boxed_slice(),
        })
        .collect()
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes. Missing or ill-typed keys and unsupported
    /// models or pre-tokenizers are errors that name the key and value.
    pub fn from_gguf(h: &GgufHeader) -> Result<Tokenizer> {
        let model = req_str(h, "tokenizer.ggml.model")?;
        if !pretok::MODELS.iter().any(|(m, _)| *m == model) {
            let list = pretok::MODELS.iter().map(|(m, d)| format!("{m} ({d})")).collect::<Vec<_>>().join(", ");
            return Err(PupilError::Unsupported(format!("tokenizer.ggml.model `{model}`; supported: {list}")));
        }
        let is_spm = model == "llama";
        // SentencePiece does no pre-tokenization: llama.cpp reads `pre` for SPM files and
        // ignores it (Gemma's is `default`), and older files lack it.
        let pre = if is_spm {
            opt_str(h, "tokenizer.ggml.pre")?.unwrap_or("default")
        } else {
            req_str(h, "tokenizer.ggml.pre")?
        };
        let spec = if is_spm {
            None
        } else {
            Some(pretok::find_pre_tokenizer(pre).ok_or_else(|| {
                PupilError::Unsupported(format!(
                    "tokenizer.ggml.pre `{pre}` (model {model}); supported: {}",
                    pretok::supported_pre_tokenizers()
                ))
            })?)
        };

        let tokens: Vec<String> = str_array(h, "tokenizer.ggml.tokens")?.into_iter().map(str::to_owned).collect();
        let n = tokens.len();
        if n == 0 {
            return Err(meta_err("tokenizer.ggml.tokens", "is empty"));
        }
        if n > u32::MAX as usize {
            return Err(meta_err("tokenizer.ggml.tokens", format_args!("has {n} tokens")));
        }
        let types: Vec<TokenType> = match h.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; n],
            Some(v) => {
                let key = "tokenizer.ggml.token_type";
                let a = v.as_array().ok_or_else(|| wrong_type(key, "an array of integers", v))?;
                if a.len() != n {
                    return Err(meta_err(key, format_args!("has {} entries for {n} tokens", a.len())));
                }
                a.iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let t = match *x {
                            Value::I8(t) => Some(t as i64),
                            Value::I16(t) => Some(t as i64),
                            Value::I32(t) => Some(t as i64),
                            Value::I64(t) => Some(t),
                            _ => x.as_u64().map(|t| t.min(i64::MAX as u64) as i64),
                        };
                        t.map(TokenType::from_gguf).ok_or_else(|| {
                            meta_err(key, format_args!("element {i} should be an integer, found {}", value_kind(x)))
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };

        // Later duplicates win, as in llama.cpp and transformers' conversion.
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }

        let id = |key: &str| opt_id(h, key, n);
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let eom = id("tokenizer.ggml.eom_token_id")?;
        let pad = id("tokenizer.ggml.padding_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        let add_bos = opt_bool(h, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = opt_bool(h, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(meta_err("tokenizer.ggml.add_bos_token", "is true but tokenizer.ggml.bos_token_id is missing"));
        }
        if add_eos && eos.is_none() {
            return Err(meta_err("tokenizer.ggml.add_eos_token", "is true but tokenizer.ggml.eos_token_id is missing"));
        }

        let (algo, bytes) = match spec {
            Some(spec) => {
                let bpe = Self::build_bpe(h, &vocab, spec.ignore_merges)?;
                let pre_tokenizer = spec.build().map_err(|e| tok_err("building the pre-tokenizer", e))?;
                (Algo::Bpe { bpe: Box::new(bpe), pre_tokenizer }, byte_level_bytes(&tokens, &types))
            }
            None => {
                // llama.cpp's default for SPM files without the key is true (Llama 2's dummy
                // prefix): refuse rather than tokenize such files differently from their model.
                let key = "tokenizer.ggml.add_space_prefix";
                if opt_bool(h, key)?.unwrap_or(true) {
                    return Err(PupilError::Unsupported(format!(
                        "SentencePiece with a dummy prefix (`{key}` is true or missing, as in Llama 2); \
                         only `{key}` = false (Gemma) is supported"
                    )));
                }
                let spm = spm::Spm::new(h, &tokens, &types, unk)?;
                let bytes = tokens.iter().zip(&types).map(|(t, &ty)| spm::piece_bytes(t, ty)).collect();
                (Algo::Spm(spm), bytes)
            }
        };

        let matcher = |want: &dyn Fn(TokenType) -> bool| -> Result<Option<(AhoCorasick, Vec<u32>)>> {
            // (text as matched, id); SentencePiece matches in the escaped text.
            let mut texts: Vec<(Cow<str>, u32)> = tokens
                .iter()
                .zip(&types)
                .enumerate()
                .filter(|(_, (t, ty))| want(**ty) && !t.is_empty())
                .map(|(i, (t, _))| (if is_spm { spm::escape(t) } else { Cow::Borrowed(t.as_str()) }, i as u32))
                .collect();
            // One id per text: the later duplicate, as the vocabulary map has it.
            texts.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            texts.dedup_by(|a, b| a.0 == b.0);
            if texts.is_empty() {
                return Ok(None);
            }
            let ids = texts.iter().map(|(_, id)| *id).collect();
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(texts.iter().map(|(t, _)| t.as_ref()))
                .map_err(|e| tok_err("building the special-token matcher", e))?;
            Ok(Some((ac, ids)))
        };
        let special = matcher(&|t| matches!(t, TokenType::Control | TokenType::UserDefined))?;
        let user_defined = matcher(&|t| t == TokenType::UserDefined)?;

        let mut stop: Vec<u32> = [eos, eot, eom].into_iter().flatten().collect();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if matches!(ty, TokenType::Control | TokenType::UserDefined) && STOP_TOKEN_TEXTS.contains(&t.as_str()) {
                stop.push(i as u32);
            }
        }
        stop.sort_unstable();
        stop.dedup();

        Ok(Tokenizer {
            inner: Arc::new(Inner {
                model: model.to_owned(),
                pre: pre.to_owned(),
                tokens,
                types,
                bytes,
                vocab,
                algo,
                special,
                user_defined,
                bos,
                eos,
                eot,
                pad,
                unk,
                add_bos,
                add_eos,
                stop,
            }),
        })
    }

    /// HF `tokenizers`' BPE from the vocabulary and `tokenizer.ggml.merges`.
    fn build_bpe(h: &GgufHeader, vocab: &HashMap<String, u32>, ignore_merges: bool) -> Result<BPE> {
        let merges_key = "tokenizer.ggml.merges";
        let merges = str_array(h, merges_key)?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                // llama.cpp splits at the first space after the first character.
                let at = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(p, _)| p);
                let at = at.ok_or_else(|| {
                    meta_err(merges_key, format_args!("entry {i} {m:?} is not two tokens separated by a space"))
                })?;
                let (a, b) = (&m[..at], &m[at + 1..]);
                let merged = format!("{a}{b}");
                for part in [a, b, &merged] {
                    if !vocab.contains_key(part) {
                        return Err(meta_err(
                            merges_key,
                            format_args!("entry {i} {m:?} needs {part:?}, which is not a token"),
                        ));
                    }
                }
                Ok((a.to_owned(), b.to_owned()))
            })
            .collect::<Result<Vec<_>>>()?;

        let bpe_vocab: Vocab = vocab.iter().map(|(k, &v)| (k.clone(), v)).collect();
        BPE::builder()
            .vocab_and_merges(bpe_vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| tok_err("building the BPE model", e))
    }

    /// Token ids of `text`, without BOS/EOS. With `parse_special`, text of CONTROL tokens
    /// (`<|im_start|>`) becomes their ids; without it, it is tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, parse_special, &mut out)?;
        Ok(out)
    }

    /// [`encode`](Self::encode) plus what the model asks for: BOS first if
    /// `tokenizer.ggml.add_bos_token` (and the text does not already start with BOS), EOS last
    /// if `tokenizer.ggml.add_eos_token`. For a rendered chat prompt use `parse_special = true`.
    pub fn encode_for_model(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let i = &self.inner;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.encode_into(text, parse_special, &mut out)?;
        if i.add_bos && out.first() != i.bos.as_ref() {
            out.insert(0, i.bos.expect("checked at load"));
        }
        if i.add_eos {
            out.push(i.eos.expect("checked at load"));
        }
        Ok(out)
    }

    /// Append the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) -> Result<()> {
        let i = &self.inner;
        let matcher = if parse_special { &i.special } else { &i.user_defined };
        // SentencePiece works on the escaped text, special and user-defined pieces included.
        let text = match i.algo {
            Algo::Spm(_) => spm::escape(text),
            Algo::Bpe { .. } => Cow::Borrowed(text),
        };
        let text = text.as_ref();
        let mut start = 0;
        if let Some((ac, ids)) = matcher {
            for m in ac.find_iter(text) {
                self.encode_plain(&text[start..m.start()], out)?;
                out.push(ids[m.pattern().as_usize()]);
                start = m.end();
            }
        }
        self.encode_plain(&text[start..], out)
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let err = |e: &dyn fmt::Display| PupilError::arg("Tokenizer::encode", format!("{e}"));
        match &self.inner.algo {
            Algo::Bpe { bpe, pre_tokenizer } => {
                let mut pts = PreTokenizedString::from(text);
                pre_tokenizer.apply(&mut pts).map_err(|e| err(&e))?;
                pts.tokenize(|piece| bpe.tokenize(piece.get())).map_err(|e| err(&e))?;
                for (_, _, tokens) in pts.get_splits(OffsetReferential::Original, OffsetType::None) {
                    out.extend(tokens.iter().flatten().map(|t| t.id));
                }
            }
            Algo::Spm(spm) => {
                // Symbols are indexed by u32 offsets.
                if text.len() >= u32::MAX as usize {
                    return Err(err(&format_args!(
                        "{} bytes of text without a special token is over 4 GiB",
                        text.len()
                    )));
                }
                spm.encode(text, out);
            }
        }
        Ok(())
    }

    /// The text of `ids`. Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD:
    /// one per maximal invalid sequence for byte-level BPE (as HF's ByteLevel decoder), one per
    /// invalid byte for SentencePiece, where only consecutive byte pieces can form a character
    /// (as `sentencepiece`: a skipped CONTROL token between two halves of a character still
    /// separates them). `skip_special` leaves out CONTROL tokens. Ids outside the vocabulary
    /// are an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut text = String::new();
        for &id in ids {
            let piece = self.piece(id, skip_special, "Tokenizer::decode")?;
            if self.ends_byte_run(id) && !bytes.is_empty() {
                text.push_str(&self.bytes_to_text(&bytes));
                bytes.clear();
            }
            bytes.extend_from_slice(piece);
        }
        text.push_str(&self.bytes_to_text(&bytes));
        Ok(text)
    }

    /// SentencePiece decodes each run of byte pieces on its own: any other token (even one
    /// that decodes to nothing) ends the run, and an unfinished character in it is U+FFFD.
    pub(crate) fn ends_byte_run(&self, id: u32) -> bool {
        let i = &self.inner;
        matches!(i.algo, Algo::Spm(_)) && i.types.get(id as usize).is_some_and(|&t| t != TokenType::Byte)
    }

    /// Decoded bytes as text, with this tokenizer's U+FFFD rule.
    pub(crate) fn bytes_to_text(&self, bytes: &[u8]) -> String {
        match self.inner.algo {
            Algo::Spm(_) => {
                let mut s = String::with_capacity(bytes.len());
                spm::push_utf8_per_byte(&mut s, bytes);
                s
            }
            Algo::Bpe { .. } => String::from_utf8_lossy(bytes).into_owned(),
        }
    }

    /// Whether invalid UTF-8 becomes one U+FFFD per byte (SentencePiece) rather than one per
    /// maximal invalid sequence.
    pub(crate) fn replaces_per_byte(&self) -> bool {
        matches!(self.inner.algo, Algo::Spm(_))
    }

    /// SentencePiece with all 256 byte pieces: every text round-trips through
    /// `encode(text, false)` and `decode`.
    pub(crate) fn has_byte_fallback(&self) -> bool {
        matches!(&self.inner.algo, Algo::Spm(spm) if spm.byte_fallback())
    }

    /// The bytes token `id` decodes to (empty for a skipped special token).
    pub(crate) fn piece(&self, id: u32, skip_special: bool, op: &'static str) -> Result<&[u8]> {
        let i = &self.inner;
        let b = i.bytes.get(id as usize).ok_or_else(|| {
            PupilError::arg(op, format!("token id {id} is outside the vocabulary of {} tokens", i.tokens.len()))
        })?;
        Ok(if skip_special && i.types[id as usize] == TokenType::Control { &[] } else { b })
    }

    /// A decoder that turns ids into text as they are generated.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special)
    }

    /// The vocabulary entry of `id` as stored (byte-level BPE text, e.g. `Ġthe`; SentencePiece
    /// pieces as `▁the`, `<0x0A>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.inner.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes `id` decodes to (`" the"` for `Ġthe` and `▁the`).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.bytes.get(id as usize).map(|b| &b[..])
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.inner.types.get(id as usize).copied()
    }

    /// The id of a vocabulary entry as stored (`"<|im_end|>"`, `"Ġthe"`, `"▁the"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.vocab.get(text).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.tokens.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }
    /// `tokenizer.ggml.eot_token_id` (end of turn), if the model names one.
    pub fn eot_id(&self) -> Option<u32> {
        self.inner.eot
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.inner.pad
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.inner.unk
    }
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.inner.add_eos
    }

    /// Ids that end generation, sorted: EOS, EOT and EOM ids plus the model's special tokens
    /// llama.cpp also treats as end-of-generation (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`,
    /// `<end_of_turn>`, ...). SmolLM2: `[0, 2]` (`<|endoftext|>`, `<|im_end|>`).
    pub fn stop_ids(&self) -> &[u32] {
        &self.inner.stop
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.inner.stop.binary_search(&id).is_ok()
    }

    /// `tokenizer.ggml.model` and `tokenizer.ggml.pre`.
    pub fn kind(&self) -> (&str, &str) {
        (&self.inner.model, &self.inner.pre)
    }
}
