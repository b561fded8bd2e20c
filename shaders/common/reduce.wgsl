// Workgroup-wide reductions returning the result to every invocation.
// Call them from uniform control flow only (they contain barriers).
//
// SUBGROUPS: reduce inside each subgroup, then combine the subgroup partials. The subgroup
// size comes from the builtin, never assumed; partials are stored at lid / sg_size, which
// relies on 1-D workgroups being split into subgroups of consecutive invocation indices
// (true of Vulkan, D3D12, Metal and Dawn implementations; checked by the tests on lavapipe).
// Without SUBGROUPS: a shared-memory tree (WG must be a power of two).
#include "common/ids"

var<workgroup> red_f32: array<f32, WG>;
var<workgroup> red_key: array<u32, WG>;
var<workgroup> red_idx: array<u32, WG>;
var<workgroup> red_out_f32: f32;
var<workgroup> red_out_key: u32;
var<workgroup> red_out_idx: u32;

// The most negative finite f32; a stand-in for -inf that survives fast-math compilers.
const LOWEST_F32: f32 = -0x1.fffffep+127f;

fn wg_sum(v: f32, ids: Ids) -> f32 {
#ifdef SUBGROUPS
    let s = subgroupAdd(v);
    if (ids.sg_lane == 0u) {
        red_f32[ids.lid / ids.sg_size] = s;
    }
    workgroupBarrier();
    let n_sg = (WG + ids.sg_size - 1u) / ids.sg_size;
    var t = 0.0;
    if (ids.lid < ids.sg_size) {
        for (var i = ids.lid; i < n_sg; i += ids.sg_size) {
            t += red_f32[i];
        }
    }
    let total = subgroupAdd(t);
    if (ids.lid == 0u) {
        red_out_f32 = total;
    }
    workgroupBarrier();
    let r = red_out_f32;
    workgroupBarrier();
    return r;
#else
    red_f32[ids.lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (ids.lid < s) {
            red_f32[ids.lid] += red_f32[ids.lid + s];
        }
        workgroupBarrier();
    }
    let r = red_f32[0];
    workgroupBarrier();
    return r;
#endif
}

fn wg_max(v: f32, ids: Ids) -> f32 {
#ifdef SUBGROUPS
    let s = subgroupMax(v);
    if (ids.sg_lane == 0u) {
        red_f32[ids.lid / ids.sg_size] = s;
    }
    workgroupBarrier();
    let n_sg = (WG + ids.sg_size - 1u) / ids.sg_size;
    var t = LOWEST_F32;
    if (ids.lid < ids.sg_size) {
        for (var i = ids.lid; i < n_sg; i += ids.sg_size) {
            t = max(t, red_f32[i]);
        }
    }
    let m = subgroupMax(t);
    if (ids.lid == 0u) {
        red_out_f32 = m;
    }
    workgroupBarrier();
    let r = red_out_f32;
    workgroupBarrier();
    return r;
#else
    red_f32[ids.lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (ids.lid < s) {
            red_f32[ids.lid] = max(red_f32[ids.lid], red_f32[ids.lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f32[0];
    workgroupBarrier();
    return r;
#endif
}

// Order-preserving map from f32 bits to u32: a > b as floats <=> key(a) > key(b).
// NaNs map to 0, below every number (-inf included), so they never win a maximum; -0 maps
// like +0 so the two compare equal, as floats do.
// Integer keys keep argmax exact and immune to compilers that assume no NaNs.
fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return 0u;
    }
    if ((b & 0x7fffffffu) == 0u) {
        return 0x80000000u;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

// Is (ka, ia) before (kb, ib): larger key first, then lower index.
fn key_before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// Workgroup arg-max over (key, index) pairs: the largest key, lowest index among equals.
// Returns vec2(key, index) to every invocation.
fn wg_argmax_key(key: u32, idx: u32, ids: Ids) -> vec2<u32> {
#ifdef SUBGROUPS
    let m = subgroupMax(key);
    let i = subgroupMin(select(0xffffffffu, idx, key == m));
    if (ids.sg_lane == 0u) {
        red_key[ids.lid / ids.sg_size] = m;
        red_idx[ids.lid / ids.sg_size] = i;
    }
    workgroupBarrier();
    let n_sg = (WG + ids.sg_size - 1u) / ids.sg_size;
    var bk = 0u;
    var bi = 0xffffffffu;
    if (ids.lid < ids.sg_size) {
        for (var j = ids.lid; j < n_sg; j += ids.sg_size) {
            if (key_before(red_key[j], red_idx[j], bk, bi)) {
                bk = red_key[j];
                bi = red_idx[j];
            }
        }
    }
    let m2 = subgroupMax(bk);
    let i2 = subgroupMin(select(0xffffffffu, bi, bk == m2));
    if (ids.lid == 0u) {
        red_out_key = m2;
        red_out_idx = i2;
    }
    workgroupBarrier();
    let r = vec2<u32>(red_out_key, red_out_idx);
    workgroupBarrier();
    return r;
#else
    red_key[ids.lid] = key;
    red_idx[ids.lid] = idx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (ids.lid < s) {
            let ok = red_key[ids.lid + s];
            let oi = red_idx[ids.lid + s];
            if (key_before(ok, oi, red_key[ids.lid], red_idx[ids.lid])) {
                red_key[ids.lid] = ok;
                red_idx[ids.lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = vec2<u32>(red_key[0], red_idx[0]);
    workgroupBarrier();
    return r;
#endif
}
