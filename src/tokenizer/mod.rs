//! Tokenizers and chat templates built from GGUF metadata, natively and on wasm32.
//!
//! [`Tokenizer::from_gguf`] reads `tokenizer.ggml.*` (model, pre, tokens, merges, token_type,
//! special ids, add_bos/add_eos) and builds a byte-level BPE tokenizer (`tokenizer.ggml.model`
//! = `gpt2`) with the pre-tokenizer named by `tokenizer.ggml.pre` (`smollm`, `gpt2`, `qwen2`,
//! `deepseek-r1-qwen`, `llama-bpe`; the table is in `pretok.rs`). The BPE merge loop and the
//! pre-tokenizers are Hugging Face's `tokenizers` crate (with fancy-regex, so it builds for the
//! browser), so encoding is that crate's, checked against the Python `tokenizers` on the real
//! SmolLM2 vocabulary (`tests/tokenizer.rs`, fixtures by
//! `scripts/fixtures/make_tokenizer_fixtures.py`).
//!
//! Special tokens follow llama.cpp: text matching a CONTROL token (type 3) becomes that token
//! only when `parse_special` is set; USER_DEFINED tokens (type 4) always match. Matching is
//! leftmost-longest, as Hugging Face's added vocabulary does. Decoding is done here: each token
//! is turned into bytes once at load (CONTROL and USER_DEFINED tokens are their text, others go
//! through GPT-2's byte ↔ char map) and the bytes of a sequence become text with invalid UTF-8
//! replaced by U+FFFD, the same rule as HF's ByteLevel decoder. [`StreamDecoder`] yields text as
//! tokens arrive without ever splitting a character. [`ChatTemplate`] renders
//! `tokenizer.chat_template` with minijinja configured as transformers configures jinja2.
//!
//! Input bytes the vocabulary has no token for are dropped (SmolLM2 lacks a few control and
//! 0xF1.. bytes), as HF's BPE without an unknown token and llama.cpp both do.

mod chat;
mod pretok;
mod stream;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizedString};

pub use chat::{ChatMessage, ChatTemplate, CHATML_TEMPLATE};
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

struct Inner {
    model: String,
    pre: String,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// What each token decodes to.
    bytes: Vec<Box<[u8]>>,
    /// Also the text → id map (`token_id`).
    bpe: BPE,
    pre_tokenizer: pretok::PreTokenizerChain,
    /// CONTROL + USER_DEFINED tokens (parse_special) and USER_DEFINED alone.
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

fn value_kind(v: &Value) -> String {
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

fn meta_err(key: &str, detail: impl fmt::Display) -> PupilError {
    PupilError::Format(format!("GGUF tokenizer metadata: `{key}` {detail}"))
}

fn wrong_type(key: &str, want: &str, v: &Value) -> PupilError {
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

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes. Missing or ill-typed keys and unsupported
    /// models or pre-tokenizers are errors that name the key and value.
    pub fn from_gguf(h: &GgufHeader) -> Result<Tokenizer> {
        let model = req_str(h, "tokenizer.ggml.model")?;
        if !pretok::MODELS.iter().any(|(m, _)| *m == model) {
            let list = pretok::MODELS.iter().map(|(m, d)| format!("{m} ({d})")).collect::<Vec<_>>().join(", ");
            return Err(PupilError::Unsupported(format!(
                "tokenizer.ggml.model `{model}`{}; supported: {list}",
                if model == "llama" { " (SentencePiece)" } else { "" }
            )));
        }
        let pre = req_str(h, "tokenizer.ggml.pre")?;
        let spec = pretok::find_pre_tokenizer(pre).ok_or_else(|| {
            PupilError::Unsupported(format!(
                "tokenizer.ggml.pre `{pre}` (model {model}); supported: {}",
                pretok::supported_pre_tokenizers()
            ))
        })?;

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
        let bpe = BPE::builder()
            .vocab_and_merges(bpe_vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| tok_err("building the BPE model", e))?;
        let pre_tokenizer = spec.build().map_err(|e| tok_err("building the pre-tokenizer", e))?;

        let table = pretok::byte_to_char_table();
        let mut char_to_byte: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, &c) in table.iter().enumerate() {
            char_to_byte.insert(c, b as u8);
        }
        let bytes = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| match ty {
                TokenType::Control | TokenType::UserDefined => t.as_bytes().into(),
                // HF's ByteLevel decoder: a token with a char outside the map is its UTF-8.
                _ => t
                    .chars()
                    .map(|c| char_to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| t.as_bytes().to_vec())
                    .into_boxed_slice(),
            })
            .collect();

        let matcher = |want: &dyn Fn(TokenType) -> bool| -> Result<Option<(AhoCorasick, Vec<u32>)>> {
            let mut texts: Vec<&str> = tokens
                .iter()
                .zip(&types)
                .filter(|(t, ty)| want(**ty) && !t.is_empty())
                .map(|(t, _)| t.as_str())
                .collect();
            texts.sort_unstable();
            texts.dedup();
            if texts.is_empty() {
                return Ok(None);
            }
            let ids = texts.iter().map(|t| vocab[*t]).collect();
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&texts)
                .map_err(|e| tok_err("building the special-token matcher", e))?;
            Ok(Some((ac, ids)))
        };
        let special = matcher(&|t| matches!(t, TokenType::Control | TokenType::UserDefined))?;
        let user_defined = matcher(&|t| t == TokenType::UserDefined)?;

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
                bpe,
                pre_tokenizer,
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
        let i = &self.inner;
        let err = |e| PupilError::arg("Tokenizer::encode", format!("{e}"));
        let mut pts = PreTokenizedString::from(text);
        i.pre_tokenizer.apply(&mut pts).map_err(err)?;
        pts.tokenize(|piece| i.bpe.tokenize(piece.get())).map_err(err)?;
        for (_, _, tokens) in pts.get_splits(OffsetReferential::Original, OffsetType::None) {
            out.extend(tokens.iter().flatten().map(|t| t.id));
        }
        Ok(())
    }

    /// The text of `ids`. Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD.
    /// `skip_special` leaves out CONTROL tokens. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.piece(id, skip_special, "Tokenizer::decode")?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
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

    /// The vocabulary entry of `id` as stored (byte-level BPE text, e.g. `Ġthe`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.inner.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes `id` decodes to (`" the"` for `Ġthe`).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.bytes.get(id as usize).map(|b| &b[..])
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.inner.types.get(id as usize).copied()
    }

    /// The id of a vocabulary entry (`"<|im_end|>"`, `"Ġthe"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.bpe.token_to_id(text)
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
