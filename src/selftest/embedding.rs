//! Checks of `ops::embedding` against `reference::embedding`.

use super::harness::{check_float, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::embedding::embedding_forward;
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
    Ok(out)
}
