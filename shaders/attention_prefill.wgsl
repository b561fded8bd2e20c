// Fused causal attention for a chunk of new tokens (prefill), FlashAttention-style.
//
// Queries q [tokens, n_heads, HD] at positions pos0 .. pos0+tokens-1 of one sequence attend
// to keys at positions kp <= p (causal) and, with a window W, p - kp < W. Keys before pos0
// come from the sequence's KV cache, keys from pos0 on from this chunk's
// k_new/v_new [tokens, n_kv_heads, HD] (so a rolling cache can be written after the chunk).
// Grouped-query attention: query head h reads KV head h / group.
// Output o [tokens, n_heads, HD] and each row's log-sum-exp (natural log) lse [tokens, n_heads].
// SINKS: a learned logit per query head joins every row's softmax without a value (gpt-oss).
// StreamingLLM (sink_tokens = S > 0, with a window W): keys kp < S stay visible to every
// query besides the window; the cache keeps positions < S in slots 0..S-1 and rolls the rest
// through slots S.. (cache_slot). ROPE: q and k arrive unrotated and are rotated at their
// cache-relative positions, the positions they have in the query's kept list (sinks 0..S-1,
// then the kept recent keys in order, the query last). A score depends only on the distance
// between the two positions, which is n - kp for a recent key and min(n, S+W-1) - kp for a
// sink key, so scores are computed from the unrotated q and k and the table row at that
// distance (rope_dot): no per-row rotation of a staged K tile is needed.
// GATE: the output is multiplied by sigmoid(gate) (elementwise or per head) in the epilogue;
// the log-sum-exp stays that of the ungated softmax.
// DOCS: packed documents, no cache (pos0 = 0): a query at t sees keys >= doc_start[t] only.
//
// Work split: a workgroup takes one KV head and R consecutive "rows", a row being a pair
// (token t, query head of this KV head) flattened as t * group + g, so the rows of every
// query head sharing the KV head reuse one staged K/V tile. The key loop runs over tiles of BK
// positions from the tile's lowest allowed key (window, document start) to its highest
// (causal), after the sink tiles [0, S) if any: tiles wholly outside the mask are never
// visited; inside a visited tile, keys are masked per row.
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
//
// Storage bindings (at most 8): q, k_new, v_new, o, lse, then either DOCS: doc_start
// [, sinks] [, gate], or k_cache, v_cache [, one of sinks, rope table, gate].
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
    sink_tokens: u32, // StreamingLLM S (0: off); also the cache's fixed slots
    n_rot: u32,       // ROPE: rotated dims per head (a multiple of 8)
    neox: u32,        // ROPE: 1 = NeoX pairs (i, i + n_rot/2), 0 = (2i, 2i+1)
    gate_token_stride: u32,  // GATE: elements between tokens in gate
    gate_head_stride: u32,   // GATE: elements between heads
    gate_offset: u32,        // GATE: element of token 0, head 0
    gate_headwise: u32,      // GATE: 1 = one gate per head, 0 = one per element
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
@group(0) @binding(4) var<storage, read_write> o: array<T>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
#ifdef DOCS
@group(0) @binding(6) var<storage, read> doc_start: array<u32>;
#ifdef SINKS
@group(0) @binding(7) var<storage, read> sinks: array<f32>;
#ifdef GATE
@group(0) @binding(8) var<storage, read> gate: array<T>;
#endif
#else
#ifdef GATE
@group(0) @binding(7) var<storage, read> gate: array<T>;
#endif
#endif
#else
@group(0) @binding(6) var<storage, read> k_cache: array<T>;
@group(0) @binding(7) var<storage, read> v_cache: array<T>;
#ifdef SINKS
@group(0) @binding(8) var<storage, read> sinks: array<f32>;
#endif
#ifdef ROPE
// cos/sin table [position][n_rot / 2] as (cos, sin) pairs, two pairs per vec4.
@group(0) @binding(8) var<storage, read> rope_table: array<vec4<f32>>;
#endif
#ifdef GATE
@group(0) @binding(8) var<storage, read> gate: array<T>;
#endif
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
#ifndef DOCS
fn k_cache4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(k_cache[at]), f32(k_cache[at + 1u]), f32(k_cache[at + 2u]), f32(k_cache[at + 3u]));
}
fn v_cache4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(v_cache[at]), f32(v_cache[at + 1u]), f32(v_cache[at + 2u]), f32(v_cache[at + 3u]));
}

// Cache slot of key position kp: positions < sink_tokens keep their own slot, the others
// roll through the remaining slots (sink_tokens = 0: kp % slots).
fn cache_slot(kp: u32) -> u32 {
    if (kp < p.sink_tokens) {
        return kp;
    }
    return p.sink_tokens + (kp - p.sink_tokens) % (p.slots - p.sink_tokens);
}
#endif

#include "common/attention_logit"

// May a row at query position qpos see key position kp? Causal, and inside the window unless
// kp is a StreamingLLM sink (kp < sink_tokens; 0 when off).
fn allowed(row_ok: bool, qpos: u32, kp: u32) -> bool {
    return row_ok && kp <= qpos && (qpos - kp < p.window || kp < p.sink_tokens);
}

#ifdef ROPE
// q_r · k_j with both rotated at cache-relative positions `dist` apart (RoPE scores depend on
// the distance only): per pair (x0, x1) with angle φ = dist·ω, q·k = (q0k0 + q1k1) cos φ −
// (q1k0 − q0k1) sin φ. Dims from n_rot on are not rotated.
fn rope_dot(r: u32, j: u32, dist: u32) -> f32 {
    var acc = vec4<f32>(0.0);
    let nr4 = p.n_rot / 4u;
    let tb = dist * nr4;
    if (p.neox == 0u) {
        // Pairs (2i, 2i+1): a vec4 holds two pairs, the table vec4 their (cos, sin, cos, sin).
        for (var i = 0u; i < nr4; i++) {
            let qv = qs[r * HD4 + i];
            let kv = ks[j * HD4 + i];
            let t = rope_table[tb + i];
            acc += qv * kv * t.xxzz + qv.yxwz * kv * vec4<f32>(-t.y, t.y, -t.w, t.w);
        }
    } else {
        // Pairs (i, i + n_rot/2): vec4 i of the first half pairs with vec4 i + n_rot/8.
        let h4 = nr4 / 2u;
        for (var i = 0u; i < h4; i++) {
            let qa = qs[r * HD4 + i];
            let qb = qs[r * HD4 + i + h4];
            let ka = ks[j * HD4 + i];
            let kb = ks[j * HD4 + i + h4];
            let a = rope_table[tb + 2u * i];
            let b = rope_table[tb + 2u * i + 1u];
            let c = vec4<f32>(a.x, a.z, b.x, b.z);
            let s = vec4<f32>(a.y, a.w, b.y, b.w);
            acc += (qa * ka + qb * kb) * c - (qb * ka - qa * kb) * s;
        }
    }
    for (var i = nr4; i < HD4; i++) {
        acc += qs[r * HD4 + i] * ks[j * HD4 + i];
    }
    return acc.x + acc.y + acc.z + acc.w;
}
#endif

#ifdef GATE
// sigmoid without overflow at either end.
fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}
#endif

// Loops are vectorised and unrolled by 4 (BK and HD4 are multiples of 4) to keep the loop
// trip count per tile small: llvmpipe (lavapipe) caps the back-edges one invocation may take
// in a whole shader at 65535 and silently leaves the loop after that (seen here as wrong
// results from ~200 tiles on with scalar loops). With ~80 per tile a workgroup walks ~800 tiles
// on lavapipe (checked: 12k keys at HD 64, 6k at HD 256); GPUs have no such cap. ROPE's
// rope_dot walks vec4s (or vec4 pairs) one at a time: about twice the back-edges per tile, so
// a StreamingLLM window of ~6k keys at HD 64 on lavapipe.
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
    // Keys any row of this tile may see: the sinks [0, split) and [lo, hi).
    let hi = p.pos0 + last_row / p.group + 1u;
    let first_q = p.pos0 + row0 / p.group;
    var lo = 0u;
    if (first_q + 1u > p.window) {
        lo = first_q + 1u - p.window;
    }
#ifdef DOCS
    // Nothing before the earliest document start among the tile's tokens (pos0 = 0 here).
    var dlo = first_q;
    for (var t = row0 / p.group; t <= last_row / p.group; t++) {
        dlo = min(dlo, doc_start[t]);
    }
    lo = max(lo, dlo);
#endif
    let split = min(p.sink_tokens, lo);
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

    var kt = lo;
    if (split > 0u) {
        kt = 0u;
    }
    loop {
        if (kt >= hi) {
            break;
        }
        // Keys of this tile: [kt, min(kt + BK, kend)). A sink tile stops at split, where the
        // window's keys begin.
        let kend = select(hi, split, kt < split);
        // Stage K and V (cache before pos0, this chunk after).
        for (var e = lid; e < BK * HD4; e += WG) {
            let kp = kt + e / HD4;
            let d = (e % HD4) * 4u;
            var kx = vec4<f32>(0.0);
            var vx = vec4<f32>(0.0);
            if (kp < kend) {
                if (kp >= p.pos0) {
                    let at = ((kp - p.pos0) * p.n_kv_heads + kvh) * HD + d;
                    kx = k_new4(at);
                    vx = v_new4(at);
                } else {
#ifndef DOCS
                    let at = ((p.cache_base + cache_slot(kp)) * p.n_kv_heads + kvh) * HD + d;
                    kx = k_cache4(at);
                    vx = v_cache4(at);
#endif
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
#ifdef ROPE
                // Distance of the cache-relative positions, < S + W (0 where the mask drops the
                // key, so the table is never read past its end).
                let qpos = p.pos0 + (row0 + r) / p.group;
                let kp = kt + j;
                var dist = 0u;
                if (allowed(true, qpos, kp)) {
                    dist = qpos - kp;
                    if (kp < p.sink_tokens) {
                        dist = min(qpos, p.sink_tokens + p.window - 1u) - kp;
                    }
                }
                sc[e] = logit(rope_dot(r, j, dist));
#else
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
#endif
            }
        }
        workgroupBarrier();
        // Online softmax, one invocation per row: masked keys get probability 0.
        if (lid < R) {
            let row = row0 + lid;
            let row_ok = row < rows;
            let qpos = p.pos0 + row / p.group;
#ifdef DOCS
            var kmin = 0u;
            if (row_ok) {
                kmin = min(doc_start[row / p.group], qpos);
            }
#else
            let kmin = 0u;
#endif
            let m_old = row_m[lid];
            var mx = m_old;
            for (var j = 0u; j < BK; j++) {
                let kp = kt + j;
                if (kp < kend && kp >= kmin && allowed(row_ok, qpos, kp)) {
                    mx = max(mx, sc[lid * BK + j]);
                }
            }
            var sum = 0.0;
            for (var j = 0u; j < BK; j++) {
                let kp = kt + j;
                var pr = 0.0;
                if (kp < kend && kp >= kmin && allowed(row_ok, qpos, kp)) {
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
        // Next tile; after the last sink tile, jump to the window's first key.
        kt = select(kt + BK, lo, kt < split && kt + BK >= split);
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
            let t = row / p.group;
            let h = kvh * p.group + row % p.group;
            let d = (e % HD4) * 4u;
            let at = (t * p.n_heads + h) * HD + d;
            var x = acc[i] * row_a[e / HD4];
#ifdef GATE
            // Output gate: o ⊙ sigmoid(gate), per element or per head.
            let g = t * p.gate_token_stride + h * p.gate_head_stride + p.gate_offset;
            if (p.gate_headwise != 0u) {
                x *= sigmoid(f32(gate[g]));
            } else {
                x *= vec4<f32>(sigmoid(f32(gate[g + d])), sigmoid(f32(gate[g + d + 1u])),
                               sigmoid(f32(gate[g + d + 2u])), sigmoid(f32(gate[g + d + 3u])));
            }
#endif
            o[at] = T(x.x);
            o[at + 1u] = T(x.y);
            o[at + 2u] = T(x.z);
            o[at + 3u] = T(x.w);
        }
    }
}
