//! Reference for `ops::attention`: causal softmax attention straight from the definition.

use crate::ops::RopeConfig;

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
    /// StreamingLLM: sink tokens kept besides the window, RoPE at cache-relative positions.
    pub streaming: Option<StreamingSpec>,
    /// Packed documents: for every position, the position its document starts at; a query
    /// sees no key before it.
    pub doc_start: Option<Vec<usize>>,
}

impl AttentionSpec {
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize, scale: f64) -> Self {
        AttentionSpec {
            n_heads,
            n_kv_heads,
            head_dim,
            scale,
            window: None,
            softcap: None,
            sinks: None,
            streaming: None,
            doc_start: None,
        }
    }
}

/// StreamingLLM (Xiao et al. 2023) as the paper defines it for generation: the query at
/// position n keeps the first `sink_tokens` positions and the last W (the spec's window), and
/// positions are those inside that kept list — q and k are given unrotated and rotated here.
#[derive(Clone, Debug)]
pub struct StreamingSpec {
    pub sink_tokens: usize,
    pub rope: Option<RopeConfig>,
}

/// Rotate one head vector `x` at position `pos` (f64, from the RoPE definition).
fn rotate(x: &[f32], pos: usize, cfg: &RopeConfig) -> Vec<f64> {
    let half = cfg.n_rot / 2;
    let mut y: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for j in 0..half {
        let factor = cfg.freq_factors.as_ref().map_or(1.0, |f| f[j] as f64);
        let theta = pos as f64 * cfg.freq_scale * cfg.base.powf(-((2 * j) as f64) / cfg.n_rot as f64) / factor;
        let (i0, i1) = match cfg.layout {
            crate::ops::RopeLayout::Normal => (2 * j, 2 * j + 1),
            crate::ops::RopeLayout::NeoX => (j, j + half),
        };
        let (a, b) = (x[i0] as f64, x[i1] as f64);
        y[i0] = a * theta.cos() - b * theta.sin();
        y[i1] = a * theta.sin() + b * theta.cos();
    }
    y
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
        // The keys this query sees, in order.
        let first = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let first = s.doc_start.as_ref().map_or(first, |d| first.max(d[pos]));
        let mut kept: Vec<usize> = (first..=pos).collect();
        if let Some(st) = &s.streaming {
            let sinks: Vec<usize> = (0..st.sink_tokens.min(first)).collect();
            kept = sinks.into_iter().chain(kept).collect();
        }
        for h in 0..s.n_heads {
            let kvh = h / group;
            let qr = &q[(t * s.n_heads + h) * hd..][..hd];
            let rope = s.streaming.as_ref().and_then(|st| st.rope.as_ref());
            // StreamingLLM: the query at the last cache-relative position, key i at i.
            let qv: Vec<f64> = match rope {
                Some(r) => rotate(qr, kept.len() - 1, r),
                None => qr.iter().map(|&x| x as f64).collect(),
            };
            let logits: Vec<(usize, f64)> = kept
                .iter()
                .enumerate()
                .map(|(i, &kp)| {
                    let kr = &k[kv_row(kp, kvh)..][..hd];
                    let dot: f64 = match rope {
                        Some(r) => qv.iter().zip(rotate(kr, i, r)).map(|(a, b)| a * b).sum(),
                        None => qv.iter().zip(kr).map(|(&a, &b)| a * b as f64).sum(),
                    };
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

/// The keys query `i` of a packed sequence sees (no cache, no sinks): `j ≤ i`, `i − j < window`,
/// `j ≥ doc_start[i]`.
fn visible_keys(i: usize, window: Option<usize>, doc_start: Option<&[usize]>) -> std::ops::RangeInclusive<usize> {
    let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
    let first = doc_start.map_or(first, |d| first.max(d[i]));
    first..=i
}

/// Softmax attention over a packed sequence in f64 on f64 inputs (q `[t, n_heads, hd]`, k, v
/// `[t, n_kv_heads, hd]`): the output `[t, n_heads, hd]`. The forward that
/// [`attention_backward`] differentiates (and the finite differences perturb).
pub fn attention_packed_f64(q: &[f64], k: &[f64], v: &[f64], s: &AttentionSpec) -> Vec<f64> {
    let (hd, group) = (s.head_dim, s.n_heads / s.n_kv_heads);
    let tokens = q.len() / (s.n_heads * hd);
    let mut out = vec![0.0; q.len()];
    for i in 0..tokens {
        for h in 0..s.n_heads {
            let qr = &q[(i * s.n_heads + h) * hd..][..hd];
            let keys: Vec<usize> = visible_keys(i, s.window, s.doc_start.as_deref()).collect();
            let logits: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    s.scale
                        * qr.iter()
                            .zip(&k[(j * s.n_kv_heads + h / group) * hd..][..hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = w.iter().sum();
            let o = &mut out[(i * s.n_heads + h) * hd..][..hd];
            for (&j, wj) in keys.iter().zip(&w) {
                let vr = &v[(j * s.n_kv_heads + h / group) * hd..][..hd];
                for d in 0..hd {
                    o[d] += wj / sum * vr[d];
                }
            }
        }
    }
    out
}

/// Gradients `(dq, dk, dv)` of [`attention_packed_f64`] for upstream `dout`, by the chain rule
/// through the softmax (`ds = p·(dp − Σ p·dp)`), in f64. Softcap, sinks and streaming are not
/// part of the packed training forward.
pub fn attention_backward(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    s: &AttentionSpec,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (hd, group) = (s.head_dim, s.n_heads / s.n_kv_heads);
    let tokens = q.len() / (s.n_heads * hd);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for i in 0..tokens {
        for h in 0..s.n_heads {
            let row = (i * s.n_heads + h) * hd;
            let qr = &q[row..][..hd];
            let g = &dout[row..][..hd];
            let kv = |j: usize| (j * s.n_kv_heads + h / group) * hd;
            let keys: Vec<usize> = visible_keys(i, s.window, s.doc_start.as_deref()).collect();
            let logits: Vec<f64> = keys
                .iter()
                .map(|&j| s.scale * qr.iter().zip(&k[kv(j)..][..hd]).map(|(a, b)| a * b).sum::<f64>())
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
            let dp: Vec<f64> =
                keys.iter().map(|&j| g.iter().zip(&v[kv(j)..][..hd]).map(|(a, b)| a * b).sum::<f64>()).collect();
            let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (n, &j) in keys.iter().enumerate() {
                let ds = p[n] * (dp[n] - delta) * s.scale;
                for d in 0..hd {
                    dv[kv(j) + d] += p[n] * g[d];
                    dk[kv(j) + d] += ds * qr[d];
                    dq[row + d] += ds * k[kv(j) + d];
                }
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;
    use crate::rng::SplitMix64;

    /// dq, dk, dv against central differences of L = Σ out·dout, with GQA, a window and
    /// packed documents; and the f64 forward against the f32-input reference forward.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(9);
        let (tokens, nh, nkv, hd) = (7, 4, 2, 8);
        let mut spec = AttentionSpec::new(nh, nkv, hd, 0.4);
        spec.window = Some(4);
        spec.doc_start = Some(vec![0, 0, 0, 3, 3, 3, 3]);
        let f = |n: usize, rng: &mut SplitMix64| {
            rng.vec_nonzero(n, -1.5, 1.5).into_iter().map(|x| x as f64).collect::<Vec<f64>>()
        };
        let (q, k, v) = (f(tokens * nh * hd, &mut rng), f(tokens * nkv * hd, &mut rng), f(tokens * nkv * hd, &mut rng));
        let dout = f(tokens * nh * hd, &mut rng);
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &dout, &spec);
        let loss = |q: &[f64], k: &[f64], v: &[f64]| {
            attention_packed_f64(q, k, v, &spec).iter().zip(&dout).map(|(a, b)| a * b).sum::<f64>()
        };
        check_gradient("attention dq", &q, &dq, |x| loss(x, &k, &v));
        check_gradient("attention dk", &k, &dk, |x| loss(&q, x, &v));
        check_gradient("attention dv", &v, &dv, |x| loss(&q, &k, x));
        // The f64 forward is the same attention as the kernels' reference.
        let to32 = |x: &[f64]| x.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let pos: Vec<usize> = (0..tokens).collect();
        let (want, _) = attention(&to32(&q), &pos, &to32(&k), &to32(&v), &spec);
        let got = attention_packed_f64(
            &to32(&q).iter().map(|&a| a as f64).collect::<Vec<_>>(),
            &to32(&k).iter().map(|&a| a as f64).collect::<Vec<_>>(),
            &to32(&v).iter().map(|&a| a as f64).collect::<Vec<_>>(),
            &spec,
        );
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-12, "{err}");
    }
}
