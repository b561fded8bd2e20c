//! A long generation with a sliding window: decode steps through a rolling KV cache that wraps
//! several times. GPU memory (tracked allocations) must stay flat — the cache is O(W), not
//! O(positions) — and the last step must equal attention over the last W positions.

mod common;

use pupil::gpu::DType;
use pupil::ops::attention::{AttentionConfig, KvCache, KvCacheKind};
use pupil::rng::SplitMix64;

#[test]
fn windowed_decode_keeps_memory_flat_and_exact() {
    let ctx = common::context(false, false).expect("f32 shared-memory path");
    let (n_heads, n_kv, hd, window) = (4, 2, 64, 64);
    let steps = 3 * window + 5;
    let mut cfg = AttentionConfig::new(n_heads, n_kv, hd);
    cfg.window = Some(window);
    let cache = KvCache::new(&ctx, KvCacheKind::Rolling, 1, 1, window, n_kv, hd, DType::F32).unwrap();
    assert_eq!(cache.layer_bytes(), 2 * (window * n_kv * hd * 4) as u64, "the cache is O(W)");

    let mut rng = SplitMix64::new(21);
    let mut keys: Vec<Vec<f32>> = Vec::new();
    let mut values: Vec<Vec<f32>> = Vec::new();
    let mut last = (Vec::new(), Vec::new());
    let mut memory = common::FlatMemory::default();
    for t in 0..steps {
        let q = rng.vec_nonzero(n_heads * hd, -1.0, 1.0);
        let k = rng.vec_nonzero(n_kv * hd, -1.0, 1.0);
        let v = rng.vec_nonzero(n_kv * hd, -1.0, 1.0);
        {
            let out = common::decode_step(&ctx, &cfg, &cache, t, (&q, &k, &v));
            if t == steps - 1 {
                last = (q.clone(), pollster::block_on(out.read_f32(&ctx)).unwrap());
            }
        }
        keys.push(k);
        values.push(v);
        // Everything of this step has been dropped: what is left is the cache alone.
        memory.after_step(&ctx, t);
    }
    memory.finish(&ctx);

    // Reference: the last query over the last W positions, GQA head h → kv head h / (n_heads / n_kv).
    let (q, got) = last;
    let scale = 1.0 / (hd as f64).sqrt();
    let lo = steps - window;
    let mut want = vec![0.0f64; n_heads * hd];
    for h in 0..n_heads {
        let kvh = h / (n_heads / n_kv);
        let logits: Vec<f64> = (lo..steps)
            .map(|p| (0..hd).map(|d| q[h * hd + d] as f64 * keys[p][kvh * hd + d] as f64).sum::<f64>() * scale)
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
        let z: f64 = w.iter().sum();
        for (i, p) in (lo..steps).enumerate() {
            for d in 0..hd {
                want[h * hd + d] += w[i] / z * values[p][kvh * hd + d] as f64;
            }
        }
    }
    let (d2, r2) = got.iter().zip(&want).fold((0.0, 0.0), |(d, r), (&g, &w)| (d + (g as f64 - w).powi(2), r + w * w));
    let rel = (d2 / r2).sqrt();
    println!(
        "{steps} decode steps through a {window}-slot rolling cache: flat at {} bytes, rel err {rel:.2e}",
        memory.bytes()
    );
    assert!(rel <= 1e-5, "rel err {rel}");
}
