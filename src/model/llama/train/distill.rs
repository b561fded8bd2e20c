//! The trainer's distillation: an online teacher (another trainer on the same batch, or on
//! its own input for context distillation), an offline teacher's top-k, and hidden-state
//! alignment to the teacher's residual streams. The loss itself is chosen in the head loop
//! (`Trainer::head_forward_backward`) by the [`Signal`] `run` is given.

use super::{check_weight, Trainer};
use crate::error::{PupilError, Result};
use crate::gpu::{DType, GpuContext, Tensor};
use crate::ops::cross_entropy::IGNORE_TARGET;
use crate::ops::distill_loss::{DistillLoss, MAX_TOP_K};

/// Context distillation: what the teacher reads for a batch (its packed documents, e.g. each
/// of the student's with an instruction before it) and, for each student token, the teacher
/// row whose next-token distribution that token's position learns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TeacherRow {
    pub ids: Vec<u32>,
    pub doc_lengths: Vec<usize>,
    pub rows: Vec<u32>,
}

/// An offline teacher's view of a batch (`pupil teach`): per token its `k` most likely next ids
/// (distinct, in the vocabulary) and their log-probabilities (of its distribution at the
/// temperature it was written at), `[tokens, k]` row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopK {
    pub k: usize,
    pub ids: Vec<u32>,
    pub logp: Vec<f32>,
}

/// Hidden-state alignment to the teacher of a distillation (TinyBERT, Minitron's pruned
/// students): for each pair (student boundary, teacher boundary) — boundary b being the residual
/// stream after b blocks, 1 ≤ b ≤ layers — `weight · ‖h_s − h_t‖² / ‖h_t‖²` per token, averaged
/// over the batch's tokens, joins the loss, and its gradient enters the backward pass at that
/// boundary. Student and teacher share the hidden size.
#[derive(Clone, Debug, PartialEq)]
pub struct HiddenAlignment {
    pub pairs: Vec<(usize, usize)>,
    pub weight: f32,
}

/// What `run` learns from: the labels (cross-entropy), an online teacher's logits, or an
/// offline teacher's top-k (in `top_k`, k per token).
#[derive(Clone, Copy)]
pub(super) enum Signal<'a, 't> {
    Labels,
    Online(&'a Trainer<'t>, &'a DistillLoss),
    TopK(usize, &'a DistillLoss),
}

impl<'a, 't> Signal<'a, 't> {
    pub(super) fn online(self) -> Option<&'a Trainer<'t>> {
        match self {
            Signal::Online(t, _) => Some(t),
            _ => None,
        }
    }
}

impl<'m> Trainer<'m> {
    /// Align the hidden states to the distillation teacher's at `alignment`'s boundaries (see
    /// [`HiddenAlignment`]; the teacher's boundaries are checked when it is given).
    pub fn with_hidden_alignment(mut self, ctx: &GpuContext, alignment: HiddenAlignment) -> Result<Self> {
        let n = self.model.config.n_layers;
        if alignment.pairs.is_empty() || alignment.pairs.iter().any(|&(s, t)| s == 0 || s > n || t == 0) {
            return Err(PupilError::arg(
                "Trainer::with_hidden_alignment",
                format!("boundaries are 1..={n} (after that many blocks): {:?}", alignment.pairs),
            ));
        }
        if !(alignment.weight.is_finite() && alignment.weight > 0.0) {
            return Err(PupilError::arg("Trainer::with_hidden_alignment", "a positive weight"));
        }
        let loss = Tensor::empty(ctx, &[self.max_tokens], DType::F32)?;
        self.align = Some((alignment, loss));
        Ok(self)
    }

    /// Distillation: `teacher` (a trainer of another model with the same vocabulary; nothing of
    /// it trains) runs forward on the same batch, and the loss is `loss` (τ²·KL to the teacher's
    /// tempered distribution + α·CE) per counted target, its gradients scaled by `weight` and
    /// added as [`forward_backward`](Self::forward_backward)'s are. The teacher's logits are
    /// made HEAD_ROWS rows at a time beside the student's, never whole. Returns the batch's
    /// mean loss and mean KL.
    #[allow(clippy::too_many_arguments)]
    pub async fn distill_forward_backward(
        &mut self,
        ctx: &GpuContext,
        teacher: &mut Trainer<'_>,
        loss: &DistillLoss,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
        weight: f64,
    ) -> Result<(f64, f64)> {
        self.distill_forward_backward_with(ctx, teacher, loss, None, ids, targets, doc_lengths, weight).await
    }

    /// [`distill_forward_backward`](Self::distill_forward_backward) where the teacher reads its
    /// own input (`teacher_input`, context distillation: the documents with an instruction
    /// before them) and each student token learns the distribution of the teacher row given
    /// for it; `None` is the same batch.
    #[allow(clippy::too_many_arguments)]
    pub async fn distill_forward_backward_with(
        &mut self,
        ctx: &GpuContext,
        teacher: &mut Trainer<'_>,
        loss: &DistillLoss,
        teacher_input: Option<&TeacherRow>,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
        weight: f64,
    ) -> Result<(f64, f64)> {
        const OP: &str = "Trainer::distill_forward_backward";
        check_weight(OP, weight)?;
        self.teacher_batch(OP, ctx, teacher, teacher_input, ids, targets, doc_lengths)?;
        let out = self.run(ctx, ids, targets, doc_lengths, Some(weight), Signal::Online(teacher, loss)).await?;
        self.last_loss = Some(out.0);
        Ok(out)
    }

    /// Check that `teacher` shares the student's vocabulary, and write its batch: the student's,
    /// or its own input with the rows each student token maps to.
    #[allow(clippy::too_many_arguments)]
    fn teacher_batch(
        &self,
        op: &'static str,
        ctx: &GpuContext,
        teacher: &mut Trainer<'_>,
        input: Option<&TeacherRow>,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
    ) -> Result<()> {
        let (sv, tv) = (self.model.config.vocab_size, teacher.model.config.vocab_size);
        if sv != tv {
            return Err(PupilError::arg(op, format!("the teacher's vocabulary ({tv}) is not the student's ({sv})")));
        }
        teacher.gathered = None;
        let Some(input) = input else {
            teacher.write_batch(ctx, ids, targets, doc_lengths)?;
            return Ok(());
        };
        let nt = input.ids.len();
        if input.rows.len() != ids.len() || input.rows.iter().any(|&r| r as usize >= nt) {
            return Err(PupilError::arg(op, format!("one teacher row (below {nt}) per student token")));
        }
        // The teacher's own targets: the student's, at the rows they map to (what it counts is
        // only checked by write_batch; its loss is not used).
        let mut t_targets = vec![IGNORE_TARGET; nt];
        for (&r, &t) in input.rows.iter().zip(targets) {
            if t != IGNORE_TARGET {
                t_targets[r as usize] = t;
            }
        }
        teacher.write_batch(ctx, &input.ids, &t_targets, &input.doc_lengths)?;
        teacher.gather_rows.view(0, &[ids.len()])?.write_bytes(ctx, bytemuck::cast_slice(&input.rows))?;
        teacher.gathered = Some(nt);
        Ok(())
    }

    /// The distillation loss and KL of a batch against `teacher` with the adapters as they are;
    /// gradients untouched (evaluation). `teacher_input` as in
    /// [`distill_forward_backward_with`](Self::distill_forward_backward_with).
    #[allow(clippy::too_many_arguments)]
    pub async fn distill_loss(
        &mut self,
        ctx: &GpuContext,
        teacher: &mut Trainer<'_>,
        loss: &DistillLoss,
        teacher_input: Option<&TeacherRow>,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
    ) -> Result<(f64, f64)> {
        self.teacher_batch("Trainer::distill_loss", ctx, teacher, teacher_input, ids, targets, doc_lengths)?;
        self.run(ctx, ids, targets, doc_lengths, None, Signal::Online(teacher, loss)).await
    }

    /// Distillation from an offline teacher (`pupil teach`): `top` holds, per token of the
    /// batch, the teacher's k most likely next ids and their log-probabilities at `loss.tau`;
    /// the loss is `loss.kl_coef` · the forward KL over those k ids and one tail bucket
    /// (`ops::distill_loss::distill_topk_forward_backward`) + α·CE per counted target, its
    /// gradients scaled by `weight` and added as [`forward_backward`](Self::forward_backward)'s
    /// are. No hidden-state alignment (there are no teacher states). Returns the batch's mean
    /// loss and mean KL.
    #[allow(clippy::too_many_arguments)]
    pub async fn distill_topk_forward_backward(
        &mut self,
        ctx: &GpuContext,
        loss: &DistillLoss,
        top: &TopK,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
        weight: f64,
    ) -> Result<(f64, f64)> {
        const OP: &str = "Trainer::distill_topk_forward_backward";
        check_weight(OP, weight)?;
        self.write_top_k(OP, ctx, top, ids.len())?;
        let out = self.run(ctx, ids, targets, doc_lengths, Some(weight), Signal::TopK(top.k, loss)).await?;
        self.last_loss = Some(out.0);
        Ok(out)
    }

    /// The offline teacher's distillation loss and KL of a batch with the adapters as they are;
    /// gradients untouched (evaluation).
    pub async fn distill_topk_loss(
        &mut self,
        ctx: &GpuContext,
        loss: &DistillLoss,
        top: &TopK,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
    ) -> Result<(f64, f64)> {
        self.write_top_k("Trainer::distill_topk_loss", ctx, top, ids.len())?;
        self.run(ctx, ids, targets, doc_lengths, None, Signal::TopK(top.k, loss)).await
    }

    /// Check an offline teacher's top-k for `n` tokens and upload it.
    fn write_top_k(&mut self, op: &'static str, ctx: &GpuContext, top: &TopK, n: usize) -> Result<()> {
        let (k, vocab) = (top.k, self.model.config.vocab_size);
        if k == 0 || k > MAX_TOP_K || top.ids.len() != n * k || top.logp.len() != n * k {
            return Err(PupilError::arg(
                op,
                format!("1 ≤ k ≤ {MAX_TOP_K} teacher ids and log-probabilities per token: k {k}, {n} tokens, {} ids, {} log-probabilities", top.ids.len(), top.logp.len()),
            ));
        }
        if let Some(&id) = top.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(PupilError::arg(op, format!("teacher id {id} outside the vocabulary of {vocab}")));
        }
        if self.align.is_some() {
            return Err(PupilError::Unsupported(
                "hidden-state alignment with an offline teacher (no teacher states)".into(),
            ));
        }
        if n > self.max_tokens {
            return Err(PupilError::arg(op, format!("{n} tokens, the trainer holds {}", self.max_tokens)));
        }
        if self.top_k.as_ref().is_none_or(|(have, ..)| *have < k) {
            let len = self.max_tokens * k;
            self.top_k = Some((k, Tensor::empty(ctx, &[len], DType::U32)?, Tensor::empty(ctx, &[len], DType::F32)?));
        }
        let (_, ids, logp) = self.top_k.as_ref().expect("just made");
        ids.view(0, &[n * k])?.write_bytes(ctx, bytemuck::cast_slice(&top.ids))?;
        logp.view(0, &[n * k])?.write_bytes(ctx, bytemuck::cast_slice(&top.logp))?;
        Ok(())
    }

    /// The alignment to `teacher` for a batch of `n` tokens, checked against the teacher: per
    /// pair the student boundary and the teacher's stream there `[n, hidden]`, the weight, and
    /// the per-row loss (zeroed); None without alignment or teacher.
    #[allow(clippy::type_complexity)]
    pub(super) fn alignment_with(
        &self,
        ctx: &GpuContext,
        teacher: Option<&Trainer<'_>>,
        n: usize,
    ) -> Result<Option<(Vec<(usize, Tensor)>, f32, Tensor)>> {
        const OP: &str = "Trainer::hidden_alignment";
        let (Some((a, loss)), Some(t)) = (&self.align, teacher) else { return Ok(None) };
        let (tc, c) = (&t.model.config, &self.model.config);
        if tc.hidden != c.hidden {
            return Err(PupilError::arg(
                OP,
                format!("hidden sizes differ: student {}, teacher {}", c.hidden, tc.hidden),
            ));
        }
        if t.gathered.is_some() {
            return Err(PupilError::Unsupported("hidden-state alignment with context distillation".into()));
        }
        if let Some(&(_, tb)) = a.pairs.iter().find(|p| p.1 > tc.n_layers) {
            return Err(PupilError::arg(OP, format!("teacher boundary {tb} past its {} layers", tc.n_layers)));
        }
        let streams =
            a.pairs.iter().map(|&(sb, tb)| Ok((sb, t.xs[tb].view(0, &[n, c.hidden])?))).collect::<Result<Vec<_>>>()?;
        loss.fill_buffer_u32(ctx, 0);
        Ok(Some((streams, a.weight, loss.view(0, &[n])?)))
    }
}
