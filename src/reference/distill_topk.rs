//! Reference for `ops::distill_loss::distill_topk_forward_backward`, in f64.

use super::distill_loss::log_softmax;

/// Per row: (loss, kl) and the gradient of `grad_scale · Σ loss` w.r.t. the student's logits,
/// for an offline teacher's `k` ids and log-probabilities per row (`top_ids`, `top_logp`,
/// `[rows, k]`): the forward KL between the teacher's and the student's (at temperature `tau`)
/// distributions over k + 1 buckets — the k ids, and the rest of the vocabulary as one (the
/// student's tail summed over the ids not among the k; the teacher's is 1 − Σ p, at least 0) —
/// times `kl_coef`, plus `alpha` · CE at temperature 1. Rows with a target ≥ vocab count for
/// nothing.
#[allow(clippy::too_many_arguments)]
pub fn distill_topk(
    student: &[f64],
    vocab: usize,
    (top_ids, top_logp, k): (&[u32], &[f64], usize),
    targets: &[u32],
    (tau, kl_coef, alpha): (f64, f64, f64),
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
        let mut in_top = vec![None; vocab];
        for (j, &id) in ids.iter().enumerate() {
            in_top[id as usize] = Some(j);
        }
        let tail_q: f64 = (0..vocab).filter(|&i| in_top[i].is_none()).map(|i| log_q[i].exp()).sum();
        let tail_p = (1.0 - lp.iter().map(|x| x.exp()).sum::<f64>()).max(0.0);
        let mut div: f64 = ids.iter().zip(lp).map(|(&id, &l)| l.exp() * (l - log_q[id as usize])).sum();
        if tail_p > 0.0 && k < vocab {
            div += tail_p * (tail_p.ln() - tail_q.ln());
        }
        loss.push(kl_coef * div - alpha * log_s[t as usize]);
        kl.push(div);
        for i in 0..vocab {
            let q = log_q[i].exp();
            // The teacher's mass on id i: its own, or its tail's share as the student spreads it.
            let p = match in_top[i] {
                Some(j) => lp[j].exp(),
                None => tail_p * q / tail_q,
            };
            let ce = log_s[i].exp() - if i == t as usize { 1.0 } else { 0.0 };
            grad.push(grad_scale * (kl_coef / tau * (q - p) + alpha * ce));
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
        for (tau, alpha) in [(1.0, 0.5), (2.0, 0.0)] {
            let (ids, lp) = top_k_of(&mut rng, rows, vocab, k, tau);
            let w = (tau, tau * tau, alpha);
            let (_, _, grad) = distill_topk(&zs, vocab, (&ids, &lp, k), &targets, w, 0.5);
            let total =
                |s: &[f64]| distill_topk(s, vocab, (&ids, &lp, k), &targets, w, 0.5).0.iter().sum::<f64>() * 0.5;
            check_gradient(&format!("distill_topk dlogits τ={tau}"), &zs, &grad, total);
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
        let (_, full, _) = distill_topk(&zs, vocab, (&ids, &lp, vocab), &[0], (tau, 1.0, 0.0), 1.0);
        let (dense_loss, _, dense) = crate::reference::distill_loss::distill_loss(
            &zs,
            &zt,
            vocab,
            &[0],
            (tau, 1.0, 0.0),
            crate::reference::distill_loss::Div::Forward,
            1.0,
        );
        assert!((full[0] - dense_loss[0]).abs() < 1e-12, "{} vs {}", full[0], dense_loss[0]);
        let (_, _, g) = distill_topk(&zs, vocab, (&ids, &lp, vocab), &[0], (tau, 1.0, 0.0), 1.0);
        assert!(g.iter().zip(&dense).all(|(a, b)| (a - b).abs() < 1e-12));
        let (ids4, lp4): (Vec<u32>, Vec<f64>) = ids.iter().zip(&lp).take(4).map(|(&i, &l)| (i, l)).unzip();
        let (_, coarse, _) = distill_topk(&zs, vocab, (&ids4, &lp4, 4), &[0], (tau, 1.0, 0.0), 1.0);
        assert!(coarse[0] < full[0] && coarse[0] > 0.0, "{} vs {}", coarse[0], full[0]);
    }
}
