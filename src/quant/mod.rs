//! GGUF/ggml tensor storage formats on the CPU: decode ([`dequantize`]), encode ([`quantize`])
//! and random valid blocks for tests and synthetic models ([`random_blocks`]).
//!
//! Results are checked against gguf-py 0.19.0 (`gguf.quants`), an independent implementation,
//! by the fixtures in `tests/fixtures/quant/` (`tests/quant_formats.rs`).
//!
//! # Block layouts
//!
//! Every multi-byte field is little-endian. `f16` is IEEE half precision. A tensor row of `n`
//! values is `n / block_size` blocks back to back, with no padding, and values are numbered
//! from 0 inside a block. `d`, `m`, `dmin` are f16 scales/offsets.
//!
//! | type | values | bytes | fields, in order | value `i` |
//! |---|---|---|---|---|
//! | F32  | 1 | 4 | f32 | the f32 |
//! | F16  | 1 | 2 | f16 | the f16 |
//! | BF16 | 1 | 2 | bf16 (the top 16 bits of an f32) | `bits << 16` as f32 |
//! | Q4_0 | 32 | 18 | `d`, `qs[16]` | `d * (q - 8)` |
//! | Q4_1 | 32 | 20 | `d`, `m`, `qs[16]` | `d * q + m` |
//! | Q5_0 | 32 | 22 | `d`, `qh: u32`, `qs[16]` | `d * (q - 16)` |
//! | Q5_1 | 32 | 24 | `d`, `m`, `qh: u32`, `qs[16]` | `d * q + m` |
//! | Q8_0 | 32 | 34 | `d`, `qs[32]: i8` | `d * qs[i]` |
//! | Q4_K | 256 | 144 | `d`, `dmin`, `scales[12]`, `qs[128]` | `(d * sc[s]) * q - dmin * mn[s]` |
//! | Q5_K | 256 | 176 | `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]` | same as Q4_K, 5-bit `q` |
//! | Q6_K | 256 | 210 | `ql[128]`, `qh[64]`, `scales[16]: i8`, `d` | `(d * scales[i / 16]) * (q - 32)` |
//!
//! Bit packing of the quants `q` (all unsigned before the offset is subtracted):
//!
//! - **Q4_0, Q4_1** (`j` in 0..16): `q[j] = qs[j] & 0xF`, `q[j + 16] = qs[j] >> 4`.
//! - **Q5_0, Q5_1**: the low 4 bits as in Q4_0; bit 4 of `q[i]` (i in 0..32) is bit `i` of the
//!   u32 `qh`.
//! - **Q4_K**: four 64-value chunks `c`, each using `qs[32c..32c + 32]`: `q[64c + l] =
//!   qs[32c + l] & 0xF` (sub-block `2c`), `q[64c + 32 + l] = qs[32c + l] >> 4` (sub-block
//!   `2c + 1`). Eight 32-value sub-blocks `s` have a 6-bit scale `sc[s]` and a 6-bit min
//!   `mn[s]` packed in `scales[12]` (ggml's `get_scale_min_k4`): for `s < 4`, `sc = scales[s]
//!   & 63`, `mn = scales[s + 4] & 63`; for `s >= 4`, `sc = (scales[s + 4] & 0xF) |
//!   ((scales[s - 4] >> 6) << 4)`, `mn = (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4)`.
//! - **Q5_K**: low 4 bits and scales as in Q4_K; bit 4 of `q[64c + l]` is bit `2c` of `qh[l]`,
//!   bit 4 of `q[64c + 32 + l]` is bit `2c + 1` of `qh[l]` (l in 0..32).
//! - **Q6_K**: two 128-value halves `h`, each using `ql[64h..64h + 64]` and `qh[32h..32h + 32]`;
//!   for `l` in 0..32 and `k` in 0..4, value `128h + 32k + l` has low 4 bits `ql[64h + l + 32 (k
//!   & 1)]`, nibble `k >> 1` (low nibble for k = 0, 1, high for k = 2, 3), and high 2 bits
//!   `(qh[32h + l] >> 2k) & 3`. Sixteen 16-value sub-blocks each have a signed 8-bit scale.
//!
//! # Arithmetic
//!
//! Dequantization uses f32 in ggml's operation order (`dequantize_row_*`), with no fused
//! multiply-add, which is also what gguf-py's numpy code computes: the fixtures match bit for
//! bit. f16 conversions follow numpy's (round to nearest even; NaN payloads kept, not quieted).

mod float;
mod kquantize;
mod kquants;
mod legacy;
mod random;

pub use float::{bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits};
pub(crate) use kquants::get_scale_min_k4;
pub use random::random_blocks;

use crate::error::{PupilError, Result};

/// A tensor storage type of GGUF/ggml that Pupil reads and writes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Values per K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

impl QuantType {
    pub const ALL: [QuantType; 11] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// The type's id in GGUF files (`enum ggml_type`).
    pub fn ggml_id(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q8_0 => 8,
            QuantType::Q4_K => 12,
            QuantType::Q5_K => 13,
            QuantType::Q6_K => 14,
            QuantType::BF16 => 30,
        }
    }

    /// The type with this GGUF id, if Pupil supports it.
    pub fn from_ggml_id(id: u32) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// ggml's name: `"F32"`, `"Q4_K"`, ...
    pub fn name(self) -> &'static str {
        match self {
            QuantType::F32 => "F32",
            QuantType::F16 => "F16",
            QuantType::BF16 => "BF16",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_K => "Q4_K",
            QuantType::Q5_K => "Q5_K",
            QuantType::Q6_K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1,
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q8_0 => 32,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => QK_K,
        }
    }

    /// Bytes per block as stored in GGUF.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::F32 => 4,
            QuantType::F16 | QuantType::BF16 => 2,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
            QuantType::Q8_0 => 34,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
        }
    }

    /// Bytes that `n_values` values take; an error unless `n_values` is a multiple of the block
    /// size (or the byte count overflows `usize`).
    pub fn row_bytes(self, n_values: usize) -> Result<usize> {
        let bs = self.block_size();
        if !n_values.is_multiple_of(bs) {
            return Err(PupilError::arg(
                "quant",
                format!("{} values are not a whole number of {} blocks of {bs}", n_values, self.name()),
            ));
        }
        (n_values / bs)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| PupilError::arg("quant", format!("{n_values} {} values overflow usize bytes", self.name())))
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Dequantize `n_values` values stored as `ty` in `bytes`, which must be exactly
/// `ty.row_bytes(n_values)` long (else an error), as ggml's `dequantize_row_*` does: f32
/// arithmetic in ggml's operation order, no fused multiply-add. Never fails on the content of
/// the bytes: NaN/inf scales simply decode to non-finite values.
pub fn dequantize(ty: QuantType, bytes: &[u8], n_values: usize) -> Result<Vec<f32>> {
    let want = ty.row_bytes(n_values)?;
    if bytes.len() != want {
        return Err(PupilError::arg(
            "quant::dequantize",
            format!("{n_values} {ty} values take {want} bytes, got {}", bytes.len()),
        ));
    }
    let mut out = vec![0.0f32; n_values];
    let bs = ty.block_size();
    let blocks = bytes.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(bs));
    match ty {
        QuantType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        QuantType::F16 => blocks.for_each(|(b, y)| y[0] = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        QuantType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        QuantType::Q4_0 => blocks.for_each(|(b, y)| legacy::dequantize_q4_0(b, y)),
        QuantType::Q4_1 => blocks.for_each(|(b, y)| legacy::dequantize_q4_1(b, y)),
        QuantType::Q5_0 => blocks.for_each(|(b, y)| legacy::dequantize_q5_0(b, y)),
        QuantType::Q5_1 => blocks.for_each(|(b, y)| legacy::dequantize_q5_1(b, y)),
        QuantType::Q8_0 => blocks.for_each(|(b, y)| legacy::dequantize_q8_0(b, y)),
        QuantType::Q4_K => blocks.for_each(|(b, y)| kquants::dequantize_q4_k(b, y)),
        QuantType::Q5_K => blocks.for_each(|(b, y)| kquants::dequantize_q5_k(b, y)),
        QuantType::Q6_K => blocks.for_each(|(b, y)| kquants::dequantize_q6_k(b, y)),
    }
    Ok(out)
}

/// Quantize f32 values (a multiple of the block size, else an error) to `ty`'s GGUF bytes.
///
/// - F32, F16, BF16: any input, NaN and infinities included. F16 rounds to nearest even,
///   overflows to ±inf and keeps the top NaN payload bits (numpy's `astype(float16)`); BF16
///   rounds to nearest even and quiets NaNs (ggml's `ggml_compute_fp32_to_bf16`).
/// - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: byte for byte gguf-py 0.19.0's `gguf.quants.quantize` (itself
///   ggml's `quantize_row_*_ref`). An error if any value is NaN or infinite. Finite values whose
///   f16 scale or offset would overflow store ±inf there, as gguf-py and ggml do: Q4_1/Q5_1
///   once |block minimum| exceeds 65504 (f16's largest finite value) or the block's range
///   exceeds about 9.8e5 / 2e6; Q4_0, Q5_0, Q8_0 once max|x| exceeds about 5.2e5, 1e6, 8.3e6.
/// - Q4_K, Q5_K, Q6_K: llama.cpp's reference quantizers (`quantize_row_q{4,5,6}_K_ref`,
///   `make_qkx2_quants`/`make_qx_quants`). An error for NaN or infinite values. Finite values
///   never panic; the f16 `dmin` of Q4_K/Q5_K overflows once a sub-block minimum is below about
///   -4e6, `d` once values span about 6e7 (Q4_K), 1.3e8 (Q5_K), 2.7e8 (Q6_K), and such blocks
///   decode to non-finite values.
pub fn quantize(ty: QuantType, values: &[f32]) -> Result<Vec<u8>> {
    let n_bytes = ty.row_bytes(values.len())?;
    let needs_finite = !matches!(ty, QuantType::F32 | QuantType::F16 | QuantType::BF16);
    if needs_finite {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(PupilError::arg(
                "quant::quantize",
                format!("{ty} cannot encode the non-finite value {} at index {i}", values[i]),
            ));
        }
    }
    let mut out = vec![0u8; n_bytes];
    let bs = ty.block_size();
    let blocks = values.chunks_exact(bs).zip(out.chunks_exact_mut(ty.block_bytes()));
    match ty {
        QuantType::F32 => blocks.for_each(|(x, b)| b.copy_from_slice(&x[0].to_le_bytes())),
        QuantType::F16 => blocks.for_each(|(x, b)| b.copy_from_slice(&f32_to_f16_bits(x[0]).to_le_bytes())),
        QuantType::BF16 => blocks.for_each(|(x, b)| b.copy_from_slice(&f32_to_bf16_bits(x[0]).to_le_bytes())),
        QuantType::Q4_0 => blocks.for_each(|(x, b)| legacy::quantize_q4_0(x, b)),
        QuantType::Q4_1 => blocks.for_each(|(x, b)| legacy::quantize_q4_1(x, b)),
        QuantType::Q5_0 => blocks.for_each(|(x, b)| legacy::quantize_q5_0(x, b)),
        QuantType::Q5_1 => blocks.for_each(|(x, b)| legacy::quantize_q5_1(x, b)),
        QuantType::Q8_0 => blocks.for_each(|(x, b)| legacy::quantize_q8_0(x, b)),
        QuantType::Q4_K => blocks.for_each(|(x, b)| kquantize::quantize_q4_k(x, b)),
        QuantType::Q5_K => blocks.for_each(|(x, b)| kquantize::quantize_q5_k(x, b)),
        QuantType::Q6_K => blocks.for_each(|(x, b)| kquantize::quantize_q6_k(x, b)),
    }
    Ok(out)
}

/// Read the little-endian f16 at `b[at..at + 2]` as f32.
#[inline]
fn read_f16(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Write `v` as a little-endian f16 (round to nearest even) at `b[at..at + 2]`.
#[inline]
fn write_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f32_to_f16_bits(v).to_le_bytes());
}

#[cfg(test)]
mod tests;
