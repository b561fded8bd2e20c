//! Reference for `ops::embedding`.

/// Rows of `table` (`[vocab, dim]`) at `ids`; ids past the vocabulary give zeros.
pub fn embedding(ids: &[u32], table: &[f32], dim: usize) -> Vec<f64> {
    let vocab = table.len() / dim;
    let mut y = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        if (id as usize) < vocab {
            y.extend(table[id as usize * dim..][..dim].iter().map(|&v| v as f64));
        } else {
            y.extend(std::iter::repeat_n(0.0, dim));
        }
    }
    y
}
