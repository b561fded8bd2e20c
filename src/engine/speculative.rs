//! Speculative decoding: a small draft model (a distilled student) proposes `k` tokens one at a
//! time; the target model (its teacher) scores all of them in one batched forward pass; the
//! guesses it agrees with are kept, plus one token of its own after them. The output follows
//! the target alone; the draft only decides how many target passes it takes (one per round
//! instead of one per token).
//!
//! - Greedy (`temperature` 0): a guess is kept while it is the target's arg-max after the same
//!   prefix; the target's arg-max after the kept guesses follows. The tokens are the target's
//!   greedy decoding.
//! - Sampling (Leviathan et al., 2023; Chen et al., 2023): the draft draws guess `g` from its
//!   distribution q (after the sampler's temperature, truncation and penalty); the target keeps
//!   it with probability min(1, p(g)/q(g)), p its own distribution at that place, and else
//!   draws from the residual max(0, p − q) normalised and ends the round; after k kept guesses
//!   it draws one more from its p. Each token is then distributed exactly as the target alone
//!   would sample it ([`accept_or_resample`] is the step; its marginal is checked in the tests).
//!
//! Both sessions keep their caches across rounds: the target rolls back the rejected tail of
//! its verification pass; the draft rolls back its rejected guesses and feeds what it has not
//! seen yet (the target's own token, or its last guess when all were kept) next round.

use web_time::Instant;

use super::generate::{percentile, Flow, GenerationStats, StopReason};
use super::session::Session;
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::argmax::argmax_forward;
use crate::rng::SplitMix64;
use crate::sampling::{Sampler, SamplerConfig, TokenDistribution};

const OP: &str = "generate_speculative";

/// Limits of one speculative generation.
#[derive(Clone, Debug)]
pub struct SpeculativeOptions {
    /// Tokens the draft proposes per round (k ≥ 1; below the target's prefill chunk).
    pub draft_tokens: usize,
    pub max_tokens: usize,
    /// Token ids that end generation (EOS, end of turn); not part of the output.
    pub stop_tokens: Vec<u32>,
    /// How the target picks (and the draft guesses): greedy, or sampling with its seed.
    pub sampling: SamplerConfig,
}

/// What a speculative generation did: the figures of any generation (tokens, timing, GPU
/// counters, why it stopped; latencies are between tokens reaching the caller, so a round's
/// kept guesses arrive together), and how the draft fared.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SpeculativeStats {
    #[serde(flatten)]
    pub generation: GenerationStats,
    /// Verification passes of the target after the prompt's (one per round).
    pub target_passes: usize,
    /// Tokens the draft proposed, and how many of them the target kept.
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
    /// `accepted / drafted` (0 when nothing was drafted).
    pub acceptance_rate: f64,
    /// Tokens the target picked (its prompt pass's and each round's) per target pass including
    /// the prompt's: 1 for plain decoding, up to k + 1.
    pub tokens_per_target_pass: f64,
    pub elapsed_s: f64,
}

/// One sampled guess's verification: keep `guess` (drawn from `q`) when `u < p(guess) /
/// q(guess)`, else draw from the residual `max(0, p − q)` at `v` (from `p` itself when the two
/// are equal up to rounding). `u`, `v` uniform in [0, 1). Returns (kept, token).
pub fn accept_or_resample(p: &TokenDistribution, q: &TokenDistribution, guess: u32, u: f64, v: f64) -> (bool, u32) {
    let (pg, qg) = (p.prob(guess), q.prob(guess));
    if qg > 0.0 && u * qg < pg {
        return (true, guess);
    }
    let q_of: std::collections::HashMap<u32, f64> = q.tokens().iter().copied().zip(q.probs()).collect();
    let (tokens, weights): (Vec<u32>, Vec<f64>) = p
        .tokens()
        .iter()
        .zip(p.probs())
        .map(|(&t, pt)| (t, pt - q_of.get(&t).copied().unwrap_or(0.0)))
        .filter(|&(_, w)| w > 0.0)
        .unzip();
    match TokenDistribution::from_weights(tokens, weights) {
        Some(residual) if residual.total() > 1e-12 => (false, residual.draw_with(v)),
        _ => (false, p.draw_with(v)),
    }
}

/// How tokens are picked: greedy (arg-max rows) or sampled (a sampler per target row for
/// their distributions, one for the draft's, and the random stream of every draw).
enum Picker {
    Greedy { picks: Tensor },
    Sample { target: Vec<Sampler>, draft: Box<Sampler>, rng: SplitMix64 },
}

impl Picker {
    fn new(ctx: &GpuContext, cfg: &SamplerConfig, k: usize) -> Result<Picker> {
        if cfg.is_greedy() {
            return Ok(Picker::Greedy { picks: Tensor::empty(ctx, &[k + 1], DType::U32)? });
        }
        Ok(Picker::Sample {
            target: (0..=k).map(|_| Sampler::new(cfg.clone())).collect::<Result<_>>()?,
            draft: Box::new(Sampler::new(cfg.clone())?),
            rng: SplitMix64::new(cfg.seed),
        })
    }

    /// The target's token after `history` from its `logits` `[1, vocab]`.
    async fn first(&mut self, ctx: &GpuContext, logits: &Tensor, history: &[u32]) -> Result<u32> {
        match self {
            Picker::Greedy { picks } => Ok(argmax_rows(ctx, logits, &picks.view(0, &[1])?).await?[0]),
            Picker::Sample { target, rng, .. } => {
                let d = target[0].distribution(Batch::new(ctx), logits, history).await?;
                Ok(d.draw_with(rng.next_f64()))
            }
        }
    }

    /// The draft's guess after `history` (and its distribution when sampling).
    async fn guess(
        &mut self,
        ctx: &GpuContext,
        logits: &Tensor,
        history: &[u32],
    ) -> Result<(u32, Option<TokenDistribution>)> {
        match self {
            Picker::Greedy { picks } => Ok((argmax_rows(ctx, logits, &picks.view(0, &[1])?).await?[0], None)),
            Picker::Sample { draft, rng, .. } => {
                let q = draft.distribution(Batch::new(ctx), logits, history).await?;
                Ok((q.draw_with(rng.next_f64()), Some(q)))
            }
        }
    }

    /// The target's verdict on `guesses` from its `logits` `[guesses + 1, vocab]` (row i after
    /// `sequence` and the first i guesses): how many it keeps, and its own token after them.
    async fn verify(
        &mut self,
        ctx: &GpuContext,
        logits: &Tensor,
        sequence: &[u32],
        guesses: &[u32],
        drafted: &[TokenDistribution],
    ) -> Result<(usize, u32)> {
        let rows = guesses.len() + 1;
        match self {
            Picker::Greedy { picks } => {
                let best = argmax_rows(ctx, logits, &picks.view(0, &[rows])?).await?;
                let kept = guesses.iter().zip(&best).take_while(|(g, t)| g == t).count();
                Ok((kept, best[kept]))
            }
            Picker::Sample { target, rng, .. } => {
                let histories: Vec<Vec<u32>> = (0..rows).map(|i| [sequence, &guesses[..i]].concat()).collect();
                let recent: Vec<&[u32]> = histories.iter().map(|h| &h[..]).collect();
                let p = Sampler::distributions(&mut target[..rows], Batch::new(ctx), logits, &recent).await?;
                for (i, (&g, q)) in guesses.iter().zip(drafted).enumerate() {
                    let (u, v) = (rng.next_f64(), rng.next_f64());
                    let (kept, token) = accept_or_resample(&p[i], q, g, u, v);
                    if !kept {
                        return Ok((i, token));
                    }
                }
                Ok((guesses.len(), p[guesses.len()].draw_with(rng.next_f64())))
            }
        }
    }
}

/// Generate with `target` after `prompt`, drafting with `draft` (the same vocabulary), picking
/// as `opts.sampling` says. `on_token(id)` sees each generated token in order, as soon as the
/// target has confirmed it. Afterwards both sessions hold a prefix of the prompt and the
/// generated tokens (the target all but at most the last; nothing rejected), which a next
/// turn's prompt reuses.
pub async fn generate_speculative(
    ctx: &GpuContext,
    target: &mut Session<'_>,
    draft: &mut Session<'_>,
    prompt: &[u32],
    opts: &SpeculativeOptions,
    on_token: &mut dyn FnMut(u32) -> Flow,
) -> Result<SpeculativeStats> {
    let (tv, dv) = (target.model().config.vocab_size, draft.model().config.vocab_size);
    if tv != dv {
        return Err(PupilError::arg(
            OP,
            format!(
                "the draft's vocabulary ({dv} tokens) is not the target's ({tv}): speculation needs one vocabulary"
            ),
        ));
    }
    let k = opts.draft_tokens;
    if k == 0 || k >= target.model().chunk {
        return Err(PupilError::arg(
            OP,
            format!("1..{} draft tokens per round (the target's prefill chunk), got {k}", target.model().chunk),
        ));
    }
    opts.sampling.validate()?;
    ctx.memory.reset_peak();
    let start = Instant::now();
    let reused = target.set_prompt(ctx, prompt)?;
    draft.set_prompt(ctx, prompt)?;
    let mut picker = Picker::new(ctx, &opts.sampling, k)?;
    // The sequence so far: the prompt and every token generated (the last not yet run by the
    // target; the target holds all but it).
    let mut sequence = prompt.to_vec();
    let mut next = picker.first(ctx, &target.logits()?, &sequence).await?;
    let first_token_at = start.elapsed().as_secs_f64();
    let decode_from = ctx.stats();
    let (mut generated, mut passes, mut drafted, mut accepted, mut picked) = (0usize, 0usize, 0usize, 0usize, 1usize);
    let (mut latencies, mut last) = (Vec::new(), Instant::now());
    // Emit the target's token `id`: Some(reason) when generation ends with it.
    let mut emit = |id: u32, generated: &mut usize, sequence: &mut Vec<u32>| -> Option<StopReason> {
        if opts.stop_tokens.contains(&id) {
            return Some(StopReason::StopToken);
        }
        if *generated >= opts.max_tokens {
            return Some(StopReason::Length);
        }
        if *generated > 0 {
            latencies.push(last.elapsed().as_secs_f64() * 1e3);
        }
        last = Instant::now();
        *generated += 1;
        sequence.push(id);
        if on_token(id) == Flow::Stop {
            return Some(StopReason::Caller);
        }
        if *generated >= opts.max_tokens {
            return Some(StopReason::Length);
        }
        None
    };
    let mut stop = emit(next, &mut generated, &mut sequence);
    while stop.is_none() {
        // Room for the round: the target runs `next` and the guesses, the draft what it has not
        // run yet (ending with `next`) and all guesses but the last; a round gives at most
        // `guesses + 1` tokens, so none are drafted past the limit.
        if target.remaining() == 0 {
            stop = Some(StopReason::Context);
            break;
        }
        let unseen = sequence.len() - draft.len();
        let draft_room = draft.remaining().checked_sub(unseen).map_or(0, |r| r.saturating_add(1));
        let want = k.min(opts.max_tokens - generated - 1).min(target.remaining() - 1).min(draft_room);
        if want > 0 {
            draft.feed(ctx, &sequence[draft.len()..])?;
        }
        let (mut guesses, mut dists) = (Vec::with_capacity(want), Vec::with_capacity(want));
        while guesses.len() < want {
            let history = [&sequence[..], &guesses[..]].concat();
            let (g, q) = picker.guess(ctx, &draft.logits()?, &history).await?;
            guesses.push(g);
            dists.extend(q);
            // A drafted stop token ends the guesses (the target checks it like any other).
            if opts.stop_tokens.contains(&g) || guesses.len() == want {
                break;
            }
            draft.feed(ctx, &[g])?;
        }
        // One target pass over `next` and the guesses: its verdict on them.
        let base = target.len();
        let verify = [&[next][..], &guesses[..]].concat();
        let logits = target.feed_scored(ctx, &verify)?;
        let (kept, own) = picker.verify(ctx, &logits, &sequence, &guesses, &dists).await?;
        passes += 1;
        drafted += guesses.len();
        accepted += kept;
        picked += kept + 1;
        // Keep `next` and the kept guesses in both caches; the target's own token follows.
        target.rollback(base + 1 + kept)?;
        draft.rollback(draft.len().min(base + 1 + kept))?;
        for &id in guesses[..kept].iter().chain([&own]) {
            stop = emit(id, &mut generated, &mut sequence);
            if stop.is_some() {
                break;
            }
        }
        next = own;
    }
    // Neither cache keeps what was not generated (rejected guesses, a stop token).
    if target.len() > sequence.len() {
        target.rollback(sequence.len())?;
    }
    if draft.len() > sequence.len() {
        draft.rollback(sequence.len())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let decode_time = (elapsed - first_token_at).max(1e-9);
    let counters = ctx.stats();
    let after_first = generated.saturating_sub(1).max(1) as f64;
    latencies.sort_by(f64::total_cmp);
    Ok(SpeculativeStats {
        generation: GenerationStats {
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            generated_tokens: generated,
            time_to_first_token_s: first_token_at,
            prefill_tokens_per_s: (prompt.len() - reused) as f64 / first_token_at.max(1e-9),
            decode_tokens_per_s: generated.saturating_sub(1) as f64 / decode_time,
            latency_p50_ms: percentile(&latencies, 0.5),
            latency_p99_ms: percentile(&latencies, 0.99),
            peak_gpu_bytes: ctx.memory.peak_bytes(),
            dispatches_per_token: (counters.dispatches - decode_from.dispatches) as f64 / after_first,
            submits_per_token: (counters.submits - decode_from.submits) as f64 / after_first,
            stop: stop.unwrap_or(StopReason::Length),
        },
        target_passes: passes,
        drafted_tokens: drafted,
        accepted_tokens: accepted,
        acceptance_rate: if drafted == 0 { 0.0 } else { accepted as f64 / drafted as f64 },
        tokens_per_target_pass: picked as f64 / (passes + 1) as f64,
        elapsed_s: elapsed,
    })
}

/// Each row's arg-max of `logits` `[rows, vocab]`, through `out` (u32, `rows` long); a row of
/// only NaN is an error.
async fn argmax_rows(ctx: &GpuContext, logits: &Tensor, out: &Tensor) -> Result<Vec<u32>> {
    let mut b = Batch::new(ctx);
    argmax_forward(&mut b, logits, out)?;
    b.submit();
    let ids = out.read_u32(ctx).await?;
    if let Some(r) = ids.iter().position(|&id| id == u32::MAX) {
        return Err(PupilError::arg(OP, format!("row {r} of the logits is all NaN")));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(pairs: &[(u32, f64)]) -> TokenDistribution {
        TokenDistribution::from_weights(pairs.iter().map(|p| p.0).collect(), pairs.iter().map(|p| p.1).collect())
            .unwrap()
    }

    /// The marginal of one verified guess is p: Σ_g q(g)·[P(keep g)·1{t = g} + P(reject g)·R_g(t)],
    /// with P(keep) and the resampled token's law R_g measured over fine grids of u and v, for
    /// a q that puts mass where p has none, misses a token p has, and for q = p (always kept).
    #[test]
    fn accept_or_resample_leaves_the_target_distribution() {
        let p = dist(&[(3, 0.5), (7, 0.3), (9, 0.2)]);
        for q in [dist(&[(3, 0.2), (7, 0.5), (11, 0.3)]), dist(&[(9, 0.6), (3, 0.4)]), p.clone()] {
            let grid = 4000;
            let at = |i: usize| (i as f64 + 0.5) / grid as f64;
            let mut marginal = std::collections::BTreeMap::<u32, f64>::new();
            for (&g, qg) in q.tokens().iter().zip(q.probs()) {
                let keep =
                    (0..grid).filter(|&i| accept_or_resample(&p, &q, g, at(i), 0.5).0).count() as f64 / grid as f64;
                *marginal.entry(g).or_default() += qg * keep;
                if keep < 1.0 {
                    for i in 0..grid {
                        let (kept, t) = accept_or_resample(&p, &q, g, 1.0 - 1e-12, at(i));
                        assert!(!kept || p.prob(g) >= q.prob(g));
                        *marginal.entry(t).or_default() += qg * (1.0 - keep) / grid as f64;
                    }
                }
            }
            for (t, m) in &marginal {
                assert!((m - p.prob(*t)).abs() < 1e-3, "token {t}: {m} vs p {}", p.prob(*t));
            }
            assert!(p.tokens().iter().all(|t| marginal.contains_key(t)));
        }
    }
}
