//! Reference for `ops::softmax`.

pub fn softmax(x: &[f32], width: usize, temperature: f64) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(width) {
        let m = row.iter().map(|&v| v as f64 / temperature).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 / temperature - m).exp()).collect();
        let s: f64 = e.iter().sum();
        y.extend(e.iter().map(|v| v / s));
    }
    y
}
