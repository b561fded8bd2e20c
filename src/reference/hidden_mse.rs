//! Reference for `ops::hidden_mse`, in f64.

/// Per row of `[rows, width]`: `weight · ‖s − t‖² / (‖t‖² + 1e-6)`, and the gradient of
/// `grad_scale · Σ rows` w.r.t. `student` (the teacher is a constant).
pub fn hidden_mse(
    student: &[f64],
    teacher: &[f64],
    width: usize,
    weight: f64,
    grad_scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut loss, mut grad) = (Vec::new(), Vec::new());
    for (s, t) in student.chunks(width).zip(teacher.chunks(width)) {
        let norm = t.iter().map(|x| x * x).sum::<f64>() + 1e-6;
        loss.push(weight * s.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / norm);
        grad.extend(s.iter().zip(t).map(|(a, b)| grad_scale * 2.0 * weight * (a - b) / norm));
    }
    (loss, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;

    /// The gradient against central finite differences of the summed loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let (rows, width) = (3, 5);
        let s: Vec<f64> = (0..rows * width).map(|_| rng.uniform(-2.0, 2.0) as f64).collect();
        let t: Vec<f64> = (0..rows * width).map(|_| rng.uniform(-2.0, 2.0) as f64).collect();
        let (_, grad) = hidden_mse(&s, &t, width, 0.7, 0.25);
        check_gradient("hidden_mse", &s, &grad, |x| 0.25 * hidden_mse(x, &t, width, 0.7, 1.0).0.iter().sum::<f64>());
    }
}
