//! Quantized weights on the GPU: GGUF blocks repacked once at load into the layout the
//! matmul and gather kernels read (`shaders/common/dequant.wgsl` documents it), split by rows
//! into parts that each fit one storage binding.
//!
//! Per block, two u32 streams:
//! - `q` (quant bits, values in natural order): 4-bit low parts 8 per word (value t in word
//!   t/8, bits 4(t%8)); then for 5-bit formats one word of 5th bits per 32 values (bit t%32);
//!   for Q6_K the top two bits, 16 values per word (bits 2(t%16)); Q8_0 four signed bytes per
//!   word; F32/F16/BF16 the raw values.
//! - `s` (scales): Q4_0/Q5_0/Q8_0 `d`; Q4_1/Q5_1 `d | m<<16` (f16 bits); Q4_K/Q5_K
//!   `d | dmin<<16`, then the eight 6-bit sub-block scales and the eight mins unpacked to
//!   bytes (2 + 2 words); Q6_K `d`, then the sixteen signed sub-block scales (4 words).
//!
//! GGUF interleaves nibbles (Q4_0: byte j holds values j and j+16; Q4_K: 64-value chunks with
//! low and high nibbles in separate sub-blocks) and packs the K-quant scales in 6 bits; the
//! natural order lets a kernel fetch eight consecutive weights with one word and no
//! shuffling. Scales stay f16 (exactly as stored) and are multiplied as ggml does.

use crate::error::{PupilError, Result};
use crate::gpu::{DType, GpuContext, Tensor};
use crate::quant::{get_scale_min_k4, QuantType};

/// GGUF bytes repacked and written per step of an upload (bounds the host's extra memory).
const UPLOAD_CHUNK: usize = 4 << 20;

/// Values per block, `q` words and `s` words per block in the GPU layout. Dense types use
/// 32-value pseudo-blocks (so their rows must be a multiple of 32 long).
pub fn gpu_layout(ty: QuantType) -> (usize, usize, usize) {
    match ty {
        QuantType::F32 => (32, 32, 0),
        QuantType::F16 | QuantType::BF16 => (32, 16, 0),
        QuantType::Q4_0 | QuantType::Q4_1 => (32, 4, 1),
        QuantType::Q5_0 | QuantType::Q5_1 => (32, 5, 1),
        QuantType::Q8_0 => (32, 8, 1),
        QuantType::Q4_K => (256, 32, 5),
        QuantType::Q5_K => (256, 40, 5),
        QuantType::Q6_K => (256, 48, 5),
    }
}

/// Bytes one row of `cols` values takes in the larger of its two GPU streams: what a part's
/// binding must hold per row (tests size forced small parts with it).
pub fn gpu_row_bytes(ty: QuantType, cols: usize) -> u64 {
    let (block, qw, sw) = gpu_layout(ty);
    (cols / block * qw.max(sw) * 4) as u64
}

/// Whether the GPU layout has a scale stream (every block-quantized type).
pub fn has_scales(ty: QuantType) -> bool {
    gpu_layout(ty).2 > 0
}

/// The shader define naming a format (`W_Q4_K`, ...).
pub fn format_define(ty: QuantType) -> &'static str {
    match ty {
        QuantType::F32 => "W_F32",
        QuantType::F16 => "W_F16",
        QuantType::BF16 => "W_BF16",
        QuantType::Q4_0 => "W_Q4_0",
        QuantType::Q4_1 => "W_Q4_1",
        QuantType::Q5_0 => "W_Q5_0",
        QuantType::Q5_1 => "W_Q5_1",
        QuantType::Q8_0 => "W_Q8_0",
        QuantType::Q4_K => "W_Q4_K",
        QuantType::Q5_K => "W_Q5_K",
        QuantType::Q6_K => "W_Q6_K",
    }
}

/// A contiguous range of rows in its own bindings.
pub struct WeightPart {
    pub row_start: usize,
    pub rows: usize,
    pub q: Tensor,
    pub s: Option<Tensor>,
}

/// A `[rows, cols]` weight matrix in any GGUF type, repacked for the GPU.
pub struct QuantWeight {
    pub ty: QuantType,
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<WeightPart>,
}

impl QuantWeight {
    /// Repack and upload a GGUF tensor (`rows` rows of `cols` values, row-major GGUF bytes).
    pub fn upload(ctx: &GpuContext, ty: QuantType, rows: usize, cols: usize, gguf: &[u8]) -> Result<Self> {
        Self::upload_with_part_limit(ctx, ty, rows, cols, gguf, ctx.caps.max_storage_binding)
    }

    /// As [`upload`](Self::upload), with parts no larger than `max_part_bytes` (tests use a
    /// small value to exercise the split path on any device).
    pub fn upload_with_part_limit(
        ctx: &GpuContext,
        ty: QuantType,
        rows: usize,
        cols: usize,
        gguf: &[u8],
        max_part_bytes: u64,
    ) -> Result<Self> {
        Self::upload_segments(ctx, ty, cols, &[(rows, gguf)], max_part_bytes, "QuantWeight::upload")
    }

    /// Stack same-format tensors by rows (e.g. Q|K|V) into one weight, uploaded in place
    /// (the inputs are not concatenated on the host).
    pub fn upload_concat(ctx: &GpuContext, ty: QuantType, cols: usize, tensors: &[(usize, &[u8])]) -> Result<Self> {
        Self::upload_segments(ctx, ty, cols, tensors, ctx.caps.max_storage_binding, "QuantWeight::upload_concat")
    }

    /// The matrix made of `segments` (rows, GGUF bytes) stacked by rows, split into parts of at
    /// most `max_part_bytes` per stream. Rows are repacked and written `UPLOAD_CHUNK` GGUF bytes
    /// at a time, so the host never holds a second full copy of the tensor (in the browser the
    /// wasm heap is at most 4 GiB, and a 7B model's embedding alone is ~300 MB).
    fn upload_segments(
        ctx: &GpuContext,
        ty: QuantType,
        cols: usize,
        segments: &[(usize, &[u8])],
        max_part_bytes: u64,
        op: &'static str,
    ) -> Result<Self> {
        let (block, qw, sw) = gpu_layout(ty);
        let rows: usize = segments.iter().map(|s| s.0).sum();
        if rows == 0 || cols == 0 || !cols.is_multiple_of(block) {
            return Err(PupilError::shape(
                op,
                format!("{} matrix {rows}x{cols}: columns must be a positive multiple of {block}", ty.name()),
            ));
        }
        let row_bytes = ty.row_bytes(cols)?;
        for &(r, b) in segments {
            if b.len() != r * row_bytes {
                return Err(PupilError::shape(
                    op,
                    format!(
                        "{} bytes for {r} rows of a {cols}-column {} matrix ({} bytes)",
                        b.len(),
                        ty.name(),
                        r * row_bytes
                    ),
                ));
            }
        }
        let row_bytes_gpu = gpu_row_bytes(ty, cols);
        let limit = max_part_bytes.min(ctx.caps.max_storage_binding);
        let rows_per_part = (limit / row_bytes_gpu) as usize;
        if rows_per_part == 0 {
            return Err(PupilError::TooLarge {
                what: format!("one row of a {} matrix with {cols} columns", ty.name()),
                bytes: row_bytes_gpu,
                limit,
            });
        }
        // Words per row in each stream.
        let (q_row, s_row) = (cols / block * qw, cols / block * sw);
        let chunk_rows = (UPLOAD_CHUNK / row_bytes).max(1);
        // Rows `start..start + n` of the stacked matrix, as slices of the segments.
        let rows_of = |mut start: usize, mut n: usize| {
            let mut out = Vec::new();
            for &(r, b) in segments {
                if n == 0 {
                    break;
                }
                if start >= r {
                    start -= r;
                    continue;
                }
                let take = n.min(r - start);
                out.push((take, &b[start * row_bytes..(start + take) * row_bytes]));
                n -= take;
                start = 0;
            }
            out
        };
        let mut parts = Vec::new();
        let mut row_start = 0;
        while row_start < rows {
            let n = rows_per_part.min(rows - row_start);
            let qt = Tensor::empty(ctx, &[n * q_row], DType::U32)?;
            let st = if sw > 0 { Some(Tensor::empty(ctx, &[n * s_row], DType::U32)?) } else { None };
            let mut done = 0;
            while done < n {
                let m = chunk_rows.min(n - done);
                let mut at = done;
                for (r, bytes) in rows_of(row_start + done, m) {
                    let (q, s) = repack(ty, bytes);
                    debug_assert_eq!((q.len(), s.len()), (r * q_row, r * s_row));
                    qt.view(at * q_row, &[q.len()])?.write_bytes(ctx, bytemuck::cast_slice(&q))?;
                    if let Some(st) = &st {
                        st.view(at * s_row, &[s.len()])?.write_bytes(ctx, bytemuck::cast_slice(&s))?;
                    }
                    at += r;
                }
                done += m;
            }
            parts.push(WeightPart { row_start, rows: n, q: qt, s: st });
            row_start += n;
        }
        Ok(QuantWeight { ty, rows, cols, parts })
    }

    /// GPU bytes held by this weight.
    pub fn gpu_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.q.buffer_size() + p.s.as_ref().map_or(0, |s| s.buffer_size())).sum()
    }
}

fn f16_bits(b: &[u8], at: usize) -> u32 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u32
}

/// Low four bits of each value, eight values per word.
fn pack_nibbles(vals: &[u8], q: &mut Vec<u32>) {
    for c in vals.chunks(8) {
        q.push(c.iter().enumerate().fold(0, |w, (j, &v)| w | ((v as u32 & 15) << (4 * j))));
    }
}

/// Bit `bit` of each value, 32 values per word.
fn pack_bit(vals: &[u8], bit: u32, q: &mut Vec<u32>) {
    for c in vals.chunks(32) {
        q.push(c.iter().enumerate().fold(0, |w, (j, &v)| w | (((v as u32 >> bit) & 1) << j)));
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// GGUF bytes of whole rows → (q words, s words).
fn repack(ty: QuantType, bytes: &[u8]) -> (Vec<u32>, Vec<u32>) {
    let mut q = Vec::new();
    let mut s = Vec::new();
    if matches!(ty, QuantType::F32 | QuantType::F16 | QuantType::BF16) {
        q.extend(words(bytes));
        return (q, s);
    }
    let mut vals = [0u8; 256];
    for blk in bytes.chunks(ty.block_bytes()) {
        match ty {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 => {
                let (has_m, has_h) =
                    (matches!(ty, QuantType::Q4_1 | QuantType::Q5_1), matches!(ty, QuantType::Q5_0 | QuantType::Q5_1));
                let mut at = 2;
                let mut scale = f16_bits(blk, 0);
                if has_m {
                    scale |= f16_bits(blk, 2) << 16;
                    at += 2;
                }
                let qh = if has_h {
                    at += 4;
                    u32::from_le_bytes(blk[at - 4..at].try_into().unwrap())
                } else {
                    0
                };
                for j in 0..16 {
                    vals[j] = blk[at + j] & 15;
                    vals[j + 16] = blk[at + j] >> 4;
                }
                pack_nibbles(&vals[..32], &mut q);
                if has_h {
                    // GGUF's qh already has value t's fifth bit at bit t.
                    q.push(qh);
                }
                s.push(scale);
            }
            QuantType::Q8_0 => {
                q.extend(words(&blk[2..34]));
                s.push(f16_bits(blk, 0));
            }
            QuantType::Q4_K | QuantType::Q5_K => {
                let scales = &blk[4..16];
                let (qh, qs) =
                    if ty == QuantType::Q5_K { (&blk[16..48], &blk[48..176]) } else { (&blk[0..0], &blk[16..144]) };
                for c in 0..4 {
                    for l in 0..32 {
                        let (lo, hi) = (qs[32 * c + l] & 15, qs[32 * c + l] >> 4);
                        let (h0, h1) =
                            if qh.is_empty() { (0, 0) } else { ((qh[l] >> (2 * c)) & 1, (qh[l] >> (2 * c + 1)) & 1) };
                        vals[64 * c + l] = lo | (h0 << 4);
                        vals[64 * c + 32 + l] = hi | (h1 << 4);
                    }
                }
                pack_nibbles(&vals, &mut q);
                if ty == QuantType::Q5_K {
                    pack_bit(&vals, 4, &mut q);
                }
                let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
                for j in 0..8 {
                    (sc[j], mn[j]) = get_scale_min_k4(j, scales);
                }
                s.push(f16_bits(blk, 0) | (f16_bits(blk, 2) << 16));
                s.extend(words(&sc));
                s.extend(words(&mn));
            }
            QuantType::Q6_K => {
                let (ql, qh, scales) = (&blk[0..128], &blk[128..192], &blk[192..208]);
                for n in 0..2 {
                    let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                    for l in 0..32 {
                        let b = 128 * n;
                        vals[b + l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
                        vals[b + 32 + l] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
                        vals[b + 64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        vals[b + 96 + l] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
                pack_nibbles(&vals, &mut q);
                for c in vals.chunks(16) {
                    q.push(c.iter().enumerate().fold(0, |w, (j, &v)| w | (((v as u32 >> 4) & 3) << (2 * j))));
                }
                s.push(f16_bits(blk, 208));
                s.extend(words(scales));
            }
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => unreachable!("dense types return above"),
        }
    }
    (q, s)
}
