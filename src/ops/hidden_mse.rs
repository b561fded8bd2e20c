//! Hidden-state alignment between a student's and a teacher's residual streams (TinyBERT,
//! Minitron's depth-pruned students): per row, `weight · ‖s − t‖² / ‖t‖²`, accumulated into a
//! per-row loss, and optionally its gradient added into the student stream's gradient (the
//! backward pass's `dx` at that layer boundary). Kernel: `shaders/hidden_mse.wgsl`.
//! Reference: `reference::hidden_mse`.

use bytemuck::{Pod, Zeroable};

use super::{
    dtype_and_reduction_variants, expect_dtype, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG,
};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    weight: f32,
    grad_scale: f32,
}

/// `loss[r] += weight · ‖s_r − t_r‖² / ‖t_r‖²` (f32 `[rows]`) for `student`, `teacher`
/// `[rows, width]`, and with `grad` (the student's dtype and shape) `grad += grad_scale ·
/// ∂/∂s of that`.
pub fn hidden_mse_forward_backward(
    b: &mut Batch,
    student: &Tensor,
    teacher: &Tensor,
    loss: &Tensor,
    grad: Option<&Tensor>,
    weight: f32,
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "hidden_mse_forward_backward";
    let mut floats = vec![student, teacher];
    floats.extend(grad);
    let dt = float_dtype(b.context(), OP, &floats)?;
    let (rows, width) = rows_and_width(OP, student)?;
    if teacher.shape() != student.shape() || grad.is_some_and(|g| g.shape() != student.shape()) {
        return Err(PupilError::shape(
            OP,
            format!(
                "student {:?}, teacher {:?} and gradient {:?} must share a shape",
                student.shape(),
                teacher.shape(),
                grad.map(|g| g.shape().to_vec())
            ),
        ));
    }
    expect_dtype(OP, "loss", loss, DType::F32)?;
    expect_len(OP, "loss", loss, rows)?;
    if !(weight.is_finite() && weight >= 0.0 && grad_scale.is_finite()) {
        return Err(PupilError::arg(OP, format!("a weight ≥ 0 and a finite grad scale, got {weight}, {grad_scale}")));
    }
    let key =
        kernel(b.context(), "hidden_mse", "hidden_mse_forward_backward", dt, true, WG).flag("GRAD", grad.is_some());
    let p = Params { rows: to_u32(OP, rows)?, width: to_u32(OP, width)?, weight, grad_scale };
    let grid = row_grid(b, rows)?;
    let mut bindings = vec![student, teacher, loss];
    bindings.extend(grad);
    b.dispatch(&key, bytemuck::bytes_of(&p), &bindings, grid)
}

pub fn variants() -> Vec<KernelKey> {
    let base = || KernelKey::new("hidden_mse", "hidden_mse_forward_backward").define("WG", WG);
    let mut v = dtype_and_reduction_variants(base(), true);
    v.extend(dtype_and_reduction_variants(base().flag("GRAD", true), true));
    v
}
