// Elementwise activations, plain (y = act(x)) or gated (GATED: y = act(gate) * up, the
// SwiGLU / GeGLU of a transformer MLP). ACT selects the function:
//   0 SiLU          x * sigmoid(x)
//   1 GELU (erf)    0.5 x (1 + erf(x / sqrt 2))
//   2 GELU (tanh)   0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// Gated inputs may be strided views of one fused gate|up row (gate at gate_offset, up at
// up_offset, both with in_stride elements per row); bind the same tensor twice for that.
#include "common/ids"
#include "common/act"

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
