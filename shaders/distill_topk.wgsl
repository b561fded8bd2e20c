// The distillation loss against an offline teacher's top-k log-probabilities (`pupil teach`),
// forward and backward in one pass, in place like distill_loss.wgsl. Per row the teacher gives
// k distinct ids and log p_j of its distribution at temperature τ; the rest of its mass,
// r = 1 − Σ p_j, is one "tail" bucket. The divergence is the forward KL between the two
// distributions coarse-grained onto those k + 1 buckets (p̃, q̃ over B = id_1 … id_k, tail):
//   q = softmax(student / τ), Q = 1 − Σ_j q[id_j]  (the student's tail mass)
//   kl[r]   = D(p̃, q̃): the forward KL Σ_B p̃ log(p̃/q̃) (default), the reverse Σ_B q̃ log(q̃/p̃)
//             (REVERSE) or the generalised JSD β·KL(p̃ ‖ m̃) + (1 − β)·KL(q̃ ‖ m̃) (JSD)
//   loss[r] = kl_coef · kl[r] + α · (logsumexp(student) − student[target])
//   student[r, i] <- grad_scale · (kl_coef / τ · dD/db_i + α · (s_i − [i == target]))
// with b = student/τ and dD/db_i = q_i·(g_B(i) − Σ_B q̃_B g_B) for g_B = dD/dq̃_B; per bucket:
// forward q_i − p̃_i (p̃_i = p_j at id_j, r·q_i/Q on the tail: its share spread as the student
// spreads it), reverse q_i·(log q̃_B/p̃_B − D), JSD (1 − β)·q_i·(log q̃_B/m̃_B − KL(q̃ ‖ m̃)).
// With all of the teacher's mass in its top k (r = 0) the forward KL is the full KL when the
// student's tail is empty too; the reverse and JSD need a teacher tail, floored at TAIL_FLOOR.
// Q comes from 1 − Σ q_j and is floored at TAIL_FLOOR (f32 cancellation when the top k hold
// nearly all of the student's mass). With k = vocab there is no tail bucket. Rows whose target
// is IGNORE (any id ≥ vocab) count for nothing.
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
    // JSD's β, in (0, 1).
    beta: f32,
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

// log(β·e^log_p + (1 − β)·e^log_q), without underflow.
fn log_mixture(log_p: f32, log_q: f32) -> f32 {
    let x = log(p.beta) + log_p;
    let y = log(1.0 - p.beta) + log_q;
    let hi = max(x, y);
    return hi + log(1.0 + exp(min(x, y) - hi));
}

// A bucket's share of the divergence, from its teacher and student log-masses.
fn bucket_div(log_p: f32, log_q: f32) -> f32 {
#ifdef JSD
    let log_m = log_mixture(log_p, log_q);
    return p.beta * exp(log_p) * (log_p - log_m) + (1.0 - p.beta) * exp(log_q) * (log_q - log_m);
#else
#ifdef REVERSE
    return exp(log_q) * (log_q - log_p);
#else
    return exp(log_p) * (log_p - log_q);
#endif
#endif
}

// dD/db_i of a student id of student probability q in a bucket (log-masses log_p, log_q),
// given the divergence `div` and, for JSD, KL(q̃ ‖ m̃) `kq`. The forward KL's is q − p̃_i,
// written at the call sites (its tail form needs r/Q).
fn bucket_grad(q: f32, log_p: f32, log_q: f32, div: f32, kq: f32) -> f32 {
#ifdef JSD
    return (1.0 - p.beta) * q * (log_q - log_mixture(log_p, log_q) - kq);
#else
    return q * (log_q - log_p - div);
#endif
}

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
    // The teacher's k buckets: Σ p_j, Σ q_j, their share of the divergence and (JSD) of
    // KL(q̃ ‖ m̃).
    var sp = 0.0;
    var sq = 0.0;
    var div = 0.0;
    var kq = 0.0;
    for (var j = ids.lid; j < p.k; j += WG) {
        let id = min(teacher_ids[kb + j], p.vocab - 1u);
        let z = f32(student[base + id]);
        top_z[j] = z;
        let log_q = z * p.inv_tau - ms - log_ss;
        let log_p = teacher_logp[kb + j];
        sp += exp(log_p);
        sq += exp(log_q);
        div += bucket_div(log_p, log_q);
#ifdef JSD
        kq += exp(log_q) * (log_q - log_mixture(log_p, log_q));
#endif
    }
    sp = wg_sum(sp, ids);
    sq = wg_sum(sq, ids);
    div = wg_sum(div, ids);
    kq = wg_sum(kq, ids);
    // The tail bucket (none with k = vocab: r is then only the rounding of the teacher's Σ p).
    let has_tail = p.k < p.vocab;
    let r = max(1.0 - sp, 0.0);
    let tail_q = max(1.0 - sq, TAIL_FLOOR);
    let log_tail_q = log(tail_q);
    let log_tail_p = log(max(r, TAIL_FLOOR));
#ifdef FORWARD
    if (r > 0.0 && has_tail) {
        div += r * (log(r) - log_tail_q);
    }
#else
    if (has_tail) {
        div += bucket_div(log_tail_p, log_tail_q);
#ifdef JSD
        kq += tail_q * (log_tail_q - log_mixture(log_tail_p, log_tail_q));
#endif
    }
#endif
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
#ifdef FORWARD
            let d_div = q * tail_share;
#else
            let d_div = bucket_grad(q, log_tail_p, log_tail_q, div, kq);
#endif
            g = p.grad_scale * (kl_scale * d_div + p.alpha * ce);
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
                let log_q = z * p.inv_tau - ms - log_ss;
                let q = exp(log_q);
                let ce = exp(z - lse1) - select(0.0, 1.0, id == t);
#ifdef FORWARD
                let d_div = q - exp(teacher_logp[kb + j]);
#else
                let d_div = bucket_grad(q, teacher_logp[kb + j], log_q, div, kq);
#endif
                let g = p.grad_scale * (kl_scale * d_div + p.alpha * ce);
                student[base + id] = T(g);
            }
        }
    }
}
