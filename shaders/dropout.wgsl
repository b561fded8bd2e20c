// Inverted dropout with a counter-based mask: y (+)= keep(seed, i) ? x[i] / (1 - p) : 0.
// The mask is a pure function of (seed, i) (see `keep` below), so the backward pass and an
// activation-checkpointed recomputation regenerate it instead of storing it, and a PyTorch
// reference can rebuild it (scripts/fixtures/make_train_fixtures.py). Reference:
// `reference::dropout`. ACCUMULATE adds into y instead of writing it (the input gradient
// of a LoRA branch joins the frozen path's).
#include "common/ids"

struct Params {
    n: u32,
    seed: u32,
    // Drop when the hash's top 24 bits are below this (round(p · 2^24)).
    threshold: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

// PCG's output permutation over a 32-bit state (Jarzynski & Olano 2020, "Hash Functions for
// GPU Rendering"): one LCG step then the RXS-M-XS mix. Every multiply wraps mod 2^32.
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn keep(i: u32) -> bool {
    return (pcg_hash(pcg_hash(p.seed) ^ i) >> 8u) >= p.threshold;
}

@compute @workgroup_size(WG)
fn dropout_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    if (i >= p.n) {
        return;
    }
    var v = select(0.0, f32(x[i]) * p.scale, keep(i));
#ifdef ACCUMULATE
    v += f32(y[i]);
#endif
    y[i] = T(v);
}
