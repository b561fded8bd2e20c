// Elementwise activations, plain (y = act(x)) or gated (GATED: y = act(gate) * up, the
// SwiGLU / GeGLU of a transformer MLP). ACT selects the function:
//   0 SiLU          x * sigmoid(x)
//   1 GELU (erf)    0.5 x (1 + erf(x / sqrt 2))
//   2 GELU (tanh)   0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// Gated inputs may be strided views of one fused gate|up row (gate at gate_offset, up at
// up_offset, both with in_stride elements per row); bind the same tensor twice for that.
#include "common/ids"

struct Params {
    rows: u32,
    width: u32,
    in_stride: u32,
    gate_offset: u32,
    up_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<T>;
#ifdef GATED
@group(0) @binding(2) var<storage, read> up: array<T>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;
#else
@group(0) @binding(2) var<storage, read_write> y: array<T>;
#endif

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

@compute @workgroup_size(WG)
fn activation_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gid = group_id(wg, nwg) * WG + ids.lid;
    if (gid >= p.rows * p.width) {
        return;
    }
    let r = gid / p.width;
    let c = gid % p.width;
    let g = f32(gate[r * p.in_stride + p.gate_offset + c]);
#ifdef GATED
    let u = f32(up[r * p.in_stride + p.up_offset + c]);
    y[gid] = T(act(g) * u);
#else
    y[gid] = T(act(g));
#endif
}
