//! Checks of `ops::matmul` (GEMV, GEMM, transposed) for every GGUF format against
//! `reference::matmul` over `quant::dequantize` of the same blocks.

use super::harness::{
    canary_intact, check_float, compare, compare_within, inputs, poisoned, write_keeping_canary, CaseReport, Tolerance,
};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::matmul::{
    matmul_forward, matmul_glu_forward, matmul_int8_forward, matmul_transposed_forward, quantize_activations_forward,
    QuantizedActivations, GLU_ACTIVATIONS,
};
use crate::ops::qweight::has_scales;
use crate::ops::qweight::{gpu_layout, gpu_row_bytes};
use crate::ops::QuantWeight;
use crate::quant::{self, QuantType};
use crate::reference;
use crate::rng::SplitMix64;

struct Case {
    m: usize,
    n: usize,
    /// Columns as a multiple of the format's block, or an absolute count (`k_abs`).
    k_blocks: usize,
    k_abs: usize,
    bias: bool,
    accumulate: bool,
    /// Force the weight into parts of about this many rows (split-binding path).
    split_rows: Option<usize>,
    transposed: bool,
}

const fn case(m: usize, n: usize, k_blocks: usize) -> Case {
    Case { m, n, k_blocks, k_abs: 0, bias: false, accumulate: false, split_rows: None, transposed: false }
}

fn cases() -> Vec<Case> {
    vec![
        // GEMV (M ≤ 8): one row, odd N, smallest K, large K, bias, accumulate.
        case(1, 7, 1),
        Case { bias: true, k_abs: 4096, ..case(2, 33, 0) },
        case(3, 65, 3),
        case(7, 1, 1),
        Case { accumulate: true, k_abs: 4096, ..case(8, 129, 0) },
        Case { split_rows: Some(80), bias: true, ..case(1, 300, 2) },
        // GEMM (M > 8): tile edges ±1.
        Case { bias: true, ..case(9, 67, 2) },
        Case { k_abs: 4096, ..case(64, 65, 0) },
        Case { bias: true, accumulate: true, ..case(65, 31, 1) },
        Case { split_rows: Some(80), bias: true, ..case(65, 300, 2) },
        // Transposed (dX = dY · W).
        Case { transposed: true, ..case(1, 5, 1) },
        Case { transposed: true, ..case(9, 67, 2) },
        Case { transposed: true, accumulate: true, k_abs: 4096, ..case(65, 33, 0) },
        Case { transposed: true, split_rows: Some(80), ..case(17, 300, 2) },
    ]
}

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0009);
    let mut out = Vec::new();
    for ty in QuantType::ALL {
        let (block, _, _) = gpu_layout(ty);
        for c in cases() {
            let k = if c.k_abs > 0 { c.k_abs } else { c.k_blocks * block };
            let bytes = quant::random_blocks(ty, c.n * k, &mut rng);
            let w = quant::dequantize(ty, &bytes, c.n * k)?;
            let weight = match c.split_rows {
                Some(rows) => {
                    QuantWeight::upload_with_part_limit(ctx, ty, c.n, k, &bytes, rows as u64 * gpu_row_bytes(ty, k))?
                }
                None => QuantWeight::upload(ctx, ty, c.n, k, &bytes)?,
            };
            let (in_len, out_len) = if c.transposed { (c.n, k) } else { (k, c.n) };
            let x = inputs(&mut rng, c.m * in_len, -1.0, 1.0, dt);
            let xt = Tensor::from_f32(ctx, &x, &[c.m, in_len], dt)?;
            let bias = inputs(&mut rng, c.n, -1.0, 1.0, dt);
            let bias_t = if c.bias { Some(Tensor::from_f32(ctx, &bias, &[c.n], dt)?) } else { None };
            let y = poisoned(ctx, &[c.m, out_len], dt)?;
            let y0 = inputs(&mut rng, c.m * out_len, -1.0, 1.0, dt);
            if c.accumulate {
                write_keeping_canary(ctx, &y, &y0)?;
            }
            let mut b = Batch::new(ctx);
            if c.transposed {
                matmul_transposed_forward(&mut b, &xt, &weight, &y, c.accumulate)?;
            } else {
                matmul_forward(&mut b, &xt, &weight, bias_t.as_ref(), &y, c.accumulate)?;
            }
            b.submit();
            let mut want = if c.transposed {
                reference::matmul_transposed(&x, &w, c.n, k)
            } else {
                reference::matmul(&x, &w, c.n, k, c.bias.then_some(&bias[..]))
            };
            if c.accumulate {
                want.iter_mut().zip(&y0).for_each(|(r, &a)| *r += a as f64);
            }
            let name = format!(
                "{:<5} {}M{} N{} K{}{}{}{}",
                ty.name(),
                if c.transposed { "dX " } else { "" },
                c.m,
                c.n,
                k,
                if c.bias { " bias" } else { "" },
                if c.accumulate { " acc" } else { "" },
                if weight.parts.len() > 1 { format!(" {} parts", weight.parts.len()) } else { String::new() },
            );
            if c.accumulate {
                let got = y.read_f32(ctx).await?;
                let canary = canary_intact(ctx, &y).await?;
                out.push(compare(ctx, "matmul", name, dt, &got, &want, canary));
            } else {
                out.push(check_float(ctx, "matmul", name, &y, &want).await?);
            }
        }
    }
    out.extend(check_int8(ctx, dt, &mut rng).await?);
    out.extend(check_fused(ctx, dt, &mut rng).await?);
    Ok(out)
}

/// The int8-activation path, against the exact (unquantized-activation) reference.
/// Tolerance: ‖out−ref‖/‖ref‖ ≤ 1e-2 and max error ≤ 3e-2·max|ref| (activations carry 8 bits).
pub const INT8_TOLERANCE: Tolerance = Tolerance { rel: 1e-2, max_abs_frac: 3e-2 };

async fn check_int8(ctx: &GpuContext, dt: DType, rng: &mut SplitMix64) -> Result<Vec<CaseReport>> {
    let mut out = Vec::new();
    for ty in QuantType::ALL.into_iter().filter(|&t| has_scales(t)) {
        let (block, _, _) = gpu_layout(ty);
        // (M, N, K, bias, accumulate, split rows)
        for (m, n, k, bias, accumulate, split) in [
            (1, 7, block, false, false, None),
            (3, 65, 4096, true, true, None),
            (8, 300, 2 * block, true, false, Some(80)),
        ] {
            let bytes = quant::random_blocks(ty, n * k, rng);
            let w = quant::dequantize(ty, &bytes, n * k)?;
            let weight = match split {
                Some(rows) => {
                    QuantWeight::upload_with_part_limit(ctx, ty, n, k, &bytes, rows as u64 * gpu_row_bytes(ty, k))?
                }
                None => QuantWeight::upload(ctx, ty, n, k, &bytes)?,
            };
            let x = inputs(rng, m * k, -1.0, 1.0, dt);
            let xt = Tensor::from_f32(ctx, &x, &[m, k], dt)?;
            let bias_v = inputs(rng, n, -1.0, 1.0, dt);
            let bias_t = if bias { Some(Tensor::from_f32(ctx, &bias_v, &[n], dt)?) } else { None };
            let y0 = inputs(rng, m * n, -1.0, 1.0, dt);
            let y = poisoned(ctx, &[m, n], dt)?;
            if accumulate {
                write_keeping_canary(ctx, &y, &y0)?;
            }
            let xq = QuantizedActivations::new(ctx, m, k)?;
            let mut b = Batch::new(ctx);
            quantize_activations_forward(&mut b, &xt, &xq)?;
            matmul_int8_forward(&mut b, &xq, &weight, bias_t.as_ref(), &y, accumulate)?;
            b.submit();
            let mut want = reference::matmul(&x, &w, n, k, bias.then_some(&bias_v[..]));
            if accumulate {
                want.iter_mut().zip(&y0).for_each(|(r, &a)| *r += a as f64);
            }
            let got = y.read_f32(ctx).await?;
            let canary = canary_intact(ctx, &y).await?;
            let name = format!(
                "{:<5} int8 M{m} N{n} K{k}{} parts {}",
                ty.name(),
                if bias { " bias" } else { "" },
                weight.parts.len()
            );
            out.push(compare_within(ctx, "matmul", name, dt, &got, &want, canary, INT8_TOLERANCE));
        }
    }
    Ok(out)
}

/// Fused variants: Q|K|V stacked into one weight (one matmul), and gate|up with the activation
/// in the GEMV epilogue.
async fn check_fused(ctx: &GpuContext, dt: DType, rng: &mut SplitMix64) -> Result<Vec<CaseReport>> {
    let mut out = Vec::new();
    for ty in QuantType::ALL {
        let (block, _, _) = gpu_layout(ty);
        let k = 2 * block;
        // Q|K|V with GQA-like unequal row counts.
        let rows = [7usize, 3, 5];
        let parts: Vec<Vec<u8>> = rows.iter().map(|&r| quant::random_blocks(ty, r * k, rng)).collect();
        let tensors: Vec<(usize, &[u8])> = rows.iter().zip(&parts).map(|(&r, b)| (r, &b[..])).collect();
        let qkv = QuantWeight::upload_concat(ctx, ty, k, &tensors)?;
        let mut w = Vec::new();
        for (r, b) in rows.iter().zip(&parts) {
            w.extend(quant::dequantize(ty, b, r * k)?);
        }
        let n: usize = rows.iter().sum();
        for m in [1, 9] {
            let x = inputs(rng, m * k, -1.0, 1.0, dt);
            let xt = Tensor::from_f32(ctx, &x, &[m, k], dt)?;
            let y = poisoned(ctx, &[m, n], dt)?;
            let mut b = Batch::new(ctx);
            matmul_forward(&mut b, &xt, &qkv, None, &y, false)?;
            b.submit();
            let want = reference::matmul(&x, &w, n, k, None);
            out.push(
                check_float(ctx, "matmul", format!("{:<5} fused QKV M{m} N{n} K{k}", ty.name()), &y, &want).await?,
            );
        }
        // gate|up → act(gate) * up.
        let f = 33;
        let gate = quant::random_blocks(ty, f * k, rng);
        let up = quant::random_blocks(ty, f * k, rng);
        let gu = QuantWeight::upload_concat(ctx, ty, k, &[(f, &gate[..]), (f, &up[..])])?;
        let (wg, wu) = (quant::dequantize(ty, &gate, f * k)?, quant::dequantize(ty, &up, f * k)?);
        for (m, act) in [(1, GLU_ACTIVATIONS[0]), (3, GLU_ACTIVATIONS[1])] {
            let x = inputs(rng, m * k, -1.0, 1.0, dt);
            let xt = Tensor::from_f32(ctx, &x, &[m, k], dt)?;
            let y = poisoned(ctx, &[m, f], dt)?;
            let mut b = Batch::new(ctx);
            matmul_glu_forward(&mut b, &xt, &gu, act, &y)?;
            b.submit();
            let g = reference::matmul(&x, &wg, f, k, None);
            let u = reference::matmul(&x, &wu, f, k, None);
            let want: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| reference::activation::act(act, g) * u).collect();
            out.push(
                check_float(ctx, "matmul", format!("{:<5} gate·up {act:?} M{m} F{f} K{k}", ty.name()), &y, &want)
                    .await?,
            );
        }
    }
    Ok(out)
}
