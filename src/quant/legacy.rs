//! The 32-value block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (layouts in the module docs).
//!
//! Quantizers mirror gguf-py 0.19.0's numpy code operation by operation, all in f32 (numpy
//! keeps float32 through every step there): same scale formula, same rounding (`np.trunc(x +
//! 8.5)` style for the 4/5-bit types, round-half-away-from-zero for Q8_0), same clipping, and
//! `id = 0` for a zero scale. Rust never contracts `a * b + c` into a fused multiply-add, like
//! numpy, so the bytes match exactly.
//!
//! Inputs reaching these functions are finite (checked by `quantize`).

use super::{read_f16, write_f16};

const QK: usize = 32;

/// The value of largest magnitude, the first one on ties (numpy's `argmax` of `abs`).
fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = x[0];
    for &v in &x[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// (min, max) by a first-wins scan. numpy's SIMD reductions may pick either zero when both
/// +0.0 and -0.0 are present; that can flip only the sign of a zero `m` (or of a zero `d`), and
/// never changes a dequantized value.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (x[0], x[0]);
    for &v in &x[1..] {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    (lo, hi)
}

/// `1 / d`, or 0 for a zero scale.
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// C's float-to-int conversion as x86-64 performs it (`cvttss2si`): truncation, and the
/// "integer indefinite" `i32::MIN` for NaN and out-of-range values. numpy's `astype(uint8)` /
/// `astype(int8)` is that conversion followed by keeping the low byte. It matters only when
/// `1 / d` overflows to infinity (a block whose largest |x| or range is below about 2e-38 to
/// 4e-37, depending on the type: f32's subnormal range): there numpy on x86-64 stores 0 for the infinite and NaN products, while on
/// Arm (saturating conversion) it would store 255 for +inf; Pupil follows x86-64 everywhere.
fn c_cast_x86(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// numpy's `np.trunc(v).astype(uint8).clip(0, max)`.
fn clip_u8(v: f32, max: u8) -> u8 {
    (c_cast_x86(v.trunc()) as u8).min(max)
}

fn pack_nibbles(q: &[u8; QK], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0x0f) | (q[j + QK / 2] << 4);
    }
}

fn pack_high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= (((v >> 4) & 1) as u32) << j;
    }
    qh.to_le_bytes()
}

pub(super) fn quantize_q4_0(x: &[f32], b: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    let q: [u8; QK] = std::array::from_fn(|i| clip_u8(x[i] * id + 8.5, 15));
    write_f16(b, 0, d);
    pack_nibbles(&q, &mut b[2..18]);
}

pub(super) fn quantize_q4_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let q: [u8; QK] = std::array::from_fn(|i| clip_u8((x[i] - min) * id + 0.5, 15));
    write_f16(b, 0, d);
    write_f16(b, 2, min);
    pack_nibbles(&q, &mut b[4..20]);
}

pub(super) fn quantize_q5_0(x: &[f32], b: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    let q: [u8; QK] = std::array::from_fn(|i| clip_u8(x[i] * id + 16.5, 31));
    write_f16(b, 0, d);
    b[2..6].copy_from_slice(&pack_high_bits(&q));
    pack_nibbles(&q, &mut b[6..22]);
}

pub(super) fn quantize_q5_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let q: [u8; QK] = std::array::from_fn(|i| clip_u8((x[i] - min) * id + 0.5, 31));
    write_f16(b, 0, d);
    write_f16(b, 2, min);
    b[4..8].copy_from_slice(&pack_high_bits(&q));
    pack_nibbles(&q, &mut b[8..24]);
}

pub(super) fn quantize_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    write_f16(b, 0, d);
    for (o, &v) in b[2..34].iter_mut().zip(x) {
        // gguf-py's np_roundf is round-half-away-from-zero, which `f32::round` is, for finite
        // values (|v * id| <= 127 * (1 + 2^-22)); np_roundf(±inf) is NaN, and both cast to 0.
        *o = c_cast_x86((v * id).round()) as u8;
    }
}

/// The 4-bit quants of a Q4_x block: `qs[j] & 0xF` for value j, `qs[j] >> 4` for j + 16.
fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < QK / 2 {
        qs[i] & 0x0f
    } else {
        qs[i - QK / 2] >> 4
    }
}

fn high_bit(qh: &[u8], i: usize) -> u8 {
    ((u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) >> i) & 1) as u8
}

pub(super) fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let qs = &b[2..18];
    for (i, o) in y.iter_mut().enumerate() {
        *o = d * (nibble(qs, i) as i32 - 8) as f32;
    }
}

pub(super) fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let m = read_f16(b, 2);
    let qs = &b[4..20];
    for (i, o) in y.iter_mut().enumerate() {
        *o = d * nibble(qs, i) as f32 + m;
    }
}

pub(super) fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let (qh, qs) = (&b[2..6], &b[6..22]);
    for (i, o) in y.iter_mut().enumerate() {
        let q = nibble(qs, i) | (high_bit(qh, i) << 4);
        *o = d * (q as i32 - 16) as f32;
    }
}

pub(super) fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let m = read_f16(b, 2);
    let (qh, qs) = (&b[4..8], &b[8..24]);
    for (i, o) in y.iter_mut().enumerate() {
        let q = nibble(qs, i) | (high_bit(qh, i) << 4);
        *o = d * q as f32 + m;
    }
}

pub(super) fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}
