//! Reference for `ops::rope`.

use crate::ops::{RopeConfig, RopeLayout};

/// Rotation pair `j` at `pos`: its two element indices and the angle, from the definition
/// `θ_j = pos · freq_scale · base^(-2j/n_rot) / factor_j`.
fn pair(cfg: &RopeConfig, pos: u32, j: usize) -> (usize, usize, f64) {
    let factor = cfg.freq_factors.as_ref().map_or(1.0, |f| f[j] as f64);
    let theta = pos as f64 * cfg.freq_scale * cfg.base.powf(-((2 * j) as f64) / cfg.n_rot as f64) / factor;
    let (i0, i1) = match cfg.layout {
        RopeLayout::Normal => (2 * j, 2 * j + 1),
        RopeLayout::NeoX => (j, j + cfg.n_rot / 2),
    };
    (i0, i1, theta)
}

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
                let (i0, i1, theta) = pair(cfg, positions[t], j);
                let (a, b) = (src[i0] as f64, src[i1] as f64);
                dst[i0] = a * theta.cos() - b * theta.sin();
                dst[i1] = a * theta.sin() + b * theta.cos();
            }
        }
    }
    y
}

/// The gradient of [`rope`] with respect to `x`: `dy` `[tokens, heads, head_dim]` rotated back
/// (Rᵀ), laid out `[tokens][stride]` from `offset` like `x` (elements outside the heads 0).
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    dy: &[f32],
    positions: &[u32],
    cfg: &RopeConfig,
    heads: usize,
    head_dim: usize,
    stride: usize,
    offset: usize,
) -> Vec<f64> {
    let tokens = positions.len();
    let half = cfg.n_rot / 2;
    let mut dx = vec![0.0; tokens * stride];
    for t in 0..tokens {
        for h in 0..heads {
            let src = &dy[(t * heads + h) * head_dim..][..head_dim];
            let dst = &mut dx[t * stride + offset + h * head_dim..][..head_dim];
            for (d, v) in dst.iter_mut().zip(src) {
                *d = *v as f64;
            }
            for j in 0..half {
                let (i0, i1, theta) = pair(cfg, positions[t], j);
                let (a, b) = (src[i0] as f64, src[i1] as f64);
                dst[i0] = a * theta.cos() + b * theta.sin();
                dst[i1] = -a * theta.sin() + b * theta.cos();
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::finite_difference::check_gradient;
    use crate::rng::SplitMix64;

    /// L = Σ rope(x)·dy is linear in x, so its gradient is exactly what rope_backward says.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(3);
        for layout in [RopeLayout::Normal, RopeLayout::NeoX] {
            let mut cfg = RopeConfig::new(8, 10000.0, layout);
            cfg.freq_scale = 0.5;
            let (heads, head_dim, stride, offset) = (2, 12, 30, 4);
            let positions = [0u32, 5, 1000];
            let x = rng.vec_nonzero(positions.len() * stride, -1.0, 1.0);
            let dy = rng.vec_nonzero(positions.len() * heads * head_dim, -1.0, 1.0);
            let dx = rope_backward(&dy, &positions, &cfg, heads, head_dim, stride, offset);
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            check_gradient(&format!("rope {layout:?} dx"), &x64, &dx, |xp| {
                // The forward written in f64 (rope() itself reads f32 inputs).
                let half = cfg.n_rot / 2;
                let mut total = 0.0;
                for t in 0..positions.len() {
                    for h in 0..heads {
                        let src = &xp[t * stride + offset + h * head_dim..][..head_dim];
                        let g = &dy[(t * heads + h) * head_dim..][..head_dim];
                        let mut y: Vec<f64> = src.to_vec();
                        for j in 0..half {
                            let (i0, i1, theta) = pair(&cfg, positions[t], j);
                            y[i0] = src[i0] * theta.cos() - src[i1] * theta.sin();
                            y[i1] = src[i0] * theta.sin() + src[i1] * theta.cos();
                        }
                        total += y.iter().zip(g).map(|(a, &b)| a * b as f64).sum::<f64>();
                    }
                }
                total
            });
        }
    }
}
