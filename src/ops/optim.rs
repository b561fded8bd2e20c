//! The optimizer: AdamW over f32 master weights ([`adamw_step`]), and the gradient statistics a
//! step needs first ([`grad_sum_squares`]): the global norm for clipping and a count of
//! non-finite values, so a step whose gradients hold a NaN or an Inf is skipped and reported
//! rather than applied. Kernel: `shaders/adamw.wgsl`. Reference: `reference::optim`.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, elem_grid, expect_dtype, expect_len, kernel, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

/// AdamW hyper-parameters (PyTorch's defaults but for the learning rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamW {
    fn check(&self, op: &'static str) -> Result<()> {
        let ok = self.lr.is_finite()
            && self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(PupilError::arg(
                op,
                format!("AdamW needs lr ≥ 0, betas in [0, 1), eps > 0, weight decay ≥ 0: {self:?}"),
            ))
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct StepParams {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    grad_scale: f32,
    _pad: [u32; 3],
}

/// One AdamW step (number `step` ≥ 1, for the bias corrections) on f32 `w` with gradient
/// `grad × grad_scale` and moments `m`, `v` (f32, same length, zero before step 1).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    b: &mut Batch,
    opt: &AdamW,
    step: u64,
    w: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "adamw_step";
    opt.check(OP)?;
    if step == 0 {
        return Err(PupilError::arg(OP, "steps count from 1"));
    }
    if !grad_scale.is_finite() {
        return Err(PupilError::arg(OP, format!("grad_scale {grad_scale} is not finite")));
    }
    for (what, t) in [("weights", w), ("grad", grad), ("m", m), ("v", v)] {
        expect_dtype(OP, what, t, DType::F32)?;
        expect_len(OP, what, t, w.len())?;
    }
    let t = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - opt.beta1.powi(t);
    let bc2 = 1.0 - opt.beta2.powi(t);
    let p = StepParams {
        n: to_u32(OP, w.len())?,
        lr: opt.lr as f32,
        beta1: opt.beta1 as f32,
        beta2: opt.beta2 as f32,
        eps: opt.eps as f32,
        weight_decay: opt.weight_decay as f32,
        step_size: (opt.lr / bc1) as f32,
        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        grad_scale,
        _pad: [0; 3],
    };
    let key = kernel(b.context(), "adamw", "adamw_step", DType::F32, false, WG);
    let grid = elem_grid(b, w.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[w, grad, m, v], grid)
}

/// Workgroups (partial pairs) [`grad_sum_squares`] uses for a tensor of `n` values.
pub fn sum_squares_slots(n: usize) -> usize {
    n.div_ceil(WG as usize).clamp(1, 64)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    n: u32,
    first_slot: u32,
    _pad: [u32; 2],
}

/// Partial (sum of squares of the finite values, count of non-finite values) pairs of f32
/// `grad` into `partials` (f32), slots `first_slot..first_slot + sum_squares_slots(n)`: several
/// tensors share one partials buffer and one readback. Add them with [`GradStats::from_partials`].
pub fn grad_sum_squares(b: &mut Batch, grad: &Tensor, partials: &Tensor, first_slot: usize) -> Result<usize> {
    const OP: &str = "grad_sum_squares";
    expect_dtype(OP, "grad", grad, DType::F32)?;
    expect_dtype(OP, "partials", partials, DType::F32)?;
    let slots = sum_squares_slots(grad.len());
    if partials.len() < 2 * (first_slot + slots) {
        return Err(PupilError::shape(
            OP,
            format!(
                "partials hold {} values, slots {first_slot}..{} need {}",
                partials.len(),
                first_slot + slots,
                2 * (first_slot + slots)
            ),
        ));
    }
    let p = NormParams { n: to_u32(OP, grad.len())?, first_slot: to_u32(OP, first_slot)?, _pad: [0; 2] };
    let key = kernel(b.context(), "adamw", "grad_sum_squares", DType::F32, true, WG).flag("SUM_SQUARES", true);
    b.dispatch(&key, bytemuck::bytes_of(&p), &[grad, partials], [slots as u32, 1, 1])?;
    Ok(slots)
}

/// The global gradient statistics of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradStats {
    /// ‖g‖₂ over every finite value.
    pub norm: f64,
    /// NaN and ±Inf values: a step with any is skipped.
    pub nonfinite: u64,
}

impl GradStats {
    /// Add the (sum of squares, non-finite count) pairs read back from the partials buffer.
    pub fn from_partials(pairs: &[f32]) -> GradStats {
        let (ss, bad) = pairs.chunks_exact(2).fold((0.0f64, 0.0f64), |(s, n), c| (s + c[0] as f64, n + c[1] as f64));
        GradStats { norm: ss.sqrt(), nonfinite: bad as u64 }
    }

    /// The factor that clips the global norm to `max_norm` (PyTorch's `clip_grad_norm_`:
    /// `max_norm / (norm + 1e-6)` when that is below 1).
    pub fn clip_scale(&self, max_norm: Option<f64>) -> f64 {
        match max_norm {
            Some(c) if self.norm > 0.0 => (c / (self.norm + 1e-6)).min(1.0),
            _ => 1.0,
        }
    }
}

pub fn variants() -> Vec<KernelKey> {
    let step = KernelKey::new("adamw", "adamw_step").define("WG", WG);
    let norm = KernelKey::new("adamw", "grad_sum_squares").define("WG", WG).flag("SUM_SQUARES", true);
    // f32 only: master weights, gradients and moments are f32 on every path.
    let mut v: Vec<KernelKey> =
        dtype_and_reduction_variants(step, false).into_iter().filter(|k| !k.has("F16")).collect();
    v.extend(dtype_and_reduction_variants(norm, true).into_iter().filter(|k| !k.has("F16")));
    v
}
