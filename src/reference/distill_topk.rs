//! Reference for `ops::distill_loss::distill_topk_forward_backward`, in f64.

use super::distill_loss::{log_softmax, Div};

/// The teacher's tail floor of the reverse KL and the JSD (the kernel's `TAIL_FLOOR`).
pub const TAIL_FLOOR: f64 = 1e-7;

/// Per row: (loss, kl) and the gradient of `grad_scale · Σ loss` w.r.t. the student's logits,
/// for an offline teacher's `k` ids and log-probabilities per row (`top_ids`, `top_logp`,
/// `[rows, k]`): the divergence `div` between the teacher's and the student's (at temperature
/// `tau`) distributions over k + 1 buckets — the k ids, and the rest of the vocabulary as one
/// (the student's tail summed over the ids not among the k; the teacher's is 1 − Σ p, at least
/// 0, floored at [`TAIL_FLOOR`] for the reverse KL and JSD; no tail bucket when k = vocab) —
/// times `kl_coef`, plus `alpha` · CE at temperature 1. The gradient goes through the buckets'
/// sums: dD/db_i = q_i (d_B(i) − Σ_B q̃_B d_B), d_B = dD/dq̃_B. Rows with a target ≥ vocab count
/// for nothing.
#[allow(clippy::too_many_arguments)]
pub fn distill_topk(
    student: &[f64],
    vocab: usize,
    (top_ids, top_logp, k): (&[u32], &[f64], usize),
    targets: &[u32],
    (tau, kl_coef, alpha): (f64, f64, f64),
    div_kind: Div,
    grad_scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut loss, mut kl, mut grad) = (Vec::new(), Vec::new(), Vec::new());
    for (r, (z, &t)) in student.chunks(vocab).zip(targets).enumerate() {
        if t as usize >= vocab {
            loss.push(0.0);
            kl.push(0.0);
            grad.extend(std::iter::repeat_n(0.0, vocab));
            continue;
        }
        let (ids, lp) = (&top_ids[r * k..(r + 1) * k], &top_logp[r * k..(r + 1) * k]);
        let (log_q, log_s) = (log_softmax(z, 1.0 / tau), log_softmax(z, 1.0));
        // Bucket b of each id: j for the teacher's j-th id, k for the tail.
        let mut bucket = vec![k; vocab];
        for (j, &id) in ids.iter().enumerate() {
            bucket[id as usize] = j;
        }
        let has_tail = k < vocab;
        let n_buckets = if has_tail { k + 1 } else { k };
        let mut qb: Vec<f64> = ids.iter().map(|&id| log_q[id as usize].exp()).collect();
        let mut pb: Vec<f64> = lp.iter().map(|x| x.exp()).collect();
        if has_tail {
            qb.push((0..vocab).filter(|&i| bucket[i] == k).map(|i| log_q[i].exp()).sum());
            let tail = (1.0 - pb.iter().sum::<f64>()).max(0.0);
            pb.push(if div_kind == Div::Forward { tail } else { tail.max(TAIL_FLOOR) });
        }
        // The divergence and its derivative by each bucket's student mass.
        let (div, d): (f64, Vec<f64>) = match div_kind {
            Div::Forward => (
                (0..n_buckets).filter(|&b| pb[b] > 0.0).map(|b| pb[b] * (pb[b] / qb[b]).ln()).sum(),
                (0..n_buckets).map(|b| -pb[b] / qb[b]).collect(),
            ),
            Div::Reverse => (
                (0..n_buckets).map(|b| qb[b] * (qb[b] / pb[b]).ln()).sum(),
                (0..n_buckets).map(|b| (qb[b] / pb[b]).ln() + 1.0).collect(),
            ),
            Div::Jsd(beta) => {
                let m: Vec<f64> = (0..n_buckets).map(|b| beta * pb[b] + (1.0 - beta) * qb[b]).collect();
                let div = (0..n_buckets)
                    .map(|b| beta * pb[b] * (pb[b] / m[b]).ln() + (1.0 - beta) * qb[b] * (qb[b] / m[b]).ln())
                    .sum();
                (div, (0..n_buckets).map(|b| (1.0 - beta) * (qb[b] / m[b]).ln()).collect())
            }
        };
        loss.push(kl_coef * div - alpha * log_s[t as usize]);
        kl.push(div);
        let mean_d: f64 = (0..n_buckets).map(|b| qb[b] * d[b]).sum();
        for i in 0..vocab {
            let q = log_q[i].exp();
            let d_div = q * (d[bucket[i]] - mean_d);
            let ce = log_s[i].exp() - if i == t as usize { 1.0 } else { 0.0 };
            grad.push(grad_scale * (kl_coef / tau * d_div + alpha * ce));
        }
    }
    (loss, kl, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;
    use crate::rng::SplitMix64;

    /// A teacher's top-k log-probabilities (at τ) of random logits: its k most likely ids.
    fn top_k_of(rng: &mut SplitMix64, rows: usize, vocab: usize, k: usize, tau: f64) -> (Vec<u32>, Vec<f64>) {
        let (mut ids, mut lps) = (Vec::new(), Vec::new());
        for _ in 0..rows {
            let z: Vec<f64> = rng.vec_nonzero(vocab, -4.0, 4.0).iter().map(|&x| x as f64 / tau).collect();
            let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
            for &i in &order[..k] {
                ids.push(i as u32);
                lps.push(z[i] - lse);
            }
        }
        (ids, lps)
    }

    /// The gradient (tail bucket, CE term, an ignored row) against finite differences of the
    /// loss, at τ = 1 and τ = 2.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(17);
        let (rows, vocab, k) = (3, 29, 5);
        let zs: Vec<f64> = rng.vec_nonzero(rows * vocab, -4.0, 4.0).iter().map(|&x| x as f64).collect();
        let targets = [3, u32::MAX, 28];
        for div in [Div::Forward, Div::Reverse, Div::Jsd(0.5), Div::Jsd(0.2)] {
            for (tau, alpha) in [(1.0, 0.5), (2.0, 0.0)] {
                let (ids, lp) = top_k_of(&mut rng, rows, vocab, k, tau);
                let w = (tau, tau * tau, alpha);
                let (_, _, grad) = distill_topk(&zs, vocab, (&ids, &lp, k), &targets, w, div, 0.5);
                let total = |s: &[f64]| {
                    distill_topk(s, vocab, (&ids, &lp, k), &targets, w, div, 0.5).0.iter().sum::<f64>() * 0.5
                };
                check_gradient(&format!("distill_topk dlogits {div:?} τ={tau}"), &zs, &grad, total);
            }
        }
    }

    /// With every id among the "top k" the tails are empty and the loss is the full KL; the
    /// coarse-grained KL never exceeds the full one (the data-processing inequality).
    #[test]
    fn full_vocabulary_gives_the_full_kl_and_fewer_ids_less() {
        let mut rng = SplitMix64::new(5);
        let (vocab, tau) = (13, 1.5);
        let zs: Vec<f64> = rng.vec_nonzero(vocab, -3.0, 3.0).iter().map(|&x| x as f64).collect();
        let zt: Vec<f64> = rng.vec_nonzero(vocab, -3.0, 3.0).iter().map(|&x| x as f64).collect();
        let lse = |z: &[f64]| z.iter().map(|x| (x / tau).exp()).sum::<f64>().ln();
        let lp: Vec<f64> = zt.iter().map(|x| x / tau - lse(&zt)).collect();
        let ids: Vec<u32> = (0..vocab as u32).collect();
        let (_, full, _) = distill_topk(&zs, vocab, (&ids, &lp, vocab), &[0], (tau, 1.0, 0.0), Div::Forward, 1.0);
        let (dense_loss, _, dense) =
            crate::reference::distill_loss::distill_loss(&zs, &zt, vocab, &[0], (tau, 1.0, 0.0), Div::Forward, 1.0);
        assert!((full[0] - dense_loss[0]).abs() < 1e-12, "{} vs {}", full[0], dense_loss[0]);
        let (_, _, g) = distill_topk(&zs, vocab, (&ids, &lp, vocab), &[0], (tau, 1.0, 0.0), Div::Forward, 1.0);
        assert!(g.iter().zip(&dense).all(|(a, b)| (a - b).abs() < 1e-12));
        let (ids4, lp4): (Vec<u32>, Vec<f64>) = ids.iter().zip(&lp).take(4).map(|(&i, &l)| (i, l)).unzip();
        let (_, coarse, _) = distill_topk(&zs, vocab, (&ids4, &lp4, 4), &[0], (tau, 1.0, 0.0), Div::Forward, 1.0);
        assert!(coarse[0] < full[0] && coarse[0] > 0.0, "{} vs {}", coarse[0], full[0]);
    }
}
