//! Quantized matrix products over a [`QuantWeight`] (any GGUF type):
//! - `matmul_forward`: `y (+)= x · Wᵀ (+ bias)` — GEMV kernel for M ≤ 8 activation rows
//!   (decode), tiled GEMM kernel above (prefill, training);
//! - `matmul_transposed_forward`: `dx (+)= dy · W` through the same frozen W (fine-tuning).
//!
//! A weight split into row parts (larger than one storage binding) is one dispatch per part.
//! `accumulate` adds into `y` instead of overwriting it (e.g. the residual stream).
//! - `matmul_glu_forward`: `y = act(x · W_gateᵀ) ⊙ (x · W_upᵀ)` from one stacked gate|up
//!   weight, the MLP's two projections and activation in one GEMV dispatch (M ≤ 8);
//! - `quantize_activations_forward` + `matmul_int8_forward`: the int8-activation path for
//!   decode (M ≤ 8, block-quantized W): activations quantized per 32-block on the fly, integer
//!   dot products with `dot4I8Packed`. Less exact (≈1e-2 relative), faster where integer dot
//!   products beat unpacking to floats; `pupil-bench` reports both.
//!
//! Kernels: `shaders/matmul_gemv.wgsl`, `shaders/matmul_gemm.wgsl`, `shaders/quantize_act.wgsl`,
//! `shaders/common/dequant.wgsl`.
//! Reference: `reference::matmul`.

use bytemuck::{Pod, Zeroable};

use super::qweight::{format_define, has_scales, QuantWeight, WeightPart};
use super::{expect_len, float_dtype, kernel, rows_and_width, to_u32, Activation};
use crate::error::{PupilError, Result};
use crate::gpu::{grid_for, Batch, DType, KernelKey, Tensor};
use crate::quant::QuantType;

/// Up to this many activation rows use the GEMV kernel.
pub const GEMV_MAX_M: usize = 8;
const GEMV_WG: u32 = 64;
const GEMM_TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_offset: u32,
    y_stride: u32,
    accumulate: u32,
    x_stride: u32,
    _pad: u32,
}

/// The GEMV's compile-time row bound for `m` rows (see `MT` in the shader).
fn gemv_rows_bound(m: usize) -> u32 {
    if m == 1 {
        1
    } else {
        GEMV_MAX_M as u32
    }
}

fn gemv_key(b: &Batch, dt: DType, ty: QuantType, bias: bool, m: usize) -> KernelKey {
    kernel(b.context(), "matmul_gemv", "matmul_gemv", dt, true, GEMV_WG)
        .define("MT", gemv_rows_bound(m))
        .flag(format_define(ty), true)
        .flag("HAS_SCALES", has_scales(ty))
        .flag("BIAS", bias)
}

fn gemm_key(b: &Batch, dt: DType, ty: QuantType, bias: bool, transposed: bool) -> KernelKey {
    kernel(b.context(), "matmul_gemm", "matmul_gemm", dt, false, 256)
        .flag(format_define(ty), true)
        .flag("HAS_SCALES", has_scales(ty))
        .flag("BIAS", bias)
        .flag("TRANSPOSED", transposed)
}

fn part_tensors<'a>(y: &'a Tensor, x: &'a Tensor, part: &'a WeightPart, bias: Option<&'a Tensor>) -> Vec<&'a Tensor> {
    let mut t = vec![y, x, &part.q];
    t.extend(part.s.as_ref());
    t.extend(bias);
    t
}

/// `y[M, N] (+)= x[M, K] · Wᵀ (+ bias[N])` for `W` `[N, K]`.
pub fn matmul_forward(
    b: &mut Batch,
    x: &Tensor,
    w: &QuantWeight,
    bias: Option<&Tensor>,
    y: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "matmul_forward";
    let mut floats = vec![x, y];
    floats.extend(bias);
    let dt = float_dtype(b.context(), OP, &floats)?;
    let (m, k) = rows_and_width(OP, x)?;
    if k != w.cols {
        return Err(PupilError::shape(OP, format!("x has {k} columns, W is {}x{}", w.rows, w.cols)));
    }
    expect_len(OP, "output", y, m * w.rows)?;
    if let Some(bias) = bias {
        expect_len(OP, "bias", bias, w.rows)?;
    }
    for part in &w.parts {
        let mut p = Params {
            m: to_u32(OP, m)?,
            n: to_u32(OP, part.rows)?,
            k: to_u32(OP, k)?,
            row_offset: to_u32(OP, part.row_start)?,
            y_stride: to_u32(OP, w.rows)?,
            accumulate: accumulate as u32,
            x_stride: to_u32(OP, k)?,
            _pad: 0,
        };
        let tensors = part_tensors(y, x, part, bias);
        if m <= GEMV_MAX_M {
            let grid = grid_for(b.context(), p.n);
            b.dispatch(&gemv_key(b, dt, w.ty, bias.is_some(), m), bytemuck::bytes_of(&p), &tensors, grid)?;
        } else {
            let grid = [to_u32(OP, part.rows.div_ceil(GEMM_TILE))?, to_u32(OP, m.div_ceil(GEMM_TILE))?, 1];
            p.x_stride = p.k;
            b.dispatch(&gemm_key(b, dt, w.ty, bias.is_some(), false), bytemuck::bytes_of(&p), &tensors, grid)?;
        }
    }
    Ok(())
}

/// Activations the fused gate·up epilogue is built for (SwiGLU; Gemma's tanh GeGLU).
pub const GLU_ACTIVATIONS: [Activation; 2] = [Activation::Silu, Activation::GeluTanh];

/// `y[M, F] = act(x · W[0..F]ᵀ) ⊙ (x · W[F..2F]ᵀ)` for a stacked gate|up weight `W` `[2F, K]`
/// (see [`QuantWeight::upload_concat`]), M ≤ 8. The weight must be in one part (both rows of a
/// pair in the same binding): larger ones use `matmul_forward` + `gated_activation_fused_forward`.
pub fn matmul_glu_forward(b: &mut Batch, x: &Tensor, w: &QuantWeight, act: Activation, y: &Tensor) -> Result<()> {
    const OP: &str = "matmul_glu_forward";
    let dt = float_dtype(b.context(), OP, &[x, y])?;
    let (m, k) = rows_and_width(OP, x)?;
    if k != w.cols || !w.rows.is_multiple_of(2) || m > GEMV_MAX_M {
        return Err(PupilError::shape(
            OP,
            format!("x [{m}, {k}] for a gate|up W {}x{} (even rows, at most {GEMV_MAX_M} x rows)", w.rows, w.cols),
        ));
    }
    if w.parts.len() != 1 {
        return Err(PupilError::arg(
            OP,
            format!(
                "the gate|up weight spans {} bindings; use matmul_forward + gated_activation_fused_forward",
                w.parts.len()
            ),
        ));
    }
    if !GLU_ACTIVATIONS.contains(&act) {
        return Err(PupilError::arg(OP, format!("{act:?} has no fused gate·up kernel")));
    }
    let f = w.rows / 2;
    expect_len(OP, "output", y, m * f)?;
    let part = &w.parts[0];
    let p = Params {
        m: to_u32(OP, m)?,
        n: to_u32(OP, f)?,
        k: to_u32(OP, k)?,
        row_offset: 0,
        y_stride: to_u32(OP, f)?,
        accumulate: 0,
        x_stride: to_u32(OP, k)?,
        _pad: 0,
    };
    let key = gemv_key(b, dt, w.ty, false, m).flag("GLU", true).define("ACT", act.code());
    b.dispatch(&key, bytemuck::bytes_of(&p), &part_tensors(y, x, part, None), grid_for(b.context(), p.n))
}

/// `dx[M, K] (+)= dy[M, N] · W` for `W` `[N, K]`: the input gradient through a frozen
/// (quantized) weight.
pub fn matmul_transposed_forward(
    b: &mut Batch,
    dy: &Tensor,
    w: &QuantWeight,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "matmul_transposed_forward";
    let dt = float_dtype(b.context(), OP, &[dy, dx])?;
    let (m, n) = rows_and_width(OP, dy)?;
    if n != w.rows {
        return Err(PupilError::shape(OP, format!("dy has {n} columns, W is {}x{}", w.rows, w.cols)));
    }
    expect_len(OP, "dx", dx, m * w.cols)?;
    for (i, part) in w.parts.iter().enumerate() {
        let p = Params {
            m: to_u32(OP, m)?,
            n: to_u32(OP, part.rows)?,
            k: to_u32(OP, w.cols)?,
            row_offset: to_u32(OP, part.row_start)?,
            y_stride: to_u32(OP, w.cols)?,
            // Later parts add their share of the sum over rows.
            accumulate: (accumulate || i > 0) as u32,
            x_stride: to_u32(OP, n)?,
            _pad: 0,
        };
        let grid = [to_u32(OP, w.cols.div_ceil(GEMM_TILE))?, to_u32(OP, m.div_ceil(GEMM_TILE))?, 1];
        b.dispatch(
            &gemm_key(b, dt, w.ty, false, true),
            bytemuck::bytes_of(&p),
            &part_tensors(dx, dy, part, None),
            grid,
        )?;
    }
    Ok(())
}

/// Activations `[m, k]` quantized to int8 per block of 32 (see `shaders/quantize_act.wgsl`).
pub struct QuantizedActivations {
    pub m: usize,
    pub k: usize,
    /// `[m, k/4]` packed signed bytes.
    pub q: Tensor,
    /// `[m, k/32]` f32 block scales.
    pub d: Tensor,
    /// `[m, k/8]` f32 exact sums of each group of eight values.
    pub sums: Tensor,
}

impl QuantizedActivations {
    pub fn new(ctx: &crate::gpu::GpuContext, m: usize, k: usize) -> Result<Self> {
        if m == 0 || k == 0 || !k.is_multiple_of(32) {
            return Err(PupilError::shape(
                "QuantizedActivations",
                format!("[{m}, {k}]: k must be a positive multiple of 32"),
            ));
        }
        Ok(QuantizedActivations {
            m,
            k,
            q: Tensor::empty(ctx, &[m, k / 4], DType::U32)?,
            d: Tensor::empty(ctx, &[m, k / 32], DType::F32)?,
            sums: Tensor::empty(ctx, &[m, k / 8], DType::F32)?,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct QuantizeParams {
    blocks: u32,
}

/// Quantize `x [m, k]` into `out`.
pub fn quantize_activations_forward(b: &mut Batch, x: &Tensor, out: &QuantizedActivations) -> Result<()> {
    const OP: &str = "quantize_activations_forward";
    let dt = float_dtype(b.context(), OP, &[x])?;
    let (m, k) = rows_and_width(OP, x)?;
    if (m, k) != (out.m, out.k) {
        return Err(PupilError::shape(OP, format!("x is [{m}, {k}], the output holds [{}, {}]", out.m, out.k)));
    }
    let blocks = to_u32(OP, m * k / 32)?;
    let key = kernel(b.context(), "quantize_act", "quantize_act_forward", dt, false, 64);
    let grid = grid_for(b.context(), blocks.div_ceil(64));
    b.dispatch(&key, bytemuck::bytes_of(&QuantizeParams { blocks }), &[&out.q, &out.d, &out.sums, x], grid)
}

/// `y[M, N] (+)= x · Wᵀ (+ bias)` from int8-quantized activations (M ≤ 8; W block-quantized).
pub fn matmul_int8_forward(
    b: &mut Batch,
    x: &QuantizedActivations,
    w: &QuantWeight,
    bias: Option<&Tensor>,
    y: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "matmul_int8_forward";
    let mut floats = vec![y];
    floats.extend(bias);
    let dt = float_dtype(b.context(), OP, &floats)?;
    if !has_scales(w.ty) {
        return Err(PupilError::arg(OP, format!("the int8 path needs a block-quantized weight, not {}", w.ty.name())));
    }
    if x.m > GEMV_MAX_M || x.k != w.cols {
        return Err(PupilError::shape(
            OP,
            format!("x [{}, {}] for W {}x{} (at most {GEMV_MAX_M} rows)", x.m, x.k, w.rows, w.cols),
        ));
    }
    expect_len(OP, "output", y, x.m * w.rows)?;
    if let Some(bias) = bias {
        expect_len(OP, "bias", bias, w.rows)?;
    }
    let key = gemv_key(b, dt, w.ty, bias.is_some(), x.m).flag("INT8", true);
    for part in &w.parts {
        let p = Params {
            m: to_u32(OP, x.m)?,
            n: to_u32(OP, part.rows)?,
            k: to_u32(OP, x.k)?,
            row_offset: to_u32(OP, part.row_start)?,
            y_stride: to_u32(OP, w.rows)?,
            accumulate: accumulate as u32,
            x_stride: to_u32(OP, x.k)?,
            _pad: 0,
        };
        let mut tensors: Vec<&Tensor> = vec![y, &x.q, &part.q];
        tensors.extend(part.s.as_ref());
        tensors.push(&x.d);
        tensors.push(&x.sums);
        tensors.extend(bias);
        b.dispatch(&key, bytemuck::bytes_of(&p), &tensors, grid_for(b.context(), p.n))?;
    }
    Ok(())
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for ty in QuantType::ALL {
        let fmt = format_define(ty);
        for f16 in [false, true] {
            for bias in [false, true] {
                for (sg, mt) in [false, true].into_iter().flat_map(|sg| [(sg, 1), (sg, GEMV_MAX_M as u32)]) {
                    let gemv = KernelKey::new("matmul_gemv", "matmul_gemv")
                        .define("WG", GEMV_WG)
                        .define("MT", mt)
                        .flag(fmt, true)
                        .flag("HAS_SCALES", has_scales(ty))
                        .flag("F16", f16)
                        .flag("BIAS", bias)
                        .flag("SUBGROUPS", sg);
                    if has_scales(ty) {
                        v.push(gemv.clone().flag("INT8", true));
                    }
                    if !bias {
                        for act in GLU_ACTIVATIONS {
                            v.push(gemv.clone().flag("GLU", true).define("ACT", act.code()));
                        }
                    }
                    v.push(gemv);
                }
                for transposed in [false, true] {
                    if bias && transposed {
                        continue;
                    }
                    v.push(
                        KernelKey::new("matmul_gemm", "matmul_gemm")
                            .define("WG", 256)
                            .flag(fmt, true)
                            .flag("HAS_SCALES", has_scales(ty))
                            .flag("F16", f16)
                            .flag("BIAS", bias)
                            .flag("TRANSPOSED", transposed),
                    );
                }
            }
        }
    }
    for f16 in [false, true] {
        v.push(KernelKey::new("quantize_act", "quantize_act_forward").define("WG", 64).flag("F16", f16));
    }
    v
}
