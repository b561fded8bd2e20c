// Row top-k: the k largest values of each row, in descending order (lowest index first
// among equal values), with their indices. NaNs are never chosen; if a row has fewer than
// k numbers the remaining slots get index 0xffffffff and value LOWEST_F32.
// One workgroup per row, k sweeps: sweep r finds the best element strictly after the
// previous winner in (value desc, index asc) order. O(k * width) reads: meant for sampling
// (k up to a few hundred).
#include "common/reduce"

struct Params {
    rows: u32,
    width: u32,
    k: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> out_idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out_val: array<f32>;

@compute @workgroup_size(WG)
fn topk_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    // Previous winner; starts "before" every real element.
    var pk = 0xffffffffu;
    var pi = 0xffffffffu;
    var first = true;
    for (var r = 0u; r < p.k; r++) {
        var bk = 0u;
        var bi = 0xffffffffu;
        for (var i = ids.lid; i < p.width; i += WG) {
            let k = order_key(f32(x[base + i]));
            let after_prev = first || key_before(pk, pi, k, i);
            if (k != 0u && after_prev && key_before(k, i, bk, bi)) {
                bk = k;
                bi = i;
            }
        }
        let best = wg_argmax_key(bk, bi, ids);
        if (ids.lid == 0u) {
            let o = row * p.k + r;
            if (best.x == 0u) {
                out_idx[o] = 0xffffffffu;
                out_val[o] = LOWEST_F32;
            } else {
                out_idx[o] = best.y;
                out_val[o] = f32(x[base + best.y]);
            }
        }
        pk = best.x;
        pi = best.y;
        first = false;
    }
}
