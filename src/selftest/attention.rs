//! Checks of `ops::attention` (prefill, decode, KV cache writes) against `reference::attention`.
//!
//! Each case is a small "session": sequences whose earliest positions are uploaded straight into
//! the cache (slots never written hold random junk, so reading a wrong slot fails), then prefill
//! chunks for sequence 0 (attention, then `kv_write_chunk`), then decode steps for every sequence
//! in one batch (`kv_write`, then decode). Every chunk's output and log-sum-exp and every decode
//! step's output is compared with the reference over all tokens of the sequence so far.

use super::harness::{check_float, exact, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::attention::{
    attention_decode_forward, attention_prefill_forward, kv_write, kv_write_chunk, AttentionConfig, CacheSeq, KvCache,
    KvCacheKind,
};
use crate::reference::{self, AttentionSpec};
use crate::rng::SplitMix64;

struct Case {
    what: &'static str,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    kind: KvCacheKind,
    slots: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    scale: Option<f32>,
    /// Per sequence: positions placed in the cache by direct upload.
    uploaded: Vec<usize>,
    /// Prefill chunks of sequence 0, after its uploaded positions.
    chunks: Vec<usize>,
    /// Decode steps, every sequence one token per step.
    steps: usize,
    /// Prefill without a cache (only for a first chunk at position 0).
    no_cache: bool,
    /// Attention sinks (random logits per head).
    sinks: bool,
}

/// One sequence's tokens: queries, keys and values at every position.
struct Seq {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Positions so far (uploaded + prefilled + decoded).
    len: usize,
}

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use KvCacheKind::*;
    let c = |what, n_heads, n_kv, hd, kind, slots| Case {
        what,
        n_heads,
        n_kv,
        hd,
        kind,
        slots,
        window: None,
        softcap: None,
        scale: None,
        uploaded: vec![0],
        chunks: vec![],
        steps: 0,
        no_cache: false,
        sinks: false,
    };
    let cases = vec![
        Case { chunks: vec![1], ..c("length 1", 2, 2, 64, Full, 8) },
        Case { chunks: vec![19], no_cache: true, ..c("no cache", 6, 1, 128, Full, 8) },
        Case { chunks: vec![2], steps: 1, ..c("length 2, decode after", 4, 2, 64, Full, 8) },
        Case { chunks: vec![37], steps: 2, softcap: Some(20.0), ..c("odd length, softcap", 3, 1, 128, Full, 64) },
        Case { chunks: vec![15, 17], steps: 1, ..c("tile-1 then tile+1", 7, 1, 64, Full, 64) },
        Case {
            chunks: vec![21, 9],
            steps: 2,
            window: Some(16),
            sinks: true,
            ..c("sinks, rolling window", 6, 2, 128, Rolling, 16)
        },
        Case {
            chunks: vec![9, 23, 20],
            steps: 3,
            window: Some(16),
            ..c("rolling W=16 wrapped 3x, chunk > W", 4, 1, 256, Rolling, 16)
        },
        Case {
            uploaded: vec![40],
            chunks: vec![33],
            steps: 1,
            scale: Some(0.05),
            ..c("chunked prefill pos0=40, scale 0.05", 12, 2, 64, Full, 128)
        },
        Case { chunks: vec![50], steps: 2, window: Some(20), ..c("window 20 over a full cache", 8, 1, 128, Full, 96) },
        // R = 16 rows of one tile span 8 tokens here, so the window is enforced by the mask.
        Case { chunks: vec![20, 11], steps: 1, window: Some(5), ..c("window 5 inside a row tile", 2, 1, 64, Full, 64) },
        Case {
            chunks: vec![13, 11],
            steps: 2,
            window: Some(5),
            ..c("rolling 8 slots, window 5", 1, 1, 64, Rolling, 8)
        },
        Case {
            uploaded: vec![31, 32, 33, 163, 0],
            steps: 2,
            window: Some(32),
            ..c("decode batch at W-1, W, W+1, wrapped 5x, 0", 7, 1, 64, Rolling, 32)
        },
        Case {
            uploaded: vec![0, 1, 150, 297],
            steps: 2,
            softcap: Some(30.0),
            sinks: true,
            ..c("decode batch, lengths 1..299, 3 chunks, sinks", 12, 1, 128, Full, 300)
        },
        Case { uploaded: vec![4090], chunks: vec![7], steps: 2, ..c("long: 4097+ keys", 2, 1, 64, Full, 4100) },
        Case { uploaded: vec![4200, 17], steps: 1, ..c("long decode, head_dim 256", 4, 1, 256, Full, 4224) },
    ];
    let mut rng = SplitMix64::new(0x5EED_0A77);
    let mut out = Vec::new();
    for case in &cases {
        run_case(ctx, dt, case, &mut rng, &mut out).await?;
    }
    out.push(bad_inputs(ctx, dt)?);
    Ok(out)
}

async fn run_case(
    ctx: &GpuContext,
    dt: DType,
    case: &Case,
    rng: &mut SplitMix64,
    out: &mut Vec<CaseReport>,
) -> Result<()> {
    let (nh, hd) = (case.n_heads, case.hd);
    let row = case.n_kv * hd;
    let n_seqs = case.uploaded.len();
    let mut cfg = AttentionConfig::new(nh, case.n_kv, hd);
    cfg.window = case.window;
    cfg.softcap = case.softcap;
    cfg.scale = case.scale;
    // Sink logits around the typical logit range, so they matter without dominating.
    let sinks: Option<Vec<f32>> = case.sinks.then(|| (0..nh).map(|_| rng.uniform(-1.0, 3.0)).collect());
    if let Some(v) = &sinks {
        cfg.sinks = Some(Tensor::from_f32(ctx, v, &[nh], DType::F32)?);
    }
    let spec = AttentionSpec {
        n_heads: nh,
        n_kv_heads: case.n_kv,
        head_dim: hd,
        scale: cfg.scale_value() as f64,
        window: case.window,
        softcap: case.softcap.map(|c| c as f64),
        sinks: sinks.map(|v| v.iter().map(|&x| x as f64).collect()),
    };
    let kind = match case.kind {
        KvCacheKind::Full => "full",
        KvCacheKind::Rolling => "rolling",
    };
    let label = format!("h{nh}/{} d{hd} {kind}{} ({})", case.n_kv, case.slots, case.what);

    // Sequence i lives in cache sequence n_seqs - 1 - i, so the mapping is exercised.
    let cache_seq = |i: usize| n_seqs - 1 - i;
    let mut seqs: Vec<Seq> = case
        .uploaded
        .iter()
        .enumerate()
        .map(|(i, &up)| {
            let total = up + if i == 0 { case.chunks.iter().sum() } else { 0 } + case.steps;
            Seq {
                q: inputs(rng, total * nh * hd, -2.0, 2.0, dt),
                k: inputs(rng, total * row, -1.0, 1.0, dt),
                v: inputs(rng, total * row, -1.0, 1.0, dt),
                len: up,
            }
        })
        .collect();
    let cache = KvCache::new(ctx, case.kind, 1, n_seqs, case.slots, case.n_kv, hd, dt)?;
    // Junk everywhere, then the uploaded positions (a rolling cache keeps the last `slots`).
    let mut k_img = inputs(rng, n_seqs * case.slots * row, -1.0, 1.0, dt);
    let mut v_img = inputs(rng, n_seqs * case.slots * row, -1.0, 1.0, dt);
    for (i, s) in seqs.iter().enumerate() {
        for pos in s.len.saturating_sub(case.slots)..s.len {
            let at = (cache_seq(i) * case.slots + pos % case.slots) * row;
            k_img[at..at + row].copy_from_slice(&s.k[pos * row..(pos + 1) * row]);
            v_img[at..at + row].copy_from_slice(&s.v[pos * row..(pos + 1) * row]);
        }
    }
    cache.k[0].write_f32(ctx, &k_img)?;
    cache.v[0].write_f32(ctx, &v_img)?;

    for &tokens in &case.chunks {
        let s = &mut seqs[0];
        let pos0 = s.len;
        let q = Tensor::from_f32(ctx, &s.q[pos0 * nh * hd..(pos0 + tokens) * nh * hd], &[tokens, nh, hd], dt)?;
        let k = Tensor::from_f32(ctx, &s.k[pos0 * row..(pos0 + tokens) * row], &[tokens, case.n_kv, hd], dt)?;
        let v = Tensor::from_f32(ctx, &s.v[pos0 * row..(pos0 + tokens) * row], &[tokens, case.n_kv, hd], dt)?;
        let o = poisoned(ctx, &[tokens, nh, hd], dt)?;
        let lse = poisoned(ctx, &[tokens, nh], DType::F32)?;
        let mut b = Batch::new(ctx);
        if case.no_cache {
            attention_prefill_forward(&mut b, &cfg, &q, &k, &v, None, pos0, &o, &lse)?;
        } else {
            let at = CacheSeq { cache: &cache, layer: 0, seq: cache_seq(0) };
            attention_prefill_forward(&mut b, &cfg, &q, &k, &v, Some(at), pos0, &o, &lse)?;
            kv_write_chunk(&mut b, &cache, 0, cache_seq(0), pos0, &k, &v)?;
        }
        b.submit();
        let positions: Vec<usize> = (pos0..pos0 + tokens).collect();
        let (want, want_lse) =
            reference::attention(&s.q[pos0 * nh * hd..(pos0 + tokens) * nh * hd], &positions, &s.k, &s.v, &spec);
        let name = format!("prefill t{tokens}@{pos0} {label}");
        out.push(check_float(ctx, "attention", name.clone(), &o, &want).await?);
        out.push(check_float(ctx, "attention", format!("{name} lse"), &lse, &want_lse).await?);
        s.len += tokens;
    }

    for _ in 0..case.steps {
        let batch = n_seqs;
        let mut q = Vec::with_capacity(batch * nh * hd);
        let (mut k, mut v, mut dest) = (Vec::new(), Vec::new(), Vec::new());
        let mut want = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let pos = s.len;
            q.extend_from_slice(&s.q[pos * nh * hd..(pos + 1) * nh * hd]);
            k.extend_from_slice(&s.k[pos * row..(pos + 1) * row]);
            v.extend_from_slice(&s.v[pos * row..(pos + 1) * row]);
            dest.extend([cache_seq(i) as u32, pos as u32]);
            want.extend(reference::attention(&s.q[pos * nh * hd..(pos + 1) * nh * hd], &[pos], &s.k, &s.v, &spec).0);
        }
        let qt = Tensor::from_f32(ctx, &q, &[batch, nh, hd], dt)?;
        let kt = Tensor::from_f32(ctx, &k, &[batch, row], dt)?;
        let vt = Tensor::from_f32(ctx, &v, &[batch, row], dt)?;
        let dt_seqs = Tensor::from_u32(ctx, &dest, &[batch, 2])?;
        let o = poisoned(ctx, &[batch, nh, hd], dt)?;
        let mut b = Batch::new(ctx);
        kv_write(&mut b, &cache, 0, &kt, &vt, &dt_seqs)?;
        attention_decode_forward(&mut b, &cfg, &qt, &dt_seqs, &cache, 0, &o)?;
        b.submit();
        let lens: Vec<String> = seqs.iter().map(|s| (s.len + 1).to_string()).collect();
        let name = format!("decode lens [{}] {label}", lens.join(","));
        out.push(check_float(ctx, "attention", name, &o, &want).await?);
        for s in &mut seqs {
            s.len += 1;
        }
    }
    Ok(())
}

/// Misuse must come back as errors, never panics or dispatches.
fn bad_inputs(ctx: &GpuContext, dt: DType) -> Result<CaseReport> {
    let other = if dt == DType::F32 && ctx.caps.f16 { DType::F16 } else { DType::F32 };
    let cfg = AttentionConfig::new(4, 2, 64);
    let q = Tensor::empty(ctx, &[3, 4, 64], dt)?;
    let kv = Tensor::empty(ctx, &[3, 2, 64], dt)?;
    let o = Tensor::empty(ctx, &[3, 4, 64], dt)?;
    let lse = Tensor::empty(ctx, &[3, 4], DType::F32)?;
    let full = KvCache::new(ctx, KvCacheKind::Full, 1, 1, 8, 2, 64, dt)?;
    let rolling = KvCache::new(ctx, KvCacheKind::Rolling, 1, 1, 8, 2, 64, dt)?;
    let seqs = Tensor::from_u32(ctx, &[0, 0, 0, 1, 0, 2], &[3, 2])?;
    let mut b = Batch::new(ctx);
    let at = |cache| Some(CacheSeq { cache, layer: 0, seq: 0 });
    let mut got = vec![
        attention_prefill_forward(&mut b, &AttentionConfig::new(4, 2, 96), &q, &kv, &kv, None, 0, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &AttentionConfig::new(4, 3, 64), &q, &kv, &kv, None, 0, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &cfg, &q, &q, &kv, None, 0, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &cfg, &q, &kv, &kv, None, 2, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &cfg, &q, &kv, &kv, at(&rolling), 0, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &cfg, &q, &kv, &kv, at(&full), 9, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &cfg, &q, &kv, &kv, None, 0, &q, &lse).is_err(),
        attention_prefill_forward(&mut b, &cfg, &q, &kv, &kv, None, 0, &o, &o).is_err(),
        attention_decode_forward(&mut b, &cfg, &q, &lse, &full, 0, &o).is_err(),
        attention_decode_forward(&mut b, &cfg, &q, &seqs, &full, 1, &o).is_err(),
        attention_decode_forward(&mut b, &cfg, &q, &seqs, &rolling, 0, &o).is_err(),
        kv_write_chunk(&mut b, &full, 0, 0, 6, &kv, &kv).is_err(),
        kv_write_chunk(&mut b, &full, 0, 1, 0, &kv, &kv).is_err(),
        kv_write(&mut b, &full, 0, &kv, &kv, &lse).is_err(),
    ];
    let mut bad_sinks = cfg.clone();
    bad_sinks.sinks = Some(Tensor::empty(ctx, &[3], DType::F32)?);
    got.push(attention_prefill_forward(&mut b, &bad_sinks, &q, &kv, &kv, None, 0, &o, &lse).is_err());
    got.push(attention_decode_forward(&mut b, &bad_sinks, &q, &seqs, &full, 0, &o).is_err());
    if other != dt {
        let q2 = Tensor::empty(ctx, &[3, 4, 64], other)?;
        got.push(attention_prefill_forward(&mut b, &cfg, &q2, &kv, &kv, None, 0, &o, &lse).is_err());
    }
    let none_dispatched = b.is_empty();
    got.push(none_dispatched);
    let want = vec![true; got.len()];
    Ok(exact(ctx, "attention", format!("{} misuses rejected", got.len() - 1), dt, &got, &want, true))
}
