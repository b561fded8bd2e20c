//! K-quant dequantization (Q4_K, Q5_K, Q6_K; layouts in the module docs), in the operation
//! order of ggml's `dequantize_row_q{4,5,6}_K`, which gguf-py's numpy code also follows:
//!
//! - Q4_K/Q5_K: `d1 = d * sc`, `m1 = dmin * mn` (per 32-value sub-block), `y = d1 * q - m1`.
//! - Q6_K: `y = (d * scale) * (q - 32)`.

use super::{read_f16, QK_K};

/// The 6-bit (scale, min) of sub-block `j` (0..8) in a Q4_K/Q5_K `scales[12]` array (ggml's
/// `get_scale_min_k4`).
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

pub(super) fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let dmin = read_f16(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..QK_K / 64 {
        let q = &qs[32 * c..32 * c + 32];
        for half in 0..2 {
            let (sc, mn) = get_scale_min_k4(2 * c + half, scales);
            let d1 = d * sc as f32;
            let m1 = dmin * mn as f32;
            let out = &mut y[64 * c + 32 * half..64 * c + 32 * half + 32];
            for (l, o) in out.iter_mut().enumerate() {
                let v = (q[l] >> (4 * half)) & 0x0f;
                *o = d1 * v as f32 - m1;
            }
        }
    }
}

pub(super) fn dequantize_q5_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let dmin = read_f16(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..QK_K / 64 {
        let q = &qs[32 * c..32 * c + 32];
        for half in 0..2 {
            let (sc, mn) = get_scale_min_k4(2 * c + half, scales);
            let d1 = d * sc as f32;
            let m1 = dmin * mn as f32;
            let bit = 2 * c + half;
            let out = &mut y[64 * c + 32 * half..64 * c + 32 * half + 32];
            for (l, o) in out.iter_mut().enumerate() {
                let v = ((q[l] >> (4 * half)) & 0x0f) | (((qh[l] >> bit) & 1) << 4);
                *o = d1 * v as f32 - m1;
            }
        }
    }
}

pub(super) fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = read_f16(b, 208);
    for h in 0..2 {
        let ql = &ql[64 * h..64 * h + 64];
        let qh = &qh[32 * h..32 * h + 32];
        for k in 0..4 {
            for l in 0..32 {
                let i = 32 * k + l;
                let low = (ql[l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0f;
                let high = (qh[l] >> (2 * k)) & 3;
                let q = (low | (high << 4)) as i32 - 32;
                let sc = scales[8 * h + i / 16] as i8;
                y[128 * h + i] = d * sc as f32 * q as f32;
            }
        }
    }
}
