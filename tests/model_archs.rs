//! Architectures beyond llama against an independent reader: `pupil synth` writes a
//! random-weight GGUF of each architecture, and Hugging Face transformers loads that same file
//! (`from_pretrained(gguf_file=...)`, its own GGUF reader and dequantiser) and computes every
//! position's logits (tests/fixtures/model/synth_<preset>.json + .f32.bin, made by
//! scripts/fixtures/make_arch_fixtures.py; CI never runs Python). The fixture records the
//! file's sha256, so the model is re-synthesized here and checked to be the same bytes.
//!
//! qwen2 checks what llama does not: Q/K/V biases, NeoX RoPE on unpermuted Q/K rows, GQA and
//! the tied head; qwen3 adds QK-norm and a head size that is not hidden / heads.

mod common;

use std::path::Path;

use common::{json_ids as ids, rel_err};
use pupil::engine::{generate, Flow, GenerateOptions, Session};
use pupil::gpu::DType;
use pupil::model::{synth, LlamaModel, Logits, ModelOptions, Overflow};
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
        let opts = ModelOptions { dtype: Some(dtype), context: Some(256), chunk: 16, ..ModelOptions::default() };
        let model = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
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
