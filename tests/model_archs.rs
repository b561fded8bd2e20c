//! Architectures beyond llama against an independent reader: `pupil synth` writes a
//! random-weight GGUF of each architecture, and Hugging Face transformers loads that same file
//! (`from_pretrained(gguf_file=...)`, its own GGUF reader and dequantiser) and computes every
//! position's logits (tests/fixtures/model/synth_<preset>.json + .f32.bin, made by
//! scripts/fixtures/make_arch_fixtures.py; CI never runs Python). The fixture records the
//! file's sha256, so the model is re-synthesized here and checked to be the same bytes.
//!
//! qwen2 checks what llama does not: Q/K/V biases, NeoX RoPE on unpermuted Q/K rows, GQA and
//! the tied head; qwen3 adds QK-norm and a head size that is not hidden / heads; gemma3 its
//! sliding-window layers, sandwich norms, scaled embedding and GELU-tanh; qwen3next the
//! gated-attention output gate packed into q_proj and partial RoPE.

mod common;

use std::path::Path;

use common::{json_ids as ids, rel_err};
use pupil::engine::{generate, Flow, GenerateOptions, Session};
use pupil::gpu::DType;
use pupil::model::gguf::parse_header;
use pupil::model::{synth, LlamaModel, Logits, ModelConfig, ModelOptions, Overflow};
use pupil::sampling::{Sampler, SamplerConfig};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn fixture(preset: &str) -> (Json, Vec<f32>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model");
    let name = preset.replace('-', "_");
    let json = std::fs::read_to_string(dir.join(format!("synth_{name}.json"))).unwrap();
    let bin = std::fs::read(dir.join(format!("synth_{name}.f32.bin"))).unwrap();
    let logits = bin.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (serde_json::from_str(&json).unwrap(), logits)
}

/// Every position's logits within 1e-4 (f32) / 5e-3 (f16 storage) of transformers, prompts
/// run in chunks of 16 against the cache, and 16 greedy tokens identical (f32).
fn matches_transformers(preset: &str) {
    let (fx, want_all) = fixture(preset);
    let meta = &fx["meta"];
    let seed = meta["seed"].as_u64().unwrap();
    let file = synth::synthesize(&synth::preset(preset).unwrap(), seed, &mut |_, _| {}).unwrap();
    let sha = format!("{:x}", Sha256::digest(&file));
    assert_eq!(
        sha,
        meta["gguf_sha256"].as_str().unwrap(),
        "`pupil synth {preset}` no longer writes the fixture's file"
    );
    let vocab = meta["vocab"].as_u64().unwrap() as usize;
    for (f16, sub) in [(false, true), (true, true), (false, false)] {
        let Some(ctx) = common::context(f16, sub) else { continue };
        let dtype = if f16 { DType::F16 } else { DType::F32 };
        let tolerance = if f16 { 5e-3 } else { 1e-4 };
        let opts = ModelOptions { dtype: Some(dtype), context: Some(512), chunk: 16, ..ModelOptions::default() };
        let loaded = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {});
        if f16 && preset.contains("gemma3") {
            // Gemma's activations overflow f16 (tests/model_gemma3.rs): refused, typed.
            assert_eq!(loaded.err().map(|e| e.kind()), Some("Unsupported"));
            continue;
        }
        let model = loaded.unwrap();
        assert_eq!(model.config.tied_embeddings, meta["tie_word_embeddings"].as_bool().unwrap());
        let mut row = 0;
        for s in fx["sequences"].as_array().unwrap() {
            let prompt = ids(&s["input_ids"]);
            let want = &want_all[row * vocab..(row + prompt.len()) * vocab];
            row += prompt.len();
            let cache = model.new_cache(&ctx, 1).unwrap();
            let mut got = Vec::new();
            let mut pos = 0;
            for chunk in prompt.chunks(model.chunk) {
                model.forward(&ctx, &cache, 0, pos, chunk, Logits::All).unwrap();
                got.extend(pollster::block_on(model.logits(chunk.len()).unwrap().read_f32(&ctx)).unwrap());
                pos += chunk.len();
            }
            let err = rel_err(&got, want);
            println!("{preset} {} {}: all-position logits rel err {err:.2e}", s["name"], dtype.name());
            assert!(err < tolerance, "{preset} {}: {err}", s["name"]);
            if !f16 {
                let mut session = Session::new(&ctx, &model).unwrap();
                let mut out = Vec::new();
                pollster::block_on(generate(
                    &ctx,
                    &mut session,
                    &prompt,
                    &GenerateOptions { max_tokens: 16, stop_tokens: vec![] },
                    &mut Sampler::new(SamplerConfig::greedy()).unwrap(),
                    &mut |id| {
                        out.push(id);
                        Flow::Continue
                    },
                ))
                .unwrap();
                assert_eq!(out, ids(&s["greedy_16"]), "{preset} {} greedy", s["name"]);
            }
        }
        assert_eq!(row * vocab, want_all.len(), "the .bin holds exactly the fixture's rows");
    }
}

#[test]
fn qwen2_matches_transformers_every_position() {
    matches_transformers("tiny-qwen2");
}

/// qwen3: QK-norm (each Q and K head RMS-normalised with its own weights before RoPE) and a
/// head size (128) wider than hidden / heads (64).
#[test]
fn qwen3_matches_transformers_every_position() {
    matches_transformers("tiny-qwen3");
}

/// gemma3: interleaved sliding-window layers (window 16 on layers 0-4 and 6, global layer 5,
/// each kind with its own RoPE base), QK-norm at head_dim 256, sandwich norms, the √hidden
/// embedding scale and GELU-tanh — at every position of sequences up to 300 tokens, so the
/// local layers' rolling caches (window + margin = 144 slots) wrap too.
#[test]
fn gemma3_matches_transformers_every_position() {
    matches_transformers("tiny-gemma3");
}

/// qwen3next (gated attention): `attn_q` packs each head's query and output-gate rows, the
/// attention output is multiplied by σ(gate) elementwise inside the attention kernels' epilogue
/// (prefill and decode), QK-norm and every RMSNorm scale by 1 + w (stored so), RoPE turns a
/// quarter of each head. transformers' GGUF reader lacks qwen3next, so the fixture script reads
/// this file with gguf-py into transformers' Qwen3NextForCausalLM (qwen3next_gguf.py).
#[test]
fn qwen3next_gated_attention_matches_transformers_every_position() {
    matches_transformers("tiny-qwen3next");
}

/// A qwen3next file with what Pupil does not run — a Gated DeltaNet layer, experts, attention
/// biases — is refused by name (Unsupported) when its header is read.
#[test]
fn qwen3next_linear_attention_and_experts_are_refused() {
    let file = synth::synthesize(&synth::preset("tiny-qwen3next").unwrap(), 1, &mut |_, _| {}).unwrap();
    let header = parse_header(&file).unwrap();
    assert!(ModelConfig::from_gguf(&header).unwrap().output_gate);
    for (from, to, says) in [
        ("blk.1.attn_q.weight", "blk.1.ssm_in.weight", "Gated DeltaNet"),
        ("blk.0.ffn_gate.weight", "blk.0.ffn_gate_exps.weight", "mixture-of-experts"),
        ("blk.0.attn_q_norm.weight", "blk.0.attn_q.bias", "attention biases"),
    ] {
        let mut h = header.clone();
        h.tensors.iter_mut().find(|t| t.name == from).unwrap().name = to.to_string();
        let e = ModelConfig::from_gguf(&h).unwrap_err();
        assert_eq!(e.kind(), "Unsupported", "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
}

/// A streaming (StreamingLLM) qwen3 keeps Q and K raw for the attention kernels to rotate, so
/// QK-norm writes straight into their inputs: before the cache wraps, every position's logits
/// still match transformers.
#[test]
fn qwen3_streaming_matches_transformers_before_the_wrap() {
    let (fx, want_all) = fixture("tiny-qwen3");
    let meta = &fx["meta"];
    let vocab = meta["vocab"].as_u64().unwrap() as usize;
    let file = synth::synthesize(&synth::preset("tiny-qwen3").unwrap(), meta["seed"].as_u64().unwrap(), &mut |_, _| {})
        .unwrap();
    let ctx = common::full_context();
    let opts = ModelOptions {
        dtype: Some(DType::F32),
        context: Some(128),
        chunk: 16,
        overflow: Overflow::Streaming { sink_tokens: 4 },
        ..ModelOptions::default()
    };
    let model = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
    let mut row = 0;
    for s in fx["sequences"].as_array().unwrap() {
        let prompt = ids(&s["input_ids"]);
        let want = &want_all[row * vocab..(row + prompt.len()) * vocab];
        row += prompt.len();
        let cache = model.new_cache(&ctx, 1).unwrap();
        let mut got = Vec::new();
        for (i, chunk) in prompt.chunks(model.chunk).enumerate() {
            model.forward(&ctx, &cache, 0, i * model.chunk, chunk, Logits::All).unwrap();
            got.extend(pollster::block_on(model.logits(chunk.len()).unwrap().read_f32(&ctx)).unwrap());
        }
        let err = rel_err(&got, want);
        println!("tiny-qwen3 streaming {}: all-position logits rel err {err:.2e}", s["name"]);
        assert!(err < 1e-4, "{}: {err}", s["name"]);
    }
}

/// gemma3's local layers roll through window + 128 slots: a session that has outgrown them can
/// roll back by exactly as much as the keys left allow (129 tokens here), and the logits after
/// rolling back and feeding the same tokens again equal those of a fresh run; one token further
/// is refused, and `set_prompt` then recomputes from scratch instead.
#[test]
fn gemma3_rollback_through_rolling_local_layers() {
    let (fx, want_all) = fixture("tiny-gemma3");
    let meta = &fx["meta"];
    let vocab = meta["vocab"].as_u64().unwrap() as usize;
    let file =
        synth::synthesize(&synth::preset("tiny-gemma3").unwrap(), meta["seed"].as_u64().unwrap(), &mut |_, _| {})
            .unwrap();
    let ctx = common::full_context();
    let opts = ModelOptions { dtype: Some(DType::F32), context: Some(512), chunk: 16, ..ModelOptions::default() };
    let model = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
    // Local layers: 16 + 128 slots; the global layer: 512.
    assert_eq!(model.cache_bytes(1), (2 * (6 * 144 + 512) * 256 * 4) as u64);
    let seqs = fx["sequences"].as_array().unwrap();
    let s = seqs.iter().find(|s| s["name"] == "len300").unwrap();
    let offset: usize = seqs.iter().take_while(|x| x["name"] != "len300").map(|x| ids(&x["input_ids"]).len()).sum();
    let prompt = ids(&s["input_ids"]);
    let last = |n: usize| &want_all[(offset + n - 1) * vocab..(offset + n) * vocab];
    let mut session = Session::new(&ctx, &model).unwrap();
    session.feed(&ctx, &prompt).unwrap();
    let held = prompt.len();
    assert!(session.can_rollback(held - 129));
    assert!(!session.can_rollback(held - 130), "keys the next query needs are overwritten");
    assert!(session.rollback(held - 130).is_err());
    session.rollback(held - 129).unwrap();
    session.feed(&ctx, &prompt[held - 129..held - 60]).unwrap();
    let got = pollster::block_on(session.logits().unwrap().read_f32(&ctx)).unwrap();
    let err = rel_err(&got, last(held - 60));
    println!("tiny-gemma3 after a 129-token rollback: logits rel err {err:.2e}");
    assert!(err < 1e-4, "{err}");
    // Past the margin: set_prompt starts over and still gives the reference's logits.
    session.feed(&ctx, &prompt[held - 60..]).unwrap();
    let reused = session.set_prompt(&ctx, &prompt[..held - 140]).unwrap();
    assert_eq!(reused, 0, "a wrapped rolling cache cannot go back 140 tokens");
    let got = pollster::block_on(session.logits().unwrap().read_f32(&ctx)).unwrap();
    assert!(rel_err(&got, last(held - 140)) < 1e-4);
}

/// A QK-norm model projects its raw K into the MLP scratch; with a K wider than 2·FFN (a
/// narrow MLP) that scratch must still hold it: prefill and decode run, and agree.
#[test]
fn qk_norm_with_k_wider_than_the_mlp_scratch() {
    let mut spec = synth::preset("tiny-qwen3").unwrap();
    spec.ffn_hidden = 64; // 2·FFN = 128 < K width 2 × 128
    let file = synth::synthesize(&spec, 5, &mut |_, _| {}).unwrap();
    let ctx = common::full_context();
    let opts = ModelOptions { dtype: Some(DType::F32), context: Some(64), chunk: 8, ..ModelOptions::default() };
    let model = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
    let prompt: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 512).collect();
    let cache = model.new_cache(&ctx, 1).unwrap();
    model.forward(&ctx, &cache, 0, 0, &prompt[..8], Logits::Last).unwrap();
    model.forward(&ctx, &cache, 0, 8, &prompt[8..], Logits::Last).unwrap();
    let chunked = pollster::block_on(model.logits(1).unwrap().read_f32(&ctx)).unwrap();
    let mut session = Session::new(&ctx, &model).unwrap();
    session.feed(&ctx, &prompt[..11]).unwrap();
    session.feed(&ctx, &prompt[11..]).unwrap(); // one token: the decode path
    let decoded = pollster::block_on(session.logits().unwrap().read_f32(&ctx)).unwrap();
    assert!(chunked.iter().all(|x| x.is_finite()));
    assert!(rel_err(&decoded, &chunked) < 1e-5, "{}", rel_err(&decoded, &chunked));
}
