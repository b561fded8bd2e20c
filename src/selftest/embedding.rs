//! Checks of `ops::embedding` against `reference::embedding`.

use super::harness::{check_float, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::embedding::{embedding_forward, embedding_quant_forward, embedding_quant_scaled_forward};
use crate::ops::qweight::{gpu_layout, gpu_row_bytes};
use crate::ops::QuantWeight;
use crate::quant::{self, QuantType};
use crate::reference;
use crate::rng::SplitMix64;

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    let mut rng = SplitMix64::new(0x5EED_0006);
    let mut out = Vec::new();
    // (vocab, dim, ids): first and last rows, repeats, and one id past the vocabulary.
    let cases: Vec<(usize, usize, Vec<u32>)> = vec![
        (3, 1, vec![2]),
        (1000, 576, vec![0, 999, 17, 17, 500, 3, 998]),
        (49152, 64, (0..33).map(|_| rng.below(49152)).collect()),
        (50, 7, vec![49, 50 + 5, 0]),
    ];
    for (vocab, dim, ids) in cases {
        let table = inputs(&mut rng, vocab * dim, -1.0, 1.0, dt);
        let tt = Tensor::from_f32(ctx, &table, &[vocab, dim], dt)?;
        let it = Tensor::from_u32(ctx, &ids, &[ids.len()])?;
        let y = poisoned(ctx, &[ids.len(), dim], dt)?;
        let mut b = Batch::new(ctx);
        embedding_forward(&mut b, &it, &tt, &y)?;
        b.submit();
        let want = reference::embedding(&ids, &table, dim);
        out.push(check_float(ctx, "embedding", format!("vocab {vocab} dim {dim} ids {}", ids.len()), &y, &want).await?);
    }
    // Quantized tables (every format), one of them split into parts.
    for ty in QuantType::ALL {
        let (block, _, _) = gpu_layout(ty);
        let (vocab, dim) = (300, 2 * block);
        let bytes = quant::random_blocks(ty, vocab * dim, &mut rng);
        let table = quant::dequantize(ty, &bytes, vocab * dim)?;
        let weight = QuantWeight::upload_with_part_limit(ctx, ty, vocab, dim, &bytes, 70 * gpu_row_bytes(ty, dim))?;
        let ids: Vec<u32> = vec![0, 299, 69, 70, 71, 140, 150, 299, 300 + 7, 5];
        let it = Tensor::from_u32(ctx, &ids, &[ids.len()])?;
        let y = poisoned(ctx, &[ids.len(), dim], dt)?;
        let mut b = Batch::new(ctx);
        embedding_quant_forward(&mut b, &it, &weight, &y)?;
        b.submit();
        let want = reference::embedding(&ids, &table, dim);
        let name = format!("{} vocab {vocab} dim {dim} {} parts", ty.name(), weight.parts.len());
        out.push(check_float(ctx, "embedding", name, &y, &want).await?);
        // Gemma's scaled gather (√hidden), through the same parts.
        let scale = (640f32).sqrt();
        let y = poisoned(ctx, &[ids.len(), dim], dt)?;
        let mut b = Batch::new(ctx);
        embedding_quant_scaled_forward(&mut b, &it, &weight, scale, &y)?;
        b.submit();
        let want: Vec<f64> = want.iter().map(|&v| v * scale as f64).collect();
        let name = format!("{} vocab {vocab} dim {dim} scale {scale}", ty.name());
        out.push(check_float(ctx, "embedding", name, &y, &want).await?);
    }
    Ok(out)
}
