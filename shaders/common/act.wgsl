// Activation functions, selected by the ACT define (0 SiLU, 1 GELU erf, 2 GELU tanh); shared
// by activation.wgsl and the fused gate·up epilogue of matmul_gemv.wgsl.
//
// Both GELUs are written as x * (something in [0, 1]) computed without cancellation, so
// large negative inputs keep their (tiny) relative accuracy.
//
// GELU (erf): 0.5 x (1 + erf(x/sqrt2)) = 0.5 x erfc(-x/sqrt2). erfc by Abramowitz & Stegun
// 7.1.26 (|error| <= 1.5e-7): erfc(a) = q(a) = t P(t) exp(-a^2) for a >= 0, and
// erfc(-a) = 2 - q(a). WGSL has no erf builtin.
fn gelu_erf(v: f32) -> f32 {
    let a = abs(v) * 0.7071067811865476;
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let q = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * exp(-a * a);
    return 0.5 * v * select(2.0 - q, q, v < 0.0);
}

// GELU (tanh): 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
fn gelu_tanh(v: f32) -> f32 {
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    return v / (1.0 + exp(-2.0 * u));
}

fn act(v: f32) -> f32 {
    if (ACT == 0u) {
        return v / (1.0 + exp(-v));
    } else if (ACT == 1u) {
        return gelu_erf(v);
    }
    return gelu_tanh(v);
}
