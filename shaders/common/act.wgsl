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

// d act / dx, for the backward pass (activation.wgsl BACKWARD):
//   SiLU        s (1 + x (1 - s)),  s = sigmoid(x)
//   GELU erf    Phi(x) + x phi(x)   (Phi = 0.5 erfc(-x/sqrt2) as above, phi the normal density)
//   GELU tanh   s + 2 x s (1 - s) u'(x),  s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
fn act_grad(v: f32) -> f32 {
    if (ACT == 0u) {
        let s = 1.0 / (1.0 + exp(-v));
        return s * (1.0 + v * (1.0 - s));
    } else if (ACT == 1u) {
        let a = abs(v) * 0.7071067811865476;
        let t = 1.0 / (1.0 + 0.3275911 * a);
        let q = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * exp(-a * a);
        let cdf = 0.5 * select(2.0 - q, q, v < 0.0);
        return cdf + v * 0.3989422804014327 * exp(-0.5 * v * v);
    }
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    let s = 1.0 / (1.0 + exp(-2.0 * u));
    let du = 0.7978845608028654 * (1.0 + 0.134145 * v * v);
    return s + 2.0 * v * s * (1.0 - s) * du;
}
