// Fused causal attention for a chunk of new tokens (prefill), FlashAttention-style.
//
// Queries q [tokens, n_heads, HD] at positions pos0 .. pos0+tokens-1 of one sequence attend
// to keys at positions kp <= p (causal) and, with a window W, p - kp < W. Keys before pos0
// come from the sequence's KV cache (slot kp % slots), keys from pos0 on from this chunk's
// k_new/v_new [tokens, n_kv_heads, HD] (so a rolling cache can be written after the chunk).
// Grouped-query attention: query head h reads KV head h / group.
// Output o [tokens, n_heads, HD] and each row's log-sum-exp (natural log) lse [tokens, n_heads].
// SINKS: a learned logit per query head joins every row's softmax without a value (gpt-oss).
//
// Work split: a workgroup takes one KV head and R consecutive "rows", a row being a pair
// (token t, query head of this KV head) flattened as t * group + g, so the rows of every
// query head sharing the KV head reuse one staged K/V tile. The key loop runs over tiles of BK
// positions from the tile's lowest allowed key (window) to its highest (causal): tiles wholly
// outside the mask are never visited; inside a visited tile, keys are masked per row.
// Per tile: stage K and V (f32), scores S = Q·Kᵀ·scale (+ softcap) into workgroup memory, an
// online-softmax update per row (running max m, sum l, rescale factor), then O = O·α + P·V
// with O held in registers (4 vec4s per invocation).
//
// Workgroup memory (WebGPU guarantees 16 KiB), R = BK = 1024 / HD, WG = 64:
//   Q tile R·HD f32 = 4 KiB, K and V tiles BK·HD f32 = 4 KiB each, S R·BK f32, 3·R stats:
//   HD  64: R = BK = 16 → 12 KiB + 1 KiB   + 192 B = 13.2 KiB
//   HD 128: R = BK =  8 → 12 KiB + 256 B   +  96 B = 12.3 KiB
//   HD 256: R = BK =  4 → 12 KiB + 64 B    +  48 B = 12.1 KiB
// No cross-invocation reduction: each row's max/sum over a tile's BK scores is a short serial
// loop by one invocation, so this kernel has no subgroup variant.
#include "common/ids"

struct Params {
    tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    pos0: u32,
    cache_base: u32,  // first cache row (slot) of this sequence: seq * slots
    slots: u32,
    window: u32,      // 0xffffffff: no window
    scale: f32,
    softcap: f32,     // 0: off
    row_tiles: u32,   // ceil(tokens * group / R)
}

const R: u32 = 1024u / HD;
const BK: u32 = 1024u / HD;
const HD4: u32 = HD / 4u;
const ACC4: u32 = R * HD4 / WG;
const NS: u32 = (R * BK + WG - 1u) / WG;
const LOWEST: f32 = -0x1.fffffep+127f;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k_new: array<T>;
@group(0) @binding(3) var<storage, read> v_new: array<T>;
@group(0) @binding(4) var<storage, read> k_cache: array<T>;
@group(0) @binding(5) var<storage, read> v_cache: array<T>;
@group(0) @binding(6) var<storage, read_write> o: array<T>;
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;
#ifdef SINKS
@group(0) @binding(8) var<storage, read> sinks: array<f32>;
#endif

// Tiles as vec4 rows of HD4 = HD / 4 elements.
var<workgroup> qs: array<vec4<f32>, R * HD4>;
var<workgroup> ks: array<vec4<f32>, BK * HD4>;
var<workgroup> vs: array<vec4<f32>, BK * HD4>;
var<workgroup> sc: array<f32, R * BK>;
var<workgroup> row_m: array<f32, R>;
var<workgroup> row_l: array<f32, R>;
var<workgroup> row_a: array<f32, R>;

fn q4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(q[at]), f32(q[at + 1u]), f32(q[at + 2u]), f32(q[at + 3u]));
}
fn k_new4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(k_new[at]), f32(k_new[at + 1u]), f32(k_new[at + 2u]), f32(k_new[at + 3u]));
}
fn v_new4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(v_new[at]), f32(v_new[at + 1u]), f32(v_new[at + 2u]), f32(v_new[at + 3u]));
}
fn k_cache4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(k_cache[at]), f32(k_cache[at + 1u]), f32(k_cache[at + 2u]), f32(k_cache[at + 3u]));
}
fn v_cache4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(v_cache[at]), f32(v_cache[at + 1u]), f32(v_cache[at + 2u]), f32(v_cache[at + 3u]));
}

#include "common/attention_logit"

// May a row at query position qpos see key position kp?
fn allowed(row_ok: bool, qpos: u32, kp: u32) -> bool {
    return row_ok && kp <= qpos && qpos - kp < p.window;
}

// Loops are vectorised and unrolled by 4 (BK and HD4 are multiples of 4) to keep the loop
// trip count per tile small: llvmpipe (lavapipe) caps the back-edges one invocation may take
// in a whole shader at 65535 and silently leaves the loop after that (seen here as wrong
// results from ~200 tiles on with scalar loops). With ~80 per tile a workgroup walks ~800 tiles
// on lavapipe (checked: 12k keys at HD 64, 6k at HD 256); GPUs have no such cap.
@compute @workgroup_size(WG)
fn attention_prefill(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let gid = group_id(wg, nwg);
    if (gid >= p.row_tiles * p.n_kv_heads) {
        return;
    }
    let kvh = gid / p.row_tiles;
    let row0 = (gid % p.row_tiles) * R;
    let rows = p.tokens * p.group;
    let last_row = min(row0 + R, rows) - 1u;
    // Keys any row of this tile may see: [lo, hi).
    let hi = p.pos0 + last_row / p.group + 1u;
    let first_q = p.pos0 + row0 / p.group;
    var lo = 0u;
    if (first_q + 1u > p.window) {
        lo = first_q + 1u - p.window;
    }
    let key_end = p.pos0 + p.tokens;

    // Stage this tile's queries.
    for (var e = lid; e < R * HD4; e += WG) {
        let row = row0 + e / HD4;
        var x = vec4<f32>(0.0);
        if (row < rows) {
            let h = kvh * p.group + row % p.group;
            x = q4(((row / p.group) * p.n_heads + h) * HD + (e % HD4) * 4u);
        }
        qs[e] = x;
    }
    if (lid < R) {
        row_m[lid] = LOWEST;
        row_l[lid] = 0.0;
    }
    var acc: array<vec4<f32>, ACC4>;

    for (var kt = lo; kt < hi; kt += BK) {
        // Stage K and V for positions kt .. kt+BK-1 (cache before pos0, this chunk after).
        for (var e = lid; e < BK * HD4; e += WG) {
            let kp = kt + e / HD4;
            let d = (e % HD4) * 4u;
            var kx = vec4<f32>(0.0);
            var vx = vec4<f32>(0.0);
            if (kp < key_end) {
                if (kp >= p.pos0) {
                    let at = ((kp - p.pos0) * p.n_kv_heads + kvh) * HD + d;
                    kx = k_new4(at);
                    vx = v_new4(at);
                } else {
                    let at = ((p.cache_base + kp % p.slots) * p.n_kv_heads + kvh) * HD + d;
                    kx = k_cache4(at);
                    vx = v_cache4(at);
                }
            }
            ks[e] = kx;
            vs[e] = vx;
        }
        workgroupBarrier();
        // Scores. Invocations of one row start their dot products at different vec4s (j)
        // so they do not all read one shared-memory bank.
        for (var n = 0u; n < NS; n++) {
            let e = lid + n * WG;
            if (e < R * BK) {
                let r = e / BK;
                let j = e % BK;
                var dot4 = vec4<f32>(0.0);
                for (var i = 0u; i < HD4; i += 4u) {
                    let d0 = (i + j) % HD4;
                    let d1 = (i + j + 1u) % HD4;
                    let d2 = (i + j + 2u) % HD4;
                    let d3 = (i + j + 3u) % HD4;
                    dot4 += qs[r * HD4 + d0] * ks[j * HD4 + d0] + qs[r * HD4 + d1] * ks[j * HD4 + d1]
                          + qs[r * HD4 + d2] * ks[j * HD4 + d2] + qs[r * HD4 + d3] * ks[j * HD4 + d3];
                }
                sc[e] = logit(dot4.x + dot4.y + dot4.z + dot4.w);
            }
        }
        workgroupBarrier();
        // Online softmax, one invocation per row: masked keys get probability 0.
        if (lid < R) {
            let row = row0 + lid;
            let row_ok = row < rows;
            let qpos = p.pos0 + row / p.group;
            let m_old = row_m[lid];
            var mx = m_old;
            for (var j = 0u; j < BK; j++) {
                if (allowed(row_ok, qpos, kt + j)) {
                    mx = max(mx, sc[lid * BK + j]);
                }
            }
            var sum = 0.0;
            for (var j = 0u; j < BK; j++) {
                var pr = 0.0;
                if (allowed(row_ok, qpos, kt + j)) {
                    pr = exp(sc[lid * BK + j] - mx);
                }
                sc[lid * BK + j] = pr;
                sum += pr;
            }
            let alpha = select(exp(m_old - mx), 0.0, m_old <= LOWEST);
            row_l[lid] = row_l[lid] * alpha + sum;
            row_m[lid] = mx;
            row_a[lid] = alpha;
        }
        workgroupBarrier();
        // O = O·α + P·V: invocation owns vec4 e = lid + i·WG of the R x HD4 output tile.
        for (var i = 0u; i < ACC4; i++) {
            let e = lid + i * WG;
            let r = e / HD4;
            let d = e % HD4;
            var a = acc[i] * row_a[r];
            for (var j = 0u; j < BK; j += 4u) {
                a += sc[r * BK + j] * vs[j * HD4 + d] + sc[r * BK + j + 1u] * vs[(j + 1u) * HD4 + d]
                   + sc[r * BK + j + 2u] * vs[(j + 2u) * HD4 + d] + sc[r * BK + j + 3u] * vs[(j + 3u) * HD4 + d];
            }
            acc[i] = a;
        }
        workgroupBarrier();
    }

    // Finish each row: the optional sink logit (SINKS: a per-head softmax column that carries
    // no value, as in gpt-oss), the normaliser and the log-sum-exp.
    if (lid < R && row0 + lid < rows) {
        let row = row0 + lid;
        let h = kvh * p.group + row % p.group;
        var m = row_m[lid];
        var l = row_l[lid];
        var a = 1.0;
#ifdef SINKS
        let sink = sinks[h];
        let mn = max(m, sink);
        a = exp(m - mn);
        l = l * a + exp(sink - mn);
        m = mn;
#endif
        row_a[lid] = a / l;
        lse[(row / p.group) * p.n_heads + h] = m + log(l);
    }
    workgroupBarrier();
    for (var i = 0u; i < ACC4; i++) {
        let e = lid + i * WG;
        let row = row0 + e / HD4;
        if (row < rows) {
            let h = kvh * p.group + row % p.group;
            let at = ((row / p.group) * p.n_heads + h) * HD + (e % HD4) * 4u;
            let x = acc[i] * row_a[e / HD4];
            o[at] = T(x.x);
            o[at + 1u] = T(x.y);
            o[at + 2u] = T(x.z);
            o[at + 3u] = T(x.w);
        }
    }
}
