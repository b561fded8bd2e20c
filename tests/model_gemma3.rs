//! Gemma 3 270M (Q4_K_M, the real file from PyPI) against PyTorch + transformers loading the same
//! GGUF in float32 (tests/fixtures/model/gemma3_logits.*, scripts/fixtures/make_gemma3_fixtures.py;
//! CI never runs Python). What it checks that the other architectures do not: interleaved
//! sliding-window layers (window 512 on five of every six layers, each kind with its own RoPE
//! base) on a prompt longer than the window, QK-norm at head_dim 256, the sandwich norms, the
//! √hidden embedding scale, the GELU-tanh MLP, and a 262144 × 640 tied embedding split across
//! storage bindings, in every one of its formats (Q4_K, Q5_0, Q6_K, Q8_0, F32). f16 activations
//! overflow for Gemma (its residual stream passes 65504), so that path is refused, and tested
//! to be.
//!
//! The file is fetched by `scripts/fetch-model.sh gemma3`; the tests skip when it is absent unless
//! PUPIL_REQUIRE_MODELS=1 (as CI sets).

mod common;

use std::path::{Path, PathBuf};

use common::{json_ids as ids, rel_err};
use pupil::engine::{generate, Flow, GenerateOptions, Session};
use pupil::gpu::DType;
use pupil::model::{LlamaModel, ModelOptions};
use pupil::sampling::{Sampler, SamplerConfig};
use pupil::GpuContext;
use serde_json::Value as Json;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

fn fixture() -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("gemma3_logits.json")).unwrap()).unwrap()
}

fn floats(v: &Json) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn greedy(ctx: &GpuContext, session: &mut Session, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    pollster::block_on(generate(
        ctx,
        session,
        prompt,
        &GenerateOptions { max_tokens: n, stop_tokens: vec![] },
        &mut Sampler::new(SamplerConfig::greedy()).unwrap(),
        &mut |id| {
            out.push(id);
            Flow::Continue
        },
    ))
    .unwrap();
    out
}

/// Last-position logits within `tolerance` (relative L2) at every checkpoint — a short chat turn,
/// 600 tokens of a long text and the whole of it (> 512: the local layers see only their window,
/// and their 640-slot rolling caches wrap) — and the greedy continuations identical up to the
/// first step where the reference's own top-2 gap falls below `tie_gap`. A checkpoint whose ids
/// extend the previous one's continues its session (prefill is the slow part on a CPU driver),
/// and a greedy continuation starts from the session that was just checked.
fn gemma3_against_reference(dtype: DType, tolerance: f64, tie_gap: f32) {
    let Some(file) = common::gemma3() else { return };
    let ctx = common::full_context();
    let opts = ModelOptions { dtype: Some(dtype), context: Some(1024), chunk: 128, ..ModelOptions::default() };
    let model = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
    let fx = fixture();
    assert_eq!(model.config.architecture, "gemma3");
    assert_eq!(model.config.vocab_size as u64, fx["meta"]["vocab"].as_u64().unwrap());
    let local: Vec<bool> = (0..model.config.n_layers).map(|i| model.config.layer_window(i).is_some()).collect();
    let want_local: Vec<bool> =
        fx["meta"]["layer_types"].as_array().unwrap().iter().map(|t| t == "sliding_attention").collect();
    assert_eq!(local, want_local, "which layers slide");
    let mut session = Session::new(&ctx, &model).unwrap();
    for c in fx["checkpoints"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let prompt = ids(&c["input_ids"]);
        let raw = std::fs::read(fixture_dir().join(format!("gemma3_logits.{name}.f32.bin"))).unwrap();
        let want: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let held = session.tokens().to_vec();
        if held.len() > prompt.len() || prompt[..held.len()] != held[..] {
            session.rollback(0).unwrap();
        }
        let done = session.len();
        session.feed(&ctx, &prompt[done..]).unwrap();
        let got = pollster::block_on(session.logits().unwrap().read_f32(&ctx)).unwrap();
        let err = rel_err(&got, &want);
        println!("gemma3 {name} ({} tokens, {}): last logits rel err {err:.2e}", prompt.len(), dtype.name());
        assert!(err < tolerance, "{name}: relative logit error {err:.3e} over {tolerance:.0e}");
        let Some(want_tokens) = c.get("greedy").map(ids) else { continue };
        let gaps = floats(&c["greedy_gaps"]);
        let got_tokens = greedy(&ctx, &mut session, &prompt, want_tokens.len());
        let must_agree = gaps.iter().position(|&g| g < tie_gap).unwrap_or(gaps.len());
        let agree = got_tokens.iter().zip(&want_tokens).take_while(|(a, b)| a == b).count();
        println!("gemma3 {name} ({}): greedy agrees for {agree}/{} (required {must_agree})", dtype.name(), gaps.len());
        assert!(agree >= must_agree, "{name}: greedy diverges at {agree}: got {got_tokens:?}, want {want_tokens:?}");
    }
}

/// f32: logits within 1e-3 and greedy identical wherever the reference is not a near tie.
#[test]
fn gemma3_f32_matches_transformers() {
    gemma3_against_reference(DType::F32, 1e-3, 1e-3);
}

/// Gemma's residual stream holds values past f16's range (its "massive activations"): an f16
/// load is refused with a clear error before anything is allocated, rather than giving NaN.
#[test]
fn gemma3_refuses_f16_activations_before_allocating() {
    let Some(file) = common::gemma3() else { return };
    let ctx = common::full_context();
    if !ctx.caps.f16 {
        eprintln!("skipped: no shader-f16");
        return;
    }
    let before = ctx.memory.current_bytes();
    let opts = ModelOptions { dtype: Some(DType::F16), context: Some(1024), ..ModelOptions::default() };
    let err = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).err().expect("an f16 gemma3 load must fail");
    assert_eq!(err.kind(), "Unsupported", "{err}");
    assert!(err.to_string().contains("f32"), "the error says what to do: {err}");
    assert_eq!(ctx.memory.current_bytes(), before, "nothing allocated");
}
