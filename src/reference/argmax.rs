//! Reference for `ops::argmax`, and the element order shared with `topk`.

use std::cmp::Ordering;

/// Total order used by argmax/top-k: larger value first, lower index first among equals;
/// NaN after everything.
pub(crate) fn before(a: (f32, usize), b: (f32, usize)) -> Ordering {
    match (a.0.is_nan(), b.0.is_nan()) {
        (true, true) => a.1.cmp(&b.1),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)),
    }
}

/// Index of each row's maximum (`u32::MAX` for an all-NaN row).
pub fn argmax(x: &[f32], width: usize) -> Vec<u32> {
    x.chunks(width)
        .map(|row| {
            let best = row.iter().copied().zip(0..).min_by(|&a, &b| before(a, b)).unwrap();
            if best.0.is_nan() {
                u32::MAX
            } else {
                best.1 as u32
            }
        })
        .collect()
}
