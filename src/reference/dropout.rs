//! Reference for `ops::dropout`: the mask, and inverted dropout with it.

/// PCG's output permutation (as `shaders/dropout.wgsl`'s `pcg_hash`).
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Does element `i` survive dropout with probability `p` under `seed`?
pub fn keep(seed: u32, i: u32, p: f32) -> bool {
    (pcg_hash(pcg_hash(seed) ^ i) >> 8) >= threshold(p)
}

/// The 24-bit threshold below which an element is dropped.
pub fn threshold(p: f32) -> u32 {
    (p as f64 * (1u32 << 24) as f64).round() as u32
}

/// `acc + mask(x) / (1 − p)` (acc zero when not accumulating).
pub fn dropout(x: &[f32], acc: Option<&[f32]>, p: f32, seed: u32) -> Vec<f64> {
    let scale = 1.0 / (1.0 - p as f64);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let kept = if keep(seed, i as u32, p) { v as f64 * scale } else { 0.0 };
            kept + acc.map_or(0.0, |a| a[i] as f64)
        })
        .collect()
}
