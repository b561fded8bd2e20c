//! Row arg-max (greedy sampling): lowest index wins ties, NaN never wins, an all-NaN row
//! gives `u32::MAX`. Kernel: `shaders/argmax.wgsl`. Reference: `reference::argmax`.

use bytemuck::{Pod, Zeroable};

use super::{
    dtype_and_reduction_variants, expect_dtype, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG,
};
use crate::error::Result;
use crate::gpu::{Batch, DType, KernelKey, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    width: u32,
}

/// `out[r] = argmax(x[r, :])`, `out` u32 `[rows]`.
pub fn argmax_forward(b: &mut Batch, x: &Tensor, out: &Tensor) -> Result<()> {
    const OP: &str = "argmax_forward";
    let dt = float_dtype(b.context(), OP, &[x])?;
    let (rows, width) = rows_and_width(OP, x)?;
    expect_dtype(OP, "output", out, DType::U32)?;
    expect_len(OP, "output", out, rows)?;
    let key = kernel(b.context(), "argmax", "argmax_forward", dt, true, WG);
    let p = Params { rows: to_u32(OP, rows)?, width: to_u32(OP, width)? };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[x, out], grid)
}

pub fn variants() -> Vec<KernelKey> {
    dtype_and_reduction_variants(KernelKey::new("argmax", "argmax_forward").define("WG", WG), true)
}
