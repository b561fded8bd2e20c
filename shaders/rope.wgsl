// Rotary position embedding, out of place, over x[token, head, dim].
// Each invocation handles one pair of a head: pair j < n_rot/2 is rotated by the angle
// table[pos][j] (cos, sin), pairs past n_rot/2 are copied unchanged (partial rotary dims).
//   normal (GPT-J / llama.cpp "norm") layout: the pair is (2j, 2j+1);
//   NeoX layout: the pair is (j, j + n_rot/2).
// The cos/sin table is computed on the host in f64 (see ops/rope.rs): in-shader sin/cos of
// large angles is not accurate enough (WGSL only promises 2^-11 absolute error).
// Input rows may be strided (Q or K read from a fused QKV row at in_offset), and so may output
// rows (out_offset).
//
// BACKWARD: the transpose (the rotation by -angle), for the gradient: dx = R^T dy, reading the
// contiguous gradient of the rotated heads and writing where the projection's gradient goes
// (out_stride/out_offset: the Q or K columns of a fused projection's gradient).
#include "common/ids"

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    n_rot: u32,
    in_stride: u32,   // elements between tokens in x
    in_offset: u32,   // first element of head 0 of token 0 in x
    out_stride: u32,  // elements between tokens in y
    neox: u32,
    out_offset: u32,  // first element of head 0 of token 0 in y
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;

@compute @workgroup_size(WG)
fn rope_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half_dim = p.head_dim / 2u;
    let gid = group_id(wg, nwg) * WG + ids.lid;
    if (gid >= p.tokens * p.heads * half_dim) {
        return;
    }
    let j = gid % half_dim;
    let head = (gid / half_dim) % p.heads;
    let tok = gid / (half_dim * p.heads);
    let src = tok * p.in_stride + p.in_offset + head * p.head_dim;
    let dst = tok * p.out_stride + p.out_offset + head * p.head_dim;
    let half_rot = p.n_rot / 2u;
    if (j >= half_rot) {
        // Pass-through dims: pair j copies elements n_rot + 2(j - half_rot) and the next.
        let d = p.n_rot + 2u * (j - half_rot);
        y[dst + d] = x[src + d];
        y[dst + d + 1u] = x[src + d + 1u];
        return;
    }
    var i0 = 2u * j;
    var i1 = 2u * j + 1u;
    if (p.neox != 0u) {
        i0 = j;
        i1 = j + half_rot;
    }
    let cs = table[positions[tok] * half_rot + j];
#ifdef BACKWARD
    let sin_t = -cs.y;
#else
    let sin_t = cs.y;
#endif
    let x0 = f32(x[src + i0]);
    let x1 = f32(x[src + i1]);
    y[dst + i0] = T(x0 * cs.x - x1 * sin_t);
    y[dst + i1] = T(x0 * sin_t + x1 * cs.x);
}
