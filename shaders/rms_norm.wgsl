// RMSNorm over rows: y = x / sqrt(mean(x^2) + eps) * (w + weight_bias).
// weight_bias is 0 for llama-style norms and 1 for Gemma's (1 + w) form. One workgroup per
// row; WG = 256 for model-width rows, 64 for short rows such as the per-head QK-norm
// (rows = tokens * heads, width = head_dim, one weight vector shared by all heads).
// Storage T (f32 or f16), accumulation f32.
#include "common/reduce"

#ifndef BACKWARD
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
#endif

// Backward, paired with rms_norm_forward (llm.c style). With r = 1/sqrt(mean(x^2) + eps),
// w' = w + weight_bias and g = dy * w':
//   dx_i = r * g_i - x_i * r^3 * mean_j(g_j * x_j)
//   dw_i = sum over rows of dy_i * x_i * r          (rms_norm_backward_weight)
// rms_norm_backward writes dx (dx += ... when accumulate = 1: the residual stream's gradient
// arrives there already) and each row's r into `rstd` for the weight pass. Each pass is its own
// variant (BACKWARD, + WEIGHT_GRAD), so no entry point sees another's bindings.
#ifdef BACKWARD
#ifndef WEIGHT_GRAD
struct BackParams {
    rows: u32,
    width: u32,
    eps: f32,
    weight_bias: f32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> bp: BackParams;
@group(0) @binding(1) var<storage, read> bx: array<T>;
@group(0) @binding(2) var<storage, read> bw: array<T>;
@group(0) @binding(3) var<storage, read> bdy: array<T>;
@group(0) @binding(4) var<storage, read_write> bdx: array<T>;
@group(0) @binding(5) var<storage, read_write> brstd: array<f32>;

@compute @workgroup_size(WG)
fn rms_norm_backward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= bp.rows) {
        return;
    }
    let base = row * bp.width;
    var ss = 0.0;
    var gx = 0.0;
    for (var i = ids.lid; i < bp.width; i += WG) {
        let v = f32(bx[base + i]);
        ss += v * v;
        gx += f32(bdy[base + i]) * (f32(bw[i]) + bp.weight_bias) * v;
    }
    let n = f32(bp.width);
    let r = inverseSqrt(wg_sum(ss, ids) / n + bp.eps);
    let c = r * r * r * wg_sum(gx, ids) / n;
    for (var i = ids.lid; i < bp.width; i += WG) {
        let g = f32(bdy[base + i]) * (f32(bw[i]) + bp.weight_bias);
        var d = r * g - f32(bx[base + i]) * c;
        if (bp.accumulate != 0u) {
            d += f32(bdx[base + i]);
        }
        bdx[base + i] = T(d);
    }
    if (ids.lid == 0u) {
        brstd[row] = r;
    }
}

#else
// dw (f32, the trainable weight's gradient; dw += ... when accumulate = 1, for gradient
// accumulation across micro-batches): one invocation per column, rows summed in order, so the
// result is deterministic.
struct WeightParams {
    rows: u32,
    width: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> wp: WeightParams;
@group(0) @binding(1) var<storage, read> wx: array<T>;
@group(0) @binding(2) var<storage, read> wdy: array<T>;
@group(0) @binding(3) var<storage, read> wrstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> wdw: array<f32>;

@compute @workgroup_size(WG)
fn rms_norm_backward_weight(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = group_id(wg, nwg) * WG + ids.lid;
    if (col >= wp.width) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < wp.rows; r++) {
        let at = r * wp.width + col;
        acc += f32(wdy[at]) * f32(wx[at]) * wrstd[r];
    }
    if (wp.accumulate != 0u) {
        acc += wdw[col];
    }
    wdw[col] = acc;
}
#endif
#endif
