//! f16 and bf16 conversions, in software so every platform (and WASM) gives the same bits.
//!
//! f16 follows numpy (`npy_floatbits_to_halfbits` / `npy_halfbits_to_floatbits`), which gguf-py
//! uses: round to nearest even, overflow to ±inf, NaN payloads kept (never quieted). Hardware
//! converters (F16C, and the `half` crate when it uses them) quiet signalling NaNs, hence
//! these hand-written versions. bf16 follows ggml (`ggml_compute_fp32_to_bf16`).

/// IEEE half-precision bits to f32, exactly (every f16 is an f32). NaN payloads are kept.
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let sig = (h & 0x03ff) as u32;
    let bits = match exp {
        0 => {
            if sig == 0 {
                sign
            } else {
                // Subnormal: sig * 2^-24, exact in f32.
                let v = sig as f32 * f32::from_bits(0x3380_0000);
                sign | v.to_bits()
            }
        }
        0x1f => sign | 0x7f80_0000 | (sig << 13),
        _ => sign | ((((h as u32) & 0x7fff) + 0x1_c000) << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE half-precision bits: round to nearest even, ±inf on overflow, NaN keeps its top
/// 10 payload bits (set to 1 if they were all zero, so a NaN stays a NaN).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let f = x.to_bits();
    let sign = ((f >> 16) & 0x8000) as u16;
    let a = f & 0x7fff_ffff;
    if a >= 0x7f80_0000 {
        if a == 0x7f80_0000 {
            return sign | 0x7c00;
        }
        let r = 0x7c00 | ((a & 0x007f_ffff) >> 13) as u16;
        return sign | if r == 0x7c00 { 0x7c01 } else { r };
    }
    if a >= 0x4780_0000 {
        // |x| >= 65536: overflow.
        return sign | 0x7c00;
    }
    if a < 0x3880_0000 {
        // Below 2^-14: an f16 subnormal (or zero), in units of 2^-24.
        if a < 0x3300_0000 {
            // Below 2^-25 (half a unit): rounds to zero (2^-25 itself ties to even zero too).
            return sign;
        }
        let e = a >> 23; // 102..=112
        let m = (a & 0x007f_ffff) | 0x0080_0000;
        let shift = 126 - e; // 14..=24
        return sign | round_shift(m, shift) as u16;
    }
    // Normal: rebias the exponent (127 -> 15), keep 10 mantissa bits, round; a carry moves into
    // the exponent and, at 65520 and above, into infinity, as it should.
    let base = (a - 0x3800_0000) >> 13;
    sign | round_shift_with(base, a & 0x1fff, 13) as u16
}

/// `m >> shift`, rounded to nearest even.
fn round_shift(m: u32, shift: u32) -> u32 {
    round_shift_with(m >> shift, m & ((1 << shift) - 1), shift)
}

/// Round `q` (the kept bits) up if the dropped bits `rem` (of `shift` bits) are above half, or
/// exactly half and `q` is odd.
fn round_shift_with(q: u32, rem: u32, shift: u32) -> u32 {
    let half = 1u32 << (shift - 1);
    if rem > half || (rem == half && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

/// bf16 bits to f32 (the bits are the top half of the f32), exactly.
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 to bf16 bits as ggml (and gguf-py) do: NaNs are quieted (bit 6 of the bf16 set, sign and
/// top payload bits kept), everything else rounds to nearest even (overflowing to ±inf).
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}
