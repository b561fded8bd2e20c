//! Random but valid blocks, for tests and synthetic models.

use super::{f32_to_bf16_bits, f32_to_f16_bits, QuantType};
use crate::rng::SplitMix64;

/// Random but valid `ty` blocks for `n_values` values (rounded down to whole blocks; never
/// panics), deterministic given `rng` (the same bytes natively and in WASM).
///
/// Every block gets a target magnitude `M = 2^u`, `u` uniform in [-4, 0) (so `M` in [1/16, 1)),
/// and scales that make its largest possible |value| about `M`: finite, realistic for model
/// weights. All quant bits are uniformly random.
///
/// - F32/F16/BF16: values uniform in [-M, M).
/// - Q4_0, Q5_0, Q8_0: `d = ±M / 8`, `±M / 16`, `±M / 127` (random sign).
/// - Q4_1, Q5_1: `d = M / 15`, `M / 31`; `m = -M · u`, `u` uniform in [0.25, 0.75).
/// - Q4_K, Q5_K: `d = M / (63 · 15)`, `M / (63 · 31)`; `dmin = M / (2 · 63)`; the twelve bytes
///   of 6-bit sub-scales and mins are random, so values lie in about [-M/2, M].
/// - Q6_K: `d = ±M / (128 · 32)` (often an f16 subnormal, as in real Q6_K files); the sixteen
///   8-bit sub-scales are random.
pub fn random_blocks(ty: QuantType, n_values: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let n_blocks = n_values / ty.block_size();
    let mut out = vec![0u8; n_blocks * ty.block_bytes()];
    for b in out.chunks_exact_mut(ty.block_bytes()) {
        let m = libm::exp2f(rng.uniform(-4.0, 0.0));
        let s = if rng.next_u64() & 1 == 0 { 1.0f32 } else { -1.0 };
        match ty {
            QuantType::F32 => b.copy_from_slice(&rng.uniform(-m, m).to_le_bytes()),
            QuantType::F16 => b.copy_from_slice(&f32_to_f16_bits(rng.uniform(-m, m)).to_le_bytes()),
            QuantType::BF16 => b.copy_from_slice(&f32_to_bf16_bits(rng.uniform(-m, m)).to_le_bytes()),
            QuantType::Q4_0 => fill(b, rng, &[(0, s * m / 8.0)]),
            QuantType::Q5_0 => fill(b, rng, &[(0, s * m / 16.0)]),
            QuantType::Q8_0 => fill(b, rng, &[(0, s * m / 127.0)]),
            QuantType::Q4_1 => {
                let min = -m * rng.uniform(0.25, 0.75);
                fill(b, rng, &[(0, m / 15.0), (2, min)])
            }
            QuantType::Q5_1 => {
                let min = -m * rng.uniform(0.25, 0.75);
                fill(b, rng, &[(0, m / 31.0), (2, min)])
            }
            QuantType::Q4_K => fill(b, rng, &[(0, m / (63.0 * 15.0)), (2, m / (2.0 * 63.0))]),
            QuantType::Q5_K => fill(b, rng, &[(0, m / (63.0 * 31.0)), (2, m / (2.0 * 63.0))]),
            QuantType::Q6_K => fill(b, rng, &[(208, s * m / (128.0 * 32.0))]),
        }
    }
    out
}

/// Random bytes everywhere, then the f16 fields `(offset, value)`.
fn fill(b: &mut [u8], rng: &mut SplitMix64, f16_fields: &[(usize, f32)]) {
    for chunk in b.chunks_mut(8) {
        let r = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    for &(at, v) in f16_fields {
        b[at..at + 2].copy_from_slice(&f32_to_f16_bits(v).to_le_bytes());
    }
}
