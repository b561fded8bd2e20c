//! Reasoning models (DeepSeek-R1-Distill, Qwen3, QwQ …) think inside `<think> … </think>` before
//! they answer. [`ReasoningSplit`] separates a streamed output into its reasoning and its answer
//! as the text arrives, so a front end can show them apart (OpenAI-compatible servers call the
//! first `reasoning_content`) and a chat history can keep only the answer.
//!
//! Two ways a thought starts: the model writes `<think>` first (Qwen3), or the chat template has
//! already opened it at the end of the prompt (R1-Distill's template ends with `<think>\n`), so
//! the output begins inside the thought and only `</think>` appears — [`ReasoningSplit::for_prompt`]
//! looks at the rendered prompt to know which. A possible beginning of a tag is held back until
//! the next text decides it, exactly as stop strings are, so no delta ever shows part of a tag.
//! Newlines that templates put around the tags (`<think>\n`, `</think>\n\n`) are dropped from
//! the start of each part, as Qwen3's template does when it reads a thought back.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the output may still open a thought.
    Start,
    /// Inside `<think>`; `fresh` says no reasoning text has been shown yet.
    Thinking { fresh: bool },
    /// After `</think>` (or there was no thought); `fresh`: no answer text shown yet.
    Answer { fresh: bool },
}

/// Text of one step, split: what belongs to the thought and what to the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitDelta {
    pub reasoning: String,
    pub content: String,
}

/// Streaming splitter of `<think>` reasoning from the answer.
#[derive(Clone, Debug)]
pub struct ReasoningSplit {
    state: State,
    /// Text received but not yet assigned (a possible tag start, or leading whitespace).
    held: String,
    reasoning: String,
    content: String,
}

/// The longest suffix of `text` that `tag` starts with (a tag that may be completed later).
fn partial_tag_suffix(text: &str, tag: &str) -> usize {
    text.char_indices().map(|(i, _)| &text[i..]).find(|tail| tag.starts_with(tail)).map_or(0, str::len)
}

impl ReasoningSplit {
    /// A splitter for an output that may open a thought itself.
    pub fn new() -> Self {
        Self::starting(false)
    }

    /// A splitter for the output that follows `prompt` (the rendered chat text): inside a
    /// thought already when the prompt's last `<think>` is not closed after it.
    pub fn for_prompt(prompt: &str) -> Self {
        let open = prompt.rfind(OPEN);
        let close = prompt.rfind(CLOSE);
        let inside = match (open, close) {
            (Some(o), Some(c)) => o > c,
            (Some(_), None) => true,
            _ => false,
        };
        Self::starting(inside)
    }

    fn starting(inside: bool) -> Self {
        let state = if inside { State::Thinking { fresh: true } } else { State::Start };
        ReasoningSplit { state, held: String::new(), reasoning: String::new(), content: String::new() }
    }

    /// Whether the output is inside a thought now.
    pub fn thinking(&self) -> bool {
        matches!(self.state, State::Thinking { .. })
    }

    /// The reasoning so far (tags removed, surrounding newlines trimmed at the start).
    pub fn reasoning(&self) -> &str {
        &self.reasoning
    }

    /// The answer so far.
    pub fn content(&self) -> &str {
        &self.content
    }

    /// Add the next piece of text; returns what can be shown now.
    pub fn push(&mut self, piece: &str) -> SplitDelta {
        self.held.push_str(piece);
        let mut out = SplitDelta::default();
        loop {
            match self.state {
                State::Start => {
                    let text = self.held.trim_start();
                    if let Some(rest) = text.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking { fresh: true };
                    } else if OPEN.starts_with(text) {
                        return out; // whitespace, or a prefix of `<think>`: wait
                    } else {
                        self.state = State::Answer { fresh: false };
                    }
                }
                State::Thinking { fresh } => {
                    if fresh {
                        if !self.drop_leading_newlines() {
                            return out;
                        }
                        self.state = State::Thinking { fresh: false };
                    }
                    if let Some(at) = self.held.find(CLOSE) {
                        let before = self.held[..at].to_string();
                        self.emit_reasoning(&before, &mut out);
                        self.held = self.held[at + CLOSE.len()..].to_string();
                        self.state = State::Answer { fresh: true };
                        continue;
                    }
                    let keep = partial_tag_suffix(&self.held, CLOSE);
                    let ready = self.held[..self.held.len() - keep].to_string();
                    self.emit_reasoning(&ready, &mut out);
                    self.held.drain(..self.held.len() - keep);
                    return out;
                }
                State::Answer { fresh } => {
                    if fresh {
                        if !self.drop_leading_newlines() {
                            return out;
                        }
                        self.state = State::Answer { fresh: false };
                    }
                    let text = std::mem::take(&mut self.held);
                    self.content.push_str(&text);
                    out.content.push_str(&text);
                    return out;
                }
            }
        }
    }

    /// Drop the newlines a template puts after a tag; false while nothing else has come yet.
    fn drop_leading_newlines(&mut self) -> bool {
        let trimmed = self.held.trim_start_matches('\n');
        if trimmed.is_empty() {
            self.held.clear();
            return false;
        }
        self.held = trimmed.to_string();
        true
    }

    fn emit_reasoning(&mut self, text: &str, out: &mut SplitDelta) {
        self.reasoning.push_str(text);
        out.reasoning.push_str(text);
    }

    /// Nothing follows: release what was held (an unfinished tag is text), and trim the
    /// newlines that end the reasoning.
    pub fn finish(&mut self) -> SplitDelta {
        let held = std::mem::take(&mut self.held);
        let mut out = SplitDelta::default();
        match self.state {
            State::Start | State::Answer { .. } => {
                if !held.trim().is_empty() || matches!(self.state, State::Answer { fresh: false }) {
                    self.content.push_str(&held);
                    out.content = held;
                }
            }
            State::Thinking { .. } => self.emit_reasoning(&held, &mut out),
        }
        let end = self.reasoning.trim_end_matches('\n').len();
        self.reasoning.truncate(end);
        self.state = State::Answer { fresh: false };
        out
    }
}

impl Default for ReasoningSplit {
    fn default() -> Self {
        Self::new()
    }
}

/// Split a whole output at once (see [`ReasoningSplit`]): `(reasoning, answer)`.
pub fn split_reasoning(prompt: &str, output: &str) -> (String, String) {
    let mut s = ReasoningSplit::for_prompt(prompt);
    s.push(output);
    s.finish();
    (s.reasoning, s.content)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` one by one; returns (reasoning deltas joined, content deltas joined, the
    /// splitter). The joined deltas must equal the splitter's parts: nothing shown is taken back.
    fn stream(prompt: &str, pieces: &[&str]) -> (String, String, ReasoningSplit) {
        let mut s = ReasoningSplit::for_prompt(prompt);
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            let d = s.push(p);
            r.push_str(&d.reasoning);
            c.push_str(&d.content);
        }
        let d = s.finish();
        r.push_str(&d.reasoning);
        c.push_str(&d.content);
        assert_eq!(c, s.content(), "content deltas are the content");
        assert!(r.starts_with(s.reasoning()), "reasoning deltas are the reasoning (untrimmed)");
        (r, c, s)
    }

    #[test]
    fn qwen3_opens_the_thought_itself() {
        let pieces = ["<th", "ink>", "\n", "Paris is the", " capital.", "\n</", "think", ">\n\n", "Paris", "."];
        let (r, c, s) = stream("<|im_start|>assistant\n", &pieces);
        assert_eq!(s.reasoning(), "Paris is the capital.");
        assert_eq!(r.trim_end(), "Paris is the capital.");
        assert_eq!(c, "Paris.");
        assert_eq!(s.content(), "Paris.");
    }

    #[test]
    fn r1_template_opened_the_thought_in_the_prompt() {
        let prompt = "<｜User｜>Hi<｜Assistant｜><think>\n";
        let (r, c, _) = stream(prompt, &["Okay, greet", " back.\n", "</think>", "\n\nHello!"]);
        assert_eq!(r.trim_end(), "Okay, greet back.");
        assert_eq!(c, "Hello!");
        // A closed thought earlier in the prompt (history) does not count.
        assert!(!ReasoningSplit::for_prompt("<think>a</think>b<|im_start|>assistant\n").thinking());
    }

    #[test]
    fn text_without_a_thought_is_all_answer() {
        let (r, c, _) = stream("", &["  The ", "<b>answer</b>", " is 4 < 5."]);
        assert_eq!(r, "");
        assert_eq!(c, "  The <b>answer</b> is 4 < 5.");
        // An answer that merely starts like the tag.
        let (r, c, _) = stream("", &["<thi", "s is not a tag>"]);
        assert_eq!((r.as_str(), c.as_str()), ("", "<this is not a tag>"));
    }

    #[test]
    fn unfinished_thoughts_and_tags_stay_reasoning() {
        let (r, c, s) = stream("", &["<think>", "still going </thi"]);
        assert_eq!(r, "still going </thi");
        assert_eq!(c, "");
        assert!(s.content().is_empty());
        // Qwen3 with enable_thinking=False: an empty thought, then the answer.
        let (r, c, _) = stream("", &["<think>\n\n</think>\n\n", "Hi"]);
        assert_eq!((r.as_str(), c.as_str()), ("", "Hi"));
    }

    #[test]
    fn whole_text_split_matches_the_stream() {
        let out = "<think>\nstep 1\nstep 2\n</think>\n\nDone";
        assert_eq!(split_reasoning("", out), ("step 1\nstep 2".into(), "Done".into()));
        for cut in 0..=out.len() {
            if !out.is_char_boundary(cut) {
                continue;
            }
            let (_, c, s) = stream("", &[&out[..cut], &out[cut..]]);
            assert_eq!((s.reasoning(), c.as_str()), ("step 1\nstep 2", "Done"), "cut at {cut}");
        }
    }
}
