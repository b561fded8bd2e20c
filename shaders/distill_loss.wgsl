// The distillation loss over rows of student logits against a teacher's, forward and backward
// in one pass (chunked over rows by the caller, like cross_entropy.wgsl):
//   p = softmax(teacher / τ), q = softmax(student / τ), s = softmax(student)
//   kl[r]   = KL(p ‖ q)  (FORWARD: Hinton et al.),  KL(q ‖ p)  (REVERSE: mode-seeking), or
//             β·KL(p ‖ m) + (1 − β)·KL(q ‖ m) with m = β·p + (1 − β)·q  (JSD: generalised
//             Jensen–Shannon, β = 1/2 the symmetric one; it interpolates between the two)
//   loss[r] = kl_coef · kl[r] + α · (logsumexp(student) − student[target])
//   student[r, i] <- grad_scale · (kl_coef / τ · dKL/d(student/τ)_i + α · (s_i − [i == target]))
// with dKL_forward/db = q − p, dKL_reverse/db = q ⊙ (log q − log p − KL(q ‖ p)) and
// dJSD/db = (1 − β)·q ⊙ (log q − log m − KL(q ‖ m)) (dJSD/dq = (1 − β)·log(q/m)). kl_coef is
// τ² in Hinton's recipe (gradients keep their size as τ changes). A row whose target is IGNORE
// (or any id ≥ vocab) counts for nothing: loss, kl and gradient 0 (prompt tokens under a mask).
// One workgroup per row; storage T, arithmetic f32. Reference: `reference::distill_loss`.
#include "common/reduce"

struct Params {
    rows: u32,
    vocab: u32,
    inv_tau: f32,
    kl_coef: f32,
    alpha: f32,
    grad_scale: f32,
    // JSD's β, in (0, 1).
    beta: f32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> student: array<T>;
@group(0) @binding(2) var<storage, read> teacher: array<T>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> kl: array<f32>;

// log(β·e^log_p + (1 − β)·e^log_q), without underflow.
fn log_mixture(log_p: f32, log_q: f32) -> f32 {
    let x = log(p.beta) + log_p;
    let y = log(1.0 - p.beta) + log_q;
    let hi = max(x, y);
    return hi + log(1.0 + exp(min(x, y) - hi));
}

@compute @workgroup_size(WG)
fn distill_loss_forward_backward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.vocab;
    // Maxima of the teacher and student at temperature τ, and of the student at 1.
    var mt = LOWEST_F32;
    var ms = LOWEST_F32;
    var m1 = LOWEST_F32;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        let z = f32(student[base + i]);
        mt = max(mt, f32(teacher[base + i]) * p.inv_tau);
        ms = max(ms, z * p.inv_tau);
        m1 = max(m1, z);
    }
    mt = wg_max(mt, ids);
    ms = wg_max(ms, ids);
    m1 = wg_max(m1, ids);
    // With a = teacher/τ − mt and b = student/τ − ms: the normalisers and the two divergences'
    // sums, Σ e^a (a − b) and Σ e^b (b − a).
    var st = 0.0;
    var ss = 0.0;
    var s1 = 0.0;
    var df = 0.0;
    var dr = 0.0;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        let z = f32(student[base + i]);
        let a = f32(teacher[base + i]) * p.inv_tau - mt;
        let b = z * p.inv_tau - ms;
        let ea = exp(a);
        let eb = exp(b);
        st += ea;
        ss += eb;
        s1 += exp(z - m1);
        df += ea * (a - b);
        dr += eb * (b - a);
    }
    st = wg_sum(st, ids);
    ss = wg_sum(ss, ids);
    s1 = wg_sum(s1, ids);
    df = wg_sum(df, ids);
    dr = wg_sum(dr, ids);
    let log_st = log(st);
    let log_ss = log(ss);
    let lse1 = m1 + log(s1);
#ifdef JSD
    // m needs both normalised: a third pass for KL(p ‖ m) and KL(q ‖ m).
    var kp = 0.0;
    var kq = 0.0;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        let log_p = f32(teacher[base + i]) * p.inv_tau - mt - log_st;
        let log_q = f32(student[base + i]) * p.inv_tau - ms - log_ss;
        let log_m = log_mixture(log_p, log_q);
        kp += exp(log_p) * (log_p - log_m);
        kq += exp(log_q) * (log_q - log_m);
    }
    kp = wg_sum(kp, ids);
    kq = wg_sum(kq, ids);
    let div = p.beta * kp + (1.0 - p.beta) * kq;
#else
#ifdef REVERSE
    let div = dr / ss - log_ss + log_st;
#else
    let div = df / st - log_st + log_ss;
#endif
#endif
    let t = targets[row];
    let counted = t < p.vocab;
    var target_logit = 0.0;
    if (counted) {
        target_logit = f32(student[base + t]);
    }
    // Everyone has read student[t] before anyone overwrites it.
    workgroupBarrier();
    if (ids.lid == 0u) {
        loss[row] = select(0.0, p.kl_coef * div + p.alpha * (lse1 - target_logit), counted);
        kl[row] = select(0.0, div, counted);
    }
    let kl_scale = p.kl_coef * p.inv_tau;
    for (var i = ids.lid; i < p.vocab; i += WG) {
        var g = 0.0;
        if (counted) {
            let z = f32(student[base + i]);
            let log_p = f32(teacher[base + i]) * p.inv_tau - mt - log_st;
            let log_q = z * p.inv_tau - ms - log_ss;
            let q = exp(log_q);
#ifdef JSD
            let d_div = (1.0 - p.beta) * q * (log_q - log_mixture(log_p, log_q) - kq);
#else
#ifdef REVERSE
            let d_div = q * (log_q - log_p - div);
#else
            let d_div = q - exp(log_p);
#endif
#endif
            let ce = exp(z - lse1) - select(0.0, 1.0, i == t);
            g = p.grad_scale * (kl_scale * d_div + p.alpha * ce);
        }
        student[base + i] = T(g);
    }
}
