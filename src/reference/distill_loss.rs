//! Reference for `ops::distill_loss`, in f64.

/// The divergence between teacher `p` and student `q` (written out here, apart from the op's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Div {
    /// KL(p ‖ q).
    Forward,
    /// KL(q ‖ p).
    Reverse,
    /// β·KL(p ‖ m) + (1 − β)·KL(q ‖ m), m = β·p + (1 − β)·q.
    Jsd(f64),
}

/// log softmax(row · scale).
pub fn log_softmax(row: &[f64], scale: f64) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x * scale));
    let lse = m + row.iter().map(|&x| (x * scale - m).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x * scale - lse).collect()
}

/// Per row: (loss, kl) and the gradient of `grad_scale · Σ loss` w.r.t. the student's logits,
/// for temperature `tau`, divergence weight `kl_coef`, CE weight `alpha` and divergence `div`
/// (its gradient by the chain rule through q's softmax, from dDiv/dq); rows with a target ≥
/// vocab count for nothing.
#[allow(clippy::too_many_arguments)]
pub fn distill_loss(
    student: &[f64],
    teacher: &[f64],
    vocab: usize,
    targets: &[u32],
    (tau, kl_coef, alpha): (f64, f64, f64),
    div_kind: Div,
    grad_scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut loss, mut kl, mut grad) = (Vec::new(), Vec::new(), Vec::new());
    for ((zs, zt), &t) in student.chunks(vocab).zip(teacher.chunks(vocab)).zip(targets) {
        if t as usize >= vocab {
            loss.push(0.0);
            kl.push(0.0);
            grad.extend(std::iter::repeat_n(0.0, vocab));
            continue;
        }
        let (log_p, log_q, log_s) = (log_softmax(zt, 1.0 / tau), log_softmax(zs, 1.0 / tau), log_softmax(zs, 1.0));
        let (p, q): (Vec<f64>, Vec<f64>) =
            (log_p.iter().map(|x| x.exp()).collect(), log_q.iter().map(|x| x.exp()).collect());
        let kl_of =
            |a: &[f64], log_a: &[f64], log_b: &[f64]| -> f64 { (0..vocab).map(|i| a[i] * (log_a[i] - log_b[i])).sum() };
        // The divergence and its derivative with respect to each q_i.
        let (div, d_dq): (f64, Vec<f64>) = match div_kind {
            Div::Forward => (kl_of(&p, &log_p, &log_q), (0..vocab).map(|i| -p[i] / q[i]).collect()),
            Div::Reverse => (kl_of(&q, &log_q, &log_p), (0..vocab).map(|i| log_q[i] - log_p[i] + 1.0).collect()),
            Div::Jsd(beta) => {
                let log_m: Vec<f64> = (0..vocab).map(|i| (beta * p[i] + (1.0 - beta) * q[i]).ln()).collect();
                let div = beta * kl_of(&p, &log_p, &log_m) + (1.0 - beta) * kl_of(&q, &log_q, &log_m);
                // d/dq_i of β·Σ p log(p/m) + (1 − β)·Σ q log(q/m), m_i depending on q_i.
                let m = |i: usize| log_m[i].exp();
                let d = (0..vocab)
                    .map(|i| {
                        -beta * p[i] * (1.0 - beta) / m(i)
                            + (1.0 - beta) * (log_q[i] - log_m[i] + 1.0 - q[i] * (1.0 - beta) / m(i))
                    })
                    .collect();
                (div, d)
            }
        };
        loss.push(kl_coef * div - alpha * log_s[t as usize]);
        kl.push(div);
        // Through the softmax at temperature τ: d/db_i = q_i (g_i − Σ_j q_j g_j), b = z/τ.
        let mean_g: f64 = (0..vocab).map(|j| q[j] * d_dq[j]).sum();
        for i in 0..vocab {
            let d_div = q[i] * (d_dq[i] - mean_g);
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
        for div in [Div::Forward, Div::Reverse, Div::Jsd(0.5), Div::Jsd(0.1), Div::Jsd(0.9)] {
            for (tau, alpha) in [(1.0, 0.5), (2.5, 0.1)] {
                let w = (tau, tau * tau, alpha);
                let (_, _, grad) = distill_loss(&zs, &zt, vocab, &targets, w, div, 0.25);
                let total =
                    |s: &[f64]| distill_loss(s, &zt, vocab, &targets, w, div, 0.25).0.iter().sum::<f64>() * 0.25;
                check_gradient(&format!("distill dlogits {div:?} τ={tau}"), &zs, &grad, total);
            }
        }
    }

    /// A divergence of a distribution from itself is 0; with α = 0 so is the loss, and the
    /// gradient.
    #[test]
    fn identical_teacher_gives_zero() {
        let z = [1.0, -2.0, 0.5, 3.0];
        for div in [Div::Forward, Div::Reverse, Div::Jsd(0.3)] {
            let (loss, kl, grad) = distill_loss(&z, &z, 4, &[2], (2.0, 4.0, 0.0), div, 1.0);
            assert!(loss[0].abs() < 1e-12 && kl[0].abs() < 1e-12 && grad.iter().all(|g| g.abs() < 1e-12), "{div:?}");
        }
    }

    /// The symmetric JSD of two distributions with (nearly) disjoint support is ln 2, its
    /// bound; and JSD_β / β tends to the forward KL(p ‖ q) as β → 0.
    #[test]
    fn jsd_bound_and_small_beta_limit() {
        let (zs, zt) = ([0.0, -60.0], [-60.0, 0.0]);
        let (_, kl, _) = distill_loss(&zs, &zt, 2, &[0], (1.0, 1.0, 0.0), Div::Jsd(0.5), 1.0);
        assert!((kl[0] - std::f64::consts::LN_2).abs() < 1e-9, "{}", kl[0]);
        let (zs, zt) = ([0.3, -1.0, 2.0], [1.0, 0.5, -0.5]);
        let (_, fwd, _) = distill_loss(&zs, &zt, 3, &[0], (1.0, 1.0, 0.0), Div::Forward, 1.0);
        let beta = 1e-6;
        let (_, jsd, _) = distill_loss(&zs, &zt, 3, &[0], (1.0, 1.0, 0.0), Div::Jsd(beta), 1.0);
        assert!((jsd[0] / beta - fwd[0]).abs() < 1e-4 * fwd[0], "{} vs {}", jsd[0] / beta, fwd[0]);
    }
}
