// Row arg-max: out[row] = index of the largest value; the lowest index wins ties and NaN
// never wins. A row of NaNs only yields 0xffffffff. One workgroup per row.
#include "common/reduce"

struct Params {
    rows: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(WG)
fn argmax_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    var bk = 0u;
    var bi = 0xffffffffu;
    for (var i = ids.lid; i < p.width; i += WG) {
        let k = order_key(f32(x[base + i]));
        if (key_before(k, i, bk, bi)) {
            bk = k;
            bi = i;
        }
    }
    let best = wg_argmax_key(bk, bi, ids);
    if (ids.lid == 0u) {
        out[row] = select(best.y, 0xffffffffu, best.x == 0u);
    }
}
