//! Reference for `ops::rms_norm`.

/// `y = x / sqrt(mean(x²) + eps) * (w + weight_bias)` per row of `w.len()` elements.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f64, weight_bias: f64) -> Vec<f64> {
    let width = w.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(width) {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / width as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        y.extend(row.iter().zip(w).map(|(&v, &wi)| v as f64 * inv * (wi as f64 + weight_bias)));
    }
    y
}

/// The gradients of [`rms_norm`] for upstream gradient `dy`: `(dx, dw)`, by the chain rule
/// written out in f64 (`dx = r·g − x·r³·mean(g·x)`, `g = dy·(w + bias)`; `dw = Σ_rows dy·x·r`).
/// Checked against finite differences of [`rms_norm`] below.
pub fn rms_norm_backward(x: &[f32], w: &[f32], dy: &[f32], eps: f64, weight_bias: f64) -> (Vec<f64>, Vec<f64>) {
    let width = w.len();
    let mut dx = Vec::with_capacity(x.len());
    let mut dw = vec![0.0; width];
    for (row, drow) in x.chunks(width).zip(dy.chunks(width)) {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / width as f64;
        let r = 1.0 / (ms + eps).sqrt();
        let g: Vec<f64> = drow.iter().zip(w).map(|(&d, &wi)| d as f64 * (wi as f64 + weight_bias)).collect();
        let gx = g.iter().zip(row).map(|(gi, &xi)| gi * xi as f64).sum::<f64>() / width as f64;
        dx.extend(row.iter().zip(&g).map(|(&xi, gi)| r * gi - xi as f64 * r * r * r * gx));
        for (j, (&xi, &di)) in row.iter().zip(drow).enumerate() {
            dw[j] += di as f64 * xi as f64 * r;
        }
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;
    use crate::rng::SplitMix64;

    /// The analytic gradients against central differences of the forward, both weight forms.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(7);
        for (rows, width, bias) in [(1, 1, 0.0), (3, 7, 1.0), (2, 64, 0.0)] {
            let x = rng.vec_nonzero(rows * width, -2.0, 2.0);
            let w = rng.vec_nonzero(width, -1.5, 1.5);
            let dy = rng.vec_nonzero(rows * width, -1.0, 1.0);
            let (dx, dw) = rms_norm_backward(&x, &w, &dy, 1e-5, bias);
            // L = Σ y·dy with the forward written in f64 on f64 inputs (no f32 rounding).
            let loss = |x: &[f64], w: &[f64]| {
                let mut total = 0.0;
                for (r, row) in x.chunks(width).enumerate() {
                    let ms = row.iter().map(|v| v * v).sum::<f64>() / width as f64;
                    let inv = 1.0 / (ms + 1e-5).sqrt();
                    for j in 0..width {
                        total += row[j] * inv * (w[j] + bias) * dy[r * width + j] as f64;
                    }
                }
                total
            };
            let (x64, w64): (Vec<f64>, Vec<f64>) =
                (x.iter().map(|&v| v as f64).collect(), w.iter().map(|&v| v as f64).collect());
            check_gradient("rms_norm dx", &x64, &dx, |xp| loss(xp, &w64));
            check_gradient("rms_norm dw", &w64, &dw, |wp| loss(&x64, wp));
        }
    }
}
