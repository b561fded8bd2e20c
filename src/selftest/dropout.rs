//! Checks of `ops::dropout` against `reference::dropout`: the masked, rescaled values (written
//! and accumulated), the kept fraction, and that the mask changes with the seed but not
//! between two runs with the same one.

use super::harness::{canary_intact, check_float, compare, exact, inputs, poisoned, write_keeping_canary, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::dropout::dropout_forward;
use crate::reference::dropout as rd;
use crate::rng::SplitMix64;

const OP: &str = "dropout";

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_D809);
    let mut out = Vec::new();
    // The last size needs more than 65535 workgroups: the 2-D grid path.
    for &(n, p) in &[(1usize, 0.5f32), (7, 0.1), (1000, 0.25), (65537, 0.5), (65535 * 256 + 1000, 0.05)] {
        let seed = rng.next_u64() as u32;
        let x = inputs(&mut rng, n, -4.0, 4.0, dt);
        let xt = Tensor::from_f32(ctx, &x, &[n], dt)?;
        let y = poisoned(ctx, &[n], dt)?;
        let mut b = Batch::new(ctx);
        dropout_forward(&mut b, &xt, &y, p, seed, false)?;
        b.submit();
        let want = rd::dropout(&x, None, p, seed);
        out.push(check_float(ctx, OP, format!("n={n} p={p}"), &y, &want).await?);
        if n <= 65537 {
            let acc = inputs(&mut rng, n, -4.0, 4.0, dt);
            let yt = poisoned(ctx, &[n], dt)?;
            write_keeping_canary(ctx, &yt, &acc)?;
            let mut b = Batch::new(ctx);
            dropout_forward(&mut b, &xt, &yt, p, seed, true)?;
            b.submit();
            let got = yt.read_f32(ctx).await?;
            let canary = canary_intact(ctx, &yt).await?;
            let want = rd::dropout(&x, Some(&acc), p, seed);
            out.push(compare(ctx, OP, format!("n={n} p={p} accumulate"), dt, &got, &want, canary));
        }
    }
    mask_cases(ctx, dt, &mut out).await?;
    Ok(out)
}

/// On ones: the kept fraction within 4σ of 1 − p, the same mask for the same seed, and a
/// different one (about half the elements differ at p = 0.5) for the next seed.
async fn mask_cases(ctx: &GpuContext, dt: DType, out: &mut Vec<CaseReport>) -> Result<()> {
    let n = 1usize << 16;
    let ones = Tensor::from_f32(ctx, &vec![1.0; n], &[n], dt)?;
    let run = |p: f32, seed: u32| kept_mask(ctx, &ones, p, seed);
    for p in [0.1f32, 0.5, 0.9] {
        let kept = run(p, 7).await?.iter().filter(|&&k| k).count() as f64;
        let (mean, sd) = (n as f64 * (1.0 - p as f64), (n as f64 * p as f64 * (1.0 - p as f64)).sqrt());
        let ok = (kept - mean).abs() <= 4.0 * sd;
        out.push(exact(
            ctx,
            OP,
            format!("p={p}: {kept} of {n} kept, expected {mean:.0} ± {:.0}", 4.0 * sd),
            dt,
            &[ok],
            &[true],
            true,
        ));
    }
    let (a, again, other) = (run(0.5, 11).await?, run(0.5, 11).await?, run(0.5, 12).await?);
    out.push(exact(ctx, OP, "same seed, same mask".into(), dt, &a, &again, true));
    let differ = a.iter().zip(&other).filter(|(x, y)| x != y).count() as f64 / n as f64;
    out.push(exact(
        ctx,
        OP,
        format!("next seed: {:.3} of the mask differs", differ),
        dt,
        &[(0.45..0.55).contains(&differ)],
        &[true],
        true,
    ));
    Ok(())
}

/// Which elements of `ones` survive dropout with `p` and `seed`.
async fn kept_mask(ctx: &GpuContext, ones: &Tensor, p: f32, seed: u32) -> Result<Vec<bool>> {
    let y = Tensor::empty(ctx, ones.shape(), ones.dtype())?;
    let mut b = Batch::new(ctx);
    dropout_forward(&mut b, ones, &y, p, seed, false)?;
    b.submit();
    Ok(y.read_f32(ctx).await?.iter().map(|&v| v != 0.0).collect())
}
