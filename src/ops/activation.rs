//! Activations: SiLU and GELU (erf and tanh forms), plain or gated (SwiGLU / GeGLU), with
//! the gated form also reading one fused `[rows, 2*width]` gate|up tensor.
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

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
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
