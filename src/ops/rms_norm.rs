//! RMSNorm (llama: `x̂·w`; Gemma: `x̂·(1+w)`), also over short per-head rows (QK-norm), and its
//! backward pass: [`rms_norm_backward`] (dx, and each row's 1/rms) and
//! [`rms_norm_backward_weight`] (dw in f32, deterministic column sums).
//! Kernel: `shaders/rms_norm.wgsl`. Reference: `reference::rms_norm`.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG};
use super::{elem_grid, expect_dtype};
use crate::error::Result;
use crate::gpu::{Batch, DType, KernelKey, Tensor};

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

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BackParams {
    rows: u32,
    width: u32,
    eps: f32,
    weight_bias: f32,
    accumulate: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct WeightParams {
    rows: u32,
    width: u32,
    accumulate: u32,
    _pad: u32,
}

/// The gradient of [`rms_norm_forward`] with respect to `x`: `dx = r·g − x·r³·mean(g·x)` with
/// `g = dy·w'` and `r` each row's 1/rms (written to `rstd`, f32 `[rows]`, for
/// [`rms_norm_backward_weight`]). `accumulate`: `dx += …` (the residual stream's gradient
/// already there).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward(
    b: &mut Batch,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    rstd: &Tensor,
    eps: f32,
    weight: NormWeight,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "rms_norm_backward";
    let dt = float_dtype(b.context(), OP, &[x, w, dy, dx])?;
    let (rows, width) = rows_and_width(OP, x)?;
    expect_len(OP, "weight", w, width)?;
    expect_len(OP, "dy", dy, x.len())?;
    expect_len(OP, "dx", dx, x.len())?;
    expect_dtype(OP, "rstd", rstd, DType::F32)?;
    expect_len(OP, "rstd", rstd, rows)?;
    let wg = if width <= SHORT_ROW { 64 } else { WG };
    let key = kernel(b.context(), "rms_norm", "rms_norm_backward", dt, true, wg).flag("BACKWARD", true);
    let params = BackParams {
        rows: to_u32(OP, rows)?,
        width: to_u32(OP, width)?,
        eps,
        weight_bias: weight.bias(),
        accumulate: accumulate as u32,
        _pad: [0; 3],
    };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&params), &[x, w, dy, dx, rstd], grid)
}

/// The gradient with respect to the weight: `dw[j] (+)= Σ_rows dy·x·r` (f32 `[width]`), from the
/// `rstd` [`rms_norm_backward`] wrote. The same for both weight forms (d(w + 1)/dw = 1).
pub fn rms_norm_backward_weight(
    b: &mut Batch,
    x: &Tensor,
    dy: &Tensor,
    rstd: &Tensor,
    dw: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "rms_norm_backward_weight";
    let dt = float_dtype(b.context(), OP, &[x, dy])?;
    let (rows, width) = rows_and_width(OP, x)?;
    expect_len(OP, "dy", dy, x.len())?;
    expect_dtype(OP, "rstd", rstd, DType::F32)?;
    expect_len(OP, "rstd", rstd, rows)?;
    expect_dtype(OP, "dw", dw, DType::F32)?;
    expect_len(OP, "dw", dw, width)?;
    let key = kernel(b.context(), "rms_norm", "rms_norm_backward_weight", dt, false, WG)
        .flag("BACKWARD", true)
        .flag("WEIGHT_GRAD", true);
    let params =
        WeightParams { rows: to_u32(OP, rows)?, width: to_u32(OP, width)?, accumulate: accumulate as u32, _pad: 0 };
    let grid = elem_grid(b, width)?;
    b.dispatch(&key, bytemuck::bytes_of(&params), &[x, dy, rstd, dw], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v: Vec<KernelKey> = [64, WG]
        .into_iter()
        .flat_map(|wg| {
            let forward = KernelKey::new("rms_norm", "rms_norm_forward").define("WG", wg);
            let backward = KernelKey::new("rms_norm", "rms_norm_backward").define("WG", wg).flag("BACKWARD", true);
            let mut v = dtype_and_reduction_variants(forward, true);
            v.extend(dtype_and_reduction_variants(backward, true));
            v
        })
        .collect();
    let weight = KernelKey::new("rms_norm", "rms_norm_backward_weight")
        .define("WG", WG)
        .flag("BACKWARD", true)
        .flag("WEIGHT_GRAD", true);
    v.extend(dtype_and_reduction_variants(weight, false));
    v
}
