// Logits processing for sampling, on rows x [rows, width] (one row per sequence), out of
// place into y (always f32, whatever the storage type T of x):
//   sample_scale_forward:   y = x · f.x                                  (every element)
//   sample_penalty_forward: y[id] = x[id] · (x[id] > 0 ? f.y : f.z)      (each penalised id)
// where f = factors[row] is computed on the host in f64 and rounded once to f32:
// f.x = 1/T, f.y = 1/(penalty·T), f.z = penalty/T — the llama.cpp/transformers repetition
// penalty (logit > 0 divided by the penalty, else multiplied), then the temperature.
// Each output is one correctly rounded f32 multiplication, so every conforming device gives
// the same bits (natively and in the browser). The penalty dispatch runs after the scale
// dispatch (WebGPU orders dispatches); ids past the row's width (the 0xffffffff padding) are
// skipped. A row's ids must be distinct or write the same value (they do: the same x).
#include "common/ids"

struct Params {
    rows: u32,
    width: u32,
    // Penalised ids per row in `pen` (rows × n_pen, padded with 0xffffffff).
    n_pen: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> factors: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> pen: array<u32>;

@compute @workgroup_size(WG)
fn sample_scale_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = group_id(wg, nwg) * WG + ids.lid;
    if (i >= p.rows * p.width) {
        return;
    }
    y[i] = f32(x[i]) * factors[i / p.width].x;
}

@compute @workgroup_size(WG)
fn sample_penalty_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = group_id(wg, nwg) * WG + ids.lid;
    if (j >= p.rows * p.n_pen) {
        return;
    }
    let row = j / p.n_pen;
    let id = pen[j];
    if (id >= p.width) {
        return;
    }
    let i = row * p.width + id;
    let v = f32(x[i]);
    let f = factors[row];
    y[i] = v * select(f.z, f.y, v > 0.0);
}
