//! Checks of token sampling: `ops::sampling` against `reference::sampling` and
//! `reference::topk`; the [`Sampler`]'s distributions against `reference::sampling` (both
//! routes, bit for bit against each other); χ² goodness-of-fit of its draws, with negative
//! controls; greedy against `ops::argmax`; typed errors for invalid configurations and logits.
//!
//! χ² test: 20 000 draws (fixed seeds, so every run gives the same counts) from a 200-token
//! row; tokens expected at least 5 times are their own bins, the rest are pooled; any draw of
//! a token the reference gives probability 0 fails outright. The statistic is compared with
//! the χ² quantile at significance α = 0.001 (Wilson–Hilferty approximation, within 1% of
//! the exact quantile for df ≥ 3). A negative control must be rejected by the same test.

use super::argmax::doctored_rows;
use super::harness::{canary_intact, compare_within, exact, inputs, poisoned, round_to, CaseReport, Tolerance};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::argmax::argmax_forward;
use crate::ops::sampling::{candidates_row_words, sample_candidates_forward, sample_logits_forward};
use crate::reference;
use crate::reference::sampling::{distribution, process_logits, row_stats};
use crate::rng::SplitMix64;
use crate::sampling::{SamplePath, Sampler, SamplerConfig, TokenDistribution, DEFAULT_CANDIDATES};

const OP: &str = "sampling";
/// Bound on the candidates kernel's log-sum-exp error (absolute).
const LSE_TOLERANCE: f64 = 2e-5;
/// Draws per χ² test.
pub const CHI2_DRAWS: u64 = 20_000;
/// Significance level of the χ² tests.
pub const CHI2_ALPHA: f64 = 0.001;
/// Standard normal quantile for 1 − α.
const Z_ALPHA: f64 = 3.090_232_306_167_813;

/// A χ² goodness-of-fit result.
#[derive(Clone, Debug)]
pub struct Chi2 {
    pub statistic: f64,
    pub df: usize,
    /// The χ² quantile at 1 − [`CHI2_ALPHA`] for `df`.
    pub critical: f64,
    /// Draws of tokens whose expected probability is 0.
    pub outside: u64,
}

impl Chi2 {
    pub fn accepts(&self) -> bool {
        self.outside == 0 && self.statistic <= self.critical
    }
}

impl std::fmt::Display for Chi2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "X2={:.1} df={} crit={:.1} (alpha={}) outside={}",
            self.statistic, self.df, self.critical, CHI2_ALPHA, self.outside
        )
    }
}

/// χ² test of `counts` (per token) against probabilities `probs`.
pub fn chi_square(counts: &[u64], probs: &[f64]) -> Chi2 {
    let n: u64 = counts.iter().sum();
    let mut bins: Vec<(f64, f64)> = Vec::new();
    let (mut pool_e, mut pool_o) = (0.0, 0.0);
    let mut outside = 0;
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if p <= 0.0 {
            outside += c;
        } else if e >= 5.0 {
            bins.push((e, c as f64));
        } else {
            pool_e += e;
            pool_o += c as f64;
        }
    }
    if pool_e > 0.0 {
        if pool_e >= 5.0 || bins.is_empty() {
            bins.push((pool_e, pool_o));
        } else {
            // Too small to stand alone: merge into the smallest bin.
            let i = (0..bins.len()).min_by(|&a, &b| bins[a].0.total_cmp(&bins[b].0)).unwrap();
            bins[i].0 += pool_e;
            bins[i].1 += pool_o;
        }
    }
    let statistic = bins.iter().map(|(e, o)| (o - e) * (o - e) / e).sum();
    let df = bins.len().saturating_sub(1);
    let critical = if df == 0 {
        0.0
    } else {
        let d = df as f64;
        let h = 2.0 / (9.0 * d);
        d * (1.0 - h + Z_ALPHA * h.sqrt()).powi(3)
    };
    Chi2 { statistic, df, critical, outside }
}

/// `draws` tokens from `dist` with `sampler`'s RNG, counted per token of a `vocab` row.
pub fn draw_counts(sampler: &mut Sampler, dist: &TokenDistribution, vocab: usize, draws: u64) -> Vec<u64> {
    let mut counts = vec![0u64; vocab];
    for _ in 0..draws {
        counts[sampler.draw(dist) as usize] += 1;
    }
    counts
}

/// A distribution as a dense probability row.
pub fn dense(dist: &TokenDistribution, vocab: usize) -> Vec<f64> {
    let mut p = vec![0.0; vocab];
    for (t, q) in dist.tokens().iter().zip(dist.probs()) {
        p[*t as usize] = q;
    }
    p
}

fn verdict(
    ctx: &GpuContext,
    case: String,
    dt: DType,
    passed: bool,
    detail: String,
    value: f64,
    bound: f64,
) -> CaseReport {
    CaseReport {
        op: OP,
        case,
        dtype: dt,
        subgroups: ctx.caps.subgroups,
        rel_err: value,
        max_abs_err: value,
        max_abs_ref: bound,
        tolerance: Tolerance { rel: bound, max_abs_frac: 0.0 },
        canary_ok: true,
        passed,
        detail: if passed { String::new() } else { detail },
    }
}

/// Same support and max |p − q| ≤ `tol`.
fn compare_dists(p: &[f64], q: &[f64], tol: f64) -> (bool, f64, String) {
    let support = p.iter().zip(q).filter(|(a, b)| (**a > 0.0) != (**b > 0.0)).count();
    let max = p.iter().zip(q).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let ok = support == 0 && max <= tol;
    (ok, max, format!("{support} tokens in one support only, max |dp| {max:.2e} (bound {tol:.0e})"))
}

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut out = Vec::new();
    logits_cases(ctx, dt, &mut out).await?;
    candidates_cases(ctx, dt, &mut out).await?;
    sampler_cases(ctx, dt, &mut out).await?;
    greedy_and_batch_cases(ctx, dt, &mut out).await?;
    chi2_cases(ctx, dt, &mut out).await?;
    error_cases(ctx, dt, &mut out).await?;
    Ok(out)
}

/// Penalty + temperature kernel: values against the f64 reference, and bits against one f32
/// multiplication by the right factor (penalised ids only).
async fn logits_cases(ctx: &GpuContext, dt: DType, out: &mut Vec<CaseReport>) -> Result<()> {
    let mut rng = SplitMix64::new(0x5EED_0011);
    let cases: &[(usize, usize, usize, f32, f32)] =
        &[(1, 7, 3, 0.7, 1.3), (2, 300, 0, 0.9, 1.0), (3, 1000, 64, 1.3, 1.5), (2, 49152, 300, 0.5, 0.8)];
    for &(rows, width, n_recent, temp, pen) in cases {
        let x = inputs(&mut rng, rows * width, -5.0, 5.0, dt);
        let cfg =
            SamplerConfig { temperature: temp, repetition_penalty: pen, repetition_last_n: 0, ..Default::default() };
        let recents: Vec<Vec<u32>> =
            (0..rows).map(|_| (0..n_recent).map(|_| rng.below(width as u32)).collect()).collect();
        let pens = recents.iter().map(|r| cfg.penalized_ids(r, width)).collect::<Result<Vec<_>>>()?;
        let n_pen = pens.iter().map(Vec::len).max().unwrap_or(0);
        let f = cfg.factors()?;
        let factors = Tensor::from_f32(ctx, &f.repeat(rows), &[rows, 4], DType::F32)?;
        let pen_t = if n_pen > 0 {
            let mut ids = vec![u32::MAX; rows * n_pen];
            for (r, p) in pens.iter().enumerate() {
                ids[r * n_pen..r * n_pen + p.len()].copy_from_slice(p);
            }
            Some(Tensor::from_u32(ctx, &ids, &[rows, n_pen])?)
        } else {
            None
        };
        let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
        let y = poisoned(ctx, &[rows, width], DType::F32)?;
        let mut b = Batch::new(ctx);
        sample_logits_forward(&mut b, &xt, &factors, pen_t.as_ref(), &y)?;
        b.submit();
        let got = y.read_f32(ctx).await?;
        let canary = canary_intact(ctx, &y).await?;
        let mut want = Vec::with_capacity(rows * width);
        let mut want_bits = Vec::with_capacity(rows * width);
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            want.extend(process_logits(row, &recents[r], &cfg));
            for (i, &v) in row.iter().enumerate() {
                let s = if pens[r].binary_search(&(i as u32)).is_ok() {
                    if v > 0.0 {
                        f[1]
                    } else {
                        f[2]
                    }
                } else {
                    f[0]
                };
                want_bits.push((v * s).to_bits());
            }
        }
        let name = format!("logits {rows}x{width} T={temp} penalty={pen} ({n_pen} ids)");
        let mut rep = compare_within(ctx, OP, name.clone(), DType::F32, &got, &want, canary, Tolerance::of(DType::F32));
        rep.dtype = dt;
        out.push(rep);
        let got_bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        out.push(exact(ctx, OP, format!("{name}: bits of x*factor"), dt, &got_bits, &want_bits, canary));
    }
    Ok(())
}

/// Rows with heavy ties (values on a 0.25 grid), so the kernel must cut ties by index.
fn tied_rows(rng: &mut SplitMix64, rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|_| match rng.below(40) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            _ => (rng.below(17) as f32 - 8.0) * 0.25,
        })
        .collect()
}

/// Rows that are mostly -inf (masked vocabularies): the k-th key is -inf, shared by many.
fn masked_rows(rng: &mut SplitMix64, rows: usize, width: usize, dt: DType) -> Vec<f32> {
    let x = inputs(rng, rows * width, -3.0, 3.0, dt);
    x.into_iter().map(|v| if rng.below(20) == 0 { v } else { f32::NEG_INFINITY }).collect()
}

/// The candidates kernel: the k best exactly as `reference::topk`, the statistics as
/// `reference::sampling::row_stats` (max and counts exact, lse within 1e-5 relative).
async fn candidates_cases(ctx: &GpuContext, dt: DType, out: &mut Vec<CaseReport>) -> Result<()> {
    let mut rng = SplitMix64::new(0x5EED_0012);
    // (rows, width, k, kind): 0 random with ties/NaN/-inf and an all-NaN row, 1 heavy ties,
    // 2 mostly -inf.
    let cases: &[(usize, usize, usize, u8)] = &[
        (1, 1, 1, 0),
        (4, 10, 10, 0),
        (4, 10, 1, 0),
        (2, 20, 32, 0),
        (3, 257, 5, 0),
        (4, 1000, 64, 0),
        (2, 3000, 256, 0),
        (1, 5000, 1024, 0),
        (3, 2000, 100, 1),
        (4, 600, 300, 1),
        (2, 1000, 64, 2),
        (2, 49152, 40, 0),
        (1, 262145, 64, 0),
    ];
    for &(rows, width, k, kind) in cases {
        let x = match kind {
            0 => doctored_rows(&mut rng, rows, width, dt),
            1 => tied_rows(&mut rng, rows, width),
            _ => masked_rows(&mut rng, rows, width, dt),
        };
        let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
        let stride = candidates_row_words(k);
        let o = poisoned(ctx, &[rows, stride], DType::U32)?;
        let mut b = Batch::new(ctx);
        sample_candidates_forward(&mut b, &xt, k, &o)?;
        b.submit();
        let words = o.read_u32(ctx).await?;
        let canary = canary_intact(ctx, &o).await?;
        let top = reference::topk(&x, width, k);
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let (mut got_lse, mut want_lse) = (Vec::new(), Vec::new());
        for r in 0..rows {
            let w = &words[r * stride..(r + 1) * stride];
            let (m, lse, bad, fin) = row_stats(&x[r * width..(r + 1) * width]);
            let max_bits = if fin > 0 { (m as f32).to_bits() } else { f32::MIN.to_bits() };
            got.extend_from_slice(&w[..2 * k]);
            got.extend_from_slice(&[w[2 * k], w[2 * k + 2], w[2 * k + 3]]);
            want.extend(top[r * k..(r + 1) * k].iter().map(|c| c.0));
            want.extend(top[r * k..(r + 1) * k].iter().map(|c| c.1.to_bits()));
            want.extend_from_slice(&[max_bits, bad, fin]);
            if fin > 0 {
                got_lse.push(f32::from_bits(w[2 * k + 1]));
                want_lse.push(lse);
            }
        }
        let kind_name = ["ties/NaN/-inf", "heavy ties", "mostly -inf"][kind as usize];
        let name = format!("candidates {rows}x{width} k={k} {kind_name}");
        out.push(exact(ctx, OP, format!("{name}: top-k, max, counts"), dt, &got, &want, canary));
        // The sampler's top-p margin (TOP_P_MARGIN = 2e-4 on the mass) assumes ≤ 2e-5 here.
        let err = got_lse.iter().zip(&want_lse).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
        let ok = got_lse.iter().all(|v| v.is_finite()) && err <= LSE_TOLERANCE;
        let detail = format!("max |lse - ref| {err:.2e} over {LSE_TOLERANCE:.0e}");
        out.push(verdict(ctx, format!("{name}: log-sum-exp |err| {err:.1e}"), dt, ok, detail, err, LSE_TOLERANCE));
    }
    Ok(())
}

/// What a config of `sampler_cases` expects its default sampler to do.
struct SamplerCase {
    name: &'static str,
    cfg: SamplerConfig,
    amplitude: f32,
    path: SamplePath,
}

/// The sampler against the reference on a 5000-token row, by both routes.
async fn sampler_cases(ctx: &GpuContext, dt: DType, out: &mut Vec<CaseReport>) -> Result<()> {
    let mut rng = SplitMix64::new(0x5EED_0013);
    const VOCAB: usize = 5000;
    let d = SamplerConfig::default;
    let cases = [
        SamplerCase {
            name: "temperature 0.8",
            cfg: SamplerConfig { temperature: 0.8, ..d() },
            amplitude: 8.0,
            path: SamplePath::FullRow,
        },
        SamplerCase {
            name: "top_k 50",
            cfg: SamplerConfig { temperature: 0.9, top_k: 50, ..d() },
            amplitude: 8.0,
            path: SamplePath::Candidates,
        },
        SamplerCase {
            // (0.88: no prefix of this row comes within 1e-3 of it, in f32 or f16, so the
            // candidates decide; at 0.9 one prefix is 2e-4 away: too close to call.)
            name: "top_p 0.88 peaked",
            cfg: SamplerConfig { top_p: 0.88, ..d() },
            amplitude: 40.0,
            path: SamplePath::Candidates,
        },
        SamplerCase {
            name: "top_p 0.9 flat",
            cfg: SamplerConfig { top_p: 0.9, ..d() },
            amplitude: 4.0,
            path: SamplePath::FullRow,
        },
        SamplerCase {
            name: "min_p 0.05",
            cfg: SamplerConfig { temperature: 1.1, min_p: 0.05, ..d() },
            amplitude: 40.0,
            path: SamplePath::Candidates,
        },
        SamplerCase {
            name: "min_p 0.05 wide",
            cfg: SamplerConfig { temperature: 1.1, min_p: 0.05, ..d() },
            amplitude: 8.0,
            path: SamplePath::FullRow,
        },
        SamplerCase {
            name: "top_k 2000 + min_p 0.2",
            cfg: SamplerConfig { top_k: 2000, min_p: 0.2, ..d() },
            amplitude: 30.0,
            path: SamplePath::Candidates,
        },
        SamplerCase {
            name: "top_p 0.8 + min_p 0.3 (min-p cut first)",
            cfg: SamplerConfig { top_p: 0.8, min_p: 0.3, ..d() },
            amplitude: 20.0,
            path: SamplePath::Candidates,
        },
        SamplerCase {
            name: "combined + penalty",
            cfg: SamplerConfig {
                temperature: 0.7,
                top_k: 100,
                top_p: 0.9,
                min_p: 0.01,
                repetition_penalty: 1.2,
                repetition_last_n: 16,
                seed: 9,
            },
            amplitude: 6.0,
            path: SamplePath::Candidates,
        },
    ];
    for c in &cases {
        let x = round_to(dt, (0..VOCAB).map(|_| c.amplitude * rng.uniform(-1.0, 1.0)).collect());
        let recent: Vec<u32> = (0..24).map(|_| rng.below(VOCAB as u32)).collect();
        let xt = Tensor::from_f32(ctx, &x, &[VOCAB], dt)?;
        let d1 = Sampler::new(c.cfg.clone())?.distribution(Batch::new(ctx), &xt, &recent).await?;
        let d2 = Sampler::new(c.cfg.clone())?.with_candidates(0)?.distribution(Batch::new(ctx), &xt, &recent).await?;
        let bits = |d: &TokenDistribution| -> Vec<(u32, u64)> {
            d.tokens().iter().zip(d.weights()).map(|(t, w)| (*t, w.to_bits())).collect()
        };
        let mut rep = exact(
            ctx,
            OP,
            format!("{}: {:?} route == full-row route", c.name, d1.path()),
            dt,
            &bits(&d1),
            &bits(&d2),
            true,
        );
        if rep.passed && d1.path() != c.path {
            rep.passed = false;
            rep.detail = format!("took the {:?} route, expected {:?}", d1.path(), c.path);
        }
        out.push(rep);
        // Exact: the reference distribution of the processed row the GPU computes (one f32
        // multiplication per logit, checked bit for bit above).
        let f = c.cfg.factors()?;
        let pens = c.cfg.penalized_ids(&recent, VOCAB)?;
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let s = if pens.binary_search(&(i as u32)).is_ok() {
                    if v > 0.0 {
                        f[1]
                    } else {
                        f[2]
                    }
                } else {
                    f[0]
                };
                (v * s) as f64
            })
            .collect();
        let got = dense(&d1, VOCAB);
        let (ok, max, detail) = compare_dists(&got, &distribution(&y, &c.cfg), 1e-12);
        out.push(verdict(
            ctx,
            format!("{}: exact on the processed row ({} kept)", c.name, d1.tokens().len()),
            dt,
            ok,
            detail,
            max,
            1e-12,
        ));
        // Against the f64 reference from the raw logits (differs by the f32 rounding of y).
        let want = distribution(&process_logits(&x, &recent, &c.cfg), &c.cfg);
        let (ok, max, detail) = compare_dists(&got, &want, 1e-5);
        out.push(verdict(ctx, format!("{}: vs f64 reference", c.name), dt, ok, detail, max, 1e-5));
    }
    Ok(())
}

/// Greedy equals arg-max (both routes, batched), the repetition penalty moves greedy off a
/// penalised maximum, a mixed batch equals row-by-row sampling, and seeds replay.
async fn greedy_and_batch_cases(ctx: &GpuContext, dt: DType, out: &mut Vec<CaseReport>) -> Result<()> {
    let mut rng = SplitMix64::new(0x5EED_0014);
    let (rows, width) = (3, 3000);
    let x: Vec<f32> = doctored_rows(&mut rng, rows, width, dt)
        .into_iter()
        .map(|v| if v.is_nan() { f32::NEG_INFINITY } else { v })
        .collect();
    let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
    let am = poisoned(ctx, &[rows], DType::U32)?;
    let mut b = Batch::new(ctx);
    argmax_forward(&mut b, &xt, &am)?;
    b.submit();
    let want = am.read_u32(ctx).await?;
    let no_recent: Vec<&[u32]> = vec![&[]; rows];
    for k in [DEFAULT_CANDIDATES, 0] {
        let mut samplers =
            (0..rows).map(|_| Sampler::new(SamplerConfig::greedy())?.with_candidates(k)).collect::<Result<Vec<_>>>()?;
        let got = Sampler::sample_batch(&mut samplers, Batch::new(ctx), &xt, &no_recent).await?;
        let route = if k == 0 { "full row" } else { "candidates" };
        out.push(exact(ctx, OP, format!("greedy {rows}x{width} ({route}) == argmax op"), dt, &got, &want, true));
        out.push(exact(
            ctx,
            OP,
            format!("greedy {rows}x{width} ({route}) == reference argmax"),
            dt,
            &got,
            &reference::argmax(&x, width),
            true,
        ));
    }
    // Penalising each row's maximum: greedy follows the penalised reference.
    let cfg = SamplerConfig { repetition_penalty: 4.0, ..SamplerConfig::greedy() };
    let recents: Vec<Vec<u32>> = want.iter().map(|&t| vec![t, (t + 1) % width as u32]).collect();
    let recent_refs: Vec<&[u32]> = recents.iter().map(Vec::as_slice).collect();
    let mut samplers = (0..rows).map(|_| Sampler::new(cfg.clone())).collect::<Result<Vec<_>>>()?;
    let got = Sampler::sample_batch(&mut samplers, Batch::new(ctx), &xt, &recent_refs).await?;
    let want_pen: Vec<u32> = (0..rows)
        .map(|r| {
            let p = process_logits(&x[r * width..(r + 1) * width], &recents[r], &cfg);
            let best = (0..width).fold(0, |b, i| if p[i] > p[b] { i } else { b });
            best as u32
        })
        .collect();
    let moved = got.iter().zip(&want).all(|(g, w)| g != w);
    let mut rep = exact(ctx, OP, "greedy with penalty 4 on each row's maximum".into(), dt, &got, &want_pen, true);
    if rep.passed && !moved {
        rep.passed = false;
        rep.detail = "the penalty did not move greedy off the maximum".into();
    }
    out.push(rep);

    // A mixed batch equals the rows sampled one by one (same seeds).
    let configs = [
        SamplerConfig { top_k: 20, seed: 11, ..SamplerConfig::default() },
        SamplerConfig { temperature: 0.6, seed: 12, ..SamplerConfig::default() },
        SamplerConfig { top_p: 0.5, min_p: 0.01, repetition_penalty: 1.5, seed: 13, ..SamplerConfig::default() },
    ];
    let recent: Vec<u32> = (0..10).map(|_| rng.below(width as u32)).collect();
    let recents: Vec<&[u32]> = vec![&recent; rows];
    let mut batched = configs.iter().map(|c| Sampler::new(c.clone())).collect::<Result<Vec<_>>>()?;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(Sampler::sample_batch(&mut batched, Batch::new(ctx), &xt, &recents).await?);
    }
    let mut want = vec![0; got.len()];
    for (r, c) in configs.iter().enumerate() {
        let row = Tensor::from_f32(ctx, &x[r * width..(r + 1) * width], &[width], dt)?;
        let mut s = Sampler::new(c.clone())?;
        for step in 0..4 {
            want[step * rows + r] = s.sample(Batch::new(ctx), &row, &recent).await?;
        }
    }
    out.push(exact(ctx, OP, "mixed batch of 3 == row by row, 4 steps".into(), dt, &got, &want, true));

    // Seeds: the same seed replays the stream, and it is the RNG's stream.
    let row = Tensor::from_f32(ctx, &x[..width], &[width], dt)?;
    let cfg = SamplerConfig { temperature: 1.5, top_k: 200, seed: 42, ..SamplerConfig::default() };
    let mut runs = Vec::new();
    for seed in [42, 42, 43] {
        let mut s = Sampler::new(SamplerConfig { seed, ..cfg.clone() })?;
        let mut t = Vec::new();
        for _ in 0..32 {
            t.push(s.sample(Batch::new(ctx), &row, &[]).await?);
        }
        runs.push(t);
    }
    let dist = Sampler::new(cfg.clone())?.distribution(Batch::new(ctx), &row, &[]).await?;
    let mut rng = SplitMix64::new(42);
    let by_hand: Vec<u32> = (0..32).map(|_| dist.draw_with(rng.next_f64())).collect();
    out.push(exact(ctx, OP, "seed 42 twice: same 32 tokens".into(), dt, &runs[0], &runs[1], true));
    out.push(exact(ctx, OP, "seed 42: tokens == draws from SplitMix64(42)".into(), dt, &runs[0], &by_hand, true));
    let differ = runs[0] != runs[2];
    out.push(verdict(
        ctx,
        "seed 43 gives another stream".into(),
        dt,
        differ,
        "seeds 42 and 43 gave the same tokens".into(),
        0.0,
        0.0,
    ));
    Ok(())
}

/// χ² goodness of fit of 20 000 draws against the reference, per configuration and route,
/// and two negative controls the same test must reject.
async fn chi2_cases(ctx: &GpuContext, dt: DType, out: &mut Vec<CaseReport>) -> Result<()> {
    let mut rng = SplitMix64::new(0x5EED_0015);
    const VOCAB: usize = 200;
    let x = round_to(dt, (0..VOCAB).map(|_| rng.uniform(-4.0, 4.0)).collect());
    let recent: Vec<u32> = (0..30).map(|_| rng.below(VOCAB as u32)).collect();
    let xt = Tensor::from_f32(ctx, &x, &[VOCAB], dt)?;
    let d = SamplerConfig::default;
    let configs = [
        ("temperature 0.7", SamplerConfig { temperature: 0.7, ..d() }),
        ("top_k 20", SamplerConfig { top_k: 20, ..d() }),
        ("top_p 0.8", SamplerConfig { top_p: 0.8, ..d() }),
        ("min_p 0.1", SamplerConfig { min_p: 0.1, ..d() }),
        (
            "combined",
            SamplerConfig {
                temperature: 1.3,
                top_k: 50,
                top_p: 0.9,
                min_p: 0.05,
                repetition_penalty: 1.2,
                repetition_last_n: 0,
                seed: 0,
            },
        ),
    ];
    let mut seed = 0x0C41_0000u64;
    for (name, cfg) in &configs {
        let want = distribution(&process_logits(&x, &recent, cfg), cfg);
        for k in [DEFAULT_CANDIDATES, 64] {
            seed += 1;
            let mut s = Sampler::new(SamplerConfig { seed, ..cfg.clone() })?.with_candidates(k)?;
            let dist = s.distribution(Batch::new(ctx), &xt, &recent).await?;
            let chi = chi_square(&draw_counts(&mut s, &dist, VOCAB, CHI2_DRAWS), &want);
            out.push(verdict(
                ctx,
                format!("chi2 {name} K={k} ({:?}, {} kept): {chi}", dist.path(), dist.tokens().len()),
                dt,
                chi.accepts(),
                "rejected".into(),
                chi.statistic,
                chi.critical,
            ));
        }
    }
    // Negative controls: draws from the untruncated distribution against the top-p reference;
    // draws at T = 0.7 against the T = 0.8 reference.
    let controls = [
        ("untruncated vs top_p 0.8", SamplerConfig { seed: 77, ..d() }, SamplerConfig { top_p: 0.8, ..d() }),
        (
            "T=0.7 vs T=0.8",
            SamplerConfig { temperature: 0.7, seed: 78, ..d() },
            SamplerConfig { temperature: 0.8, ..d() },
        ),
    ];
    for (name, drawn, tested) in &controls {
        let mut s = Sampler::new(drawn.clone())?;
        let dist = s.distribution(Batch::new(ctx), &xt, &recent).await?;
        let want = distribution(&process_logits(&x, &recent, tested), tested);
        let chi = chi_square(&draw_counts(&mut s, &dist, VOCAB, CHI2_DRAWS), &want);
        out.push(verdict(
            ctx,
            format!("chi2 negative control {name}: {chi} -> rejected"),
            dt,
            !chi.accepts(),
            "the test accepted a wrong distribution".into(),
            chi.statistic,
            chi.critical,
        ));
    }
    Ok(())
}

/// Invalid configurations and logits give typed errors (no panic).
async fn error_cases(ctx: &GpuContext, dt: DType, out: &mut Vec<CaseReport>) -> Result<()> {
    let d = SamplerConfig::default;
    let bad_configs = [
        SamplerConfig { temperature: -0.5, ..d() },
        SamplerConfig { temperature: f32::NAN, ..d() },
        SamplerConfig { temperature: f32::INFINITY, ..d() },
        SamplerConfig { top_p: 0.0, ..d() },
        SamplerConfig { top_p: 1.5, ..d() },
        SamplerConfig { top_p: f32::NAN, ..d() },
        SamplerConfig { min_p: -0.1, ..d() },
        SamplerConfig { min_p: 2.0, ..d() },
        SamplerConfig { repetition_penalty: 0.0, ..d() },
        SamplerConfig { repetition_penalty: f32::NAN, ..d() },
    ];
    let mut got: Vec<String> = Vec::new();
    let mut want: Vec<String> = Vec::new();
    let invalid = |r: &Result<()>| matches!(r, Err(PupilError::InvalidArgument { .. }));
    for c in &bad_configs {
        got.push(format!("{c:?}: {}", invalid(&Sampler::new(c.clone()).map(|_| ()))));
        want.push(format!("{c:?}: true"));
    }
    const W: usize = 300;
    let mut rng = SplitMix64::new(0x5EED_0016);
    let base = inputs(&mut rng, W, -3.0, 3.0, dt);
    let with = |i: usize, v: f32| {
        let mut x = base.clone();
        x[i] = v;
        x
    };
    let all_masked = vec![f32::NEG_INFINITY; W];
    let rows: [(&str, Vec<f32>); 4] = [
        ("NaN", with(17, f32::NAN)),
        ("+inf", with(250, f32::INFINITY)),
        ("all -inf", all_masked),
        ("finite", base.clone()),
    ];
    let samplers = [
        ("greedy", SamplerConfig::greedy(), DEFAULT_CANDIDATES),
        ("top_k", SamplerConfig { top_k: 10, ..d() }, DEFAULT_CANDIDATES),
        ("temperature", SamplerConfig { temperature: 0.5, ..d() }, DEFAULT_CANDIDATES),
        ("top_p full row", SamplerConfig { top_p: 0.5, ..d() }, 0),
    ];
    for (row_name, x) in &rows {
        let xt = Tensor::from_f32(ctx, x, &[W], dt)?;
        for (s_name, cfg, k) in &samplers {
            let mut s = Sampler::new(cfg.clone())?.with_candidates(*k)?;
            let r = s.sample(Batch::new(ctx), &xt, &[]).await.map(|_| ());
            let ok = if *row_name == "finite" { r.is_ok() } else { invalid(&r) };
            got.push(format!("{s_name} on {row_name} logits: {ok}"));
            want.push(format!("{s_name} on {row_name} logits: true"));
        }
    }
    // Misuse: a token outside the vocabulary, too few rows, u32 logits, too many candidates,
    // a temperature whose inverse overflows f32.
    let xt = Tensor::from_f32(ctx, &base, &[W], dt)?;
    let pen = SamplerConfig { repetition_penalty: 1.3, ..d() };
    let r = Sampler::new(pen.clone())?.sample(Batch::new(ctx), &xt, &[3, W as u32]).await.map(|_| ());
    got.push(format!("recent token past the vocabulary: {}", invalid(&r)));
    let two = Tensor::from_f32(ctx, &[base.clone(), base.clone()].concat(), &[2, W], dt)?;
    let r = Sampler::new(d())?.sample(Batch::new(ctx), &two, &[]).await.map(|_| ());
    got.push(format!("two rows for one sampler: {}", matches!(r, Err(PupilError::Shape { .. }))));
    let ids = Tensor::from_u32(ctx, &[1, 2, 3], &[3])?;
    let r = Sampler::new(d())?.sample(Batch::new(ctx), &ids, &[]).await.map(|_| ());
    got.push(format!("u32 logits: {}", matches!(r, Err(PupilError::DType { .. }))));
    got.push(format!("2000 candidates: {}", Sampler::new(d())?.with_candidates(2000).is_err()));
    let r =
        Sampler::new(SamplerConfig { temperature: 1e-39, ..d() })?.sample(Batch::new(ctx), &xt, &[]).await.map(|_| ());
    got.push(format!("temperature 1e-39: {}", invalid(&r)));
    for g in &got[want.len()..] {
        want.push(format!("{}true", &g[..g.rfind(' ').unwrap() + 1]));
    }
    out.push(exact(
        ctx,
        OP,
        format!("{} invalid configs and logits give typed errors", got.len()),
        dt,
        &got,
        &want,
        true,
    ));
    Ok(())
}
