// Activations to int8 for the int8-activation matmul path: each block of 32 values of x [M, K]
// gets a scale d = max|x| / 127 and q = round(x / d) in -127..127. Output:
//   xq [M, K/4] u32: per group of eight values two words, values 0,2,4,6 then 1,3,5,7 of the
//      group (the order common/dequant.wgsl's load8_i8 unpacks 4-bit weights into);
//   xd [M, K/32] f32: the block scales;
//   xs [M, K/8] f32: the exact sum of each group of eight values, so the weights' per-group
//      offsets (Q4_0's -8d, Q4_1's m, the K-quant mins) multiply exact sums, not quantized ones.
// One invocation per block.
#include "common/ids"

struct Params {
    blocks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> xq: array<u32>;
@group(0) @binding(2) var<storage, read_write> xd: array<f32>;
@group(0) @binding(3) var<storage, read_write> xs: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<T>;

@compute @workgroup_size(WG)
fn quantize_act_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let blk = group_id(wg, nwg) * WG + ids.lid;
    if (blk >= p.blocks) {
        return;
    }
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        amax = max(amax, abs(f32(x[32u * blk + i])));
    }
    let d = amax / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    for (var g = 0u; g < 4u; g++) {
        var lo = 0u;
        var hi = 0u;
        var sum = 0.0;
        for (var b = 0u; b < 4u; b++) {
            let e = 32u * blk + 8u * g + 2u * b;
            sum += f32(x[e]) + f32(x[e + 1u]);
            let q0 = clamp(i32(round(f32(x[e]) * inv)), -127, 127);
            let q1 = clamp(i32(round(f32(x[e + 1u]) * inv)), -127, 127);
            lo |= (bitcast<u32>(q0) & 0xffu) << (8u * b);
            hi |= (bitcast<u32>(q1) & 0xffu) << (8u * b);
        }
        xq[8u * blk + 2u * g] = lo;
        xq[8u * blk + 2u * g + 1u] = hi;
        xs[4u * blk + g] = sum;
    }
    xd[blk] = d;
}
