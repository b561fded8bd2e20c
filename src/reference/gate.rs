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
