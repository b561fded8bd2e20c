//! Reference for `ops::optim`: AdamW as PyTorch's `torch.optim.AdamW` computes it (single
//! tensor, not fused), in f64.

use crate::ops::optim::AdamW;

/// One step `t` (≥ 1) on `w`, `m`, `v` in place with gradient `grad · grad_scale`.
pub fn adamw_step(opt: &AdamW, t: u64, w: &mut [f64], m: &mut [f64], v: &mut [f64], grad: &[f32], grad_scale: f64) {
    let bc1 = 1.0 - opt.beta1.powi(t as i32);
    let bc2 = 1.0 - opt.beta2.powi(t as i32);
    for i in 0..w.len() {
        let g = grad[i] as f64 * grad_scale;
        w[i] *= 1.0 - opt.lr * opt.weight_decay;
        m[i] += (1.0 - opt.beta1) * (g - m[i]);
        v[i] = opt.beta2 * v[i] + (1.0 - opt.beta2) * g * g;
        w[i] -= opt.lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + opt.eps);
    }
}
