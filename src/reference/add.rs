//! Reference for `ops::add`.

pub fn add(a: &[f32], b: &[f32]) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| x as f64 + y as f64).collect()
}
