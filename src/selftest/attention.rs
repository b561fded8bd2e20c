//! Checks of `ops::attention` (prefill, decode, KV cache writes) against `reference::attention`.
//!
//! Each case is a small "session": sequences whose earliest positions are uploaded straight into
//! the cache (slots never written hold random junk, so reading a wrong slot fails), then prefill
//! chunks for sequence 0 (attention, then `kv_write_chunk`), then decode steps for every sequence
//! in one batch (`kv_write`, then decode). Every chunk's output and log-sum-exp and every decode
//! step's output is compared with the reference over all tokens of the sequence so far.

use std::sync::Arc;

use super::harness::{check_float, exact, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::attention::{
    attention_decode_forward, attention_decode_forward_with, attention_packed_forward, attention_prefill_forward,
    attention_prefill_forward_with, doc_starts, kv_write, kv_write_chunk, AttentionConfig, AttentionInputs, CacheSeq,
    GateInput, GateMode, KvCache, KvCacheKind, Streaming,
};
use crate::ops::{RopeConfig, RopeLayout, RopeTable};
use crate::reference::gate::GateLayout;
use crate::reference::{self, AttentionSpec, StreamingSpec};
use crate::rng::SplitMix64;

/// How a case gates the attention output.
#[derive(Clone, Copy, PartialEq)]
enum Gate {
    Elementwise,
    Headwise,
    /// Elementwise, packed after each head's query (Qwen3-Next's q_proj row).
    Packed,
}

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
    /// StreamingLLM: sink tokens, and the in-kernel RoPE (layout, rotated dims) if any.
    streaming: Option<(usize, Option<(RopeLayout, usize)>)>,
    /// Output gate.
    gate: Option<Gate>,
    /// Packed documents (lengths) in the one no-cache chunk.
    docs: Option<Vec<usize>>,
}

/// One sequence's tokens: queries, keys and values at every position.
struct Seq {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Positions so far (uploaded + prefilled + decoded).
    len: usize,
}

fn base(what: &'static str, n_heads: usize, n_kv: usize, hd: usize, kind: KvCacheKind, slots: usize) -> Case {
    Case {
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
        streaming: None,
        gate: None,
        docs: None,
    }
}

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use KvCacheKind::*;
    let c = base;
    let st = |s| Streaming { sinks: s };
    let mut cases = vec![
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
        // StreamingLLM: S sink tokens + window W in S + W slots, RoPE at cache-relative positions.
        Case {
            chunks: vec![7, 9, 13, 30],
            steps: 3,
            window: Some(12),
            streaming: Some((4, Some((RopeLayout::NeoX, 64)))),
            ..c("streaming S4+W12 NeoX, chunks past the cache", 4, 2, 64, st(4), 16)
        },
        Case {
            uploaded: vec![30, 31, 32, 33, 5 * 32 + 3, 0],
            steps: 2,
            window: Some(28),
            streaming: Some((4, Some((RopeLayout::Normal, 64)))),
            ..c("streaming decode at S+W-1, S+W, S+W+1, wrapped 5x, 0; partial rope", 6, 2, 128, st(4), 32)
        },
        Case {
            chunks: vec![40],
            no_cache: true,
            window: Some(15),
            streaming: Some((5, Some((RopeLayout::NeoX, 256)))),
            ..c("streaming no cache, chunk 40 > S+W", 3, 1, 256, st(5), 20)
        },
        Case {
            chunks: vec![30, 5],
            steps: 2,
            window: Some(10),
            streaming: Some((3, Some((RopeLayout::Normal, 128)))),
            ..c("streaming over a full cache", 8, 1, 128, Full, 64)
        },
        Case {
            chunks: vec![10, 10],
            steps: 2,
            window: Some(6),
            streaming: Some((2, None)),
            softcap: Some(10.0),
            ..c("streaming without RoPE (NoPE), softcap", 2, 1, 64, st(2), 8)
        },
        Case {
            uploaded: vec![900, 3],
            chunks: vec![12],
            steps: 2,
            window: Some(256),
            streaming: Some((4, Some((RopeLayout::NeoX, 128)))),
            ..c("streaming long, 3 decode chunks", 4, 1, 128, st(4), 260)
        },
        // Output gates (fused; with sinks or streaming RoPE and a cache: the separate pass).
        Case {
            chunks: vec![9, 14],
            steps: 2,
            gate: Some(Gate::Elementwise),
            ..c("output gate elementwise", 8, 2, 128, Full, 32)
        },
        Case {
            uploaded: vec![3, 20],
            chunks: vec![18],
            steps: 2,
            sinks: true,
            gate: Some(Gate::Headwise),
            ..c("headwise gate + sinks (separate pass)", 6, 3, 64, Full, 48)
        },
        Case {
            chunks: vec![11, 6],
            steps: 1,
            gate: Some(Gate::Packed),
            ..c("gate packed after q (Qwen3-Next)", 4, 4, 256, Full, 24)
        },
        Case {
            chunks: vec![13, 8],
            steps: 2,
            window: Some(10),
            streaming: Some((2, Some((RopeLayout::NeoX, 64)))),
            gate: Some(Gate::Headwise),
            ..c("streaming + headwise gate (separate pass)", 4, 1, 64, st(2), 12)
        },
        // Packed documents (no cache, positions reset per document by the caller).
        Case { chunks: vec![64], no_cache: true, docs: Some(vec![5, 17, 1, 30, 11]), ..c("docs", 6, 2, 64, Full, 8) },
        Case {
            chunks: vec![53],
            no_cache: true,
            window: Some(8),
            sinks: true,
            gate: Some(Gate::Elementwise),
            docs: Some(vec![20, 2, 31]),
            ..c("docs, window 8, sinks, gate", 4, 1, 128, Full, 8)
        },
        Case {
            chunks: vec![163],
            no_cache: true,
            gate: Some(Gate::Headwise),
            docs: Some(vec![100, 3, 60]),
            ..c("docs across many tiles, headwise gate", 3, 1, 256, Full, 8)
        },
    ];
    // Every GQA ratio at every head dim, each with one of: plain, StreamingLLM, gate, docs.
    for (hi, hd) in [64, 128, 256].into_iter().enumerate() {
        for (ri, ratio) in [1, 2, 3, 4, 6, 7, 8].into_iter().enumerate() {
            let n_kv = 1 + (ri % 2);
            let tokens = 9 + 3 * ri;
            let mut case = Case {
                uploaded: vec![4 + ri],
                chunks: vec![tokens],
                steps: 1,
                ..c("GQA sweep", ratio * n_kv, n_kv, hd, Full, 64)
            };
            match (hi + ri) % 4 {
                1 => {
                    case.what = "GQA sweep, streaming";
                    case.kind = st(3);
                    case.slots = 16;
                    case.window = Some(13);
                    let layout = if ri % 2 == 0 { RopeLayout::NeoX } else { RopeLayout::Normal };
                    case.streaming = Some((3, Some((layout, hd))));
                }
                2 => {
                    case.what = "GQA sweep, gate";
                    case.gate = Some(if ri % 2 == 0 { Gate::Elementwise } else { Gate::Headwise });
                }
                3 => {
                    case.what = "GQA sweep, docs";
                    case.uploaded = vec![0];
                    case.steps = 0;
                    case.no_cache = true;
                    case.docs = Some(vec![tokens / 3, 1, tokens - tokens / 3 - 1]);
                }
                _ => {}
            }
            cases.push(case);
        }
    }
    // Every prefill variant at every head dim: learned sinks with a cache, and packed
    // documents with sinks and/or a fused gate (the other combinations are above).
    for hd in [64, 128, 256] {
        cases.push(Case {
            chunks: vec![6, 10],
            steps: 1,
            sinks: true,
            ..c("variant sweep: sinks", 4, 2, hd, Full, 32)
        });
        for (what, sinks, gate) in [
            ("variant sweep: docs, sinks", true, None),
            ("variant sweep: docs, gate", false, Some(Gate::Elementwise)),
            ("variant sweep: docs, sinks, headwise gate", true, Some(Gate::Headwise)),
        ] {
            cases.push(Case {
                chunks: vec![21],
                no_cache: true,
                sinks,
                gate,
                docs: Some(vec![8, 13]),
                ..c(what, 2, 1, hd, Full, 8)
            });
        }
    }
    let mut rng = SplitMix64::new(0x5EED_0A77);
    let mut out = Vec::new();
    for case in &cases {
        run_case(ctx, dt, case, &mut rng, &mut out).await?;
    }
    out.push(bad_inputs(ctx, dt)?);
    Ok(out)
}

/// The cache slot of `pos`, as the kernels place it.
fn slot_of(kind: KvCacheKind, slots: usize, pos: usize) -> usize {
    let s = kind.fixed_slots();
    if pos < s {
        pos
    } else {
        s + (pos - s) % (slots - s)
    }
}

/// Random gate logits for `tokens` rows, the tensor and the reference's view of it.
fn make_gate(
    ctx: &GpuContext,
    rng: &mut SplitMix64,
    gate: Gate,
    tokens: usize,
    nh: usize,
    hd: usize,
    dt: DType,
) -> Result<(Tensor, Vec<f32>, GateLayout)> {
    let (shape, layout) = match gate {
        Gate::Elementwise => {
            (vec![tokens, nh, hd], GateLayout { headwise: false, token_stride: nh * hd, head_stride: hd, offset: 0 })
        }
        Gate::Headwise => {
            (vec![tokens, nh], GateLayout { headwise: true, token_stride: nh, head_stride: 1, offset: 0 })
        }
        Gate::Packed => (
            vec![tokens, nh, 2 * hd],
            GateLayout { headwise: false, token_stride: 2 * nh * hd, head_stride: 2 * hd, offset: hd },
        ),
    };
    // Logits around zero and into both tails, so σ varies over most of (0, 1).
    let g = inputs(rng, shape.iter().product(), -4.0, 4.0, dt);
    Ok((Tensor::from_f32(ctx, &g, &shape, dt)?, g, layout))
}

fn gate_input<'a>(t: &'a Tensor, l: GateLayout) -> GateInput<'a> {
    GateInput {
        logits: t,
        mode: if l.headwise { GateMode::Headwise } else { GateMode::Elementwise },
        token_stride: l.token_stride,
        head_stride: l.head_stride,
        offset: l.offset,
    }
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
    let mut spec = AttentionSpec::new(nh, case.n_kv, hd, cfg.scale_value() as f64);
    spec.window = case.window;
    spec.softcap = case.softcap.map(|c| c as f64);
    spec.sinks = sinks.map(|v| v.iter().map(|&x| x as f64).collect());
    if let Some((s, rope)) = case.streaming {
        // Base 1000 so the angles at cache-relative positions vary fast; the table is exactly
        // S + W long (the most a cache-relative position needs).
        let rope_cfg = rope.map(|(layout, n_rot)| RopeConfig::new(n_rot, 1000.0, layout));
        let table = match &rope_cfg {
            Some(rc) => Some(Arc::new(RopeTable::new(ctx, rc.clone(), s + case.window.unwrap())?)),
            None => None,
        };
        cfg.streaming = Some(Streaming { sink_tokens: s, rope: table });
        spec.streaming = Some(StreamingSpec { sink_tokens: s, rope: rope_cfg });
    }
    if let Some(lens) = &case.docs {
        spec.doc_start = Some(doc_starts(lens).into_iter().map(|x| x as usize).collect());
    }
    let kind = match case.kind {
        KvCacheKind::Full => "full".to_string(),
        KvCacheKind::Rolling => "rolling".to_string(),
        KvCacheKind::Streaming { sinks } => format!("stream{sinks}+"),
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
    // Junk everywhere, then the uploaded positions the cache keeps.
    let mut k_img = inputs(rng, n_seqs * case.slots * row, -1.0, 1.0, dt);
    let mut v_img = inputs(rng, n_seqs * case.slots * row, -1.0, 1.0, dt);
    let fixed = case.kind.fixed_slots();
    for (i, s) in seqs.iter().enumerate() {
        let kept = (0..fixed.min(s.len)).chain(s.len.saturating_sub(case.slots - fixed).max(fixed)..s.len);
        for pos in kept {
            let at = (cache_seq(i) * case.slots + slot_of(case.kind, case.slots, pos)) * row;
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
        let gate = match case.gate {
            Some(g) => Some(make_gate(ctx, rng, g, tokens, nh, hd, dt)?),
            None => None,
        };
        let gin = gate.as_ref().map(|(t, _, l)| gate_input(t, *l));
        let mut b = Batch::new(ctx);
        if let Some(lens) = &case.docs {
            let ds = Tensor::from_u32(ctx, &doc_starts(lens), &[tokens])?;
            attention_packed_forward(&mut b, &cfg, &q, &k, &v, &ds, &o, &lse, gin)?;
        } else if case.no_cache {
            let ins = AttentionInputs { gate: gin, doc_start: None };
            attention_prefill_forward_with(&mut b, &cfg, &q, &k, &v, None, pos0, &o, &lse, ins)?;
        } else {
            let at = CacheSeq { cache: &cache, layer: 0, seq: cache_seq(0) };
            let ins = AttentionInputs { gate: gin, doc_start: None };
            attention_prefill_forward_with(&mut b, &cfg, &q, &k, &v, Some(at), pos0, &o, &lse, ins)?;
            kv_write_chunk(&mut b, &cache, 0, cache_seq(0), pos0, &k, &v)?;
        }
        b.submit();
        let positions: Vec<usize> = (pos0..pos0 + tokens).collect();
        let (mut want, want_lse) =
            reference::attention(&s.q[pos0 * nh * hd..(pos0 + tokens) * nh * hd], &positions, &s.k, &s.v, &spec);
        if let Some((_, g, l)) = &gate {
            want = reference::gate::gate(&want, g, *l, nh, hd);
        }
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
        let gate = match case.gate {
            Some(g) => Some(make_gate(ctx, rng, g, batch, nh, hd, dt)?),
            None => None,
        };
        if let Some((_, g, l)) = &gate {
            want = reference::gate::gate(&want, g, *l, nh, hd);
        }
        let qt = Tensor::from_f32(ctx, &q, &[batch, nh, hd], dt)?;
        let kt = Tensor::from_f32(ctx, &k, &[batch, row], dt)?;
        let vt = Tensor::from_f32(ctx, &v, &[batch, row], dt)?;
        let dt_seqs = Tensor::from_u32(ctx, &dest, &[batch, 2])?;
        let o = poisoned(ctx, &[batch, nh, hd], dt)?;
        let mut b = Batch::new(ctx);
        kv_write(&mut b, &cache, 0, &kt, &vt, &dt_seqs)?;
        let gin = gate.as_ref().map(|(t, _, l)| gate_input(t, *l));
        attention_decode_forward_with(&mut b, &cfg, &qt, &dt_seqs, &cache, 0, &o, gin)?;
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
    // StreamingLLM misuse.
    let table = |n_rot, positions| -> Result<Option<Arc<RopeTable>>> {
        Ok(Some(Arc::new(RopeTable::new(ctx, RopeConfig::new(n_rot, 1e4, RopeLayout::NeoX), positions)?)))
    };
    let streaming = |s, w, rope| {
        let mut c = cfg.clone();
        c.window = w;
        c.streaming = Some(Streaming { sink_tokens: s, rope });
        c
    };
    let stream_cache = KvCache::new(ctx, KvCacheKind::Streaming { sinks: 2 }, 1, 1, 8, 2, 64, dt)?;
    let good = streaming(2, Some(6), table(64, 8)?);
    let seq1 = Tensor::from_u32(ctx, &[0, 5, 0, 6, 0, 7], &[3, 2])?;
    let mut with_sinks = good.clone();
    with_sinks.sinks = Some(Tensor::empty(ctx, &[4], DType::F32)?);
    got.extend([
        KvCache::new(ctx, KvCacheKind::Streaming { sinks: 8 }, 1, 1, 8, 2, 64, dt).is_err(),
        attention_prefill_forward(&mut b, &streaming(2, None, None), &q, &kv, &kv, None, 0, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &with_sinks, &q, &kv, &kv, None, 0, &o, &lse).is_err(),
        attention_prefill_forward(&mut b, &streaming(2, Some(6), table(60, 8)?), &q, &kv, &kv, None, 0, &o, &lse)
            .is_err(),
        attention_prefill_forward(&mut b, &streaming(2, Some(6), table(64, 7)?), &q, &kv, &kv, None, 0, &o, &lse)
            .is_err(),
        attention_decode_forward(&mut b, &streaming(2, Some(7), table(64, 9)?), &q, &seq1, &stream_cache, 0, &o)
            .is_err(),
        attention_decode_forward(&mut b, &streaming(3, Some(5), table(64, 8)?), &q, &seq1, &stream_cache, 0, &o)
            .is_err(),
        attention_decode_forward(&mut b, &cfg, &q, &seq1, &stream_cache, 0, &o).is_err(),
        attention_decode_forward(&mut b, &streaming(2, Some(6), None), &q, &seq1, &rolling, 0, &o).is_err(),
    ]);
    // Gate and packed-document misuse.
    let g_small = Tensor::empty(ctx, &[3, 4], dt)?;
    let ds = Tensor::from_u32(ctx, &[0, 0, 2], &[3])?;
    let gate_at = |t, m| Some(GateInput::contiguous(t, m, 4, 64));
    let ins = |gate, doc_start| AttentionInputs { gate, doc_start };
    got.extend([
        attention_prefill_forward_with(
            &mut b,
            &cfg,
            &q,
            &kv,
            &kv,
            None,
            0,
            &o,
            &lse,
            ins(gate_at(&g_small, GateMode::Elementwise), None),
        )
        .is_err(),
        attention_prefill_forward_with(
            &mut b,
            &cfg,
            &q,
            &kv,
            &kv,
            None,
            0,
            &o,
            &lse,
            ins(gate_at(&lse, GateMode::Headwise), None),
        )
        .is_err(),
        attention_prefill_forward_with(&mut b, &cfg, &q, &kv, &kv, at(&full), 0, &o, &lse, ins(None, Some(&ds)))
            .is_err(),
        attention_prefill_forward_with(&mut b, &good, &q, &kv, &kv, None, 0, &o, &lse, ins(None, Some(&ds))).is_err(),
        attention_packed_forward(&mut b, &cfg, &q, &kv, &kv, &lse, &o, &lse, None).is_err(),
        attention_packed_forward(&mut b, &cfg, &q, &kv, &kv, &seqs, &o, &lse, None).is_err(),
        attention_decode_forward_with(&mut b, &cfg, &q, &seqs, &full, 0, &o, gate_at(&g_small, GateMode::Elementwise))
            .is_err(),
        attention_decode_forward_with(&mut b, &cfg, &q, &seqs, &full, 0, &o, gate_at(&o, GateMode::Elementwise))
            .is_err(),
    ]);
    if other != dt {
        let q2 = Tensor::empty(ctx, &[3, 4, 64], other)?;
        got.push(attention_prefill_forward(&mut b, &cfg, &q2, &kv, &kv, None, 0, &o, &lse).is_err());
    }
    let none_dispatched = b.is_empty();
    got.push(none_dispatched);
    let want = vec![true; got.len()];
    Ok(exact(ctx, "attention", format!("{} misuses rejected", got.len() - 1), dt, &got, &want, true))
}
