//! RMSNorm (llama: `x̂·w`; Gemma: `x̂·(1+w)`), also over short per-head rows (QK-norm).
//! Kernel: `shaders/rms_norm.wgsl`. Reference: `reference::rms_norm`.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG};
use crate::error::Result;
use crate::gpu::{Batch, KernelKey, Tensor};

/// How the learned weight scales the normalised row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormWeight {
    /// `x̂ · w` (llama, qwen).
    Plain,
    /// `x̂ · (1 + w)` (Gemma).
    OnePlus,
}

impl NormWeight {
    pub fn bias(self) -> f32 {
        match self {
            NormWeight::Plain => 0.0,
            NormWeight::OnePlus => 1.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    eps: f32,
    weight_bias: f32,
}

/// Rows no wider than this use 64-wide workgroups (per-head norms over head_dim).
const SHORT_ROW: usize = 256;

/// `y = rms_norm(x) * weight` over the last dimension of `x`, whose width is `w.len()`.
/// For QK-norm pass `x` as `[tokens, heads, head_dim]` and `w` as `[head_dim]`.
pub fn rms_norm_forward(b: &mut Batch, x: &Tensor, w: &Tensor, y: &Tensor, eps: f32, weight: NormWeight) -> Result<()> {
    const OP: &str = "rms_norm_forward";
    let dt = float_dtype(b.context(), OP, &[x, w, y])?;
    let (rows, width) = rows_and_width(OP, x)?;
    expect_len(OP, "weight", w, width)?;
    expect_len(OP, "output", y, x.len())?;
    let wg = if width <= SHORT_ROW { 64 } else { WG };
    let key = kernel(b.context(), "rms_norm", "rms_norm_forward", dt, true, wg);
    let params = Params { rows: to_u32(OP, rows)?, width: to_u32(OP, width)?, eps, weight_bias: weight.bias() };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&params), &[x, w, y], grid)
}

pub fn variants() -> Vec<KernelKey> {
    [64, WG]
        .into_iter()
        .flat_map(|wg| {
            dtype_and_reduction_variants(KernelKey::new("rms_norm", "rms_norm_forward").define("WG", wg), true)
        })
        .collect()
}
