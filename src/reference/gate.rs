//! Reference for `ops::gate`: sigmoid gates and the causal running mean, in f64.

/// σ(x) = 1 / (1 + e^-x).
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Where gate logits lie (as `ops::GateInput`): one per element or per head, at
/// `t·token_stride + h·head_stride + offset (+ d)`.
#[derive(Clone, Copy, Debug)]
pub struct GateLayout {
    pub headwise: bool,
    pub token_stride: usize,
    pub head_stride: usize,
    pub offset: usize,
}

/// `y ⊙ σ(g)` over `y` `[tokens, heads, head_dim]`.
pub fn gate(y: &[f64], g: &[f32], layout: GateLayout, heads: usize, head_dim: usize) -> Vec<f64> {
    y.iter()
        .enumerate()
        .map(|(i, &v)| {
            let (d, h, t) = (i % head_dim, (i / head_dim) % heads, i / (head_dim * heads));
            let at = t * layout.token_stride + h * layout.head_stride + layout.offset;
            v * sigmoid(g[if layout.headwise { at } else { at + d }] as f64)
        })
        .collect()
}

/// Causal running mean of rows `x` `[positions, dim]` of one sequence: row t of the result is
/// the mean of rows 0..=t.
pub fn running_mean(x: &[f32], dim: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; dim];
    let mut out = Vec::with_capacity(x.len());
    for (t, row) in x.chunks(dim).enumerate() {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v as f64;
        }
        out.extend(sum.iter().map(|s| s / (t + 1) as f64));
    }
    out
}

/// Gradients of the elementwise gate `a ⊙ σ(g)` for upstream `dy`: `(da, dg)`.
pub fn gate_backward(a: &[f32], g: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let s: Vec<f64> = g.iter().map(|&x| sigmoid(x as f64)).collect();
    let da = dy.iter().zip(&s).map(|(&d, &s)| d as f64 * s).collect();
    let dg = dy.iter().zip(a).zip(&s).map(|((&d, &a), &s)| d as f64 * a as f64 * s * (1.0 - s)).collect();
    (da, dg)
}

#[cfg(test)]
mod backward_tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;
    use crate::rng::SplitMix64;

    #[test]
    fn gate_backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(13);
        let (a, g, dy) =
            (rng.vec_nonzero(50, -2.0, 2.0), rng.vec_nonzero(50, -6.0, 6.0), rng.vec_nonzero(50, -1.0, 1.0));
        let (da, dg) = gate_backward(&a, &g, &dy);
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (a64, g64) = (f64s(&a), f64s(&g));
        let loss = |a: &[f64], g: &[f64]| a.iter().zip(g).zip(&dy).map(|((a, g), &d)| a * sigmoid(*g) * d as f64).sum();
        check_gradient("gate da", &a64, &da, |x| loss(x, &g64));
        check_gradient("gate dg", &g64, &dg, |x| loss(&a64, x));
    }
}
