// Reading weights of a repacked GGUF matrix W [rows, cols], eight consecutive values at a time.
//
// The layout (written by src/ops/qweight.rs, documented there) is GGUF's blocks repacked into
// two u32 arrays per matrix, rows of blocks in order:
//   wq: quant bits of each block, values in natural order:
//       4-bit low parts: value t of a block in word t/8, bits 4(t%8)..;
//       5th bits (Q5_0, Q5_1, Q5_K): after the low words, value t in word t/32, bit t%32;
//       Q6_K's top two bits: after the low words, value t in word t/16, bits 2(t%16)..;
//       Q8_0: value t in word t/4, byte t%4 (signed);
//       F32 / F16 / BF16: the values themselves, one or two per word.
//   ws: per-block scales (only for quantized formats):
//       Q4_0, Q5_0, Q8_0: d (f16, low half); Q4_1, Q5_1: d | m << 16 (two f16);
//       Q4_K, Q5_K: word 0 = d | dmin << 16, words 1-2 = the 8 sub-block scales (bytes),
//                   words 3-4 = the 8 sub-block mins (bytes), already unpacked from 6 bits;
//       Q6_K: word 0 = d (f16), words 1-4 = the 16 sub-block scales (signed bytes).
// Dequantization follows ggml's formulas and operation order (f32 arithmetic):
//   Q4_0 (q-8)d   Q4_1 qd+m   Q5_0 (q-16)d   Q5_1 qd+m   Q8_0 qd
//   Q4_K (d·sc)q − dmin·m   Q5_K same with 5-bit q   Q6_K (d·sc)(q−32)
// f16 scales are read with unpack2x16float, which needs no shader-f16 support.
//
// Exactly one W_* format define is set; it fixes BLOCK (values per block), QW and SW (words
// per block in wq and ws). The including shader declares `wq` (and `ws` if HAS_SCALES).

struct W8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn nibbles(w: u32) -> W8 {
    return W8(
        vec4<f32>(f32(w & 15u), f32((w >> 4u) & 15u), f32((w >> 8u) & 15u), f32((w >> 12u) & 15u)),
        vec4<f32>(f32((w >> 16u) & 15u), f32((w >> 20u) & 15u), f32((w >> 24u) & 15u), f32(w >> 28u)),
    );
}

// The eight bits of `hw` starting at bit `at`, as values 0 or 16 (5th bit of a 5-bit quant).
fn fifth_bits(hw: u32, at: u32) -> W8 {
    let h = hw >> at;
    return W8(
        vec4<f32>(f32((h & 1u) << 4u), f32(((h >> 1u) & 1u) << 4u), f32(((h >> 2u) & 1u) << 4u), f32(((h >> 3u) & 1u) << 4u)),
        vec4<f32>(f32(((h >> 4u) & 1u) << 4u), f32(((h >> 5u) & 1u) << 4u), f32(((h >> 6u) & 1u) << 4u), f32(((h >> 7u) & 1u) << 4u)),
    );
}

fn byte_of(w: u32, i: u32) -> u32 {
    return (w >> (8u * i)) & 255u;
}

fn sbyte_of(w: u32, i: u32) -> f32 {
    return f32(bitcast<i32>(w << (24u - 8u * i)) >> 24u);
}

#ifdef W_F32
const BLOCK: u32 = 32u;
const QW: u32 = 32u;
const SW: u32 = 0u;
#endif
#ifdef W_F16
const BLOCK: u32 = 32u;
const QW: u32 = 16u;
const SW: u32 = 0u;
#endif
#ifdef W_BF16
const BLOCK: u32 = 32u;
const QW: u32 = 16u;
const SW: u32 = 0u;
#endif
#ifdef W_Q4_0
const BLOCK: u32 = 32u;
const QW: u32 = 4u;
const SW: u32 = 1u;
#endif
#ifdef W_Q4_1
const BLOCK: u32 = 32u;
const QW: u32 = 4u;
const SW: u32 = 1u;
#endif
#ifdef W_Q5_0
const BLOCK: u32 = 32u;
const QW: u32 = 5u;
const SW: u32 = 1u;
#endif
#ifdef W_Q5_1
const BLOCK: u32 = 32u;
const QW: u32 = 5u;
const SW: u32 = 1u;
#endif
#ifdef W_Q8_0
const BLOCK: u32 = 32u;
const QW: u32 = 8u;
const SW: u32 = 1u;
#endif
#ifdef W_Q4_K
const BLOCK: u32 = 256u;
const QW: u32 = 32u;
const SW: u32 = 5u;
#endif
#ifdef W_Q5_K
const BLOCK: u32 = 256u;
const QW: u32 = 40u;
const SW: u32 = 5u;
#endif
#ifdef W_Q6_K
const BLOCK: u32 = 256u;
const QW: u32 = 48u;
const SW: u32 = 5u;
#endif

// Groups of eight values per block.
const GROUPS: u32 = BLOCK / 8u;

#ifdef HAS_SCALES
// Q4_K / Q5_K: (d·sc, dmin·m) of 32-value sub-block `sb` of the block whose scales start at s0.
fn kquant_scale_min(s0: u32, sb: u32) -> vec2<f32> {
    let dd = unpack2x16float(ws[s0]);
    return vec2<f32>(dd.x * f32(byte_of(ws[s0 + 1u + sb / 4u], sb % 4u)), dd.y * f32(byte_of(ws[s0 + 3u + sb / 4u], sb % 4u)));
}
#endif

// Weights W[row, 8g .. 8g+8], where `blocks_per_row` = cols / BLOCK.
fn load8(row: u32, g: u32, blocks_per_row: u32) -> W8 {
    let blk = row * blocks_per_row + g / GROUPS;
    let j = g % GROUPS;
    let q0 = blk * QW;
#ifdef W_F32
    let o = q0 + 8u * j;
    return W8(
        vec4<f32>(bitcast<f32>(wq[o]), bitcast<f32>(wq[o + 1u]), bitcast<f32>(wq[o + 2u]), bitcast<f32>(wq[o + 3u])),
        vec4<f32>(bitcast<f32>(wq[o + 4u]), bitcast<f32>(wq[o + 5u]), bitcast<f32>(wq[o + 6u]), bitcast<f32>(wq[o + 7u])),
    );
#endif
#ifdef W_F16
    let o = q0 + 4u * j;
    return W8(
        vec4<f32>(unpack2x16float(wq[o]), unpack2x16float(wq[o + 1u])),
        vec4<f32>(unpack2x16float(wq[o + 2u]), unpack2x16float(wq[o + 3u])),
    );
#endif
#ifdef W_BF16
    let o = q0 + 4u * j;
    let w0 = wq[o];
    let w1 = wq[o + 1u];
    let w2 = wq[o + 2u];
    let w3 = wq[o + 3u];
    return W8(
        vec4<f32>(bitcast<f32>(w0 << 16u), bitcast<f32>(w0 & 0xffff0000u), bitcast<f32>(w1 << 16u), bitcast<f32>(w1 & 0xffff0000u)),
        vec4<f32>(bitcast<f32>(w2 << 16u), bitcast<f32>(w2 & 0xffff0000u), bitcast<f32>(w3 << 16u), bitcast<f32>(w3 & 0xffff0000u)),
    );
#endif
#ifdef W_Q4_0
    let d = unpack2x16float(ws[blk]).x;
    let q = nibbles(wq[q0 + j]);
    return W8((q.a - 8.0) * d, (q.b - 8.0) * d);
#endif
#ifdef W_Q4_1
    let dm = unpack2x16float(ws[blk]);
    let q = nibbles(wq[q0 + j]);
    return W8(q.a * dm.x + dm.y, q.b * dm.x + dm.y);
#endif
#ifdef W_Q5_0
    let d = unpack2x16float(ws[blk]).x;
    let q = nibbles(wq[q0 + j]);
    let h = fifth_bits(wq[q0 + 4u], 8u * j);
    return W8((q.a + h.a - 16.0) * d, (q.b + h.b - 16.0) * d);
#endif
#ifdef W_Q5_1
    let dm = unpack2x16float(ws[blk]);
    let q = nibbles(wq[q0 + j]);
    let h = fifth_bits(wq[q0 + 4u], 8u * j);
    return W8((q.a + h.a) * dm.x + dm.y, (q.b + h.b) * dm.x + dm.y);
#endif
#ifdef W_Q8_0
    let d = unpack2x16float(ws[blk]).x;
    let w0 = wq[q0 + 2u * j];
    let w1 = wq[q0 + 2u * j + 1u];
    return W8(
        vec4<f32>(sbyte_of(w0, 0u), sbyte_of(w0, 1u), sbyte_of(w0, 2u), sbyte_of(w0, 3u)) * d,
        vec4<f32>(sbyte_of(w1, 0u), sbyte_of(w1, 1u), sbyte_of(w1, 2u), sbyte_of(w1, 3u)) * d,
    );
#endif
#ifdef W_Q4_K
    let sm = kquant_scale_min(blk * SW, j / 4u);  // sub-blocks of 32 values
    let q = nibbles(wq[q0 + j]);
    return W8(sm.x * q.a - sm.y, sm.x * q.b - sm.y);
#endif
#ifdef W_Q5_K
    let sm = kquant_scale_min(blk * SW, j / 4u);
    let q = nibbles(wq[q0 + j]);
    let h = fifth_bits(wq[q0 + 32u + j / 4u], 8u * (j % 4u));
    return W8(sm.x * (q.a + h.a) - sm.y, sm.x * (q.b + h.b) - sm.y);
#endif
#ifdef W_Q6_K
    let s0 = blk * SW;
    let d = unpack2x16float(ws[s0]).x;
    let sb = j / 2u;  // sub-block of 16 values
    let sc = d * sbyte_of(ws[s0 + 1u + sb / 4u], sb % 4u);
    let q = nibbles(wq[q0 + j]);
    let hw = wq[q0 + 32u + j / 2u] >> (16u * (j % 2u));
    let ha = vec4<f32>(f32((hw & 3u) << 4u), f32(((hw >> 2u) & 3u) << 4u), f32(((hw >> 4u) & 3u) << 4u), f32(((hw >> 6u) & 3u) << 4u));
    let hb = vec4<f32>(f32(((hw >> 8u) & 3u) << 4u), f32(((hw >> 10u) & 3u) << 4u), f32(((hw >> 12u) & 3u) << 4u), f32(((hw >> 14u) & 3u) << 4u));
    return W8(sc * (q.a + ha - 32.0), sc * (q.b + hb - 32.0));
#endif
}

#ifdef INT8
// The same eight weights as integers for the int8-activation path: w_t = s * q_t + o with
// signed q_t packed one per byte, values 0,2,4,6 in `lo` and 1,3,5,7 in `hi` — the order a
// 4-bit word unpacks into with two masks. Activations are packed in the same order
// (shaders/quantize_act.wgsl), so dot4I8Packed pairs them up. Quants are centred (q - 8,
// q - 16, q - 32) so the integer term, the only one carrying activation rounding error, is as
// small as the weights allow; the constant moves into the offset o.
struct I8x8 {
    lo: u32,
    hi: u32,
    s: f32,
    o: f32,
}

// The 8 one-bit flags of `h` moved to bit `at` of bytes: even flags into `lo`, odd into `hi`.
fn spread_bits(h: u32, at: u32) -> vec2<u32> {
    var lo = 0u;
    var hi = 0u;
    for (var b = 0u; b < 4u; b++) {
        lo |= ((h >> (2u * b)) & 1u) << (8u * b + at);
        hi |= ((h >> (2u * b + 1u)) & 1u) << (8u * b + at);
    }
    return vec2<u32>(lo, hi);
}

// Bytes v (each < 2c, c ≤ 64) to the signed bytes v - c, without borrows between bytes.
fn centred(v: u32, c: u32) -> u32 {
    return ((v | 0x80808080u) - c * 0x01010101u) ^ 0x80808080u;
}

fn load8_i8(row: u32, g: u32, blocks_per_row: u32) -> I8x8 {
    let blk = row * blocks_per_row + g / GROUPS;
    let j = g % GROUPS;
    let q0 = blk * QW;
#ifdef W_Q8_0
    let w0 = wq[q0 + 2u * j];
    let w1 = wq[q0 + 2u * j + 1u];
    let lo = (w0 & 0xffu) | ((w0 >> 8u) & 0xff00u) | ((w1 & 0xffu) << 16u) | ((w1 << 8u) & 0xff000000u);
    let hi = ((w0 >> 8u) & 0xffu) | ((w0 >> 16u) & 0xff00u) | ((w1 << 8u) & 0xff0000u) | (w1 & 0xff000000u);
    return I8x8(lo, hi, unpack2x16float(ws[blk]).x, 0.0);
#else
    let w = wq[q0 + j];
    var lo = w & 0x0f0f0f0fu;
    var hi = (w >> 4u) & 0x0f0f0f0fu;
#ifdef W_Q4_0
    let d = unpack2x16float(ws[blk]).x;
    return I8x8(centred(lo, 8u), centred(hi, 8u), d, 0.0);
#endif
#ifdef W_Q4_1
    let dm = unpack2x16float(ws[blk]);
    return I8x8(centred(lo, 8u), centred(hi, 8u), dm.x, dm.y + 8.0 * dm.x);
#endif
#ifdef W_Q5_0
    let h = spread_bits((wq[q0 + 4u] >> (8u * j)) & 0xffu, 4u);
    let d = unpack2x16float(ws[blk]).x;
    return I8x8(centred(lo | h.x, 16u), centred(hi | h.y, 16u), d, 0.0);
#endif
#ifdef W_Q5_1
    let h = spread_bits((wq[q0 + 4u] >> (8u * j)) & 0xffu, 4u);
    let dm = unpack2x16float(ws[blk]);
    return I8x8(centred(lo | h.x, 16u), centred(hi | h.y, 16u), dm.x, dm.y + 16.0 * dm.x);
#endif
#ifdef W_Q4_K
    let sm = kquant_scale_min(blk * SW, j / 4u);
    return I8x8(centred(lo, 8u), centred(hi, 8u), sm.x, 8.0 * sm.x - sm.y);
#endif
#ifdef W_Q5_K
    let sm = kquant_scale_min(blk * SW, j / 4u);
    let h = spread_bits((wq[q0 + 32u + j / 4u] >> (8u * (j % 4u))) & 0xffu, 4u);
    return I8x8(centred(lo | h.x, 16u), centred(hi | h.y, 16u), sm.x, 16.0 * sm.x - sm.y);
#endif
#ifdef W_Q6_K
    let s0 = blk * SW;
    let sb = j / 2u;
    let sc = unpack2x16float(ws[s0]).x * sbyte_of(ws[s0 + 1u + sb / 4u], sb % 4u);
    let hw = wq[q0 + 32u + j / 2u] >> (16u * (j % 2u));
    for (var b = 0u; b < 4u; b++) {
        lo |= ((hw >> (4u * b)) & 3u) << (8u * b + 4u);
        hi |= ((hw >> (4u * b + 2u)) & 3u) << (8u * b + 4u);
    }
    return I8x8(centred(lo, 32u), centred(hi, 32u), sc, 0.0);
#endif
#endif
}
#endif
