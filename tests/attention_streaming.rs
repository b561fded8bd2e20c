//! StreamingLLM attention (sink tokens + window, RoPE at cache-relative positions) over long
//! generations, decode after prefill against a one-shot recomputation on the GPU, and the
//! WebGPU budgets (≤ 8 storage bindings, ≤ 16 KiB workgroup memory) of every attention and
//! gate variant.

mod common;

use std::sync::Arc;

use pupil::gpu::shader::{render, Dialect};
use pupil::gpu::{Batch, DType, GpuContext, Tensor};
use pupil::ops::attention::{
    attention_decode_forward_with, attention_prefill_forward, attention_prefill_forward_with, kv_write, kv_write_chunk,
    AttentionConfig, AttentionInputs, CacheSeq, GateInput, GateMode, KvCache, KvCacheKind, Streaming,
};
use pupil::ops::{RopeConfig, RopeLayout, RopeTable};
use pupil::reference::{self, AttentionSpec, StreamingSpec};
use pupil::rng::SplitMix64;

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let (d2, r2) = got.iter().zip(want).fold((0.0, 0.0), |(d, r), (&g, &w)| (d + (g as f64 - w).powi(2), r + w * w));
    (d2 / r2).sqrt()
}

fn streaming_cfg(
    ctx: &GpuContext,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    s: usize,
    w: usize,
) -> (AttentionConfig, RopeConfig) {
    let rope = RopeConfig::new(hd, 10000.0, RopeLayout::NeoX);
    let table = RopeTable::new(ctx, rope.clone(), s + w).unwrap();
    let mut cfg = AttentionConfig::new(n_heads, n_kv, hd);
    cfg.window = Some(w);
    cfg.streaming = Some(Streaming { sink_tokens: s, rope: Some(Arc::new(table)) });
    (cfg, rope)
}

/// A long generation through a streaming cache of S + W slots that wraps several times: tracked
/// GPU memory stays flat (the cache and the RoPE table are O(S + W), never O(positions)), and
/// the last steps equal StreamingLLM computed independently in f64.
#[test]
fn streaming_generation_keeps_memory_flat_and_exact() {
    let ctx = common::context(false, false).expect("f32 shared-memory path");
    let (n_heads, n_kv, hd, sinks, window) = (4, 2, 64, 4, 60);
    let slots = sinks + window;
    let steps = 4 * slots + 7;
    let (cfg, rope) = streaming_cfg(&ctx, n_heads, n_kv, hd, sinks, window);
    let cache = KvCache::new(&ctx, KvCacheKind::Streaming { sinks }, 1, 1, slots, n_kv, hd, DType::F32).unwrap();
    assert_eq!(cache.layer_bytes(), 2 * (slots * n_kv * hd * 4) as u64, "the cache is O(S + W)");

    let mut rng = SplitMix64::new(33);
    let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    let mut got_last = Vec::new();
    let mut memory = common::FlatMemory::default();
    for t in 0..steps {
        let q = rng.vec_nonzero(n_heads * hd, -1.0, 1.0);
        let k = rng.vec_nonzero(n_kv * hd, -1.0, 1.0);
        let v = rng.vec_nonzero(n_kv * hd, -1.0, 1.0);
        {
            let out = common::decode_step(&ctx, &cfg, &cache, t, (&q, &k, &v));
            if t + 3 >= steps {
                got_last.extend(pollster::block_on(out.read_f32(&ctx)).unwrap());
            }
        }
        qs.extend(q);
        ks.extend(k);
        vs.extend(v);
        // Everything of this step has been dropped: what is left is the cache and the table.
        memory.after_step(&ctx, t);
    }
    memory.finish(&ctx);

    let mut spec = AttentionSpec::new(n_heads, n_kv, hd, 1.0 / (hd as f64).sqrt());
    spec.window = Some(window);
    spec.streaming = Some(StreamingSpec { sink_tokens: sinks, rope: Some(rope) });
    let positions: Vec<usize> = (steps - 3..steps).collect();
    let (want, _) = reference::attention(&qs[(steps - 3) * n_heads * hd..], &positions, &ks, &vs, &spec);
    let rel = rel_err(&got_last, &want);
    println!(
        "{steps} decode steps through a {sinks}+{window}-slot streaming cache: flat at {} bytes, rel err {rel:.2e}",
        memory.bytes()
    );
    assert!(rel <= 1e-5, "rel err {rel}");
}

/// Prefill in chunks into a cache, then decode: every output equals one prefill of the whole
/// sequence without a cache (the GPU recomputing everything), for StreamingLLM and for plain
/// attention with an output gate.
#[test]
fn decode_after_prefill_equals_full_recomputation() {
    let ctx = common::context(false, false).expect("f32 shared-memory path");
    let (n_heads, n_kv, hd) = (6, 2, 128);
    let chunks = [13usize, 29, 5];
    let steps = 21;
    let total = chunks.iter().sum::<usize>() + steps;
    let mut rng = SplitMix64::new(44);
    let q = rng.vec_nonzero(total * n_heads * hd, -2.0, 2.0);
    let k = rng.vec_nonzero(total * n_kv * hd, -1.0, 1.0);
    let v = rng.vec_nonzero(total * n_kv * hd, -1.0, 1.0);
    let gate = rng.vec_nonzero(total * n_heads, -4.0, 4.0);
    let (sinks, window) = (3, 17);
    let streaming = streaming_cfg(&ctx, n_heads, n_kv, hd, sinks, window).0;
    let plain = AttentionConfig::new(n_heads, n_kv, hd);
    let (qrow, kvrow) = (n_heads * hd, n_kv * hd);
    let t = |d: &[f32], rows: std::ops::Range<usize>, w: usize, shape: &[usize]| {
        Tensor::from_f32(&ctx, &d[rows.start * w..rows.end * w], shape, DType::F32).unwrap()
    };
    for (name, cfg, kind, gated) in [
        ("streaming", &streaming, KvCacheKind::Streaming { sinks }, false),
        ("full, headwise gate", &plain, KvCacheKind::Full, true),
    ] {
        let slots = if gated { total } else { sinks + window };
        let cache = KvCache::new(&ctx, kind, 1, 1, slots, n_kv, hd, DType::F32).unwrap();
        let gate_t = |rows: std::ops::Range<usize>| t(&gate, rows.clone(), n_heads, &[rows.len(), n_heads]);
        // One shot, no cache.
        let o_all = Tensor::empty(&ctx, &[total, n_heads, hd], DType::F32).unwrap();
        let lse_all = Tensor::empty(&ctx, &[total, n_heads], DType::F32).unwrap();
        let g_all = gate_t(0..total);
        let gi = gated.then(|| GateInput::contiguous(&g_all, GateMode::Headwise, n_heads, hd));
        let mut b = Batch::new(&ctx);
        let ins = AttentionInputs { gate: gi, doc_start: None };
        let (qa, ka, va) = (
            t(&q, 0..total, qrow, &[total, n_heads, hd]),
            t(&k, 0..total, kvrow, &[total, n_kv, hd]),
            t(&v, 0..total, kvrow, &[total, n_kv, hd]),
        );
        attention_prefill_forward_with(&mut b, cfg, &qa, &ka, &va, None, 0, &o_all, &lse_all, ins).unwrap();
        b.submit();
        let want: Vec<f64> = pollster::block_on(o_all.read_f32(&ctx)).unwrap().into_iter().map(f64::from).collect();

        // Chunks, then decode steps.
        let mut got = Vec::new();
        let mut pos = 0;
        for &n in &chunks {
            let r = pos..pos + n;
            let (qc, kc, vc) = (
                t(&q, r.clone(), qrow, &[n, n_heads, hd]),
                t(&k, r.clone(), kvrow, &[n, n_kv, hd]),
                t(&v, r.clone(), kvrow, &[n, n_kv, hd]),
            );
            let o = Tensor::empty(&ctx, &[n, n_heads, hd], DType::F32).unwrap();
            let lse = Tensor::empty(&ctx, &[n, n_heads], DType::F32).unwrap();
            let g = gate_t(r.clone());
            let ins = AttentionInputs {
                gate: gated.then(|| GateInput::contiguous(&g, GateMode::Headwise, n_heads, hd)),
                doc_start: None,
            };
            let mut b = Batch::new(&ctx);
            let at = Some(CacheSeq { cache: &cache, layer: 0, seq: 0 });
            if gated {
                attention_prefill_forward_with(&mut b, cfg, &qc, &kc, &vc, at, pos, &o, &lse, ins).unwrap();
            } else {
                attention_prefill_forward(&mut b, cfg, &qc, &kc, &vc, at, pos, &o, &lse).unwrap();
            }
            kv_write_chunk(&mut b, &cache, 0, 0, pos, &kc, &vc).unwrap();
            b.submit();
            got.extend(pollster::block_on(o.read_f32(&ctx)).unwrap());
            pos += n;
        }
        for _ in 0..steps {
            let r = pos..pos + 1;
            let (qc, kc, vc) = (
                t(&q, r.clone(), qrow, &[1, n_heads, hd]),
                t(&k, r.clone(), kvrow, &[1, kvrow]),
                t(&v, r.clone(), kvrow, &[1, kvrow]),
            );
            let seqs = Tensor::from_u32(&ctx, &[0, pos as u32], &[1, 2]).unwrap();
            let o = Tensor::empty(&ctx, &[1, n_heads, hd], DType::F32).unwrap();
            let g = gate_t(r);
            let gi = gated.then(|| GateInput::contiguous(&g, GateMode::Headwise, n_heads, hd));
            let mut b = Batch::new(&ctx);
            kv_write(&mut b, &cache, 0, &kc, &vc, &seqs).unwrap();
            attention_decode_forward_with(&mut b, cfg, &qc, &seqs, &cache, 0, &o, gi).unwrap();
            b.submit();
            got.extend(pollster::block_on(o.read_f32(&ctx)).unwrap());
            pos += 1;
        }
        let rel = rel_err(&got, &want);
        println!("{name}: chunks {chunks:?} + {steps} decode steps vs one shot of {total}: rel {rel:.2e}");
        assert!(rel <= 1e-5, "{name}: rel err {rel}");
    }
}

/// Every attention and gate variant keeps to the WebGPU defaults this project targets.
#[test]
fn every_attention_variant_fits_webgpu_defaults() {
    let mut variants = pupil::ops::attention::variants();
    variants.extend(pupil::ops::gate::variants());
    for key in &variants {
        let src = render(key, Dialect::Naga).unwrap();
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{key}: {e}"));
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let (mut storage, mut shared) = (0, 0u32);
        for (_, g) in module.global_variables.iter() {
            match g.space {
                naga::AddressSpace::Storage { .. } => storage += 1,
                naga::AddressSpace::WorkGroup => shared += layouter[g.ty].size,
                _ => {}
            }
        }
        assert!(storage <= 8, "{key}: {storage} storage bindings");
        assert!(shared <= 16384, "{key}: {shared} bytes of workgroup memory");
    }
    println!("{} attention and gate variants within 8 storage bindings and 16 KiB", variants.len());
}
