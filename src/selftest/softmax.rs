//! Checks of `ops::softmax` against `reference::softmax`.

use super::harness::{check_float, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::softmax::softmax_forward;
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0005);
    let mut out = Vec::new();
    let cases: &[(usize, usize, f32)] = &[(1, 1, 1.0), (3, 257, 1.0), (4, 255, 0.5), (2, 49152, 0.7), (1, 262147, 2.0)];
    for &(rows, width, temp) in cases {
        let x = inputs(&mut rng, rows * width, -10.0, 10.0, dt);
        let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
        let y = poisoned(ctx, &[rows, width], dt)?;
        let mut b = Batch::new(ctx);
        softmax_forward(&mut b, &xt, &y, temp)?;
        b.submit();
        let want = reference::softmax(&x, width, temp as f64);
        out.push(check_float(ctx, "softmax", format!("{rows}x{width} T={temp}"), &y, &want).await?);
    }
    Ok(out)
}
