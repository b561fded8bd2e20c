//! Token sampling for generation: repetition penalty, temperature, top-k, top-p, min-p, and a
//! seeded draw, deterministic for a seed and identical natively and in the browser.
//!
//! # Pipeline (one submit, normally one small readback)
//!
//! 1. GPU, [`ops::sampling::sample_logits_forward`](crate::ops::sampling::sample_logits_forward):
//!    the repetition penalty over the distinct ids among the last `repetition_last_n` tokens
//!    (llama.cpp / transformers: a positive logit is divided by the penalty, any other
//!    multiplied), then the temperature, into an f32 row `y`. Skipped when it would be the
//!    identity (T = 1 or greedy, no penalty). Each value is one correctly rounded f32
//!    multiplication by a host-computed factor, so `y` has the same bits on every device.
//! 2. GPU, [`ops::sampling::sample_candidates_forward`](crate::ops::sampling::sample_candidates_forward):
//!    the K largest values of `y` in order (K = `top_k` when set and ≤ 1024, 1 for greedy,
//!    else [`DEFAULT_CANDIDATES`]) with the row's max, log-sum-exp and NaN/+inf/finite counts.
//!    The host reads back these `2K + 4` words, not the vocabulary.
//! 3. Host, in f64 through `libm` (so native and wasm agree bit for bit): the kept set, in
//!    transformers' order: top-k, then top-p over the top-k distribution (the smallest prefix
//!    whose probability reaches `top_p`, llama.cpp's boundary), then min-p (probability ≥
//!    `min_p` × the largest, i.e. `l ≥ l_max + ln min_p`), renormalised; then one draw
//!    `u ∈ [0, 1)` from [`SplitMix64`] walks the kept tokens' cumulative weights
//!    `exp(l − l_max)` in order (value descending, index ascending).
//!
//! # Exactness rule
//!
//! Every kept set is a prefix of the row's order (value descending, index ascending), so it
//! is decided from the K candidates alone exactly when the decision does not depend on what
//! lies beyond them:
//! - greedy; or top-k with `top_k` ≤ K (top-p and min-p are then taken inside the top-k set,
//!   whose mass is known exactly); or the candidates hold every finite value of the row;
//! - min-p excludes some candidate (every later token is excluded too);
//! - top-p without top-k: the prefix mass needs the row's total mass, `exp(lse)` from the GPU
//!   (f32). The cut is accepted only when it clears `top_p` by a relative margin of
//!   [`TOP_P_MARGIN`] (2e-4: ten times the lse error the tests allow, 2e-5, and two hundred
//!   times what they measure, ~1e-6): no candidate's
//!   cumulative mass is within the margin of `top_p`, and the cut (or a min-p cut before it)
//!   falls inside the candidates.
//!
//! Otherwise — plain temperature sampling, top-p not reached (or too close to call) inside
//! the candidates, `top_k` > 1024 — the sampler reads the whole processed row and decides on
//! the host. Both routes build the same list of (token, weight) from the same f32 values with
//! the same code, so the distribution, and the token drawn for a given seed, is the same
//! whichever route is taken (the tests check it bit for bit), and equals the reference's
//! (`reference::sampling`) distribution over the processed logits. Weights are computed from
//! the kept candidates' logits, never from the GPU's lse.
//!
//! # RNG
//!
//! Each draw consumes exactly one `SplitMix64::next_f64` (greedy draws too), so the n-th
//! token of a stream uses the n-th random number whatever the configuration.

use serde::Serialize;

use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::sampling::{
    candidates_row_words, sample_candidates_forward, sample_logits_forward, MAX_CANDIDATES, MAX_WIDTH,
};
use crate::rng::SplitMix64;

/// Candidates read back when `top_k` does not fix the count.
pub const DEFAULT_CANDIDATES: usize = 256;
/// Relative margin on the GPU-estimated total mass for top-p decisions without top-k.
pub const TOP_P_MARGIN: f64 = 2e-4;
/// The most alternatives a drawn token's [`TokenLogprobs`] lists (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

const OP: &str = "sample";

/// How a token is chosen. The defaults change nothing (temperature 1, no truncation, no
/// penalty) except `repetition_last_n` = 64, used once a penalty is set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SamplerConfig {
    /// ≥ 0; 0 is greedy (arg-max, lowest index among equal logits).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus: the smallest set of most likely tokens whose probability reaches `top_p`,
    /// in (0, 1]; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one, in [0, 1]; 0 = off.
    pub min_p: f32,
    /// > 0; 1 = off. Applied once to each distinct token of the window.
    pub repetition_penalty: f32,
    /// Window: the last `repetition_last_n` tokens of `recent`; 0 = all of `recent`.
    pub repetition_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig { temperature: 0.0, ..SamplerConfig::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Does top-k, top-p or min-p cut the distribution?
    pub fn truncates(&self) -> bool {
        self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0
    }

    /// Typed errors for out-of-range values (NaN anywhere included).
    pub fn validate(&self) -> Result<()> {
        const WHAT: &str = "SamplerConfig";
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return Err(PupilError::arg(WHAT, format!("temperature must be finite and ≥ 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(PupilError::arg(WHAT, format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(PupilError::arg(WHAT, format!("min_p must be in [0, 1], got {}", self.min_p)));
        }
        if !(self.repetition_penalty > 0.0) || !self.repetition_penalty.is_finite() {
            return Err(PupilError::arg(
                WHAT,
                format!("repetition_penalty must be finite and > 0, got {}", self.repetition_penalty),
            ));
        }
        Ok(())
    }

    /// The per-row factors of `sample_logits_forward`: `[1/T, 1/(penalty·T), penalty/T, 0]`,
    /// computed in f64 and rounded once (T = 1 when greedy).
    pub fn factors(&self) -> Result<[f32; 4]> {
        let t = if self.is_greedy() { 1.0 } else { self.temperature as f64 };
        let pen = self.repetition_penalty as f64;
        let f = [1.0 / t, 1.0 / (pen * t), pen / t].map(|v| v as f32);
        if f.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(PupilError::arg(
                OP,
                format!("temperature {t} with penalty {pen} gives factors {f:?} outside f32's range"),
            ));
        }
        Ok([f[0], f[1], f[2], 0.0])
    }

    /// The distinct penalised ids for `recent` (sorted), checked against the vocabulary.
    pub fn penalized_ids(&self, recent: &[u32], vocab: usize) -> Result<Vec<u32>> {
        let window = if self.repetition_last_n == 0 {
            recent
        } else {
            &recent[recent.len().saturating_sub(self.repetition_last_n)..]
        };
        if let Some(&bad) = window.iter().find(|&&id| id as usize >= vocab) {
            return Err(PupilError::arg(OP, format!("recent token {bad} is outside the vocabulary of {vocab}")));
        }
        if self.repetition_penalty == 1.0 {
            return Ok(Vec::new());
        }
        let mut ids = window.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// A drawn token's log-probability and its most likely alternatives under the model's own
/// distribution: the log-softmax of the raw logits, before the penalty, the temperature and
/// any truncation (what OpenAI's and vLLM's `logprobs` report), so it does not depend on how
/// the token was sampled. From the GPU's f32 log-sum-exp of the row (error ≲ 2e-5); the drawn
/// token's logit is read exactly when it is among the `top`, else recovered from its processed
/// value by undoing the one f32 multiplication (within an f32 rounding).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens and their log-probabilities, most likely first
    /// (equal logits: the lower id first); empty when none were asked for.
    pub top: Vec<(u32, f32)>,
}

/// What the logprobs of the next draw are made of: the raw row's largest logits, its
/// log-sum-exp, and what turned raw logits into the processed ones drawn from.
#[derive(Clone, Debug)]
struct RawRow {
    top: Vec<(u32, f32)>,
    /// How many of `top` the caller asked for.
    report: usize,
    lse: f64,
    factors: [f32; 4],
    /// Sorted penalised ids.
    pen: Vec<u32>,
}

impl RawRow {
    fn logprobs(&self, token: u32, dist: &TokenDistribution) -> TokenLogprobs {
        let logit = match self.top.iter().find(|c| c.0 == token) {
            Some(c) => c.1 as f64,
            None => match dist.tokens.iter().position(|&t| t == token).and_then(|i| dist.values.get(i)) {
                // The inverse of sample_logits_forward's one multiplication for this token.
                Some(&y) => {
                    let f = if self.pen.binary_search(&token).is_err() {
                        self.factors[0]
                    } else if y > 0.0 {
                        self.factors[1]
                    } else {
                        self.factors[2]
                    };
                    y as f64 / f as f64
                }
                None => f64::NAN,
            },
        };
        let lp = |l: f64| (l - self.lse) as f32;
        TokenLogprobs {
            token,
            logprob: lp(logit),
            top: self.top.iter().take(self.report).map(|&(t, l)| (t, lp(l as f64))).collect(),
        }
    }
}

/// Which readback decided a distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SamplePath {
    /// Only the candidates (2K + 4 words).
    Candidates,
    /// The whole processed row.
    FullRow,
}

/// The distribution a token is drawn from: the kept tokens in order (probability
/// descending, index ascending) with weights `exp(l − l_max)` (f64).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenDistribution {
    tokens: Vec<u32>,
    /// The kept tokens' processed logits (empty for [`from_weights`](Self::from_weights)).
    values: Vec<f32>,
    weights: Vec<f64>,
    total: f64,
    path: SamplePath,
}

impl TokenDistribution {
    /// From kept (token, processed logit) pairs in order.
    fn new(kept: &[(u32, f32)], path: SamplePath) -> Self {
        let l0 = kept[0].1 as f64;
        let weights: Vec<f64> = kept.iter().map(|c| libm::exp(c.1 as f64 - l0)).collect();
        let total = weights.iter().sum();
        let (tokens, values) = kept.iter().copied().unzip();
        TokenDistribution { tokens, values, weights, total, path }
    }

    /// A distribution over `tokens` with unnormalised `weights` (aligned, finite, ≥ 0; the
    /// order is the draw order): e.g. speculative sampling's residual. None when empty,
    /// misaligned or out of range. Its path reads as `FullRow` (built on the host).
    pub fn from_weights(tokens: Vec<u32>, weights: Vec<f64>) -> Option<Self> {
        if tokens.is_empty() || tokens.len() != weights.len() || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return None;
        }
        let total = weights.iter().sum();
        Some(TokenDistribution { tokens, values: Vec::new(), weights, total, path: SamplePath::FullRow })
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// The sum of the weights.
    pub fn total(&self) -> f64 {
        self.total
    }
    /// Unnormalised weights, aligned with [`tokens`](Self::tokens).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    /// Probabilities, aligned with [`tokens`](Self::tokens).
    pub fn probs(&self) -> Vec<f64> {
        self.weights.iter().map(|w| w / self.total).collect()
    }
    /// Probability of `token` (0 outside the kept set).
    pub fn prob(&self, token: u32) -> f64 {
        self.tokens.iter().position(|&t| t == token).map_or(0.0, |i| self.weights[i] / self.total)
    }
    pub fn path(&self) -> SamplePath {
        self.path
    }

    /// The token at `u ∈ [0, 1)` of the cumulative distribution (in the kept order).
    pub fn draw_with(&self, u: f64) -> u32 {
        let target = u * self.total;
        let mut acc = 0.0;
        for (t, w) in self.tokens.iter().zip(&self.weights) {
            acc += w;
            if target < acc {
                return *t;
            }
        }
        *self.tokens.last().unwrap()
    }
}

/// Which route each sampled row took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SamplerStats {
    pub candidates: u64,
    pub full_row: u64,
}

/// GPU buffers reused from step to step (reallocated when a shape or the context changes).
#[derive(Default)]
struct Scratch {
    ctx: usize,
    y: Option<Tensor>,
    factors: Option<Tensor>,
    pen: Option<Tensor>,
    out: Option<Tensor>,
    raw: Option<Tensor>,
}

impl Scratch {
    fn bind(&mut self, ctx: &GpuContext) {
        let id = ctx as *const GpuContext as usize;
        if self.ctx != id {
            *self = Scratch { ctx: id, ..Scratch::default() };
        }
    }
}

fn reuse(slot: &mut Option<Tensor>, ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<Tensor> {
    if let Some(t) = slot {
        if t.shape() == shape && t.dtype() == dtype {
            return Ok(t.clone());
        }
    }
    let t = Tensor::empty(ctx, shape, dtype)?;
    *slot = Some(t.clone());
    Ok(t)
}

/// A seeded sampler: its configuration, its RNG state and its GPU scratch buffers.
/// Use one sampler per sequence, with one GPU context.
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    candidates: usize,
    scratch: Scratch,
    stats: SamplerStats,
    /// `Some(n)`: report each draw's logprobs with its `n` most likely alternatives.
    logprobs: Option<usize>,
    raw: Option<RawRow>,
    last_logprobs: Option<TokenLogprobs>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Result<Sampler> {
        config.validate()?;
        Ok(Sampler {
            rng: SplitMix64::new(config.seed),
            config,
            candidates: DEFAULT_CANDIDATES,
            scratch: Scratch::default(),
            stats: SamplerStats::default(),
            logprobs: None,
            raw: None,
            last_logprobs: None,
        })
    }

    /// Report every draw's [`TokenLogprobs`] with its `top` (0..=20) most likely
    /// alternatives ([`take_logprobs`](Self::take_logprobs)). It costs one more candidates
    /// pass over the raw logits and its small readback; the tokens drawn do not change.
    pub fn with_logprobs(mut self, top: usize) -> Result<Sampler> {
        if top > MAX_TOP_LOGPROBS {
            return Err(PupilError::arg(OP, format!("top_logprobs {top} over {MAX_TOP_LOGPROBS}")));
        }
        self.logprobs = Some(top);
        Ok(self)
    }

    /// The logprobs of the last token drawn (once), when [`with_logprobs`](Self::with_logprobs)
    /// asked for them.
    pub fn take_logprobs(&mut self) -> Option<TokenLogprobs> {
        self.last_logprobs.take()
    }

    /// Candidates read back when `top_k` does not fix the count (1..=1024), or 0 to always
    /// read the whole row (tests compare the two routes).
    pub fn with_candidates(mut self, k: usize) -> Result<Sampler> {
        if k > MAX_CANDIDATES {
            return Err(PupilError::arg(OP, format!("candidates {k} over {MAX_CANDIDATES}")));
        }
        self.candidates = k;
        Ok(self)
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }
    pub fn stats(&self) -> SamplerStats {
        self.stats
    }
    /// Restart the random stream.
    pub fn reseed(&mut self, seed: u64) {
        self.config.seed = seed;
        self.rng = SplitMix64::new(seed);
    }

    /// Record the sampling kernels after whatever `batch` holds (e.g. the forward pass that
    /// wrote `logits`), submit, read back, and draw one token. `logits`: one row `[vocab]` or
    /// `[1, vocab]`, f32 or f16; `recent`: the sequence's previous tokens (for the penalty).
    pub async fn sample(&mut self, batch: Batch<'_>, logits: &Tensor, recent: &[u32]) -> Result<u32> {
        let dist = self.distribution(batch, logits, recent).await?;
        Ok(self.draw(&dist))
    }

    /// As [`sample`](Self::sample), returning the distribution instead of drawing from it.
    pub async fn distribution(
        &mut self,
        batch: Batch<'_>,
        logits: &Tensor,
        recent: &[u32],
    ) -> Result<TokenDistribution> {
        let mut d = Sampler::distributions(std::slice::from_mut(self), batch, logits, &[recent]).await?;
        Ok(d.pop().unwrap())
    }

    /// Draw from `dist` with this sampler's RNG (one random number per call).
    /// With logprobs on, a distribution from [`distribution`](Self::distribution) records the
    /// drawn token's.
    pub fn draw(&mut self, dist: &TokenDistribution) -> u32 {
        let token = dist.draw_with(self.rng.next_f64());
        self.last_logprobs = self.raw.take().map(|raw| raw.logprobs(token, dist));
        token
    }

    /// Several sequences at once: row `r` of `logits` `[rows, vocab]` is sampled by
    /// `samplers[r]` with `recent[r]`; one submit and one candidates readback for all rows.
    pub async fn sample_batch(
        samplers: &mut [Sampler],
        batch: Batch<'_>,
        logits: &Tensor,
        recent: &[&[u32]],
    ) -> Result<Vec<u32>> {
        let dists = Sampler::distributions(samplers, batch, logits, recent).await?;
        Ok(samplers.iter_mut().zip(&dists).map(|(s, d)| s.draw(d)).collect())
    }

    /// The distributions of [`sample_batch`](Self::sample_batch), without drawing.
    pub async fn distributions(
        samplers: &mut [Sampler],
        mut batch: Batch<'_>,
        logits: &Tensor,
        recent: &[&[u32]],
    ) -> Result<Vec<TokenDistribution>> {
        let ctx = batch.context();
        let rows = samplers.len();
        if rows == 0 || recent.len() != rows {
            return Err(PupilError::arg(OP, format!("{rows} samplers and {} recent-token lists", recent.len())));
        }
        if !logits.dtype().is_float() {
            return Err(PupilError::dtype(OP, format!("logits must be f32 or f16, got {}", logits.dtype().name())));
        }
        let width = logits.shape().last().copied().unwrap_or(0);
        if width == 0 || logits.len() != rows * width {
            return Err(PupilError::shape(OP, format!("logits {:?} for {rows} sequence(s)", logits.shape())));
        }
        if width > MAX_WIDTH {
            return Err(PupilError::shape(OP, format!("vocabulary of {width}; at most {MAX_WIDTH}")));
        }
        struct Plan {
            factors: [f32; 4],
            pen: Vec<u32>,
            k: usize,
        }
        let mut plans = Vec::with_capacity(rows);
        for (s, r) in samplers.iter().zip(recent) {
            let cfg = &s.config;
            let k = if s.candidates == 0 {
                0
            } else if cfg.is_greedy() {
                1
            } else if !cfg.truncates() {
                0
            } else if cfg.top_k > 0 && cfg.top_k <= MAX_CANDIDATES {
                cfg.top_k
            } else {
                s.candidates
            };
            plans.push(Plan { factors: cfg.factors()?, pen: cfg.penalized_ids(r, width)?, k: k.min(width) });
        }

        // Logprobs: the raw row's largest logits and log-sum-exp, for every row (one kernel).
        let raw_k = samplers.iter().filter_map(|s| s.logprobs).map(|n| n.max(1)).max().map(|n| n.min(width));
        let scratch = &mut samplers[0].scratch;
        scratch.bind(ctx);
        let identity = plans.iter().all(|p| p.factors[0] == 1.0 && p.pen.is_empty());
        let src = if identity {
            logits.clone()
        } else {
            let y = reuse(&mut scratch.y, ctx, &[rows, width], DType::F32)?;
            let f = reuse(&mut scratch.factors, ctx, &[rows, 4], DType::F32)?;
            let flat: Vec<f32> = plans.iter().flat_map(|p| p.factors).collect();
            f.write_f32(ctx, &flat)?;
            let n_pen = plans.iter().map(|p| p.pen.len()).max().unwrap_or(0);
            let pen = if n_pen > 0 {
                let t = reuse(&mut scratch.pen, ctx, &[rows, n_pen], DType::U32)?;
                let mut ids = vec![u32::MAX; rows * n_pen];
                for (r, p) in plans.iter().enumerate() {
                    ids[r * n_pen..r * n_pen + p.pen.len()].copy_from_slice(&p.pen);
                }
                t.write_bytes(ctx, bytemuck::cast_slice(&ids))?;
                Some(t)
            } else {
                None
            };
            sample_logits_forward(&mut batch, logits, &f, pen.as_ref(), &y)?;
            y
        };
        let k = plans.iter().map(|p| p.k).max().unwrap_or(0);
        let out = if k > 0 {
            let out = reuse(&mut scratch.out, ctx, &[rows, candidates_row_words(k)], DType::U32)?;
            sample_candidates_forward(&mut batch, &src, k, &out)?;
            Some(out)
        } else {
            None
        };
        let raw_out = match raw_k {
            Some(k) => {
                let t = reuse(&mut scratch.raw, ctx, &[rows, candidates_row_words(k)], DType::U32)?;
                sample_candidates_forward(&mut batch, logits, k, &t)?;
                Some((t, k))
            }
            None => None,
        };
        batch.submit();
        if let Some((t, k)) = raw_out {
            let words = t.read_u32(ctx).await?;
            let stride = candidates_row_words(k);
            for (r, (s, plan)) in samplers.iter_mut().zip(&plans).enumerate() {
                let Some(report) = s.logprobs else { continue };
                let (top, lse) = candidates_of(&words[r * stride..(r + 1) * stride], k);
                s.raw = Some(RawRow { top, report, lse, factors: plan.factors, pen: plan.pen.clone() });
            }
        }

        let mut dists: Vec<Option<TokenDistribution>> = vec![None; rows];
        if let Some(out) = out {
            let words = out.read_u32(ctx).await?;
            let stride = candidates_row_words(k);
            for r in 0..rows {
                let row = &words[r * stride..(r + 1) * stride];
                let (bad, finite) = (row[2 * k + 2], row[2 * k + 3] as usize);
                if bad > 0 {
                    return Err(PupilError::arg(OP, format!("row {r}: {bad} NaN or +inf processed logits")));
                }
                if finite == 0 {
                    return Err(PupilError::arg(OP, format!("row {r}: no finite logit")));
                }
                if plans[r].k == 0 {
                    continue;
                }
                let (cands, lse) = candidates_of(row, k);
                let complete = finite <= cands.len();
                dists[r] = kept_len(&samplers[r].config, &cands, complete, lse)
                    .map(|n| TokenDistribution::new(&cands[..n], SamplePath::Candidates));
            }
        }
        if dists.iter().any(Option::is_none) {
            let data = src.read_f32(ctx).await?;
            for (r, d) in dists.iter_mut().enumerate() {
                if d.is_none() {
                    let sorted = sorted_row(r, &data[r * width..(r + 1) * width])?;
                    let n = kept_len(&samplers[r].config, &sorted, true, 0.0).expect("a complete row always decides");
                    *d = Some(TokenDistribution::new(&sorted[..n], SamplePath::FullRow));
                }
            }
        }
        let dists: Vec<TokenDistribution> = dists.into_iter().map(Option::unwrap).collect();
        for (s, d) in samplers.iter_mut().zip(&dists) {
            match d.path {
                SamplePath::Candidates => s.stats.candidates += 1,
                SamplePath::FullRow => s.stats.full_row += 1,
            }
        }
        Ok(dists)
    }
}

/// One row of `sample_candidates_forward`'s output: its (index, value) candidates in order,
/// without the unfilled slots, and the row's log-sum-exp.
fn candidates_of(row: &[u32], k: usize) -> (Vec<(u32, f32)>, f64) {
    let cands = (0..k)
        .map(|j| (row[j], f32::from_bits(row[k + j])))
        .filter(|c| c.0 != u32::MAX && c.1 > f32::NEG_INFINITY)
        .collect();
    (cands, f32::from_bits(row[2 * k + 1]) as f64)
}

/// The finite values of a row as (index, value), value descending then index ascending;
/// NaN or +inf is an error, as is a row without a finite value.
fn sorted_row(r: usize, row: &[f32]) -> Result<Vec<(u32, f32)>> {
    let mut v = Vec::with_capacity(row.len());
    for (i, &x) in row.iter().enumerate() {
        if x.is_nan() || x == f32::INFINITY {
            return Err(PupilError::arg(OP, format!("row {r}: NaN or +inf processed logit at {i}")));
        }
        if x > f32::NEG_INFINITY {
            v.push((i as u32, x));
        }
    }
    if v.is_empty() {
        return Err(PupilError::arg(OP, format!("row {r}: no finite logit")));
    }
    v.sort_unstable_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    Ok(v)
}

/// How many of `sorted` (a prefix of the row's finite values in order, non-empty) the
/// configuration keeps, or `None` when that depends on values beyond the prefix (see the
/// module's exactness rule). `complete`: the prefix is the whole row. `lse`: the row's
/// log-sum-exp, used only for top-p without top-k on an incomplete prefix.
pub fn kept_len(cfg: &SamplerConfig, sorted: &[(u32, f32)], complete: bool, lse: f64) -> Option<usize> {
    let n = sorted.len();
    if cfg.is_greedy() {
        return Some(1);
    }
    let l0 = sorted[0].1 as f64;
    let at_most = |limit: Option<usize>, m: usize| Some(limit.map_or(m, |l| l.min(m)));
    // Prefix lengths known to bound the kept set: the end of a complete row, top-k, min-p.
    let mut limit = if complete { Some(n) } else { None };
    let top_k_known = cfg.top_k > 0 && (cfg.top_k <= n || complete);
    if top_k_known {
        limit = at_most(limit, cfg.top_k);
    }
    if cfg.min_p > 0.0 {
        let floor = libm::log(cfg.min_p as f64);
        let m = sorted.iter().take_while(|c| c.1 as f64 - l0 >= floor).count();
        if m < n || complete {
            limit = at_most(limit, m);
        }
    }
    if cfg.top_p >= 1.0 {
        return limit;
    }
    let top_p = cfg.top_p as f64;
    let w: Vec<f64> = sorted.iter().map(|c| libm::exp(c.1 as f64 - l0)).collect();
    if top_k_known || (cfg.top_k == 0 && complete) {
        // The mass of the top-k set (or the whole row) is known exactly.
        let end = if cfg.top_k > 0 { cfg.top_k.min(n) } else { n };
        let total: f64 = w[..end].iter().sum();
        let mut cum = 0.0;
        let mut n_p = end;
        for (j, wj) in w[..end].iter().enumerate() {
            cum += wj;
            if cum / total >= top_p {
                n_p = j + 1;
                break;
            }
        }
        return at_most(limit, n_p);
    }
    if cfg.top_k > 0 {
        // top-k reaches past the candidates: the mass top-p is relative to is unknown.
        return None;
    }
    // Top-p over the whole row, whose mass exp(lse) comes from the GPU: decide with a margin.
    let total = libm::exp(lse - l0);
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let bound = limit.unwrap_or(n).min(n);
    let mut cum = 0.0;
    for (j, wj) in w[..bound].iter().enumerate() {
        cum += wj;
        let c = cum / total;
        if c * (1.0 + TOP_P_MARGIN) < top_p {
            continue;
        }
        if c * (1.0 - TOP_P_MARGIN) >= top_p {
            return at_most(limit, j + 1);
        }
        return None;
    }
    // The nucleus ends past `bound`: a known limit (min-p) decides, else the row must.
    limit
}

/// The fixed sampling stream that checks native and browser runs agree: seven
/// configurations (greedy with penalty, temperature, top-k, top-p, min-p, combined, wide
/// top-p), 24 steps each over a vocabulary of 3000 pseudo-random logits (SplitMix64 from
/// fixed seeds, some rounded to 1/32 to make ties, some masked to -inf), uploaded as f32 and
/// sampled with the GPU path, each token fed back as recent history. Returns
/// `{ vocab, steps, streams: [{ name, config, tokens, candidates, full_row }] }`.
pub async fn determinism_stream(ctx: &GpuContext) -> Result<serde_json::Value> {
    const VOCAB: usize = 3000;
    const STEPS: usize = 24;
    let base = SamplerConfig::default();
    let configs = [
        (
            "greedy+penalty",
            SamplerConfig { temperature: 0.0, repetition_penalty: 1.3, repetition_last_n: 16, ..base.clone() },
        ),
        ("temperature", SamplerConfig { temperature: 0.8, seed: 2, ..base.clone() }),
        ("top_k", SamplerConfig { temperature: 0.9, top_k: 40, seed: 3, ..base.clone() }),
        ("top_p", SamplerConfig { top_p: 0.9, seed: 4, ..base.clone() }),
        ("min_p", SamplerConfig { temperature: 1.2, min_p: 0.05, seed: 5, ..base.clone() }),
        (
            "combined",
            SamplerConfig {
                temperature: 0.7,
                top_k: 64,
                top_p: 0.95,
                min_p: 0.02,
                repetition_penalty: 1.1,
                repetition_last_n: 32,
                seed: 6,
            },
        ),
        ("top_p_wide", SamplerConfig { temperature: 1.5, top_p: 0.6, seed: 7, ..base.clone() }),
    ];
    let logits = Tensor::empty(ctx, &[VOCAB], DType::F32)?;
    let mut streams = Vec::new();
    for (c, (name, cfg)) in configs.iter().enumerate() {
        let mut sampler = Sampler::new(cfg.clone())?;
        let mut tokens: Vec<u32> = Vec::new();
        for step in 0..STEPS {
            logits.write_f32(ctx, &stream_logits(c, step, VOCAB))?;
            let t = sampler.sample(Batch::new(ctx), &logits, &tokens).await?;
            tokens.push(t);
        }
        let st = sampler.stats();
        streams.push(serde_json::json!({
            "name": name, "config": cfg, "tokens": tokens,
            "candidates": st.candidates, "full_row": st.full_row,
        }));
    }
    Ok(serde_json::json!({ "vocab": VOCAB, "steps": STEPS, "streams": streams }))
}

/// The logits of one step of [`determinism_stream`].
fn stream_logits(config: usize, step: usize, vocab: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(0x5A3B_0000_0000 ^ ((config as u64) << 20) ^ step as u64);
    let amp = [2.0f32, 8.0, 16.0, 24.0][step % 4];
    let mut v: Vec<f32> = (0..vocab).map(|_| amp * rng.uniform(-1.0, 1.0)).collect();
    if step % 2 == 1 {
        v.iter_mut().for_each(|x| *x = (*x * 32.0).round() / 32.0);
    }
    if step % 3 == 2 {
        for _ in 0..vocab / 10 {
            v[rng.below(vocab as u32) as usize] = f32::NEG_INFINITY;
        }
    }
    v
}
