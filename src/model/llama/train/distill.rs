//! The trainer's distillation: an online teacher (another trainer on the same batch, or on
//! its own input for context distillation), an offline teacher's top-k, and hidden-state
//! alignment to the teacher's residual streams. The loss itself is chosen in the head loop
//! (`Trainer::head_forward_backward`) by the [`Signal`] `run` is given.

use super::{check_weight, sum_squares_slots, Param, Trainer};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::cross_entropy::IGNORE_TARGET;
use crate::ops::distill_loss::{DistillLoss, MAX_TOP_K};
use crate::ops::hidden_mse::hidden_mse_forward_backward;
use crate::ops::matmul_dense::{matmul_dense_forward, DenseLayout};

/// Context distillation: what the teacher reads for a batch (its packed documents, e.g. each
/// of the student's with an instruction before it) and, for each student token, the teacher
/// row whose next-token distribution that token's position learns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TeacherRow {
    pub ids: Vec<u32>,
    pub doc_lengths: Vec<usize>,
    pub rows: Vec<u32>,
}

impl TeacherRow {
    /// The teacher's own targets for the student's `targets`: each counted one at the teacher
    /// row its token maps to, the rest ignored (its loss is then the teacher's on the same
    /// predictions).
    pub fn targets_for(&self, targets: &[u32]) -> Vec<u32> {
        let mut out = vec![IGNORE_TARGET; self.ids.len()];
        for (&r, &t) in self.rows.iter().zip(targets) {
            if t != IGNORE_TARGET {
                out[r as usize] = t;
            }
        }
        out
    }
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
/// stream after b blocks, 1 ≤ b ≤ layers — `weight · ‖P·h_s − h_t‖² / ‖h_t‖²` per token, averaged
/// over the batch's tokens, joins the loss, and its gradient enters the backward pass at that
/// boundary. P is the identity unless `projected`: then each pair learns its own
/// `[teacher hidden, student hidden]` matrix (TinyBERT's W_h), trained with the run's
/// optimizer and started at the truncated identity (the student's stream in the teacher's
/// first dimensions; exactly the unprojected alignment for equal sizes). Only a projection
/// aligns students narrower or wider than their teacher. It is a training aid: nothing of it
/// is exported.
#[derive(Clone, Debug, PartialEq)]
pub struct HiddenAlignment {
    pub pairs: Vec<(usize, usize)>,
    pub weight: f32,
    pub projected: bool,
}

/// A trainer's alignment: the pairs and weight, the per-row loss, and with a projection its
/// parameters (one per pair) and work buffers (the projected stream and its gradient).
pub(super) struct AlignState {
    pub(super) alignment: HiddenAlignment,
    loss: Tensor,
    pub(super) projections: Vec<Param>,
    work: Option<(Tensor, Tensor)>,
}

/// One alignment term of a pass: the student boundary, the teacher's stream there `[n, th]`
/// and the pair's projection, if any.
pub(super) struct AlignTerm<'a> {
    pub(super) boundary: usize,
    teacher: Tensor,
    projection: Option<&'a Param>,
}

/// A pass's alignment ([`Trainer::alignment_with`]).
pub(super) struct AlignPass<'a> {
    pub(super) terms: Vec<AlignTerm<'a>>,
    weight: f32,
    pub(super) loss: Tensor,
    work: Option<&'a (Tensor, Tensor)>,
}

impl AlignPass<'_> {
    /// Record `term`'s loss for the student stream `hs` `[n, hidden]` into the per-row loss
    /// and, with `grad` (the stream's gradient and the scale of this pass), its gradient into
    /// it and into the projection's.
    pub(super) fn record(
        &self,
        b: &mut Batch,
        term: &AlignTerm<'_>,
        hs: &Tensor,
        grad: Option<(&Tensor, f32)>,
    ) -> Result<()> {
        let (dx, scale) = grad.map_or((None, 0.0), |(g, s)| (Some(g), s));
        let (Some(p), Some((proj, dproj))) = (term.projection, self.work) else {
            return hidden_mse_forward_backward(b, hs, &term.teacher, &self.loss, dx, self.weight, scale);
        };
        let (n, th, h) = (hs.shape()[0], p.w.shape()[0], p.w.shape()[1]);
        let proj = proj.view(0, &[n, th])?;
        matmul_dense_forward(b, hs, &p.w, &proj, DenseLayout::Nt, (n, th, h), 1.0, false)?;
        let Some(dx) = dx else {
            return hidden_mse_forward_backward(b, &proj, &term.teacher, &self.loss, None, self.weight, 0.0);
        };
        let dproj = dproj.view(0, &[n, th])?;
        b.clear(&dproj)?;
        hidden_mse_forward_backward(b, &proj, &term.teacher, &self.loss, Some(&dproj), self.weight, scale)?;
        // dP += dprojᵀ·h_s, dh_s += dproj·P.
        matmul_dense_forward(b, &dproj, hs, &p.g, DenseLayout::Tn, (th, h, n), 1.0, true)?;
        matmul_dense_forward(b, &dproj, &p.w, dx, DenseLayout::Nn, (n, h, th), 1.0, true)
    }
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
    /// [`HiddenAlignment`]; the teacher's boundaries are checked when it is given), for a
    /// teacher of hidden size `teacher_hidden` (another size needs `projected`).
    pub fn with_hidden_alignment(
        mut self,
        ctx: &GpuContext,
        alignment: HiddenAlignment,
        teacher_hidden: usize,
    ) -> Result<Self> {
        const OP: &str = "Trainer::with_hidden_alignment";
        let (n, h) = (self.model.config.n_layers, self.model.config.hidden);
        if alignment.pairs.is_empty() || alignment.pairs.iter().any(|&(s, t)| s == 0 || s > n || t == 0) {
            return Err(PupilError::arg(
                OP,
                format!("boundaries are 1..={n} (after that many blocks): {:?}", alignment.pairs),
            ));
        }
        if !(alignment.weight.is_finite() && alignment.weight > 0.0) {
            return Err(PupilError::arg(OP, "a positive weight"));
        }
        if teacher_hidden != h && !alignment.projected {
            return Err(PupilError::arg(
                OP,
                format!(
                    "hidden sizes differ (student {h}, teacher {teacher_hidden}): align through a learned projection"
                ),
            ));
        }
        if teacher_hidden == 0 {
            return Err(PupilError::arg(OP, "a teacher hidden size ≥ 1"));
        }
        let e = |shape: &[usize]| Tensor::empty(ctx, shape, DType::F32);
        let (mut projections, mut work) = (Vec::new(), None);
        if alignment.projected {
            let mut eye = vec![0.0f32; teacher_hidden * h];
            for i in 0..teacher_hidden.min(h) {
                eye[i * h + i] = 1.0;
            }
            for _ in &alignment.pairs {
                projections.push(Param::new(ctx, Tensor::from_f32(ctx, &eye, &[teacher_hidden, h], DType::F32)?)?);
            }
            work = Some((e(&[self.max_tokens, teacher_hidden])?, e(&[self.max_tokens, teacher_hidden])?));
            let slots = self.partials.len() / 2 + alignment.pairs.len() * sum_squares_slots(teacher_hidden * h);
            self.partials = e(&[slots, 2])?;
        }
        let loss = e(&[self.max_tokens])?;
        self.align = Some(AlignState { alignment, loss, projections, work });
        Ok(self)
    }

    /// The alignment's projections, one per pair (none unless `projected`): `w` `[teacher
    /// hidden, hidden]`, `g` its gradient.
    pub fn alignment_projections(&self) -> &[Param] {
        self.align.as_ref().map_or(&[], |a| &a.projections)
    }

    /// Set pair `i`'s projection from host values, `[teacher hidden, hidden]` row-major.
    pub fn set_alignment_projection(&self, ctx: &GpuContext, i: usize, values: &[f32]) -> Result<()> {
        const OP: &str = "Trainer::set_alignment_projection";
        let p = self.alignment_projections().get(i).ok_or_else(|| PupilError::arg(OP, format!("no projection {i}")))?;
        if values.len() != p.w.len() {
            return Err(PupilError::shape(OP, format!("{} values for {:?}", values.len(), p.w.shape())));
        }
        p.w.write_f32(ctx, values)
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
        // (What the teacher counts is only checked by write_batch; its loss is not used.)
        teacher.write_batch(ctx, &input.ids, &input.targets_for(targets), &input.doc_lengths)?;
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

    /// The alignment to `teacher` for a batch of `n` tokens, checked against the teacher: its
    /// terms (the teacher's streams `[n, teacher hidden]`), weight and per-row loss (zeroed);
    /// None without alignment or teacher.
    pub(super) fn alignment_with<'s>(
        &'s self,
        ctx: &GpuContext,
        teacher: Option<&Trainer<'_>>,
        n: usize,
    ) -> Result<Option<AlignPass<'s>>> {
        const OP: &str = "Trainer::hidden_alignment";
        let (Some(a), Some(t)) = (&self.align, teacher) else { return Ok(None) };
        let (tc, c) = (&t.model.config, &self.model.config);
        let aligned_to = a.projections.first().map_or(c.hidden, |p| p.w.shape()[0]);
        if tc.hidden != aligned_to {
            return Err(PupilError::arg(
                OP,
                format!("the teacher's hidden size is {}, the alignment was made for {aligned_to}", tc.hidden),
            ));
        }
        if t.gathered.is_some() {
            return Err(PupilError::Unsupported("hidden-state alignment with context distillation".into()));
        }
        if let Some(&(_, tb)) = a.alignment.pairs.iter().find(|p| p.1 > tc.n_layers) {
            return Err(PupilError::arg(OP, format!("teacher boundary {tb} past its {} layers", tc.n_layers)));
        }
        let terms = a
            .alignment
            .pairs
            .iter()
            .enumerate()
            .map(|(i, &(sb, tb))| {
                Ok(AlignTerm {
                    boundary: sb,
                    teacher: t.xs[tb].view(0, &[n, tc.hidden])?,
                    projection: a.projections.get(i),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        a.loss.fill_buffer_u32(ctx, 0);
        Ok(Some(AlignPass { terms, weight: a.alignment.weight, loss: a.loss.view(0, &[n])?, work: a.work.as_ref() }))
    }
}
