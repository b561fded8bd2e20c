//! The llama forward pass and generation against an independent reference: PyTorch +
//! transformers loading the same GGUF in float32 (fixtures in tests/fixtures/model/, made by
//! scripts/fixtures/make_model_fixtures.py; CI never runs Python). Also the engine's own
//! consistency (decode after prefill = recomputation, chunked = one-shot, cache reuse and
//! rollback, batched decode = single) and the loader's typed errors.
//!
//! The real SmolLM2 file is fetched by scripts/fetch-model.sh; its tests skip when it is
//! absent unless PUPIL_REQUIRE_MODELS=1 (as CI sets). The tiny llama-3 fixture is committed.

mod common;

use std::path::{Path, PathBuf};

use common::{json_ids as ids, rel_err};
use pupil::engine::{generate, GenerateOptions, Session};
use pupil::gpu::DType;
use pupil::model::gguf::{parse_header, GgufWriter, Value};
use pupil::model::{synth, LlamaModel, Logits, ModelOptions};
use pupil::reference::distill_loss::log_softmax;
use pupil::sampling::{Sampler, SamplerConfig};
use pupil::{GpuContext, PupilError};
use serde_json::Value as Json;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

fn json(name: &str) -> Json {
    let text = std::fs::read_to_string(fixture_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Json) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn load(ctx: &GpuContext, file: &[u8], dtype: DType, chunk: usize, batch: usize) -> LlamaModel {
    let opts =
        ModelOptions { dtype: Some(dtype), context: Some(512), chunk, max_batch: batch, ..ModelOptions::default() };
    LlamaModel::load(ctx, file, &opts, &mut |_, _| {}).unwrap()
}

fn read(ctx: &GpuContext, model: &LlamaModel, rows: usize) -> Vec<f32> {
    pollster::block_on(model.logits(rows).unwrap().read_f32(ctx)).unwrap()
}

fn greedy(ctx: &GpuContext, model: &LlamaModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut session = Session::new(ctx, model).unwrap();
    let opts = GenerateOptions { max_tokens: n, stop_tokens: vec![] };
    let mut out = Vec::new();
    pollster::block_on(generate(
        ctx,
        &mut session,
        prompt,
        &opts,
        &mut Sampler::new(SamplerConfig::greedy()).unwrap(),
        &mut |id| {
            out.push(id);
            pupil::engine::Flow::Continue
        },
    ))
    .unwrap();
    out
}

/// Each prompt's last-position logits within 1e-3 of the reference and its 32-token greedy
/// continuation identical (f32). The f16 path: the same tokens up to the first step where the
/// reference's top-2 gap is below 1e-2 — checked against a stated logit error.
fn smollm2_against_reference(dtype: DType) {
    let Some(file) = common::smollm2() else { return };
    let ctx = common::full_context();
    if dtype == DType::F16 && !ctx.caps.f16 {
        eprintln!("skipped: no shader-f16");
        return;
    }
    let model = load(&ctx, &file, dtype, 128, 1);
    let fixture = json("smollm2_logits.json");
    let tolerance = if dtype == DType::F32 { 1e-3 } else { 2e-2 };
    for p in fixture["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = ids(&p["input_ids"]);
        let raw = std::fs::read(fixture_dir().join(p["last_logits_file"].as_str().unwrap())).unwrap();
        let want: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let cache = model.new_cache(&ctx, 1).unwrap();
        let mut pos = 0;
        for chunk in prompt.chunks(model.chunk) {
            model.forward(&ctx, &cache, 0, pos, chunk, Logits::Last).unwrap();
            pos += chunk.len();
        }
        let got = read(&ctx, &model, 1);
        let err = rel_err(&got, &want);
        println!("{name} ({} tokens, {}): last logits rel err {err:.2e}", prompt.len(), dtype.name());
        assert!(err < tolerance, "{name}: relative logit error {err:.3e} over {tolerance:.0e}");

        let want_tokens = ids(&p["greedy_32"]);
        let gaps = floats(&p["greedy_top2_gap"]);
        let got_tokens = greedy(&ctx, &model, &prompt, want_tokens.len());
        // f32 must agree everywhere; f16 until the reference itself is nearly tied.
        let must_agree = match dtype {
            DType::F32 => want_tokens.len(),
            _ => gaps.iter().position(|&g| g < 1e-2).unwrap_or(gaps.len()),
        };
        let agree = got_tokens.iter().zip(&want_tokens).take_while(|(a, b)| a == b).count();
        println!("{name}: greedy agrees for {agree}/{} tokens (required {must_agree})", want_tokens.len());
        assert!(
            agree >= must_agree,
            "{name}: greedy diverges at step {agree}: got {got_tokens:?}, want {want_tokens:?}"
        );
    }
}

#[test]
fn smollm2_f32_matches_transformers() {
    smollm2_against_reference(DType::F32);
}

#[test]
fn smollm2_f16_matches_transformers_within_stated_error() {
    smollm2_against_reference(DType::F16);
}

#[test]
fn smollm2_perplexity_matches_transformers() {
    let Some(file) = common::smollm2() else { return };
    let ctx = common::full_context();
    let model = load(&ctx, &file, DType::F32, 64, 1);
    let fixture = json("smollm2_perplexity.json");
    let prompt = ids(&fixture["input_ids"]);
    let want = floats(&fixture["nll"]);
    let report = pollster::block_on(pupil::engine::perplexity(&ctx, &model, &prompt, &mut |_, _| {})).unwrap();
    let worst = report.nll.iter().zip(&want).map(|(a, &b)| (a - b as f64).abs()).fold(0.0, f64::max);
    let want_mean = fixture["mean_nll"].as_f64().unwrap();
    println!(
        "perplexity {:.4} (reference {:.4}), worst per-token NLL error {worst:.2e}",
        report.perplexity,
        want_mean.exp()
    );
    assert_eq!(report.scored, want.len());
    assert!(worst < 2e-3, "per-token NLL error {worst}");
    assert!((report.mean_nll - want_mean).abs() < 1e-4);
}

/// Q8_0 weights, untied head, llama-3 RoPE factors (`rope_freqs.weight`) and GGUF's Q/K
/// permutation: every position's logits against the reference, and greedy tokens.
#[test]
fn tiny_llama3_matches_transformers_every_position() {
    let file = std::fs::read(fixture_dir().join("tiny_llama3.gguf")).unwrap();
    let fixture = json("tiny_llama3.json");
    for (f16, sub) in [(false, true), (true, true), (false, false)] {
        let Some(ctx) = common::context(f16, sub) else { continue };
        let dtype = if f16 { DType::F16 } else { DType::F32 };
        let tolerance = if f16 { 5e-3 } else { 1e-4 };
        // chunk 16: the 40- and 100-token sequences run in several chunks against the cache.
        let model = load(&ctx, &file, dtype, 16, 1);
        assert!(!model.config.tied_embeddings);
        for s in fixture["sequences"].as_array().unwrap() {
            let prompt = ids(&s["input_ids"]);
            let want: Vec<f32> = s["logits"].as_array().unwrap().iter().flat_map(floats).collect();
            let cache = model.new_cache(&ctx, 1).unwrap();
            let mut got = Vec::new();
            let mut pos = 0;
            for chunk in prompt.chunks(model.chunk) {
                model.forward(&ctx, &cache, 0, pos, chunk, Logits::All).unwrap();
                got.extend(read(&ctx, &model, chunk.len()));
                pos += chunk.len();
            }
            let err = rel_err(&got, &want);
            println!("tiny llama3 {} {}: all-position logits rel err {err:.2e}", s["name"], dtype.name());
            assert!(err < tolerance, "{}: {err}", s["name"]);
            if let Some(g) = s.get("greedy_16") {
                let want_tokens = ids(g);
                assert_eq!(greedy(&ctx, &model, &prompt, want_tokens.len()), want_tokens, "{}", s["name"]);
            }
        }
    }
}

/// Logprobs of a prompt's next token (`Sampler::with_logprobs`) against the log-softmax of
/// transformers' logits at the prompt's last position: the same top 5, within 1e-4.
#[test]
fn tiny_llama3_logprobs_match_transformers() {
    let file = std::fs::read(fixture_dir().join("tiny_llama3.gguf")).unwrap();
    let fixture = json("tiny_llama3.json");
    let ctx = common::full_context();
    let model = load(&ctx, &file, DType::F32, 16, 1);
    for s in fixture["sequences"].as_array().unwrap() {
        let prompt = ids(&s["input_ids"]);
        let rows = s["logits"].as_array().unwrap();
        let last = floats(rows.last().unwrap());
        let want = log_softmax(&last.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1.0);
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let mut session = Session::new(&ctx, &model).unwrap();
        session.set_prompt(&ctx, &prompt).unwrap();
        let cfg = SamplerConfig { temperature: 0.9, top_k: 20, seed: 7, ..SamplerConfig::default() };
        let mut sampler = Sampler::new(cfg).unwrap().with_logprobs(5).unwrap();
        let token =
            pollster::block_on(sampler.sample(pupil::Batch::new(&ctx), &session.logits().unwrap(), &prompt)).unwrap();
        let lp = sampler.take_logprobs().unwrap();
        assert_eq!(lp.token, token);
        let top: Vec<usize> = lp.top.iter().map(|t| t.0 as usize).collect();
        assert_eq!(top, order[..5], "{}: top 5", s["name"]);
        let mut worst = (lp.logprob as f64 - want[token as usize]).abs();
        for &(id, l) in &lp.top {
            worst = worst.max((l as f64 - want[id as usize]).abs());
        }
        println!(
            "{}: token {token} logprob {:.4}, worst error against transformers {worst:.2e}",
            s["name"], lp.logprob
        );
        assert!(worst < 1e-4, "{}: {worst}", s["name"]);
    }
}

/// Engine consistency on the real model (f32): decode = recomputation, chunked prefill =
/// one-shot, cache reuse and rollback, batched decode = single-sequence decode.
#[test]
fn smollm2_engine_paths_agree() {
    let Some(file) = common::smollm2() else { return };
    let ctx = common::full_context();
    let prompt = ids(&json("smollm2_logits.json")["prompts"][2]["input_ids"]);
    let prompt = &prompt[..40];
    let one_shot = load(&ctx, &file, DType::F32, 64, 3);
    let cache = one_shot.new_cache(&ctx, 3).unwrap();
    assert_eq!(one_shot.cache_bytes(3), cache.layer_bytes() * one_shot.config.n_layers as u64);
    one_shot.forward(&ctx, &cache, 0, 0, prompt, Logits::Last).unwrap();
    let full = read(&ctx, &one_shot, 1);

    // Chunks of 7 against the cache.
    let chunked = load(&ctx, &file, DType::F32, 7, 1);
    let c2 = chunked.new_cache(&ctx, 1).unwrap();
    for (i, chunk) in prompt.chunks(7).enumerate() {
        chunked.forward(&ctx, &c2, 0, i * 7, chunk, Logits::Last).unwrap();
    }
    let err = rel_err(&read(&ctx, &chunked, 1), &full);
    println!("chunked (7) vs one-shot prefill: {err:.2e}");
    assert!(err < 1e-5);

    // Prefill 39, then decode the 40th.
    one_shot.forward(&ctx, &cache, 1, 0, &prompt[..39], Logits::Last).unwrap();
    one_shot.decode(&ctx, &cache, &[(1, 39, prompt[39])]).unwrap();
    let err = rel_err(&read(&ctx, &one_shot, 1), &full);
    println!("decode after prefill vs recomputation: {err:.2e}");
    assert!(err < 1e-5);

    // Three sequences of different lengths in one decode batch = each alone.
    for (seq, len) in [(0usize, 40usize), (1, 25), (2, 10)] {
        one_shot.forward(&ctx, &cache, seq, 0, &prompt[..len - 1], Logits::Last).unwrap();
    }
    let steps: Vec<(usize, usize, u32)> =
        [(0usize, 40usize), (1, 25), (2, 10)].iter().map(|&(s, len)| (s, len - 1, prompt[len - 1])).collect();
    one_shot.decode(&ctx, &cache, &steps).unwrap();
    let batched = read(&ctx, &one_shot, 3);
    let vocab = one_shot.config.vocab_size;
    for (i, &(s, pos, tok)) in steps.iter().enumerate() {
        one_shot.decode(&ctx, &cache, &[(s, pos, tok)]).unwrap();
        let alone = read(&ctx, &one_shot, 1);
        let err = rel_err(&batched[i * vocab..(i + 1) * vocab], &alone);
        println!("batched decode row {i} (length {}) vs alone: {err:.2e}", pos + 1);
        assert!(err < 1e-5);
    }
    assert!(rel_err(&batched[..vocab], &full) < 1e-5);

    // A session: reuse of a cached prefix and rollback give the same logits as fresh work.
    let mut session = Session::new(&ctx, &chunked).unwrap();
    assert_eq!(session.set_prompt(&ctx, &prompt[..30]).unwrap(), 0);
    assert_eq!(session.set_prompt(&ctx, prompt).unwrap(), 30, "the 30 cached tokens are reused");
    let err = rel_err(&pollster::block_on(session.logits().unwrap().read_f32(&ctx)).unwrap(), &full);
    assert!(err < 1e-5, "reused prefix: {err}");
    session.rollback(12).unwrap();
    assert!(session.logits().is_err(), "no logits right after a rollback");
    assert_eq!(session.set_prompt(&ctx, prompt).unwrap(), 12);
    let err = rel_err(&pollster::block_on(session.logits().unwrap().read_f32(&ctx)).unwrap(), &full);
    assert!(err < 1e-5, "after rollback: {err}");
}

fn expect_err<T>(r: pupil::Result<T>, what: &str) -> PupilError {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => {
            println!("{what}: {e}");
            e
        }
    }
}

/// Bad files and bad requests are typed errors, before any GPU allocation where possible.
#[test]
fn loader_and_engine_reject_bad_input() {
    let ctx = common::full_context();
    let good = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 7, &mut |_, _| {}).unwrap();
    let opts = ModelOptions { context: Some(64), ..ModelOptions::default() };
    let before = ctx.memory.current_bytes();

    // Truncated anywhere: header or tensor data.
    for cut in [10, 200, good.len() / 2, good.len() - 1] {
        let e = expect_err(LlamaModel::load(&ctx, &good[..cut], &opts, &mut |_, _| {}), "truncated");
        assert!(matches!(e, PupilError::Truncated { .. } | PupilError::Format(_)), "{e:?}");
    }
    // Unsupported architecture; a missing tensor; a wrong shape.
    let h = parse_header(&good).unwrap();
    let rebuild = |edit: &dyn Fn(&str, &Value) -> Option<Value>, drop_tensor: Option<&str>| -> Vec<u8> {
        let mut w = GgufWriter::new();
        for (k, v) in &h.metadata {
            w.add(k, edit(k, v).unwrap_or_else(|| v.clone()));
        }
        for t in &h.tensors {
            if Some(t.name.as_str()) != drop_tensor {
                w.add_tensor(&t.name, &t.dims, t.ty, h.tensor_data(&good, t).unwrap().to_vec()).unwrap();
            }
        }
        w.to_bytes()
    };
    let mamba = rebuild(&|k, _| (k == "general.architecture").then(|| Value::String("mamba".into())), None);
    let e = expect_err(LlamaModel::load(&ctx, &mamba, &opts, &mut |_, _| {}), "architecture");
    assert!(matches!(e, PupilError::Unsupported(ref m) if m.contains("mamba") && m.contains("llama")));
    let missing = rebuild(&|_, _| None, Some("blk.1.ffn_down.weight"));
    let e = expect_err(LlamaModel::load(&ctx, &missing, &opts, &mut |_, _| {}), "missing tensor");
    assert!(matches!(e, PupilError::Format(ref m) if m.contains("blk.1.ffn_down.weight")));
    let wide = rebuild(&|k, _| (k == "llama.feed_forward_length").then_some(Value::U32(1024)), None);
    let e = expect_err(LlamaModel::load(&ctx, &wide, &opts, &mut |_, _| {}), "wrong shape");
    assert!(matches!(e, PupilError::Format(ref m) if m.contains("ffn_gate")));
    let no_heads = rebuild(&|k, _| (k == "llama.attention.head_count").then_some(Value::U32(3)), None);
    expect_err(LlamaModel::load(&ctx, &no_heads, &opts, &mut |_, _| {}), "heads");
    // Too large for a budget, or a KV cache past the binding limit: refused before allocating.
    let small = ModelOptions { memory_budget: Some(1 << 20), ..opts.clone() };
    let e = expect_err(LlamaModel::load(&ctx, &good, &small, &mut |_, _| {}), "budget");
    assert!(matches!(e, PupilError::TooLarge { .. }));
    let huge = ModelOptions { context: Some(1 << 30), ..opts.clone() };
    let e = expect_err(LlamaModel::load(&ctx, &good, &huge, &mut |_, _| {}).map(|_| ()), "context");
    assert!(matches!(e, PupilError::TooLarge { .. }));
    assert_eq!(ctx.memory.current_bytes(), before, "nothing allocated by refused loads");

    // Requests: a prompt past the context, an out-of-vocabulary id, a bad batch.
    let model = LlamaModel::load(&ctx, &good, &opts, &mut |_, _| {}).unwrap();
    let mut session = Session::new(&ctx, &model).unwrap();
    let long = vec![5u32; 65];
    let e = expect_err(session.set_prompt(&ctx, &long), "overflow");
    assert!(matches!(e, PupilError::ContextOverflow { needed: 65, context: 64 }));
    expect_err(session.set_prompt(&ctx, &[1, 2, 100000]), "vocab");
    expect_err(session.set_prompt(&ctx, &[]), "empty");
    let cache = model.new_cache(&ctx, 1).unwrap();
    expect_err(model.decode(&ctx, &cache, &[(0, 0, 1), (0, 1, 1)]), "repeated sequence");
    expect_err(model.decode(&ctx, &cache, &[(1, 0, 1)]), "sequence outside the cache");
    expect_err(model.forward(&ctx, &cache, 0, 60, &[1; 5], Logits::Last), "chunk past the context");
    // And the session still works afterwards.
    session.set_prompt(&ctx, &[1, 2, 3]).unwrap();
    assert_eq!(session.len(), 3);
}

/// The window + sinks overflow policy: until the cache wraps, a streaming model (raw Q/K,
/// rotated inside the attention kernels) gives the reference logits; past the context it keeps
/// generating with flat GPU memory.
#[test]
fn streaming_overflow_matches_reference_then_runs_past_the_context() {
    use pupil::model::Overflow;
    let file = std::fs::read(fixture_dir().join("tiny_llama3.gguf")).unwrap();
    let fixture = json("tiny_llama3.json");
    let ctx = common::full_context();
    let opts = ModelOptions {
        dtype: Some(DType::F32),
        context: Some(64),
        chunk: 16,
        overflow: Overflow::Streaming { sink_tokens: 4 },
        ..ModelOptions::default()
    };
    let model = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
    let s = &fixture["sequences"][2];
    let prompt = ids(&s["input_ids"]);
    assert_eq!(prompt.len(), 40);
    let want: Vec<f32> = s["logits"].as_array().unwrap().iter().flat_map(floats).collect();
    let cache = model.new_cache(&ctx, 1).unwrap();
    let mut got = Vec::new();
    for (i, chunk) in prompt.chunks(16).enumerate() {
        model.forward(&ctx, &cache, 0, i * 16, chunk, Logits::All).unwrap();
        got.extend(read(&ctx, &model, chunk.len()));
    }
    let err = rel_err(&got, &want);
    println!("streaming (not yet wrapped) vs reference: {err:.2e}");
    assert!(err < 1e-4);

    let mut session = Session::new(&ctx, &model).unwrap();
    let opts = GenerateOptions { max_tokens: 200, stop_tokens: vec![] };
    let mut memory = Vec::new();
    let stats = pollster::block_on(generate(
        &ctx,
        &mut session,
        &prompt,
        &opts,
        &mut Sampler::new(SamplerConfig::greedy()).unwrap(),
        &mut |_| {
            memory.push(ctx.memory.current_bytes());
            pupil::engine::Flow::Continue
        },
    ))
    .unwrap();
    assert_eq!(stats.generated_tokens, 200, "{:?}", stats.stop);
    assert!(session.len() > model.context * 3, "ran well past the context");
    let settled = &memory[8..];
    assert!(
        settled.iter().all(|&m| m == settled[0]),
        "GPU memory grew: {} → {}",
        settled[0],
        settled[settled.len() - 1]
    );
    assert!(!session.can_rollback(50), "a wrapped streaming cache cannot return to an overwritten position");
    assert!(session.can_rollback(3), "within the sink tokens it can");
}
