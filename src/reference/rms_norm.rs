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
