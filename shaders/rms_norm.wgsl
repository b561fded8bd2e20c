// RMSNorm over rows: y = x / sqrt(mean(x^2) + eps) * (w + weight_bias).
// weight_bias is 0 for llama-style norms and 1 for Gemma's (1 + w) form. One workgroup per
// row; WG = 256 for model-width rows, 64 for short rows such as the per-head QK-norm
// (rows = tokens * heads, width = head_dim, one weight vector shared by all heads).
// Storage T (f32 or f16), accumulation f32.
#include "common/reduce"

struct Params {
    rows: u32,
    width: u32,
    eps: f32,
    weight_bias: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> w: array<T>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;

@compute @workgroup_size(WG)
fn rms_norm_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    var ss = 0.0;
    for (var i = ids.lid; i < p.width; i += WG) {
        let v = f32(x[base + i]);
        ss += v * v;
    }
    let total = wg_sum(ss, ids);
    let inv_rms = inverseSqrt(total / f32(p.width) + p.eps);
    for (var i = ids.lid; i < p.width; i += WG) {
        y[base + i] = T(f32(x[base + i]) * inv_rms * (f32(w[i]) + p.weight_bias));
    }
}
