//! Incremental decoding for generation: text comes out as soon as it is complete UTF-8.

use super::Tokenizer;
use crate::error::Result;

/// Turns a stream of ids into text without ever emitting part of a character: bytes of an
/// unfinished UTF-8 sequence wait for the next token. The concatenation of everything
/// [`push`](Self::push) and [`finish`](Self::finish) return equals
/// `tokenizer.decode(all_ids, skip_special)`, however the ids are split (invalid bytes become
/// U+FFFD exactly where the whole decode puts them: per maximal invalid sequence as
/// `String::from_utf8_lossy` for byte-level BPE, per byte for SentencePiece).
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new(tokenizer: Tokenizer, skip_special: bool) -> Self {
        StreamDecoder { tokenizer, skip_special, pending: Vec::new() }
    }

    /// Add one token; returns the text it completes (often empty mid-character). An id outside
    /// the vocabulary is an error and leaves the decoder unchanged.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let piece = self.tokenizer.piece(id, self.skip_special, "StreamDecoder::push")?;
        let mut out = String::new();
        if self.tokenizer.ends_byte_run(id) && !self.pending.is_empty() {
            // SentencePiece: only consecutive byte pieces make a character.
            out = self.tokenizer.bytes_to_text(&self.pending);
            self.pending.clear();
        }
        self.pending.extend_from_slice(piece);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: `valid_up_to` bytes are valid UTF-8.
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).expect("valid prefix"));
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            // SentencePiece replaces only the first byte and tries again from
                            // the next (F0 9F 'x' is two U+FFFD, not one).
                            start += if self.tokenizer.replaces_per_byte() { 1 } else { bad };
                        }
                        // An unfinished character at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(out)
    }

    /// End of the stream: the bytes still waiting (an unfinished character) as U+FFFD, or "".
    pub fn finish(&mut self) -> String {
        let out = self.tokenizer.bytes_to_text(&self.pending);
        self.pending.clear();
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Forget held-back bytes (e.g. when a generation is cancelled).
    pub fn reset(&mut self) {
        self.pending.clear();
    }
}
