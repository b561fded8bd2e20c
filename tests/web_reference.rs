//! The native runs the browser engine's tests compare with, written under `target/`:
//! - `pupil-web-synth-native.json`: 16 greedy tokens of the synthetic tiny-llama (seed 1) after
//!   a plain prompt; `tests/browser/run.mjs` has the page's `Engine` do the same and requires
//!   identical ids.
//! - `pupil-web-expected.json`: 32 greedy tokens of the real SmolLM2 after a chat-templated
//!   question (skipped without the model file), for the demo page's test.
//!
//! Both use the path the browser gets on SwiftShader (f32 storage, shared-memory reductions)
//! and the engine's own steps: `encode_for_model`, `generate_text` with the tokenizer's stop
//! ids, greedy sampling.

mod common;

use std::path::PathBuf;

use pupil::engine::{generate_text, Flow, Session, TextGeneration, TextOptions};
use pupil::gpu::DType;
use pupil::model::{gguf::parse_header, synth, LlamaModel, ModelOptions};
use pupil::sampling::{Sampler, SamplerConfig};
use pupil::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use pupil::GpuContext;
use serde_json::json;

fn out_path(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(name)
}

fn browser_like_context() -> GpuContext {
    common::context_with(pupil::ContextOptions { allow_f16: false, allow_subgroups: false, ..Default::default() })
}

/// Load `file` (f32) and generate greedily after `prompt` as `Engine.generate` does.
fn greedy_text(ctx: &GpuContext, file: &[u8], prompt: &str, parse_special: bool, n: usize) -> TextGeneration {
    let tokenizer = Tokenizer::from_gguf(&parse_header(file).unwrap()).unwrap();
    let opts = ModelOptions { dtype: Some(DType::F32), ..ModelOptions::default() };
    let model = LlamaModel::load(ctx, file, &opts, &mut |_, _| {}).unwrap();
    let mut session = Session::new(ctx, &model).unwrap();
    let ids = tokenizer.encode_for_model(prompt, parse_special).unwrap();
    let text_opts = TextOptions {
        max_tokens: n,
        stop_tokens: tokenizer.stop_ids().to_vec(),
        stop_strings: vec![],
        skip_special: true,
    };
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
    let mut streamed = String::new();
    let out = pollster::block_on(generate_text(
        ctx,
        &mut session,
        &tokenizer,
        &ids,
        &text_opts,
        &mut sampler,
        &mut |d, _| {
            streamed.push_str(d);
            Flow::Continue
        },
    ))
    .unwrap();
    assert!(out.text.starts_with(&streamed));
    out
}

fn write(name: &str, value: serde_json::Value) {
    let path = out_path(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    eprintln!("wrote {}", path.display());
}

#[test]
fn synthetic_model_stream_for_the_browser() {
    let ctx = browser_like_context();
    let (preset, seed, prompt, max_tokens) = ("tiny-llama", 1, "Hello, GPU! Count: 1 2 3", 16);
    let file = synth::synthesize(&synth::preset(preset).unwrap(), seed, &mut |_, _| {}).unwrap();
    let out = greedy_text(&ctx, &file, prompt, false, max_tokens);
    // Random weights rarely pick the one stop id (256); if they did the stream is shorter.
    assert!(!out.tokens.is_empty());
    // Deterministic on this machine.
    assert_eq!(greedy_text(&ctx, &file, prompt, false, max_tokens).tokens, out.tokens);
    write(
        "pupil-web-synth-native.json",
        json!({
            "preset": preset, "seed": seed, "prompt": prompt, "maxTokens": max_tokens, "dtype": "f32",
            "parseSpecial": false, "tokens": out.tokens, "text": out.text, "finishReason": out.finish,
        }),
    );
}

#[test]
fn smollm2_chat_answer_for_the_demo_page() {
    let Some(file) = common::smollm2() else { return };
    let ctx = browser_like_context();
    // A question whose answer outlasts 32 tokens, so all 32 are compared (a one-line answer
    // would end at its end-of-turn token after a few).
    let messages = vec![ChatMessage::user("Tell me about the city of Paris.")];
    let template = ChatTemplate::from_gguf(&parse_header(&file).unwrap()).unwrap();
    let prompt = template.render(&messages, true).unwrap();
    let out = greedy_text(&ctx, &file, &prompt, true, 32);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    assert_eq!(out.tokens.len(), 32, "the answer must run the whole 32 tokens: {:?}", out.text);
    write(
        "pupil-web-expected.json",
        json!({
            "messages": messages, "prompt": prompt, "maxTokens": 32, "dtype": "f32", "parseSpecial": true,
            "tokens": out.tokens, "text": out.text, "finishReason": out.finish,
        }),
    );
}

/// A few LoRA training steps on the synthetic tiny-llama (f32, shared-memory reductions, as the
/// browser runs them): `tests/browser/run.mjs` has the page's `Engine.finetune` run the same
/// options on the same text and requires the same losses (`pupil-web-train-native.json`).
#[test]
fn synthetic_model_training_for_the_browser() {
    let ctx = browser_like_context();
    let (preset, seed) = ("tiny-llama", 1);
    let file = synth::synthesize(&synth::preset(preset).unwrap(), seed, &mut |_, _| {}).unwrap();
    let tokenizer = Tokenizer::from_gguf(&parse_header(&file).unwrap()).unwrap();
    let opts = ModelOptions { dtype: Some(DType::F32), context: Some(256), ..ModelOptions::default() };
    let model = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
    let data = "When in the Course of human events, it becomes necessary for one people to dissolve the \
                political bands which have connected them with another, and to assume among the powers of \
                the earth, the separate and equal station to which the Laws of Nature entitle them."
        .repeat(3);
    let options = json!({"rank": 4, "alpha": 8, "steps": 4, "seqLen": 64, "batchRows": 2, "lr": 0.01, "warmup": 1, "evalFraction": 0.2, "seed": 3});
    let run = || {
        let o: pupil::train::FinetuneOptions = serde_json::from_value(options.clone()).unwrap();
        let (cfg, format) = o.config().unwrap();
        pollster::block_on(pupil::train::finetune_data(
            &ctx,
            &model,
            &tokenizer,
            None,
            &data,
            format,
            &cfg,
            &mut |_| {},
        ))
        .unwrap()
    };
    let report = run();
    let losses: Vec<f64> = report.steps.iter().map(|s| s.loss).collect();
    println!(
        "tiny-llama LoRA in the browser's path: losses {losses:?}, held-out {:?} → {:?}",
        report.eval_loss_before, report.eval_loss_after
    );
    assert!(report.steps.iter().all(|s| s.applied) && losses.iter().all(|l| l.is_finite()));
    assert!(report.eval_loss_after < report.eval_loss_before, "training lowers the held-out loss");
    // Deterministic: the same run again gives the same losses exactly.
    assert_eq!(run().steps.iter().map(|s| s.loss).collect::<Vec<_>>(), losses);
    write(
        "pupil-web-train-native.json",
        json!({"preset": preset, "seed": seed, "data": data, "options": options, "report": report.to_json()}),
    );
}
