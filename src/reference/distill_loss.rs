//! Reference for `ops::distill_loss`, in f64.

/// Per row: (loss, kl) and the gradient of `grad_scale · Σ loss` w.r.t. the student's logits,
/// for temperature `tau`, divergence weight `kl_coef`, CE weight `alpha`, forward KL(p ‖ q) or
/// (`reverse`) KL(q ‖ p); rows with a target ≥ vocab count for nothing.
#[allow(clippy::too_many_arguments)]
pub fn distill_loss(
    student: &[f64],
    teacher: &[f64],
    vocab: usize,
    targets: &[u32],
    (tau, kl_coef, alpha): (f64, f64, f64),
    reverse: bool,
    grad_scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let log_softmax = |row: &[f64], scale: f64| -> Vec<f64> {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x * scale));
        let lse = m + row.iter().map(|&x| (x * scale - m).exp()).sum::<f64>().ln();
        row.iter().map(|&x| x * scale - lse).collect()
    };
    let (mut loss, mut kl, mut grad) = (Vec::new(), Vec::new(), Vec::new());
    for ((zs, zt), &t) in student.chunks(vocab).zip(teacher.chunks(vocab)).zip(targets) {
        if t as usize >= vocab {
            loss.push(0.0);
            kl.push(0.0);
            grad.extend(std::iter::repeat_n(0.0, vocab));
            continue;
        }
        let (log_p, log_q, log_s) = (log_softmax(zt, 1.0 / tau), log_softmax(zs, 1.0 / tau), log_softmax(zs, 1.0));
        let div: f64 = if reverse {
            log_q.iter().zip(&log_p).map(|(lq, lp)| lq.exp() * (lq - lp)).sum()
        } else {
            log_p.iter().zip(&log_q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum()
        };
        loss.push(kl_coef * div - alpha * log_s[t as usize]);
        kl.push(div);
        for i in 0..vocab {
            let (p, q) = (log_p[i].exp(), log_q[i].exp());
            let d_div = if reverse { q * (log_q[i] - log_p[i] - div) } else { q - p };
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

    /// Both divergences' gradients (with the CE term and an ignored row) against finite
    /// differences of the loss, at τ = 1 and τ = 2.5.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(9);
        let (rows, vocab) = (3, 23);
        let zs: Vec<f64> = rng.vec_nonzero(rows * vocab, -5.0, 5.0).iter().map(|&x| x as f64).collect();
        let zt: Vec<f64> = rng.vec_nonzero(rows * vocab, -5.0, 5.0).iter().map(|&x| x as f64).collect();
        let targets = [7, u32::MAX, 22];
        for reverse in [false, true] {
            for (tau, alpha) in [(1.0, 0.5), (2.5, 0.1)] {
                let w = (tau, tau * tau, alpha);
                let (_, _, grad) = distill_loss(&zs, &zt, vocab, &targets, w, reverse, 0.25);
                let total =
                    |s: &[f64]| distill_loss(s, &zt, vocab, &targets, w, reverse, 0.25).0.iter().sum::<f64>() * 0.25;
                check_gradient(&format!("distill dlogits reverse={reverse} τ={tau}"), &zs, &grad, total);
            }
        }
    }

    /// KL of a distribution with itself is 0; with α = 0 so is the loss, and the gradient.
    #[test]
    fn identical_teacher_gives_zero() {
        let z = [1.0, -2.0, 0.5, 3.0];
        let (loss, kl, grad) = distill_loss(&z, &z, 4, &[2], (2.0, 4.0, 0.0), false, 1.0);
        assert!(loss[0].abs() < 1e-12 && kl[0].abs() < 1e-12 && grad.iter().all(|g| g.abs() < 1e-12));
    }
}
