// Ceiling kernels for the benchmarks (not used by models):
//   copy_forward: y = x as vec4<u32>, one vec4 per invocation — the memory-bandwidth ceiling;
//   fma_forward: ITERS dependent-chain FMAs on four independent vec4 accumulators per
//                invocation — the f32 arithmetic ceiling (8 flops per lane-FMA x 4 x 4).
#include "common/ids"

struct Params {
    n: u32,
    iters: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<vec4<u32>>;
#ifndef FMA
@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;
#endif

@compute @workgroup_size(WG)
fn bench_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    if (i >= p.n) {
        return;
    }
#ifdef FMA
    let s = f32(i) * 1e-9;
    var a = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var b = a + 0.5;
    var c = a + 0.25;
    var d = a + 0.75;
    let m = vec4<f32>(0.9999);
    let k = vec4<f32>(1e-4);
    for (var it = 0u; it < p.iters; it++) {
        a = fma(a, m, k);
        b = fma(b, m, k);
        c = fma(c, m, k);
        d = fma(d, m, k);
    }
    // Stored so the compiler cannot drop the chain.
    y[i] = bitcast<vec4<u32>>(a + b + c + d);
#else
    y[i] = x[i];
#endif
}
