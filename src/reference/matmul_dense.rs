//! Reference for `ops::matmul_dense`, f64 accumulation.

use crate::ops::matmul_dense::DenseLayout;

/// `alpha · op(a)·op(b)` `[m, n]` (+ `c0` when given).
pub fn matmul_dense(
    a: &[f32],
    b: &[f32],
    layout: DenseLayout,
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    c0: Option<&[f32]>,
) -> Vec<f64> {
    let at = |i: usize, kk: usize| match layout {
        DenseLayout::Tn => a[kk * m + i],
        _ => a[i * k + kk],
    } as f64;
    let bt = |kk: usize, j: usize| match layout {
        DenseLayout::Nt => b[j * k + kk],
        _ => b[kk * n + j],
    } as f64;
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|kk| at(i, kk) * bt(kk, j)).sum();
            c[i * n + j] = alpha * dot + c0.map_or(0.0, |c| c[i * n + j] as f64);
        }
    }
    c
}
