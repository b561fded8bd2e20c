// Quantized matrix-vector product for decode: y[m, :] (+)= x[m, :] · Wᵀ (+ bias), m < M ≤ 8.
// W is one row-part of a repacked GGUF matrix (common/dequant.wgsl): `n` rows of `k` columns,
// producing output columns row_offset .. row_offset + n of y (row stride y_stride), so a
// matrix split across several bindings is one dispatch per part.
// One workgroup per weight row: invocations stride over the row eight weights at a time
// (decoded once, used for all M activation rows), then a workgroup reduction per m.
// MT (1 or 8) is the compile-time bound on M: loops over m have a constant trip count, so
// the compiler unrolls them and keeps acc[] in registers; MT = 1 is single-sequence decode.
// Storage T (f32/f16) for x, bias and y; f32 accumulation.
// INT8: x arrives quantized (shaders/quantize_act.wgsl: int8 per 32-block, scales xd) and each
// group of eight weights is dotted as integers with dot4I8Packed:
//   Σ w·x = Σ_groups (d_x · s · Σ q_w q_x + o · Σ x)   with w = s·q_w + o per group,
// where Σ x is the group's exact sum (xs), so only the first term carries int8 error.
// GLU: W is a gate|up pair stacked by rows ([2F, K]); workgroup `row` < F dots x with gate row
// `row` and up row F + row and writes act(gate) * up (ACT as in common/act.wgsl) into y [M, F]:
// the MLP's two projections and its activation in one dispatch.
#include "common/ids"
#include "common/dequant"
#ifdef GLU
#include "common/act"
#endif

struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_offset: u32,
    y_stride: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#ifdef INT8
@group(0) @binding(1) var<storage, read_write> y: array<T>;
@group(0) @binding(2) var<storage, read> xq: array<u32>;
@group(0) @binding(3) var<storage, read> wq: array<u32>;
@group(0) @binding(4) var<storage, read> ws: array<u32>;
@group(0) @binding(5) var<storage, read> xd: array<f32>;
@group(0) @binding(6) var<storage, read> xs: array<f32>;
#ifdef BIAS
@group(0) @binding(7) var<storage, read> bias: array<T>;
#endif
#else
#include "common/matmul_io"
#endif

// Accumulators per invocation: MT sums, or MT gate sums then MT up sums.
#ifdef GLU
const NACC: u32 = 2u * MT;
#else
const NACC: u32 = MT;
#endif

var<workgroup> red: array<f32, NACC * WG>;

#ifndef INT8
fn x8(m: u32, g: u32) -> W8 {
    let o = m * p.k + 8u * g;
    return W8(
        vec4<f32>(f32(x[o]), f32(x[o + 1u]), f32(x[o + 2u]), f32(x[o + 3u])),
        vec4<f32>(f32(x[o + 4u]), f32(x[o + 5u]), f32(x[o + 6u]), f32(x[o + 7u])),
    );
}
#endif

@compute @workgroup_size(WG)
fn matmul_gemv(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.n) {
        return;
    }
    let bpr = p.k / BLOCK;
    var acc: array<f32, NACC>;
    for (var g = ids.lid; g < p.k / 8u; g += WG) {
#ifdef INT8
        let w = load8_i8(row, g, bpr);
        for (var m = 0u; m < MT; m++) {
            if (m < p.m) {
                let o = (m * p.k / 8u + g) * 2u;
                let xa = xq[o];
                let xb = xq[o + 1u];
                let isum = dot4I8Packed(w.lo, xa) + dot4I8Packed(w.hi, xb);
                acc[m] += xd[(m * p.k + 8u * g) / 32u] * w.s * f32(isum) + w.o * xs[m * p.k / 8u + g];
            }
        }
#else
        let w = load8(row, g, bpr);
#ifdef GLU
        let wu = load8(row + p.n, g, bpr);
#endif
        // A constant trip count lets the compiler unroll and keep acc[] in registers.
        for (var m = 0u; m < MT; m++) {
            if (m < p.m) {
                let xv = x8(m, g);
                acc[m] += dot(w.a, xv.a) + dot(w.b, xv.b);
#ifdef GLU
                acc[MT + m] += dot(wu.a, xv.a) + dot(wu.b, xv.b);
#endif
            }
        }
#endif
    }
#ifdef SUBGROUPS
    // Subgroup sums, then invocation a < NACC adds up the subgroup partials of sum a.
    let n_sg = (WG + ids.sg_size - 1u) / ids.sg_size;
    for (var a = 0u; a < NACC; a++) {
        let s = subgroupAdd(acc[a]);
        if (ids.sg_lane == 0u) {
            red[a * WG + ids.lid / ids.sg_size] = s;
        }
    }
    workgroupBarrier();
    if (ids.lid < NACC) {
        var v = 0.0;
        for (var i = 0u; i < n_sg; i++) {
            v += red[ids.lid * WG + i];
        }
        red[ids.lid * WG] = v;
    }
    workgroupBarrier();
#else
    for (var a = 0u; a < NACC; a++) {
        red[a * WG + ids.lid] = acc[a];
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (ids.lid < s) {
            for (var a = 0u; a < NACC; a++) {
                red[a * WG + ids.lid] += red[a * WG + ids.lid + s];
            }
        }
        workgroupBarrier();
    }
#endif
    if (ids.lid < p.m) {
        let m = ids.lid;
        var v = red[m * WG];
#ifdef GLU
        v = act(v) * red[(MT + m) * WG];
#endif
#ifdef BIAS
        v += f32(bias[p.row_offset + row]);
#endif
        let o = m * p.y_stride + p.row_offset + row;
        if (p.accumulate != 0u) {
            v += f32(y[o]);
        }
        y[o] = T(v);
    }
}
