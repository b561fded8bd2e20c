//! The GPU half of token sampling (the host half is [`crate::sampling`]).
//!
//! - [`sample_logits_forward`]: repetition penalty and temperature, out of place into an f32
//!   row (`shaders/sample_logits.wgsl`, two dispatches: scale every element, then re-write the
//!   penalised ids). Reference: `reference::sampling::process_logits`.
//! - [`sample_candidates_forward`]: per row the k largest values (a radix select: a fixed
//!   5–8 reads of the row whatever k, where `topk.wgsl` reads it k times) plus max, log-sum-exp
//!   and NaN/+inf/finite counts, packed into one u32 row of `2k + 4` words so the sampler reads
//!   back only that (`shaders/sample_candidates.wgsl`). Reference: `reference::topk` for the
//!   candidates, `reference::sampling::row_stats` for the statistics.

use bytemuck::{Pod, Zeroable};

use super::{
    dtype_and_reduction_variants, elem_grid, expect_dtype, expect_len, float_dtype, kernel, row_grid, rows_and_width,
    to_u32, WG,
};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

/// Largest k of [`sample_candidates_forward`] (its bitonic sort lives in workgroup memory).
pub const MAX_CANDIDATES: usize = 1024;
// The kernel gives each histogram bin (256) one invocation.
const _: () = assert!(WG == 256);
/// Rows up to 2^24 values: the tie cut walks three index bytes, and counts stay exact.
pub const MAX_WIDTH: usize = 1 << 24;
/// Words per row of the candidates output: indices, value bits, then the four statistics.
pub fn candidates_row_words(k: usize) -> usize {
    2 * k + 4
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LogitsParams {
    rows: u32,
    width: u32,
    n_pen: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CandidatesParams {
    rows: u32,
    width: u32,
    k: u32,
    kp: u32,
}

/// `y = x · factors[row].0`, then for each id in `penalized[row, :]` (ids ≥ width are padding)
/// `y[id] = x[id] · (x[id] > 0 ? factors[row].1 : factors[row].2)`.
/// `x` `[rows, width]` f32/f16, `factors` f32 `[rows, 4]`, `penalized` u32 `[rows, n]` (distinct
/// ids per row), `y` f32 `[rows, width]` in another buffer than `x`.
pub fn sample_logits_forward(
    b: &mut Batch,
    x: &Tensor,
    factors: &Tensor,
    penalized: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    const OP: &str = "sample_logits_forward";
    let dt = float_dtype(b.context(), OP, &[x])?;
    let (rows, width) = rows_and_width(OP, x)?;
    expect_dtype(OP, "factors", factors, DType::F32)?;
    expect_len(OP, "factors", factors, rows * 4)?;
    expect_dtype(OP, "output", y, DType::F32)?;
    expect_len(OP, "output", y, rows * width)?;
    if std::ptr::eq(x.buffer(), y.buffer()) {
        return Err(PupilError::arg(OP, "x and y share a buffer (the op is out of place)"));
    }
    let n_pen = match penalized {
        Some(pen) => {
            expect_dtype(OP, "penalized ids", pen, DType::U32)?;
            if pen.is_empty() || pen.len() % rows != 0 {
                return Err(PupilError::shape(OP, format!("penalized ids {:?} for {rows} rows", pen.shape())));
            }
            pen.len() / rows
        }
        None => 0,
    };
    let p = LogitsParams { rows: to_u32(OP, rows)?, width: to_u32(OP, width)?, n_pen: to_u32(OP, n_pen)? };
    to_u32(OP, rows * width)?;
    let key = kernel(b.context(), "sample_logits", "sample_scale_forward", dt, false, WG);
    let grid = elem_grid(b, rows * width)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[x, factors, y], grid)?;
    if let Some(pen) = penalized {
        let key = kernel(b.context(), "sample_logits", "sample_penalty_forward", dt, false, WG);
        let grid = elem_grid(b, pen.len())?;
        b.dispatch(&key, bytemuck::bytes_of(&p), &[x, factors, y, pen], grid)?;
    }
    Ok(())
}

/// Per row of `x` `[rows, width]` (f32/f16) into `out` u32 `[rows, 2k + 4]`:
/// words `0..k` the indices of the k largest values (descending, lowest index first among
/// equals, NaN never chosen, `u32::MAX` for missing slots), `k..2k` their values as f32 bits
/// (`f32::MIN` for missing slots), then the finite values' max and log-sum-exp (f32 bits), the
/// number of NaN and +inf values, and the number of finite values.
pub fn sample_candidates_forward(b: &mut Batch, x: &Tensor, k: usize, out: &Tensor) -> Result<()> {
    const OP: &str = "sample_candidates_forward";
    let dt = float_dtype(b.context(), OP, &[x])?;
    let (rows, width) = rows_and_width(OP, x)?;
    if k == 0 || k > MAX_CANDIDATES {
        return Err(PupilError::arg(OP, format!("k = {k} must be in 1..={MAX_CANDIDATES}")));
    }
    if width > MAX_WIDTH {
        return Err(PupilError::shape(OP, format!("rows of {width} values; at most {MAX_WIDTH}")));
    }
    expect_dtype(OP, "output", out, DType::U32)?;
    expect_len(OP, "output", out, rows * candidates_row_words(k))?;
    to_u32(OP, rows * width)?;
    let key = kernel(b.context(), "sample_candidates", "sample_candidates_forward", dt, true, WG);
    let p = CandidatesParams {
        rows: to_u32(OP, rows)?,
        width: to_u32(OP, width)?,
        k: to_u32(OP, k)?,
        kp: to_u32(OP, k.next_power_of_two())?,
    };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[x, out], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for entry in ["sample_scale_forward", "sample_penalty_forward"] {
        v.extend(dtype_and_reduction_variants(KernelKey::new("sample_logits", entry).define("WG", WG), false));
    }
    v.extend(dtype_and_reduction_variants(
        KernelKey::new("sample_candidates", "sample_candidates_forward").define("WG", WG),
        true,
    ));
    v
}
