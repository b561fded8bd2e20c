//! The knowledge-distillation loss, fused with its gradient and in place like
//! `ops::cross_entropy`: `kl_coef · KL(teacher^τ ‖ student^τ) + α · CE(student, target)` per row
//! (Hinton et al. 2015; the reverse divergence as an option), the gradient written over the
//! student's logits for the head's transposed matmul. The caller feeds `[rows, vocab]` blocks
//! of both models' logits. Kernel: `shaders/distill_loss.wgsl`. Reference:
//! `reference::distill_loss`.

use bytemuck::{Pod, Zeroable};

use super::{
    dtype_and_reduction_variants, expect_dtype, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG,
};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

/// Which KL divergence between the tempered teacher `p` and student `q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// KL(p ‖ q): the student covers the teacher's mass (Hinton's).
    Forward,
    /// KL(q ‖ p): mode-seeking (MiniLLM's).
    Reverse,
}

/// The loss's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillLoss {
    /// Temperature τ of both softmaxes in the divergence.
    pub tau: f32,
    /// Weight of the divergence: τ² in Hinton's recipe, so gradients keep their size across τ.
    pub kl_coef: f32,
    /// Weight of the hard-label cross-entropy (at temperature 1).
    pub alpha: f32,
    pub divergence: Divergence,
}

impl DistillLoss {
    /// Hinton's mix: `τ² · KL(p^τ ‖ q^τ) + α · CE`.
    pub fn hinton(tau: f32, alpha: f32) -> DistillLoss {
        DistillLoss { tau, kl_coef: tau * tau, alpha, divergence: Divergence::Forward }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    inv_tau: f32,
    kl_coef: f32,
    alpha: f32,
    grad_scale: f32,
    _pad: [u32; 2],
}

/// Per row of `student` / `teacher` logits `[rows, vocab]`: `loss` and `kl` (f32 `[rows]`; 0
/// for ignored targets, which count for nothing) and, in place, the student's logits become the
/// gradient of `grad_scale · Σ loss`. Targets below the vocabulary or `IGNORE_TARGET`.
pub fn distill_loss_forward_backward(
    b: &mut Batch,
    cfg: &DistillLoss,
    student: &Tensor,
    teacher: &Tensor,
    targets: &Tensor,
    (loss, kl): (&Tensor, &Tensor),
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "distill_loss_forward_backward";
    let dt = float_dtype(b.context(), OP, &[student, teacher])?;
    let (rows, vocab) = rows_and_width(OP, student)?;
    if teacher.shape() != student.shape() {
        return Err(PupilError::shape(
            OP,
            format!("teacher logits {:?}, student {:?}: one vocabulary", teacher.shape(), student.shape()),
        ));
    }
    expect_dtype(OP, "targets", targets, DType::U32)?;
    expect_len(OP, "targets", targets, rows)?;
    for (what, t) in [("loss", loss), ("kl", kl)] {
        expect_dtype(OP, what, t, DType::F32)?;
        expect_len(OP, what, t, rows)?;
    }
    let finite = [cfg.tau, cfg.kl_coef, cfg.alpha, grad_scale].iter().all(|x| x.is_finite());
    if !finite || cfg.tau <= 0.0 || cfg.kl_coef < 0.0 || cfg.alpha < 0.0 {
        return Err(PupilError::arg(
            OP,
            format!("τ > 0, kl_coef ≥ 0, α ≥ 0 and a finite grad scale; got {cfg:?}, {grad_scale}"),
        ));
    }
    let key = kernel(b.context(), "distill_loss", "distill_loss_forward_backward", dt, true, WG)
        .flag("REVERSE", cfg.divergence == Divergence::Reverse);
    let p = Params {
        rows: to_u32(OP, rows)?,
        vocab: to_u32(OP, vocab)?,
        inv_tau: 1.0 / cfg.tau,
        kl_coef: cfg.kl_coef,
        alpha: cfg.alpha,
        grad_scale,
        _pad: [0; 2],
    };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[student, teacher, targets, loss, kl], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let base = || KernelKey::new("distill_loss", "distill_loss_forward_backward").define("WG", WG);
    let mut v = dtype_and_reduction_variants(base(), true);
    v.extend(dtype_and_reduction_variants(base().flag("REVERSE", true), true));
    v
}
