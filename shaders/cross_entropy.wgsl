// Softmax cross-entropy over rows of logits, forward and backward in one pass (the LM head's
// loss; the caller runs it over chunks of rows so a [rows, vocab] logits block fits a binding):
//   loss[r]      = logsumexp(logits[r]) - logits[r, target[r]]
//   logits[r, i] <- (softmax(logits[r])_i - [i == target[r]]) * grad_scale     (in place)
// A target of IGNORE (0xffffffff; also any id >= vocab) contributes loss 0 and gradient 0
// (padding, prompt tokens under a loss mask). grad_scale is typically 1 / (tokens counted).
// One workgroup per row; storage T, arithmetic f32.
#include "common/reduce"

const IGNORE: u32 = 0xffffffffu;

struct Params {
    rows: u32,
    vocab: u32,
    grad_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<T>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;

@compute @workgroup_size(WG)
fn cross_entropy_forward_backward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.vocab;
    var m = LOWEST_F32;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        m = max(m, f32(logits[base + i]));
    }
    let row_max = wg_max(m, ids);
    var s = 0.0;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        s += exp(f32(logits[base + i]) - row_max);
    }
    let lse = row_max + log(wg_sum(s, ids));
    let t = targets[row];
    let counted = t < p.vocab;
    var target_logit = 0.0;
    if (counted) {
        target_logit = f32(logits[base + t]);
    }
    // Everyone has read logits[t] before anyone overwrites it.
    workgroupBarrier();
    if (ids.lid == 0u) {
        loss[row] = select(0.0, lse - target_logit, counted);
    }
    for (var i = ids.lid; i < p.vocab; i += WG) {
        var g = 0.0;
        if (counted) {
            g = (exp(f32(logits[base + i]) - lse) - select(0.0, 1.0, i == t)) * p.grad_scale;
        }
        logits[base + i] = T(g);
    }
}
