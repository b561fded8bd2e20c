//! Reference for `ops::rope`.

use crate::ops::{RopeConfig, RopeLayout};

/// Rotate `x` laid out as `[tokens][stride]` with heads starting at `offset`; returns
/// `[tokens, heads, head_dim]`. Angles straight from the definition:
/// `θ_j = pos · freq_scale · base^(-2j/n_rot) / factor_j`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &[f32],
    positions: &[u32],
    cfg: &RopeConfig,
    heads: usize,
    head_dim: usize,
    stride: usize,
    offset: usize,
) -> Vec<f64> {
    let tokens = positions.len();
    let half = cfg.n_rot / 2;
    let mut y = vec![0.0; tokens * heads * head_dim];
    for t in 0..tokens {
        for h in 0..heads {
            let src = &x[t * stride + offset + h * head_dim..][..head_dim];
            let dst = &mut y[(t * heads + h) * head_dim..][..head_dim];
            for (d, v) in dst.iter_mut().zip(src) {
                *d = *v as f64;
            }
            for j in 0..half {
                let factor = cfg.freq_factors.as_ref().map_or(1.0, |f| f[j] as f64);
                let theta =
                    positions[t] as f64 * cfg.freq_scale * cfg.base.powf(-((2 * j) as f64) / cfg.n_rot as f64) / factor;
                let (i0, i1) = match cfg.layout {
                    RopeLayout::Normal => (2 * j, 2 * j + 1),
                    RopeLayout::NeoX => (j, j + half),
                };
                let (a, b) = (src[i0] as f64, src[i1] as f64);
                dst[i0] = a * theta.cos() - b * theta.sin();
                dst[i1] = a * theta.sin() + b * theta.cos();
            }
        }
    }
    y
}
