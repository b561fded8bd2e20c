//! Checks of `ops::argmax` against `reference::argmax`, with ties, NaNs and infinities.

use super::harness::{canary_intact, exact, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::argmax::argmax_forward;
use crate::reference;
use crate::rng::SplitMix64;

/// Rows with random values, then doctored: a tie for the maximum (the later copy must
/// lose), NaNs (which must never win), -inf, and one all-NaN row.
pub(crate) fn doctored_rows(rng: &mut SplitMix64, rows: usize, width: usize, dt: DType) -> Vec<f32> {
    let mut x = inputs(rng, rows * width, -5.0, 5.0, dt);
    for (r, row) in x.chunks_mut(width).enumerate() {
        if width < 4 {
            continue;
        }
        match r % 4 {
            1 => {
                // Tie: copy the maximum to a random other position.
                let (imax, vmax) =
                    row.iter().copied().enumerate().fold((0, f32::MIN), |a, (i, v)| if v > a.1 { (i, v) } else { a });
                let j = (imax + 1 + rng.below(width as u32 - 1) as usize) % width;
                row[j] = vmax;
            }
            2 => {
                // NaNs everywhere a maximum might be, including a NaN at index 0, and -inf.
                row[0] = f32::NAN;
                for _ in 0..width / 8 + 1 {
                    let j = rng.below(width as u32) as usize;
                    row[j] = if rng.below(2) == 0 { f32::NAN } else { f32::NEG_INFINITY };
                }
            }
            3 if r == rows - 1 => row.fill(f32::NAN),
            _ => {}
        }
    }
    x
}

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0007);
    let mut out = Vec::new();
    for &(rows, width) in &[(1usize, 1usize), (4, 3), (4, 257), (8, 1000), (4, 49152), (1, 262145)] {
        let x = doctored_rows(&mut rng, rows, width, dt);
        let xt = Tensor::from_f32(ctx, &x, &[rows, width], dt)?;
        let o = poisoned(ctx, &[rows], DType::U32)?;
        let mut b = Batch::new(ctx);
        argmax_forward(&mut b, &xt, &o)?;
        b.submit();
        let got = o.read_u32(ctx).await?;
        let canary = canary_intact(ctx, &o).await?;
        let want = reference::argmax(&x, width);
        out.push(exact(ctx, "argmax", format!("{rows}x{width} ties/NaN/-inf"), dt, &got, &want, canary));
    }
    Ok(out)
}
