// KV cache write: copy new K and V rows [tokens, n_kv_heads * head_dim] into their cache slots.
// A cache layer is [n_seqs, slots, n_kv_heads, head_dim]; position pos goes to slot
// cache_slot(pos): positions below `sinks` (a StreamingLLM cache's S fixed slots, else 0)
// keep their own slot, the rest roll through the other slots, `sinks + (pos - sinks) %
// (slots - sinks)` (rolling window caches wrap; full caches have slots = capacity and refuse
// positions past it: WRAP = 0 drops them instead of wrapping).
//   default: token t of the call is sequence `seq`, position pos0 + t; rolling tokens before
//            `first_token` are skipped (a chunk longer than the rolling slots keeps its last
//            ones, so no two invocations write one slot; sink positions are always written);
//   INDEXED: token t's (sequence, position) is dest[2t], dest[2t + 1] (one decode step for a
//            batch of sequences).
// One invocation per element.
#include "common/ids"

struct Params {
    tokens: u32,
    row: u32,  // n_kv_heads * head_dim
    slots: u32,
    n_seqs: u32,
    seq: u32,
    pos0: u32,
    first_token: u32,
    wrap: u32,
    sinks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k_new: array<T>;
@group(0) @binding(2) var<storage, read> v_new: array<T>;
#ifdef INDEXED
@group(0) @binding(3) var<storage, read> dest: array<u32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<T>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<T>;
#else
@group(0) @binding(3) var<storage, read_write> k_cache: array<T>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<T>;
#endif

@compute @workgroup_size(WG)
fn attention_kv_write(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    let t = i / p.row;
    let c = i % p.row;
    if (t >= p.tokens) {
        return;
    }
#ifdef INDEXED
    let seq = dest[2u * t];
    let pos = dest[2u * t + 1u];
#else
    let seq = p.seq;
    let pos = p.pos0 + t;
    if (t < p.first_token && pos >= p.sinks) {
        return;
    }
#endif
    if (seq >= p.n_seqs || (p.wrap == 0u && pos >= p.slots)) {
        return;
    }
    var slot = pos;
    if (pos >= p.sinks) {
        slot = p.sinks + (pos - p.sinks) % (p.slots - p.sinks);
    }
    let at = (seq * p.slots + slot) * p.row + c;
    k_cache[at] = k_new[i];
    v_cache[at] = v_new[i];
}
