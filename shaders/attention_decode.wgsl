// Attention for one new token per sequence (decode), split-K ("flash decoding").
//
// A batch of sequences, each with one query q [batch, n_heads, HD]; seqs[2b], seqs[2b + 1]
// give sequence b's cache sequence and the position of its new token, whose K/V are already
// in the cache. Its valid keys are the last min(pos + 1, window) positions, at slots
// kp % slots of cache rows seq * slots .. (a rolling cache keeps exactly its last `slots`
// positions there; the op requires window <= slots for it).
//
// attention_decode: the valid keys of every (sequence, KV head) are split into `chunks`
// chunks of `chunk_len` keys (a multiple of WG); one workgroup per (sequence, KV head, block
// of up to MAXH query heads, chunk) walks its chunk in tiles of WG keys: each invocation
// scores one key for every head of the block, the workgroup reduces max and sum per head
// (subgroups or shared memory, common/reduce), and P·V accumulates in registers. It writes
// the chunk's unnormalised partial (max m, sum l, acc[HD]) to scratch; chunks past the
// sequence's end write m = lowest, l = 0, acc = 0.
// attention_decode_reduce (REDUCE): one workgroup per (sequence, head) combines the chunks:
// o = Σ e^(m_c - M) acc_c / Σ e^(m_c - M) l_c (SINKS: plus e^(sink_h - M) in the denominator,
// M covering the sink too).
//
// Workgroup memory (WG = 128): queries MAXH·HD f32 (8 KiB at HD 256) + probabilities
// MAXH·WG f32 (4 KiB) + common/reduce's 3·WG words (1.5 KiB) ≤ 13.5 KiB.
#include "common/reduce"

const MAXH: u32 = 8u;

#ifdef REDUCE
struct Params {
    rows: u32,  // batch * n_heads
    chunks: u32,
    head_dim: u32,
    n_heads: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<T>;
#ifdef SINKS
@group(0) @binding(4) var<storage, read> sinks: array<f32>;
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
    for (var d = lid; d < p.head_dim; d += WG) {
        var a = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            let at = (row * p.chunks + c) * 2u;
            if (stats[at + 1u] > 0.0) {
                a += exp(stats[at] - mx) * part[(row * p.chunks + c) * p.head_dim + d];
            }
        }
        o[row * p.head_dim + d] = T(a * inv_l);
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
}

const ACC: u32 = MAXH * HD / WG;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> seqs: array<u32>;
@group(0) @binding(3) var<storage, read> k_cache: array<T>;
@group(0) @binding(4) var<storage, read> v_cache: array<T>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;

var<workgroup> qs: array<f32, MAXH * HD>;
var<workgroup> probs: array<f32, MAXH * WG>;

#include "common/attention_logit"

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
    // Valid keys [lo, len), this chunk's share [c0, c1).
    var span = min(len, p.window);
    if (seq >= p.n_seqs) {
        span = 0u;
    }
    let c0 = len - span + chunk * p.chunk_len;
    let c1 = min(c0 + p.chunk_len, len);
    let h0 = kvh * p.group + blk * p.hb;
    let nh = min(p.hb, p.group - blk * p.hb);
    let lid = ids.lid;
    let row_base = seq * p.slots;

    for (var e = lid; e < MAXH * HD; e += WG) {
        let g = e / HD;
        var x = 0.0;
        if (g < nh) {
            x = f32(q[(b * p.n_heads + h0 + g) * HD + e % HD]);
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
        // Invocation lid scores key t0 + lid for every head of the block.
        let kp = t0 + lid;
        let valid = kp < c1;
        // Explicitly zeroed: Tint/SwiftShader kept the previous iteration's values for a
        // declaration without initializer inside the loop (wrong from a chunk's second tile on).
        var s = array<f32, MAXH>();
        if (valid) {
            let base = ((row_base + kp % p.slots) * p.n_kv_heads + kvh) * HD;
            for (var d = 0u; d < HD; d++) {
                let kd = f32(k_cache[base + d]);
                for (var g = 0u; g < MAXH; g++) {
                    s[g] += qs[g * HD + d] * kd;
                }
            }
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
                    let at = ((row_base + (t0 + j) % p.slots) * p.n_kv_heads + kvh) * HD + d;
                    a += probs[g * WG + j] * f32(v_cache[at]);
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
