//! Token sampling natively: the cross-platform determinism stream (written for the browser
//! test to compare), the full `sample()` pipeline against the reference by χ², a
//! Gemma-sized vocabulary, and the exactness rule of `kept_len` on hand-made candidates.
//! The kernel and distribution checks themselves are the `sampling` self-test family
//! (`tests/kernels.rs`, all four paths, and the browser).

mod common;

use pupil::reference::distill_loss::log_softmax;
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

/// Logprobs are the raw row's log-softmax whatever the sampling (greedy, top-k, top-p with a
/// penalty on the likeliest tokens, plain high temperature: both readback routes), for f32 and
/// f16 logits and one to several rows; asking for them leaves every drawn token as it was.
#[test]
fn logprobs_are_the_raw_log_softmax_and_change_no_draw() {
    let ctx = common::full_context();
    let mut rng = SplitMix64::new(0x5EED_0022);
    for (vocab, rows, dtype) in [(49_152usize, 1usize, DType::F32), (1_000, 3, DType::F32), (4_097, 2, DType::F16)] {
        if dtype == DType::F16 && !ctx.caps.f16 {
            continue;
        }
        let x: Vec<f32> = (0..rows * vocab).map(|_| rng.uniform(-8.0, 8.0)).collect();
        // f16 logits: the reference sees the values the GPU holds.
        let x: Vec<f32> =
            if dtype == DType::F16 { x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect() } else { x };
        let xt = Tensor::from_f32(&ctx, &x, &[rows, vocab], dtype).unwrap();
        let refs: Vec<Vec<f64>> =
            x.chunks(vocab).map(|r| log_softmax(&r.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1.0)).collect();
        // The likeliest ten tokens of each row are penalised: drawn tokens often lie outside the top.
        let recent: Vec<Vec<u32>> = refs
            .iter()
            .map(|r| {
                let mut ids: Vec<u32> = (0..vocab as u32).collect();
                ids.sort_by(|&a, &b| r[b as usize].total_cmp(&r[a as usize]));
                ids[..10].to_vec()
            })
            .collect();
        let configs = [
            (SamplerConfig::greedy(), 5),
            (SamplerConfig { temperature: 0.8, top_k: 40, seed: 3, ..Default::default() }, 0),
            (
                SamplerConfig { temperature: 1.5, top_p: 0.9, repetition_penalty: 1.5, seed: 4, ..Default::default() },
                20,
            ),
            (SamplerConfig { temperature: 2.0, repetition_penalty: 0.8, seed: 5, ..Default::default() }, 3),
        ];
        for (cfg, top) in configs {
            let mut plain: Vec<Sampler> = (0..rows).map(|_| Sampler::new(cfg.clone()).unwrap()).collect();
            let mut logged: Vec<Sampler> =
                (0..rows).map(|_| Sampler::new(cfg.clone()).unwrap().with_logprobs(top).unwrap()).collect();
            let recent: Vec<&[u32]> = recent.iter().map(|r| &r[..]).collect();
            let (mut worst, mut outside) = (0.0f64, 0);
            for _ in 0..12 {
                let a = pollster::block_on(Sampler::sample_batch(&mut plain, Batch::new(&ctx), &xt, &recent)).unwrap();
                let b = pollster::block_on(Sampler::sample_batch(&mut logged, Batch::new(&ctx), &xt, &recent)).unwrap();
                assert_eq!(a, b, "{cfg:?}: logprobs changed a draw");
                for (r, s) in logged.iter_mut().enumerate() {
                    assert!(plain[r].take_logprobs().is_none());
                    let lp = s.take_logprobs().expect("logprobs of the draw");
                    assert!(s.take_logprobs().is_none(), "taken once");
                    assert_eq!(lp.token, b[r]);
                    let want = &refs[r];
                    worst = worst.max((lp.logprob as f64 - want[lp.token as usize]).abs());
                    let mut order: Vec<u32> = (0..vocab as u32).collect();
                    order.sort_by(|&p, &q| want[q as usize].total_cmp(&want[p as usize]).then(p.cmp(&q)));
                    outside += usize::from(!order[..top.max(1)].contains(&lp.token));
                    assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), order[..top], "{cfg:?}: top ids");
                    for &(id, l) in &lp.top {
                        worst = worst.max((l as f64 - want[id as usize]).abs());
                    }
                }
            }
            println!("vocab {vocab} × {rows} {}, {cfg:?}, top {top}: worst |Δ logprob| {worst:.2e}, {outside} drawn outside the top", dtype.name());
            // The GPU's f32 log-sum-exp over up to 49152 values (|lse| ≈ 10; measured ≤ 1.2e-6).
            assert!(worst < 1e-5, "{cfg:?}: logprob error {worst}");
            // Tokens drawn outside the raw top: their logit recovered from the processed one.
            assert!(cfg.is_greedy() || outside > 0, "{cfg:?}: every draw was inside the top");
        }
    }
    assert!(Sampler::new(SamplerConfig::greedy()).unwrap().with_logprobs(21).is_err(), "top_logprobs over 20");
}
