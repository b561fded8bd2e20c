// Residual add: y = a + b, or a += b in place (IN_PLACE), elementwise over n elements.
#include "common/ids"

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#ifdef IN_PLACE
@group(0) @binding(1) var<storage, read_write> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
#else
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;
#endif

@compute @workgroup_size(WG)
fn add_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    if (i >= p.n) {
        return;
    }
#ifdef IN_PLACE
    a[i] = T(f32(a[i]) + f32(b[i]));
#else
    y[i] = T(f32(a[i]) + f32(b[i]));
#endif
}
