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
