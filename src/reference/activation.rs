//! Reference for `ops::activation`.

use crate::ops::Activation;

pub fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Silu => x / (1.0 + (-x).exp()),
        // 0.5·x·(1 + erf(x/√2)), as 0.5·x·erfc(−x/√2) to keep negative x accurate.
        Activation::GeluErf => 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2),
        // 0.5·x·(1 + tanh(u)) = x·σ(2u): the same value without the cancellation of 1 + tanh.
        Activation::GeluTanh => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            x / (1.0 + (-2.0 * u).exp())
        }
    }
}

pub fn activation(a: Activation, x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| act(a, v as f64)).collect()
}

pub fn gated_activation(a: Activation, gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| act(a, g as f64) * u as f64).collect()
}

/// d act / dx in f64 (checked against finite differences of [`act`] below).
pub fn act_grad(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
        Activation::GeluErf => {
            let cdf = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
            cdf + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
        }
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let u = c * (x + 0.044715 * x * x * x);
            let s = 1.0 / (1.0 + (-2.0 * u).exp());
            s + 2.0 * x * s * (1.0 - s) * c * (1.0 + 3.0 * 0.044715 * x * x)
        }
    }
}

/// Gradients of [`gated_activation`] for upstream `dy`: `(dgate, dup)`.
pub fn gated_activation_backward(a: Activation, gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let dgate = gate.iter().zip(up).zip(dy).map(|((&g, &u), &d)| d as f64 * u as f64 * act_grad(a, g as f64)).collect();
    let dup = gate.iter().zip(dy).map(|(&g, &d)| d as f64 * act(a, g as f64)).collect();
    (dgate, dup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;
    use crate::rng::SplitMix64;

    #[test]
    fn gated_backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(11);
        for a in Activation::ALL {
            let g = rng.vec_nonzero(40, -6.0, 6.0);
            let u = rng.vec_nonzero(40, -2.0, 2.0);
            let dy = rng.vec_nonzero(40, -1.0, 1.0);
            let (dg, du) = gated_activation_backward(a, &g, &u, &dy);
            let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let (g64, u64_) = (f64s(&g), f64s(&u));
            let loss =
                |g: &[f64], u: &[f64]| g.iter().zip(u).zip(&dy).map(|((&g, &u), &d)| act(a, g) * u * d as f64).sum();
            check_gradient(&format!("{a:?} dgate"), &g64, &dg, |gp| loss(gp, &u64_));
            check_gradient(&format!("{a:?} dup"), &u64_, &du, |up| loss(&g64, up));
        }
    }
}
