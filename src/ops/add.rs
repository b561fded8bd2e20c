//! Residual add, out of place (`y = a + b`) or in place (`a += b`).
//! Kernel: `shaders/add.wgsl`. Reference: `reference::add`.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, elem_grid, expect_len, float_dtype, kernel, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, KernelKey, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
}

pub fn add_forward(b: &mut Batch, a: &Tensor, bb: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "add_forward";
    let dt = float_dtype(b.context(), OP, &[a, bb, y])?;
    expect_len(OP, "b", bb, a.len())?;
    expect_len(OP, "output", y, a.len())?;
    if a.is_empty() {
        return Err(PupilError::shape(OP, "empty tensor"));
    }
    let key = kernel(b.context(), "add", "add_forward", dt, false, WG);
    let grid = elem_grid(b, a.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&Params { n: to_u32(OP, a.len())? }), &[a, bb, y], grid)
}

/// `a += b` (the residual stream update).
pub fn add_inplace(b: &mut Batch, a: &Tensor, bb: &Tensor) -> Result<()> {
    const OP: &str = "add_inplace";
    let dt = float_dtype(b.context(), OP, &[a, bb])?;
    expect_len(OP, "b", bb, a.len())?;
    if a.is_empty() {
        return Err(PupilError::shape(OP, "empty tensor"));
    }
    if std::ptr::eq(a.buffer(), bb.buffer()) {
        return Err(PupilError::arg(OP, "a and b share a buffer"));
    }
    let key = kernel(b.context(), "add", "add_forward", dt, false, WG).flag("IN_PLACE", true);
    let grid = elem_grid(b, a.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&Params { n: to_u32(OP, a.len())? }), &[a, bb], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = dtype_and_reduction_variants(KernelKey::new("add", "add_forward").define("WG", WG), false);
    v.extend(dtype_and_reduction_variants(
        KernelKey::new("add", "add_forward").define("WG", WG).flag("IN_PLACE", true),
        false,
    ));
    v
}
