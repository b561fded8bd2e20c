// Hidden-state alignment (TinyBERT, Minitron): a student's residual stream s pulled toward a
// teacher's t, per row r of [rows, width], as a normalised squared error
//   loss[r] += weight · Σ_i (s_i − t_i)² / (Σ_i t_i² + ε)
//   grad[r, i] += grad_scale · 2 · weight · (s_i − t_i) / (Σ_i t_i² + ε)          (GRAD)
// (normalised by the teacher row's own size, so one weight fits streams of any scale; t is a
// constant). `loss` accumulates so several layer pairs can share it. One workgroup per row;
// storage T, arithmetic f32. Reference: `reference::hidden_mse`.
#include "common/reduce"

struct Params {
    rows: u32,
    width: u32,
    weight: f32,
    grad_scale: f32,
}

const EPS: f32 = 1e-6;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> student: array<T>;
@group(0) @binding(2) var<storage, read> teacher: array<T>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
#ifdef GRAD
@group(0) @binding(4) var<storage, read_write> grad: array<T>;
#endif

@compute @workgroup_size(WG)
fn hidden_mse_forward_backward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    var sq = 0.0;
    var tt = 0.0;
    for (var i = ids.lid; i < p.width; i += WG) {
        let t = f32(teacher[base + i]);
        let d = f32(student[base + i]) - t;
        sq += d * d;
        tt += t * t;
    }
    sq = wg_sum(sq, ids);
    tt = wg_sum(tt, ids);
    let inv = 1.0 / (tt + EPS);
    if (ids.lid == 0u) {
        loss[row] += p.weight * sq * inv;
    }
#ifdef GRAD
    let k = p.grad_scale * 2.0 * p.weight * inv;
    for (var i = ids.lid; i < p.width; i += WG) {
        let d = f32(student[base + i]) - f32(teacher[base + i]);
        grad[base + i] = T(f32(grad[base + i]) + k * d);
    }
#endif
}
