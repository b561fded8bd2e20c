//! Row softmax with temperature. Kernel: `shaders/softmax.wgsl`. Reference: `reference::softmax`.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, KernelKey, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    inv_temperature: f32,
}

/// `y = softmax(x / temperature)` over the last dimension.
pub fn softmax_forward(b: &mut Batch, x: &Tensor, y: &Tensor, temperature: f32) -> Result<()> {
    const OP: &str = "softmax_forward";
    let dt = float_dtype(b.context(), OP, &[x, y])?;
    let (rows, width) = rows_and_width(OP, x)?;
    expect_len(OP, "output", y, x.len())?;
    if !(temperature > 0.0) || !temperature.is_finite() {
        return Err(PupilError::arg(OP, format!("temperature must be positive and finite, got {temperature}")));
    }
    let key = kernel(b.context(), "softmax", "softmax_forward", dt, true, WG);
    let p = Params { rows: to_u32(OP, rows)?, width: to_u32(OP, width)?, inv_temperature: 1.0 / temperature };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[x, y], grid)
}

pub fn variants() -> Vec<KernelKey> {
    dtype_and_reduction_variants(KernelKey::new("softmax", "softmax_forward").define("WG", WG), true)
}
