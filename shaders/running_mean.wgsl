// Causal running mean of hidden states, for the query gate q ← q ⊙ σ(W·m_t):
// m_t = (1 / (t + 1)) Σ_{s ≤ t} x_s over the positions of one sequence, never a later one.
// The sum carries across calls in `state` [n_seqs, dim] of (sum, compensation) f32 pairs
// (Kahan summation, so a long sequence's mean keeps f32 accuracy); a token at position 0
// starts from zero, so a reused sequence needs no reset.
//   default: tokens t of one chunk of sequence `seq` at positions pos0 + t; one invocation per
//            dim walks the chunk's tokens in order (x, m: [tokens, dim]);
//   INDEXED: one token per batch entry b at (sequence, position) = dest[2b], dest[2b + 1]
//            (the decode step's tensor); one invocation per (entry, dim). Entries must name
//            distinct sequences.
#include "common/ids"

struct Params {
    tokens: u32,
    dim: u32,
    n_seqs: u32,
    seq: u32,
    pos0: u32,
    t_begin: u32,  // default: this dispatch's tokens [t_begin, t_end) (long chunks take several,
    t_end: u32,    // keeping each invocation's loop short: lavapipe stops loops at 65535 trips)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> state: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> m: array<T>;
#ifdef INDEXED
@group(0) @binding(4) var<storage, read> dest: array<u32>;
#endif

// Kahan step: (sum, compensation) + v; the sum is s.x - s.y.
fn kahan_add(s: vec2<f32>, v: f32) -> vec2<f32> {
    let y = v - s.y;
    let t = s.x + y;
    return vec2<f32>(t, (t - s.x) - y);
}

@compute @workgroup_size(WG)
fn running_mean(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
#ifdef INDEXED
    if (i >= p.tokens * p.dim) {
        return;
    }
    let b = i / p.dim;
    let d = i % p.dim;
    let seq = dest[2u * b];
    let pos = dest[2u * b + 1u];
    var s = vec2<f32>(0.0);
    let at = seq * p.dim + d;
    if (seq < p.n_seqs && pos > 0u) {
        s = state[at];
    }
    s = kahan_add(s, f32(x[i]));
    m[i] = T((s.x - s.y) / f32(pos + 1u));
    if (seq < p.n_seqs) {
        state[at] = s;
    }
#else
    if (i >= p.dim) {
        return;
    }
    let at = p.seq * p.dim + i;
    var s = vec2<f32>(0.0);
    if (p.pos0 + p.t_begin > 0u) {
        s = state[at];
    }
    for (var t = p.t_begin; t < p.t_end; t++) {
        s = kahan_add(s, f32(x[t * p.dim + i]));
        m[t * p.dim + i] = T((s.x - s.y) / f32(p.pos0 + t + 1u));
    }
    state[at] = s;
#endif
}
