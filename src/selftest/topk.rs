//! Checks of `ops::topk` against `reference::topk`.

use super::argmax::doctored_rows;
use super::harness::{canary_intact, exact, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::topk::topk_forward;
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0008);
    let mut out = Vec::new();
    // The 4x10 k=10 case has a row of NaNs and a row with NaNs: slots left unfilled.
    for &(rows, width, k) in &[(1usize, 1usize, 1usize), (4, 10, 10), (3, 257, 5), (4, 1000, 64), (2, 49152, 40)] {
        let x = doctored_rows(&mut rng, rows, width, dt);
        let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
        let oi = poisoned(ctx, &[rows, k], DType::U32)?;
        let ov = poisoned(ctx, &[rows, k], DType::F32)?;
        let mut b = Batch::new(ctx);
        topk_forward(&mut b, &xt, k, &oi, &ov)?;
        b.submit();
        let idx = oi.read_u32(ctx).await?;
        let val = ov.read_f32(ctx).await?;
        let canary = canary_intact(ctx, &oi).await? && canary_intact(ctx, &ov).await?;
        // Compare values by bits: exact selection, and NaN-free by construction.
        let got: Vec<(u32, u32)> = idx.iter().zip(&val).map(|(&i, &v)| (i, v.to_bits())).collect();
        let want: Vec<(u32, u32)> = reference::topk(&x, width, k).into_iter().map(|(i, v)| (i, v.to_bits())).collect();
        out.push(exact(ctx, "topk", format!("{rows}x{width} k={k} ties/NaN/-inf"), dt, &got, &want, canary));
    }
    Ok(out)
}
