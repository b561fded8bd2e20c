// Attention for one new token per sequence (decode), split-K ("flash decoding").
//
// A batch of sequences, each with one query q [batch, n_heads, HD]; seqs[2b], seqs[2b + 1]
// give sequence b's cache sequence and the position n of its new token, whose K/V are already
// in the cache. Its kept keys, in order, are the StreamingLLM sinks [0, min(S, n+1)) (S =
// sink_tokens, 0 when off) and then the recent positions [max(S, n+1-W), n] (W = window);
// without sinks that is the last min(n+1, W) positions. Key i of that list lives at cache
// slot cache_slot(position) of rows seq * slots .. (a rolling cache keeps exactly its last
// `slots` positions there, a streaming cache its S sinks and last slots - S positions; the
// op checks the window fits).
// ROPE (StreamingLLM): q and the cached keys are unrotated; key i is rotated at its
// cache-relative position i and the query at the last one, kept - 1.
//
// attention_decode: the kept keys of every (sequence, KV head) are split into `chunks`
// chunks of `chunk_len` keys (a multiple of WG); one workgroup per (sequence, KV head, block
// of up to MAXH query heads, chunk) walks its chunk in tiles of WG keys: each invocation
// scores one key for every head of the block, the workgroup reduces max and sum per head
// (subgroups or shared memory, common/reduce), and P·V accumulates in registers. It writes
// the chunk's unnormalised partial (max m, sum l, acc[HD]) to scratch; chunks past the
// sequence's end write m = lowest, l = 0, acc = 0.
// attention_decode_reduce (REDUCE): one workgroup per (sequence, head) combines the chunks:
// o = Σ e^(m_c - M) acc_c / Σ e^(m_c - M) l_c (SINKS: plus e^(sink_h - M) in the denominator,
// M covering the sink too; GATE: times sigmoid(gate), per element or per head).
//
// Workgroup memory (WG = 128): queries MAXH·HD f32 (8 KiB at HD 256) + probabilities
// MAXH·WG f32 (4 KiB) + key rows WG u32 (512 B) + common/reduce's 3·WG words (1.5 KiB)
// ≤ 14 KiB.
#include "common/reduce"

const MAXH: u32 = 8u;

#ifdef REDUCE
struct Params {
    rows: u32,  // batch * n_heads
    chunks: u32,
    head_dim: u32,
    n_heads: u32,
    gate_token_stride: u32,  // GATE: elements between batch entries in gate
    gate_head_stride: u32,   // GATE: elements between heads
    gate_offset: u32,        // GATE: element of entry 0, head 0
    gate_headwise: u32,      // GATE: 1 = one gate per head, 0 = one per element
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<T>;
#ifdef SINKS
@group(0) @binding(4) var<storage, read> sinks: array<f32>;
#ifdef GATE
@group(0) @binding(5) var<storage, read> gate: array<T>;
#endif
#else
#ifdef GATE
@group(0) @binding(4) var<storage, read> gate: array<T>;
#endif
#endif

#ifdef GATE
// sigmoid without overflow at either end.
fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}
#endif

@compute @workgroup_size(WG)
fn attention_decode_reduce(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    var mx = LOWEST_F32;
    for (var c = 0u; c < p.chunks; c++) {
        mx = max(mx, stats[(row * p.chunks + c) * 2u]);
    }
#ifdef SINKS
    let sink = sinks[row % p.n_heads];
    mx = max(mx, sink);
#endif
    var l = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        let at = (row * p.chunks + c) * 2u;
        if (stats[at + 1u] > 0.0) {
            l += exp(stats[at] - mx) * stats[at + 1u];
        }
    }
#ifdef SINKS
    l += exp(sink - mx);
#endif
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
#ifdef GATE
    let g0 = (row / p.n_heads) * p.gate_token_stride + (row % p.n_heads) * p.gate_head_stride + p.gate_offset;
#endif
    for (var d = lid; d < p.head_dim; d += WG) {
        var a = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            let at = (row * p.chunks + c) * 2u;
            if (stats[at + 1u] > 0.0) {
                a += exp(stats[at] - mx) * part[(row * p.chunks + c) * p.head_dim + d];
            }
        }
        var y = a * inv_l;
#ifdef GATE
        y *= sigmoid(f32(gate[g0 + select(d, 0u, p.gate_headwise != 0u)]));
#endif
        o[row * p.head_dim + d] = T(y);
    }
}
#else
struct Params {
    batch: u32,
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    hb: u32,      // query heads per block (<= MAXH)
    blocks: u32,  // blocks per KV head
    n_seqs: u32,
    slots: u32,
    window: u32,  // 0xffffffff: no window
    chunks: u32,
    chunk_len: u32,
    scale: f32,
    softcap: f32,  // 0: off
    sink_tokens: u32,  // StreamingLLM S (0: off); also the cache's fixed slots
    n_rot: u32,        // ROPE: rotated dims per head
    neox: u32,         // ROPE: 1 = NeoX pairs (i, i + n_rot/2), 0 = (2i, 2i+1)
}

const ACC: u32 = MAXH * HD / WG;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> seqs: array<u32>;
@group(0) @binding(3) var<storage, read> k_cache: array<T>;
@group(0) @binding(4) var<storage, read> v_cache: array<T>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
#ifdef ROPE
// cos/sin table [position][n_rot / 2] as (cos, sin).
@group(0) @binding(7) var<storage, read> rope_table: array<vec2<f32>>;
#endif

var<workgroup> qs: array<f32, MAXH * HD>;
var<workgroup> probs: array<f32, MAXH * WG>;
// Cache row of each key of the current tile.
var<workgroup> krow: array<u32, WG>;

#include "common/attention_logit"

// Cache slot of position kp: positions < sink_tokens keep their own slot, the others roll
// through the remaining slots (sink_tokens = 0: kp % slots).
fn cache_slot(kp: u32) -> u32 {
    if (kp < p.sink_tokens) {
        return kp;
    }
    return p.sink_tokens + (kp - p.sink_tokens) % (p.slots - p.sink_tokens);
}

#ifdef ROPE
// The rotation pair of dim d < n_rot: (first index, second index, pair number).
fn rope_pair(d: u32) -> vec3<u32> {
    let half = p.n_rot / 2u;
    if (p.neox != 0u) {
        let j = d % half;
        return vec3<u32>(j, j + half, j);
    }
    let i0 = d & ~1u;
    return vec3<u32>(i0, i0 + 1u, d / 2u);
}

// Element d of q row `base` rotated at position pos.
fn rotated_q(base: u32, d: u32, pos: u32) -> f32 {
    if (d >= p.n_rot) {
        return f32(q[base + d]);
    }
    let pr = rope_pair(d);
    let cs = rope_table[pos * (p.n_rot / 2u) + pr.z];
    let x0 = f32(q[base + pr.x]);
    let x1 = f32(q[base + pr.y]);
    return select(x0 * cs.x - x1 * cs.y, x0 * cs.y + x1 * cs.x, d == pr.y);
}
#endif

@compute @workgroup_size(WG)
fn attention_decode(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gid = group_id(wg, nwg);
    let chunk = gid % p.chunks;
    let blk = (gid / p.chunks) % p.blocks;
    let kvh = (gid / (p.chunks * p.blocks)) % p.n_kv_heads;
    let b = gid / (p.chunks * p.blocks * p.n_kv_heads);
    if (b >= p.batch) {
        return;
    }
    let seq = seqs[2u * b];
    let len = seqs[2u * b + 1u] + 1u;
    // Kept keys: indices [0, n_sink) are positions 0.., indices [n_sink, kept) positions rstart..
    let n_sink = min(p.sink_tokens, len);
    let rstart = max(n_sink, len - min(len, p.window));
    var kept = n_sink + len - rstart;
    if (seq >= p.n_seqs) {
        kept = 0u;
    }
    // This chunk's share [c0, c1) of the key indices.
    let c0 = chunk * p.chunk_len;
    let c1 = min(c0 + p.chunk_len, kept);
    let h0 = kvh * p.group + blk * p.hb;
    let nh = min(p.hb, p.group - blk * p.hb);
    let lid = ids.lid;
    let row_base = seq * p.slots;

    for (var e = lid; e < MAXH * HD; e += WG) {
        let g = e / HD;
        var x = 0.0;
        if (g < nh) {
            let base = (b * p.n_heads + h0 + g) * HD;
#ifdef ROPE
            x = rotated_q(base, e % HD, max(kept, 1u) - 1u);
#else
            x = f32(q[base + e % HD]);
#endif
        }
        qs[e] = x;
    }
    workgroupBarrier();

    var m: array<f32, MAXH>;
    var l: array<f32, MAXH>;
    var alpha: array<f32, MAXH>;
    var acc: array<f32, ACC>;
    for (var g = 0u; g < MAXH; g++) {
        m[g] = LOWEST_F32;
        l[g] = 0.0;
    }
    for (var i = 0u; i < ACC; i++) {
        acc[i] = 0.0;
    }

    for (var t0 = c0; t0 < c1; t0 += WG) {
        // Invocation lid scores key index t0 + lid for every head of the block.
        let ki = t0 + lid;
        let valid = ki < c1;
        let kp = select(rstart + ki - n_sink, ki, ki < n_sink);
        let row = row_base + cache_slot(kp);
        krow[lid] = row;
        // Explicitly zeroed: Tint/SwiftShader kept the previous iteration's values for a
        // declaration without initializer inside the loop (wrong from a chunk's second tile on).
        var s = array<f32, MAXH>();
        if (valid) {
            let base = (row * p.n_kv_heads + kvh) * HD;
#ifdef ROPE
            // Rotate the key at its cache-relative position ki, pair by pair.
            let half = p.n_rot / 2u;
            for (var j = 0u; j < half; j++) {
                var i0 = 2u * j;
                var i1 = 2u * j + 1u;
                if (p.neox != 0u) {
                    i0 = j;
                    i1 = j + half;
                }
                let cs = rope_table[ki * half + j];
                let k0 = f32(k_cache[base + i0]);
                let k1 = f32(k_cache[base + i1]);
                let r0 = k0 * cs.x - k1 * cs.y;
                let r1 = k0 * cs.y + k1 * cs.x;
                for (var g = 0u; g < MAXH; g++) {
                    s[g] += qs[g * HD + i0] * r0 + qs[g * HD + i1] * r1;
                }
            }
            for (var d = p.n_rot; d < HD; d++) {
                let kd = f32(k_cache[base + d]);
                for (var g = 0u; g < MAXH; g++) {
                    s[g] += qs[g * HD + d] * kd;
                }
            }
#else
            for (var d = 0u; d < HD; d++) {
                let kd = f32(k_cache[base + d]);
                for (var g = 0u; g < MAXH; g++) {
                    s[g] += qs[g * HD + d] * kd;
                }
            }
#endif
        }
        for (var g = 0u; g < nh; g++) {
            let sg = logit(s[g]);
            let tile_max = wg_max(select(LOWEST_F32, sg, valid), ids);
            let mn = max(m[g], tile_max);
            var pr = 0.0;
            if (valid) {
                pr = exp(sg - mn);
            }
            probs[g * WG + lid] = pr;
            let tile_sum = wg_sum(pr, ids);
            alpha[g] = select(exp(m[g] - mn), 0.0, m[g] <= LOWEST_F32);
            l[g] = l[g] * alpha[g] + tile_sum;
            m[g] = mn;
        }
        workgroupBarrier();
        let n = min(WG, c1 - t0);
        for (var i = 0u; i < ACC; i++) {
            let e = lid + i * WG;
            let g = e / HD;
            let d = e % HD;
            if (g < nh) {
                var a = acc[i] * alpha[g];
                for (var j = 0u; j < n; j++) {
                    a += probs[g * WG + j] * f32(v_cache[(krow[j] * p.n_kv_heads + kvh) * HD + d]);
                }
                acc[i] = a;
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < ACC; i++) {
        let e = lid + i * WG;
        let g = e / HD;
        if (g < nh) {
            part[((b * p.n_heads + h0 + g) * p.chunks + chunk) * HD + e % HD] = acc[i];
        }
    }
    if (lid < nh) {
        let at = ((b * p.n_heads + h0 + lid) * p.chunks + chunk) * 2u;
        stats[at] = m[lid];
        stats[at + 1u] = l[lid];
    }
}
#endif
