//! SentencePiece BPE (`tokenizer.ggml.model` = `llama`: Gemma, Llama 2), as the `sentencepiece`
//! library encodes with a BPE model:
//!
//! 1. spaces become `▁` (U+2581; [`escape`]), no dummy prefix (`add_space_prefix` false);
//! 2. USER_DEFINED pieces are cut out of the escaped text first, leftmost-longest (the caller
//!    does this, together with CONTROL tokens under `parse_special`);
//! 3. the rest is split into characters and the adjacent pair whose concatenation is a piece
//!    with the highest score is merged, ties to the leftmost, until no pair is a piece — a
//!    priority queue of candidate pairs over a linked list of symbols, O(n log n). Merges are
//!    independent on either side of a `▁` that no piece reaches across (for Gemma every `▁` not
//!    after a `>`), so the text is cut there first: the same result, with small queues;
//! 4. a symbol that is not a piece becomes its UTF-8 bytes as `<0xXX>` pieces (byte fallback),
//!    or the unknown token when the vocabulary has no byte pieces.
//!
//! Which pieces a merge may produce follows `sentencepiece` (NORMAL and USER_DEFINED pieces;
//! CONTROL, UNKNOWN and BYTE pieces never come out of a merge), not llama.cpp, which also merges
//! into CONTROL and BYTE texts. UNUSED pieces are not merged into either: `sentencepiece` merges
//! into them and then splits them again, which can only differ from this when an UNUSED piece
//! is the only path to a longer piece (llama.cpp's converter uses UNUSED for padding entries
//! such as `[PAD7]`). Checked against `sentencepiece` itself on Gemma 3's 262,144 pieces
//! (`tests/tokenizer.rs`, `scripts/fixtures/make_gemma_tokenizer_fixtures.py`).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use super::{meta_err, value_kind, TokenType};
use crate::error::Result;
use crate::model::gguf::{GgufHeader, Value};

/// SentencePiece's whitespace symbol.
pub(crate) const SPACE: char = '\u{2581}';

/// Text as SentencePiece sees it: every space replaced by `▁`.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if text.contains(' ') {
        Cow::Owned(text.replace(' ', "\u{2581}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// What a token decodes to: `▁` back to a space in pieces of text, the byte of a `<0xXX>`
/// piece, CONTROL and UNKNOWN tokens as their names.
pub(crate) fn piece_bytes(text: &str, ty: TokenType) -> Box<[u8]> {
    match ty {
        TokenType::Byte => match parse_byte_piece(text) {
            Some(b) => Box::new([b]),
            None => text.as_bytes().into(),
        },
        TokenType::Control | TokenType::Unknown => text.as_bytes().into(),
        _ => text.replace(SPACE, " ").into_bytes().into_boxed_slice(),
    }
}

/// `<0x41>` → 0x41 (exactly two hex digits, as `sentencepiece` names byte pieces).
fn parse_byte_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[derive(Clone, Copy)]
struct Piece {
    id: u32,
    score: f32,
    /// A merge may produce it (NORMAL, USER_DEFINED, UNDEFINED).
    mergeable: bool,
}

/// The SentencePiece model: pieces by escaped text, byte pieces, the unknown token.
pub(crate) struct Spm {
    pieces: HashMap<Box<str>, Piece>,
    /// Characters some mergeable piece has right before a `▁` (Gemma: only `>`, in `>▁</`).
    /// Before a `▁` after any other character no merge can reach across, so the text is
    /// encoded word by word there — the same result, with small queues.
    joins_space: HashSet<char>,
    /// `<0x00>`..`<0xFF>`, when the vocabulary has byte pieces.
    byte_ids: Option<Box<[u32; 256]>>,
    unk: Option<u32>,
}

/// `tokenizer.ggml.scores`: one finite float per token.
fn read_scores(h: &GgufHeader, n: usize) -> Result<Vec<f32>> {
    let key = "tokenizer.ggml.scores";
    let v = h.get(key).ok_or_else(|| meta_err(key, "is missing (SentencePiece merges are ordered by piece scores)"))?;
    let a = v.as_array().ok_or_else(|| super::wrong_type(key, "an array of floats", v))?;
    if a.len() != n {
        return Err(meta_err(key, format_args!("has {} entries for {n} tokens", a.len())));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            let s = match *x {
                Value::F32(s) => s,
                Value::F64(s) => s as f32,
                _ => return Err(meta_err(key, format_args!("element {i} should be a float, found {}", value_kind(x)))),
            };
            if s.is_finite() {
                Ok(s)
            } else {
                Err(meta_err(key, format_args!("element {i} is {s}, not a finite score")))
            }
        })
        .collect()
}

impl Spm {
    /// Build from the vocabulary. `unk` is `tokenizer.ggml.unknown_token_id`; without it the
    /// first UNKNOWN-type token stands in. A vocabulary needs either all 256 byte pieces or an
    /// unknown token, else some text could not be encoded at all.
    pub fn new(h: &GgufHeader, tokens: &[String], types: &[TokenType], unk: Option<u32>) -> Result<Spm> {
        let scores = read_scores(h, tokens.len())?;
        // std's hasher, not a faster unkeyed one: the keys come from the file, and colliding keys
        // must not be able to make loading quadratic.
        let mut pieces: HashMap<Box<str>, Piece> = HashMap::with_capacity(tokens.len());
        let mut joins_space: HashSet<char> = HashSet::new();
        let mut byte_ids = [u32::MAX; 256];
        let mut n_bytes = 0usize;
        for (i, ((t, &ty), &score)) in tokens.iter().zip(types).zip(&scores).enumerate() {
            let id = i as u32;
            if ty == TokenType::Byte {
                if let Some(b) = parse_byte_piece(t) {
                    if byte_ids[b as usize] == u32::MAX {
                        n_bytes += 1;
                    }
                    byte_ids[b as usize] = id;
                }
                continue;
            }
            let mergeable = matches!(ty, TokenType::Normal | TokenType::UserDefined | TokenType::Undefined);
            // llama.cpp's converter stores USER_DEFINED pieces with `▁` turned back into spaces
            // ("pre-normalized"); SentencePiece matches them in the escaped text.
            let key: Box<str> = if ty == TokenType::UserDefined { escape(t).into() } else { t.as_str().into() };
            if mergeable {
                let mut prev = None;
                for c in key.chars() {
                    if let (SPACE, Some(p)) = (c, prev) {
                        joins_space.insert(p);
                    }
                    prev = Some(c);
                }
            }
            let piece = Piece { id, score, mergeable };
            match pieces.get_mut(&key) {
                // A later duplicate wins, as in llama.cpp, but one a merge may produce is never
                // hidden behind one it may not (SentencePiece keeps those in separate maps).
                Some(old) if old.mergeable && !mergeable => {}
                Some(old) => *old = piece,
                None => {
                    pieces.insert(key, piece);
                }
            }
        }
        let key = "tokenizer.ggml.token_type";
        let byte_ids = match n_bytes {
            256 => Some(Box::new(byte_ids)),
            0 => None,
            _ => {
                let missing = byte_ids.iter().position(|&id| id == u32::MAX).expect("some byte is missing");
                return Err(meta_err(
                    key,
                    format_args!(
                        "marks {n_bytes} of the 256 byte-fallback pieces as BYTE (6); <0x{missing:02X}> is missing"
                    ),
                ));
            }
        };
        let unk = unk.or_else(|| types.iter().position(|&t| t == TokenType::Unknown).map(|i| i as u32));
        if byte_ids.is_none() && unk.is_none() {
            return Err(meta_err(
                key,
                "has no byte-fallback pieces (<0x00>..<0xFF>, BYTE) and there is no unknown token: \
                 text outside the vocabulary could not be encoded",
            ));
        }
        Ok(Spm { pieces, joins_space, byte_ids, unk })
    }

    /// Whether every byte has a piece, so any text round-trips through encode and decode.
    pub fn byte_fallback(&self) -> bool {
        self.byte_ids.is_some()
    }

    /// The ids of `text`, which must already be escaped and hold no USER_DEFINED piece.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms = Vec::new();
        let mut queue = BinaryHeap::new();
        let mut start = 0;
        let mut prev = None;
        for (i, c) in text.char_indices() {
            if c == SPACE {
                if let Some(p) = prev {
                    if !self.joins_space.contains(&p) {
                        self.encode_word(&text[start..i], &mut syms, &mut queue, out);
                        start = i;
                    }
                }
            }
            prev = Some(c);
        }
        self.encode_word(&text[start..], &mut syms, &mut queue, out);
    }

    /// BPE over one stretch of text no merge crosses out of (`syms` and `queue` are scratch).
    fn encode_word(&self, text: &str, syms: &mut Vec<Symbol>, queue: &mut BinaryHeap<Candidate>, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        syms.clear();
        queue.clear();
        // One symbol per character; `start..end` is its text in `text`.
        for (start, c) in text.char_indices() {
            let i = syms.len() as u32;
            syms.push(Symbol {
                start: start as u32,
                end: (start + c.len_utf8()) as u32,
                prev: i.wrapping_sub(1),
                next: i + 1,
                dead: false,
            });
        }
        let last = syms.len() - 1;
        syms[last].next = NONE;

        for left in 0..last {
            self.push_pair(text, syms, left as u32, queue);
        }
        while let Some(c) = queue.pop() {
            let l = c.left as usize;
            let r = syms[l].next;
            // Stale candidates: the left symbol was merged away or has grown, or its right
            // neighbour has changed or grown (its length no longer adds up).
            if syms[l].dead || r == NONE || syms[r as usize].end - syms[l].start != c.len {
                continue;
            }
            let r = r as usize;
            syms[l].end = syms[r].end;
            syms[l].next = syms[r].next;
            syms[r].dead = true;
            if syms[l].next != NONE {
                let n = syms[l].next as usize;
                syms[n].prev = l as u32;
            }
            if syms[l].prev != NONE {
                self.push_pair(text, syms, syms[l].prev, queue);
            }
            self.push_pair(text, syms, l as u32, queue);
        }

        let mut i = 0u32;
        while i != NONE {
            let s = &syms[i as usize];
            let piece = &text[s.start as usize..s.end as usize];
            match self.pieces.get(piece) {
                Some(p) => out.push(p.id),
                None => match &self.byte_ids {
                    Some(bytes) => out.extend(piece.bytes().map(|b| bytes[b as usize])),
                    // One unknown token per unknown symbol, as `sentencepiece` emits them.
                    None => out.push(self.unk.expect("checked at load: byte pieces or an unknown token")),
                },
            }
            i = s.next;
        }
    }

    /// Queue the pair (left, left.next) if its concatenation is a mergeable piece.
    fn push_pair(&self, text: &str, syms: &[Symbol], left: u32, queue: &mut BinaryHeap<Candidate>) {
        let l = &syms[left as usize];
        if l.next == NONE {
            return;
        }
        let r = &syms[l.next as usize];
        // The symbols are adjacent in `text`, so their concatenation is a slice of it.
        if let Some(p) = self.pieces.get(&text[l.start as usize..r.end as usize]) {
            if p.mergeable {
                queue.push(Candidate { score: p.score, start: l.start, left, len: r.end - l.start });
            }
        }
    }
}

const NONE: u32 = u32::MAX;

struct Symbol {
    start: u32,
    end: u32,
    prev: u32,
    next: u32,
    dead: bool,
}

/// A pair that may be merged: the left symbol's index and where it starts, the merged length
/// (to recognise stale entries) and the merged piece's score.
struct Candidate {
    score: f32,
    start: u32,
    left: u32,
    len: u32,
}

impl Ord for Candidate {
    /// The max-heap pops the highest score first, and among equal scores the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.start.cmp(&self.start))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// `bytes` as text the way `sentencepiece` decodes byte pieces: valid characters as they are,
/// and each byte that does not begin a valid character as one U+FFFD (Rust's
/// `from_utf8_lossy` would give one U+FFFD for a whole truncated sequence such as F0 9F 98).
pub(crate) fn push_utf8_per_byte(out: &mut String, mut bytes: &[u8]) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..valid]).expect("valid prefix"));
                out.push(char::REPLACEMENT_CHARACTER);
                bytes = &bytes[valid + 1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_byte_replacement_matches_sentencepiece() {
        // sentencepiece 0.2: DecodeIds of these byte pieces.
        let cases: &[(&[u8], &str)] = &[
            (b"\xE2\x82\xAC", "€"),
            (b"\xF0\x9F\x98", "\u{fffd}\u{fffd}\u{fffd}"),
            (b"\xF0\x9F\x98a", "\u{fffd}\u{fffd}\u{fffd}a"),
            (b"\xE2\x82\xAC\xFF", "€\u{fffd}"),
            (b"\xED\xA0\x80", "\u{fffd}\u{fffd}\u{fffd}"),
            (b"\xC0\x80", "\u{fffd}\u{fffd}"),
            (b"", ""),
        ];
        for (bytes, want) in cases {
            let mut s = String::new();
            push_utf8_per_byte(&mut s, bytes);
            assert_eq!(s, *want, "{bytes:?}");
        }
    }

    #[test]
    fn byte_piece_names() {
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0xff>"), Some(255));
        for bad in ["<0x1>", "<0x100>", "<0xZZ>", "0x41", "<0x41"] {
            assert_eq!(parse_byte_piece(bad), None, "{bad}");
        }
    }
}
