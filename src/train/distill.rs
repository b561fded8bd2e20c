//! A distillation run from data to trained weights, as the web engine (`Engine.distill`) and the
//! native reference the browser test compares with run it: the teacher is a second model, the
//! student itself reading an instruction (context distillation), or the top-k a `pupil teach`
//! file holds (offline). The CLI (`pupil distill`) adds checkpoints, replay and exports around
//! the same pieces ([`teacher_trainer`], [`alignment_pairs`]).

use serde::Deserialize;

use super::{
    context_documents, distill_offline, documents, pack, pack_context, teach, train_resumable, trainer_for, DataFormat,
    FinetuneConfig, FinetuneOptions, FinetuneReport, KdSchedule, Row, RunControl, StepLog,
};
use crate::error::{PupilError, Result};
use crate::gpu::GpuContext;
use crate::model::{HiddenAlignment, LlamaModel, Trainer};
use crate::ops::distill_loss::{DistillLoss, Divergence};
use crate::tokenizer::{ChatTemplate, Tokenizer};

/// The distillation settings of `Engine.distill`'s options (camelCase JSON, beside
/// [`FinetuneOptions`]'s fields in the same object; [`split_options`] parts them). Defaults are
/// `pupil distill`'s: τ 2, CE weight 0.5, forward KL.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DistillOptions {
    /// Temperature of both softmaxes (an offline teacher's file has its own).
    pub tau: Option<f32>,
    /// Weight of the hard-label cross-entropy.
    pub kd_alpha: Option<f32>,
    /// `forward`, `reverse`, `jsd` or `jsd:β`.
    pub divergence: Option<String>,
    /// Anneal τ / the CE weight linearly to these by the last step (an adapted τ's target).
    pub tau_end: Option<f32>,
    pub kd_alpha_end: Option<f32>,
    /// Adapt the CE weight to the loss (the labels keep their step-1 share; see [`KdSchedule`]).
    pub kd_alpha_adapt: Option<bool>,
    /// Move τ toward `tau_end` (default 1) as the divergence falls (see [`KdSchedule`]).
    pub kd_tau_adapt: Option<bool>,
    /// Context distillation: the teacher reads each JSONL line with this as its system message.
    pub instruction: Option<String>,
    /// Hidden-state alignment's weight (0 or absent: none).
    pub align_hidden: Option<f32>,
    /// Alignment pairs `[[studentBoundary, teacherBoundary], …]` (default: every boundary for
    /// equal depths, the kept layers' for a pruned student).
    pub align_pairs: Option<Vec<[usize; 2]>>,
    /// Align through a learned projection per pair (default: when the hidden sizes differ).
    pub align_project: Option<bool>,
}

impl DistillOptions {
    /// The JSON keys that are this struct's (the rest of the object is [`FinetuneOptions`]).
    pub const KEYS: [&'static str; 11] = [
        "tau",
        "kdAlpha",
        "divergence",
        "tauEnd",
        "kdAlphaEnd",
        "kdAlphaAdapt",
        "kdTauAdapt",
        "instruction",
        "alignHidden",
        "alignPairs",
        "alignProject",
    ];

    /// The loss at step 1 (Hinton's τ² on the divergence) with `tau` in place of the given one
    /// (an offline teacher's).
    pub fn loss(&self, tau: Option<f32>) -> Result<DistillLoss> {
        let tau = tau.or(self.tau).unwrap_or(2.0);
        let alpha = self.kd_alpha.unwrap_or(0.5);
        if !(tau.is_finite() && tau > 0.0 && alpha.is_finite() && alpha >= 0.0) {
            return Err(PupilError::arg("distill", format!("τ > 0 and a CE weight ≥ 0; got τ {tau}, α {alpha}")));
        }
        let divergence = match &self.divergence {
            Some(d) => Divergence::parse(d)?,
            None => Divergence::Forward,
        };
        Ok(DistillLoss { divergence, ..DistillLoss::hinton(tau, alpha) })
    }

    pub fn schedule(&self) -> KdSchedule {
        KdSchedule {
            tau_end: self.tau_end,
            alpha_end: self.kd_alpha_end,
            adapt_alpha: self.kd_alpha_adapt.unwrap_or(false),
            adapt_tau: self.kd_tau_adapt.unwrap_or(false),
        }
    }
}

/// Part one JSON options object into its distillation keys and the fine-tuning rest (each
/// parsed strictly: an unknown key is an error naming it).
pub fn split_options(op: &'static str, json: &str) -> Result<(FinetuneOptions, DistillOptions)> {
    let text = if json.trim().is_empty() { "{}" } else { json };
    let bad = |e: serde_json::Error| PupilError::arg(op, format!("options: {e}"));
    let mut all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(bad)?;
    let mut kd = serde_json::Map::new();
    for key in DistillOptions::KEYS {
        if let Some(v) = all.remove(key) {
            kd.insert(key.to_string(), v);
        }
    }
    let finetune = serde_json::from_value(serde_json::Value::Object(all)).map_err(bad)?;
    let distill = serde_json::from_value(serde_json::Value::Object(kd)).map_err(bad)?;
    Ok((finetune, distill))
}

/// The teacher's trainer for `rows` (nothing of it trains): sized for `cfg`'s batches, or for a
/// context teacher's longer rows (the instruction before each document).
pub fn teacher_trainer<'t>(
    ctx: &GpuContext,
    teacher: &'t LlamaModel,
    rows: &[Row],
    cfg: &FinetuneConfig,
) -> Result<Trainer<'t>> {
    let longest = rows.iter().map(|r| r.teacher.as_ref().map_or(r.ids.len(), |t| t.ids.len())).max();
    let max_tokens = cfg.batch_rows * longest.unwrap_or(cfg.seq_len).max(cfg.seq_len);
    Trainer::with_last_layers(ctx, teacher, None, 0, max_tokens, cfg.seed)
}

/// Hidden-state alignment pairs (student boundary, teacher boundary): `explicit` if given, else
/// a pruned student's kept layers' ([`crate::model::prune::alignment_pairs`]), else every
/// boundary when the depths are equal; checked against both depths.
pub fn alignment_pairs(
    student_layers: usize,
    teacher_layers: usize,
    kept: Option<&[usize]>,
    explicit: Option<Vec<(usize, usize)>>,
) -> Result<Vec<(usize, usize)>> {
    let pairs = match (explicit, kept) {
        (Some(p), _) => p,
        (None, Some(kept)) => crate::model::prune::alignment_pairs(kept),
        (None, None) if student_layers == teacher_layers => (1..=teacher_layers).map(|b| (b, b)).collect(),
        (None, None) => {
            return Err(PupilError::arg(
                "distill",
                format!(
                    "hidden-state alignment: the student has {student_layers} layers, the teacher {teacher_layers}, \
                     and the student records no pruning; give the pairs (student:teacher boundaries)"
                ),
            ))
        }
    };
    if let Some(&(_, tb)) = pairs.iter().find(|&&(_, tb)| tb == 0 || tb > teacher_layers) {
        return Err(PupilError::arg(
            "distill",
            format!("alignment pair: the teacher has {teacher_layers} layers, not {tb}"),
        ));
    }
    Ok(pairs)
}

/// What a distillation learns from, for [`distill_data`].
pub struct DistillInput<'a> {
    pub student: &'a LlamaModel,
    /// The student's kept layers if it is a pruned copy of the teacher (alignment pairs).
    pub student_kept: Option<&'a [usize]>,
    /// A second model; `None`: the student itself with `instruction` (context distillation), or
    /// none at all when `data` is a `pupil teach` file.
    pub teacher: Option<&'a LlamaModel>,
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub data: &'a str,
    pub format: DataFormat,
}

/// Tokenize and pack `input.data` for its teacher, distil fresh adapters into the student per
/// `cfg` and `kd`, and return the report with the student's trainer (what it trained:
/// `trained_safetensors`, `merged_gguf`).
pub async fn distill_data<'a>(
    ctx: &GpuContext,
    input: &DistillInput<'a>,
    cfg: &FinetuneConfig,
    kd: &DistillOptions,
    progress: &mut dyn FnMut(&StepLog),
) -> Result<(FinetuneReport, Trainer<'a>)> {
    const OP: &str = "distill";
    let DistillInput { student, student_kept, teacher, tokenizer, template, data, format } = *input;
    let cfg = &FinetuneConfig { kd_schedule: kd.schedule(), ..cfg.clone() };
    let aligned = kd.align_hidden.is_some_and(|w| w != 0.0);
    if teach::is_teach_file(data) {
        if teacher.is_some() || kd.instruction.is_some() || aligned || kd.tau_end.is_some() {
            return Err(PupilError::arg(
                OP,
                "the data is a `pupil teach` file, which holds its teacher (top-k at a fixed τ): no teacher model, \
                 instruction, alignment or τ schedule",
            ));
        }
        let (h, rows) = teach::read_teach_file(data, student.config.vocab_size)?;
        if kd.tau.is_some_and(|t| t != h.tau) {
            return Err(PupilError::arg(OP, format!("the teach file's distribution is at τ {}: drop tau", h.tau)));
        }
        let cfg = &FinetuneConfig { seq_len: h.seq_len, ..cfg.clone() };
        let loss = kd.loss(Some(h.tau))?;
        let mut trainer = trainer_for(ctx, student, cfg)?;
        let report = distill_offline(ctx, &mut trainer, &loss, &rows, cfg, RunControl::default(), progress).await?;
        return Ok((report, trainer));
    }
    let rows = match &kd.instruction {
        Some(instruction) => {
            if format != DataFormat::Jsonl {
                return Err(PupilError::arg(
                    OP,
                    "context distillation reads JSONL (a conversation or {\"text\"} per line)",
                ));
            }
            pack_context(&context_documents(data, tokenizer, template, instruction)?, cfg.seq_len)
        }
        None if teacher.is_none() => {
            return Err(PupilError::arg(OP, "no teacher: load a teacher model, give an instruction, or a teach file"))
        }
        None => pack(&documents(data, format, tokenizer, template)?, cfg.seq_len),
    };
    // The trainer refuses a teacher of another vocabulary.
    let teacher_model = teacher.unwrap_or(student);
    let loss = kd.loss(None)?;
    let mut trainer = trainer_for(ctx, student, cfg)?;
    if let Some(weight) = kd.align_hidden.filter(|&w| w != 0.0) {
        let explicit = kd.align_pairs.as_ref().map(|p| p.iter().map(|&[s, t]| (s, t)).collect());
        let pairs = alignment_pairs(student.config.n_layers, teacher_model.config.n_layers, student_kept, explicit)?;
        let th = teacher_model.config.hidden;
        let projected = kd.align_project.unwrap_or(th != student.config.hidden);
        trainer = trainer.with_hidden_alignment(ctx, HiddenAlignment { pairs, weight, projected }, th)?;
    }
    let mut t = teacher_trainer(ctx, teacher_model, &rows, cfg)?;
    let report =
        train_resumable(ctx, &mut trainer, Some((&mut t, &loss)), &rows, cfg, RunControl::default(), progress).await?;
    Ok((report, trainer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_their_two_structs_strictly() {
        let (f, d) =
            split_options("t", r#"{"steps": 3, "tau": 1.5, "divergence": "jsd:0.3", "alignPairs": [[1, 2]]}"#).unwrap();
        assert_eq!(f.steps, Some(3));
        assert_eq!(
            (d.tau, d.divergence.as_deref(), d.align_pairs.clone()),
            (Some(1.5), Some("jsd:0.3"), Some(vec![[1, 2]]))
        );
        let loss = d.loss(None).unwrap();
        assert_eq!((loss.tau, loss.kl_coef, loss.alpha), (1.5, 2.25, 0.5));
        assert_eq!(loss.divergence, Divergence::Jsd { beta: 0.3 });
        assert_eq!(d.loss(Some(1.0)).unwrap().tau, 1.0, "an offline teacher's τ wins");
        let e = split_options("t", r#"{"steps": 3, "tua": 2}"#).unwrap_err().to_string();
        assert!(e.contains("tua"), "{e}");
        assert!(split_options("t", r#"{"divergence": "sideways"}"#).unwrap().1.loss(None).is_err());
        assert!(split_options("t", r#"{"tau": -1}"#).unwrap().1.loss(None).is_err());
        assert_eq!(split_options("t", "").unwrap().1, DistillOptions::default());
    }

    #[test]
    fn alignment_pairs_default_to_the_kept_layers_or_every_boundary() {
        assert_eq!(alignment_pairs(3, 3, None, None).unwrap(), vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(alignment_pairs(2, 4, Some(&[0, 3]), None).unwrap(), vec![(1, 1), (2, 4)]);
        assert_eq!(alignment_pairs(2, 4, Some(&[0, 3]), Some(vec![(2, 3)])).unwrap(), vec![(2, 3)]);
        assert!(alignment_pairs(2, 4, None, None).is_err(), "different depths, no record: refused");
        assert!(alignment_pairs(2, 4, None, Some(vec![(1, 5)])).is_err(), "past the teacher's depth");
    }
}
