//! Checks of `ops::matmul_dense` against `reference::matmul_dense`: every layout, edge shapes
//! (1 row, sizes that are not multiples of the 16 × 16 tile, a long reduction), `+=`, and on the
//! f16 path every mix of f16/f32 B and C.

use super::harness::{check_float, inputs, poisoned, write_keeping_canary, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::matmul_dense::{matmul_dense_forward, DenseLayout};
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0D01);
    let mut out = Vec::new();
    // (m, n, k, what)
    let shapes: &[(usize, usize, usize, &str)] = &[
        (1, 1, 1, "1x1x1"),
        (1, 16, 576, "LoRA down, one token"),
        (37, 19, 23, "odd, not tile multiples"),
        (64, 576, 16, "LoRA up, rank 16"),
        (9, 7, 4099, "long reduction (dW over tokens)"),
    ];
    let mixes: &[(DType, DType)] = if dt == DType::F16 {
        &[(DType::F16, DType::F16), (DType::F32, DType::F32), (DType::F32, DType::F16)]
    } else {
        &[(DType::F32, DType::F32)]
    };
    for layout in DenseLayout::ALL {
        for (si, &(m, n, k, what)) in shapes.iter().enumerate() {
            for &(b_dt, c_dt) in mixes {
                let a = inputs(&mut rng, m * k, -1.0, 1.0, dt);
                let b = inputs(&mut rng, k * n, -1.0, 1.0, b_dt);
                let accumulate = si % 2 == 1;
                let c0 = inputs(&mut rng, m * n, -1.0, 1.0, c_dt);
                let alpha = 0.75;
                let want = reference::matmul_dense::matmul_dense(
                    &a,
                    &b,
                    layout,
                    (m, n, k),
                    alpha,
                    accumulate.then_some(&c0[..]),
                );
                let at = Tensor::from_f32(ctx, &a, &[a.len()], dt)?;
                let bt = Tensor::from_f32(ctx, &b, &[b.len()], b_dt)?;
                let c = poisoned(ctx, &[m, n], c_dt)?;
                if accumulate {
                    write_keeping_canary(ctx, &c, &c0)?;
                }
                let mut batch = Batch::new(ctx);
                matmul_dense_forward(&mut batch, &at, &bt, &c, layout, (m, n, k), alpha as f32, accumulate)?;
                batch.submit();
                let case = format!(
                    "{layout:?} {m}x{n}x{k} B {} C {}{} ({what})",
                    b_dt.name(),
                    c_dt.name(),
                    if accumulate { " +=" } else { "" }
                );
                out.push(check_float(ctx, "matmul_dense", case, &c, &want).await?);
            }
        }
    }
    Ok(out)
}
