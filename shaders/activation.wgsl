// Elementwise activations, plain (y = act(x)) or gated (GATED: y = act(gate) * up, the
// SwiGLU / GeGLU of a transformer MLP). ACT selects the function:
//   0 SiLU          x * sigmoid(x)
//   1 GELU (erf)    0.5 x (1 + erf(x / sqrt 2))
//   2 GELU (tanh)   0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// Gated inputs may be strided views of one fused gate|up row (gate at gate_offset, up at
// up_offset, both with in_stride elements per row); bind the same tensor twice for that.
#include "common/ids"
#include "common/act"

#ifndef BACKWARD
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
#else
// Backward of the gated form (BACKWARD): with y = act(g) * u,
//   dg = dy * u * act'(g),   du = dy * act(g),
// read from a gate|up layout like the forward's (in_stride, gate_offset, up_offset) and
// written into one tensor with its own layout (out_stride, dgate_offset, dup_offset): the
// fused [rows, 2w] layout feeds one transposed matmul through the stacked gate|up weight.
struct Params {
    rows: u32,
    width: u32,
    in_stride: u32,
    gate_offset: u32,
    up_offset: u32,
    out_stride: u32,
    dgate_offset: u32,
    dup_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<T>;
@group(0) @binding(2) var<storage, read> up: array<T>;
@group(0) @binding(3) var<storage, read> dy: array<T>;
@group(0) @binding(4) var<storage, read_write> dgu: array<T>;

@compute @workgroup_size(WG)
fn gated_activation_backward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gid = group_id(wg, nwg) * WG + ids.lid;
    if (gid >= p.rows * p.width) {
        return;
    }
    let r = gid / p.width;
    let c = gid % p.width;
    let g = f32(gate[r * p.in_stride + p.gate_offset + c]);
    let u = f32(up[r * p.in_stride + p.up_offset + c]);
    let d = f32(dy[gid]);
    dgu[r * p.out_stride + p.dgate_offset + c] = T(d * u * act_grad(g));
    dgu[r * p.out_stride + p.dup_offset + c] = T(d * act(g));
}
#endif
