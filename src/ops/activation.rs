//! Activations: SiLU and GELU (erf and tanh forms), plain or gated (SwiGLU / GeGLU), with
//! the gated form also reading one fused `[rows, 2*width]` gate|up tensor; and the gated
//! forms' backward passes (`gated_activation_backward`, `gated_activation_fused_backward`).
//! Kernel: `shaders/activation.wgsl`. Reference: `reference::activation`.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, elem_grid, expect_len, float_dtype, kernel, rows_and_width, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, KernelKey, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluErf,
    GeluTanh,
}

impl Activation {
    pub(crate) fn code(self) -> u32 {
        match self {
            Activation::Silu => 0,
            Activation::GeluErf => 1,
            Activation::GeluTanh => 2,
        }
    }
    pub const ALL: [Activation; 3] = [Activation::Silu, Activation::GeluErf, Activation::GeluTanh];
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    in_stride: u32,
    gate_offset: u32,
    up_offset: u32,
}

fn key(b: &Batch, act: Activation, gated: bool, dt: crate::gpu::DType) -> KernelKey {
    kernel(b.context(), "activation", "activation_forward", dt, false, WG)
        .define("ACT", act.code())
        .flag("GATED", gated)
}

/// `y = act(x)` elementwise.
pub fn activation_forward(b: &mut Batch, act: Activation, x: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "activation_forward";
    let dt = float_dtype(b.context(), OP, &[x, y])?;
    let (rows, width) = rows_and_width(OP, x)?;
    expect_len(OP, "output", y, x.len())?;
    let p = Params {
        rows: to_u32(OP, rows)?,
        width: to_u32(OP, width)?,
        in_stride: to_u32(OP, width)?,
        gate_offset: 0,
        up_offset: 0,
    };
    let grid = elem_grid(b, x.len())?;
    b.dispatch(&key(b, act, false, dt), bytemuck::bytes_of(&p), &[x, y], grid)
}

/// `y = act(gate) * up` for `[rows, width]` tensors (SwiGLU with `Silu`, GeGLU with GELU).
pub fn gated_activation_forward(b: &mut Batch, act: Activation, gate: &Tensor, up: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "gated_activation_forward";
    let dt = float_dtype(b.context(), OP, &[gate, up, y])?;
    let (rows, width) = rows_and_width(OP, gate)?;
    expect_len(OP, "up", up, gate.len())?;
    expect_len(OP, "output", y, gate.len())?;
    let p = Params {
        rows: to_u32(OP, rows)?,
        width: to_u32(OP, width)?,
        in_stride: to_u32(OP, width)?,
        gate_offset: 0,
        up_offset: 0,
    };
    let grid = elem_grid(b, gate.len())?;
    b.dispatch(&key(b, act, true, dt), bytemuck::bytes_of(&p), &[gate, up, y], grid)
}

/// `y[r] = act(gate_up[r, :w]) * gate_up[r, w:]` for a fused `[rows, 2w]` projection output.
pub fn gated_activation_fused_forward(b: &mut Batch, act: Activation, gate_up: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "gated_activation_fused_forward";
    let dt = float_dtype(b.context(), OP, &[gate_up, y])?;
    let (rows, width2) = rows_and_width(OP, gate_up)?;
    if width2 % 2 != 0 {
        return Err(PupilError::shape(OP, format!("fused gate|up width {width2} is odd")));
    }
    let width = width2 / 2;
    expect_len(OP, "output", y, rows * width)?;
    let p = Params {
        rows: to_u32(OP, rows)?,
        width: to_u32(OP, width)?,
        in_stride: to_u32(OP, width2)?,
        gate_offset: 0,
        up_offset: to_u32(OP, width)?,
    };
    let grid = elem_grid(b, rows * width)?;
    b.dispatch(&key(b, act, true, dt), bytemuck::bytes_of(&p), &[gate_up, gate_up, y], grid)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BackParams {
    rows: u32,
    width: u32,
    in_stride: u32,
    gate_offset: u32,
    up_offset: u32,
    out_stride: u32,
    dgate_offset: u32,
    dup_offset: u32,
}

/// The backward pass of [`gated_activation_fused_forward`]: from the fused `[rows, 2w]` gate|up
/// of the forward and `dy` `[rows, w]`, the fused gradient `dgate_up` `[rows, 2w]`
/// (`dgate = dy·up·act'(gate)`, `dup = dy·act(gate)`), ready for one transposed matmul through
/// the stacked gate|up weight.
pub fn gated_activation_fused_backward(
    b: &mut Batch,
    act: Activation,
    gate_up: &Tensor,
    dy: &Tensor,
    dgate_up: &Tensor,
) -> Result<()> {
    const OP: &str = "gated_activation_fused_backward";
    let dt = float_dtype(b.context(), OP, &[gate_up, dy, dgate_up])?;
    let (rows, width2) = rows_and_width(OP, gate_up)?;
    if width2 % 2 != 0 {
        return Err(PupilError::shape(OP, format!("fused gate|up width {width2} is odd")));
    }
    let width = width2 / 2;
    expect_len(OP, "dy", dy, rows * width)?;
    expect_len(OP, "dgate_up", dgate_up, gate_up.len())?;
    let w = to_u32(OP, width)?;
    let p = BackParams {
        rows: to_u32(OP, rows)?,
        width: w,
        in_stride: 2 * w,
        gate_offset: 0,
        up_offset: w,
        out_stride: 2 * w,
        dgate_offset: 0,
        dup_offset: w,
    };
    let key = backward_key(b, act, dt);
    let grid = elem_grid(b, rows * width)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[gate_up, gate_up, dy, dgate_up], grid)
}

/// The backward pass of [`gated_activation_forward`] (separate gate and up `[rows, w]`): the
/// gradients into `dgate_up` `[2, rows, w]` (all of dgate, then all of dup), so each half is a
/// contiguous `[rows, w]` view for its own weight's transposed matmul.
pub fn gated_activation_backward(
    b: &mut Batch,
    act: Activation,
    gate: &Tensor,
    up: &Tensor,
    dy: &Tensor,
    dgate_up: &Tensor,
) -> Result<()> {
    const OP: &str = "gated_activation_backward";
    let dt = float_dtype(b.context(), OP, &[gate, up, dy, dgate_up])?;
    let (rows, width) = rows_and_width(OP, gate)?;
    expect_len(OP, "up", up, gate.len())?;
    expect_len(OP, "dy", dy, gate.len())?;
    expect_len(OP, "dgate_up", dgate_up, 2 * gate.len())?;
    let w = to_u32(OP, width)?;
    let p = BackParams {
        rows: to_u32(OP, rows)?,
        width: w,
        in_stride: w,
        gate_offset: 0,
        up_offset: 0,
        out_stride: w,
        dgate_offset: 0,
        dup_offset: to_u32(OP, gate.len())?,
    };
    let key = backward_key(b, act, dt);
    let grid = elem_grid(b, gate.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[gate, up, dy, dgate_up], grid)
}

fn backward_key(b: &Batch, act: Activation, dt: crate::gpu::DType) -> KernelKey {
    kernel(b.context(), "activation", "gated_activation_backward", dt, false, WG)
        .define("ACT", act.code())
        .flag("BACKWARD", true)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for act in Activation::ALL {
        let backward = KernelKey::new("activation", "gated_activation_backward")
            .define("WG", WG)
            .define("ACT", act.code())
            .flag("BACKWARD", true);
        v.extend(dtype_and_reduction_variants(backward, false));
    }
    for act in Activation::ALL {
        for gated in [false, true] {
            let base = KernelKey::new("activation", "activation_forward")
                .define("WG", WG)
                .define("ACT", act.code())
                .flag("GATED", gated);
            v.extend(dtype_and_reduction_variants(base, false));
        }
    }
    v
}
