//! The training commands: `pupil finetune` and `pupil distill` (one run, [`train_run`], with
//! or without a teacher: online, context, or a `pupil teach` file) and `pupil prune`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pupil::model::{HiddenAlignment, LlamaModel, LoraConfig, LoraTarget, ModelConfig, ModelOptions, Trainer};
use pupil::ops::distill_loss::{DistillLoss, Divergence};
use pupil::train::{self, DataFormat, FinetuneConfig};
use pupil::{DType, GpuContext, PupilError};

use super::{load, model_file, other, ModelArgs, ModelFile};

/// A training run's settings (`finetune`, `distill`).
#[derive(Args, Clone)]
pub(super) struct TrainArgs {
    /// Training data: .txt (one document) or .jsonl.
    #[arg(long)]
    data: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Tokens per packed row.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Rows per forward/backward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Passes accumulated into each optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// LoRA rank (0: no adapters).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Also train the last N layers in full (every weight of those blocks, as f32).
    #[arg(long, default_value_t = 0)]
    last_layers: usize,
    /// Add a trainable output gate to every layer's attention (starts near pass-through).
    #[arg(long)]
    gates: bool,
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    /// LoRA dropout on each adapter's input while training (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Projections to adapt, comma-separated (q,k,v,o,gate,up,down).
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    targets: String,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Share of the rows held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    eval: f64,
    /// A replay mix to limit forgetting: rows of this second dataset (.txt or .jsonl) mixed
    /// into the training rows; its last tenth is held out to measure forgetting before/after.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// The share of the rows trained on that come from --replay.
    #[arg(long, default_value_t = 0.2, requires = "replay")]
    replay_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write what was trained here (safetensors: adapters, trained layers, gates).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write the adapters as a PEFT adapter directory (adapter_model.safetensors +
    /// adapter_config.json, Hugging Face's row order) for `PeftModel.from_pretrained`.
    #[arg(long)]
    peft: Option<PathBuf>,
    /// Write the model with the training merged in as one GGUF (and report the drift).
    #[arg(long)]
    merge: Option<PathBuf>,
    /// The type of the merged matrices: `same` (each its file's type), or F32, F16, Q8_0, Q4_K, …
    #[arg(long, default_value = "same")]
    merge_type: String,
    /// Write a resumable checkpoint (weights, optimizer, RNG and data order) to this file every
    /// --checkpoint-every steps and at --stop-after.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Continue the run a checkpoint stopped (the same data and settings).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this step, writing the checkpoint (resume later with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
}

/// `pupil prune`.
pub(super) async fn prune(
    ctx: &GpuContext,
    args: &ModelArgs,
    out: &std::path::Path,
    keep: Option<&str>,
    drop: Option<usize>,
    data: Option<&std::path::Path>,
    tokens: usize,
) -> pupil::Result<ExitCode> {
    use pupil::model::prune;
    let ModelFile { header, source, .. } = model_file(&args.model)?;
    let n = ModelConfig::from_gguf(&header)?.n_layers;
    let keep = match (keep, drop, data) {
        (Some(list), None, _) => prune::parse_layer_list(list)?,
        (None, Some(k), Some(data)) => {
            let l = load(ctx, &ModelArgs { f16: false, ..args.clone() })?;
            let text = std::fs::read_to_string(data).map_err(|e| other(format!("{}: {e}", data.display())))?;
            let docs =
                train::documents(&text, DataFormat::guess(&data.to_string_lossy()), &l.tokenizer, Some(&l.template))?;
            let ids: Vec<u32> = docs.iter().flat_map(|d| d.ids.iter().copied()).take(tokens).collect();
            let influence = prune::calibrated_influence(ctx, &l.model, &ids).await?;
            println!("block influence on {} tokens of {} (1 − cos(in, out)):", ids.len(), data.display());
            for (l, bi) in influence.iter().enumerate() {
                println!("  layer {l:>3}: {bi:.5}");
            }
            prune::least_influential_dropped(&influence, k)?
        }
        _ => return Err(other("give --keep LAYERS, or --drop N with --data CALIBRATION")),
    };
    let bytes = prune::keep_layers(&header, &source, &keep).await?;
    std::fs::write(out, &bytes).map_err(|e| other(format!("{}: {e}", out.display())))?;
    let dropped: Vec<usize> = (0..n).filter(|l| !keep.contains(l)).collect();
    println!(
        "{} of {n} layers kept, dropped {dropped:?}: {} written ({} bytes)",
        keep.len(),
        out.display(),
        bytes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pupil distill`'s teacher: its file (None: the student's own), loss, and the instruction of
/// context distillation.
pub(super) struct TeacherArgs {
    /// --tau as given (an offline teacher's file has its own).
    pub(super) tau_given: Option<f32>,
    pub(super) path: Option<PathBuf>,
    pub(super) loss: DistillLoss,
    pub(super) schedule: train::KdSchedule,
    pub(super) context: Option<String>,
    /// Hidden-state alignment: (weight, explicit pairs, through a projection).
    pub(super) align: Option<(f32, Option<String>, Option<bool>)>,
}

pub(super) fn parse_divergence(s: &str) -> Result<Divergence, String> {
    Divergence::parse(s).map_err(|e| e.to_string())
}

/// `pupil finetune`, or with a teacher `pupil distill`.
pub(super) async fn train_run(
    ctx: &GpuContext,
    model: &ModelArgs,
    args: &TrainArgs,
    teacher: Option<TeacherArgs>,
) -> pupil::Result<ExitCode> {
    let TrainArgs {
        data,
        steps,
        seq,
        batch,
        accum,
        rank,
        last_layers,
        gates,
        alpha,
        dropout,
        targets,
        lr,
        warmup,
        eval,
        seed,
        save,
        peft,
        merge,
        merge_type,
        checkpoint,
        checkpoint_every,
        resume,
        stop_after,
        replay,
        replay_fraction,
    } = args.clone();
    if (stop_after.is_some() || checkpoint_every > 0) && checkpoint.is_none() {
        return Err(other("--stop-after and --checkpoint-every need --checkpoint FILE"));
    }
    let merge_type =
        match merge_type.to_ascii_uppercase().as_str() {
            "SAME" => None,
            name => Some(pupil::quant::QuantType::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
                PupilError::Unsupported(format!("merge type {name} (same, F32, F16, Q8_0, Q4_K, …)"))
            })?),
        };
    let resume_bytes = match &resume {
        Some(p) => Some(std::fs::read(p).map_err(|e| other(format!("{}: {e}", p.display())))?),
        None => None,
    };
    let text = std::fs::read_to_string(&data).map_err(|e| other(format!("{}: {e}", data.display())))?;
    // An offline teacher's file (`pupil teach`): the teacher and the packing are in it.
    let offline = match (train::teach::is_teach_file(&text), &teacher) {
        (false, Some(t)) if t.path.is_none() && t.context.is_none() => {
            return Err(other(
                "pupil distill needs --teacher MODEL, --instruction TEXT, or a `pupil teach` file as --data",
            ))
        }
        (false, _) => None,
        (true, None) => {
            return Err(other("a `pupil teach` file is distillation data: run `pupil distill --data` on it"))
        }
        (true, Some(t)) if t.path.is_some() || t.context.is_some() => {
            return Err(other(
                "--data is a `pupil teach` file, which holds its teacher: drop --teacher / --instruction",
            ))
        }
        (true, Some(t)) => {
            let h = train::teach::read_header(&text)?;
            if t.tau_given.is_some_and(|tau| tau != h.tau) {
                return Err(other(format!("the teach file's distribution is at τ {}: drop --tau", h.tau)));
            }
            if t.align.is_some() || t.schedule.tau_end.is_some() || t.schedule.adapt_tau {
                return Err(other(
                    "an offline teacher has no hidden states and a fixed τ: drop --align-hidden / --tau-end / \
                     --kd-tau-adapt",
                ));
            }
            Some(h)
        }
    };
    let seq = offline.as_ref().map_or(seq, |h| h.seq_len);
    let targets = targets.split(',').map(LoraTarget::parse).collect::<pupil::Result<Vec<_>>>()?;
    let cfg = FinetuneConfig {
        lora: LoraConfig { rank, alpha, targets, dropout },
        last_layers,
        gates,
        steps,
        seq_len: seq,
        batch_rows: batch,
        grad_accum: accum,
        lr,
        warmup,
        eval_fraction: eval,
        seed,
        kd_schedule: teacher.as_ref().map_or_else(train::KdSchedule::default, |t| t.schedule),
        ..FinetuneConfig::default()
    };
    if model.f16 {
        return Err(PupilError::Unsupported("fine-tuning with --f16 (training runs on the f32 path)".into()));
    }
    let l = load(ctx, model)?;
    // The teacher: the same options but its file (or the student's own model); f32, nothing of
    // it trains.
    let teacher_file = match teacher.as_ref().and_then(|t| t.path.clone()) {
        Some(path) => Some(load(ctx, &ModelArgs { model: Some(path), f16: false, ..model.clone() })?),
        None => None,
    };
    let context = teacher.as_ref().and_then(|t| t.context.clone());
    let format = DataFormat::guess(&data.to_string_lossy());
    let (n_docs, rows) = match (&context, &offline) {
        (_, Some(h)) => {
            let (_, rows) = train::teach::read_teach_file(&text, l.model.config.vocab_size)?;
            eprintln!("offline teacher {:?}: its top {} at τ {} for every token", h.teacher, h.top_k, h.tau);
            (rows.len(), rows)
        }
        (Some(instruction), None) => {
            if format != DataFormat::Jsonl {
                return Err(other("context distillation reads JSONL (a conversation or {\"text\"} per line)"));
            }
            let pairs = train::context_documents(&text, &l.tokenizer, Some(&l.template), instruction)?;
            (pairs.len(), train::pack_context(&pairs, seq))
        }
        (None, None) => {
            let docs = train::documents(&text, format, &l.tokenizer, Some(&l.template))?;
            (docs.len(), train::pack(&docs, seq))
        }
    };
    // The offline teacher's loss: the file's τ (Hinton's τ² weight), the given CE weight.
    let offline_loss = offline
        .as_ref()
        .zip(teacher.as_ref())
        .map(|(h, t)| DistillLoss { divergence: t.loss.divergence, ..DistillLoss::hinton(h.tau, t.loss.alpha) });
    // A replay mix: the second dataset's rows in the training part, its last tenth held out.
    let (rows, cfg, replay_eval) = match &replay {
        None => (rows, cfg, Vec::new()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| other(format!("{}: {e}", path.display())))?;
            let format = DataFormat::guess(&path.to_string_lossy());
            let docs = train::documents(&text, format, &l.tokenizer, Some(&l.template))?;
            let replay_rows = train::pack(&docs, seq);
            let held = if replay_rows.len() >= 2 { replay_rows.len().div_ceil(10) } else { 0 };
            let (replay_train, replay_eval) = replay_rows.split_at(replay_rows.len() - held);
            let (mixed, mixed_cfg) = train::mix_replay(&rows, replay_train, replay_fraction, &cfg)?;
            eprintln!(
                "replay {}: {} rows mixed in ({:.0}% of those trained on), {} held out",
                path.display(),
                mixed.len() - rows.len(),
                replay_fraction * 100.0,
                replay_eval.len()
            );
            (mixed, mixed_cfg, replay_eval.to_vec())
        }
    };
    let mut trainer = train::trainer_for(ctx, &l.model, &cfg)?;
    let replay_before = match replay_eval.is_empty() {
        true => None,
        false => Some(train::eval_loss(ctx, &mut trainer, &replay_eval, batch).await?),
    };
    let mut teacher_trainer = match &teacher {
        Some(TeacherArgs { loss, schedule, align, .. }) if offline.is_none() => {
            let t = teacher_file.as_ref().map_or(&l.model, |t| &t.model);
            let last = schedule.eval_loss(loss, steps);
            let annealed = if schedule.adapt_alpha || schedule.adapt_tau {
                let what = match (schedule.adapt_alpha, schedule.adapt_tau) {
                    (true, true) => "τ and CE weight",
                    (true, false) => "CE weight",
                    _ => "τ",
                };
                format!(" ({what} adapted to the loss; τ {} held out)", last.tau)
            } else if last != *loss {
                format!(" (→ τ {}, KL weight {}, CE weight {} by the last step)", last.tau, last.kl_coef, last.alpha)
            } else {
                String::new()
            };
            eprintln!(
                "teacher: {} layers, vocabulary {}; τ {}, KL weight {}, CE weight {}{annealed}, {}{}",
                t.config.n_layers,
                t.config.vocab_size,
                loss.tau,
                loss.kl_coef,
                loss.alpha,
                loss.divergence,
                context.as_ref().map_or(String::new(), |c| format!("; context: {c:?}"))
            );
            if let Some((weight, pairs, project)) = align {
                let explicit = pairs.as_deref().map(pupil::model::prune::parse_alignment_pairs).transpose()?;
                let (ns, nt) = (l.model.config.n_layers, t.config.n_layers);
                let pairs = train::distill::alignment_pairs(ns, nt, l.kept_layers.as_deref(), explicit)?;
                let (hs, ht) = (l.model.config.hidden, t.config.hidden);
                let projected = project.unwrap_or(hs != ht);
                let through =
                    if projected { format!(", through learned {ht}×{hs} projections") } else { String::new() };
                eprintln!("hidden-state alignment, weight {weight}, student:teacher boundaries {pairs:?}{through}");
                let alignment = HiddenAlignment { pairs, weight: *weight, projected };
                trainer = trainer.with_hidden_alignment(ctx, alignment, ht)?;
            }
            Some((train::distill::teacher_trainer(ctx, t, &rows, &cfg)?, *loss))
        }
        _ => None,
    };
    eprintln!(
        "{}: {} documents, {} rows of ≤ {seq} tokens; LoRA rank {rank} on {:?}, the last {last_layers} \
         layers in full: {} trainable parameters",
        data.display(),
        n_docs,
        rows.len(),
        trainer.lora.config.targets,
        trainer.parameter_count()
    );
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise} (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if let Some(bytes) = &resume_bytes {
        let step = train::checkpoint_step(bytes)?;
        eprintln!("resuming at step {step} of {steps}");
        bar.set_position(step as u64);
        bar.reset_eta();
    }
    let start = web_time::Instant::now();
    let mut tokens = 0usize;
    let mut on_step = |s: &train::StepLog| {
        tokens += s.tokens;
        let skipped = if s.applied { "" } else { " (skipped: NaN/Inf gradients)" };
        let line = format!(
            "step {:>4}/{}: loss {:.4}{}{}{}  |g| {:.3}  lr {:.2e}  {:.0} tokens/s{skipped}",
            s.step,
            s.steps,
            s.loss,
            s.kl.map_or(String::new(), |k| format!("  KL {k:.4}")),
            s.tau.map_or(String::new(), |t| format!(" (τ {t:.3})")),
            s.ce.zip(s.alpha).map_or(String::new(), |(c, a)| format!("  CE {c:.4} (α {a:.3})")),
            s.grad_norm,
            s.lr,
            tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
        );
        // A loss line per step, above the bar (or alone when stdout is not a terminal).
        bar.suspend(|| println!("{line}"));
        bar.set_message(format!("loss {:.4}", s.loss));
        bar.inc(1);
    };
    let mut write_checkpoint = |step: usize, bytes: Vec<u8>| -> pupil::Result<()> {
        let Some(path) = &checkpoint else { return Ok(()) };
        // Whole or not at all: a run killed while writing keeps the previous checkpoint.
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| other(format!("{}: {e}", path.display())))?;
        eprintln!("checkpoint of step {step} written to {} ({} bytes)", path.display(), bytes.len());
        Ok(())
    };
    let control = train::RunControl {
        resume: resume_bytes.as_deref(),
        checkpoint_every,
        on_checkpoint: Some(&mut write_checkpoint),
        stop_after,
    };
    let report = match &offline_loss {
        Some(loss) => train::distill_offline(ctx, &mut trainer, loss, &rows, &cfg, control, &mut on_step).await?,
        None => {
            let teacher_arg = teacher_trainer.as_mut().map(|(t, loss)| (t, &*loss));
            train::train_resumable(ctx, &mut trainer, teacher_arg, &rows, &cfg, control, &mut on_step).await?
        }
    };
    bar.finish_and_clear();
    if let Some(step) = report.stopped_at {
        println!(
            "stopped after step {step} of {steps}; continue with --resume {}",
            checkpoint.as_ref().map_or(String::new(), |p| p.display().to_string())
        );
    }
    match (report.eval_loss_before, report.eval_loss_after) {
        (Some(a), Some(b)) => println!(
            "held-out loss ({} rows): {a:.4} → {b:.4} ({:+.4}); {} train rows, {} steps ({} skipped), {:.1} s",
            report.eval_rows,
            b - a,
            report.train_rows,
            report.steps.len(),
            report.skipped_steps,
            start.elapsed().as_secs_f64()
        ),
        _ if report.stopped_at.is_some() => {}
        _ => println!("no held-out rows (--eval 0 or a single row)"),
    }
    if let (Some(a), None) = (replay_before, report.stopped_at) {
        let b = train::eval_loss(ctx, &mut trainer, &replay_eval, batch).await?;
        println!("replay held-out loss ({} rows, forgetting): {a:.4} → {b:.4} ({:+.4})", replay_eval.len(), b - a);
    }
    if let (Some(a), Some(b)) = (report.eval_kl_before, report.eval_kl_after) {
        println!("held-out KL to the teacher: {a:.4} → {b:.4} ({:+.1}%)", 100.0 * (b - a) / a);
    }
    if let (Some(t), Some(a), Some(b)) = (report.teacher_eval_loss, report.eval_loss_before, report.eval_loss_after) {
        println!(
            "the teacher's held-out loss {t:.4}: the student closed {:.1}% of its gap ({:.4} → {:.4})",
            100.0 * (a - b) / (a - t),
            a - t,
            b - t
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "GPU memory: peak {:.1} MiB, {:.1} MiB held now (model and trainer)",
        mib(ctx.memory.peak_bytes()),
        mib(ctx.memory.current_bytes())
    );
    if let Some(dir) = peft {
        let name = l.name.clone();
        let adapter = train::peft_adapter(ctx, &trainer, &name).await?;
        let write = |file: &str, bytes: &[u8]| {
            let p = dir.join(file);
            std::fs::write(&p, bytes).map_err(|e| other(format!("{}: {e}", p.display())))
        };
        std::fs::create_dir_all(&dir).map_err(|e| other(format!("{}: {e}", dir.display())))?;
        write("adapter_model.safetensors", &adapter.weights)?;
        write("adapter_config.json", adapter.config.as_bytes())?;
        println!("PEFT adapter written to {} (base model `{name}`)", dir.display());
    }
    if let Some(path) = merge {
        let ModelFile { header, source, .. } = model_file(&model.model)?;
        let bar = ProgressBar::new(header.tensors.len() as u64);
        let (bytes, merged) =
            train::merged_gguf(ctx, &trainer, &header, &source, merge_type, &mut |i, _| bar.set_position(i as u64))
                .await?;
        bar.finish_and_clear();
        std::fs::write(&path, &bytes).map_err(|e| other(format!("{}: {e}", path.display())))?;
        println!(
            "merged model written to {} ({} bytes): {} tensors changed; training moved them by {:.3e} (relative), \
             writing them as {} cost {:.3e}",
            path.display(),
            bytes.len(),
            merged.tensors.len(),
            merged.update,
            merge_type.map_or("their own types".to_string(), |t| t.name().to_string()),
            merged.requantisation
        );
        // The drift where it matters: the merged file's held-out loss against the trainer's.
        let (_, eval_rows) = train::eval_split(&rows, &cfg);
        if let (false, Some(trained)) = (eval_rows.is_empty(), report.eval_loss_after) {
            let opts = ModelOptions {
                dtype: Some(DType::F32),
                context: model.context,
                chunk: model.chunk,
                ..ModelOptions::default()
            };
            let reloaded = LlamaModel::load(ctx, &bytes, &opts, &mut |_, _| {})?;
            let mut t = Trainer::with_last_layers(ctx, &reloaded, None, 0, batch * seq, seed)?;
            let merged_loss = train::eval_loss(ctx, &mut t, eval_rows, batch).await?;
            println!(
                "held-out loss: trained {trained:.4}, merged file reloaded {merged_loss:.4} ({:+.4})",
                merged_loss - trained
            );
        }
    }
    if let Some(path) = save {
        let bytes = train::trained_safetensors(ctx, &trainer, &l.model.config.architecture).await?;
        std::fs::write(&path, &bytes).map_err(|e| other(format!("{}: {e}", path.display())))?;
        println!("trained weights written to {} ({} bytes)", path.display(), bytes.len());
    }
    Ok(ExitCode::SUCCESS)
}
