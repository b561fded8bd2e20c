//! Checks of `ops::gate` (in-place sigmoid gates, the causal running mean, the whole query gate
//! q ← q ⊙ σ(W·m_t + b) through the existing matmul) against `reference::gate`.

use super::harness::{
    canary_intact, check_float, compare, exact, inputs, poisoned, round_to, write_keeping_canary, CaseReport,
};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::gate::{
    gate_apply_forward, gate_init_near_pass_through, running_mean_decode_forward, running_mean_forward, GateInput,
    GateMode, RunningMean, GATE_INIT_BIAS, GATE_INIT_WEIGHT_SCALE,
};
use crate::ops::matmul::matmul_forward;
use crate::ops::QuantWeight;
use crate::quant::QuantType;
use crate::reference::gate::{self as rg, GateLayout};
use crate::rng::SplitMix64;

const OP: &str = "gate";

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_6A7E);
    let mut out = Vec::new();
    apply_cases(ctx, dt, &mut rng, &mut out).await?;
    running_mean_cases(ctx, dt, &mut rng, &mut out).await?;
    query_gate_cases(ctx, dt, &mut rng, &mut out).await?;
    Ok(out)
}

/// `x ⊙ σ(g)` in place: elementwise, headwise, and a gate packed after each head's query.
async fn apply_cases(ctx: &GpuContext, dt: DType, rng: &mut SplitMix64, out: &mut Vec<CaseReport>) -> Result<()> {
    let cases: [(&str, usize, usize, usize, GateMode, bool); 4] = [
        ("elementwise", 7, 3, 64, GateMode::Elementwise, false),
        ("headwise", 5, 4, 128, GateMode::Headwise, false),
        ("packed after q", 4, 2, 64, GateMode::Elementwise, true),
        ("elementwise, 1 token", 1, 1, 256, GateMode::Elementwise, false),
    ];
    for (what, tokens, heads, hd, mode, packed) in cases {
        let n = tokens * heads * hd;
        let x = inputs(rng, n, -2.0, 2.0, dt);
        let glen = if packed { 2 * n } else { tokens * heads * if mode == GateMode::Elementwise { hd } else { 1 } };
        let g = inputs(rng, glen, -6.0, 6.0, dt);
        let gt = Tensor::from_f32(ctx, &g, &[glen], dt)?;
        let gi = if packed {
            GateInput::packed_after_query(&gt, heads, hd)
        } else {
            GateInput::contiguous(&gt, mode, heads, hd)
        };
        let xt = poisoned(ctx, &[tokens, heads, hd], dt)?;
        write_keeping_canary(ctx, &xt, &x)?;
        let mut b = Batch::new(ctx);
        gate_apply_forward(&mut b, &xt, &gi)?;
        b.submit();
        let layout = GateLayout {
            headwise: mode == GateMode::Headwise,
            token_stride: gi.token_stride,
            head_stride: gi.head_stride,
            offset: gi.offset,
        };
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let want = rg::gate(&x64, &g, layout, heads, hd);
        let got = xt.read_f32(ctx).await?;
        let canary = canary_intact(ctx, &xt).await?;
        out.push(compare(ctx, OP, format!("apply {what} [{tokens},{heads},{hd}]"), dt, &got, &want, canary));
    }
    Ok(())
}

/// The running mean: chunked prefill + batched decode against the reference, chunked equal to
/// one pass bit for bit, no position seeing a later one, and a chunk longer than one dispatch.
async fn running_mean_cases(
    ctx: &GpuContext,
    dt: DType,
    rng: &mut SplitMix64,
    out: &mut Vec<CaseReport>,
) -> Result<()> {
    let dim = 96; // not a multiple of the workgroup
    let n_seqs = 3;
    let chunks = [1usize, 17, 40];
    let steps = 3;
    let total = chunks.iter().sum::<usize>() + steps;
    // Sequence 0: chunks then decode; 1: decode from position 0; 2: one pass of sequence 0's rows.
    let xs: Vec<Vec<f32>> = (0..2).map(|_| inputs(rng, total * dim, -3.0, 5.0, dt)).collect();
    let state = RunningMean::new(ctx, n_seqs, dim)?;
    // Junk in the state: a chunk at position 0 and a decode step at position 0 must ignore it.
    state.state.write_f32(ctx, &inputs(rng, n_seqs * dim * 2, -9.0, 9.0, DType::F32))?;
    let mut got0 = Vec::new();
    let mut got1 = Vec::new();
    let mut pos = 0;
    for &t in &chunks {
        let x = Tensor::from_f32(ctx, &xs[0][pos * dim..(pos + t) * dim], &[t, dim], dt)?;
        let m = poisoned(ctx, &[t, dim], dt)?;
        let mut b = Batch::new(ctx);
        running_mean_forward(&mut b, &state, 0, pos, &x, &m)?;
        b.submit();
        got0.extend(m.read_f32(ctx).await?);
        pos += t;
    }
    for s in 0..steps {
        let mut x = xs[0][(pos + s) * dim..(pos + s + 1) * dim].to_vec();
        x.extend_from_slice(&xs[1][s * dim..(s + 1) * dim]);
        let xt = Tensor::from_f32(ctx, &x, &[2, dim], dt)?;
        let seqs = Tensor::from_u32(ctx, &[0, (pos + s) as u32, 1, s as u32], &[2, 2])?;
        let m = poisoned(ctx, &[2, dim], dt)?;
        let mut b = Batch::new(ctx);
        running_mean_decode_forward(&mut b, &state, &seqs, &xt, &m)?;
        b.submit();
        let r = m.read_f32(ctx).await?;
        got0.extend_from_slice(&r[..dim]);
        got1.extend_from_slice(&r[dim..]);
    }
    let want0 = rg::running_mean(&xs[0], dim);
    let want1 = rg::running_mean(&xs[1][..steps * dim], dim);
    out.push(compare(ctx, OP, format!("running mean chunks {chunks:?} + {steps} decode"), dt, &got0, &want0, true));
    out.push(compare(ctx, OP, format!("running mean decode from 0, {steps} steps"), dt, &got1, &want1, true));

    // One pass over the same rows in sequence 2: bit-identical to the chunks and decode steps.
    let one = one_pass(ctx, &state, 2, &xs[0], dim, dt).await?;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    out.push(exact(
        ctx,
        OP,
        format!("running mean chunked == one pass ({total} rows)"),
        dt,
        &bits(&got0),
        &bits(&one),
        true,
    ));

    // Causality: change every row after t; rows 0..=t must not move.
    for t in [0, 17, 40] {
        let mut x2 = xs[0].clone();
        let later = inputs(rng, (total - t - 1) * dim, -50.0, 50.0, dt);
        x2[(t + 1) * dim..].copy_from_slice(&later);
        let m2 = one_pass(ctx, &state, 2, &x2, dim, dt).await?;
        let upto = (t + 1) * dim;
        out.push(exact(
            ctx,
            OP,
            format!("running mean row {t} never sees row {}", t + 1),
            dt,
            &bits(&m2[..upto]),
            &bits(&one[..upto]),
            true,
        ));
    }

    // A chunk longer than one dispatch's 4096 tokens.
    let (long, d2) = (4100, 8);
    let x = inputs(rng, long * d2, -1.0, 3.0, dt);
    let st = RunningMean::new(ctx, 1, d2)?;
    let xt = Tensor::from_f32(ctx, &x, &[long, d2], dt)?;
    let m = poisoned(ctx, &[long, d2], dt)?;
    let mut b = Batch::new(ctx);
    running_mean_forward(&mut b, &st, 0, 0, &xt, &m)?;
    b.submit();
    out.push(
        check_float(ctx, OP, format!("running mean {long} rows in one chunk"), &m, &rg::running_mean(&x, d2)).await?,
    );
    Ok(())
}

async fn one_pass(
    ctx: &GpuContext,
    st: &RunningMean,
    seq: usize,
    x: &[f32],
    dim: usize,
    dt: DType,
) -> Result<Vec<f32>> {
    let rows = x.len() / dim;
    let xt = Tensor::from_f32(ctx, x, &[rows, dim], dt)?;
    let m = poisoned(ctx, &[rows, dim], dt)?;
    let mut b = Batch::new(ctx);
    running_mean_forward(&mut b, st, seq, 0, &xt, &m)?;
    b.submit();
    m.read_f32(ctx).await
}

/// The query gate end to end: m = running mean of x, g = m·Wᵀ + b (matmul), q ⊙= σ(g).
/// The reference rounds m and g to the storage type, as the GPU stores them.
async fn query_gate_cases(ctx: &GpuContext, dt: DType, rng: &mut SplitMix64, out: &mut Vec<CaseReport>) -> Result<()> {
    let (dim, heads, hd) = (64, 4, 64);
    let nq = heads * hd;
    for (what, tokens, init) in [("random W", 13, false), ("near-pass-through init", 9, true)] {
        let x = inputs(rng, tokens * dim, -2.0, 2.0, dt);
        let q = inputs(rng, tokens * nq, -2.0, 2.0, dt);
        let (w, bias) = if init {
            gate_init_near_pass_through(nq, dim, GATE_INIT_BIAS, GATE_INIT_WEIGHT_SCALE, 11)
        } else {
            (inputs(rng, nq * dim, -0.5, 0.5, DType::F32), inputs(rng, nq, -1.0, 1.0, DType::F32))
        };
        let bias = round_to(dt, bias);
        let wq = QuantWeight::upload(ctx, QuantType::F32, nq, dim, bytemuck::cast_slice(&w))?;
        let st = RunningMean::new(ctx, 1, dim)?;
        let xt = Tensor::from_f32(ctx, &x, &[tokens, dim], dt)?;
        let mt = Tensor::empty(ctx, &[tokens, dim], dt)?;
        let gt = Tensor::empty(ctx, &[tokens, nq], dt)?;
        let bt = Tensor::from_f32(ctx, &bias, &[nq], dt)?;
        let qt = poisoned(ctx, &[tokens, heads, hd], dt)?;
        write_keeping_canary(ctx, &qt, &q)?;
        let mut b = Batch::new(ctx);
        running_mean_forward(&mut b, &st, 0, 0, &xt, &mt)?;
        matmul_forward(&mut b, &mt, &wq, Some(&bt), &gt, false)?;
        gate_apply_forward(&mut b, &qt, &GateInput::contiguous(&gt, GateMode::Elementwise, heads, hd))?;
        b.submit();
        let m: Vec<f32> = round_to(dt, rg::running_mean(&x, dim).iter().map(|&v| v as f32).collect());
        let g: Vec<f32> =
            round_to(dt, crate::reference::matmul(&m, &w, nq, dim, Some(&bias)).iter().map(|&v| v as f32).collect());
        let q64: Vec<f64> = q.iter().map(|&v| v as f64).collect();
        let layout = GateLayout { headwise: false, token_stride: nq, head_stride: hd, offset: 0 };
        let want = rg::gate(&q64, &g, layout, heads, hd);
        let got = qt.read_f32(ctx).await?;
        let canary = canary_intact(ctx, &qt).await?;
        out.push(compare(ctx, OP, format!("query gate {what}, {tokens} tokens"), dt, &got, &want, canary));
        if init {
            // Near pass-through: every gated value within 1 % of the ungated one.
            let worst = got.iter().zip(&q).map(|(g, q)| ((g - q) / q).abs()).fold(0.0f32, f32::max);
            out.push(exact(
                ctx,
                OP,
                format!("near-pass-through gate moves q by {worst:.2e} ≤ 1e-2"),
                dt,
                &[worst <= 1e-2],
                &[true],
                true,
            ));
        }
    }
    Ok(())
}
