//! Reference for `ops::cross_entropy`.

/// Per-row loss `logsumexp(l) − l[target]` and the gradient `(softmax(l) − onehot)·grad_scale`
/// (0 and a zero row for a target ≥ vocab, the ignored ones), in f64.
pub fn cross_entropy(logits: &[f32], vocab: usize, targets: &[u32], grad_scale: f64) -> (Vec<f64>, Vec<f64>) {
    let mut loss = Vec::with_capacity(targets.len());
    let mut grad = Vec::with_capacity(logits.len());
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        if t as usize >= vocab {
            loss.push(0.0);
            grad.extend(std::iter::repeat_n(0.0, vocab));
            continue;
        }
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        loss.push(lse - row[t as usize] as f64);
        grad.extend(
            row.iter()
                .enumerate()
                .map(|(i, &x)| ((x as f64 - lse).exp() - if i == t as usize { 1.0 } else { 0.0 }) * grad_scale),
        );
    }
    (loss, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;
    use crate::rng::SplitMix64;

    /// The gradient is that of Σ loss · grad_scale, ignored rows included (zero).
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(5);
        let (rows, vocab) = (3, 17);
        let logits = rng.vec_nonzero(rows * vocab, -6.0, 6.0);
        let targets = [4, u32::MAX, 16];
        let (_, grad) = cross_entropy(&logits, vocab, &targets, 0.5);
        let total = |l: &[f64]| -> f64 {
            l.chunks(vocab)
                .zip(&targets)
                .filter(|(_, &t)| (t as usize) < vocab)
                .map(|(row, &t)| {
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    (m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - row[t as usize]) * 0.5
                })
                .sum()
        };
        let l64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        check_gradient("cross_entropy dlogits", &l64, &grad, total);
    }
}
