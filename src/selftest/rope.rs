//! Checks of `ops::rope` against `reference::rope`.

use super::harness::{check_float, inputs, poisoned, CaseReport};
use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::rope::{rope_forward, RopeInput};
use crate::ops::{RopeConfig, RopeLayout, RopeTable};
use crate::reference;
use crate::rng::SplitMix64;

struct Case {
    what: &'static str,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    n_rot: usize,
    layout: RopeLayout,
    base: f64,
    freq_scale: f64,
    with_factors: bool,
    /// Heads before and after the rotated ones in each row (fused QKV layout).
    heads_before: usize,
    heads_after: usize,
    max_positions: usize,
}

pub async fn check(ctx: &GpuContext, dt: DType) -> Result<Vec<CaseReport>> {
    use RopeLayout::*;
    let c = |what, tokens, heads, head_dim, n_rot, layout, base| Case {
        what,
        tokens,
        heads,
        head_dim,
        n_rot,
        layout,
        base,
        freq_scale: 1.0,
        with_factors: false,
        heads_before: 0,
        heads_after: 0,
        max_positions: 4096,
    };
    let cases = vec![
        c("minimal", 1, 1, 2, 2, Normal, 10000.0),
        c("SmolLM2 q", 7, 9, 64, 64, Normal, 100000.0),
        c("NeoX 128", 5, 2, 128, 128, NeoX, 1e6),
        c("partial rotary", 3, 4, 64, 32, NeoX, 10000.0),
        c("Gemma head_dim 256", 2, 1, 256, 256, NeoX, 1e6),
        Case { with_factors: true, freq_scale: 0.25, ..c("llama-3 factors + scale", 4, 2, 64, 64, Normal, 500000.0) },
        Case { heads_before: 4, heads_after: 2, ..c("K inside fused QKV", 3, 2, 64, 64, Normal, 10000.0) },
        Case { max_positions: 32768, ..c("positions up to 32k", 33, 3, 64, 64, NeoX, 10000.0) },
    ];
    let mut rng = SplitMix64::new(0x5EED_0002);
    let mut out = Vec::new();
    for case in cases {
        let mut cfg = RopeConfig::new(case.n_rot, case.base, case.layout);
        cfg.freq_scale = case.freq_scale;
        if case.with_factors {
            cfg.freq_factors = Some((0..case.n_rot / 2).map(|_| rng.uniform(1.0, 8.0)).collect());
        }
        let table = RopeTable::new(ctx, cfg.clone(), case.max_positions)?;
        let stride = (case.heads_before + case.heads + case.heads_after) * case.head_dim;
        let offset = case.heads_before * case.head_dim;
        let x = inputs(&mut rng, case.tokens * stride, -2.0, 2.0, dt);
        let mut positions: Vec<u32> = (0..case.tokens).map(|_| rng.below(case.max_positions as u32)).collect();
        positions[0] = case.max_positions as u32 - 1;
        let xt = Tensor::from_f32(ctx, &x, &[case.tokens, stride], dt)?;
        let pt = Tensor::from_u32(ctx, &positions, &[case.tokens])?;
        let y = poisoned(ctx, &[case.tokens, case.heads, case.head_dim], dt)?;
        let input = RopeInput { tokens: case.tokens, heads: case.heads, head_dim: case.head_dim, stride, offset };
        let mut b = Batch::new(ctx);
        rope_forward(&mut b, &xt, &pt, &table, input, &y)?;
        b.submit();
        let want = reference::rope(&x, &positions, &cfg, case.heads, case.head_dim, stride, offset);
        let name = format!(
            "t{} h{} d{} rot{} {:?} ({})",
            case.tokens, case.heads, case.head_dim, case.n_rot, case.layout, case.what
        );
        out.push(check_float(ctx, "rope", name, &y, &want).await?);
    }
    Ok(out)
}
