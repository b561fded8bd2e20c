// Attention backward (FlashAttention-2's two passes), for training over packed sequences
// without a KV cache: q [tokens, n_heads, HD], k, v [tokens, n_kv_heads, HD], the forward's
// output o (ungated) and log-sum-exp lse [tokens, n_heads] (natural log of the scaled scores,
// as attention_prefill writes it), and the gradient dout of o. With s_ij = scale q_i.k_j,
// p_ij = exp(s_ij - lse_i) (the forward's softmax, recomputed) and D_i = dout_i . o_i:
//   dv_j = sum_i p_ij dout_i          dp_ij = dout_i . v_j
//   ds_ij = p_ij (dp_ij - D_i)        dq_i = scale sum_j ds_ij k_j     dk_j = scale sum_i ds_ij q_i
// over the pairs the forward's mask allowed: j <= i, i - j < window, and (DOCS) j inside i's
// document. Grouped-query attention: dk and dv of a KV head sum over its query heads.
// Softcap and sinks have no backward here (the op refuses them).
//
// Three entry points, each its own variant:
//   DELTA  one invocation per (token, head): stats[t, h] = (lse, D)
//   (none) attention_backward_kv: a workgroup per (KV head, block of KB keys); invocation
//          (key, chunk) holds its key's K and V chunk of HD/CH dims and its dk, dv chunk in
//          registers; each (query, head of the group) is staged in workgroup memory, the two
//          dot products are chunk partials summed through workgroup memory.
//   DQ     attention_backward_q: the mirror, a workgroup per (query head, block of KB
//          queries), each key's K and V staged.
// Every sum runs in one fixed order, so results are deterministic (no atomics).
// DOCS: doc_bounds [tokens] = (first, one past last) position of the token's document; the
// loops' bounds come from it through workgroupUniformLoad, so other documents' pairs are never
// visited. Workgroup memory: 2 HD + 2 WG f32 (3 KiB at HD 256).
#include "common/ids"

const KB: u32 = 16u;
const CH: u32 = 8u;
const DPC: u32 = HD / CH;

struct Params {
    tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    window: u32,  // 0xffffffff: none
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

#ifdef DELTA
@group(0) @binding(1) var<storage, read> dout: array<T>;
@group(0) @binding(2) var<storage, read> o: array<T>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(64)
fn attention_backward_delta(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg) * 64u + ids.lid;
    if (row >= p.tokens * p.n_heads) {
        return;
    }
    var d = 0.0;
    for (var e = 0u; e < HD; e++) {
        d += f32(dout[row * HD + e]) * f32(o[row * HD + e]);
    }
    stats[2u * row] = lse[row];
    stats[2u * row + 1u] = d;
}
#else

@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(4) var<storage, read> dout: array<T>;
@group(0) @binding(5) var<storage, read> stats: array<f32>;
#ifdef DQ
@group(0) @binding(6) var<storage, read_write> dq: array<T>;
#ifdef DOCS
@group(0) @binding(7) var<storage, read> doc_bounds: array<vec2<u32>>;
#endif
#else
@group(0) @binding(6) var<storage, read_write> dk: array<T>;
@group(0) @binding(7) var<storage, read_write> dv: array<T>;
#ifdef DOCS
@group(0) @binding(8) var<storage, read> doc_bounds: array<vec2<u32>>;
#endif
#endif

var<workgroup> stage_a: array<f32, HD>;
var<workgroup> stage_b: array<f32, HD>;
var<workgroup> part_s: array<f32, 128>;
var<workgroup> part_d: array<f32, 128>;
var<workgroup> bound: u32;

// May query i see key j (the forward's mask)?
fn visible(i: u32, j: u32) -> bool {
    var ok = j <= i && i - j < p.window;
#ifdef DOCS
    ok = ok && j >= doc_bounds[i].x;
#endif
    return ok;
}

// The two chunk partials of this invocation, summed over its row's CH invocations.
fn chunk_sums(ids: Ids, row: u32, ps: f32, pd: f32) -> vec2<f32> {
    part_s[ids.lid] = ps;
    part_d[ids.lid] = pd;
    workgroupBarrier();
    var s = 0.0;
    var d = 0.0;
    for (var c = 0u; c < CH; c++) {
        s += part_s[row * CH + c];
        d += part_d[row * CH + c];
    }
    return vec2<f32>(s, d);
}

#ifndef DQ
@compute @workgroup_size(128)
fn attention_backward_kv(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let blocks = (p.tokens + KB - 1u) / KB;
    let g = group_id(wg, nwg);
    let kvh = g / blocks;
    let j0 = (g % blocks) * KB;
    let kj = ids.lid / CH;
    let c = ids.lid % CH;
    let j = j0 + kj;
    let key_ok = j < p.tokens && kvh < p.n_kv_heads;
    var kr: array<f32, DPC>;
    var vr: array<f32, DPC>;
    var adk: array<f32, DPC>;
    var adv: array<f32, DPC>;
    let kbase = (j * p.n_kv_heads + kvh) * HD + c * DPC;
    for (var d = 0u; d < DPC; d++) {
        kr[d] = 0.0;
        vr[d] = 0.0;
        if (key_ok) {
            kr[d] = f32(k[kbase + d]);
            vr[d] = f32(v[kbase + d]);
        }
        adk[d] = 0.0;
        adv[d] = 0.0;
    }
    // Queries that can see a key of this block: from j0 to the window's (or the last key's
    // document's) end.
    let last = min(j0 + KB, p.tokens) - 1u;
    var end = p.tokens;
    if (p.window != 0xffffffffu) {
        end = min(end, last + p.window);
    }
#ifdef DOCS
    if (ids.lid == 0u) {
        bound = doc_bounds[last].y;
    }
    end = min(end, workgroupUniformLoad(&bound));
#endif
    for (var i = j0; i < end; i++) {
        for (var h = 0u; h < p.group; h++) {
            let qh = kvh * p.group + h;
            let qbase = (i * p.n_heads + qh) * HD;
            for (var e = ids.lid; e < HD; e += 128u) {
                stage_a[e] = f32(q[qbase + e]);
                stage_b[e] = f32(dout[qbase + e]);
            }
            workgroupBarrier();
            var ps = 0.0;
            var pd = 0.0;
            for (var d = 0u; d < DPC; d++) {
                ps += stage_a[c * DPC + d] * kr[d];
                pd += stage_b[c * DPC + d] * vr[d];
            }
            let sums = chunk_sums(ids, kj, ps, pd);
            let st = vec2<f32>(stats[2u * (i * p.n_heads + qh)], stats[2u * (i * p.n_heads + qh) + 1u]);
            if (key_ok && visible(i, j)) {
                let pr = exp(sums.x * p.scale - st.x);
                let ds = pr * (sums.y - st.y) * p.scale;
                for (var d = 0u; d < DPC; d++) {
                    adv[d] += pr * stage_b[c * DPC + d];
                    adk[d] += ds * stage_a[c * DPC + d];
                }
            }
            workgroupBarrier();
        }
    }
    if (key_ok) {
        for (var d = 0u; d < DPC; d++) {
            dk[kbase + d] = T(adk[d]);
            dv[kbase + d] = T(adv[d]);
        }
    }
}
#else
@compute @workgroup_size(128)
fn attention_backward_q(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let blocks = (p.tokens + KB - 1u) / KB;
    let g = group_id(wg, nwg);
    let qh = g / blocks;
    let i0 = (g % blocks) * KB;
    let qi = ids.lid / CH;
    let c = ids.lid % CH;
    let i = i0 + qi;
    let query_ok = i < p.tokens && qh < p.n_heads;
    let kvh = qh / p.group;
    var qr: array<f32, DPC>;
    var dor: array<f32, DPC>;
    var adq: array<f32, DPC>;
    let qbase = (i * p.n_heads + qh) * HD + c * DPC;
    for (var d = 0u; d < DPC; d++) {
        qr[d] = 0.0;
        dor[d] = 0.0;
        if (query_ok) {
            qr[d] = f32(q[qbase + d]);
            dor[d] = f32(dout[qbase + d]);
        }
        adq[d] = 0.0;
    }
    var st = vec2<f32>(0.0, 0.0);
    if (query_ok) {
        st = vec2<f32>(stats[2u * (i * p.n_heads + qh)], stats[2u * (i * p.n_heads + qh) + 1u]);
    }
    // Keys this block's queries can see: from the window's (or the first query's document's)
    // start to the last query.
    let end = min(i0 + KB, p.tokens);
    var start = 0u;
    if (p.window != 0xffffffffu && i0 + 1u > p.window) {
        start = i0 + 1u - p.window;
    }
#ifdef DOCS
    if (ids.lid == 0u) {
        bound = doc_bounds[min(i0, p.tokens - 1u)].x;
    }
    start = max(start, workgroupUniformLoad(&bound));
#endif
    for (var j = start; j < end; j++) {
        let kbase = (j * p.n_kv_heads + kvh) * HD;
        for (var e = ids.lid; e < HD; e += 128u) {
            stage_a[e] = f32(k[kbase + e]);
            stage_b[e] = f32(v[kbase + e]);
        }
        workgroupBarrier();
        var ps = 0.0;
        var pd = 0.0;
        for (var d = 0u; d < DPC; d++) {
            ps += qr[d] * stage_a[c * DPC + d];
            pd += dor[d] * stage_b[c * DPC + d];
        }
        let sums = chunk_sums(ids, qi, ps, pd);
        if (query_ok && visible(i, j)) {
            let pr = exp(sums.x * p.scale - st.x);
            let ds = pr * (sums.y - st.y) * p.scale;
            for (var d = 0u; d < DPC; d++) {
                adq[d] += ds * stage_a[c * DPC + d];
            }
        }
        workgroupBarrier();
    }
    if (query_ok) {
        for (var d = 0u; d < DPC; d++) {
            dq[qbase + d] = T(adq[d]);
        }
    }
}
#endif
#endif
