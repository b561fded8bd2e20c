//! GGUF block formats (`pupil::quant`) against gguf-py 0.19.0, through the fixtures in
//! `tests/fixtures/quant/` (made by `scripts/fixtures/make_quant_fixtures.py`; layout in the
//! README there), plus round-trip error bounds, error cases and `random_blocks`.
//!
//! Comparisons are bit for bit. gguf-py computes in numpy float32 without fused multiply-add,
//! in ggml's operation order, and so does `pupil::quant`, so no tolerance is needed. The only
//! allowances, each explained where it is made: NaN results of arithmetic (an infinite f16
//! scale times 0) compare as "both NaN", since the sign of a generated NaN is the hardware's
//! choice; and a zero f16 `d`/`m` in Q4_1/Q5_1 may differ in sign when a block mixes +0.0 and
//! -0.0 at its minimum, since numpy's SIMD `min`/`max` reductions pick either zero.

use std::path::PathBuf;

use pupil::quant::{dequantize, quantize, random_blocks, QuantType, QK_K};
use pupil::rng::SplitMix64;

/// Values per fixture row; the random-block fixtures have 4 rows, the quantizer input 7.
const ROW: usize = 512;
const RANDOM_ROWS: usize = 4;
const INPUT_ROWS: usize = 7;

/// Types gguf-py quantizes (F32 is the identity, checked without a fixture).
const GGUF_PY_QUANTIZED: [QuantType; 7] = [
    QuantType::F16,
    QuantType::BF16,
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
];
const KQUANTS: [QuantType; 3] = [QuantType::Q4_K, QuantType::Q5_K, QuantType::Q6_K];

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant").join(name)
}

fn read_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn read_f32(name: &str) -> Vec<f32> {
    let b = read_bytes(name);
    assert_eq!(b.len() % 4, 0, "{name}");
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn lower(t: QuantType) -> String {
    t.name().to_lowercase()
}

/// Bit-for-bit equality; with `nan_as_class`, any two NaNs are equal (for NaNs produced by
/// arithmetic, whose sign and payload the hardware picks: x86 gives -NaN for inf * 0, Arm
/// +NaN). Pure bit conversions (F32/F16/BF16) are compared strictly, payloads included.
fn assert_same_f32(what: &str, got: &[f32], want: &[f32], nan_as_class: bool) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut bad = Vec::new();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (nan_as_class && g.is_nan() && w.is_nan());
        if !same {
            bad.push(format!("[{i}] got {g:e} ({:#010x}) want {w:e} ({:#010x})", g.to_bits(), w.to_bits()));
        }
    }
    assert!(bad.is_empty(), "{what}: {} mismatches, first: {:?}", bad.len(), &bad[..bad.len().min(8)]);
}

#[test]
fn dequantize_matches_gguf_py_on_random_blocks() {
    for t in QuantType::ALL {
        let blocks = read_bytes(&format!("{}.blocks.bin", lower(t)));
        let want = read_f32(&format!("{}.blocks.deq.bin", lower(t)));
        assert_eq!(want.len(), RANDOM_ROWS * ROW, "{t}");
        let got = dequantize(t, &blocks, want.len()).unwrap();
        // Scales in these blocks are finite, so no NaN comes from arithmetic: every type is
        // compared strictly (F32/F16/BF16 random bit patterns do include NaNs, kept as is).
        assert_same_f32(&format!("{t} dequantize"), &got, &want, false);
        // Row by row gives the same values (no state carried between rows).
        let rb = t.row_bytes(ROW).unwrap();
        for r in 0..RANDOM_ROWS {
            let row = dequantize(t, &blocks[r * rb..(r + 1) * rb], ROW).unwrap();
            assert_same_f32(&format!("{t} row {r}"), &row, &want[r * ROW..(r + 1) * ROW], false);
        }
    }
}

/// Offsets of the f16 fields that may hold a zero of either sign in gguf-py's output.
fn zero_sign_fields(t: QuantType) -> &'static [usize] {
    match t {
        // d = (max - min) / n and m = min, with max/min from numpy reductions (see top).
        QuantType::Q4_1 | QuantType::Q5_1 => &[0, 2],
        _ => &[],
    }
}

/// Compare quantized bytes block by block, allowing only the documented zero-sign freedom.
fn assert_same_blocks(t: QuantType, got: &[u8], want: &[u8]) -> usize {
    assert_eq!(got.len(), want.len(), "{t}: byte length");
    let mut allowed = 0;
    for (i, (g, w)) in got.chunks_exact(t.block_bytes()).zip(want.chunks_exact(t.block_bytes())).enumerate() {
        if g == w {
            continue;
        }
        let (mut g, mut w) = (g.to_vec(), w.to_vec());
        for &at in zero_sign_fields(t) {
            let gz = u16::from_le_bytes([g[at], g[at + 1]]) & 0x7fff == 0;
            let wz = u16::from_le_bytes([w[at], w[at + 1]]) & 0x7fff == 0;
            if gz && wz {
                g[at + 1] &= 0x7f;
                w[at + 1] &= 0x7f;
            }
        }
        assert_eq!(g, w, "{t}: block {i} differs from gguf-py");
        allowed += 1;
    }
    allowed
}

#[test]
fn quantize_matches_gguf_py() {
    let x = read_f32("quant_input.f32.bin");
    assert_eq!(x.len(), INPUT_ROWS * ROW);
    for t in GGUF_PY_QUANTIZED {
        let want = read_bytes(&format!("{}.quant.bin", lower(t)));
        let got = quantize(t, &x).unwrap();
        let allowed = assert_same_blocks(t, &got, &want);
        // Only the edge block with mixed signed zeros at its minimum may use the allowance.
        assert!(allowed <= 1, "{t}: {allowed} blocks differ only in the sign of a zero scale");
    }
    // F32 "quantization" is the identity (gguf-py: `data.astype(np.float32)`).
    let bytes = quantize(QuantType::F32, &x).unwrap();
    let back = dequantize(QuantType::F32, &bytes, x.len()).unwrap();
    assert_same_f32("F32 identity", &back, &x, false);
}

#[test]
fn f16_and_bf16_special_values_match_gguf_py() {
    // NaN payloads, infinities, f16/bf16 overflow and rounding ties, subnormals.
    let x = read_f32("float_special.f32.bin");
    for t in [QuantType::F16, QuantType::BF16] {
        let want = read_bytes(&format!("{}.special.bin", lower(t)));
        assert_eq!(quantize(t, &x).unwrap(), want, "{t}");
    }
}

/// Pupil's K-quant bytes for the shared input, dequantized by gguf-py. Regenerate (after a
/// deliberate quantizer change) with the steps in the fixture README.
#[test]
fn kquant_quantize_output_dequantizes_like_gguf_py() {
    let x = read_f32("quant_input.f32.bin");
    for t in KQUANTS {
        let got = quantize(t, &x).unwrap();
        let stored = read_bytes(&format!("{}.pupil.bin", lower(t)));
        assert!(got == stored, "{t}: quantizer output changed since the fixture was written");
        let want = read_f32(&format!("{}.pupil.deq.bin", lower(t)));
        let deq = dequantize(t, &got, x.len()).unwrap();
        // This input gives finite K-quant scales (the 1e7 value stays within f16 range after
        // dividing by 63·15), so no NaN is expected; should a regenerated fixture hold an
        // infinite scale, inf * 0 would give a NaN whose sign is the hardware's, hence the class
        // comparison.
        assert_same_f32(&format!("{t} dequantize(quantize(x))"), &deq, &want, true);
    }
}

/// Writes `<type>.pupil.bin` (see the fixture README). Run only on purpose:
/// `PUPIL_WRITE_QUANT_FIXTURES=1 cargo test --test quant_formats write_pupil_kquant_fixtures -- --ignored`
#[test]
#[ignore]
fn write_pupil_kquant_fixtures() {
    if std::env::var("PUPIL_WRITE_QUANT_FIXTURES").as_deref() != Ok("1") {
        eprintln!("set PUPIL_WRITE_QUANT_FIXTURES=1 to write the fixtures");
        return;
    }
    let x = read_f32("quant_input.f32.bin");
    for t in KQUANTS {
        let path = fixture_path(&format!("{}.pupil.bin", lower(t)));
        std::fs::write(&path, quantize(t, &x).unwrap()).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

/// Standard normal values (Box–Muller on SplitMix64).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let u1 = 1.0 - rng.next_f64(); // (0, 1]
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn relative_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x.iter().zip(y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

/// The stated bound on RMS(dequantize(quantize(x)) - x) / RMS(x) for i.i.d. normal x (any σ:
/// checked at σ = 0.02, 1 and 50), per type. A uniform step `s` gives about `s / sqrt(12)`:
/// Q8_0's `s = max|x| / 127` over 32 normals (max|x| ≈ 2.1σ) predicts 0.005, Q4_0's
/// `max|x| / 8` 0.075 (plus clipping at +7), Q4_1's `(max - min) / 15` 0.08. Measured when
/// written (worst of the three σ): F16 2.07e-4, BF16 1.68e-3, Q8_0 5.38e-3, Q6_K 1.79e-2,
/// Q5_K 3.64e-2, Q5_1 3.82e-2, Q5_0 4.31e-2, Q4_K 7.19e-2, Q4_1 7.86e-2, Q4_0 8.68e-2. The bounds
/// leave about 15% headroom.
fn rmse_bound(t: QuantType) -> f64 {
    match t {
        QuantType::F32 => 0.0,
        QuantType::F16 => 2.5e-4,
        QuantType::BF16 => 2.0e-3,
        QuantType::Q8_0 => 6.5e-3,
        QuantType::Q6_K => 2.1e-2,
        QuantType::Q5_K => 4.2e-2,
        QuantType::Q5_1 => 4.5e-2,
        QuantType::Q5_0 => 5.0e-2,
        QuantType::Q4_K => 8.4e-2,
        QuantType::Q4_1 => 9.2e-2,
        QuantType::Q4_0 => 1.0e-1,
    }
}

#[test]
fn quantize_roundtrip_error_bounds() {
    let n = 64 * QK_K;
    for (scale, seed) in [(1.0f32, 21u64), (0.02, 22), (50.0, 23)] {
        let x: Vec<f32> = normal(n, seed).into_iter().map(|v| v * scale).collect();
        for t in QuantType::ALL {
            let y = dequantize(t, &quantize(t, &x).unwrap(), n).unwrap();
            let e = relative_rmse(&x, &y);
            eprintln!("{t}: sigma {scale}: relative RMSE {e:.3e} (bound {:.1e})", rmse_bound(t));
            assert!(e <= rmse_bound(t), "{t}: relative RMSE {e} over the bound {}", rmse_bound(t));
        }
    }
}

#[test]
fn errors_instead_of_panics() {
    for t in QuantType::ALL {
        let bs = t.block_size();
        let good = quantize(t, &vec![0.25f32; 2 * QK_K]).unwrap();
        assert_eq!(good.len(), t.row_bytes(2 * QK_K).unwrap());
        // Wrong byte lengths.
        assert!(dequantize(t, &good[..good.len() - 1], 2 * QK_K).is_err(), "{t}");
        assert!(dequantize(t, &[good.clone(), vec![0]].concat(), 2 * QK_K).is_err(), "{t}");
        assert!(dequantize(t, &[], 2 * QK_K).is_err(), "{t}");
        assert!(dequantize(t, &good, QK_K).is_err(), "{t}");
        assert!(dequantize(t, &good, usize::MAX).is_err(), "{t}");
        assert_eq!(dequantize(t, &[], 0).unwrap(), Vec::<f32>::new());
        // Not a whole number of blocks.
        if bs > 1 {
            assert!(t.row_bytes(bs + 1).is_err(), "{t}");
            assert!(dequantize(t, &good[..t.block_bytes()], bs + 1).is_err(), "{t}");
            assert!(quantize(t, &vec![0.5f32; bs + 1]).is_err(), "{t}");
            assert!(quantize(t, &vec![0.5f32; bs - 1]).is_err(), "{t}");
        }
        assert_eq!(quantize(t, &[]).unwrap(), Vec::<u8>::new());
        // Non-finite input: an error for block formats; F32/F16/BF16 store it.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5f32; QK_K];
            x[QK_K - 3] = bad;
            let r = quantize(t, &x);
            if bs == 1 {
                let y = dequantize(t, &r.unwrap(), QK_K).unwrap();
                assert_eq!(y[QK_K - 3].is_nan(), bad.is_nan(), "{t}");
                assert!(y[QK_K - 3].is_nan() || y[QK_K - 3] == bad, "{t}");
            } else {
                assert!(r.is_err(), "{t}: {bad} accepted");
            }
        }
    }
}

#[test]
fn random_blocks_dequantize_to_finite_values() {
    for t in QuantType::ALL {
        for seed in 0..8u64 {
            let mut rng = SplitMix64::new(seed);
            let n = 4 * QK_K;
            let b = random_blocks(t, n, &mut rng);
            assert_eq!(b.len(), t.row_bytes(n).unwrap(), "{t}");
            let y = dequantize(t, &b, n).unwrap();
            // Largest possible |value| per the documented scales is about 1.
            assert!(y.iter().all(|v| v.is_finite() && v.abs() <= 1.5), "{t}: seed {seed}");
            // Not degenerate: plenty of distinct nonzero values.
            let nonzero = y.iter().filter(|v| **v != 0.0).count();
            assert!(nonzero > n / 2, "{t}: only {nonzero} nonzero values");
        }
    }
}
