//! Reference for token sampling (`ops::sampling` + `sampling`): the processed logits and the
//! distribution a token is drawn from, in f64, written from the definitions:
//!
//! 1. repetition penalty (llama.cpp / transformers): each distinct id among the last
//!    `repetition_last_n` tokens of `recent` (all of them when 0) has its logit divided by
//!    the penalty when positive, multiplied by it otherwise;
//! 2. temperature: logits / T (T = 0 is greedy: the arg-max, lowest index among equals);
//! 3. top-k: the k largest (lowest index first among equals);
//! 4. top-p over the top-k distribution: the smallest prefix (in that order) whose
//!    probability reaches `top_p`;
//! 5. min-p: tokens whose probability is at least `min_p` times the largest;
//! 6. renormalise. -inf logits have probability 0; NaN logits are an error (here: a panic,
//!    the reference is for tests).

use crate::sampling::SamplerConfig;

/// The processed logits of one row (penalty, then temperature; greedy uses T = 1).
pub fn process_logits(x: &[f32], recent: &[u32], cfg: &SamplerConfig) -> Vec<f64> {
    let t = if cfg.temperature == 0.0 { 1.0 } else { cfg.temperature as f64 };
    let pen = cfg.repetition_penalty as f64;
    let window =
        if cfg.repetition_last_n == 0 { recent } else { &recent[recent.len().saturating_sub(cfg.repetition_last_n)..] };
    let mut y: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    if pen != 1.0 {
        let mut seen = vec![false; x.len()];
        for &id in window {
            let i = id as usize;
            if !seen[i] {
                seen[i] = true;
                y[i] = if y[i] > 0.0 { y[i] / pen } else { y[i] * pen };
            }
        }
    }
    y.iter().map(|v| v / t).collect()
}

/// Probability of every token of the row under `cfg` (given processed logits).
pub fn distribution(logits: &[f64], cfg: &SamplerConfig) -> Vec<f64> {
    assert!(logits.iter().all(|v| !v.is_nan() && *v != f64::INFINITY), "NaN or +inf logits");
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] > f64::NEG_INFINITY).collect();
    assert!(!order.is_empty(), "no finite logit");
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap().then(a.cmp(&b)));
    let mut p = vec![0.0; logits.len()];
    if cfg.temperature == 0.0 {
        p[order[0]] = 1.0;
        return p;
    }
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let softmax = |ids: &[usize]| -> Vec<f64> {
        let m = logits[ids[0]];
        let e: Vec<f64> = ids.iter().map(|&i| (logits[i] - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect()
    };
    if (cfg.top_p as f64) < 1.0 {
        let probs = softmax(&order);
        let mut cum = 0.0;
        let mut keep = order.len();
        for (n, q) in probs.iter().enumerate() {
            cum += q;
            if cum >= cfg.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        order.truncate(keep);
    }
    if cfg.min_p > 0.0 {
        let probs = softmax(&order);
        let floor = cfg.min_p as f64 * probs[0];
        let keep = probs.iter().take_while(|&&q| q >= floor).count();
        order.truncate(keep);
    }
    for (&i, q) in order.iter().zip(softmax(&order)) {
        p[i] = q;
    }
    p
}

/// Statistics of a row as the candidates kernel reports them: (max, log-sum-exp) over the
/// finite values, the number of NaN and +inf values, the number of finite values.
pub fn row_stats(x: &[f32]) -> (f64, f64, u32, u32) {
    let finite: Vec<f64> = x.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
    let bad = x.iter().filter(|v| v.is_nan() || **v == f32::INFINITY).count() as u32;
    let m = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + finite.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    (m, lse, bad, finite.len() as u32)
}
