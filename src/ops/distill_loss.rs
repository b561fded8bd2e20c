//! The knowledge-distillation loss, fused with its gradient and in place like
//! `ops::cross_entropy`: `kl_coef · KL(teacher^τ ‖ student^τ) + α · CE(student, target)` per row
//! (Hinton et al. 2015; the reverse KL and the generalised Jensen–Shannon divergence as options), the gradient written over the
//! student's logits for the head's transposed matmul. The caller feeds `[rows, vocab]` blocks
//! of both models' logits. Kernel: `shaders/distill_loss.wgsl`. Reference:
//! `reference::distill_loss`.
//!
//! [`distill_topk_forward_backward`] is the same against an offline teacher's top-k
//! log-probabilities (`pupil teach`): the forward KL over the k ids and one bucket for the rest
//! of the mass. Kernel: `shaders/distill_topk.wgsl`. Reference: `reference::distill_topk`.

use bytemuck::{Pod, Zeroable};

use super::{
    dtype_and_reduction_variants, expect_dtype, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG,
};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

/// Which divergence between the tempered teacher `p` and student `q`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Divergence {
    /// KL(p ‖ q): the student covers the teacher's mass (Hinton's).
    Forward,
    /// KL(q ‖ p): mode-seeking (MiniLLM's).
    Reverse,
    /// The generalised Jensen–Shannon divergence `β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)` with the
    /// mixture `m = β·p + (1 − β)·q`, β in (0, 1) (as in GKD, Agarwal et al. 2024): bounded
    /// by ln 2 at β = ½; it tends to β·KL(p ‖ q) as β → 0 and to (1 − β)·KL(q ‖ p) as β → 1,
    /// so β moves it from the forward KL's behaviour to the reverse's (raise `kl_coef` for
    /// small or large β: the divergence shrinks with them).
    Jsd { beta: f32 },
}

impl Divergence {
    /// `forward`, `reverse`, or `jsd` (β = ½) / `jsd:β` (as the CLI takes it).
    pub fn parse(s: &str) -> Result<Divergence> {
        let bad =
            || PupilError::arg("divergence", format!("{s:?}: give forward, reverse, jsd or jsd:BETA (0 < β < 1)"));
        match s {
            "forward" | "kl" => Ok(Divergence::Forward),
            "reverse" | "reverse-kl" => Ok(Divergence::Reverse),
            "jsd" => Ok(Divergence::Jsd { beta: 0.5 }),
            _ => {
                let beta: f32 = s.strip_prefix("jsd:").and_then(|b| b.parse().ok()).ok_or_else(bad)?;
                (beta > 0.0 && beta < 1.0).then_some(Divergence::Jsd { beta }).ok_or_else(bad)
            }
        }
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Divergence::Forward => write!(f, "forward KL"),
            Divergence::Reverse => write!(f, "reverse KL"),
            Divergence::Jsd { beta } => write!(f, "JSD (β {beta})"),
        }
    }
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
    beta: f32,
    _pad: u32,
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
    let finite = check_rows_and_weights(OP, rows, targets, (loss, kl), cfg, grad_scale)?;
    let beta = match cfg.divergence {
        Divergence::Jsd { beta } => beta,
        _ => 0.5,
    };
    if !finite || cfg.tau <= 0.0 || cfg.kl_coef < 0.0 || cfg.alpha < 0.0 || !(beta > 0.0 && beta < 1.0) {
        return Err(PupilError::arg(
            OP,
            format!("τ > 0, kl_coef ≥ 0, α ≥ 0, 0 < β < 1 and a finite grad scale; got {cfg:?}, {grad_scale}"),
        ));
    }
    let key = kernel(b.context(), "distill_loss", "distill_loss_forward_backward", dt, true, WG)
        .flag("REVERSE", cfg.divergence == Divergence::Reverse)
        .flag("JSD", matches!(cfg.divergence, Divergence::Jsd { .. }));
    let p = Params {
        rows: to_u32(OP, rows)?,
        vocab: to_u32(OP, vocab)?,
        inv_tau: 1.0 / cfg.tau,
        kl_coef: cfg.kl_coef,
        alpha: cfg.alpha,
        grad_scale,
        beta,
        _pad: 0,
    };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[student, teacher, targets, loss, kl], grid)
}

/// The most teacher ids per row [`distill_topk_forward_backward`] takes (the kernel keeps the
/// student's logits at them in workgroup memory).
pub const MAX_TOP_K: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TopKParams {
    rows: u32,
    vocab: u32,
    k: u32,
    inv_tau: f32,
    kl_coef: f32,
    alpha: f32,
    grad_scale: f32,
    beta: f32,
}

/// [`distill_loss_forward_backward`] against an offline teacher: per row of `student` logits
/// `[rows, vocab]`, the teacher's `top_ids` (u32 `[rows, k]`, distinct, below the vocabulary;
/// the caller checks) and their log-probabilities `top_logp` (f32 `[rows, k]`, of the teacher's
/// distribution at `cfg.tau`). The divergence is the forward KL between teacher and student
/// coarse-grained onto the k ids plus one tail bucket holding the rest of each one's mass (the
/// teacher's tail r = 1 − Σ p, spread over the student's tail ids as the student spreads its
/// own); or the reverse KL or generalised JSD between those buckets, where the teacher's tail is
/// floored at 1e-7 (the kernel's `TAIL_FLOOR`: a student tail against an empty teacher tail
/// would be infinitely far).
pub fn distill_topk_forward_backward(
    b: &mut Batch,
    cfg: &DistillLoss,
    student: &Tensor,
    (top_ids, top_logp): (&Tensor, &Tensor),
    targets: &Tensor,
    (loss, kl): (&Tensor, &Tensor),
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "distill_topk_forward_backward";
    let dt = float_dtype(b.context(), OP, &[student])?;
    let (rows, vocab) = rows_and_width(OP, student)?;
    let (id_rows, k) = rows_and_width(OP, top_ids)?;
    if id_rows != rows || top_logp.shape() != top_ids.shape() || k > MAX_TOP_K {
        return Err(PupilError::shape(
            OP,
            format!(
                "teacher ids {:?} and log-probs {:?}: [{rows}, k ≤ {MAX_TOP_K}] each",
                top_ids.shape(),
                top_logp.shape()
            ),
        ));
    }
    expect_dtype(OP, "top_ids", top_ids, DType::U32)?;
    expect_dtype(OP, "top_logp", top_logp, DType::F32)?;
    let finite = check_rows_and_weights(OP, rows, targets, (loss, kl), cfg, grad_scale)?;
    let beta = match cfg.divergence {
        Divergence::Jsd { beta } => beta,
        _ => 0.5,
    };
    if !finite || cfg.tau <= 0.0 || cfg.kl_coef < 0.0 || cfg.alpha < 0.0 || !(beta > 0.0 && beta < 1.0) {
        return Err(PupilError::arg(
            OP,
            format!("τ > 0, kl_coef ≥ 0, α ≥ 0, 0 < β < 1 and a finite grad scale; got {cfg:?}, {grad_scale}"),
        ));
    }
    let key = kernel(b.context(), "distill_topk", "distill_topk_forward_backward", dt, true, WG)
        .flag("FORWARD", cfg.divergence == Divergence::Forward)
        .flag("REVERSE", cfg.divergence == Divergence::Reverse)
        .flag("JSD", matches!(cfg.divergence, Divergence::Jsd { .. }));
    let p = TopKParams {
        rows: to_u32(OP, rows)?,
        vocab: to_u32(OP, vocab)?,
        k: to_u32(OP, k)?,
        inv_tau: 1.0 / cfg.tau,
        kl_coef: cfg.kl_coef,
        alpha: cfg.alpha,
        grad_scale,
        beta,
    };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[student, top_ids, top_logp, targets, loss, kl], grid)
}

/// Both losses' targets (u32 `[rows]`), per-row outputs (f32 `[rows]`); whether τ, the weights
/// and the grad scale are finite (each op judges their ranges).
fn check_rows_and_weights(
    op: &'static str,
    rows: usize,
    targets: &Tensor,
    (loss, kl): (&Tensor, &Tensor),
    cfg: &DistillLoss,
    grad_scale: f32,
) -> Result<bool> {
    expect_dtype(op, "targets", targets, DType::U32)?;
    expect_len(op, "targets", targets, rows)?;
    for (what, t) in [("loss", loss), ("kl", kl)] {
        expect_dtype(op, what, t, DType::F32)?;
        expect_len(op, what, t, rows)?;
    }
    Ok([cfg.tau, cfg.kl_coef, cfg.alpha, grad_scale].iter().all(|x| x.is_finite()))
}

pub fn variants() -> Vec<KernelKey> {
    let topk = KernelKey::new("distill_topk", "distill_topk_forward_backward").define("WG", WG);
    let base = || KernelKey::new("distill_loss", "distill_loss_forward_backward").define("WG", WG);
    let mut v = dtype_and_reduction_variants(base(), true);
    v.extend(dtype_and_reduction_variants(base().flag("REVERSE", true), true));
    v.extend(dtype_and_reduction_variants(base().flag("JSD", true), true));
    for flag in ["FORWARD", "REVERSE", "JSD"] {
        v.extend(dtype_and_reduction_variants(topk.clone().flag(flag, true), true));
    }
    v
}
