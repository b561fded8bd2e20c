//! Checks of `ops::matmul_dense` against `reference::matmul_dense`: every layout, edge shapes
//! (1 row, sizes that are not multiples of the 16 × 16 tile, a long reduction), `+=`, and on the
//! f16 path every mix of f16/f32 B and C.

use super::harness::{check_float, inputs, poisoned, write_keeping_canary, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::matmul_dense::{matmul_dense_forward, matmul_dense_strided, DenseLayout, Strided};
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
    // Column blocks of wider rows: A the Q columns of a fused row, C += into the K columns.
    for layout in DenseLayout::ALL {
        let (m, n, k) = (13, 24, 20);
        let (a_rows, a_cols) = if layout == DenseLayout::Tn { (k, m) } else { (m, k) };
        let (lda, a_off, ldc, c_off) = (a_cols + 7, 3, n + 10, 5);
        let a_full = inputs(&mut rng, a_rows * lda + a_off, -1.0, 1.0, dt);
        let a: Vec<f32> = (0..a_rows).flat_map(|r| a_full[a_off + r * lda..][..a_cols].to_vec()).collect();
        let b = inputs(&mut rng, k * n, -1.0, 1.0, dt);
        let c_full = inputs(&mut rng, m * ldc + c_off, -1.0, 1.0, dt);
        let c0: Vec<f32> = (0..m).flat_map(|r| c_full[c_off + r * ldc..][..n].to_vec()).collect();
        let block = reference::matmul_dense::matmul_dense(&a, &b, layout, (m, n, k), 1.0, Some(&c0));
        let mut want: Vec<f64> = c_full.iter().map(|&x| x as f64).collect();
        for r in 0..m {
            want[c_off + r * ldc..][..n].copy_from_slice(&block[r * n..][..n]);
        }
        let at = Tensor::from_f32(ctx, &a_full, &[a_full.len()], dt)?;
        let bt = Tensor::from_f32(ctx, &b, &[b.len()], dt)?;
        let c = poisoned(ctx, &[c_full.len()], dt)?;
        write_keeping_canary(ctx, &c, &c_full)?;
        let mut batch = Batch::new(ctx);
        let a_at = Some(Strided { row_stride: lda, offset: a_off });
        let c_at = Some(Strided { row_stride: ldc, offset: c_off });
        matmul_dense_strided(&mut batch, (&at, a_at), &bt, (&c, c_at), layout, (m, n, k), 1.0, true)?;
        batch.submit();
        let case = format!("{layout:?} {m}x{n}x{k} A and C column blocks, +=");
        out.push(check_float(ctx, "matmul_dense", case, &c, &want).await?);
    }
    Ok(out)
}
