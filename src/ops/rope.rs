//! Rotary position embedding: normal and NeoX layouts, partial rotary dims, any base,
//! linear position scaling and per-frequency factors (llama-3's `rope_freqs`).
//! Kernel: `shaders/rope.wgsl`. Reference: `reference::rope`.
//!
//! Angles come from a host-computed table (f64 math, stored as f32 cos/sin pairs for
//! positions `0..max_positions`): WGSL's sin/cos promise only 2^-11 absolute error and an
//! f32 `pos * inv_freq` loses the angle's low bits at long positions.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, expect_dtype, expect_len, float_dtype, kernel, to_u32};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, KernelKey, Tensor};

/// Which elements form a rotation pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): llama.cpp's "normal" mode, used by GGUF llama models (whose Q/K
    /// weights GGUF stores permuted for it).
    Normal,
    /// Pairs (i, i + n_rot/2): NeoX / HF layout (qwen2, qwen3, gemma3 in GGUF).
    NeoX,
}

#[derive(Clone, Debug)]
pub struct RopeConfig {
    /// Rotated dims per head (≤ head_dim, even); the rest pass through.
    pub n_rot: usize,
    /// Frequency base θ (10000, 100000, 1e6 ...).
    pub base: f64,
    /// Linear position scale (1.0 = none): angle uses `pos * freq_scale`.
    pub freq_scale: f64,
    /// Optional per-frequency divisors (`rope_freqs.weight`, n_rot/2 values).
    pub freq_factors: Option<Vec<f32>>,
    pub layout: RopeLayout,
}

impl RopeConfig {
    pub fn new(n_rot: usize, base: f64, layout: RopeLayout) -> Self {
        RopeConfig { n_rot, base, freq_scale: 1.0, freq_factors: None, layout }
    }

    fn validate(&self) -> Result<()> {
        const OP: &str = "rope";
        if self.n_rot == 0 || !self.n_rot.is_multiple_of(2) {
            return Err(PupilError::arg(OP, format!("n_rot must be even and positive, got {}", self.n_rot)));
        }
        if !(self.base > 1.0) || !self.base.is_finite() || !(self.freq_scale > 0.0) {
            return Err(PupilError::arg(OP, format!("bad base {} or freq_scale {}", self.base, self.freq_scale)));
        }
        if let Some(ff) = &self.freq_factors {
            if ff.len() != self.n_rot / 2 || ff.iter().any(|&f| !(f > 0.0) || !f.is_finite()) {
                return Err(PupilError::arg(OP, format!("freq_factors needs {} positive values", self.n_rot / 2)));
            }
        }
        Ok(())
    }
}

/// cos/sin of every (position, frequency) angle on the GPU.
pub struct RopeTable {
    pub(crate) table: Tensor,
    pub config: RopeConfig,
    pub max_positions: usize,
}

impl RopeTable {
    pub fn new(ctx: &GpuContext, config: RopeConfig, max_positions: usize) -> Result<Self> {
        config.validate()?;
        let half = config.n_rot / 2;
        let mut data = Vec::with_capacity(max_positions * half * 2);
        for pos in 0..max_positions {
            for j in 0..half {
                let inv_freq = config.base.powf(-2.0 * j as f64 / config.n_rot as f64)
                    / config.freq_factors.as_ref().map_or(1.0, |f| f[j] as f64);
                let angle = pos as f64 * config.freq_scale * inv_freq;
                data.push(angle.cos() as f32);
                data.push(angle.sin() as f32);
            }
        }
        let table = Tensor::from_f32(ctx, &data, &[max_positions, half, 2], DType::F32)?;
        Ok(RopeTable { table, config, max_positions })
    }
}

/// Where the heads of each token sit in the input.
#[derive(Clone, Copy, Debug)]
pub struct RopeInput {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Elements between consecutive tokens in `x` (heads*head_dim when contiguous).
    pub stride: usize,
    /// Element offset of token 0, head 0 (e.g. where K starts in a fused QKV row).
    pub offset: usize,
}

impl RopeInput {
    pub fn contiguous(tokens: usize, heads: usize, head_dim: usize) -> Self {
        RopeInput { tokens, heads, head_dim, stride: heads * head_dim, offset: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    n_rot: u32,
    in_stride: u32,
    in_offset: u32,
    out_stride: u32,
    neox: u32,
    out_offset: u32,
    _pad: [u32; 3],
}

/// The heads `l` describes must be even-sized, hold the rotated dims and lie inside `t`.
fn check_layout(op: &'static str, what: &str, l: &RopeInput, n_rot: usize, t: &Tensor) -> Result<()> {
    let RopeInput { tokens, heads, head_dim, stride, offset } = *l;
    if head_dim % 2 != 0 || n_rot > head_dim || tokens == 0 || heads == 0 {
        return Err(PupilError::shape(
            op,
            format!("head_dim {head_dim} (even, ≥ n_rot {n_rot}), tokens {tokens}, heads {heads}"),
        ));
    }
    if stride < heads * head_dim || offset + (tokens - 1) * stride + heads * head_dim > t.len() {
        return Err(PupilError::shape(
            op,
            format!("{what} layout (stride {stride}, offset {offset}) runs past its {} elements", t.len()),
        ));
    }
    Ok(())
}

/// Rotate the heads described by `input` inside `x` by the angles at `positions` (u32, one
/// per token, each < `table.max_positions`), writing `y` as `[tokens, heads, head_dim]`.
pub fn rope_forward(
    b: &mut Batch,
    x: &Tensor,
    positions: &Tensor,
    table: &RopeTable,
    input: RopeInput,
    y: &Tensor,
) -> Result<()> {
    const OP: &str = "rope_forward";
    let dt = float_dtype(b.context(), OP, &[x, y])?;
    expect_dtype(OP, "positions", positions, DType::U32)?;
    expect_len(OP, "positions", positions, input.tokens)?;
    let RopeInput { tokens, heads, head_dim, stride, offset } = input;
    let n_rot = table.config.n_rot;
    check_layout(OP, "input", &input, n_rot, x)?;
    expect_len(OP, "output", y, tokens * heads * head_dim)?;
    let key = kernel(b.context(), "rope", "rope_forward", dt, false, 64);
    let params = Params {
        tokens: to_u32(OP, tokens)?,
        heads: to_u32(OP, heads)?,
        head_dim: to_u32(OP, head_dim)?,
        n_rot: to_u32(OP, n_rot)?,
        in_stride: to_u32(OP, stride)?,
        in_offset: to_u32(OP, offset)?,
        out_stride: to_u32(OP, heads * head_dim)?,
        neox: (table.config.layout == RopeLayout::NeoX) as u32,
        out_offset: 0,
        _pad: [0; 3],
    };
    let pairs = tokens * heads * head_dim / 2;
    let grid = crate::gpu::grid_for(b.context(), to_u32(OP, pairs.div_ceil(64))?);
    b.dispatch(&key, bytemuck::bytes_of(&params), &[x, positions, &table.table, y], grid)
}

/// The backward pass of [`rope_forward`]: `dx = Rᵀ·dy` from the contiguous gradient `dy`
/// `[tokens, heads, head_dim]` of the rotated heads, written into `dx` at the layout `output`
/// describes (e.g. the Q or K columns of a fused projection's gradient; other elements of `dx`
/// are left alone).
pub fn rope_backward(
    b: &mut Batch,
    dy: &Tensor,
    positions: &Tensor,
    table: &RopeTable,
    output: RopeInput,
    dx: &Tensor,
) -> Result<()> {
    const OP: &str = "rope_backward";
    let dt = float_dtype(b.context(), OP, &[dy, dx])?;
    expect_dtype(OP, "positions", positions, DType::U32)?;
    expect_len(OP, "positions", positions, output.tokens)?;
    let RopeInput { tokens, heads, head_dim, stride, offset } = output;
    let n_rot = table.config.n_rot;
    check_layout(OP, "output", &output, n_rot, dx)?;
    expect_len(OP, "dy", dy, tokens * heads * head_dim)?;
    let key = kernel(b.context(), "rope", "rope_forward", dt, false, 64).flag("BACKWARD", true);
    let params = Params {
        tokens: to_u32(OP, tokens)?,
        heads: to_u32(OP, heads)?,
        head_dim: to_u32(OP, head_dim)?,
        n_rot: to_u32(OP, n_rot)?,
        in_stride: to_u32(OP, heads * head_dim)?,
        in_offset: 0,
        out_stride: to_u32(OP, stride)?,
        neox: (table.config.layout == RopeLayout::NeoX) as u32,
        out_offset: to_u32(OP, offset)?,
        _pad: [0; 3],
    };
    let pairs = tokens * heads * head_dim / 2;
    let grid = crate::gpu::grid_for(b.context(), to_u32(OP, pairs.div_ceil(64))?);
    b.dispatch(&key, bytemuck::bytes_of(&params), &[dy, positions, &table.table, dx], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let base = KernelKey::new("rope", "rope_forward").define("WG", 64);
    let mut v = dtype_and_reduction_variants(base.clone(), false);
    v.extend(dtype_and_reduction_variants(base.flag("BACKWARD", true), false));
    v
}
