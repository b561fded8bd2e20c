//! Checks of `ops::rms_norm` against `reference::rms_norm`.

use super::harness::{check_float, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::rms_norm::rms_norm_forward;
use crate::ops::NormWeight;
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use NormWeight::*;
    let cases: &[(usize, usize, NormWeight, &str)] = &[
        (1, 1, Plain, "1x1"),
        (1, 7, OnePlus, "odd width"),
        (3, 255, Plain, "WG-1"),
        (5, 257, OnePlus, "WG+1"),
        (2, 576, Plain, "SmolLM2 hidden"),
        (2, 32771, Plain, "32k+ row"),
        (576, 64, Plain, "QK-norm 64 heads x 9"),
        (7, 256, OnePlus, "QK-norm head_dim 256 (Gemma)"),
        (4, 129, Plain, "odd short"),
    ];
    let mut rng = SplitMix64::new(0x5EED_0001);
    let mut out = Vec::new();
    for &(rows, width, weight, what) in cases {
        let x = inputs(&mut rng, rows * width, -3.0, 3.0, dt);
        let w = inputs(&mut rng, width, -1.5, 1.5, dt);
        let eps = 1e-5;
        let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
        let wt = Tensor::from_f32(ctx, &w, &[width], dt)?;
        let y = poisoned(ctx, &[rows, width], dt)?;
        let mut b = Batch::new(ctx);
        rms_norm_forward(&mut b, &xt, &wt, &y, eps, weight)?;
        b.submit();
        let want = reference::rms_norm(&x, &w, eps as f64, weight.bias() as f64);
        out.push(check_float(ctx, "rms_norm", format!("{rows}x{width} {weight:?} ({what})"), &y, &want).await?);
    }
    Ok(out)
}
