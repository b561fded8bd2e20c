// Row softmax with temperature: y = softmax(x / temperature), one workgroup per row.
// Three sweeps over the row (max, sum of exp, write) so rows of any length (a 262k-token
// vocabulary) need no more than WG floats of shared memory.
#include "common/reduce"

struct Params {
    rows: u32,
    width: u32,
    inv_temperature: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

@compute @workgroup_size(WG)
fn softmax_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    var m = LOWEST_F32;
    for (var i = ids.lid; i < p.width; i += WG) {
        m = max(m, f32(x[base + i]) * p.inv_temperature);
    }
    let row_max = wg_max(m, ids);
    var s = 0.0;
    for (var i = ids.lid; i < p.width; i += WG) {
        s += exp(f32(x[base + i]) * p.inv_temperature - row_max);
    }
    let inv_sum = 1.0 / wg_sum(s, ids);
    for (var i = ids.lid; i < p.width; i += WG) {
        y[base + i] = T(exp(f32(x[base + i]) * p.inv_temperature - row_max) * inv_sum);
    }
}
