//! Kernel checks: every op against its CPU reference on random non-zero inputs and edge
//! shapes, outputs poisoned with NaN before the run and a canary region past each output
//! that must survive. The same checks run in the native test suite (every f16/subgroup
//! combination on one machine), in `pupil selftest`, and in headless Chromium.
//!
//! Tolerances (stated once, here):
//! - f32 path: ‖out−ref‖/‖ref‖ ≤ 1e-5 and max|out−ref| ≤ 1e-4·max|ref|;
//! - f16 path (f16 storage, f32 arithmetic): both ≤ 2e-3, against a reference computed
//!   from the same f16-rounded inputs and rounded to f16 itself (the best an f16 output can
//!   hold: a true value below f16's smallest subnormal can only be stored as 0);
//! - index outputs (argmax, top-k) must match exactly.

mod activation;
mod add;
mod argmax;
mod attention;
mod backward;
mod dropout;
mod embedding;
mod gate;
mod harness;
mod matmul;
mod matmul_dense;
mod optim;
mod rms_norm;
mod rope;
mod sampling;
mod softmax;
mod topk;

pub use harness::{CaseReport, Tolerance};
pub use sampling::{chi_square, dense, draw_counts, Chi2, CHI2_ALPHA, CHI2_DRAWS};

use crate::error::Result;
use crate::gpu::{DType, GpuContext};

/// The kernel families, in the order they are checked.
pub const FAMILIES: &[&str] = &[
    "rms_norm",
    "rope",
    "activation",
    "add",
    "softmax",
    "embedding",
    "argmax",
    "topk",
    "matmul",
    "attention",
    "gate",
    "sampling",
    "matmul_dense",
    "backward",
    "optim",
    "dropout",
];

/// Run one family's cases with `dtype` storage (F32, or F16 if the device has it).
pub async fn run_family(ctx: &GpuContext, family: &str, dtype: DType) -> Result<Vec<CaseReport>> {
    match family {
        "rms_norm" => rms_norm::check(ctx, dtype).await,
        "rope" => rope::check(ctx, dtype).await,
        "activation" => activation::check(ctx, dtype).await,
        "add" => add::check(ctx, dtype).await,
        "softmax" => softmax::check(ctx, dtype).await,
        "embedding" => embedding::check(ctx, dtype).await,
        "argmax" => argmax::check(ctx, dtype).await,
        "topk" => topk::check(ctx, dtype).await,
        "matmul" => matmul::check(ctx, dtype).await,
        "attention" => attention::check(ctx, dtype).await,
        "gate" => gate::check(ctx, dtype).await,
        "sampling" => sampling::check(ctx, dtype).await,
        "matmul_dense" => matmul_dense::check(ctx, dtype).await,
        "backward" => backward::check(ctx, dtype).await,
        "optim" => optim::check(ctx, dtype).await,
        "dropout" => dropout::check(ctx, dtype).await,
        other => Err(crate::PupilError::arg("selftest", format!("unknown kernel family {other}"))),
    }
}

/// `families` on the f32 path, then on the f16 path when the device has it (the CLI, the
/// browser page and `run_all` all go through here).
pub async fn run_families(ctx: &GpuContext, families: &[&str]) -> Result<Vec<CaseReport>> {
    let mut dtypes = vec![DType::F32];
    if ctx.caps.f16 {
        dtypes.push(DType::F16);
    }
    let mut out = Vec::new();
    for dt in dtypes {
        for fam in families {
            out.extend(run_family(ctx, fam, dt).await?);
        }
    }
    Ok(out)
}

/// Every family (see [`run_families`]).
pub async fn run_all(ctx: &GpuContext) -> Result<Vec<CaseReport>> {
    run_families(ctx, FAMILIES).await
}
