//! Text generation over the token loop ([`generate`]): ids become UTF-8-safe text deltas as
//! they are picked (`StreamDecoder`), and stop strings end generation. Text that might be the
//! start of a stop string is held back until it is known not to be, so a caller never shows
//! part of a stop string; the stop string itself is not part of the output.

use std::cell::RefCell;

use super::generate::{generate, Flow, GenerateOptions, GenerationStats, StopReason, TokenPicker};
use super::session::Session;
use super::speculative::{generate_speculative, SpeculativeOptions, SpeculativeStats};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::sampling::{SamplerConfig, TokenLogprobs};
use crate::tokenizer::Tokenizer;

/// What `on_text` is called with for each generated token: the text it makes showable, its id,
/// and its logprobs when the picker reports them.
pub type OnText<'a> = dyn FnMut(&str, u32, Option<&TokenLogprobs>) -> Flow + 'a;

/// Limits of one text generation.
#[derive(Clone, Debug)]
pub struct TextOptions {
    pub max_tokens: usize,
    /// Token ids that end generation (usually `Tokenizer::stop_ids`).
    pub stop_tokens: Vec<u32>,
    /// Generation ends when the text contains one of these (empty strings are ignored).
    pub stop_strings: Vec<String>,
    /// Leave CONTROL tokens out of the text.
    pub skip_special: bool,
}

/// Why a text generation ended (front ends show these names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller's callback asked to stop.
    Abort,
    /// The context is full.
    Context,
}

#[derive(Clone, Debug)]
pub struct TextGeneration {
    /// Every generated token (those that spelled a stop string included; a stop token not).
    pub tokens: Vec<u32>,
    /// The generated text, up to (without) a stop string.
    pub text: String,
    pub finish: FinishReason,
    pub stats: GenerationStats,
    /// Each token's logprobs, aligned with `tokens`, when the picker reported them.
    pub logprobs: Vec<TokenLogprobs>,
}

/// One token's logprobs as OpenAI's chat completions write them: `{token, logprob, bytes,
/// top_logprobs: [{token, logprob, bytes}]}`; a token's text is its bytes read as UTF-8 (a
/// piece of a character shows as U+FFFD; `bytes` is exact).
pub fn openai_logprobs(tokenizer: &Tokenizer, lp: &TokenLogprobs) -> serde_json::Value {
    let entry = |id: u32, logprob: f32| {
        let bytes = tokenizer.token_bytes(id).unwrap_or_default();
        serde_json::json!({ "token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes })
    };
    let mut out = entry(lp.token, lp.logprob);
    out["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
    out
}

/// Stop-string matching over a growing text, holding back a possible beginning of one.
struct StopStrings {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
}

impl StopStrings {
    fn new(stops: &[String]) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        StopStrings { stops, text: String::new(), emitted: 0 }
    }

    /// Add `piece`; returns the text now safe to show and whether a stop string matched (the
    /// text is then cut before it). `flush`: nothing follows, hold nothing back.
    fn push(&mut self, piece: &str, flush: bool) -> (String, bool) {
        self.text.push_str(piece);
        // A match cannot start before `emitted`: a text that began one was held back.
        let fresh = &self.text[self.emitted..];
        if let Some(at) = self.stops.iter().filter_map(|s| fresh.find(s.as_str())).min() {
            let delta = fresh[..at].to_string();
            self.text.truncate(self.emitted + at);
            self.emitted = self.text.len();
            return (delta, true);
        }
        let held = if flush {
            0
        } else {
            // The longest suffix that some stop string starts with.
            fresh
                .char_indices()
                .map(|(i, _)| &fresh[i..])
                .find(|tail| self.stops.iter().any(|s| s.starts_with(tail)))
                .map_or(0, str::len)
        };
        let end = self.text.len() - held;
        let delta = self.text[self.emitted..end].to_string();
        self.emitted = end;
        (delta, false)
    }
}

/// Ids → text deltas with stop strings, for either token loop.
struct TextSink {
    decoder: crate::tokenizer::StreamDecoder,
    stops: StopStrings,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
    error: Option<crate::error::PupilError>,
    stop_string: bool,
    max_tokens: usize,
}

impl TextSink {
    fn new(tokenizer: &Tokenizer, opts: &TextOptions) -> Self {
        TextSink {
            decoder: tokenizer.stream_decoder(opts.skip_special),
            stops: StopStrings::new(&opts.stop_strings),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            error: None,
            stop_string: false,
            max_tokens: opts.max_tokens,
        }
    }

    /// One generated token: its showable text to `on_text`; Stop on a stop string, a decode
    /// error or the caller's word.
    fn push(&mut self, id: u32, logprobs: Option<TokenLogprobs>, on_text: &mut OnText) -> Flow {
        self.tokens.push(id);
        let mut piece = match self.decoder.push(id) {
            Ok(p) => p,
            Err(e) => {
                self.error = Some(e);
                return Flow::Stop;
            }
        };
        let last = self.tokens.len() >= self.max_tokens;
        if last {
            piece.push_str(&self.decoder.finish());
        }
        let (delta, matched) = self.stops.push(&piece, last);
        let flow = on_text(&delta, id, logprobs.as_ref());
        self.logprobs.extend(logprobs);
        self.stop_string |= matched;
        if matched {
            Flow::Stop
        } else {
            flow
        }
    }

    /// The tokens, the text and why it ended, given why the token loop stopped.
    fn finish(mut self, stop: StopReason) -> Result<(Vec<u32>, String, FinishReason, Vec<TokenLogprobs>)> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let tail = self.decoder.finish();
        self.stop_string |= self.stops.push(&tail, true).1;
        let finish = match stop {
            _ if self.stop_string => FinishReason::Stop,
            StopReason::StopToken => FinishReason::Stop,
            StopReason::Length => FinishReason::Length,
            StopReason::Caller => FinishReason::Abort,
            StopReason::Context => FinishReason::Context,
        };
        Ok((self.tokens, self.stops.text, finish, self.logprobs))
    }
}

/// Generate text after `prompt` (token ids; the session reuses what it already holds).
/// `on_text(delta, id)` is called once per generated token with the text that token makes
/// showable (often empty: an unfinished character, or a possible stop-string start); its
/// `Flow::Stop` ends generation with [`FinishReason::Abort`] and no further call. Text held
/// back when generation ends on a stop token, the context or an abort is only in the result's
/// `text`; at the token limit the last call gets it. A picker that reports logprobs (a
/// `Sampler::with_logprobs`) hands each token's to `on_text` and the result.
pub async fn generate_text<P: TokenPicker>(
    ctx: &GpuContext,
    session: &mut Session<'_>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &TextOptions,
    picker: &mut P,
    on_text: &mut OnText<'_>,
) -> Result<TextGeneration> {
    let mut sink = TextSink::new(tokenizer, opts);
    let gen_opts = GenerateOptions { max_tokens: opts.max_tokens, stop_tokens: opts.stop_tokens.clone() };
    // The picked token's logprobs pass from the picker to the token callback through `slot`.
    let slot = RefCell::new(None);
    let mut logged = Logged { picker, slot: &slot };
    let stats = generate(ctx, session, prompt, &gen_opts, &mut logged, &mut |id| {
        sink.push(id, slot.borrow_mut().take(), on_text)
    })
    .await?;
    let (tokens, text, finish, logprobs) = sink.finish(stats.stop)?;
    Ok(TextGeneration { tokens, text, finish, stats, logprobs })
}

/// A picker whose logprobs land in `slot` as it picks.
struct Logged<'a, P> {
    picker: &'a mut P,
    slot: &'a RefCell<Option<TokenLogprobs>>,
}

impl<P: TokenPicker> TokenPicker for Logged<'_, P> {
    async fn pick(&mut self, ctx: &GpuContext, logits: &crate::gpu::Tensor, history: &[u32]) -> Result<u32> {
        let id = self.picker.pick(ctx, logits, history).await?;
        *self.slot.borrow_mut() = self.picker.take_logprobs();
        Ok(id)
    }
}

/// A [`generate_text`] whose tokens come from speculative decoding.
#[derive(Clone, Debug)]
pub struct SpeculativeText {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub stats: SpeculativeStats,
}

/// [`generate_text`] with `target` verifying `draft`'s guesses ([`generate_speculative`]):
/// `draft_tokens` per round, picking as `sampling` says (the output follows `target` alone).
#[allow(clippy::too_many_arguments)]
pub async fn generate_text_speculative(
    ctx: &GpuContext,
    target: &mut Session<'_>,
    draft: &mut Session<'_>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &TextOptions,
    draft_tokens: usize,
    sampling: &SamplerConfig,
    on_text: &mut OnText<'_>,
) -> Result<SpeculativeText> {
    let mut sink = TextSink::new(tokenizer, opts);
    let spec = SpeculativeOptions {
        draft_tokens,
        max_tokens: opts.max_tokens,
        stop_tokens: opts.stop_tokens.clone(),
        sampling: sampling.clone(),
    };
    let stats = generate_speculative(ctx, target, draft, prompt, &spec, &mut |id| sink.push(id, None, on_text)).await?;
    let (tokens, text, finish, _) = sink.finish(stats.generation.stop)?;
    Ok(SpeculativeText { tokens, text, finish, stats })
}

#[cfg(test)]
mod tests {
    use super::StopStrings;

    /// Feed pieces; returns (every delta joined, matched, final text).
    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = StopStrings::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = Vec::new();
        for p in pieces {
            let (d, m) = s.push(p, false);
            out.push(d);
            if m {
                return (out, true, s.text);
            }
        }
        out.push(s.push("", true).0);
        (out, false, s.text)
    }

    #[test]
    fn holds_back_a_possible_stop_string_and_cuts_before_it() {
        let (d, m, t) = run(&["</s>", "User:"], &["Hello ", "wor", "ld<", "/", "s> more"]);
        assert!(m);
        assert_eq!(t, "Hello world");
        assert_eq!(d, ["Hello ", "wor", "ld", "", ""]);
    }

    #[test]
    fn releases_held_text_that_does_not_continue_a_stop_string() {
        let (d, m, t) = run(&["User:"], &["a Us", "ual", " day"]);
        assert!(!m);
        assert_eq!(t, "a Usual day");
        assert_eq!(d.concat(), t);
        assert_eq!(d[0], "a ");
    }

    #[test]
    fn no_stop_strings_passes_everything_through() {
        let (d, m, t) = run(&[""], &["é", "x"]);
        assert!(!m);
        assert_eq!((d.concat(), t), ("éx".to_string(), "éx".to_string()));
    }

    #[test]
    fn a_stop_string_inside_one_piece_matches() {
        let (d, m, t) = run(&["\n\n"], &["one\n\ntwo"]);
        assert!(m);
        assert_eq!((d.concat(), t), ("one".to_string(), "one".to_string()));
    }
}
