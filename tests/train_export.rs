//! What a run trained, leaving Pupil: the PEFT adapter against what PEFT itself saves and
//! loads (tests/fixtures/train/export_<preset>.*, scripts/fixtures/make_export_fixtures.py),
//! the merged GGUF reloaded (logits against PEFT's, requantised drift, generation), and
//! resumable runs (a checkpoint resumed reproduces the uninterrupted run).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use pupil::engine::{generate, GenerateOptions, Session};
use pupil::gpu::GpuContext;
use pupil::model::gguf::parse_header;
use pupil::model::{synth, LlamaModel, Logits, LoraConfig, LoraTarget, ModelOptions, Trainer};
use pupil::quant::QuantType;
use pupil::sampling::{Sampler, SamplerConfig};
use pupil::train::{self, FinetuneConfig, Row, RunControl};
use pupil::PupilError;
use serde_json::Value as Json;

use common::train::{fixture_of, hf_to_gguf_rows, synth_file, Fixture};

fn load(ctx: &GpuContext, file: &[u8]) -> LlamaModel {
    let opts = ModelOptions { context: Some(64), ..ModelOptions::default() };
    LlamaModel::load(ctx, file, &opts, &mut |_, _| {}).unwrap()
}

fn seqs(fx: &Fixture) -> Vec<Vec<u32>> {
    fx.meta["input_ids"].as_array().unwrap().iter().map(common::json_ids).collect()
}

/// Every position's logits of each sequence, one after another.
fn logits(ctx: &GpuContext, model: &LlamaModel, seqs: &[Vec<u32>]) -> Vec<f32> {
    let mut out = Vec::new();
    for s in seqs {
        let cache = model.new_cache(ctx, 1).unwrap();
        model.forward(ctx, &cache, 0, 0, s, Logits::All).unwrap();
        out.extend(pollster::block_on(model.logits(s.len()).unwrap().read_f32(ctx)).unwrap());
    }
    out
}

/// The lora fixture's adapters (A, B in HF row order) set on a fresh rank-4 trainer.
fn trainer_with_fixture_adapters<'m>(ctx: &GpuContext, model: &'m LlamaModel, preset: &str) -> Trainer<'m> {
    let lora = fixture_of("lora", preset);
    let tr = Trainer::new(ctx, model, LoraConfig::new(4, 8.0, LoraTarget::ALL.to_vec()), 64, 1).unwrap();
    let c = &model.config;
    let llama = preset == "tiny-llama";
    let mut at = 0;
    for (l, p) in tr.lora.pairs() {
        let (na, nb) = (4 * p.in_dim, p.out_dim * 4);
        let a = lora.blobs[at..at + na].to_vec();
        let b = lora.blobs[at + na..at + na + nb].to_vec();
        at += 2 * (na + nb); // A, B, dA, dB
        let heads = match p.target {
            LoraTarget::Q if llama => Some(c.n_heads),
            LoraTarget::K if llama => Some(c.n_kv_heads),
            _ => None,
        };
        // The fixture's B is in HF order; the trainer's in the file's (un-permuted on export).
        let b = heads.map_or(b.clone(), |h| hf_to_gguf_rows(&b, p.out_dim, 4, h));
        tr.set_adapter(ctx, l, p.target, &a, &b).unwrap();
    }
    assert_eq!(at, lora.blobs.len());
    tr
}

/// A safetensors tensor: dtype, shape, values (f32).
type StEntry = (String, Vec<u64>, Vec<f32>);

/// A safetensors file's tensors by name, and its metadata.
fn read_safetensors(bytes: &[u8]) -> (BTreeMap<String, StEntry>, Json) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = BTreeMap::new();
    for (k, v) in header.as_object().unwrap() {
        if k == "__metadata__" {
            continue;
        }
        let [a, b] = [0, 1].map(|i| v["data_offsets"][i].as_u64().unwrap() as usize);
        let vals = bytes[8 + n + a..8 + n + b].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()));
        let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        out.insert(k.clone(), (v["dtype"].as_str().unwrap().to_string(), shape, vals.collect()));
    }
    (out, header["__metadata__"].clone())
}

fn sorted_targets(mut config: Json) -> Json {
    let mut t: Vec<String> =
        config["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    t.sort();
    config["target_modules"] = serde_json::json!(t);
    config.as_object_mut().unwrap().remove("base_model_name_or_path");
    config
}

fn greedy(ctx: &GpuContext, model: &LlamaModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut session = Session::new(ctx, model).unwrap();
    let mut out = Vec::new();
    let opts = GenerateOptions { max_tokens: n, stop_tokens: vec![] };
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
    pollster::block_on(generate(ctx, &mut session, prompt, &opts, &mut sampler, &mut |id| {
        out.push(id);
        pupil::engine::Flow::Continue
    }))
    .unwrap();
    out
}

/// Pupil's PEFT export of the lora fixture's adapters has the key set, dtypes, shapes,
/// safetensors metadata and adapter_config.json PEFT's save_pretrained writes, each tensor equal
/// to PEFT's (B's Q/K rows back in HF order for the llama file); the merged model (f32) gives
/// the logits PeftModel.from_pretrained gives within 1e-3; the merge requantised to the file's
/// own types reloads, stays nearer PEFT's logits than the unmerged base, and generates.
/// With PUPIL_EXPORT_DIR set, writes what make_export_fixtures.py --check loads into PEFT.
fn peft_export_matches_peft(preset: &str) {
    let fx = fixture_of("export", preset);
    let ctx = common::context(false, true).unwrap();
    let file = synth_file(&fx);
    let model = load(&ctx, &file);
    let tr = trainer_with_fixture_adapters(&ctx, &model, preset);
    let adapter = pollster::block_on(train::peft_adapter(&ctx, &tr, "pupil-synth")).unwrap();

    let (tensors, meta) = read_safetensors(&adapter.weights);
    assert_eq!(meta, fx.meta["safetensors_metadata"], "safetensors metadata");
    let keys: BTreeMap<String, Json> =
        tensors.iter().map(|(k, (d, s, _))| (k.clone(), serde_json::json!([d, s]))).collect();
    let want_keys: BTreeMap<String, Json> =
        fx.meta["keys"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(keys, want_keys, "keys, dtypes and shapes as PEFT saves them");
    let config: Json = serde_json::from_str(&adapter.config).unwrap();
    assert_eq!(
        sorted_targets(config.clone()),
        sorted_targets(fx.meta["adapter_config"].clone()),
        "adapter_config.json"
    );
    assert_eq!(config["base_model_name_or_path"], "pupil-synth");
    // Each tensor is the fixture's (HF order), so the un-permutation is checked against PyTorch.
    let lora = fixture_of("lora", preset);
    let mut at = 0;
    for (l, p) in tr.lora.pairs() {
        let module = if p.target <= LoraTarget::O { "self_attn" } else { "mlp" };
        for (ab, n) in [("lora_A", 4 * p.in_dim), ("lora_B", p.out_dim * 4)] {
            let key = format!("base_model.model.model.layers.{l}.{module}.{}.{ab}.weight", p.target.hf_name());
            assert_eq!(tensors[&key].2, lora.blobs[at..at + n], "{key}");
            at += n;
        }
        at += 4 * p.in_dim + p.out_dim * 4;
    }

    let want = &fx.blobs;
    let seqs = seqs(&fx);
    let h = parse_header(&file).unwrap();
    let (merged, report) =
        pollster::block_on(train::merged_gguf(&ctx, &tr, &h, &file, Some(QuantType::F32), &mut |_, _| {})).unwrap();
    assert_eq!(report.tensors.len(), 7 * model.config.n_layers, "every adapted weight merged");
    assert!(report.tensors.iter().all(|t| t.ty == QuantType::F32 && t.requantisation == 0.0));
    let merged_model = load(&ctx, &merged);
    let got = logits(&ctx, &merged_model, &seqs);
    let e = common::rel_err(&got, want);
    println!(
        "{preset}: merged f32 GGUF vs PeftModel.from_pretrained logits: rel {e:.2e}; update {:.3e}",
        report.update
    );
    assert!(e < 1e-3, "{preset}: merged logits vs PEFT rel {e}");

    if let Ok(dir) = std::env::var("PUPIL_EXPORT_DIR") {
        let d = Path::new(&dir).join(preset);
        std::fs::create_dir_all(d.join("adapter")).unwrap();
        std::fs::write(d.join("adapter/adapter_model.safetensors"), &adapter.weights).unwrap();
        std::fs::write(d.join("adapter/adapter_config.json"), &adapter.config).unwrap();
        std::fs::write(d.join("base.gguf"), &file).unwrap();
        std::fs::write(d.join("logits.f32.bin"), got.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
            .unwrap();
        std::fs::write(d.join("ids.json"), serde_json::to_string(&fx.meta["input_ids"]).unwrap()).unwrap();
    }

    let (requant, report) = pollster::block_on(train::merged_gguf(&ctx, &tr, &h, &file, None, &mut |_, _| {})).unwrap();
    for t in &report.tensors {
        assert_eq!(Some(t.ty), h.tensor(&t.name).map(|i| i.ty), "{} keeps its type", t.name);
    }
    let requant_model = load(&ctx, &requant);
    let e_requant = common::rel_err(&logits(&ctx, &requant_model, &seqs), want);
    let e_base = common::rel_err(&logits(&ctx, &model, &seqs), want);
    println!(
        "{preset}: requantised merge ({} B): weights requantisation error {:.3e} (update {:.3e}); logits vs PEFT {e_requant:.3e}, unmerged base {e_base:.3e}",
        requant.len(),
        report.requantisation,
        report.update
    );
    assert!(report.requantisation > 0.0 && e_requant < 0.5 * e_base, "the requantised merge keeps the adaptation");
    let tokens = greedy(&ctx, &requant_model, &seqs[0][..4], 8);
    assert_eq!(tokens.len(), 8, "the merged GGUF generates");
}

#[test]
fn peft_export_tiny_llama() {
    peft_export_matches_peft("tiny-llama");
}

#[test]
fn peft_export_tiny_qwen2() {
    peft_export_matches_peft("tiny-qwen2");
}

/// A fully trained last layer merges into the GGUF's own tensors: the merged f32 model's loss
/// on a batch equals the trainer's (which runs that layer from its f32 copies) within 1e-5.
/// Gates and PEFT export of fully trained layers are refused with typed errors.
#[test]
fn merged_last_layer_reloads_with_the_trainers_loss() {
    let fx = fixture_of("export", "tiny-qwen2");
    let ctx = common::context(false, true).unwrap();
    let file = synth_file(&fx);
    let model = load(&ctx, &file);
    let lora = LoraConfig::new(4, 8.0, vec![LoraTarget::V, LoraTarget::Down]);
    let mut tr = Trainer::with_last_layers(&ctx, &model, Some(lora), 1, 64, 5).unwrap();
    let seqs = seqs(&fx);
    let ids: Vec<u32> = seqs.concat();
    let targets: Vec<u32> =
        seqs.iter().flat_map(|s| s[1..].iter().copied().chain([pupil::ops::cross_entropy::IGNORE_TARGET])).collect();
    let docs: Vec<usize> = seqs.iter().map(Vec::len).collect();
    for _ in 0..3 {
        pollster::block_on(tr.forward_backward(&ctx, &ids, &targets, &docs)).unwrap();
        let opt = pupil::ops::optim::AdamW { lr: 1e-2, ..Default::default() };
        assert!(pollster::block_on(tr.step(&ctx, &opt, Some(1.0))).unwrap().applied);
    }
    let trained_loss = pollster::block_on(tr.loss(&ctx, &ids, &targets, &docs)).unwrap();
    let h = parse_header(&file).unwrap();
    let (merged, report) =
        pollster::block_on(train::merged_gguf(&ctx, &tr, &h, &file, Some(QuantType::F32), &mut |_, _| {})).unwrap();
    let last = model.config.n_layers - 1;
    assert!(report.tensors.iter().any(|t| t.name == format!("blk.{last}.attn_q.bias")));
    let merged_model = load(&ctx, &merged);
    let mut frozen = Trainer::with_last_layers(&ctx, &merged_model, None, 0, 64, 5).unwrap();
    let merged_loss = pollster::block_on(frozen.loss(&ctx, &ids, &targets, &docs)).unwrap();
    let base_loss = {
        let mut t = Trainer::with_last_layers(&ctx, &model, None, 0, 64, 5).unwrap();
        pollster::block_on(t.loss(&ctx, &ids, &targets, &docs)).unwrap()
    };
    println!("trained {trained_loss:.6}, merged {merged_loss:.6}, base {base_loss:.6}");
    assert!((merged_loss - trained_loss).abs() < 1e-5 * trained_loss, "{merged_loss} vs {trained_loss}");
    assert!((base_loss - trained_loss).abs() > 1e-3, "training moved the loss (the check can fail)");

    let err = pollster::block_on(train::peft_adapter(&ctx, &tr, "x")).unwrap_err();
    assert!(matches!(err, PupilError::Unsupported(_)), "{err}");
    let gated = Trainer::new(&ctx, &model, LoraConfig::new(2, 4.0, vec![LoraTarget::Q]), 64, 1)
        .unwrap()
        .with_attention_gates(&ctx, 5.0, 1)
        .unwrap();
    let err = pollster::block_on(train::merged_gguf(&ctx, &gated, &h, &file, None, &mut |_, _| {})).unwrap_err();
    assert!(matches!(err, PupilError::Unsupported(_)), "{err}");
}

/// Rows of random text-like ids for the tiny models.
fn rows(vocab: u32, n: usize, len: usize, seed: u64) -> Vec<Row> {
    let mut rng = pupil::rng::SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let ids: Vec<u32> = (0..len).map(|_| rng.below(vocab)).collect();
            let mut targets = ids[1..].to_vec();
            targets.push(pupil::ops::cross_entropy::IGNORE_TARGET);
            Row { ids, targets, doc_lengths: vec![len], teacher: None, top_k: None }
        })
        .collect()
}

/// A run stopped at step 3 of 8 and resumed from its checkpoint in a fresh trainer takes the
/// uninterrupted run's steps: every step's loss, gradient norm and the held-out loss within
/// 1e-5 (with LoRA dropout, gates, a fully trained layer, accumulation and shuffled epochs, so
/// every piece of state counts) — and for a distillation run, its KLs. A checkpoint of another
/// run or a damaged one is refused with a typed error.
#[test]
fn resumed_run_reproduces_the_uninterrupted_one() {
    let fx = fixture_of("export", "tiny-llama");
    let ctx = common::context(false, true).unwrap();
    let file = synth_file(&fx);
    let model = load(&ctx, &file);
    let teacher_file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 2, &mut |_, _| {}).unwrap();
    let teacher_model = load(&ctx, &teacher_file);
    let data = rows(model.config.vocab_size as u32, 7, 12, 9);
    let cfg = FinetuneConfig {
        lora: LoraConfig {
            dropout: 0.1,
            ..LoraConfig::new(4, 8.0, vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Up])
        },
        last_layers: 1,
        gates: true,
        steps: 8,
        seq_len: 12,
        batch_rows: 2,
        grad_accum: 2,
        lr: 5e-3,
        warmup: 2,
        eval_fraction: 0.2,
        seed: 11,
        // The distillation run adapts α and τ to its logged losses: the resumed run must too.
        kd_schedule: train::KdSchedule { adapt_alpha: true, adapt_tau: true, ..train::KdSchedule::default() },
        ..FinetuneConfig::default()
    };
    let kd = pupil::ops::distill_loss::DistillLoss::hinton(2.0, 0.5);
    for distill in [false, true] {
        let run = |control: RunControl<'_>| {
            let mut tr = train::trainer_for(&ctx, &model, &cfg).unwrap();
            if distill {
                // Aligned through a learned projection: it trains and resumes with the rest.
                let a = pupil::model::HiddenAlignment { pairs: vec![(1, 1)], weight: 0.3, projected: true };
                tr = tr.with_hidden_alignment(&ctx, a, teacher_model.config.hidden).unwrap();
            }
            let mut teacher = Trainer::with_last_layers(&ctx, &teacher_model, None, 0, 24, 1).unwrap();
            let t = distill.then_some((&mut teacher, &kd));
            pollster::block_on(train::train_resumable(&ctx, &mut tr, t, &data, &cfg, control, &mut |_| {})).unwrap()
        };
        let whole = run(RunControl::default());
        let mut saved = Vec::new();
        let mut sink = |step: usize, bytes: Vec<u8>| {
            saved.push((step, bytes));
            Ok(())
        };
        let first = run(RunControl { stop_after: Some(3), on_checkpoint: Some(&mut sink), ..RunControl::default() });
        assert_eq!((first.stopped_at, first.steps.len(), first.eval_loss_after), (Some(3), 3, None));
        assert_eq!(saved.len(), 1);
        let (step, bytes) = saved.pop().unwrap();
        assert_eq!((step, train::checkpoint_step(&bytes).unwrap()), (3, 3));
        let resumed = run(RunControl { resume: Some(&bytes), ..RunControl::default() });
        assert_eq!(resumed.resumed_from, Some(3));
        assert_eq!(resumed.steps.len(), 8);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-12);
        for (a, b) in whole.steps.iter().zip(&resumed.steps) {
            println!(
                "distill {distill} step {}: loss {:.7} / {:.7}, |g| {:.6} / {:.6}, KL {:?} / {:?}",
                a.step, a.loss, b.loss, a.grad_norm, b.grad_norm, a.kl, b.kl
            );
            assert!(close(a.loss, b.loss) && close(a.grad_norm, b.grad_norm), "step {}", a.step);
            assert_eq!(a.kl.is_some(), distill);
            if let (Some(x), Some(y)) = (a.kl, b.kl) {
                assert!(close(x, y));
            }
            if let (Some(x), Some(y)) = (a.alpha, b.alpha) {
                assert!(close(x, y), "step {}: α {x} vs {y}", a.step);
            }
            assert_eq!(a.tau.is_some(), distill);
            if let (Some(x), Some(y)) = (a.tau, b.tau) {
                assert!(close(x, y), "step {}: τ {x} vs {y}", a.step);
            }
        }
        let (a, b) = (whole.eval_loss_after.unwrap(), resumed.eval_loss_after.unwrap());
        assert!(close(a, b), "held-out loss {a} vs {b}");
        assert_eq!(whole.eval_loss_before, resumed.eval_loss_before);
        // The losses move (the run trains), so equal curves are not a coincidence; so does α.
        assert!(whole.steps[7].loss < whole.steps[0].loss);
        if distill {
            let moved = |s: &train::StepLog| (s.alpha.unwrap() - 0.5).abs() > 1e-4;
            assert!(resumed.steps[3..].iter().any(moved), "α adapts after the resume point");
        }

        if !distill {
            // Other data, or a damaged file: refused before anything trains.
            let other = rows(model.config.vocab_size as u32, 7, 12, 10);
            let mut tr = train::trainer_for(&ctx, &model, &cfg).unwrap();
            let control = RunControl { resume: Some(&bytes), ..RunControl::default() };
            let err =
                pollster::block_on(train::train_resumable(&ctx, &mut tr, None, &other, &cfg, control, &mut |_| {}))
                    .unwrap_err();
            assert!(matches!(err, PupilError::InvalidArgument { .. }), "{err}");
            let mut broken = bytes.clone();
            broken.truncate(bytes.len() / 2);
            let control = RunControl { resume: Some(&broken), ..RunControl::default() };
            let err =
                pollster::block_on(train::train_resumable(&ctx, &mut tr, None, &data, &cfg, control, &mut |_| {}))
                    .unwrap_err();
            println!("damaged checkpoint: {err}");
            assert!(!matches!(err, PupilError::InvalidArgument { .. }), "{err}");
        }
    }
}
