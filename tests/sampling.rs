//! Token sampling natively: the cross-platform determinism stream (written for the browser
//! test to compare), the full `sample()` pipeline against the reference by χ², a
//! Gemma-sized vocabulary, and the exactness rule of `kept_len` on hand-made candidates.
//! The kernel and distribution checks themselves are the `sampling` self-test family
//! (`tests/kernels.rs`, all four paths, and the browser).

mod common;

use pupil::reference::sampling::{distribution, process_logits};
use pupil::rng::SplitMix64;
use pupil::sampling::{determinism_stream, kept_len, SamplePath, Sampler, SamplerConfig, TOP_P_MARGIN};
use pupil::selftest::{chi_square, dense, CHI2_ALPHA};
use pupil::{Batch, DType, Tensor};

/// Where the native stream goes for `tests/browser/run.mjs` (same default there).
fn stream_path() -> std::path::PathBuf {
    match std::env::var_os("PUPIL_SAMPLING_STREAM") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("pupil-sampling-native.json"),
    }
}

#[test]
fn determinism_stream_is_path_independent_and_written_for_the_browser() {
    // The browser runs f32 storage and shared-memory reductions: the stream must not depend
    // on the reduction path (it uploads f32 logits whatever the device has).
    let shm = common::context_with(pupil::ContextOptions { allow_subgroups: false, ..Default::default() });
    let full = common::full_context();
    let a = pollster::block_on(determinism_stream(&shm)).unwrap();
    let b = pollster::block_on(determinism_stream(&full)).unwrap();
    let tokens = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["streams"].as_array().unwrap().iter().map(|s| s["tokens"].clone()).collect()
    };
    assert_eq!(tokens(&a), tokens(&b), "subgroup and shared-memory runs differ");
    let (mut cand, mut full_row) = (0, 0);
    for s in a["streams"].as_array().unwrap() {
        println!("{:<16} {} (candidates {}, full row {})", s["name"], s["tokens"], s["candidates"], s["full_row"]);
        cand += s["candidates"].as_u64().unwrap();
        full_row += s["full_row"].as_u64().unwrap();
    }
    assert!(cand > 0 && full_row > 0, "the stream should take both routes");
    let path = stream_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&a).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

#[test]
fn sample_calls_match_the_reference_by_chi_square() {
    // 3000 full GPU round trips (kernels, readback, host decision, draw) per configuration.
    let ctx = common::full_context();
    let mut rng = SplitMix64::new(0x5EED_0020);
    const VOCAB: usize = 120;
    let x: Vec<f32> = (0..VOCAB).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let recent: Vec<u32> = (0..8).map(|_| rng.below(VOCAB as u32)).collect();
    let xt = Tensor::from_f32(&ctx, &x, &[1, VOCAB], DType::F32).unwrap();
    let configs = [
        SamplerConfig { top_k: 12, seed: 1, ..Default::default() },
        SamplerConfig { temperature: 0.8, top_p: 0.7, repetition_penalty: 1.3, seed: 2, ..Default::default() },
    ];
    for cfg in configs {
        let mut s = Sampler::new(cfg.clone()).unwrap();
        let mut counts = vec![0u64; VOCAB];
        for _ in 0..3000 {
            counts[pollster::block_on(s.sample(Batch::new(&ctx), &xt, &recent)).unwrap() as usize] += 1;
        }
        let want = distribution(&process_logits(&x, &recent, &cfg), &cfg);
        let chi = chi_square(&counts, &want);
        println!("{cfg:?}: {chi} ({:?})", s.stats());
        assert!(chi.accepts(), "sample() rejected at alpha {CHI2_ALPHA}: {chi}");
    }
}

#[test]
fn gemma_sized_vocabulary() {
    // 262144 logits: the candidates decide top-p, top-k and greedy, identically to the full row.
    let ctx = common::full_context();
    let mut rng = SplitMix64::new(0x5EED_0021);
    const VOCAB: usize = 262_144;
    // Like a language model's row: a hundred likely tokens well above a long tail.
    let x: Vec<f32> = (0..VOCAB)
        .map(|i| if i % 2621 == 7 { 20.0 + 5.0 * rng.uniform(0.0, 1.0) } else { 10.0 * rng.uniform(-1.0, 1.0) })
        .collect();
    let xt = Tensor::from_f32(&ctx, &x, &[VOCAB], DType::F32).unwrap();
    for cfg in [
        SamplerConfig { top_p: 0.9, ..Default::default() },
        SamplerConfig { top_k: 40, temperature: 0.7, ..Default::default() },
        SamplerConfig::greedy(),
    ] {
        let fast =
            pollster::block_on(Sampler::new(cfg.clone()).unwrap().distribution(Batch::new(&ctx), &xt, &[])).unwrap();
        let slow = pollster::block_on(Sampler::new(cfg.clone()).unwrap().with_candidates(0).unwrap().distribution(
            Batch::new(&ctx),
            &xt,
            &[],
        ))
        .unwrap();
        assert_eq!(fast.path(), SamplePath::Candidates, "{cfg:?}");
        assert_eq!(fast.tokens(), slow.tokens(), "{cfg:?}");
        assert_eq!(fast.weights(), slow.weights(), "{cfg:?}");
        let want = distribution(&process_logits(&x, &[], &cfg), &cfg);
        let got = dense(&fast, VOCAB);
        let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max < 1e-6, "{cfg:?}: max |dp| {max}");
        println!("{cfg:?}: {} kept, {:?}", fast.tokens().len(), fast.path());
    }
}

/// Sorted candidates with logits `l` (index = position).
fn cands(l: &[f32]) -> Vec<(u32, f32)> {
    l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect()
}

#[test]
fn exactness_rule_on_hand_made_candidates() {
    let ln2 = std::f32::consts::LN_2;
    // Four candidates with weights 8, 4, 2, 1 (relative to the first), the rest of the row
    // unknown; lse chosen so the whole row's mass is 20 (candidates: 15 = 0.75).
    let c = cands(&[3.0 * ln2, 2.0 * ln2, ln2, 0.0]);
    let lse = (3.0 * ln2) as f64 + (20.0f64 / 8.0).ln();
    let cfg = |top_k: usize, top_p: f32, min_p: f32| SamplerConfig { top_k, top_p, min_p, ..Default::default() };
    // No truncation: needs the row.
    assert_eq!(kept_len(&cfg(0, 1.0, 0.0), &c, false, lse), None);
    // top-k inside the candidates: exact, and top-p is taken inside the top-k set.
    assert_eq!(kept_len(&cfg(3, 1.0, 0.0), &c, false, lse), Some(3));
    // 8/14 < 0.6 ≤ 12/14
    assert_eq!(kept_len(&cfg(3, 0.6, 0.0), &c, false, lse), Some(2));
    // top-k past the candidates: the row decides, unless min-p cuts inside.
    assert_eq!(kept_len(&cfg(10, 1.0, 0.0), &c, false, lse), None);
    // weights ≥ 0.3·8
    assert_eq!(kept_len(&cfg(10, 1.0, 0.3), &c, false, lse), Some(2));
    // min-p keeping every candidate: tokens past them might qualify.
    assert_eq!(kept_len(&cfg(0, 1.0, 0.1), &c, false, lse), None);
    // top-p over the row's mass 20: prefixes reach 8/20, 12/20, 14/20, 15/20.
    assert_eq!(kept_len(&cfg(0, 0.5, 0.0), &c, false, lse), Some(2));
    assert_eq!(kept_len(&cfg(0, 0.65, 0.0), &c, false, lse), Some(3));
    // exactly 14/20: too close to call
    assert_eq!(kept_len(&cfg(0, 0.7, 0.0), &c, false, lse), None);
    // not reached inside
    assert_eq!(kept_len(&cfg(0, 0.9, 0.0), &c, false, lse), None);
    // Within the margin of a prefix: refuse (the f32 lse could be off by that much).
    let near = (0.6 * (1.0 + TOP_P_MARGIN / 2.0)) as f32;
    assert_eq!(kept_len(&cfg(0, near, 0.0), &c, false, lse), None);
    // top-p not reached, but min-p cuts first: exact.
    // 2/8 ≥ 0.2 > 1/8
    assert_eq!(kept_len(&cfg(0, 0.9, 0.2), &c, false, lse), Some(3));
    // A complete row decides everything, and greedy always.
    assert_eq!(kept_len(&cfg(0, 1.0, 0.0), &c, true, 0.0), Some(4));
    // 12/15 < 0.9 ≤ 14/15
    assert_eq!(kept_len(&cfg(0, 0.9, 0.0), &c, true, 0.0), Some(3));
    assert_eq!(kept_len(&SamplerConfig::greedy(), &c, false, lse), Some(1));
}
