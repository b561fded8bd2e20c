//! Training against PyTorch + PEFT: a random-weight llama, qwen2 and qwen3 (QK-norm) written
//! by `pupil synth` (re-synthesized here and checked by sha256), the same LoRA weights (rank 4,
//! alpha 8, every projection), the same batch of two 8-token sequences
//! (tests/fixtures/train/<kind>_<preset>.json + .f32.bin, made by
//! scripts/fixtures/make_train_fixtures.py; CI never runs Python):
//! - the loss and every adapter gradient within 1e-4 relative of autograd's;
//! - ten AdamW steps with global-norm clipping give PyTorch's losses within 1e-4 relative, and
//!   the gradient norms it clipped from;
//! - with LoRA dropout (dropout_<preset>.*), the same for masks PyTorch rebuilds from Pupil's
//!   seeds, and none in evaluation; two accumulated passes equal the batch of both;
//! - full training of the last layer (last1_*), trainable attention gates (gates_*), and the
//!   trained weights' safetensors file read back.
//!
//! Then the typed refusals: NaN gradients skip the step, bad batches are errors.

mod common;

use pupil::gpu::GpuContext;
use pupil::model::{synth, LlamaModel, LoraConfig, LoraTarget, ModelOptions, Trainer};
use pupil::ops::cross_entropy::IGNORE_TARGET;
use pupil::ops::optim::AdamW;

use common::train::{fixture_of, hf_to_gguf_rows, synth_file, Fixture};
use sha2::{Digest, Sha256};

fn fixture(preset: &str) -> Fixture {
    fixture_of("lora", preset)
}

/// The fixture's optimizer settings.
fn adamw_of(fx: &Fixture) -> AdamW {
    let a = &fx.meta["adamw"];
    let f = |k: &str| a[k].as_f64().unwrap();
    AdamW { lr: f("lr"), beta1: f("beta1"), beta2: f("beta2"), eps: f("eps"), weight_decay: f("weight_decay") }
}

/// The fixture's ten AdamW steps with clipping, each on the same batch as the script ran them:
/// every loss and the gradient norm clipped from within 1e-4 relative of PyTorch's float32 run,
/// or — where the fixture has PyTorch's float64 run too (`loss_f64`: the last-layer fixtures,
/// whose loss falls towards 0, where float32 rounding moves either float32 run by more) —
/// within 1e-4 of that or no farther from it than PyTorch's float32 run.
fn adamw_steps_match(ctx: &GpuContext, tr: &mut Trainer, fx: &Fixture, what: &str) {
    let opt = adamw_of(fx);
    let (ids, targets, docs) = batch(fx);
    for (i, s) in fx.meta["steps"].as_array().unwrap().iter().enumerate() {
        let loss = pollster::block_on(tr.forward_backward(ctx, &ids, &targets, &docs)).unwrap();
        let report = pollster::block_on(tr.step(ctx, &opt, fx.meta["max_norm"].as_f64())).unwrap();
        let rel_to = |got: f64, key: &str| s.get(key).map(|w| (got - w.as_f64().unwrap()).abs() / w.as_f64().unwrap());
        let (want, want_norm) = (s["loss"].as_f64().unwrap(), s["grad_norm"].as_f64().unwrap());
        let (mut e, mut en) = ((loss - want).abs() / want, (report.grad_norm - want_norm).abs() / want_norm);
        println!(
            "  step {}: loss {loss:.6} vs {want:.6} (rel {e:.1e}), grad norm {:.5} vs {want_norm:.5} (rel {en:.1e})",
            i + 1,
            report.grad_norm
        );
        // Where the fixture has PyTorch's float64 run too: within 1e-4 of that, or no farther
        // from it than PyTorch's own float32 run, is as good.
        if let (Some(e64), Some(en64)) = (rel_to(loss, "loss_f64"), rel_to(report.grad_norm, "grad_norm_f64")) {
            let (t64, tn64) = (rel_to(want, "loss_f64").unwrap(), rel_to(want_norm, "grad_norm_f64").unwrap());
            println!(
                "          vs PyTorch float64: loss rel {e64:.1e} (PyTorch float32's {t64:.1e}), grad norm rel {en64:.1e} ({tn64:.1e})"
            );
            let ok = |own: f64, ours: f64, theirs: f64| if ours < 1e-4 || ours <= theirs { 0.0 } else { own };
            (e, en) = (ok(e, e64, t64), ok(en, en64, tn64));
        }
        assert!(
            report.applied && e < 1e-4 && en < 1e-4,
            "{what} step {}: loss {loss} vs {want}, norm {} vs {want_norm}",
            i + 1,
            report.grad_norm
        );
    }
}

fn model(ctx: &GpuContext, fx: &Fixture) -> LlamaModel {
    let file = synth_file(fx);
    let opts = ModelOptions { context: Some(64), ..ModelOptions::default() };
    LlamaModel::load(ctx, &file, &opts, &mut |_, _| {}).unwrap()
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    let d: f64 = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let n: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (d / n).sqrt()
}

/// The batch as packed documents: targets are each next id, none after a document's last.
fn batch(fx: &Fixture) -> (Vec<u32>, Vec<u32>, Vec<usize>) {
    let seqs: Vec<Vec<u32>> = fx.meta["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect();
    let ids: Vec<u32> = seqs.concat();
    let targets: Vec<u32> =
        seqs.iter().flat_map(|s| s[1..].iter().copied().chain(std::iter::once(IGNORE_TARGET))).collect();
    (ids, targets, seqs.iter().map(|s| s.len()).collect())
}

/// (adapter, dA, dB) wanted.
type Wanted = Vec<(String, Vec<f32>, Vec<f32>)>;

/// Sets the fixture's adapters on a fresh trainer; returns the per-adapter (dA, dB) wanted, in
/// the file's row order.
fn trainer<'m>(ctx: &GpuContext, model: &'m LlamaModel, fx: &Fixture) -> (Trainer<'m>, Wanted) {
    let targets: Vec<LoraTarget> = fx.meta["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| LoraTarget::parse(t.as_str().unwrap()).unwrap())
        .collect();
    let cfg = LoraConfig {
        rank: fx.meta["rank"].as_u64().unwrap() as usize,
        alpha: fx.meta["alpha"].as_f64().unwrap() as f32,
        targets: targets.clone(),
        dropout: fx.meta.get("dropout").map_or(0.0, |d| d.as_f64().unwrap() as f32),
    };
    // The dropout fixtures rebuild the masks Pupil derives from this seed.
    let seed = fx.meta.get("trainer_seed").map_or(7, |s| s.as_u64().unwrap());
    let tr = Trainer::new(ctx, model, cfg, 64, seed).unwrap();
    let c = &model.config;
    let permuted = c.architecture == "llama";
    let r = tr.lora.config.rank;
    let mut at = 0;
    let mut take = |n: usize| {
        let v = fx.blobs[at..at + n].to_vec();
        at += n;
        v
    };
    let mut want = Vec::new();
    for l in 0..c.n_layers {
        for &t in &targets {
            let p = tr.lora.get(l, t).unwrap();
            let (a, b, da, db) = (take(r * p.in_dim), take(p.out_dim * r), take(r * p.in_dim), take(p.out_dim * r));
            let heads = match t {
                LoraTarget::Q if permuted => Some(c.n_heads),
                LoraTarget::K if permuted => Some(c.n_kv_heads),
                _ => None,
            };
            let fix = |m: Vec<f32>| heads.map_or(m.clone(), |h| hf_to_gguf_rows(&m, p.out_dim, r, h));
            tr.set_adapter(ctx, l, t, &a, &fix(b)).unwrap();
            want.push((format!("layer {l} {t:?}"), da, fix(db)));
        }
    }
    // (A projected alignment's fixture holds its projections after the adapters.)
    let after = fx.meta.get("projection_floats").map_or(0, |n| n.as_u64().unwrap() as usize);
    assert_eq!(at + after, fx.blobs.len(), "the .bin holds exactly every adapter");
    (tr, want)
}

fn gradients_match_pytorch(kind: &str, preset: &str) {
    let fx = fixture_of(kind, preset);
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let (mut tr, want) = trainer(&ctx, &model, &fx);
    let (ids, targets, docs) = batch(&fx);
    let loss = pollster::block_on(tr.forward_backward(&ctx, &ids, &targets, &docs)).unwrap();
    let want_loss = fx.meta["loss"].as_f64().unwrap();
    println!("{preset}: loss {loss:.6} vs PyTorch {want_loss:.6}");
    assert!((loss - want_loss).abs() / want_loss < 1e-5, "{preset}: loss {loss} vs {want_loss}");
    let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
    for ((name, da, db), (_, p)) in want.iter().zip(tr.lora.pairs()) {
        let got_da = pollster::block_on(p.da.read_f32(&ctx)).unwrap();
        let got_db = pollster::block_on(p.db.read_f32(&ctx)).unwrap();
        let (ea, eb) = (rel(&got_da, da), rel(&got_db, db));
        println!("  {name}: dA rel err {ea:.2e}, dB rel err {eb:.2e}");
        assert!(ea < 1e-4 && eb < 1e-4, "{preset} {name}: dA {ea:.2e}, dB {eb:.2e}");
        all_got.extend(got_da.iter().chain(&got_db));
        all_want.extend(da.iter().chain(db));
    }
    println!("{preset}: every adapter gradient together, rel err {:.2e}", rel(&all_got, &all_want));

    if kind == "dropout" {
        // Evaluation runs without dropout: the loss of the same adapters without it.
        let eval = pollster::block_on(tr.loss(&ctx, &ids, &targets, &docs)).unwrap();
        let plain = fixture(preset).meta["loss"].as_f64().unwrap();
        println!("{preset}: evaluation loss with dropout configured {eval:.6} vs PyTorch without dropout {plain:.6}");
        assert!((eval - plain).abs() / plain < 1e-5, "{preset}: evaluation dropped inputs");
    }

    let (mut tr, _) = trainer(&ctx, &model, &fx);
    adamw_steps_match(&ctx, &mut tr, &fx, preset);
}

#[test]
fn llama_lora_gradients_and_adamw_match_pytorch() {
    gradients_match_pytorch("lora", "tiny-llama");
}

/// LoRA dropout (p = 0.2, PEFT's modules drawing Pupil's counter-based masks): gradients of
/// the first pass and ten steps (fresh masks every pass) as without, and no dropout in
/// evaluation.
#[test]
fn llama_lora_dropout_matches_pytorch() {
    gradients_match_pytorch("dropout", "tiny-llama");
}

#[test]
fn qwen2_lora_dropout_matches_pytorch() {
    gradients_match_pytorch("dropout", "tiny-qwen2");
}

/// qwen3: Q and K projected apart, each head RMS-normed (frozen weights) before RoPE; the
/// QK-norm backward between RoPE's and the projections'. head_dim 128 > hidden / heads.
#[test]
fn qwen3_lora_gradients_and_adamw_match_pytorch() {
    gradients_match_pytorch("lora", "tiny-qwen3");
}

#[test]
fn qwen3_lora_dropout_matches_pytorch() {
    gradients_match_pytorch("dropout", "tiny-qwen3");
}

/// qwen3's last layer in full: Q and K row blocks of one trained Q|K, and the QK-norm weights'
/// gradients.
#[test]
fn qwen3_last_layer_gradients_and_adamw_match_pytorch() {
    last_layer_matches_pytorch("tiny-qwen3");
}

#[test]
fn qwen3_attention_gates_match_pytorch() {
    gates_match_pytorch("tiny-qwen3");
}

/// gemma3: (1+w) norms, post-attention and post-MLP norms, GeGLU, embedding scaling, QK-norm,
/// and 5 of 7 layers sliding-window (16 tokens, their own RoPE base) over 24-token sequences.
#[test]
fn gemma3_lora_gradients_and_adamw_match_pytorch() {
    gradients_match_pytorch("lora", "tiny-gemma3");
}

#[test]
fn gemma3_lora_dropout_matches_pytorch() {
    gradients_match_pytorch("dropout", "tiny-gemma3");
}

/// gemma3's last layer in full: its post-norms' and QK-norms' weights too.
#[test]
fn gemma3_last_layer_gradients_and_adamw_match_pytorch() {
    last_layer_matches_pytorch("tiny-gemma3");
}

#[test]
fn gemma3_attention_gates_match_pytorch() {
    gates_match_pytorch("tiny-gemma3");
}

/// qwen2: Q/K/V biases (frozen), NeoX RoPE on unpermuted rows, tied head.
#[test]
fn qwen2_lora_gradients_and_adamw_match_pytorch() {
    gradients_match_pytorch("lora", "tiny-qwen2");
}

/// A NaN in the gradients skips the step (weights and moments unchanged, reported); bad
/// batches and models training does not run yet are typed errors.
#[test]
fn nan_gradients_skip_the_step_and_bad_input_is_refused() {
    let fx = fixture("tiny-llama");
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let (mut tr, _) = trainer(&ctx, &model, &fx);
    let (ids, targets, docs) = batch(&fx);
    let p = tr.lora.get(1, LoraTarget::V).unwrap();
    let mut a = pollster::block_on(p.a.read_f32(&ctx)).unwrap();
    a[3] = f32::NAN;
    let b = pollster::block_on(p.b.read_f32(&ctx)).unwrap();
    tr.set_adapter(&ctx, 1, LoraTarget::V, &a, &b).unwrap();
    let before = pollster::block_on(tr.lora.get(0, LoraTarget::Q).unwrap().a.read_f32(&ctx)).unwrap();
    let loss = pollster::block_on(tr.forward_backward(&ctx, &ids, &targets, &docs)).unwrap();
    let report = pollster::block_on(tr.step(&ctx, &AdamW::default(), Some(1.0))).unwrap();
    println!("NaN in an adapter: loss {loss}, step {report:?}");
    assert!(!loss.is_finite() && !report.applied && report.nonfinite > 0 && tr.steps == 0);
    let after = pollster::block_on(tr.lora.get(0, LoraTarget::Q).unwrap().a.read_f32(&ctx)).unwrap();
    assert!(before == after, "a skipped step changed the weights");

    let mut bad = |ids: &[u32], targets: &[u32], docs: &[usize]| {
        let e = pollster::block_on(tr.forward_backward(&ctx, ids, targets, docs)).unwrap_err();
        println!("refused: {e}");
        e.kind()
    };
    assert_eq!(bad(&[1, 2, 9999], &[2, 9999, IGNORE_TARGET], &[3]), "InvalidArgument");
    assert_eq!(bad(&ids, &targets, &[3, 3]), "InvalidArgument");
    assert_eq!(bad(&[1, 2], &[IGNORE_TARGET, IGNORE_TARGET], &[2]), "InvalidArgument");
    assert_eq!(bad(&vec![1; 65], &vec![1; 65], &[65]), "InvalidArgument");
    drop(tr);

    // Not wired yet: training gated attention (Qwen3-Next's own gate).
    let synth_model = |preset: &str| {
        let file = synth::synthesize(&synth::preset(preset).unwrap(), 1, &mut |_, _| {}).unwrap();
        let opts = ModelOptions { context: Some(64), ..ModelOptions::default() };
        LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap()
    };
    let q3n = synth_model("tiny-qwen3next");
    let e = Trainer::new(&ctx, &q3n, LoraConfig::new(4, 8.0, vec![LoraTarget::Q]), 64, 1).err().unwrap();
    println!("refused: {e}");
    assert_eq!(e.kind(), "Unsupported");
}

/// Full training of the last layer (every weight, norms and biases, as f32 copies of the
/// quantized ones; no LoRA) against PyTorch autograd with the rest frozen: every gradient
/// within 1e-4 relative, ten clipped AdamW steps' losses within 1e-4.
fn last_layer_matches_pytorch(preset: &str) {
    let fx = fixture_of("last1", preset);
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let c = &model.config;
    // The fixture's gradients by HF name.
    let mut grads = std::collections::HashMap::new();
    let mut at = 0;
    for p in fx.meta["params"].as_array().unwrap() {
        let n: usize = p["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product();
        let short = p["name"].as_str().unwrap().splitn(4, '.').nth(3).unwrap().to_string();
        grads.insert(short, fx.blobs[at..at + n].to_vec());
        at += n;
    }
    assert_eq!(at, fx.blobs.len());
    let g = |k: &str| grads.get(k).cloned().unwrap_or_else(|| panic!("fixture lacks {k}"));
    let llama = c.architecture == "llama";
    let perm = |m: Vec<f32>, heads: usize| {
        if llama {
            let rows = heads * c.head_dim;
            hf_to_gguf_rows(&m, rows, m.len() / rows, heads)
        } else {
            m
        }
    };
    let cat = |a: Vec<f32>, b: Vec<f32>| [a, b].concat();
    let mut want: Vec<(&str, Vec<f32>)> = vec![
        ("attn_norm", g("input_layernorm.weight")),
        ("qk", cat(perm(g("self_attn.q_proj.weight"), c.n_heads), perm(g("self_attn.k_proj.weight"), c.n_kv_heads))),
    ];
    if c.architecture == "qwen2" {
        want.push(("qk_bias", cat(g("self_attn.q_proj.bias"), g("self_attn.k_proj.bias"))));
    }
    if c.qk_norm {
        want.extend([("q_norm", g("self_attn.q_norm.weight")), ("k_norm", g("self_attn.k_norm.weight"))]);
    }
    want.push(("v", g("self_attn.v_proj.weight")));
    if c.architecture == "qwen2" {
        want.push(("v_bias", g("self_attn.v_proj.bias")));
    }
    want.push(("o", g("self_attn.o_proj.weight")));
    // gemma3's norms: post_attention_layernorm is the attention's post-norm there, the MLP's
    // input norm is pre_feedforward_layernorm (llama's post_attention_layernorm).
    let gemma = c.post_norms;
    if gemma {
        want.push(("attn_post_norm", g("post_attention_layernorm.weight")));
    }
    let ffn_norm = if gemma { "pre_feedforward_layernorm.weight" } else { "post_attention_layernorm.weight" };
    want.extend([
        ("ffn_norm", g(ffn_norm)),
        ("gate_up", cat(g("mlp.gate_proj.weight"), g("mlp.up_proj.weight"))),
        ("down", g("mlp.down_proj.weight")),
    ]);
    if gemma {
        want.push(("ffn_post_norm", g("post_feedforward_layernorm.weight")));
    }
    let (ids, targets, docs) = batch(&fx);
    let mut tr = Trainer::with_last_layers(&ctx, &model, None, 1, 64, 1).unwrap();
    let loss = pollster::block_on(tr.forward_backward(&ctx, &ids, &targets, &docs)).unwrap();
    let want_loss = fx.meta["loss"].as_f64().unwrap();
    println!("{preset} last layer: loss {loss:.6} vs PyTorch {want_loss:.6}, {} trainable", tr.parameter_count());
    assert!((loss - want_loss).abs() / want_loss < 1e-5);
    let dense = tr.dense[c.n_layers - 1].as_ref().unwrap();
    let got = dense.params();
    assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>());
    for ((name, p), (_, w)) in got.iter().zip(&want) {
        let e = rel(&pollster::block_on(p.g.read_f32(&ctx)).unwrap(), w);
        println!("  {name}: gradient rel err {e:.2e}");
        assert!(e < 1e-4, "{preset} {name}: {e:.2e}");
    }
    let mut tr = Trainer::with_last_layers(&ctx, &model, None, 1, 64, 1).unwrap();
    adamw_steps_match(&ctx, &mut tr, &fx, preset);
}

#[test]
fn llama_last_layer_gradients_and_adamw_match_pytorch() {
    last_layer_matches_pytorch("tiny-llama");
}

#[test]
fn qwen2_last_layer_gradients_and_adamw_match_pytorch() {
    last_layer_matches_pytorch("tiny-qwen2");
}

/// Trainable attention output gates added to every layer (nothing else trained), against
/// PyTorch with the same gate hooked in before o_proj: every gate gradient within 1e-4
/// relative, ten clipped AdamW steps' losses within 1e-4.
fn gates_match_pytorch(preset: &str) {
    let fx = fixture_of("gates", preset);
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let c = &model.config;
    let (qd, h) = (fx.meta["q_width"].as_u64().unwrap() as usize, c.hidden);
    let build = || {
        let tr = Trainer::with_last_layers(&ctx, &model, None, 0, 64, 1)
            .unwrap()
            .with_attention_gates(&ctx, 5.0, 1)
            .unwrap();
        let mut at = 0;
        let mut want = Vec::new();
        for l in 0..c.n_layers {
            let mut take = |n: usize| {
                at += n;
                fx.blobs[at - n..at].to_vec()
            };
            let (w, dw, b, db) = (take(qd * h), take(qd * h), take(qd), take(qd));
            tr.set_gate(&ctx, l, &w, &b).unwrap();
            want.push((dw, db));
        }
        assert_eq!(at, fx.blobs.len());
        (tr, want)
    };
    let (ids, targets, docs) = batch(&fx);
    let (mut tr, want) = build();
    let loss = pollster::block_on(tr.forward_backward(&ctx, &ids, &targets, &docs)).unwrap();
    let want_loss = fx.meta["loss"].as_f64().unwrap();
    println!("{preset} gates: loss {loss:.6} vs PyTorch {want_loss:.6}");
    assert!((loss - want_loss).abs() / want_loss < 1e-5);
    for (l, (g, (dw, db))) in tr.gates.iter().zip(&want).enumerate() {
        let ew = rel(&pollster::block_on(g.w.g.read_f32(&ctx)).unwrap(), dw);
        let eb = rel(&pollster::block_on(g.b.g.read_f32(&ctx)).unwrap(), db);
        println!("  layer {l}: dW rel err {ew:.2e}, db rel err {eb:.2e}");
        assert!(ew < 1e-4 && eb < 1e-4, "{preset} layer {l}: {ew:.2e} {eb:.2e}");
    }
    let (mut tr, _) = build();
    adamw_steps_match(&ctx, &mut tr, &fx, preset);
}

#[test]
fn llama_attention_gates_match_pytorch() {
    gates_match_pytorch("tiny-llama");
}

#[test]
fn qwen2_attention_gates_match_pytorch() {
    gates_match_pytorch("tiny-qwen2");
}

/// What a run trained, written as safetensors (`train::trained_safetensors`) and read back by
/// the checkpoint reader: LoRA A/B, the fully trained last layer split back into the file's
/// tensors (Q|K, gate|up, the biases), and the gates, each equal to the trainer's values.
#[test]
fn trained_weights_round_trip_through_safetensors() {
    let fx = fixture_of("last1", "tiny-qwen2");
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let c = &model.config;
    let (qd, kd, h, f) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.hidden, c.ffn_hidden);
    let lora = LoraConfig { dropout: 0.1, ..LoraConfig::new(4, 8.0, vec![LoraTarget::Q, LoraTarget::Down]) };
    let mut tr = Trainer::with_last_layers(&ctx, &model, Some(lora), 1, 64, 3)
        .unwrap()
        .with_attention_gates(&ctx, 5.0, 3)
        .unwrap();
    let (ids, targets, docs) = batch(&fx);
    pollster::block_on(tr.forward_backward(&ctx, &ids, &targets, &docs)).unwrap();
    assert!(pollster::block_on(tr.step(&ctx, &AdamW::default(), Some(1.0))).unwrap().applied);
    let bytes = pollster::block_on(pupil::train::trained_safetensors(&ctx, &tr, &c.architecture)).unwrap();
    let read = pollster::block_on(pupil::model::safetensors::read_safetensors_header(&bytes, "trained")).unwrap();
    let values = |name: &str| {
        let t = read.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name} in the file"));
        let raw = &bytes[t.start as usize..(t.start + t.len) as usize];
        (t.shape.clone(), raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>())
    };
    let host = |t: &pupil::gpu::Tensor| pollster::block_on(t.read_f32(&ctx)).unwrap();
    let last = c.n_layers - 1;
    let mut expected = 0;
    for (l, p) in tr.lora.pairs() {
        let name = p.target.hf_name();
        assert_eq!(values(&format!("layers.{l}.{name}.lora_A")), (vec![4, p.in_dim as u64], host(&p.a)));
        assert_eq!(values(&format!("layers.{l}.{name}.lora_B")), (vec![p.out_dim as u64, 4], host(&p.b)));
        expected += 2;
    }
    let d = tr.dense[last].as_ref().unwrap();
    let (qk, qk_bias, gu) = (host(&d.qk.w), host(&d.qk_bias.as_ref().unwrap().w), host(&d.gate_up.w));
    let blk = |s: &str| values(&format!("blk.{last}.{s}"));
    let u = |d: usize| d as u64;
    assert_eq!(blk("attn_q.weight"), (vec![u(qd), u(h)], qk[..qd * h].to_vec()));
    assert_eq!(blk("attn_k.weight"), (vec![u(kd), u(h)], qk[qd * h..].to_vec()));
    assert_eq!(blk("attn_q.bias"), (vec![u(qd)], qk_bias[..qd].to_vec()));
    assert_eq!(blk("attn_k.bias"), (vec![u(kd)], qk_bias[qd..].to_vec()));
    assert_eq!(blk("ffn_gate.weight"), (vec![u(f), u(h)], gu[..f * h].to_vec()));
    assert_eq!(blk("ffn_up.weight"), (vec![u(f), u(h)], gu[f * h..].to_vec()));
    for (name, p) in [
        ("attn_norm.weight", &d.attn_norm),
        ("attn_v.weight", &d.v),
        ("attn_v.bias", d.v_bias.as_ref().unwrap()),
        ("attn_output.weight", &d.o),
        ("ffn_norm.weight", &d.ffn_norm),
        ("ffn_down.weight", &d.down),
    ] {
        assert_eq!(blk(name).1, host(&p.w), "{name}");
    }
    expected += 12;
    for (l, g) in tr.gates.iter().enumerate() {
        assert_eq!(values(&format!("blk.{l}.attn_output_gate.weight")).1, host(&g.w.w));
        assert_eq!(values(&format!("blk.{l}.attn_output_gate.bias")).1, host(&g.b.w));
        expected += 2;
    }
    assert_eq!(read.len(), expected, "nothing else in the file");
    println!("{} tensors, {} bytes", read.len(), bytes.len());

    // gemma3: a trained layer's norms train as w of x̂·(1 + w) and go back to the file's 1 + w.
    let fx = fixture_of("last1", "tiny-gemma3");
    let model = self::model(&ctx, &fx);
    let tr = Trainer::with_last_layers(&ctx, &model, None, 1, 64, 3).unwrap();
    let bytes = pollster::block_on(pupil::train::trained_safetensors(&ctx, &tr, "gemma3")).unwrap();
    let read = pollster::block_on(pupil::model::safetensors::read_safetensors_header(&bytes, "trained")).unwrap();
    let last = model.config.n_layers - 1;
    let d = tr.dense[last].as_ref().unwrap();
    let (q_norm, k_norm) = d.qk_norm.as_ref().unwrap();
    let (attn_post, ffn_post) = d.post_norms.as_ref().unwrap();
    for (name, p) in [
        ("attn_norm", &d.attn_norm),
        ("attn_q_norm", q_norm),
        ("attn_k_norm", k_norm),
        ("post_attention_norm", attn_post),
        ("ffn_norm", &d.ffn_norm),
        ("post_ffw_norm", ffn_post),
    ] {
        let t = read.iter().find(|t| t.name == format!("blk.{last}.{name}.weight")).unwrap();
        let raw = &bytes[t.start as usize..(t.start + t.len) as usize];
        let saved: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let plus_one: Vec<f32> = host(&p.w).iter().map(|w| w + 1.0).collect();
        assert_eq!(saved, plus_one, "{name}");
    }
}

/// Gradient accumulation: the fixture's two sequences as two passes, each weighted by its
/// share of the counted targets, give PyTorch's gradients of the batch of both.
#[test]
fn accumulated_passes_match_pytorch_on_the_whole_batch() {
    let fx = fixture("tiny-llama");
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let (mut tr, want) = trainer(&ctx, &model, &fx);
    let (ids, targets, docs) = batch(&fx);
    let total = targets.iter().filter(|&&t| t != IGNORE_TARGET).count() as f64;
    let mut at = 0;
    let mut loss = 0.0;
    for &len in &docs {
        let (i, t) = (&ids[at..at + len], &targets[at..at + len]);
        let w = t.iter().filter(|&&t| t != IGNORE_TARGET).count() as f64 / total;
        loss += w * pollster::block_on(tr.forward_backward_weighted(&ctx, i, t, &[len], w)).unwrap();
        at += len;
    }
    let want_loss = fx.meta["loss"].as_f64().unwrap();
    let (mut got, mut wanted) = (Vec::new(), Vec::new());
    for ((_, da, db), (_, p)) in want.iter().zip(tr.lora.pairs()) {
        got.extend(pollster::block_on(p.da.read_f32(&ctx)).unwrap());
        got.extend(pollster::block_on(p.db.read_f32(&ctx)).unwrap());
        wanted.extend(da.iter().chain(db));
    }
    let e = rel(&got, &wanted);
    println!("two accumulated passes: loss {loss:.6} vs PyTorch {want_loss:.6}, every gradient rel err {e:.2e}");
    assert!((loss - want_loss).abs() / want_loss < 1e-5 && e < 1e-4);
    assert_eq!(
        pollster::block_on(tr.forward_backward_weighted(&ctx, &ids, &targets, &docs, 0.0)).unwrap_err().kind(),
        "InvalidArgument"
    );
}

/// Online distillation (`Trainer::distill_forward_backward`): another `pupil synth` model of
/// the same shape (seed 2) teaches the LoRA student of the `lora` fixture through Hinton's loss
/// (τ = 2, τ²·KL + 0.5·CE per next-token position, kd_<preset>.*): the loss, the KL and every
/// adapter gradient within 1e-4 of PyTorch's, and ten clipped AdamW steps' losses and KLs.
/// `kind` kd_jsd: the same with the generalised Jensen–Shannon divergence (β 0.3).
fn distillation_matches_pytorch(kind: &str, preset: &str) {
    use pupil::ops::distill_loss::{DistillLoss, Divergence};
    let fx = fixture_of(kind, preset);
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let teacher_file =
        synth::synthesize(&synth::preset(preset).unwrap(), fx.meta["teacher_seed"].as_u64().unwrap(), &mut |_, _| {})
            .unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&teacher_file)), fx.meta["teacher_gguf_sha256"].as_str().unwrap());
    let opts = ModelOptions { context: Some(64), ..ModelOptions::default() };
    let teacher_model = LlamaModel::load(&ctx, &teacher_file, &opts, &mut |_, _| {}).unwrap();
    let mut teacher = Trainer::with_last_layers(&ctx, &teacher_model, None, 0, 64, 1).unwrap();
    let f = |k: &str| fx.meta[k].as_f64().unwrap();
    let divergence = match fx.meta["divergence"].as_str() {
        None | Some("forward") => Divergence::Forward,
        Some("jsd") => Divergence::Jsd { beta: f("jsd_beta") as f32 },
        Some(other) => panic!("divergence {other}"),
    };
    let cfg = DistillLoss {
        kl_coef: f("kl_coef") as f32,
        divergence,
        ..DistillLoss::hinton(f("tau") as f32, f("kd_alpha") as f32)
    };
    let (ids, targets, docs) = batch(&fx);
    let (mut tr, want) = trainer(&ctx, &model, &fx);
    let (loss, kl) =
        pollster::block_on(tr.distill_forward_backward(&ctx, &mut teacher, &cfg, &ids, &targets, &docs, 1.0)).unwrap();
    let (el, ek) = ((loss - f("loss")).abs() / f("loss"), (kl - f("kl")).abs() / f("kl"));
    println!(
        "{preset} distillation ({divergence}): loss {loss:.6} vs PyTorch {:.6} ({el:.1e}), KL {kl:.6} vs {:.6} ({ek:.1e})",
        f("loss"),
        f("kl")
    );
    assert!(el < 1e-5 && ek < 1e-5);
    let (mut got, mut wanted) = (Vec::new(), Vec::new());
    for ((name, da, db), (_, p)) in want.iter().zip(tr.lora.pairs()) {
        let (ga, gb) =
            (pollster::block_on(p.da.read_f32(&ctx)).unwrap(), pollster::block_on(p.db.read_f32(&ctx)).unwrap());
        let (ea, eb) = (rel(&ga, da), rel(&gb, db));
        assert!(ea < 1e-4 && eb < 1e-4, "{preset} {name}: dA {ea:.2e}, dB {eb:.2e}");
        got.extend(ga.iter().chain(&gb));
        wanted.extend(da.iter().chain(db));
    }
    println!("{preset} distillation: every adapter gradient together, rel err {:.2e}", rel(&got, &wanted));
    let opt = adamw_of(&fx);
    let (mut tr, _) = trainer(&ctx, &model, &fx);
    for (i, s) in fx.meta["steps"].as_array().unwrap().iter().enumerate() {
        let (loss, kl) =
            pollster::block_on(tr.distill_forward_backward(&ctx, &mut teacher, &cfg, &ids, &targets, &docs, 1.0))
                .unwrap();
        let report = pollster::block_on(tr.step(&ctx, &opt, fx.meta["max_norm"].as_f64())).unwrap();
        let r = |got: f64, key: &str| (got - s[key].as_f64().unwrap()).abs() / s[key].as_f64().unwrap();
        let (el, ek, en) = (r(loss, "loss"), r(kl, "kl"), r(report.grad_norm, "grad_norm"));
        println!("  step {}: loss {loss:.6} ({el:.1e}), KL {kl:.6} ({ek:.1e}), grad norm rel {en:.1e}", i + 1);
        assert!(report.applied && el < 1e-4 && ek < 1e-4 && en < 1e-4, "{preset} step {}", i + 1);
    }
    // One vocabulary: a teacher with another is refused.
    let mut spec = synth::preset(preset).unwrap();
    spec.vocab += 64;
    let other = synth::synthesize(&spec, 1, &mut |_, _| {}).unwrap();
    let other = LlamaModel::load(&ctx, &other, &opts, &mut |_, _| {}).unwrap();
    let mut t2 = Trainer::with_last_layers(&ctx, &other, None, 0, 64, 1).unwrap();
    let e = pollster::block_on(tr.distill_forward_backward(&ctx, &mut t2, &cfg, &ids, &targets, &docs, 1.0));
    assert_eq!(e.unwrap_err().kind(), "InvalidArgument");
}

#[test]
fn llama_distillation_matches_pytorch() {
    distillation_matches_pytorch("kd", "tiny-llama");
}

#[test]
fn qwen2_distillation_matches_pytorch() {
    distillation_matches_pytorch("kd", "tiny-qwen2");
}

#[test]
fn llama_jsd_distillation_matches_pytorch() {
    distillation_matches_pytorch("kd_jsd", "tiny-llama");
}

/// Distillation with hidden-state alignment (`Trainer::with_hidden_alignment`, align_<preset>.*:
/// the kd fixture's loss plus 0.5 · ‖h_s − h_t‖² / ‖h_t‖² at the stream after block 1 of both,
/// per token): the loss and every adapter gradient against PyTorch's; without the alignment
/// the gradients differ (the check can fail). align_proj_<preset>.*: a wider, deeper teacher
/// (`teacher_preset`) through a learned projection P per pair (‖P·h_s − h_t‖², P set to the
/// fixture's): P's gradient too, a central finite difference of the loss along it, and ten
/// AdamW steps over the adapters and P against PyTorch's losses and clipped norms.
fn alignment_matches_pytorch(kind: &str, preset: &str) {
    use pupil::model::HiddenAlignment;
    use pupil::ops::distill_loss::DistillLoss;
    let fx = fixture_of(kind, preset);
    let ctx = common::context(false, true).unwrap();
    let model = model(&ctx, &fx);
    let teacher_preset = fx.meta.get("teacher_preset").map_or(preset, |p| p.as_str().unwrap());
    let teacher_file = synth::synthesize(
        &synth::preset(teacher_preset).unwrap(),
        fx.meta["teacher_seed"].as_u64().unwrap(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&teacher_file)), fx.meta["teacher_gguf_sha256"].as_str().unwrap());
    let opts = ModelOptions { context: Some(64), ..ModelOptions::default() };
    let teacher_model = LlamaModel::load(&ctx, &teacher_file, &opts, &mut |_, _| {}).unwrap();
    let mut teacher = Trainer::with_last_layers(&ctx, &teacher_model, None, 0, 64, 1).unwrap();
    let f = |k: &str| fx.meta[k].as_f64().unwrap();
    let cfg =
        DistillLoss { kl_coef: f("kl_coef") as f32, ..DistillLoss::hinton(f("tau") as f32, f("kd_alpha") as f32) };
    let pairs: Vec<(usize, usize)> = fx.meta["align_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
        .collect();
    let (hs, ht) = (model.config.hidden, teacher_model.config.hidden);
    let projected = hs != ht;
    let alignment = HiddenAlignment { pairs: pairs.clone(), weight: f("align_weight") as f32, projected };
    // The fixture's projections (P, dP per pair) follow the adapters' blobs.
    let proj_len = ht * hs;
    let proj_at = fx.blobs.len() - if projected { 2 * proj_len * pairs.len() } else { 0 };
    assert_eq!(fx.blobs.len() - proj_at, fx.meta.get("projection_floats").map_or(0, |n| n.as_u64().unwrap() as usize));
    fn aligned<'m>(
        ctx: &GpuContext,
        tr: Trainer<'m>,
        a: &HiddenAlignment,
        ht: usize,
        projections: &[f32],
    ) -> Trainer<'m> {
        let tr = tr.with_hidden_alignment(ctx, a.clone(), ht).unwrap();
        let len = projections.len() / 2 / a.pairs.len().max(1);
        for i in 0..tr.alignment_projections().len() {
            tr.set_alignment_projection(ctx, i, &projections[2 * len * i..][..len]).unwrap();
        }
        tr
    }
    let projections = &fx.blobs[proj_at..];
    let (ids, targets, docs) = batch(&fx);
    let (tr, want) = trainer(&ctx, &model, &fx);
    let mut tr = aligned(&ctx, tr, &alignment, ht, projections);
    let (loss, _) =
        pollster::block_on(tr.distill_forward_backward(&ctx, &mut teacher, &cfg, &ids, &targets, &docs, 1.0)).unwrap();
    let el = (loss - f("loss")).abs() / f("loss");
    println!(
        "{preset} {kind}: loss {loss:.6} vs PyTorch {:.6} ({el:.1e}), of it alignment {:.6}",
        f("loss"),
        f("align")
    );
    assert!(el < 1e-5);
    let (mut got, mut wanted) = (Vec::new(), Vec::new());
    for ((name, da, db), (_, p)) in want.iter().zip(tr.lora.pairs()) {
        let (ga, gb) =
            (pollster::block_on(p.da.read_f32(&ctx)).unwrap(), pollster::block_on(p.db.read_f32(&ctx)).unwrap());
        let (ea, eb) = (rel(&ga, da), rel(&gb, db));
        assert!(ea < 1e-4 && eb < 1e-4, "{preset} {name}: dA {ea:.2e}, dB {eb:.2e}");
        got.extend(ga.iter().chain(&gb));
        wanted.extend(da.iter().chain(db));
    }
    println!("{preset} {kind}: every adapter gradient together, rel err {:.2e}", rel(&got, &wanted));
    assert_eq!(tr.alignment_projections().len(), if projected { pairs.len() } else { 0 });
    let grads: Vec<Vec<f32>> =
        tr.alignment_projections().iter().map(|p| pollster::block_on(p.g.read_f32(&ctx)).unwrap()).collect();
    for (i, dp) in grads.iter().enumerate() {
        let at = proj_at + 2 * proj_len * i + proj_len;
        let e = rel(dp, &fx.blobs[at..at + proj_len]);
        println!("{preset} {kind}: projection {i} [{ht}, {hs}] gradient rel err {e:.2e}");
        assert!(e < 1e-4, "dP {i}: {e:.2e}");
        // The loss is quadratic in P (only the alignment term sees it), so a central
        // difference along dP's unit direction is its slope ‖dP‖ exactly, whatever the step:
        // a large one keeps f32 rounding out of it.
        let norm = dp.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let p0 = &fx.blobs[proj_at + 2 * proj_len * i..][..proj_len];
        let eps = 0.5;
        let mut moved = |sign: f64| {
            let w: Vec<f32> =
                p0.iter().zip(dp).map(|(&w, &g)| (w as f64 + sign * eps * g as f64 / norm) as f32).collect();
            tr.set_alignment_projection(&ctx, i, &w).unwrap();
            pollster::block_on(tr.distill_loss(&ctx, &mut teacher, &cfg, None, &ids, &targets, &docs)).unwrap().0
        };
        let fd = (moved(1.0) - moved(-1.0)) / (2.0 * eps);
        tr.set_alignment_projection(&ctx, i, p0).unwrap();
        println!("{preset} {kind}: directional derivative along dP {fd:.6}, ‖dP‖ {norm:.6}");
        assert!((fd - norm).abs() < 1e-3 * norm, "finite difference {fd} vs ‖dP‖ {norm}");
    }
    let steps = fx.meta["steps"].as_array().unwrap();
    if !steps.is_empty() {
        let opt = adamw_of(&fx);
        let (tr, _) = trainer(&ctx, &model, &fx);
        let mut tr = aligned(&ctx, tr, &alignment, ht, projections);
        for (i, s) in steps.iter().enumerate() {
            let (loss, kl) =
                pollster::block_on(tr.distill_forward_backward(&ctx, &mut teacher, &cfg, &ids, &targets, &docs, 1.0))
                    .unwrap();
            let report = pollster::block_on(tr.step(&ctx, &opt, fx.meta["max_norm"].as_f64())).unwrap();
            let r = |got: f64, key: &str| (got - s[key].as_f64().unwrap()).abs() / s[key].as_f64().unwrap();
            let (el, ek, en) = (r(loss, "loss"), r(kl, "kl"), r(report.grad_norm, "grad_norm"));
            println!("  step {}: loss {loss:.6} ({el:.1e}), KL {kl:.6} ({ek:.1e}), grad norm rel {en:.1e}", i + 1);
            assert!(report.applied && el < 1e-4 && ek < 1e-4 && en < 1e-4, "{preset} {kind} step {}", i + 1);
        }
    }
    // Without the alignment term: not PyTorch's gradients.
    let (mut plain, _) = trainer(&ctx, &model, &fx);
    pollster::block_on(plain.distill_forward_backward(&ctx, &mut teacher, &cfg, &ids, &targets, &docs, 1.0)).unwrap();
    let p = plain.lora.pairs().next().unwrap().1;
    let ga = pollster::block_on(p.da.read_f32(&ctx)).unwrap();
    assert!(rel(&ga, &want[0].1) > 1e-3, "the alignment changes the gradients");
    if projected {
        // Other hidden sizes without a projection are refused, naming the way out.
        let (tr, _) = trainer(&ctx, &model, &fx);
        let e = tr.with_hidden_alignment(&ctx, HiddenAlignment { projected: false, ..alignment }, ht).err().unwrap();
        assert!(e.to_string().contains("projection"), "{e}");
    }
}

#[test]
fn llama_alignment_matches_pytorch() {
    alignment_matches_pytorch("align", "tiny-llama");
}

#[test]
fn llama_projected_alignment_to_a_wider_teacher_matches_pytorch() {
    alignment_matches_pytorch("align_proj", "tiny-llama");
}

#[test]
fn qwen2_alignment_matches_pytorch() {
    alignment_matches_pytorch("align", "tiny-qwen2");
}

/// The distillation run (`train::distill`, what `pupil distill` drives): a LoRA student of
/// tiny-llama taught by another seed's model over packed rows lowers its held-out KL to the
/// teacher, reports a KL per step, and the teacher is untouched (its loss the same after).
#[test]
fn distillation_run_lowers_the_held_out_kl() {
    use pupil::ops::distill_loss::DistillLoss;
    use pupil::train::{self, Document, FinetuneConfig};
    let ctx = common::context(false, true).unwrap();
    let opts = ModelOptions { context: Some(64), ..ModelOptions::default() };
    let load = |seed: u64| {
        let file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), seed, &mut |_, _| {}).unwrap();
        LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap()
    };
    let (student, teacher_model) = (load(1), load(2));
    let mut rng = pupil::rng::SplitMix64::new(3);
    let docs: Vec<Document> = (0..12)
        .map(|_| {
            let ids: Vec<u32> = (0..20).map(|_| rng.below(512)).collect();
            Document { counted: vec![true; ids.len()], ids }
        })
        .collect();
    let rows = train::pack(&docs, 24);
    let cfg = FinetuneConfig {
        lora: LoraConfig::new(8, 16.0, LoraTarget::ALL.to_vec()),
        steps: 30,
        seq_len: 24,
        batch_rows: 2,
        lr: 2e-2,
        warmup: 2,
        eval_fraction: 0.25,
        ..FinetuneConfig::default()
    };
    let mut tr = train::trainer_for(&ctx, &student, &cfg).unwrap();
    let mut teacher = Trainer::with_last_layers(&ctx, &teacher_model, None, 0, 48, 1).unwrap();
    let loss = DistillLoss::hinton(2.0, 0.5);
    let probe = &rows[0];
    let before = pollster::block_on(teacher.loss(&ctx, &probe.ids, &probe.targets, &probe.doc_lengths)).unwrap();
    let report =
        pollster::block_on(train::distill(&ctx, &mut tr, &mut teacher, &loss, &rows, &cfg, &mut |_| {})).unwrap();
    let (a, b) = (report.eval_kl_before.unwrap(), report.eval_kl_after.unwrap());
    println!("held-out KL {a:.4} → {b:.4}; CE {:?} → {:?}", report.eval_loss_before, report.eval_loss_after);
    assert!(b < 0.95 * a, "the held-out KL did not fall by 5%: {a} → {b}");
    assert!(report.steps.iter().all(|s| s.kl.is_some_and(|k| k > 0.0) && s.applied));
    let after = pollster::block_on(teacher.loss(&ctx, &probe.ids, &probe.targets, &probe.doc_lengths)).unwrap();
    assert_eq!(before, after, "the teacher changed");
}
