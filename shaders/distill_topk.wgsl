// The distillation loss against an offline teacher's top-k log-probabilities (`pupil teach`),
// forward and backward in one pass, in place like distill_loss.wgsl. Per row the teacher gives
// k distinct ids and log p_j of its distribution at temperature τ; the rest of its mass,
// r = 1 − Σ p_j, is one "tail" bucket. The divergence is the forward KL between the two
// distributions coarse-grained onto those k + 1 buckets:
//   q = softmax(student / τ), Q = 1 − Σ_j q[id_j]  (the student's tail mass)
//   kl[r]   = Σ_j p_j (log p_j − log q[id_j]) + r (log r − log Q)
//   loss[r] = kl_coef · kl[r] + α · (logsumexp(student) − student[target])
//   student[r, i] <- grad_scale · (kl_coef / τ · (q_i − p̃_i) + α · (s_i − [i == target]))
// with p̃ = p_j at id_j and r · q_i / Q elsewhere (the tail's share spread as the student
// spreads it). With all of the teacher's mass in its top k (r = 0) this is the full KL when
// the student's tail is empty too. Q comes from 1 − Σ q_j and is floored at TAIL_FLOOR (f32
// cancellation when the top k hold nearly all of the student's mass: the tail term then
// vanishes with r). Rows whose target is IGNORE (any id ≥ vocab) count for nothing.
// One workgroup per row; storage T, arithmetic f32. Reference: `reference::distill_topk`.
#include "common/reduce"

const MAX_K: u32 = 64u;
const TAIL_FLOOR: f32 = 1e-7;

struct Params {
    rows: u32,
    vocab: u32,
    k: u32,
    inv_tau: f32,
    kl_coef: f32,
    alpha: f32,
    grad_scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> student: array<T>;
@group(0) @binding(2) var<storage, read> teacher_ids: array<u32>;
@group(0) @binding(3) var<storage, read> teacher_logp: array<f32>;
@group(0) @binding(4) var<storage, read> targets: array<u32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> kl: array<f32>;

// The student's logits at the teacher's ids, read before the gradient overwrites them.
var<workgroup> top_z: array<f32, MAX_K>;

@compute @workgroup_size(WG)
fn distill_topk_forward_backward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.vocab;
    let kb = row * p.k;
    var ms = LOWEST_F32;
    var m1 = LOWEST_F32;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        let z = f32(student[base + i]);
        ms = max(ms, z * p.inv_tau);
        m1 = max(m1, z);
    }
    ms = wg_max(ms, ids);
    m1 = wg_max(m1, ids);
    var ss = 0.0;
    var s1 = 0.0;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        let z = f32(student[base + i]);
        ss += exp(z * p.inv_tau - ms);
        s1 += exp(z - m1);
    }
    ss = wg_sum(ss, ids);
    s1 = wg_sum(s1, ids);
    let log_ss = log(ss);
    let lse1 = m1 + log(s1);
    // The teacher's buckets: Σ p_j, Σ q_j and Σ p_j (log p_j − log q_j).
    var sp = 0.0;
    var sq = 0.0;
    var cross = 0.0;
    for (var j = ids.lid; j < p.k; j += WG) {
        let id = min(teacher_ids[kb + j], p.vocab - 1u);
        let z = f32(student[base + id]);
        top_z[j] = z;
        let log_q = z * p.inv_tau - ms - log_ss;
        let log_p = teacher_logp[kb + j];
        let pj = exp(log_p);
        sp += pj;
        sq += exp(log_q);
        cross += pj * (log_p - log_q);
    }
    sp = wg_sum(sp, ids);
    sq = wg_sum(sq, ids);
    cross = wg_sum(cross, ids);
    let r = max(1.0 - sp, 0.0);
    let tail_q = max(1.0 - sq, TAIL_FLOOR);
    var div = cross;
    // (With k = vocab there are no tail ids: r is only the rounding of the teacher's Σ p.)
    if (r > 0.0 && p.k < p.vocab) {
        div += r * (log(r) - log(tail_q));
    }
    let t = targets[row];
    let counted = t < p.vocab;
    var target_logit = 0.0;
    if (counted) {
        target_logit = f32(student[base + t]);
    }
    // Everyone has read student[t] (and top_z is complete) before anyone overwrites.
    workgroupBarrier();
    if (ids.lid == 0u) {
        loss[row] = select(0.0, p.kl_coef * div + p.alpha * (lse1 - target_logit), counted);
        kl[row] = select(0.0, div, counted);
    }
    let kl_scale = p.kl_coef * p.inv_tau;
    // Every id as a tail id first ...
    let tail_share = 1.0 - r / tail_q;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        var g = 0.0;
        if (counted) {
            let z = f32(student[base + i]);
            let q = exp(z * p.inv_tau - ms - log_ss);
            let ce = exp(z - lse1) - select(0.0, 1.0, i == t);
            g = p.grad_scale * (kl_scale * q * tail_share + p.alpha * ce);
        }
        student[base + i] = T(g);
    }
    // ... then the teacher's k ids rewritten with their own bucket (after every write above).
    storageBarrier();
    if (counted) {
        for (var j = ids.lid; j < p.k; j += WG) {
            let id = teacher_ids[kb + j];
            if (id < p.vocab) {
                let z = top_z[j];
                let q = exp(z * p.inv_tau - ms - log_ss);
                let ce = exp(z - lse1) - select(0.0, 1.0, id == t);
                let g = p.grad_scale * (kl_scale * (q - exp(teacher_logp[kb + j])) + p.alpha * ce);
                student[base + id] = T(g);
            }
        }
    }
}
