//! Real model shapes that exceed a 128 MiB storage binding (the browser default): the weight
//! is split by rows into parts and results must match the reference across part boundaries.

mod common;

use pupil::gpu::{Batch, DType, Tensor};
use pupil::ops::embedding::embedding_quant_forward;
use pupil::ops::matmul::matmul_forward;
use pupil::ops::QuantWeight;
use pupil::quant::{dequantize, random_blocks, QuantType};
use pupil::rng::SplitMix64;
use pupil::{reference, ContextOptions};

const LIMIT: u64 = 128 << 20;

fn context() -> pupil::GpuContext {
    common::context_with(ContextOptions {
        max_storage_binding: Some(LIMIT),
        allow_f16: false,
        ..ContextOptions::default()
    })
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let (mut d2, mut r2) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite());
        d2 += (g as f64 - w) * (g as f64 - w);
        r2 += w * w;
    }
    (d2 / r2).sqrt()
}

#[test]
fn qwen2_1_5b_q6_k_head_over_128_mib() {
    let ctx = context();
    let (n, k) = (151_936, 1536);
    let mut rng = SplitMix64::new(11);
    let bytes = random_blocks(QuantType::Q6_K, n * k, &mut rng);
    assert!(bytes.len() as u64 > LIMIT, "the GGUF tensor itself is {} bytes", bytes.len());
    let w = QuantWeight::upload(&ctx, QuantType::Q6_K, n, k, &bytes).unwrap();
    assert!(w.parts.len() >= 2, "{} parts", w.parts.len());
    assert!(w.parts.iter().all(|p| p.q.binding_size() <= LIMIT));
    let x = rng.vec_nonzero(k, -1.0, 1.0);
    let xt = Tensor::from_f32(&ctx, &x, &[1, k], DType::F32).unwrap();
    let y = Tensor::empty(&ctx, &[1, n], DType::F32).unwrap();
    let mut b = Batch::new(&ctx);
    matmul_forward(&mut b, &xt, &w, None, &y, false).unwrap();
    b.submit();
    let got = pollster::block_on(y.read_f32(&ctx)).unwrap();
    let want = reference::matmul(&x, &dequantize(QuantType::Q6_K, &bytes, n * k).unwrap(), n, k, None);
    let err = rel_err(&got, &want);
    println!("151936x1536 Q6_K in {} parts: rel err {err:.2e}", w.parts.len());
    assert!(err <= 1e-5);
}

#[test]
fn gemma3_embedding_262144_x_640_over_128_mib() {
    let ctx = context();
    let (vocab, dim) = (262_144, 640);
    let mut rng = SplitMix64::new(12);
    let bytes = random_blocks(QuantType::Q8_0, vocab * dim, &mut rng);
    assert!(bytes.len() as u64 > LIMIT);
    let table = QuantWeight::upload(&ctx, QuantType::Q8_0, vocab, dim, &bytes).unwrap();
    assert!(table.parts.len() >= 2);
    // Ids on both sides of every part boundary, the ends, and one past the vocabulary.
    let mut ids = vec![0u32, 1, vocab as u32 - 1, vocab as u32 + 3];
    for p in &table.parts[1..] {
        ids.extend([p.row_start as u32 - 1, p.row_start as u32]);
    }
    ids.extend((0..16).map(|_| rng.below(vocab as u32)));
    let it = Tensor::from_u32(&ctx, &ids, &[ids.len()]).unwrap();
    let y = Tensor::empty(&ctx, &[ids.len(), dim], DType::F32).unwrap();
    let mut b = Batch::new(&ctx);
    embedding_quant_forward(&mut b, &it, &table, &y).unwrap();
    b.submit();
    let got = pollster::block_on(y.read_f32(&ctx)).unwrap();
    let want = reference::embedding(&ids, &dequantize(QuantType::Q8_0, &bytes, vocab * dim).unwrap(), dim);
    assert_eq!(got.iter().map(|&v| v as f64).collect::<Vec<_>>(), want, "gather must be exact");
}
