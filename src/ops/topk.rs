//! Row top-k (for top-k / top-p sampling): values in descending order, lowest index first
//! among equals, NaN never chosen; missing slots get index `u32::MAX` and value `f32::MIN`.
//! Kernel: `shaders/topk.wgsl`. Reference: `reference::topk`.

use bytemuck::{Pod, Zeroable};

use super::{
    dtype_and_reduction_variants, expect_dtype, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG,
};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

/// Largest k the kernel accepts: it sweeps the row once per k.
pub const MAX_K: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    k: u32,
}

/// `out_idx`, `out_val`: `[rows, k]` (u32 and f32) for `x` `[rows, width]`.
pub fn topk_forward(b: &mut Batch, x: &Tensor, k: usize, out_idx: &Tensor, out_val: &Tensor) -> Result<()> {
    const OP: &str = "topk_forward";
    let dt = float_dtype(b.context(), OP, &[x])?;
    let (rows, width) = rows_and_width(OP, x)?;
    if k == 0 || k > width || k > MAX_K {
        return Err(PupilError::arg(OP, format!("k = {k} must be in 1..={}", width.min(MAX_K))));
    }
    expect_dtype(OP, "indices", out_idx, DType::U32)?;
    expect_dtype(OP, "values", out_val, DType::F32)?;
    expect_len(OP, "indices", out_idx, rows * k)?;
    expect_len(OP, "values", out_val, rows * k)?;
    let key = kernel(b.context(), "topk", "topk_forward", dt, true, WG);
    let p = Params { rows: to_u32(OP, rows)?, width: to_u32(OP, width)?, k: to_u32(OP, k)? };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[x, out_idx, out_val], grid)
}

pub fn variants() -> Vec<KernelKey> {
    dtype_and_reduction_variants(KernelKey::new("topk", "topk_forward").define("WG", WG), true)
}
