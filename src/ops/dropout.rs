//! Inverted dropout (`y (+)= mask ⊙ x / (1 − p)`) with a mask that is a pure function of a
//! 32-bit seed and the element index, so it is regenerated rather than stored: the LoRA
//! trainer's recomputed forward and its backward pass (where the same call masks the input
//! gradient) see the same mask. Kernel: `shaders/dropout.wgsl`. Reference: `reference::dropout`.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, elem_grid, expect_len, float_dtype, kernel, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, KernelKey, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    seed: u32,
    threshold: u32,
    scale: f32,
}

/// `y = mask(seed) ⊙ x / (1 − p)`, or `y += …` with `accumulate`; `p` in [0, 1).
pub fn dropout_forward(b: &mut Batch, x: &Tensor, y: &Tensor, p: f32, seed: u32, accumulate: bool) -> Result<()> {
    const OP: &str = "dropout_forward";
    let dt = float_dtype(b.context(), OP, &[x, y])?;
    expect_len(OP, "output", y, x.len())?;
    if x.is_empty() {
        return Err(PupilError::shape(OP, "empty tensor"));
    }
    if !(0.0..1.0).contains(&p) {
        return Err(PupilError::arg(OP, format!("dropout probability must be in [0, 1), got {p}")));
    }
    if std::ptr::eq(x.buffer(), y.buffer()) {
        return Err(PupilError::arg(OP, "x and y share a buffer"));
    }
    let params = Params {
        n: to_u32(OP, x.len())?,
        seed,
        threshold: crate::reference::dropout::threshold(p),
        scale: (1.0 / (1.0 - p as f64)) as f32,
    };
    let key = kernel(b.context(), "dropout", "dropout_forward", dt, false, WG).flag("ACCUMULATE", accumulate);
    let grid = elem_grid(b, x.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&params), &[x, y], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let base = || KernelKey::new("dropout", "dropout_forward").define("WG", WG);
    let mut v = dtype_and_reduction_variants(base(), false);
    v.extend(dtype_and_reduction_variants(base().flag("ACCUMULATE", true), false));
    v
}
