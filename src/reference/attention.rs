//! Reference for `ops::attention`: causal softmax attention straight from the definition.

/// Head layout and masking, as in `ops::AttentionConfig` (scale already resolved).
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    /// A query at p sees keys in (p - W, p]; `None`: every key at or before p.
    pub window: Option<usize>,
    pub softcap: Option<f64>,
    /// Per query head, a logit that joins every softmax without a value (gpt-oss sinks).
    pub sinks: Option<Vec<f64>>,
}

/// Queries `q` `[tokens, n_heads, head_dim]` at positions `q_pos` against the keys and values
/// of every position of the sequence, `k`, `v` `[positions, n_kv_heads, head_dim]` (row p is
/// position p). Query head h uses KV head h / (n_heads / n_kv_heads).
/// Returns (out `[tokens, n_heads, head_dim]`, log-sum-exp of the logits `[tokens, n_heads]`).
pub fn attention(q: &[f32], q_pos: &[usize], k: &[f32], v: &[f32], s: &AttentionSpec) -> (Vec<f64>, Vec<f64>) {
    let (hd, group) = (s.head_dim, s.n_heads / s.n_kv_heads);
    let kv_row = |p: usize, kvh: usize| (p * s.n_kv_heads + kvh) * hd;
    let mut out = Vec::with_capacity(q.len());
    let mut lse = Vec::with_capacity(q_pos.len() * s.n_heads);
    for (t, &pos) in q_pos.iter().enumerate() {
        for h in 0..s.n_heads {
            let kvh = h / group;
            let qr = &q[(t * s.n_heads + h) * hd..][..hd];
            let first = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let logits: Vec<(usize, f64)> = (first..=pos)
                .map(|kp| {
                    let kr = &k[kv_row(kp, kvh)..][..hd];
                    let dot: f64 = qr.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let x = dot * s.scale;
                    (kp, s.softcap.map_or(x, |c| c * (x / c).tanh()))
                })
                .collect();
            let sink = s.sinks.as_ref().map(|v| v[h]);
            let m = logits.iter().map(|&(_, x)| x).chain(sink).fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<(usize, f64)> = logits.iter().map(|&(kp, x)| (kp, (x - m).exp())).collect();
            let sum: f64 = w.iter().map(|&(_, e)| e).sum::<f64>() + sink.map_or(0.0, |x| (x - m).exp());
            for d in 0..hd {
                out.push(w.iter().map(|&(kp, e)| e * v[kv_row(kp, kvh) + d] as f64).sum::<f64>() / sum);
            }
            lse.push(m + sum.ln());
        }
    }
    (out, lse)
}
