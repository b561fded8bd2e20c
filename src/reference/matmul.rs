//! Reference for `ops::matmul`: products with a dequantized weight (`quant::dequantize`, itself
//! checked against gguf-py), f64 accumulation.

/// `y[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n])`.
pub fn matmul(x: &[f32], w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Vec<f64> {
    let m = x.len() / k;
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = x[i * k..][..k].iter().zip(&w[j * k..][..k]).map(|(&a, &b)| a as f64 * b as f64).sum();
            y[i * n + j] = dot + bias.map_or(0.0, |b| b[j] as f64);
        }
    }
    y
}

/// `dx[m, k] = Σ_n dy[m, n] · w[n, k]`.
pub fn matmul_transposed(dy: &[f32], w: &[f32], n: usize, k: usize) -> Vec<f64> {
    let m = dy.len() / n;
    let mut dx = vec![0.0; m * k];
    for i in 0..m {
        for r in 0..n {
            let g = dy[i * n + r] as f64;
            for (o, &wv) in dx[i * k..][..k].iter_mut().zip(&w[r * k..][..k]) {
                *o += g * wv as f64;
            }
        }
    }
    dx
}
