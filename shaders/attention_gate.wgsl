// Sigmoid gates, in place: x[t, h, d] *= sigmoid(g), with g one value per element
// (elementwise) or per head (headwise) read through a strided layout
// g[t * token_stride + h * head_stride + offset (+ d)], so a gate packed beside q in one
// projection row (Qwen3-Next) is read where it lies.
// Used for the query gate q ← q ⊙ σ(W·m_t) and for attention's output gate where the
// attention kernel has no binding left to fuse it.
// One invocation per element of x [tokens, heads, head_dim].
#include "common/ids"

// sigmoid without overflow at either end.
fn sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
}

#ifndef BACKWARD
struct Params {
    n: u32,           // tokens * heads * head_dim
    heads: u32,
    head_dim: u32,
    token_stride: u32,
    head_stride: u32,
    offset: u32,
    headwise: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<T>;
@group(0) @binding(2) var<storage, read_write> x: array<T>;

@compute @workgroup_size(WG)
fn gate_apply(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    if (i >= p.n) {
        return;
    }
    let d = i % p.head_dim;
    let h = (i / p.head_dim) % p.heads;
    let t = i / (p.head_dim * p.heads);
    var g = t * p.token_stride + h * p.head_stride + p.offset;
    if (p.headwise == 0u) {
        g += d;
    }
    x[i] = T(f32(x[i]) * sigmoid(f32(gate[g])));
}
#else
// BACKWARD (elementwise gate, contiguous logits g [tokens, heads, head_dim]): with
// y = a * sigmoid(g),  da = dy * sigmoid(g),  dg = dy * a * sigmoid(g) * (1 - sigmoid(g)).
struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> g: array<T>;
@group(0) @binding(3) var<storage, read> dy: array<T>;
@group(0) @binding(4) var<storage, read_write> da: array<T>;
@group(0) @binding(5) var<storage, read_write> dg: array<T>;

@compute @workgroup_size(WG)
fn gate_backward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    if (i >= p.n) {
        return;
    }
    let s = sigmoid(f32(g[i]));
    let d = f32(dy[i]);
    da[i] = T(d * s);
    dg[i] = T(d * f32(a[i]) * s * (1.0 - s));
}
#endif
