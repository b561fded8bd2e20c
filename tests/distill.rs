//! Distillation workflows beyond the loss (tests/train_lora.rs checks the online teacher's
//! loss and gradients against PyTorch): context distillation (the teacher reads an
//! instruction the student does not; its rows gathered onto the student's) and depth-pruned
//! students (`pupil prune`, against transformers with the layers removed).

mod common;

use pupil::gpu::GpuContext;
use pupil::model::gguf::parse_header;
use pupil::model::prune::{keep_layers, least_influential_dropped, parse_layer_list};
use pupil::model::{synth, LlamaModel, Logits, LoraConfig, LoraTarget, ModelConfig, ModelOptions, Trainer};
use pupil::ops::cross_entropy::IGNORE_TARGET;
use pupil::ops::distill_loss::DistillLoss;
use pupil::rng::SplitMix64;
use pupil::train::{self, ContextPair, Document, FinetuneConfig};

fn load(ctx: &GpuContext, file: &[u8]) -> LlamaModel {
    let opts = ModelOptions { context: Some(128), ..ModelOptions::default() };
    LlamaModel::load(ctx, file, &opts, &mut |_, _| {}).unwrap()
}

/// Every position's logits of `ids` by the inference path (KV cache, no trainer).
fn logits(ctx: &GpuContext, model: &LlamaModel, ids: &[u32]) -> Vec<f32> {
    let cache = model.new_cache(ctx, 1).unwrap();
    model.forward(ctx, &cache, 0, 0, ids, Logits::All).unwrap();
    pollster::block_on(model.logits(ids.len()).unwrap().read_f32(ctx)).unwrap()
}

/// KL(softmax(t/τ) ‖ softmax(s/τ)) in f64.
fn kl(t: &[f32], s: &[f32], tau: f64) -> f64 {
    let logp = |x: &[f32]| {
        let m = x.iter().map(|&v| v as f64 / tau).fold(f64::MIN, f64::max);
        let z: f64 = x.iter().map(|&v| (v as f64 / tau - m).exp()).sum::<f64>().ln() + m;
        x.iter().map(|&v| v as f64 / tau - z).collect::<Vec<_>>()
    };
    let (lt, ls) = (logp(t), logp(s));
    lt.iter().zip(&ls).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// Context pairs over random ids from a small pool (text-like: few distinct tokens, so what
/// the instruction changes can be learnt): the teacher reads a fixed instruction prefix, then
/// the student's document (a raw prefix, so the common suffix is the whole student document).
fn pairs(vocab: u32, n: usize, len: usize, prefix: &[u32], seed: u64) -> Vec<ContextPair> {
    let mut rng = SplitMix64::new(seed);
    let pool: Vec<u32> = (0..12).map(|i| (i * 41 + 7) % vocab).collect();
    (0..n)
        .map(|_| {
            let ids: Vec<u32> = (0..len).map(|_| pool[rng.below(pool.len() as u32) as usize]).collect();
            let teacher = prefix.iter().copied().chain(ids.iter().copied()).collect();
            ContextPair { student: Document { counted: vec![true; ids.len()], ids }, teacher }
        })
        .collect()
}

/// The KL the trainer computes against a context teacher (its rows gathered from the
/// teacher's own, longer batch) equals KL between the inference path's logits of the teacher
/// document (instruction + text) and of the student document at the mapped positions, in f64;
/// and a short context-distillation run cuts the held-out KL by more than a third.
#[test]
fn context_distillation_matches_the_inference_paths_logits_and_learns() {
    let ctx = common::context(false, true).unwrap();
    let file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 1, &mut |_, _| {}).unwrap();
    let model = load(&ctx, &file);
    let vocab = model.config.vocab_size as u32;
    let prefix: Vec<u32> = (0..9).map(|i| (i * 37 + 5) % vocab).collect();
    let data = pairs(vocab, 6, 11, &prefix, 3);
    let rows = train::pack_context(&data, 24);
    assert_eq!(rows.len(), 3, "two 11-token documents per 24-token row");
    let row = &rows[0];
    let t = row.teacher.as_ref().unwrap();
    assert_eq!((t.ids.len(), t.doc_lengths.clone()), (40, vec![20, 20]));

    let mut student =
        Trainer::new(&ctx, &model, LoraConfig::new(4, 8.0, vec![LoraTarget::V, LoraTarget::Up]), 64, 1).unwrap();
    let mut teacher = Trainer::with_last_layers(&ctx, &model, None, 0, 64, 1).unwrap();
    let tau = 2.0;
    let loss = DistillLoss::hinton(tau as f32, 0.0);
    let (_, got) = pollster::block_on(student.distill_loss(
        &ctx,
        &mut teacher,
        &loss,
        Some(t),
        &row.ids,
        &row.targets,
        &row.doc_lengths,
    ))
    .unwrap();
    // Reference: each document's logits by the inference path, the student's without the
    // prefix, the teacher's with it; positions whose target counts.
    let v = vocab as usize;
    let (mut want, mut n) = (0.0, 0);
    let mut at = 0;
    for (d, &len) in row.doc_lengths.iter().enumerate() {
        let s_logits = logits(&ctx, &model, &row.ids[at..at + len]);
        let t_doc = &t.ids[d * 20..(d + 1) * 20];
        let t_logits = logits(&ctx, &model, t_doc);
        for j in 0..len {
            if row.targets[at + j] == IGNORE_TARGET {
                continue;
            }
            let tr = t.rows[at + j] as usize - d * 20;
            assert_eq!(t_doc[tr + 1], row.targets[at + j], "the mapped teacher row predicts the same token");
            want += kl(&t_logits[tr * v..][..v], &s_logits[j * v..][..v], tau);
            n += 1;
        }
        at += len;
    }
    want /= n as f64;
    let rel = (got - want).abs() / want;
    println!("context KL: trainer {got:.7}, inference path + f64 {want:.7} (rel {rel:.1e}) over {n} positions");
    assert!(want > 0.05, "the instruction changes the teacher's predictions (the check can fail)");
    assert!(rel < 1e-4, "{got} vs {want}");

    // Training on the context pairs lowers the held-out KL.
    let data = pairs(vocab, 24, 11, &prefix, 4);
    let rows = train::pack_context(&data, 22);
    let cfg = FinetuneConfig {
        lora: LoraConfig::new(8, 16.0, LoraTarget::ALL.to_vec()),
        steps: 12,
        seq_len: 22,
        batch_rows: 2,
        lr: 3e-3,
        warmup: 1,
        eval_fraction: 0.2,
        ..FinetuneConfig::default()
    };
    let mut student = train::trainer_for(&ctx, &model, &cfg).unwrap();
    let mut teacher = Trainer::with_last_layers(&ctx, &model, None, 0, 2 * 40, 1).unwrap();
    let loss = DistillLoss::hinton(1.0, 0.0);
    let report = pollster::block_on(train::distill(&ctx, &mut student, &mut teacher, &loss, &rows, &cfg, &mut |s| {
        println!("  step {}: KL {:.4}", s.step, s.kl.unwrap())
    }))
    .unwrap();
    let (a, b) = (report.eval_kl_before.unwrap(), report.eval_kl_after.unwrap());
    println!("held-out KL to the instructed teacher: {a:.4} → {b:.4}");
    assert!(b < 0.67 * a, "{a} → {b}");
}

/// Packing context pairs: the common suffix decides the map; a counted token in front of it
/// stops counting; the token just before it maps to the teacher's token before its suffix.
#[test]
fn context_pairs_map_onto_the_common_suffix() {
    // Student [1 2 | 7 8 9], teacher [4 5 6 | 7 8 9]: suffix 3, s0 = 2, t0 = 3.
    let pair = ContextPair {
        student: Document { ids: vec![1, 2, 7, 8, 9], counted: vec![true; 5] },
        teacher: vec![4, 5, 6, 7, 8, 9],
    };
    let rows = train::pack_context(&[pair], 16);
    let r = &rows[0];
    let t = r.teacher.as_ref().unwrap();
    // Position 0 (predicting 2, in front of the suffix) has no teacher; 1 → 2 (both predict 7).
    assert_eq!(r.targets, vec![IGNORE_TARGET, 7, 8, 9, IGNORE_TARGET]);
    assert_eq!(&t.rows[1..], &[2, 3, 4, 5]);
    assert_eq!((t.ids.clone(), t.doc_lengths.clone()), (vec![4, 5, 6, 7, 8, 9], vec![6]));
    // The teacher's view of the row counts the same predictions.
    let tv = r.as_teacher_reads();
    assert_eq!(tv.targets, vec![IGNORE_TARGET, IGNORE_TARGET, 7, 8, 9, IGNORE_TARGET]);
    // Cut to the row length: the teacher's document ends where the student's does.
    let pair = ContextPair {
        student: Document { ids: (10..30).collect(), counted: vec![true; 20] },
        teacher: [1, 2].into_iter().chain(10..30).collect(),
    };
    let r = &train::pack_context(&[pair], 8)[0];
    assert_eq!((r.ids.len(), r.teacher.as_ref().unwrap().ids.len()), (8, 10));
}

/// `pupil prune --keep 1` of tiny-llama gives the logits transformers gives with layer 0
/// removed from the model (tests/fixtures/train/prune_tiny_llama.*), and differs from the
/// unpruned model (the check can fail). Block influence scores every layer; the least
/// influential inner layers are the ones dropped, never the first or last.
#[test]
fn pruned_model_matches_transformers_without_the_layer() {
    let common::train::Fixture { meta, blobs: want } = common::train::fixture_of("prune", "tiny-llama");
    let ctx = common::context(false, true).unwrap();
    let file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 1, &mut |_, _| {}).unwrap();
    let h = parse_header(&file).unwrap();
    let keep: Vec<usize> = meta["keep"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(parse_layer_list("1").unwrap(), keep);
    let pruned = pollster::block_on(keep_layers(&h, &file[..], &keep)).unwrap();
    let model = load(&ctx, &pruned);
    assert_eq!(model.config.n_layers, keep.len());
    let seqs: Vec<Vec<u32>> = meta["input_ids"].as_array().unwrap().iter().map(common::json_ids).collect();
    let got: Vec<f32> = seqs.iter().flat_map(|s| logits(&ctx, &model, s)).collect();
    let e = common::rel_err(&got, &want);
    let full = load(&ctx, &file);
    let e_full = common::rel_err(&seqs.iter().flat_map(|s| logits(&ctx, &full, s)).collect::<Vec<_>>(), &want);
    println!("pruned (keep {keep:?}) vs transformers without layer 0: rel {e:.2e}; the unpruned model: {e_full:.2e}");
    assert!(e < 1e-4 && e_full > 1e-2, "{e} / {e_full}");

    let mut t = Trainer::with_last_layers(&ctx, &full, None, 0, 16, 1).unwrap();
    let bi = pollster::block_on(t.block_influence(&ctx, &seqs[0], &[seqs[0].len()])).unwrap();
    assert_eq!(bi.len(), 2);
    assert!(bi.iter().all(|&x| x.is_finite() && (0.0..=2.0).contains(&x)), "{bi:?}");
    assert_eq!(least_influential_dropped(&[0.9, 0.1, 0.3, 0.05, 0.2, 0.8], 2).unwrap(), vec![0, 2, 4, 5]);
    assert!(least_influential_dropped(&[0.9, 0.1, 0.8], 2).is_err(), "the first and last stay");
}

/// Pruning a sliding-window model: the kept layers keep their own window flags (Gemma's
/// period-6 pattern becomes an explicit list), and the file loads with them.
#[test]
fn pruned_gemma3_keeps_each_layers_window() {
    let file = synth::synthesize(&synth::preset("tiny-gemma3").unwrap(), 1, &mut |_, _| {}).unwrap();
    let h = parse_header(&file).unwrap();
    let c = ModelConfig::from_gguf(&h).unwrap();
    let local = c.sliding_window.as_ref().unwrap().local.clone();
    let keep: Vec<usize> = (0..c.n_layers).filter(|l| l % 2 == 0 || *l == c.n_layers - 1).collect();
    let pruned = pollster::block_on(keep_layers(&h, &file[..], &keep)).unwrap();
    let pc = ModelConfig::from_gguf(&parse_header(&pruned).unwrap()).unwrap();
    assert_eq!(pc.n_layers, keep.len());
    assert_eq!(pc.sliding_window.unwrap().local, keep.iter().map(|&l| local[l]).collect::<Vec<_>>());
    let bad = pollster::block_on(keep_layers(&h, &file[..], &[1, 0])).unwrap_err();
    assert!(matches!(bad, pupil::PupilError::InvalidArgument { .. }), "{bad}");
}

/// A pruned file records the original layer of each block, composed through a second pruning,
/// and hidden-state alignment maps each student block boundary onto that layer's.
#[test]
fn pruning_records_the_kept_layers_for_alignment() {
    use pupil::model::prune::{alignment_pairs, kept_layers, parse_alignment_pairs};
    let file = synth::synthesize(&synth::preset("tiny-gemma3").unwrap(), 1, &mut |_, _| {}).unwrap();
    let h = parse_header(&file).unwrap();
    let n = ModelConfig::from_gguf(&h).unwrap().n_layers;
    assert!(n >= 4, "tiny-gemma3 has {n} layers");
    assert_eq!(kept_layers(&h, n), None, "an unpruned file has no record");
    let first: Vec<usize> = (0..n).filter(|&l| l != 1).collect();
    let once = pollster::block_on(keep_layers(&h, &file[..], &first)).unwrap();
    let h1 = parse_header(&once).unwrap();
    assert_eq!(kept_layers(&h1, n - 1), Some(first.clone()));
    // Drop the second block of the pruned file too: it was layer 2 of the original.
    let second: Vec<usize> = (0..n - 1).filter(|&l| l != 1).collect();
    let twice = pollster::block_on(keep_layers(&h1, &once[..], &second)).unwrap();
    let kept = kept_layers(&parse_header(&twice).unwrap(), n - 2).unwrap();
    let want: Vec<usize> = (0..n).filter(|&l| l != 1 && l != 2).collect();
    assert_eq!(kept, want);
    assert_eq!(alignment_pairs(&kept)[..2], [(1, 1), (2, 4)]);
    assert_eq!(parse_alignment_pairs("2:2, 10:15").unwrap(), vec![(2, 2), (10, 15)]);
    for bad in ["", "2", "2:x", "1:2,3"] {
        assert!(parse_alignment_pairs(bad).is_err(), "{bad:?}");
    }
}

/// A τ/α schedule reaches the loop: step 1 trains with the loss as given (the same step as a
/// fixed run's), the held-out KL is measured with the last step's loss (the same before-figure
/// as a run fixed at the final τ), and later steps differ from the fixed run's.
#[test]
fn kd_schedule_drives_the_steps_and_the_held_out_kl() {
    let ctx = common::context(false, true).unwrap();
    let student_file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 1, &mut |_, _| {}).unwrap();
    let teacher_file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 9, &mut |_, _| {}).unwrap();
    let (model, teacher_model) = (load(&ctx, &student_file), load(&ctx, &teacher_file));
    let vocab = model.config.vocab_size as u32;
    let docs: Vec<Document> = pairs(vocab, 6, 16, &[], 3).into_iter().map(|p| p.student).collect();
    let rows = train::pack(&docs, 16);
    let run = |tau: f32, schedule: train::KdSchedule| {
        let cfg = FinetuneConfig {
            lora: LoraConfig::new(4, 8.0, LoraTarget::ALL.to_vec()),
            steps: 3,
            seq_len: 16,
            batch_rows: 2,
            lr: 1e-2,
            warmup: 0,
            eval_fraction: 0.3,
            kd_schedule: schedule,
            ..FinetuneConfig::default()
        };
        let mut student = train::trainer_for(&ctx, &model, &cfg).unwrap();
        let mut teacher = Trainer::with_last_layers(&ctx, &teacher_model, None, 0, 32, 1).unwrap();
        let loss = DistillLoss::hinton(tau, 0.5);
        pollster::block_on(train::distill(&ctx, &mut student, &mut teacher, &loss, &rows, &cfg, &mut |_| {})).unwrap()
    };
    let annealed =
        run(4.0, train::KdSchedule { tau_end: Some(1.0), alpha_end: Some(0.0), ..train::KdSchedule::default() });
    let fixed_start = run(4.0, train::KdSchedule::default());
    let fixed_end = run(1.0, train::KdSchedule::default());
    let kl = |r: &train::FinetuneReport| r.steps.iter().map(|s| s.kl.unwrap()).collect::<Vec<_>>();
    println!("per-step KL: annealed {:?}, fixed τ 4 {:?}", kl(&annealed), kl(&fixed_start));
    assert_eq!(annealed.steps[0], fixed_start.steps[0], "step 1 uses the loss as given");
    assert!((annealed.steps[2].kl.unwrap() - fixed_start.steps[2].kl.unwrap()).abs() > 1e-4);
    let (a, e, s) =
        (annealed.eval_kl_before.unwrap(), fixed_end.eval_kl_before.unwrap(), fixed_start.eval_kl_before.unwrap());
    println!("held-out KL before: annealed {a:.6}, fixed τ 1 {e:.6}, fixed τ 4 {s:.6}");
    assert_eq!(a, e, "the held-out KL is the last step's");
    assert!((a - s).abs() > 1e-4);
}

/// Adapting α to the loss (`kdAlphaAdapt`, `--kd-alpha-adapt`): the CE the trainer reads out
/// of a distillation pass (its loss less the divergence term, over α) equals the
/// cross-entropy kernel's loss of the same batch; a run logs the α of each step — the given α
/// at steps 1 and 2, then one keeping the labels' share of step 1 over the EMAs of the logged
/// divergence and CE (recomputed here from the logs) — and trains differently from fixed α.
#[test]
fn adapted_alpha_reads_the_ce_and_keeps_the_labels_share() {
    let ctx = common::context(false, true).unwrap();
    let student_file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 1, &mut |_, _| {}).unwrap();
    let teacher_file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 9, &mut |_, _| {}).unwrap();
    let (model, teacher_model) = (load(&ctx, &student_file), load(&ctx, &teacher_file));
    let vocab = model.config.vocab_size as u32;
    let docs: Vec<Document> = pairs(vocab, 8, 16, &[], 5).into_iter().map(|p| p.student).collect();
    let rows = train::pack(&docs, 16);
    let adapt = train::KdSchedule { adapt_alpha: true, ..train::KdSchedule::default() };
    let cfg = FinetuneConfig {
        lora: LoraConfig::new(4, 8.0, LoraTarget::ALL.to_vec()),
        steps: 8,
        seq_len: 16,
        batch_rows: 2,
        lr: 2e-2,
        warmup: 0,
        eval_fraction: 0.25,
        kd_schedule: adapt,
        ..FinetuneConfig::default()
    };
    let (tau, alpha) = (2.0f32, 0.5f32);
    let loss = DistillLoss::hinton(tau, alpha);
    let teacher = || Trainer::with_last_layers(&ctx, &teacher_model, None, 0, 32, 1).unwrap();

    let mut student = train::trainer_for(&ctx, &model, &cfg).unwrap();
    let r = &rows[0];
    let ce = pollster::block_on(student.loss(&ctx, &r.ids, &r.targets, &r.doc_lengths)).unwrap();
    let (l, k) = pollster::block_on(student.distill_forward_backward(
        &ctx,
        &mut teacher(),
        &loss,
        &r.ids,
        &r.targets,
        &r.doc_lengths,
        1.0,
    ))
    .unwrap();
    let read = student.last_cross_entropy().unwrap();
    println!("CE kernel {ce:.7}, read from the distillation pass {read:.7} (loss {l:.5}, KL {k:.5})");
    assert!((read - ce).abs() <= 1e-5 * ce, "CE {read} vs {ce}");
    assert!((l - (loss.kl_coef as f64 * k + alpha as f64 * ce)).abs() <= 1e-5 * l);

    let run = |schedule: train::KdSchedule| {
        let cfg = FinetuneConfig { kd_schedule: schedule, ..cfg.clone() };
        let mut student = train::trainer_for(&ctx, &model, &cfg).unwrap();
        pollster::block_on(train::distill(&ctx, &mut student, &mut teacher(), &loss, &rows, &cfg, &mut |_| {})).unwrap()
    };
    let (adapted, fixed) = (run(adapt), run(train::KdSchedule::default()));
    let alphas: Vec<f64> = adapted.steps.iter().map(|s| s.alpha.unwrap()).collect();
    println!("adapted α per step {alphas:.4?}");
    assert_eq!(adapted.steps[0], fixed.steps[0], "step 1 trains with the given α");
    assert_eq!(alphas[1], alpha as f64);
    let (w, mut ema) = (loss.kl_coef as f64, None::<(f64, f64)>);
    let first = &adapted.steps[0];
    let share = alpha as f64 * first.ce.unwrap() / (w * first.kl.unwrap() + alpha as f64 * first.ce.unwrap());
    for (i, s) in adapted.steps.iter().enumerate() {
        if let Some((d, c)) = ema {
            let a = alphas[i];
            assert!((a * c / (d + a * c) - share).abs() < 1e-5, "step {}: the labels' share", s.step);
        }
        let (d, c) = (w * s.kl.unwrap(), s.ce.unwrap());
        ema = Some(ema.map_or((d, c), |(ed, ec)| (0.8 * ed + 0.2 * d, 0.8 * ec + 0.2 * c)));
    }
    assert!(alphas.iter().any(|&a| (a - alpha as f64).abs() > 1e-3), "α moved: {alphas:?}");
    assert!((adapted.steps[7].loss - fixed.steps[7].loss).abs() > 1e-5);
    assert!(adapted.eval_kl_after.unwrap() < adapted.eval_kl_before.unwrap(), "the student learns");
    assert!(fixed.steps.iter().all(|s| s.alpha == Some(alpha as f64)));

    // τ adapted too (`kdTauAdapt`): each step's τ is 1 + (τ₁ − 1)·min(1, EMA(D)/D₁) over the
    // KL logged before it, and the step's loss is τ²·KL + α·CE at that τ (the kernel got its
    // weight); the held-out figures are at the target τ 1, as a fixed τ-1 run's are.
    let both = run(train::KdSchedule { adapt_tau: true, ..adapt });
    let taus: Vec<f64> = both.steps.iter().map(|s| s.tau.unwrap()).collect();
    println!("adapted τ per step {taus:.4?}");
    let mut avg = None::<(f64, f64)>;
    for (s, &t) in both.steps.iter().zip(&taus) {
        let expected = avg.map_or(tau as f64, |(d1, d)| 1.0 + (tau as f64 - 1.0) * (d / d1).min(1.0));
        assert!((t - expected).abs() < 1e-5, "step {}: τ {t} vs {expected}", s.step);
        let composed = t * t * s.kl.unwrap() + s.alpha.unwrap() * s.ce.unwrap();
        assert!((s.loss - composed).abs() <= 1e-4 * s.loss, "step {}: loss {} vs {composed}", s.step, s.loss);
        let d = s.kl.unwrap();
        avg = Some(avg.map_or((d, d), |(d1, e)| (d1, 0.8 * e + 0.2 * d)));
    }
    assert!(taus[7] < taus[0] - 0.01, "τ fell with the KL: {taus:?}");
    let cfg_tau1 = FinetuneConfig { steps: 1, ..cfg.clone() };
    let mut student = train::trainer_for(&ctx, &model, &cfg_tau1).unwrap();
    let at_one = DistillLoss::hinton(1.0, alpha);
    let fixed_one =
        pollster::block_on(train::distill(&ctx, &mut student, &mut teacher(), &at_one, &rows, &cfg_tau1, &mut |_| {}))
            .unwrap();
    assert_eq!(both.eval_kl_before, fixed_one.eval_kl_before, "held out at the target τ");
}

/// Offline distillation (`pupil teach` → `pupil distill --data`): the teacher's top-k written
/// through the file format reads back; the trainer's KL against it (rows past one head chunk)
/// equals `reference::distill_topk` on the inference path's student logits in f64, and never
/// exceeds the full KL to the teacher's logits (coarse-graining loses information); a short
/// offline run cuts the held-out KL.
#[test]
fn offline_teacher_top_k_matches_the_reference_and_trains() {
    use pupil::train::teach;
    let ctx = common::context(false, true).unwrap();
    let student_file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 1, &mut |_, _| {}).unwrap();
    let teacher_file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 9, &mut |_, _| {}).unwrap();
    let (model, teacher_model) = (load(&ctx, &student_file), load(&ctx, &teacher_file));
    let vocab = model.config.vocab_size;
    let (k, tau) = (16, 1.5f32);
    let docs: Vec<Document> = pairs(vocab as u32, 16, 40, &[], 5).into_iter().map(|p| p.student).collect();
    let mut rows = train::pack(&docs, 80);
    for row in &mut rows {
        row.top_k = Some(pollster::block_on(teach::teach_row(&ctx, &teacher_model, row, k, tau)).unwrap());
    }
    let header = teach::TeachHeader { pupil_teach: 1, teacher: "t".into(), vocab, top_k: k, tau, seq_len: 80 };
    let mut file = serde_json::to_string(&header).unwrap() + "\n";
    for row in &rows {
        file += &(teach::row_line(row).unwrap() + "\n");
    }
    let (_, read) = teach::read_teach_file(&file, vocab).unwrap();
    assert_eq!(read, rows, "the teach file round-trips");

    // Two rows (160 tokens, three head chunks) against the f64 reference, both KLs and the JSD.
    let b = train::concat(&[&rows[0], &rows[1]]);
    let top = b.top_k.as_ref().unwrap();
    use pupil::ops::distill_loss::Divergence;
    use pupil::reference::distill_loss::Div;
    let divergences = [
        (Divergence::Forward, Div::Forward),
        (Divergence::Reverse, Div::Reverse),
        (Divergence::Jsd { beta: 0.4 }, Div::Jsd(0.4)),
    ];
    for (divergence, div) in divergences {
        let loss = DistillLoss { divergence, ..DistillLoss::hinton(tau, 0.0) };
        let mut student =
            Trainer::new(&ctx, &model, LoraConfig::new(4, 8.0, LoraTarget::ALL.to_vec()), 160, 1).unwrap();
        let (_, got) =
            pollster::block_on(student.distill_topk_loss(&ctx, &loss, top, &b.ids, &b.targets, &b.doc_lengths))
                .unwrap();
        let (mut want, mut full, mut n, mut at) = (0.0, 0.0, 0, 0);
        for &len in &b.doc_lengths {
            let s = logits(&ctx, &model, &b.ids[at..at + len]);
            let t = logits(&ctx, &teacher_model, &b.ids[at..at + len]);
            let s64: Vec<f64> = s.iter().map(|&x| x as f64).collect();
            let lp: Vec<f64> = top.logp[at * k..(at + len) * k].iter().map(|&x| x as f64).collect();
            let targets = &b.targets[at..at + len];
            let (_, kl_rows, _) = pupil::reference::distill_topk::distill_topk(
                &s64,
                vocab,
                (&top.ids[at * k..(at + len) * k], &lp, k),
                targets,
                (tau as f64, (tau * tau) as f64, 0.0),
                div,
                1.0,
            );
            for (j, &target) in targets.iter().enumerate() {
                if target != IGNORE_TARGET {
                    want += kl_rows[j];
                    full += kl(&t[j * vocab..][..vocab], &s[j * vocab..][..vocab], tau as f64);
                    n += 1;
                }
            }
            at += len;
        }
        let (want, full) = (want / n as f64, full / n as f64);
        let rel = (got - want).abs() / want;
        println!("offline top-{k} {divergence}: trainer {got:.7}, reference {want:.7} (rel {rel:.1e}); the full forward KL {full:.7}");
        assert!(rel < 1e-4, "{divergence}: {got} vs {want}");
        if divergence == Divergence::Forward {
            assert!(want <= full + 1e-9 && want > 0.01, "coarse-grained {want} vs full {full}");
        }
    }

    let loss = DistillLoss::hinton(tau, 0.0);
    let cfg = FinetuneConfig {
        lora: LoraConfig::new(8, 16.0, LoraTarget::ALL.to_vec()),
        steps: 12,
        seq_len: 80,
        batch_rows: 2,
        lr: 3e-3,
        warmup: 1,
        eval_fraction: 0.25,
        ..FinetuneConfig::default()
    };
    let mut student = train::trainer_for(&ctx, &model, &cfg).unwrap();
    let report = pollster::block_on(train::distill_offline(
        &ctx,
        &mut student,
        &loss,
        &rows,
        &cfg,
        train::RunControl::default(),
        &mut |s| println!("  step {}: KL {:.4}", s.step, s.kl.unwrap()),
    ))
    .unwrap();
    let (a, b) = (report.eval_kl_before.unwrap(), report.eval_kl_after.unwrap());
    println!("held-out top-{k} KL to the offline teacher: {a:.4} → {b:.4}");
    assert!(b < 0.8 * a, "{a} → {b}");
    // Rows without the teacher's top-k are refused.
    let plain: Vec<_> = rows.iter().map(|r| train::Row { top_k: None, ..r.clone() }).collect();
    let e = pollster::block_on(train::distill_offline(
        &ctx,
        &mut student,
        &loss,
        &plain,
        &cfg,
        Default::default(),
        &mut |_| {},
    ));
    assert_eq!(e.unwrap_err().kind(), "InvalidArgument");
}
