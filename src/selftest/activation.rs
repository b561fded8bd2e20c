//! Checks of `ops::activation` against `reference::activation`.

use super::harness::{check_float, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::activation::{activation_forward, gated_activation_forward, gated_activation_fused_forward};
use crate::ops::Activation;
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0003);
    let mut out = Vec::new();
    for act in Activation::ALL {
        for &(rows, width) in &[(1usize, 1usize), (3, 1000), (1, 65537)] {
            let x = inputs(&mut rng, rows * width, -8.0, 8.0, dt);
            let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
            let y = poisoned(ctx, &[rows, width], dt)?;
            let mut b = Batch::new(ctx);
            activation_forward(&mut b, act, &xt, &y)?;
            b.submit();
            let want = reference::activation(act, &x);
            out.push(check_float(ctx, "activation", format!("{act:?} {rows}x{width}"), &y, &want).await?);
        }
        // Separate gate and up tensors.
        let (rows, width) = (2, 1536);
        let g = inputs(&mut rng, rows * width, -8.0, 8.0, dt);
        let u = inputs(&mut rng, rows * width, -2.0, 2.0, dt);
        let gt = Tensor::from_f32(ctx, &g, &[rows, width], dt)?;
        let ut = Tensor::from_f32(ctx, &u, &[rows, width], dt)?;
        let y = poisoned(ctx, &[rows, width], dt)?;
        let mut b = Batch::new(ctx);
        gated_activation_forward(&mut b, act, &gt, &ut, &y)?;
        b.submit();
        let want = reference::gated_activation(act, &g, &u);
        out.push(check_float(ctx, "activation", format!("{act:?} gated {rows}x{width}"), &y, &want).await?);
        // One fused [rows, 2w] gate|up tensor.
        let (rows, width) = (3, 999);
        let gu = inputs(&mut rng, rows * 2 * width, -8.0, 8.0, dt);
        let gut = Tensor::from_f32(ctx, &gu, &[rows, 2 * width], dt)?;
        let y = poisoned(ctx, &[rows, width], dt)?;
        let mut b = Batch::new(ctx);
        gated_activation_fused_forward(&mut b, act, &gut, &y)?;
        b.submit();
        let (g, u): (Vec<f32>, Vec<f32>) = gu.chunks(2 * width).fold((vec![], vec![]), |(mut g, mut u), row| {
            g.extend_from_slice(&row[..width]);
            u.extend_from_slice(&row[width..]);
            (g, u)
        });
        let want = reference::gated_activation(act, &g, &u);
        out.push(check_float(ctx, "activation", format!("{act:?} fused gate|up {rows}x{width}"), &y, &want).await?);
    }
    Ok(out)
}
