//! Checks of `ops::optim` against `reference::optim` (AdamW as PyTorch computes it, f64) and
//! of the gradient statistics against an f64 sum, NaN/Inf counted exactly. The optimizer's
//! tensors are f32 on every path, so the f16 pass runs the same f32 kernels.

use super::harness::{check_float, exact, inputs, poisoned, write_keeping_canary, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::optim::{adamw_step, grad_sum_squares, sum_squares_slots, AdamW, GradStats};
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, _dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0C01);
    let mut out = Vec::new();
    let f32_ = DType::F32;
    for &n in &[1usize, 1000, 70001] {
        let opt = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let w0 = inputs(&mut rng, n, -1.0, 1.0, f32_);
        let w = poisoned(ctx, &[n], f32_)?;
        write_keeping_canary(ctx, &w, &w0)?;
        let (m, v) =
            (Tensor::from_f32(ctx, &vec![0.0; n], &[n], f32_)?, Tensor::from_f32(ctx, &vec![0.0; n], &[n], f32_)?);
        let mut want = (w0.iter().map(|&x| x as f64).collect::<Vec<_>>(), vec![0.0; n], vec![0.0; n]);
        // Five steps, the gradient scaled (clipping) on some.
        for step in 1..=5u64 {
            let g = inputs(&mut rng, n, -2.0, 2.0, f32_);
            let scale = if step % 2 == 0 { 0.7 } else { 1.0 };
            let gt = Tensor::from_f32(ctx, &g, &[n], f32_)?;
            let mut b = Batch::new(ctx);
            adamw_step(&mut b, &opt, step, &w, &gt, &m, &v, scale as f32)?;
            b.submit();
            reference::optim::adamw_step(&opt, step, &mut want.0, &mut want.1, &mut want.2, &g, scale);
        }
        out.push(check_float(ctx, "adamw", format!("weights after 5 steps, n={n}"), &w, &want.0).await?);
        out.push(check_float(ctx, "adamw", format!("first moment, n={n}"), &m, &want.1).await?);
        out.push(check_float(ctx, "adamw", format!("second moment, n={n}"), &v, &want.2).await?);
    }
    // Gradient statistics of several tensors into one partials buffer, with NaN/Inf planted.
    let sizes = [1usize, 5000, 300_001];
    let slots: usize = sizes.iter().map(|&n| sum_squares_slots(n)).sum();
    let partials = poisoned(ctx, &[slots, 2], f32_)?;
    let (mut ss, mut bad) = (0.0f64, 0u64);
    let mut tensors = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let mut g = inputs(&mut rng, n, -3.0, 3.0, f32_);
        if i == 2 {
            for (at, x) in [(7, f32::NAN), (150_000, f32::INFINITY), (300_000, f32::NEG_INFINITY)] {
                g[at] = x;
            }
        }
        for &x in &g {
            if x.is_finite() {
                ss += (x as f64).powi(2);
            } else {
                bad += 1;
            }
        }
        tensors.push(Tensor::from_f32(ctx, &g, &[n], f32_)?);
    }
    let mut b = Batch::new(ctx);
    let mut slot = 0;
    for t in &tensors {
        slot += grad_sum_squares(&mut b, t, &partials, slot)?;
    }
    b.submit();
    let stats = GradStats::from_partials(&partials.read_f32(ctx).await?);
    let canary = super::harness::canary_intact(ctx, &partials).await?;
    let norm = Tensor::from_f32(ctx, &[stats.norm as f32], &[1], f32_)?;
    out.push(check_float(ctx, "grad_norm", format!("global norm of {sizes:?}"), &norm, &[ss.sqrt()]).await?);
    out.push(exact(
        ctx,
        "grad_norm",
        "non-finite count (NaN, +Inf, -Inf)".into(),
        f32_,
        &[stats.nonfinite],
        &[bad],
        canary,
    ));
    Ok(out)
}
