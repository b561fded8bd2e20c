//! Reference for `ops::topk`.

use super::argmax::before;

/// The `k` best (index, value) of each row in order; NaN never chosen, missing slots are
/// `(u32::MAX, f32::MIN)`.
pub fn topk(x: &[f32], width: usize, k: usize) -> Vec<(u32, f32)> {
    let mut out = Vec::new();
    for row in x.chunks(width) {
        let mut items: Vec<(f32, usize)> = row.iter().copied().zip(0..).filter(|(v, _)| !v.is_nan()).collect();
        items.sort_by(|&a, &b| before(a, b));
        for r in 0..k {
            out.push(items.get(r).map_or((u32::MAX, f32::MIN), |&(v, i)| (i as u32, v)));
        }
    }
    out
}
