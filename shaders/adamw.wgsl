// The optimizer step and the gradient statistics it needs. Master weights, gradients and
// moments are f32 whatever the activation dtype.
//
// adamw_step (default): AdamW (Loshchilov & Hutter; PyTorch's torch.optim.AdamW operation for
// operation), with the gradient first multiplied by grad_scale (global-norm clipping and
// averaging over accumulated micro-batches folded into one factor):
//   g = grad * grad_scale
//   w = w * (1 - lr * weight_decay)                 (decoupled weight decay)
//   m = m + (1 - beta1) * (g - m)                    (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   w = w - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
// with step_size = lr / (1 - beta1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t) from the host (f64).
//
// SUM_SQUARES: per workgroup, the sum of squares of the finite gradient values it strides over
// and the number of non-finite ones (NaN/Inf found by their exponent bits, which a fast-math
// compiler cannot fold away), written as a pair at partials[2 * (first_slot + workgroup)]. The
// host adds the few partials in f64: the global norm for clipping, and a non-finite count that
// makes the step skip.
#include "common/reduce"

#ifndef SUM_SQUARES
struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    grad_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(WG)
fn adamw_step(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * p.grad_scale;
    var wi = w[i] * (1.0 - p.lr * p.weight_decay);
    let mi = m[i] + (1.0 - p.beta1) * (g - m[i]);
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    wi = wi - p.step_size * mi / (sqrt(vi) * p.inv_sqrt_bc2 + p.eps);
    m[i] = mi;
    v[i] = vi;
    w[i] = wi;
}
#else
struct Params {
    n: u32,
    first_slot: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(WG)
fn grad_sum_squares(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let group = group_id(wg, nwg);
    let groups = nwg.x * nwg.y;
    var ss = 0.0;
    var bad = 0.0;
    for (var i = group * WG + ids.lid; i < p.n; i += groups * WG) {
        let x = grad[i];
        if ((bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u) {
            bad += 1.0;
        } else {
            ss += x * x;
        }
    }
    let total = wg_sum(ss, ids);
    let nonfinite = wg_sum(bad, ids);
    if (ids.lid == 0u) {
        partials[2u * (p.first_slot + group)] = total;
        partials[2u * (p.first_slot + group) + 1u] = nonfinite;
    }
}
#endif
