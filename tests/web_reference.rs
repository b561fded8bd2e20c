//! The native runs the browser engine's tests compare with, written under `target/`:
//! - `pupil-web-synth-native.json`: 16 greedy tokens of the synthetic tiny-llama (seed 1) after
//!   a plain prompt; `tests/browser/run.mjs` has the page's `Engine` do the same and requires
//!   identical ids.
//! - `pupil-web-expected.json`: 16 greedy tokens of the real SmolLM2 after a chat-templated
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
        &mut |d, _, _| {
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
    // A question whose answer outlasts 16 tokens, so all 16 are compared (a one-line answer
    // would end at its end-of-turn token after a few). 16, not more: SwiftShader on CI's two
    // cores takes 9-20 s a token of SmolLM2.
    let messages = vec![ChatMessage::user("Tell me about the city of Paris.")];
    let template = ChatTemplate::from_gguf(&parse_header(&file).unwrap()).unwrap();
    let prompt = template.render(&messages, true).unwrap();
    let out = greedy_text(&ctx, &file, &prompt, true, 16);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    assert_eq!(out.tokens.len(), 16, "the answer must run the whole 16 tokens: {:?}", out.text);
    write(
        "pupil-web-expected.json",
        json!({
            "messages": messages, "prompt": prompt, "maxTokens": 16, "dtype": "f32", "parseSpecial": true,
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

/// Distillation runs on synthetic tiny-llamas (f32, shared-memory reductions, as the browser
/// runs them): `tests/browser/run.mjs` has the page's `Engine.distill` run each with the same
/// options and data and requires the same losses and KLs (`pupil-web-distill-native.json`):
/// an online teacher (another seed's model, `loadTeacher`), context distillation (the student
/// itself reading an instruction), and a pruned student (`pruneIntoStudent {keep: [1]}`) healed
/// by logits and hidden-state alignment.
#[test]
fn synthetic_model_distillation_for_the_browser() {
    use pupil::train::distill::{distill_data, split_options, DistillInput};
    let ctx = browser_like_context();
    let preset = "tiny-llama";
    let synth_file = |seed| synth::synthesize(&synth::preset(preset).unwrap(), seed, &mut |_, _| {}).unwrap();
    let (student_file, teacher_file) = (synth_file(1), synth_file(2));
    let tokenizer = Tokenizer::from_gguf(&parse_header(&student_file).unwrap()).unwrap();
    let opts = ModelOptions { dtype: Some(DType::F32), context: Some(256), ..ModelOptions::default() };
    let load = |file: &[u8]| LlamaModel::load(&ctx, file, &opts, &mut |_, _| {}).unwrap();
    let (student, teacher) = (load(&student_file), load(&teacher_file));
    let keep = [1usize];
    let pruned_file = pollster::block_on(pupil::model::prune::keep_layers(
        &parse_header(&student_file).unwrap(),
        &student_file,
        &keep,
    ))
    .unwrap();
    let pruned = load(&pruned_file);
    let kept = pupil::model::prune::kept_layers(&parse_header(&pruned_file).unwrap(), 1).unwrap();
    assert_eq!(kept, keep);
    let text = "We hold these truths to be self-evident, that all men are created equal, that they are \
                endowed by their Creator with certain unalienable Rights."
        .repeat(3);
    let lines: String = [
        "We hold these truths to be self-evident.",
        "Life, Liberty and the pursuit of Happiness.",
        "Governments are instituted among Men.",
        "Prudence, indeed, will dictate.",
        "The history of repeated injuries.",
    ]
    .iter()
    .map(|t| format!("{}\n", json!({ "text": t })))
    .collect();
    let base = json!({"rank": 4, "alpha": 8, "steps": 3, "seqLen": 48, "batchRows": 2, "lr": 0.01, "warmup": 1,
                      "evalFraction": 0.25, "seed": 5});
    let with = |extra: serde_json::Value| {
        let mut o = base.clone();
        o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        o
    };
    let runs = [
        (
            "online",
            &student,
            Some(&teacher),
            None,
            text.clone(),
            with(json!({"tau": 2.0, "kdAlpha": 0.5, "kdAlphaAdapt": true, "kdTauAdapt": true})),
        ),
        (
            "context",
            &student,
            None,
            None,
            lines.clone(),
            with(json!({"format": "jsonl", "tau": 1.0, "kdAlpha": 0.0, "instruction": "Answer like a pirate."})),
        ),
        (
            "pruned",
            &pruned,
            Some(&student),
            Some(&kept[..]),
            text.clone(),
            with(
                json!({"tau": 1.0, "kdAlpha": 0.0, "divergence": "jsd:0.3", "alignHidden": 0.1, "lr": 0.03, "steps": 4}),
            ),
        ),
    ];
    let mut out = Vec::new();
    for (name, model, teacher, kept, data, options) in runs {
        let (ft, kd) = split_options("test", &options.to_string()).unwrap();
        let (cfg, format) = ft.config().unwrap();
        let input = DistillInput {
            student: model,
            student_kept: kept,
            teacher,
            tokenizer: &tokenizer,
            template: None,
            data: &data,
            format,
        };
        let (report, trainer) = pollster::block_on(distill_data(&ctx, &input, &cfg, &kd, &mut |_| {})).unwrap();
        let weights = pollster::block_on(pupil::train::trained_safetensors(&ctx, &trainer, "llama")).unwrap();
        let kls: Vec<f64> = report.steps.iter().map(|s| s.kl.unwrap()).collect();
        println!(
            "{name}: losses {:?}, KLs {kls:?}, held-out KL {:?} → {:?}, teacher's held-out loss {:?}",
            report.steps.iter().map(|s| s.loss).collect::<Vec<_>>(),
            report.eval_kl_before,
            report.eval_kl_after,
            report.teacher_eval_loss
        );
        assert!(report.steps.iter().all(|s| s.applied) && kls.iter().all(|k| k.is_finite() && *k > 0.0), "{name}");
        assert!(report.eval_kl_after < report.eval_kl_before, "{name}: distillation lowers the held-out KL");
        assert!(!weights.is_empty());
        out.push(json!({"name": name, "data": data, "options": options, "report": report.to_json()}));
    }
    write(
        "pupil-web-distill-native.json",
        json!({"preset": preset, "studentSeed": 1, "teacherSeed": 2, "keep": keep, "runs": out}),
    );
}
