//! Supported tokenizer models and pre-tokenizers, as tables: adding one is adding an entry (and
//! a fixture in `tests/fixtures/tokenizer/`).
//!
//! The names are GGUF's `tokenizer.ggml.model` and `tokenizer.ggml.pre` values; each entry
//! builds the Hugging Face `tokenizers` pre-tokenizer that the model's own `tokenizer.json` uses
//! (which is also what llama.cpp's table of regexes for that name does).

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizedString, PreTokenizer, SplitDelimiterBehavior};

/// `tokenizer.ggml.model` values and what they are. Only byte-level BPE uses the pre-tokenizers
/// below; SentencePiece (`llama`: Gemma) has none (`spm.rs`).
pub(crate) const MODELS: &[(&str, &str)] = &[("gpt2", "byte-level BPE"), ("llama", "SentencePiece BPE")];

/// One step of a pre-tokenizer. Concrete types rather than `tokenizers`' `PreTokenizerWrapper`,
/// whose dispatch would link every pre-tokenizer the crate has (and their Unicode tables) into
/// the wasm.
pub(crate) enum Step {
    Digits(Digits),
    ByteLevel(ByteLevel),
    Split(Split),
}

/// Pre-tokenizer steps applied in order (HF's `Sequence`).
pub(crate) struct PreTokenizerChain(Vec<Step>);

impl PreTokenizerChain {
    pub fn apply(&self, pts: &mut PreTokenizedString) -> tokenizers::Result<()> {
        for step in &self.0 {
            match step {
                Step::Digits(p) => p.pre_tokenize(pts)?,
                Step::ByteLevel(p) => p.pre_tokenize(pts)?,
                Step::Split(p) => p.pre_tokenize(pts)?,
            }
        }
        Ok(())
    }
}

/// One `tokenizer.ggml.pre` entry for byte-level BPE.
pub(crate) struct PreTokenizerSpec {
    /// GGUF names sharing this definition (llama.cpp maps them to one pre-tokenizer type).
    pub names: &'static [&'static str],
    /// BPE `ignore_merges`: a pre-token that is itself in the vocabulary is taken whole
    /// (Llama 3's tokenizer.json; llama.cpp sets it for `llama-bpe`).
    pub ignore_merges: bool,
    build: fn() -> tokenizers::Result<Vec<Step>>,
}

impl PreTokenizerSpec {
    pub fn build(&self) -> tokenizers::Result<PreTokenizerChain> {
        (self.build)().map(PreTokenizerChain)
    }
}

/// The GPT-2 split is built into `ByteLevel` (`use_regex`):
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn gpt2_byte_level() -> Step {
    Step::ByteLevel(ByteLevel::new(false, true, true))
}

/// Split on `regex` (matches kept as pieces), then byte-level map without the GPT-2 regex.
fn regex_then_byte_level(regex: &str) -> tokenizers::Result<Vec<Step>> {
    let split = Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)?;
    Ok(vec![Step::Split(split), Step::ByteLevel(ByteLevel::new(false, false, false))])
}

const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(crate) const BPE_PRE_TOKENIZERS: &[PreTokenizerSpec] = &[
    // SmolLM/SmolLM2: every digit alone (llama.cpp's `\p{N}`), then the GPT-2 regex.
    PreTokenizerSpec {
        names: &["smollm"],
        ignore_merges: false,
        build: || Ok(vec![Step::Digits(Digits::new(true)), gpt2_byte_level()]),
    },
    // GPT-2 itself: the GPT-2 regex alone.
    PreTokenizerSpec { names: &["gpt2"], ignore_merges: false, build: || Ok(vec![gpt2_byte_level()]) },
    // Qwen2/2.5/3 and the DeepSeek-R1 Qwen distills: single digits, letters with one leading
    // non-letter, newlines grouped.
    PreTokenizerSpec {
        names: &["qwen2", "deepseek-r1-qwen"],
        ignore_merges: false,
        build: || regex_then_byte_level(QWEN2_REGEX),
    },
    // Llama 3.x: digits in groups of up to three.
    PreTokenizerSpec { names: &["llama-bpe"], ignore_merges: true, build: || regex_then_byte_level(LLAMA3_REGEX) },
];

pub(crate) fn find_pre_tokenizer(name: &str) -> Option<&'static PreTokenizerSpec> {
    BPE_PRE_TOKENIZERS.iter().find(|s| s.names.contains(&name))
}

/// "a, b, c" of every supported `tokenizer.ggml.pre` name.
pub(crate) fn supported_pre_tokenizers() -> String {
    BPE_PRE_TOKENIZERS.iter().flat_map(|s| s.names.iter().copied()).collect::<Vec<_>>().join(", ")
}

/// GPT-2's reversible byte ↔ character map: printable Latin-1 bytes map to themselves, the
/// other 68 bytes to U+0100.. in order. Byte-level BPE vocabularies are written in these chars.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        *slot = if printable {
            char::from(b as u8)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
        };
    }
    table
}
