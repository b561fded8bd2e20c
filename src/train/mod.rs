//! Fine-tuning runs: data in, a trained adapter out. [`finetune`] is the loop the CLI
//! (`pupil finetune`), the web engine and the tests share: tokenize and pack the data, hold out
//! an evaluation split, measure its loss, train with warmup + cosine AdamW over shuffled
//! batches, report every step, measure again. The engine underneath is
//! `model::Trainer` (forward, backward, optimizer on the GPU).

pub mod checkpoint;
pub mod data;
pub mod distill;
pub mod export;
pub mod schedule;
pub mod teach;

pub use checkpoint::checkpoint_step;
pub use data::{
    concat, context_documents, documents, pack, pack_context, ContextPair, DataFormat, Document, Row, TeacherRow, TopK,
};
pub use export::{merged_gguf, peft_adapter, MergeReport, MergedTensor, PeftAdapter};
pub use schedule::{KdSchedule, ADAPT_EMA, ADAPT_RANGE, ADAPT_TAU_TARGET};

use crate::error::{PupilError, Result};
use crate::gpu::GpuContext;
use crate::model::{LlamaModel, LoraConfig, LoraTarget, Trainer};
use crate::ops::distill_loss::DistillLoss;
use crate::ops::optim::AdamW;
use crate::rng::SplitMix64;

/// A run's settings (defaults: a LoRA of rank 16 on every projection, as PEFT users do).
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneConfig {
    /// The adapters; rank 0 trains none (then `last_layers` must be at least 1).
    pub lora: LoraConfig,
    /// The last layers trained in full (every weight of those blocks), besides the adapters.
    pub last_layers: usize,
    /// Add a trainable output gate to every layer's attention (initialised near pass-through).
    pub gates: bool,
    pub steps: usize,
    /// Tokens per packed row, and rows per forward/backward pass.
    pub seq_len: usize,
    pub batch_rows: usize,
    /// Passes whose gradients accumulate into one optimizer step (each of `batch_rows` rows;
    /// weighted by counted targets, so the step follows the token-mean loss of all of them).
    pub grad_accum: usize,
    pub lr: f64,
    /// Linear warmup steps, then cosine decay to `lr · min_lr_ratio`.
    pub warmup: usize,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    /// Share of the rows held out for evaluation (at least one row when there are two or more).
    pub eval_fraction: f64,
    pub seed: u64,
    /// Distillation: how τ and α move over the run (fixed by default).
    pub kd_schedule: KdSchedule,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            lora: LoraConfig::new(16, 32.0, LoraTarget::ALL.to_vec()),
            last_layers: 0,
            gates: false,
            steps: 100,
            seq_len: 256,
            batch_rows: 4,
            grad_accum: 1,
            lr: 2e-4,
            warmup: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            eval_fraction: 0.1,
            seed: 1,
            kd_schedule: KdSchedule::default(),
        }
    }
}

impl FinetuneConfig {
    /// The learning rate of step `t` (1-based).
    pub fn lr_at(&self, t: usize) -> f64 {
        if t <= self.warmup {
            return self.lr * t as f64 / self.warmup.max(1) as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((t - self.warmup) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What a step reports to the caller's progress callback.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// Counted target tokens in the step's batch.
    pub tokens: usize,
    /// False when the step was skipped for NaN/Inf gradients.
    pub applied: bool,
    /// Distillation: the step's mean divergence to the teacher.
    pub kl: Option<f64>,
    /// Distillation: the step's mean hard-label cross-entropy (`loss` less the divergence and
    /// alignment terms, without α; none when α is 0).
    pub ce: Option<f64>,
    /// Distillation: the CE weight α the step trained with (scheduled or adapted).
    pub alpha: Option<f64>,
    /// Distillation: the temperature τ the step trained with (scheduled or adapted).
    pub tau: Option<f64>,
}

/// The outcome of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneReport {
    pub train_rows: usize,
    pub eval_rows: usize,
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
    /// Distillation: the held-out mean KL to the teacher before and after.
    pub eval_kl_before: Option<f64>,
    pub eval_kl_after: Option<f64>,
    /// Distillation: the teacher's own held-out loss (the floor a student's closes in on).
    pub teacher_eval_loss: Option<f64>,
    pub steps: Vec<StepLog>,
    pub skipped_steps: usize,
    pub trainable_parameters: usize,
    /// The run resumed from a checkpoint of this step.
    pub resumed_from: Option<usize>,
    /// The run stopped at [`RunControl::stop_after`] before its last step (no held-out figures
    /// after; resume from the checkpoint written there).
    pub stopped_at: Option<usize>,
}

/// Checkpoints of a run: where to resume from, when to write one, and an optional early stop.
#[derive(Default)]
pub struct RunControl<'a> {
    /// A checkpoint written by the same run (settings, model and data): training continues from
    /// its step exactly as the uninterrupted run would have.
    pub resume: Option<&'a [u8]>,
    /// Write a checkpoint every this many steps (0: only at `stop_after`).
    pub checkpoint_every: usize,
    /// Receives (step, checkpoint bytes).
    pub on_checkpoint: Option<&'a mut dyn FnMut(usize, Vec<u8>) -> Result<()>>,
    /// Stop after this step, writing a checkpoint there.
    pub stop_after: Option<usize>,
}

/// Mean loss over `rows`, `batch` rows at a time, weighted by counted tokens.
pub async fn eval_loss(ctx: &GpuContext, trainer: &mut Trainer<'_>, rows: &[Row], batch: usize) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for group in rows.chunks(batch.max(1)) {
        let b = concat(&group.iter().collect::<Vec<_>>());
        let counted = b.counted();
        sum += trainer.loss(ctx, &b.ids, &b.targets, &b.doc_lengths).await? * counted as f64;
        n += counted;
    }
    Ok(sum / n.max(1) as f64)
}

/// The held-out (hard-label loss, KL) of a distillation: `batch` rows at a time, weighted by
/// counted tokens; the loss here is the hard-label cross-entropy, as [`eval_loss`]'s.
pub async fn eval_distill(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    teacher: &mut Trainer<'_>,
    loss: &DistillLoss,
    rows: &[Row],
    batch: usize,
) -> Result<(f64, f64)> {
    let (mut kl_sum, mut n) = (0.0, 0usize);
    for group in rows.chunks(batch.max(1)) {
        let b = concat(&group.iter().collect::<Vec<_>>());
        let counted = b.counted();
        let t = b.teacher.as_ref();
        kl_sum +=
            trainer.distill_loss(ctx, teacher, loss, t, &b.ids, &b.targets, &b.doc_lengths).await?.1 * counted as f64;
        n += counted;
    }
    Ok((eval_loss(ctx, trainer, rows, batch).await?, kl_sum / n.max(1) as f64))
}

/// Train `trainer`'s adapters on `rows` per `cfg` (the trainer's adapters are taken as they
/// are), calling `progress` after every step. The eval split is the last `eval_fraction` of the
/// rows, before any shuffling.
pub async fn finetune(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    rows: &[Row],
    cfg: &FinetuneConfig,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<FinetuneReport> {
    train(ctx, trainer, Teacher::None, rows, cfg, RunControl::default(), progress).await
}

/// [`finetune`] by distillation from `teacher` (a trainer over a model with the student's
/// vocabulary): every step's loss is `loss` (τ²·KL to the teacher + α·CE); the report adds the
/// held-out KL before and after, each step its KL.
pub async fn distill(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    teacher: &mut Trainer<'_>,
    loss: &DistillLoss,
    rows: &[Row],
    cfg: &FinetuneConfig,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<FinetuneReport> {
    train(ctx, trainer, Teacher::Online(teacher, *loss), rows, cfg, RunControl::default(), progress).await
}

/// [`finetune`] (no teacher) or [`distill`] with checkpoints: resumed from, written, or stopped
/// at per `control`.
#[allow(clippy::too_many_arguments)]
pub async fn train_resumable(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    teacher: Option<(&mut Trainer<'_>, &DistillLoss)>,
    rows: &[Row],
    cfg: &FinetuneConfig,
    control: RunControl<'_>,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<FinetuneReport> {
    let teacher = match teacher {
        Some((t, loss)) => Teacher::Online(t, *loss),
        None => Teacher::None,
    };
    train(ctx, trainer, teacher, rows, cfg, control, progress).await
}

/// [`distill`] from an offline teacher: every row carries the teacher's top-k (`Row::top_k`,
/// read from a `pupil teach` file by [`teach::read_teach_file`]), and `loss.tau` is the
/// temperature it was written at (any divergence: over the k ids and one tail bucket). No
/// held-out teacher loss.
pub async fn distill_offline(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    loss: &DistillLoss,
    rows: &[Row],
    cfg: &FinetuneConfig,
    control: RunControl<'_>,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<FinetuneReport> {
    if rows.iter().any(|r| r.top_k.is_none()) {
        return Err(PupilError::arg("distill_offline", "every row needs the teacher's top-k"));
    }
    if cfg.kd_schedule.tau_end.is_some() || cfg.kd_schedule.adapt_tau {
        return Err(PupilError::arg("distill_offline", "τ is the teach file's: no τ schedule or adaptation"));
    }
    train(ctx, trainer, Teacher::Offline(*loss), rows, cfg, control, progress).await
}

/// Who teaches a run.
enum Teacher<'a, 't> {
    None,
    Online(&'a mut Trainer<'t>, DistillLoss),
    /// The rows' own top-k.
    Offline(DistillLoss),
}

impl Teacher<'_, '_> {
    fn loss(&self) -> Option<DistillLoss> {
        match self {
            Teacher::None => None,
            Teacher::Online(_, l) | Teacher::Offline(l) => Some(*l),
        }
    }
}

/// The held-out (loss, KL) over `eval` with the teacher's `loss` (nothing when it is empty;
/// the KL with a teacher).
async fn evaluate(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    teacher: &mut Teacher<'_, '_>,
    loss: Option<&DistillLoss>,
    eval: &[Row],
    batch: usize,
) -> Result<(Option<f64>, Option<f64>)> {
    if eval.is_empty() {
        return Ok((None, None));
    }
    Ok(match (teacher, loss) {
        (Teacher::Online(t, _), Some(loss)) => {
            let (ce, kl) = eval_distill(ctx, trainer, t, loss, eval, batch).await?;
            (Some(ce), Some(kl))
        }
        (Teacher::Offline(_), Some(loss)) => {
            let (mut kl_sum, mut n) = (0.0, 0usize);
            for group in eval.chunks(batch.max(1)) {
                let b = concat(&group.iter().collect::<Vec<_>>());
                let top = b.top_k.as_ref().ok_or_else(|| PupilError::arg("distill_offline", "a row without top-k"))?;
                let counted = b.counted();
                kl_sum += trainer.distill_topk_loss(ctx, loss, top, &b.ids, &b.targets, &b.doc_lengths).await?.1
                    * counted as f64;
                n += counted;
            }
            (Some(eval_loss(ctx, trainer, eval, batch).await?), Some(kl_sum / n.max(1) as f64))
        }
        _ => (Some(eval_loss(ctx, trainer, eval, batch).await?), None),
    })
}

/// (training rows, held-out rows): the last `eval_fraction` of `rows`, at least one when there
/// are two or more, before any shuffling.
pub fn eval_split<'r>(rows: &'r [Row], cfg: &FinetuneConfig) -> (&'r [Row], &'r [Row]) {
    let n_eval = if rows.len() >= 2 && cfg.eval_fraction > 0.0 {
        ((rows.len() as f64 * cfg.eval_fraction).round() as usize).clamp(1, rows.len() - 1)
    } else {
        0
    };
    rows.split_at(rows.len() - n_eval)
}

/// A replay mix (to limit forgetting): the training part of `rows` (per `cfg`'s eval split)
/// with rows of a second dataset `replay` spread through it at seeded places, so they make up
/// `fraction` of the rows trained on (cycling through `replay` when it is short); the held-out
/// rows stay the task's own, last. Returns the rows and `cfg` with the eval fraction that keeps
/// exactly those held out. Plain rows only (no context-distillation or offline-teacher rows).
pub fn mix_replay(
    rows: &[Row],
    replay: &[Row],
    fraction: f64,
    cfg: &FinetuneConfig,
) -> Result<(Vec<Row>, FinetuneConfig)> {
    if !(0.0..1.0).contains(&fraction) || (fraction > 0.0 && replay.is_empty()) {
        return Err(PupilError::arg("replay", format!("a fraction in [0, 1) and replay rows; got {fraction}")));
    }
    if replay.iter().chain(rows).any(|r| r.teacher.is_some() || r.top_k.is_some()) {
        return Err(PupilError::Unsupported(
            "a replay mix with context distillation or an offline teacher (replay rows have no teacher view)".into(),
        ));
    }
    let (train, eval) = eval_split(rows, cfg);
    let n_replay = (train.len() as f64 * fraction / (1.0 - fraction)).round() as usize;
    let mut out: Vec<Row> = train.to_vec();
    let mut rng = SplitMix64::new(cfg.seed ^ 0x5E9_1A7);
    for i in 0..n_replay {
        let at = rng.below(out.len() as u32 + 1) as usize;
        out.insert(at, replay[i % replay.len()].clone());
    }
    out.extend_from_slice(eval);
    let eval_fraction = eval.len() as f64 / out.len() as f64;
    Ok((out, FinetuneConfig { eval_fraction, ..cfg.clone() }))
}

/// The loop of [`finetune`] and [`distill`].
async fn train(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    mut teacher: Teacher<'_, '_>,
    rows: &[Row],
    cfg: &FinetuneConfig,
    mut control: RunControl<'_>,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<FinetuneReport> {
    const OP: &str = "finetune";
    if rows.is_empty() {
        return Err(PupilError::arg(OP, "no training rows"));
    }
    if cfg.steps == 0 || cfg.batch_rows == 0 || cfg.grad_accum == 0 || !(0.0..1.0).contains(&cfg.eval_fraction) {
        return Err(PupilError::arg(
            OP,
            "steps ≥ 1, batch rows ≥ 1, accumulation passes ≥ 1 and an eval fraction in [0, 1)",
        ));
    }
    if cfg.batch_rows * cfg.seq_len > trainer.max_tokens {
        return Err(PupilError::arg(
            OP,
            format!(
                "{} rows × {} tokens exceed the trainer's {} tokens",
                cfg.batch_rows, cfg.seq_len, trainer.max_tokens
            ),
        ));
    }
    if !matches!(teacher, Teacher::Online(..)) && rows.iter().any(|r| r.teacher.is_some()) {
        return Err(PupilError::arg(OP, "context-distillation rows need a teacher"));
    }
    let first_loss = teacher.loss();
    cfg.kd_schedule.check(first_loss.as_ref())?;
    let (train, eval) = eval_split(rows, cfg);
    let distilling = first_loss.is_some();
    // The loss as given (step 1's) and the held-out figures' (see `KdSchedule::eval_loss`).
    let last_loss = first_loss.map(|l| cfg.kd_schedule.eval_loss(&l, cfg.steps));
    let mut state = match control.resume {
        Some(bytes) => checkpoint::restore(ctx, trainer, bytes, cfg, rows, distilling).await?,
        None => checkpoint::LoopState {
            step: 0,
            rng: cfg.seed,
            order: Vec::new(),
            logs: Vec::with_capacity(cfg.steps),
            eval_before: evaluate(ctx, trainer, &mut teacher, last_loss.as_ref(), eval, cfg.batch_rows).await?,
        },
    };
    let resumed_from = control.resume.map(|_| state.step);
    let teacher_eval_loss = match &mut teacher {
        Teacher::Online(t, _) if !eval.is_empty() => {
            let as_read: Vec<Row> = eval.iter().map(Row::as_teacher_reads).collect();
            Some(eval_loss(ctx, t, &as_read, cfg.batch_rows).await?)
        }
        _ => None,
    };
    let mut rng = SplitMix64::new(state.rng);
    let mut stopped_at = None;
    for step in state.step + 1..=cfg.steps {
        // Epochs of the training rows, each in a fresh shuffled order; `grad_accum` passes.
        let mut passes = Vec::with_capacity(cfg.grad_accum);
        for _ in 0..cfg.grad_accum {
            let mut picked = Vec::with_capacity(cfg.batch_rows);
            while picked.len() < cfg.batch_rows.min(train.len()) {
                if state.order.is_empty() {
                    state.order = (0..train.len()).collect();
                    for i in (1..state.order.len()).rev() {
                        state.order.swap(i, rng.below(i as u32 + 1) as usize);
                    }
                }
                picked.push(&train[state.order.pop().unwrap_or(0)]);
            }
            passes.push(concat(&picked));
        }
        let total: usize = passes.iter().map(|b| b.counted()).sum();
        let (mut loss, mut kl, mut ce) = (0.0, 0.0, Some(0.0));
        let kd = first_loss.map(|first| cfg.kd_schedule.next(&first, &state.logs, step, cfg.steps));
        for batch in &passes {
            let w = batch.counted() as f64 / total as f64;
            let (ids, targets, docs) = (&batch.ids, &batch.targets, &batch.doc_lengths);
            let (l, k) = match (&mut teacher, &kd) {
                (Teacher::Online(t, _), Some(kd)) => {
                    let input = batch.teacher.as_ref();
                    trainer.distill_forward_backward_with(ctx, t, kd, input, ids, targets, docs, w).await?
                }
                (Teacher::Offline(_), Some(kd)) => {
                    let top = batch.top_k.as_ref().ok_or_else(|| PupilError::arg(OP, "a row without top-k"))?;
                    trainer.distill_topk_forward_backward(ctx, kd, top, ids, targets, docs, w).await?
                }
                _ => (trainer.forward_backward_weighted(ctx, ids, targets, docs, w).await?, 0.0),
            };
            loss += w * l;
            kl += w * k;
            ce = ce.zip(trainer.last_cross_entropy()).map(|(sum, c)| sum + w * c);
        }
        let lr = cfg.lr_at(step);
        let opt = AdamW { lr, weight_decay: cfg.weight_decay, ..AdamW::default() };
        let report = trainer.step(ctx, &opt, cfg.max_grad_norm).await?;
        let log = StepLog {
            step,
            steps: cfg.steps,
            loss,
            grad_norm: report.grad_norm,
            lr,
            tokens: total,
            applied: report.applied,
            kl: distilling.then_some(kl),
            ce: ce.filter(|_| distilling),
            alpha: kd.map(|k| k.alpha as f64),
            tau: kd.map(|k| k.tau as f64),
        };
        progress(&log);
        state.logs.push(log);
        state.step = step;
        let stop = control.stop_after == Some(step) && step < cfg.steps;
        let due = control.checkpoint_every > 0 && step.is_multiple_of(control.checkpoint_every);
        if let (true, Some(sink)) = (stop || due, control.on_checkpoint.as_mut()) {
            state.rng = rng.state();
            sink(step, checkpoint::save(ctx, trainer, cfg, rows, distilling, &state).await?)?;
        }
        if stop {
            stopped_at = Some(step);
            break;
        }
    }
    let (eval_loss_after, eval_kl_after) = match stopped_at {
        Some(_) => (None, None),
        None => evaluate(ctx, trainer, &mut teacher, last_loss.as_ref(), eval, cfg.batch_rows).await?,
    };
    let logs = state.logs;
    Ok(FinetuneReport {
        train_rows: train.len(),
        eval_rows: eval.len(),
        eval_loss_before: state.eval_before.0,
        eval_loss_after,
        eval_kl_before: state.eval_before.1,
        eval_kl_after,
        teacher_eval_loss,
        skipped_steps: logs.iter().filter(|l| !l.applied).count(),
        steps: logs,
        trainable_parameters: trainer.parameter_count(),
        resumed_from,
        stopped_at,
    })
}

/// A trainer for `model` sized for `cfg`'s batches (convenience for the CLI and web engine).
pub fn trainer_for<'m>(ctx: &GpuContext, model: &'m LlamaModel, cfg: &FinetuneConfig) -> Result<Trainer<'m>> {
    let lora = (cfg.lora.rank > 0).then(|| cfg.lora.clone());
    let t = Trainer::with_last_layers(ctx, model, lora, cfg.last_layers, cfg.batch_rows * cfg.seq_len, cfg.seed)?;
    let t = if cfg.gates { t.with_attention_gates(ctx, 5.0, cfg.seed)? } else { t };
    if t.parameter_count() == 0 {
        return Err(PupilError::arg("finetune", "nothing to train: rank 0, no last layers and no gates"));
    }
    Ok(t)
}

/// Everything a run trained, as a safetensors file (F32), the base file's architecture and the
/// LoRA settings (`rank`, `alpha`, `dropout`, `targets`) in the metadata:
/// - adapters: `layers.{l}.{q_proj|…}.lora_A` `[r, in]` and `.lora_B` `[out, r]`;
/// - fully trained layers: their weights under the GGUF names (`blk.{l}.attn_q.weight`,
///   `.attn_k`, `.attn_v`, `.attn_output`, `.ffn_gate`, `.ffn_up`, `.ffn_down`, the norms,
///   `.attn_q.bias`… when the model has biases);
/// - trainable attention gates: `blk.{l}.attn_output_gate.weight` `[q width, hidden]`, `.bias`.
///
/// Rows are in the GGUF file's order (a llama file's Q/K rows permuted, in B and in the trained
/// Q/K weights alike): the file applies to the model it was trained on; the PEFT export
/// converts.
pub async fn trained_safetensors(ctx: &GpuContext, trainer: &Trainer<'_>, architecture: &str) -> Result<Vec<u8>> {
    let cfg = &trainer.lora.config;
    let targets: Vec<&str> = cfg.targets.iter().map(|t| t.hf_name()).collect();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (l, p) in trainer.lora.pairs() {
        for (suffix, t, shape) in [("lora_A", &p.a, [cfg.rank, p.in_dim]), ("lora_B", &p.b, [p.out_dim, cfg.rank])] {
            tensors.push((
                format!("layers.{l}.{}.{suffix}", p.target.hf_name()),
                shape.to_vec(),
                t.read_f32(ctx).await?,
            ));
        }
    }
    tensors.extend(trained_layer_tensors(ctx, trainer).await?);
    for (l, g) in trainer.gates.iter().enumerate() {
        tensors.push((format!("blk.{l}.attn_output_gate.weight"), g.w.w.shape().to_vec(), g.w.w.read_f32(ctx).await?));
        tensors.push((format!("blk.{l}.attn_output_gate.bias"), g.b.w.shape().to_vec(), g.b.w.read_f32(ctx).await?));
    }
    let last_layers = trainer.dense.iter().flatten().count();
    let metadata = serde_json::json!({
        "format": "pupil-trained",
        "rank": cfg.rank.to_string(),
        "alpha": cfg.alpha.to_string(),
        "dropout": cfg.dropout.to_string(),
        "targets": targets.join(","),
        "last_layers": last_layers.to_string(),
        "gates": (!trainer.gates.is_empty()).to_string(),
        "architecture": architecture,
    });
    safetensors_f32(metadata, &tensors)
}

/// The fully trained layers' weights as the GGUF file holds them: (GGUF name, shape, values),
/// Pupil's fused Q|K and gate|up split back into the file's tensors, Gemma's norms back to the
/// file's `1 + w`, rows in the file's order.
pub(crate) async fn trained_layer_tensors(
    ctx: &GpuContext,
    trainer: &Trainer<'_>,
) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
    let c = &trainer.model_config();
    let (qd, h) = (c.n_heads * c.head_dim, c.hidden);
    let mut tensors = Vec::new();
    for (l, d) in trainer.dense.iter().enumerate() {
        let Some(d) = d else { continue };
        for (name, p) in d.params() {
            let (mut v, shape) = (p.w.read_f32(ctx).await?, p.w.shape().to_vec());
            if d.norms_one_plus && name.ends_with("norm") {
                // Back to the file's 1 + w (Gemma's norms train as w).
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            // Q|K and gate|up are fused in Pupil: split them back into the file's tensors.
            let split = |a: &str, b: &str, rows_a: usize, width: usize| {
                let rows_b = v.len() / width - rows_a;
                vec![
                    (
                        format!("blk.{l}.{a}"),
                        if width == 1 { vec![rows_a] } else { vec![rows_a, width] },
                        v[..rows_a * width].to_vec(),
                    ),
                    (
                        format!("blk.{l}.{b}"),
                        if width == 1 { vec![rows_b] } else { vec![rows_b, width] },
                        v[rows_a * width..].to_vec(),
                    ),
                ]
            };
            let one = |gguf: &str| vec![(format!("blk.{l}.{gguf}"), shape.clone(), v.clone())];
            tensors.extend(match name {
                "attn_norm" => one("attn_norm.weight"),
                "qk" => split("attn_q.weight", "attn_k.weight", qd, h),
                "qk_bias" => split("attn_q.bias", "attn_k.bias", qd, 1),
                "q_norm" => one("attn_q_norm.weight"),
                "k_norm" => one("attn_k_norm.weight"),
                "v" => one("attn_v.weight"),
                "v_bias" => one("attn_v.bias"),
                "o" => one("attn_output.weight"),
                "ffn_norm" => one("ffn_norm.weight"),
                "gate_up" => split("ffn_gate.weight", "ffn_up.weight", c.ffn_hidden, h),
                "down" => one("ffn_down.weight"),
                "attn_post_norm" => one("post_attention_norm.weight"),
                "ffn_post_norm" => one("post_ffw_norm.weight"),
                other => unreachable!("DenseLayer::params has no {other}"),
            });
        }
    }
    Ok(tensors)
}

/// A safetensors file of F32 tensors (name, shape, values), in the order given.
pub(crate) fn safetensors_f32(
    metadata: serde_json::Value,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), metadata);
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        let start = data.len();
        data.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| PupilError::arg("trained_safetensors", e.to_string()))?;
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    Ok(out)
}

/// [`FinetuneConfig`] as JSON options (the web engine's `finetune`, camelCase), every field
/// optional with the defaults above.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FinetuneOptions {
    /// 0: no adapters.
    pub rank: Option<usize>,
    pub alpha: Option<f32>,
    /// LoRA dropout while training (0 to <1).
    pub dropout: Option<f32>,
    /// The last layers trained in full.
    pub last_layers: Option<usize>,
    /// Trainable attention output gates on every layer.
    pub gates: Option<bool>,
    /// `["q", "k", …]`.
    pub targets: Option<Vec<String>>,
    pub steps: Option<usize>,
    pub seq_len: Option<usize>,
    pub batch_rows: Option<usize>,
    /// Passes accumulated per optimizer step.
    pub grad_accum: Option<usize>,
    pub lr: Option<f64>,
    pub warmup: Option<usize>,
    pub min_lr_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    /// `0` turns clipping off.
    pub max_grad_norm: Option<f64>,
    pub eval_fraction: Option<f64>,
    pub seed: Option<u64>,
    /// `"text"` or `"jsonl"`.
    pub format: Option<String>,
}

impl FinetuneOptions {
    pub fn config(&self) -> Result<(FinetuneConfig, DataFormat)> {
        let d = FinetuneConfig::default();
        let targets = match &self.targets {
            None => d.lora.targets.clone(),
            Some(t) => t.iter().map(|s| LoraTarget::parse(s)).collect::<Result<_>>()?,
        };
        let format = DataFormat::parse("finetune", self.format.as_deref())?;
        let cfg = FinetuneConfig {
            lora: LoraConfig {
                rank: self.rank.unwrap_or(d.lora.rank),
                alpha: self.alpha.unwrap_or(d.lora.alpha),
                targets,
                dropout: self.dropout.unwrap_or(d.lora.dropout),
            },
            last_layers: self.last_layers.unwrap_or(0),
            gates: self.gates.unwrap_or(false),
            steps: self.steps.unwrap_or(d.steps),
            seq_len: self.seq_len.unwrap_or(d.seq_len),
            batch_rows: self.batch_rows.unwrap_or(d.batch_rows),
            grad_accum: self.grad_accum.unwrap_or(d.grad_accum),
            lr: self.lr.unwrap_or(d.lr),
            warmup: self.warmup.unwrap_or(d.warmup),
            min_lr_ratio: self.min_lr_ratio.unwrap_or(d.min_lr_ratio),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            max_grad_norm: match self.max_grad_norm {
                Some(x) if x <= 0.0 => None,
                Some(x) => Some(x),
                None => d.max_grad_norm,
            },
            eval_fraction: self.eval_fraction.unwrap_or(d.eval_fraction),
            seed: self.seed.unwrap_or(d.seed),
            kd_schedule: d.kd_schedule,
        };
        Ok((cfg, format))
    }
}

/// Tokenize and pack `data`, then [`finetune`] fresh adapters on `model`: what the web engine
/// runs, and what the native run the browser test compares with runs.
#[allow(clippy::too_many_arguments)]
pub async fn finetune_data(
    ctx: &GpuContext,
    model: &LlamaModel,
    tokenizer: &crate::tokenizer::Tokenizer,
    template: Option<&crate::tokenizer::ChatTemplate>,
    data: &str,
    format: DataFormat,
    cfg: &FinetuneConfig,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<FinetuneReport> {
    let docs = documents(data, format, tokenizer, template)?;
    let rows = pack(&docs, cfg.seq_len);
    let mut trainer = trainer_for(ctx, model, cfg)?;
    finetune(ctx, &mut trainer, &rows, cfg, progress).await
}

impl FinetuneReport {
    /// The report as JSON (camelCase), as the web engine returns it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "trainRows": self.train_rows,
            "evalRows": self.eval_rows,
            "evalLossBefore": self.eval_loss_before,
            "evalLossAfter": self.eval_loss_after,
            "evalKlBefore": self.eval_kl_before,
            "evalKlAfter": self.eval_kl_after,
            "teacherEvalLoss": self.teacher_eval_loss,
            "skippedSteps": self.skipped_steps,
            "trainableParameters": self.trainable_parameters,
            "resumedFrom": self.resumed_from,
            "stoppedAt": self.stopped_at,
            "steps": self.steps.iter().map(StepLog::to_json).collect::<Vec<_>>(),
        })
    }
}

impl StepLog {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "step": self.step, "steps": self.steps, "loss": self.loss, "gradNorm": self.grad_norm,
            "lr": self.lr, "tokens": self.tokens, "applied": self.applied, "kl": self.kl,
            "ce": self.ce, "alpha": self.alpha, "tau": self.tau,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cross_entropy::IGNORE_TARGET;

    fn row(id: u32) -> Row {
        Row { ids: vec![id, id], targets: vec![id, IGNORE_TARGET], doc_lengths: vec![2], teacher: None, top_k: None }
    }

    /// The replay rows make up the fraction of the training part, the held-out rows stay the
    /// task's own and last, and the adjusted eval fraction holds out exactly them.
    #[test]
    fn replay_mix_keeps_the_eval_split_and_the_fraction() {
        let rows: Vec<Row> = (0..10).map(row).collect();
        let replay: Vec<Row> = (100..103).map(row).collect();
        let cfg = FinetuneConfig { eval_fraction: 0.2, ..FinetuneConfig::default() };
        let (mixed, mcfg) = mix_replay(&rows, &replay, 0.2, &cfg).unwrap();
        let (train, eval) = eval_split(&mixed, &mcfg);
        assert_eq!(eval, &rows[8..], "the held-out rows are the task's");
        let replayed = train.iter().filter(|r| r.ids[0] >= 100).count();
        assert_eq!((train.len(), replayed), (10, 2), "8 task rows + 2 replay rows (20%)");
        let task: Vec<u32> = train.iter().filter(|r| r.ids[0] < 100).map(|r| r.ids[0]).collect();
        assert_eq!(task, (0..8).collect::<Vec<_>>(), "the task's rows keep their order");
        assert_eq!(mix_replay(&rows, &replay, 0.0, &cfg).unwrap().0, rows);
        assert!(mix_replay(&rows, &[], 0.3, &cfg).is_err() && mix_replay(&rows, &replay, 1.0, &cfg).is_err());
    }
}
