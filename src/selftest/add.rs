//! Checks of `ops::add` against `reference::add`.

use super::harness::{canary_intact, check_float, compare, inputs, poisoned, write_keeping_canary, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::add::{add_forward, add_inplace};
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0004);
    let mut out = Vec::new();
    // The last size needs more than 65535 workgroups: the 2-D grid path.
    for &n in &[1usize, 7, 1000, 65537, 65535 * 256 + 1000] {
        let a = inputs(&mut rng, n, -4.0, 4.0, dt);
        let c = inputs(&mut rng, n, -4.0, 4.0, dt);
        let at = Tensor::from_f32(ctx, &a, &[n], dt)?;
        let ct = Tensor::from_f32(ctx, &c, &[n], dt)?;
        let y = poisoned(ctx, &[n], dt)?;
        let mut b = Batch::new(ctx);
        add_forward(&mut b, &at, &ct, &y)?;
        b.submit();
        let want = reference::add(&a, &c);
        out.push(check_float(ctx, "add", format!("n={n}"), &y, &want).await?);
        if n <= 65537 {
            // In place: the residual stream `a += c`, with a canary past a's end.
            let acc = poisoned(ctx, &[n], dt)?;
            write_keeping_canary(ctx, &acc, &a)?;
            let mut b = Batch::new(ctx);
            add_inplace(&mut b, &acc, &ct)?;
            b.submit();
            let got = acc.read_f32(ctx).await?;
            let canary = canary_intact(ctx, &acc).await?;
            out.push(compare(ctx, "add", format!("n={n} in place"), dt, &got, &want, canary));
        }
    }
    Ok(out)
}
