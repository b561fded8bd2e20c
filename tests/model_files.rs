//! The real default model (SmolLM2-135M-Instruct Q4_1, fetched by scripts/fetch-model.sh):
//! header facts, every weight through the GPU repacker with exact memory accounting, and real
//! quantized data through the gather and GEMV kernels against the CPU reference.
//! Skipped when the file is absent unless PUPIL_REQUIRE_MODELS=1 (scripts/test.sh sets it).

mod common;

use pupil::gpu::{Batch, DType, Tensor};
use pupil::model::gguf::parse_header;
use pupil::ops::embedding::embedding_quant_forward;
use pupil::ops::matmul::matmul_forward;
use pupil::ops::QuantWeight;
use pupil::quant::{dequantize, QuantType};
use pupil::{reference, ContextOptions};

#[test]
fn smollm2_header_matches_the_model_card() {
    let Some(file) = common::smollm2() else { return };
    let h = parse_header(&file).unwrap();
    let u = |k: &str| h.get(k).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("{k}"));
    assert_eq!(h.get("general.architecture").unwrap().as_str(), Some("llama"));
    assert_eq!(
        [
            u("llama.block_count"),
            u("llama.embedding_length"),
            u("llama.feed_forward_length"),
            u("llama.context_length")
        ],
        [30, 576, 1536, 8192]
    );
    assert_eq!(
        [u("llama.attention.head_count"), u("llama.attention.head_count_kv"), u("llama.rope.dimension_count")],
        [9, 3, 64]
    );
    assert_eq!(h.get("llama.rope.freq_base").unwrap().as_f64(), Some(100000.0));
    assert_eq!(h.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len(), 49152);
    assert_eq!(h.get("tokenizer.ggml.pre").unwrap().as_str(), Some("smollm"));
    assert!(h.get("tokenizer.chat_template").unwrap().as_str().unwrap().contains("<|im_start|>"));
    assert_eq!(h.tensors.len(), 2 + 30 * 9);
    assert_eq!(h.tensor("token_embd.weight").unwrap().ty, QuantType::Q8_0);
    assert_eq!(h.tensor("blk.29.ffn_down.weight").unwrap().ty, QuantType::Q4_1);
    assert!(h.tensor("output.weight").is_none(), "SmolLM2 ties its head to the embedding");
    assert!(h.file_size() <= file.len() as u64);
}

#[test]
fn smollm2_weights_on_the_gpu() {
    let Some(file) = common::smollm2() else { return };
    let h = parse_header(&file).unwrap();
    let ctx = common::context_with(ContextOptions { allow_f16: false, ..ContextOptions::default() });
    let before = ctx.memory.current_bytes();
    let mut weights = Vec::new();
    let mut expected = 0;
    for t in h.tensors.iter().filter(|t| t.dims.len() == 2) {
        let (rows, cols) = t.rows_cols();
        let w = QuantWeight::upload(&ctx, t.ty, rows, cols, h.tensor_data(&file, t).unwrap()).unwrap();
        expected += w.gpu_bytes();
        weights.push((t.name.clone(), w));
    }
    assert_eq!(ctx.memory.current_bytes() - before, expected);
    println!("SmolLM2 matrices on the GPU: {:.1} MiB in {} weights", expected as f64 / (1 << 20) as f64, weights.len());

    // The tied embedding: real Q8_0 rows gathered on the GPU vs dequantized on the CPU.
    let emb = h.tensor("token_embd.weight").unwrap();
    let table = dequantize(emb.ty, h.tensor_data(&file, emb).unwrap(), 49152 * 576).unwrap();
    let (_, gpu_emb) = weights.iter().find(|(n, _)| n == "token_embd.weight").unwrap();
    let ids = [1u32, 2, 100, 49151, 12345];
    let it = Tensor::from_u32(&ctx, &ids, &[ids.len()]).unwrap();
    let y = Tensor::empty(&ctx, &[ids.len(), 576], DType::F32).unwrap();
    let mut b = Batch::new(&ctx);
    embedding_quant_forward(&mut b, &it, gpu_emb, &y).unwrap();
    b.submit();
    let got: Vec<f64> = pollster::block_on(y.read_f32(&ctx)).unwrap().iter().map(|&v| v as f64).collect();
    assert_eq!(got, reference::embedding(&ids, &table, 576));

    // A real Q4_1 projection (blk.0.attn_q) applied to an embedding row.
    let q = h.tensor("blk.0.attn_q.weight").unwrap();
    let wq = dequantize(q.ty, h.tensor_data(&file, q).unwrap(), 576 * 576).unwrap();
    let x: Vec<f32> = table[100 * 576..101 * 576].to_vec();
    let xt = Tensor::from_f32(&ctx, &x, &[1, 576], DType::F32).unwrap();
    let yq = Tensor::empty(&ctx, &[1, 576], DType::F32).unwrap();
    let (_, gpu_q) = weights.iter().find(|(n, _)| n == "blk.0.attn_q.weight").unwrap();
    let mut b = Batch::new(&ctx);
    matmul_forward(&mut b, &xt, gpu_q, None, &yq, false).unwrap();
    b.submit();
    let got = pollster::block_on(yq.read_f32(&ctx)).unwrap();
    let want = reference::matmul(&x, &wq, 576, 576, None);
    let (d2, r2) = got.iter().zip(&want).fold((0.0, 0.0), |(d, r), (&g, &w)| (d + (g as f64 - w).powi(2), r + w * w));
    assert!((d2 / r2).sqrt() <= 1e-5, "rel err {}", (d2 / r2).sqrt());
    let live = ctx.memory.current_bytes();
    drop(weights);
    assert_eq!(live - ctx.memory.current_bytes(), expected, "dropping the weights frees exactly their bytes");
}
