//! The generation loop: prompt → cache (reusing what a session already holds) → pick a token
//! → decode it → … until a stop token, the token limit or the caller says stop, with timing
//! and GPU counters for the report a serious runtime prints.

use web_time::Instant;

use super::session::Session;
use crate::error::Result;
use crate::gpu::{Batch, GpuContext, Tensor};
use crate::sampling::TokenLogprobs;

/// Chooses the next token from a logits row on the GPU.
#[allow(async_fn_in_trait)]
pub trait TokenPicker {
    /// `logits`: `[1, vocab]` on the GPU; `history`: every token of the sequence so far.
    async fn pick(&mut self, ctx: &GpuContext, logits: &Tensor, history: &[u32]) -> Result<u32>;

    /// The last picked token's logprobs, when the picker reports them.
    fn take_logprobs(&mut self) -> Option<TokenLogprobs> {
        None
    }
}

/// Seeded sampling (temperature, top-k/top-p/min-p, repetition penalty) on the GPU; greedy is
/// `SamplerConfig::greedy()` (one candidate read back, NaN logits an error).
impl TokenPicker for crate::sampling::Sampler {
    async fn pick(&mut self, ctx: &GpuContext, logits: &Tensor, history: &[u32]) -> Result<u32> {
        self.sample(Batch::new(ctx), logits, history).await
    }

    fn take_logprobs(&mut self) -> Option<TokenLogprobs> {
        crate::sampling::Sampler::take_logprobs(self)
    }
}

/// What the caller's per-token callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum StopReason {
    /// A stop token was picked (it is not part of the output).
    StopToken,
    /// `max_tokens` were generated.
    Length,
    /// The callback asked to stop (e.g. a stop string matched).
    Caller,
    /// The context is full.
    Context,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the session's cache (not recomputed).
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    /// From the call to the first generated token (prefill + first pick).
    pub time_to_first_token_s: f64,
    /// Prompt tokens computed per second (prefill).
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub peak_gpu_bytes: u64,
    pub dispatches_per_token: f64,
    pub submits_per_token: f64,
    pub stop: StopReason,
}

/// Limits of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Token ids that end generation (EOS, end of turn).
    pub stop_tokens: Vec<u32>,
}

/// The `p` quantile (nearest rank) of ascending `sorted`; 0 when empty.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Generate after `prompt` (the whole conversation so far: the session reuses whatever prefix
/// it already holds). `on_token(id)` sees each generated token as soon as it is picked.
/// Afterwards the session holds the prompt and every generated token but the last one picked
/// (never run through the model): the next turn's prompt, which repeats them, reuses that
/// prefix and computes only what is new.
pub async fn generate<P: TokenPicker>(
    ctx: &GpuContext,
    session: &mut Session<'_>,
    prompt: &[u32],
    opts: &GenerateOptions,
    picker: &mut P,
    on_token: &mut dyn FnMut(u32) -> Flow,
) -> Result<GenerationStats> {
    ctx.memory.reset_peak();
    let start = Instant::now();
    let reused = session.set_prompt(ctx, prompt)?;
    let computed = prompt.len() - reused;
    let mut history: Vec<u32> = session.tokens().to_vec();
    let mut latencies = Vec::new();
    let mut generated = 0usize;
    let mut first_token_at = None;
    let mut decode_start = (start, ctx.stats());
    let stop;
    let mut last = Instant::now();
    loop {
        if generated >= opts.max_tokens {
            stop = StopReason::Length;
            break;
        }
        let id = picker.pick(ctx, &session.logits()?, &history).await?;
        let now = Instant::now();
        if first_token_at.is_none() {
            first_token_at = Some(now.duration_since(start).as_secs_f64());
            decode_start = (now, ctx.stats());
        } else {
            latencies.push(now.duration_since(last).as_secs_f64() * 1e3);
        }
        last = now;
        if opts.stop_tokens.contains(&id) {
            stop = StopReason::StopToken;
            break;
        }
        generated += 1;
        history.push(id);
        if on_token(id) == Flow::Stop {
            stop = StopReason::Caller;
            break;
        }
        if session.remaining() == 0 {
            stop = StopReason::Context;
            break;
        }
        session.feed(ctx, &[id])?;
    }
    let end = Instant::now();
    let counters = ctx.stats();
    let ttft = first_token_at.unwrap_or_else(|| end.duration_since(start).as_secs_f64());
    let decode_time = end.duration_since(decode_start.0).as_secs_f64();
    let steps = latencies.len().max(1) as f64;
    latencies.sort_by(f64::total_cmp);
    Ok(GenerationStats {
        prompt_tokens: prompt.len(),
        reused_tokens: reused,
        generated_tokens: generated,
        time_to_first_token_s: ttft,
        prefill_tokens_per_s: computed as f64 / ttft.max(1e-9),
        decode_tokens_per_s: if latencies.is_empty() { 0.0 } else { latencies.len() as f64 / decode_time.max(1e-9) },
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        peak_gpu_bytes: ctx.memory.peak_bytes(),
        dispatches_per_token: (counters.dispatches - decode_start.1.dispatches) as f64 / steps,
        submits_per_token: (counters.submits - decode_start.1.submits) as f64 / steps,
        stop,
    })
}
