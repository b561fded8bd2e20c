//! Checks of the backward kernels against their references (`reference::rms_norm`,
//! `reference::activation`, `reference::cross_entropy`), whose analytic gradients are
//! themselves checked against finite differences (`reference::finite_difference`, unit tests).
//! Same inputs, poisoning, canaries and tolerances as the forward checks; f32 gradient outputs
//! (weights' gradients) take the f32 tolerance on both paths.

use super::harness::{
    canary_intact, check_float, compare_within, inputs, poisoned, write_keeping_canary, CaseReport, Tolerance,
};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::activation::{gated_activation_backward, gated_activation_fused_backward};
use crate::ops::attention::AttentionConfig;
use crate::ops::attention_backward::{attention_backward, attention_backward_stats, doc_bounds};
use crate::ops::cross_entropy::{cross_entropy_forward_backward, IGNORE_TARGET};
use crate::ops::rms_norm::{rms_norm_backward, rms_norm_backward_weight};
use crate::ops::rope::{rope_backward, RopeInput};
use crate::ops::{Activation, NormWeight, RopeConfig, RopeLayout, RopeTable};
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut out = rms_norm(ctx, dt).await?;
    out.extend(gated(ctx, dt).await?);
    out.extend(rope(ctx, dt).await?);
    out.extend(attention(ctx, dt).await?);
    out.extend(gate(ctx, dt).await?);
    out.extend(cross_entropy(ctx, dt).await?);
    out.extend(distill_loss(ctx, dt).await?);
    out.extend(distill_topk(ctx, dt).await?);
    out.extend(hidden_mse(ctx, dt).await?);
    Ok(out)
}

async fn rms_norm(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use NormWeight::*;
    let cases: &[(usize, usize, NormWeight, bool, &str)] = &[
        // Not width 1: there y = sign(x)·w and dx = r·g·eps/(x² + eps) is all cancellation, an
        // f32 kernel cannot meet 1e-5 on it (nor needs to: no model normalises one value).
        (1, 3, Plain, false, "1 row, odd width"),
        (3, 257, OnePlus, false, "WG+1, Gemma"),
        (2, 576, Plain, true, "SmolLM2 hidden, dx +="),
        (36, 64, Plain, true, "QK-norm 4 tokens x 9 heads, dx +="),
        (5, 4099, OnePlus, false, "long odd row"),
    ];
    let mut rng = SplitMix64::new(0x5EED_0B01);
    let mut out = Vec::new();
    for &(rows, width, weight, accumulate, what) in cases {
        let x = inputs(&mut rng, rows * width, -3.0, 3.0, dt);
        let w = inputs(&mut rng, width, -1.5, 1.5, dt);
        let dy = inputs(&mut rng, rows * width, -1.0, 1.0, dt);
        let eps = 1e-5;
        let (mut want_dx, mut want_dw) = reference::rms_norm::rms_norm_backward(&x, &w, &dy, eps, weight.bias() as f64);
        let t = |v: &[f32], shape: &[usize]| Tensor::from_f32(ctx, v, shape, dt);
        let (xt, wt, dyt) = (t(&x, &[rows, width])?, t(&w, &[width])?, t(&dy, &[rows, width])?);
        let dx = poisoned(ctx, &[rows, width], dt)?;
        let rstd = poisoned(ctx, &[rows], DType::F32)?;
        let dw = poisoned(ctx, &[width], DType::F32)?;
        if accumulate {
            // Gradients already there (the residual stream's; an earlier micro-batch's dw).
            let prior = inputs(&mut rng, rows * width, -1.0, 1.0, dt);
            write_keeping_canary(ctx, &dx, &prior)?;
            want_dx.iter_mut().zip(&prior).for_each(|(d, &p)| *d += p as f64);
            let prior_dw = inputs(&mut rng, width, -1.0, 1.0, DType::F32);
            write_keeping_canary(ctx, &dw, &prior_dw)?;
            want_dw.iter_mut().zip(&prior_dw).for_each(|(d, &p)| *d += p as f64);
        }
        let mut b = Batch::new(ctx);
        rms_norm_backward(&mut b, &xt, &wt, &dyt, &dx, &rstd, eps as f32, weight, accumulate)?;
        rms_norm_backward_weight(&mut b, &xt, &dyt, &rstd, &dw, accumulate)?;
        b.submit();
        let case = |s: &str| format!("{s} {rows}x{width} {weight:?} ({what})");
        out.push(check_float(ctx, "rms_norm_backward", case("dx"), &dx, &want_dx).await?);
        let want_rstd: Vec<f64> = x
            .chunks(width)
            .map(|r| 1.0 / (r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / width as f64 + eps).sqrt())
            .collect();
        out.push(check_float(ctx, "rms_norm_backward", case("rstd"), &rstd, &want_rstd).await?);
        out.push(check_float(ctx, "rms_norm_backward", case("dw"), &dw, &want_dw).await?);
    }
    Ok(out)
}

async fn gated(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0B02);
    let mut out = Vec::new();
    for act in Activation::ALL {
        // One fused [rows, 2w] gate|up in, one fused gradient out.
        let (rows, width) = (3, 999);
        let gu = inputs(&mut rng, rows * 2 * width, -8.0, 8.0, dt);
        let dy = inputs(&mut rng, rows * width, -1.0, 1.0, dt);
        let (g, u): (Vec<f32>, Vec<f32>) = gu.chunks(2 * width).fold((vec![], vec![]), |(mut g, mut u), row| {
            g.extend_from_slice(&row[..width]);
            u.extend_from_slice(&row[width..]);
            (g, u)
        });
        let (dg, du) = reference::activation::gated_activation_backward(act, &g, &u, &dy);
        let want: Vec<f64> = (0..rows)
            .flat_map(|r| dg[r * width..(r + 1) * width].iter().chain(&du[r * width..(r + 1) * width]))
            .copied()
            .collect();
        let gut = Tensor::from_f32(ctx, &gu, &[rows, 2 * width], dt)?;
        let dyt = Tensor::from_f32(ctx, &dy, &[rows, width], dt)?;
        let dgu = poisoned(ctx, &[rows, 2 * width], dt)?;
        let mut b = Batch::new(ctx);
        gated_activation_fused_backward(&mut b, act, &gut, &dyt, &dgu)?;
        b.submit();
        out.push(check_float(ctx, "activation_backward", format!("{act:?} fused {rows}x{width}"), &dgu, &want).await?);
        // Separate gate and up in, [2, rows, w] out.
        let (rows, width) = (2, 1536);
        let g = inputs(&mut rng, rows * width, -8.0, 8.0, dt);
        let u = inputs(&mut rng, rows * width, -2.0, 2.0, dt);
        let dy = inputs(&mut rng, rows * width, -1.0, 1.0, dt);
        let (dg, du) = reference::activation::gated_activation_backward(act, &g, &u, &dy);
        let want: Vec<f64> = dg.into_iter().chain(du).collect();
        let t = |v: &[f32]| Tensor::from_f32(ctx, v, &[rows, width], dt);
        let (gt, ut, dyt) = (t(&g)?, t(&u)?, t(&dy)?);
        let dgu = poisoned(ctx, &[2, rows, width], dt)?;
        let mut b = Batch::new(ctx);
        gated_activation_backward(&mut b, act, &gt, &ut, &dyt, &dgu)?;
        b.submit();
        out.push(check_float(ctx, "activation_backward", format!("{act:?} apart {rows}x{width}"), &dgu, &want).await?);
    }
    Ok(out)
}

async fn cross_entropy(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0B03);
    let mut out = Vec::new();
    // (rows, vocab, targets: None = random, Some(i) = row i ignored)
    let cases: &[(usize, usize, Option<usize>, &str)] = &[
        (1, 7, None, "one row"),
        (3, 1000, Some(1), "odd vocab, one row ignored"),
        (4, 49152, Some(3), "SmolLM2 vocab"),
        (2, 262144, None, "Gemma 3 vocab"),
    ];
    for &(rows, vocab, ignored, what) in cases {
        let logits = inputs(&mut rng, rows * vocab, -8.0, 8.0, dt);
        let targets: Vec<u32> = (0..rows)
            .map(|r| if Some(r) == ignored { IGNORE_TARGET } else { (rng.next_u64() % vocab as u64) as u32 })
            .collect();
        let counted = targets.iter().filter(|&&t| t != IGNORE_TARGET).count();
        let scale = 1.0 / counted as f32;
        let (want_loss, want_grad) = reference::cross_entropy::cross_entropy(&logits, vocab, &targets, scale as f64);
        let lt = poisoned(ctx, &[rows, vocab], dt)?;
        write_keeping_canary(ctx, &lt, &logits)?;
        let tt = Tensor::from_u32(ctx, &targets, &[rows])?;
        let loss = poisoned(ctx, &[rows], DType::F32)?;
        let mut b = Batch::new(ctx);
        cross_entropy_forward_backward(&mut b, &lt, &tt, &loss, scale)?;
        b.submit();
        let case = |s: &str| format!("{s} {rows}x{vocab} ({what})");
        out.push(check_float(ctx, "cross_entropy", case("loss"), &loss, &want_loss).await?);
        out.push(check_float(ctx, "cross_entropy", case("dlogits"), &lt, &want_grad).await?);
    }
    Ok(out)
}

/// The distillation loss (both divergences, τ ≠ 1, with and without the CE term, ignored rows)
/// against `reference::distill_loss`: per-row loss and KL, and the student's logit gradient.
async fn distill_loss(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use crate::ops::distill_loss::{distill_loss_forward_backward, DistillLoss, Divergence};
    let mut rng = SplitMix64::new(0x5EED_0B0D);
    let mut out = Vec::new();
    // (rows, vocab, ignored row, τ, α, divergence, what)
    type Case = (usize, usize, Option<usize>, f32, f32, Divergence, &'static str);
    let cases: &[Case] = &[
        (1, 7, None, 1.0, 0.5, Divergence::Forward, "one row"),
        (3, 1000, Some(1), 2.0, 0.1, Divergence::Forward, "odd vocab, one row ignored"),
        (2, 1000, None, 2.0, 0.0, Divergence::Reverse, "reverse KL, no CE"),
        (4, 49152, Some(3), 4.0, 0.5, Divergence::Forward, "SmolLM2 vocab"),
        (2, 262144, None, 1.5, 0.2, Divergence::Reverse, "Gemma 3 vocab, reverse"),
        (3, 1000, Some(0), 2.0, 0.1, Divergence::Jsd { beta: 0.5 }, "symmetric JSD"),
        (2, 1000, None, 1.0, 0.0, Divergence::Jsd { beta: 0.1 }, "JSD β 0.1, no CE"),
        (2, 49152, None, 1.0, 0.3, Divergence::Jsd { beta: 0.9 }, "JSD β 0.9, SmolLM2 vocab"),
    ];
    for &(rows, vocab, ignored, tau, alpha, divergence, what) in cases {
        let student = inputs(&mut rng, rows * vocab, -8.0, 8.0, dt);
        let teacher = inputs(&mut rng, rows * vocab, -8.0, 8.0, dt);
        let targets: Vec<u32> = (0..rows)
            .map(|r| if Some(r) == ignored { IGNORE_TARGET } else { (rng.next_u64() % vocab as u64) as u32 })
            .collect();
        let cfg = DistillLoss { divergence, ..DistillLoss::hinton(tau, alpha) };
        let scale = 1.0 / rows as f32;
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (want_loss, want_kl, want_grad) = reference::distill_loss::distill_loss(
            &f64s(&student),
            &f64s(&teacher),
            vocab,
            &targets,
            (tau as f64, cfg.kl_coef as f64, alpha as f64),
            match divergence {
                Divergence::Forward => reference::distill_loss::Div::Forward,
                Divergence::Reverse => reference::distill_loss::Div::Reverse,
                Divergence::Jsd { beta } => reference::distill_loss::Div::Jsd(beta as f64),
            },
            scale as f64,
        );
        let st = poisoned(ctx, &[rows, vocab], dt)?;
        write_keeping_canary(ctx, &st, &student)?;
        let tt = Tensor::from_f32(ctx, &teacher, &[rows, vocab], dt)?;
        let targets_t = Tensor::from_u32(ctx, &targets, &[rows])?;
        let (loss, kl) = (poisoned(ctx, &[rows], DType::F32)?, poisoned(ctx, &[rows], DType::F32)?);
        let mut b = Batch::new(ctx);
        distill_loss_forward_backward(&mut b, &cfg, &st, &tt, &targets_t, (&loss, &kl), scale)?;
        b.submit();
        let case = |s: &str| format!("{s} {rows}x{vocab} τ={tau} α={alpha} {divergence:?} ({what})");
        out.push(check_float(ctx, "distill_loss", case("loss"), &loss, &want_loss).await?);
        out.push(check_float(ctx, "distill_loss", case("kl"), &kl, &want_kl).await?);
        out.push(check_float(ctx, "distill_loss", case("dlogits"), &st, &want_grad).await?);
    }
    Ok(out)
}

/// The offline teacher's loss (top-k log-probabilities, one tail bucket) against
/// `reference::distill_topk`: k from 1 to the kernel's most, k = vocab (no tail), τ ≠ 1, an
/// ignored row; the teacher's ids are its k most likely of random logits, in that order.
async fn distill_topk(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use crate::ops::distill_loss::{distill_topk_forward_backward, DistillLoss, Divergence, MAX_TOP_K};
    use crate::reference::distill_loss::Div;
    let mut rng = SplitMix64::new(0x70_9C);
    let mut out = Vec::new();
    // (rows, vocab, k, ignored row, τ, α, divergence, what)
    type Case = (usize, usize, usize, Option<usize>, f32, f32, Divergence, &'static str);
    let (fwd, rev, jsd) = (Divergence::Forward, Divergence::Reverse, Divergence::Jsd { beta: 0.5 });
    let cases: &[Case] = &[
        (1, 7, 1, None, 1.0, 0.5, fwd, "one row, k 1"),
        (3, 1000, 16, Some(1), 2.0, 0.1, fwd, "odd vocab, one row ignored"),
        (2, 50, 50, None, 1.0, 0.0, fwd, "k = vocab: no tail"),
        (4, 49152, MAX_TOP_K, Some(0), 1.0, 0.5, fwd, "SmolLM2 vocab, the most k"),
        (2, 262144, 8, None, 1.5, 0.2, fwd, "Gemma 3 vocab"),
        (3, 1000, 16, Some(2), 2.0, 0.1, rev, "reverse KL"),
        (2, 50, 50, None, 1.0, 0.0, rev, "reverse, k = vocab"),
        (2, 49152, 32, None, 1.0, 0.3, rev, "reverse, SmolLM2 vocab"),
        (3, 1000, 16, Some(0), 2.0, 0.1, jsd, "JSD"),
        (2, 49152, 32, None, 1.0, 0.0, Divergence::Jsd { beta: 0.2 }, "JSD β 0.2, SmolLM2 vocab"),
    ];
    for &(rows, vocab, k, ignored, tau, alpha, divergence, what) in cases {
        let student = inputs(&mut rng, rows * vocab, -8.0, 8.0, dt);
        let teacher = inputs(&mut rng, rows * vocab, -8.0, 8.0, DType::F32);
        let (mut top_ids, mut top_logp) = (Vec::new(), Vec::new());
        for z in teacher.chunks(vocab) {
            let scaled: Vec<f64> = z.iter().map(|&x| x as f64 / tau as f64).collect();
            let m = scaled.iter().fold(f64::MIN, |a, &b| a.max(b));
            let lse = m + scaled.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
            top_ids.extend(order[..k].iter().map(|&i| i as u32));
            top_logp.extend(order[..k].iter().map(|&i| (scaled[i] - lse) as f32));
        }
        let targets: Vec<u32> = (0..rows)
            .map(|r| if Some(r) == ignored { IGNORE_TARGET } else { (rng.next_u64() % vocab as u64) as u32 })
            .collect();
        let cfg = DistillLoss { divergence, ..DistillLoss::hinton(tau, alpha) };
        let scale = 1.0 / rows as f32;
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (want_loss, want_kl, want_grad) = reference::distill_topk::distill_topk(
            &f64s(&student),
            vocab,
            (&top_ids, &f64s(&top_logp), k),
            &targets,
            (tau as f64, cfg.kl_coef as f64, alpha as f64),
            match divergence {
                Divergence::Forward => Div::Forward,
                Divergence::Reverse => Div::Reverse,
                Divergence::Jsd { beta } => Div::Jsd(beta as f64),
            },
            scale as f64,
        );
        let st = poisoned(ctx, &[rows, vocab], dt)?;
        write_keeping_canary(ctx, &st, &student)?;
        let ids_t = Tensor::from_u32(ctx, &top_ids, &[rows, k])?;
        let logp_t = Tensor::from_f32(ctx, &top_logp, &[rows, k], DType::F32)?;
        let targets_t = Tensor::from_u32(ctx, &targets, &[rows])?;
        let (loss, kl) = (poisoned(ctx, &[rows], DType::F32)?, poisoned(ctx, &[rows], DType::F32)?);
        let mut b = Batch::new(ctx);
        distill_topk_forward_backward(&mut b, &cfg, &st, (&ids_t, &logp_t), &targets_t, (&loss, &kl), scale)?;
        b.submit();
        let case = |s: &str| format!("{s} {rows}x{vocab} k={k} τ={tau} α={alpha} {divergence} ({what})");
        // The KL is the difference of O(1) terms (the k ids' cross term and the tail bucket's)
        // in f32: its error is ~1e-7 absolute however small it is, so 1e-4 relative here; and
        // for the loss when it is only the KL (α = 0).
        let kl_tol = Tolerance { rel: 1e-4, max_abs_frac: 1e-4 };
        let loss_tol = if alpha == 0.0 { kl_tol } else { Tolerance::of(DType::F32) };
        for (what, t, want, tol) in [("loss", &loss, &want_loss, loss_tol), ("kl", &kl, &want_kl, kl_tol)] {
            let (got, canary) = (t.read_f32(ctx).await?, canary_intact(ctx, t).await?);
            out.push(compare_within(ctx, "distill_topk", case(what), DType::F32, &got, want, canary, tol));
        }
        out.push(check_float(ctx, "distill_topk", case("dlogits"), &st, &want_grad).await?);
    }
    Ok(out)
}

/// Hidden-state alignment against `reference::hidden_mse`: the per-row loss accumulated onto
/// what the buffer holds, and the gradient added into a poisoned-then-written one.
async fn hidden_mse(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use crate::ops::hidden_mse::hidden_mse_forward_backward;
    let mut rng = SplitMix64::new(0x41_1C4E);
    let mut out = Vec::new();
    for &(rows, width, weight, what) in
        &[(1, 7, 1.0, "one row"), (5, 64, 0.3, "odd rows"), (37, 576, 2.0, "SmolLM2 width"), (3, 2049, 0.5, "odd wide")]
    {
        let s = inputs(&mut rng, rows * width, -4.0, 4.0, dt);
        let t = inputs(&mut rng, rows * width, -4.0, 4.0, dt);
        let g0 = inputs(&mut rng, rows * width, -1.0, 1.0, dt);
        let l0 = inputs(&mut rng, rows, 0.0, 1.0, DType::F32);
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let scale = 1.0 / rows as f32;
        let (want_loss, want_grad) =
            reference::hidden_mse::hidden_mse(&f64s(&s), &f64s(&t), width, weight as f64, scale as f64);
        let want_loss: Vec<f64> = want_loss.iter().zip(&l0).map(|(a, &b)| a + b as f64).collect();
        let want_grad: Vec<f64> = want_grad.iter().zip(&g0).map(|(a, &b)| a + b as f64).collect();
        let st = Tensor::from_f32(ctx, &s, &[rows, width], dt)?;
        let tt = Tensor::from_f32(ctx, &t, &[rows, width], dt)?;
        let grad = poisoned(ctx, &[rows, width], dt)?;
        write_keeping_canary(ctx, &grad, &g0)?;
        let loss = poisoned(ctx, &[rows], DType::F32)?;
        write_keeping_canary(ctx, &loss, &l0)?;
        let mut b = Batch::new(ctx);
        hidden_mse_forward_backward(&mut b, &st, &tt, &loss, Some(&grad), weight, scale)?;
        b.submit();
        let case = |x: &str| format!("{x} {rows}x{width} weight {weight} ({what})");
        out.push(check_float(ctx, "hidden_mse", case("loss"), &loss, &want_loss).await?);
        out.push(check_float(ctx, "hidden_mse", case("grad"), &grad, &want_grad).await?);
        // Without the gradient: the loss alone (evaluation).
        let loss = poisoned(ctx, &[rows], DType::F32)?;
        write_keeping_canary(ctx, &loss, &l0)?;
        let mut b = Batch::new(ctx);
        hidden_mse_forward_backward(&mut b, &st, &tt, &loss, None, weight, scale)?;
        b.submit();
        out.push(check_float(ctx, "hidden_mse", case("loss, no gradient"), &loss, &want_loss).await?);
    }
    Ok(out)
}

/// RoPE's transpose into strided outputs: the Q and K columns of a fused Q|K gradient row, the
/// elements outside them left as they were.
async fn rope(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0B04);
    let mut out = Vec::new();
    // (layout, heads, kv heads, head_dim, n_rot, tokens)
    let cases = [
        (RopeLayout::Normal, 9, 3, 64, 64, 5),
        (RopeLayout::NeoX, 4, 2, 64, 16, 3),
        (RopeLayout::NeoX, 2, 1, 256, 256, 1),
    ];
    for (layout, heads, kv_heads, head_dim, n_rot, tokens) in cases {
        let mut cfg = RopeConfig::new(n_rot, 100000.0, layout);
        cfg.freq_scale = 0.25;
        let table = RopeTable::new(ctx, cfg.clone(), 2048)?;
        let positions: Vec<u32> = (0..tokens).map(|t| ((t * 397 + 11) % 2048) as u32).collect();
        let pt = Tensor::from_u32(ctx, &positions, &[tokens])?;
        let (qd, kd) = (heads * head_dim, kv_heads * head_dim);
        let stride = qd + kd;
        let prior = inputs(&mut rng, tokens * stride, -1.0, 1.0, dt);
        let dqk = poisoned(ctx, &[tokens, stride], dt)?;
        write_keeping_canary(ctx, &dqk, &prior)?;
        let dq = inputs(&mut rng, tokens * qd, -1.0, 1.0, dt);
        let dk = inputs(&mut rng, tokens * kd, -1.0, 1.0, dt);
        let mut want: Vec<f64> = prior.iter().map(|&v| v as f64).collect();
        for (g, h, offset) in [(&dq, heads, 0), (&dk, kv_heads, qd)] {
            let r = reference::rope::rope_backward(g, &positions, &cfg, h, head_dim, stride, offset);
            for t in 0..tokens {
                let at = t * stride + offset;
                want[at..at + h * head_dim].copy_from_slice(&r[at..at + h * head_dim]);
            }
        }
        let (dqt, dkt) = (
            Tensor::from_f32(ctx, &dq, &[tokens, heads, head_dim], dt)?,
            Tensor::from_f32(ctx, &dk, &[tokens, kv_heads, head_dim], dt)?,
        );
        let mut b = Batch::new(ctx);
        let q_out = RopeInput { tokens, heads, head_dim, stride, offset: 0 };
        let k_out = RopeInput { tokens, heads: kv_heads, head_dim, stride, offset: qd };
        rope_backward(&mut b, &dqt, &pt, &table, q_out, &dqk)?;
        rope_backward(&mut b, &dkt, &pt, &table, k_out, &dqk)?;
        b.submit();
        let case =
            format!("{layout:?} {tokens} tokens, {heads}+{kv_heads} heads x {head_dim}, n_rot {n_rot}, into Q|K rows");
        out.push(check_float(ctx, "rope_backward", case, &dqk, &want).await?);
    }
    Ok(out)
}

/// Attention's two-pass backward against the f64 chain rule, from the reference forward's
/// output and log-sum-exp: GQA, head sizes 64/128/256, windows, packed documents, 1 token.
async fn attention(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0B05);
    let mut out = Vec::new();
    // (tokens, heads, kv heads, head_dim, window, document lengths)
    type Case = (usize, usize, usize, usize, Option<usize>, &'static [usize]);
    let cases: &[Case] = &[
        (1, 1, 1, 64, None, &[]),
        (37, 9, 3, 64, None, &[]),
        (40, 4, 2, 128, Some(8), &[]),
        (33, 2, 1, 256, Some(16), &[10, 23]),
        (50, 4, 4, 64, None, &[17, 1, 32]),
    ];
    for &(tokens, nh, nkv, hd, window, docs) in cases {
        let q = inputs(&mut rng, tokens * nh * hd, -1.0, 1.0, dt);
        let k = inputs(&mut rng, tokens * nkv * hd, -1.0, 1.0, dt);
        let v = inputs(&mut rng, tokens * nkv * hd, -1.0, 1.0, dt);
        let g = inputs(&mut rng, tokens * nh * hd, -1.0, 1.0, dt);
        let mut cfg = AttentionConfig::new(nh, nkv, hd);
        cfg.window = window;
        let mut spec = reference::AttentionSpec::new(nh, nkv, hd, cfg.scale_value() as f64);
        spec.window = window;
        if !docs.is_empty() {
            let starts = crate::ops::attention::doc_starts(docs);
            spec.doc_start = Some(starts.iter().map(|&s| s as usize).collect());
        }
        let positions: Vec<usize> = (0..tokens).collect();
        let (o, lse) = reference::attention(&q, &positions, &k, &v, &spec);
        let f64s = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (want_dq, want_dk, want_dv) =
            reference::attention::attention_backward(&f64s(&q), &f64s(&k), &f64s(&v), &f64s(&g), &spec);
        let t = |x: &[f32], heads: usize| Tensor::from_f32(ctx, x, &[tokens, heads, hd], dt);
        let (qt, kt, vt, gt) = (t(&q, nh)?, t(&k, nkv)?, t(&v, nkv)?, t(&g, nh)?);
        let o32: Vec<f32> = o.iter().map(|&x| x as f32).collect();
        let ot = t(&o32, nh)?;
        let lse32: Vec<f32> = lse.iter().map(|&x| x as f32).collect();
        let lt = Tensor::from_f32(ctx, &lse32, &[tokens, nh], DType::F32)?;
        let bounds = if docs.is_empty() { None } else { Some(Tensor::from_u32(ctx, &doc_bounds(docs), &[tokens, 2])?) };
        let stats = attention_backward_stats(ctx, tokens, nh)?;
        let (dq, dk, dv) = (
            poisoned(ctx, &[tokens, nh, hd], dt)?,
            poisoned(ctx, &[tokens, nkv, hd], dt)?,
            poisoned(ctx, &[tokens, nkv, hd], dt)?,
        );
        let mut b = Batch::new(ctx);
        attention_backward(&mut b, &cfg, (&qt, &kt, &vt), &ot, &lt, &gt, bounds.as_ref(), &stats, (&dq, &dk, &dv))?;
        b.submit();
        let case = |s: &str| format!("{s} {tokens} tok {nh}/{nkv} heads x {hd}, window {window:?}, docs {docs:?}");
        out.push(check_float(ctx, "attention_backward", case("dq"), &dq, &want_dq).await?);
        out.push(check_float(ctx, "attention_backward", case("dk"), &dk, &want_dk).await?);
        out.push(check_float(ctx, "attention_backward", case("dv"), &dv, &want_dv).await?);
    }
    Ok(out)
}

/// The elementwise output gate's backward.
async fn gate(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0B06);
    let mut out = Vec::new();
    for &(tokens, heads, hd) in &[(1usize, 1usize, 1usize), (7, 9, 64), (3, 2, 256)] {
        let n = tokens * heads * hd;
        let (a, g, dy) = (
            inputs(&mut rng, n, -2.0, 2.0, dt),
            inputs(&mut rng, n, -8.0, 8.0, dt),
            inputs(&mut rng, n, -1.0, 1.0, dt),
        );
        let (want_da, want_dg) = reference::gate::gate_backward(&a, &g, &dy);
        let t = |v: &[f32]| Tensor::from_f32(ctx, v, &[tokens, heads, hd], dt);
        let (at, gt, dyt) = (t(&a)?, t(&g)?, t(&dy)?);
        let (da, dg) = (poisoned(ctx, &[tokens, heads, hd], dt)?, poisoned(ctx, &[tokens, heads, hd], dt)?);
        let mut b = Batch::new(ctx);
        crate::ops::gate::gate_backward(&mut b, &at, &gt, &dyt, &da, &dg)?;
        b.submit();
        out.push(check_float(ctx, "gate_backward", format!("da {tokens}x{heads}x{hd}"), &da, &want_da).await?);
        out.push(check_float(ctx, "gate_backward", format!("dg {tokens}x{heads}x{hd}"), &dg, &want_dg).await?);
    }
    Ok(out)
}
