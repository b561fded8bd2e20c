//! Central finite differences, the independent check of every analytic gradient in
//! `reference` (each backward reference is tested against the derivative of its own forward).

/// Compare `analytic` (∂f/∂p at `point`) with central differences `(f(p + h) − f(p − h)) / 2h`,
/// h = 1e-5·max(1, |p_i|), coordinate by coordinate (at most 64 of them, spread over the
/// vector): panics when ‖numeric − analytic‖ / ‖numeric‖ exceeds 1e-6 (f64 throughout, so the
/// truncation error O(h²) and rounding O(ε/h) are both far below that).
pub fn check_gradient(what: &str, point: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    assert_eq!(point.len(), analytic.len(), "{what}: gradient length");
    let step = point.len().div_ceil(64).max(1);
    let mut p = point.to_vec();
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for i in (0..point.len()).step_by(step) {
        let h = 1e-5 * point[i].abs().max(1.0);
        p[i] = point[i] + h;
        let up = f(&p);
        p[i] = point[i] - h;
        let down = f(&p);
        p[i] = point[i];
        let numeric = (up - down) / (2.0 * h);
        diff += (numeric - analytic[i]).powi(2);
        norm += numeric.powi(2);
    }
    let rel = diff.sqrt() / norm.sqrt().max(1e-300);
    assert!(rel < 1e-6, "{what}: analytic gradient differs from finite differences by {rel:.2e} (relative)");
}
