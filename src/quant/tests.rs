//! Unit tests of the pieces; the gguf-py fixture comparisons are in `tests/quant_formats.rs`.

use super::*;
use crate::rng::SplitMix64;

#[test]
fn type_table() {
    let ids: Vec<u32> = QuantType::ALL.iter().map(|t| t.ggml_id()).collect();
    assert_eq!(ids, [0, 1, 30, 2, 3, 6, 7, 8, 12, 13, 14]);
    for t in QuantType::ALL {
        assert_eq!(QuantType::from_ggml_id(t.ggml_id()), Some(t));
        assert_eq!(format!("{t:?}"), t.name());
        assert_eq!(t.row_bytes(4 * t.block_size()).unwrap(), 4 * t.block_bytes());
        assert_eq!(t.row_bytes(0).unwrap(), 0);
    }
    for id in [4, 5, 9, 10, 11, 15, 16, 29, 31, u32::MAX] {
        assert_eq!(QuantType::from_ggml_id(id), None);
    }
    assert!(QuantType::Q4_K.row_bytes(255).is_err());
    assert!(QuantType::Q8_0.row_bytes(33).is_err());
    assert!(QuantType::F32.row_bytes(usize::MAX).is_err());
    // Block sizes from the field lists in the module docs.
    assert_eq!(QuantType::Q4_K.block_bytes(), 2 + 2 + 12 + 128);
    assert_eq!(QuantType::Q5_K.block_bytes(), 2 + 2 + 12 + 32 + 128);
    assert_eq!(QuantType::Q6_K.block_bytes(), 128 + 64 + 16 + 2);
}

#[test]
fn f16_roundtrips_every_half() {
    for h in 0..=u16::MAX {
        let back = f32_to_f16_bits(f16_bits_to_f32(h));
        assert_eq!(back, h, "{h:#06x}");
    }
}

#[test]
fn f16_agrees_with_half_crate_on_non_nan() {
    // `half` rounds to nearest even too; only NaN payload handling may differ.
    let mut rng = SplitMix64::new(3);
    for _ in 0..200_000 {
        let x = f32::from_bits(rng.next_u64() as u32);
        if x.is_nan() {
            continue;
        }
        assert_eq!(f32_to_f16_bits(x), half::f16::from_f32(x).to_bits(), "{x:e}");
    }
    for h in 0..=u16::MAX {
        let v = f16_bits_to_f32(h);
        if !v.is_nan() {
            assert_eq!(v.to_bits(), half::f16::from_bits(h).to_f32().to_bits(), "{h:#06x}");
        }
    }
}

#[test]
fn f16_nan_keeps_payload() {
    assert_eq!(f32_to_f16_bits(f32::from_bits(0x7f80_0001)), 0x7c01);
    assert_eq!(f32_to_f16_bits(f32::from_bits(0xffa0_0000)), 0xfd00);
    assert_eq!(f16_bits_to_f32(0x7c01).to_bits(), 0x7f80_2000);
    assert_eq!(f32_to_f16_bits(65520.0), 0x7c00);
    assert_eq!(f32_to_f16_bits(65519.996), 0x7bff);
}

#[test]
fn bf16_rounding() {
    assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie to even
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f7f_ffff)), 0x7f80); // overflow to inf
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0); // NaN quieted
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0xff81_0000)), 0xffc1);
    for h in 0..=u16::MAX {
        let v = bf16_bits_to_f32(h);
        if !v.is_nan() {
            assert_eq!(f32_to_bf16_bits(v), h);
        }
    }
}

#[test]
fn scale_min_packing_roundtrips() {
    // Pack 6-bit (scale, min) pairs as quantize_row_q4_K_ref does, unpack with
    // get_scale_min_k4.
    let mut rng = SplitMix64::new(9);
    for _ in 0..1000 {
        let ls: [u8; 8] = std::array::from_fn(|_| rng.below(64) as u8);
        let lm: [u8; 8] = std::array::from_fn(|_| rng.below(64) as u8);
        let mut sc = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                sc[j] = ls[j];
                sc[j + 4] = lm[j];
            } else {
                sc[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
                sc[j - 4] |= (ls[j] >> 4) << 6;
                sc[j] |= (lm[j] >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(kquants::get_scale_min_k4(j, &sc), (ls[j], lm[j]));
        }
    }
}

#[test]
fn legacy_quantize_simple_values() {
    // Q8_0 of 0..32 scaled: amax = 31 -> d = 31/127, q = round(x * 127/31).
    let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let b = quantize(QuantType::Q8_0, &x).unwrap();
    assert_eq!(b[2 + 31] as i8, 127);
    let y = dequantize(QuantType::Q8_0, &b, 32).unwrap();
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= 0.13, "{a} {b}");
    }
    // Q4_0 of an all-zero block: d = 0 / -8 = -0.0, every q = 8.
    let b = quantize(QuantType::Q4_0, &[0.0; 32]).unwrap();
    assert_eq!(&b[..2], &[0x00, 0x80]);
    assert!(b[2..].iter().all(|&q| q == 0x88));
}

#[test]
fn kquants_zero_blocks() {
    for t in [QuantType::Q4_K, QuantType::Q5_K, QuantType::Q6_K] {
        let b = quantize(t, &[0.0; QK_K]).unwrap();
        let y = dequantize(t, &b, QK_K).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{t}");
    }
}

#[test]
fn kquants_huge_finite_values_do_not_panic() {
    for t in [QuantType::Q4_K, QuantType::Q5_K, QuantType::Q6_K] {
        for big in [1e10f32, 1e20, 3e38, -3e38] {
            let mut x = vec![0.5f32; QK_K];
            x[7] = big;
            x[200] = -big / 3.0;
            let b = quantize(t, &x).unwrap();
            assert_eq!(b.len(), t.block_bytes());
            let _ = dequantize(t, &b, QK_K).unwrap();
        }
    }
}

#[test]
fn random_blocks_sizes_and_determinism() {
    for t in QuantType::ALL {
        let a = random_blocks(t, 512, &mut SplitMix64::new(5));
        let b = random_blocks(t, 512, &mut SplitMix64::new(5));
        assert_eq!(a, b);
        assert_eq!(a.len(), t.row_bytes(512).unwrap());
        // Not a whole number of blocks: rounded down, no panic.
        assert_eq!(random_blocks(t, 300, &mut SplitMix64::new(5)).len(), 300 / t.block_size() * t.block_bytes());
    }
}

#[test]
fn nearest_int_rounds_half_to_even_and_saturates() {
    use super::kquantize::nearest_int;
    let cases = [(2.5, 2), (3.5, 4), (-2.5, -2), (-3.5, -4), (0.49999997, 0), (-0.5, 0), (63.4, 63), (1e9, 4_194_303)];
    for (v, want) in cases {
        assert_eq!(nearest_int(v), want, "{v}");
    }
    assert_eq!(nearest_int(f32::NEG_INFINITY), -4_194_303);
    assert_eq!(nearest_int(f32::NAN), 0);
}
