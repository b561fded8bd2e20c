// Embedding gather: y[i, :] = table[ids[i], :]. An id outside the vocabulary yields a row
// of zeros (the host validates ids it uploads; ids produced on the GPU by the sampler are
// in range by construction).
#include "common/ids"

struct Params {
    n_ids: u32,
    dim: u32,
    vocab: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> token_ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<T>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;

@compute @workgroup_size(WG)
fn embedding_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gid = group_id(wg, nwg) * WG + ids.lid;
    if (gid >= p.n_ids * p.dim) {
        return;
    }
    let r = gid / p.dim;
    let c = gid % p.dim;
    let id = token_ids[r];
    if (id >= p.vocab) {
        y[gid] = T(0.0);
        return;
    }
    y[gid] = table[id * p.dim + c];
}
