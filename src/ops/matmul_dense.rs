//! Dense products of two float tensors, `C (+)= α·op(A)·op(B)`, for what is not a GGUF weight:
//! LoRA's small matrices (forward and backward) and weight gradients (`dW = dYᵀ·X`). The
//! quantized base weights go through `ops::matmul` (forward, and `matmul_transposed_forward`
//! for dX). Kernel: `shaders/matmul_dense.wgsl`. Reference: `reference::matmul_dense`.

use bytemuck::{Pod, Zeroable};

use super::{expect_len, float_dtype, to_u32};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

/// How A and B are laid out (row-major storage), for `C[m, n] = Σ_k A(i, k)·B(k, j)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseLayout {
    /// A `[m, k]`, B `[n, k]`: `C = A·Bᵀ` (a Linear layer, `y = x·Wᵀ`).
    Nt,
    /// A `[m, k]`, B `[k, n]`: `C = A·B` (`dX = dY·W`).
    Nn,
    /// A `[k, m]`, B `[k, n]`: `C = Aᵀ·B` (`dW = dYᵀ·X`, the reduction over tokens).
    Tn,
}

impl DenseLayout {
    pub const ALL: [DenseLayout; 3] = [DenseLayout::Nt, DenseLayout::Nn, DenseLayout::Tn];
    fn flags(self) -> (bool, bool) {
        match self {
            DenseLayout::Nt => (false, false),
            DenseLayout::Nn => (false, true),
            DenseLayout::Tn => (true, true),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
    alpha: f32,
    lda: u32,
    a_offset: u32,
    ldc: u32,
    c_offset: u32,
    _pad: [u32; 3],
}

/// Where a matrix operand sits inside its tensor: row stride and first element (a column block
/// of wider rows, e.g. the Q columns of a fused Q|K projection or its gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strided {
    pub row_stride: usize,
    pub offset: usize,
}

fn key(layout: DenseLayout, dt: DType, b_f32: bool, c_f32: bool) -> KernelKey {
    let (trans_a, b_kn) = layout.flags();
    KernelKey::new("matmul_dense", "matmul_dense")
        .flag("F16", dt == DType::F16)
        .flag("TRANS_A", trans_a)
        .flag("B_KN", b_kn)
        .flag("B_F32", dt == DType::F16 && b_f32)
        .flag("C_F32", dt == DType::F16 && c_f32)
}

/// `c (+)= alpha · op(a)·op(b)` with `(m, n, k)` the product's shape (`c` is `[m, n]`). `a` sets
/// the activation dtype T (f32 or f16); `b` and `c` are T or f32 (f32 master weights, f32
/// gradients).
#[allow(clippy::too_many_arguments)]
pub fn matmul_dense_forward(
    bt: &mut Batch,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    layout: DenseLayout,
    mnk: (usize, usize, usize),
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    matmul_dense_strided(bt, (a, None), b, (c, None), layout, mnk, alpha, accumulate)
}

/// [`matmul_dense_forward`] with A and/or C as column blocks of wider rows (`None`: contiguous).
/// A's rows are its `m` rows (`k` rows with [`DenseLayout::Tn`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_dense_strided(
    bt: &mut Batch,
    (a, a_at): (&Tensor, Option<Strided>),
    b: &Tensor,
    (c, c_at): (&Tensor, Option<Strided>),
    layout: DenseLayout,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "matmul_dense_forward";
    let dt = float_dtype(bt.context(), OP, &[a])?;
    let side = |what: &str, t: &Tensor| -> Result<bool> {
        if t.dtype() == dt || t.dtype() == DType::F32 {
            Ok(t.dtype() == DType::F32)
        } else {
            Err(PupilError::dtype(OP, format!("{what} must be {} or f32, got {}", dt.name(), t.dtype().name())))
        }
    };
    let (b_f32, c_f32) = (side("b", b)?, side("c", c)?);
    if m == 0 || n == 0 || k == 0 {
        return Err(PupilError::shape(OP, format!("empty product {m}x{n}x{k}")));
    }
    let (a_rows, a_cols) = if layout == DenseLayout::Tn { (k, m) } else { (m, k) };
    let a_at = a_at.unwrap_or(Strided { row_stride: a_cols, offset: 0 });
    let c_at = c_at.unwrap_or(Strided { row_stride: n, offset: 0 });
    for (what, t, (rows, cols), at) in [("a", a, (a_rows, a_cols), a_at), ("c", c, (m, n), c_at)] {
        if at.row_stride < cols || at.offset + (rows - 1) * at.row_stride + cols > t.len() {
            return Err(PupilError::shape(
                OP,
                format!(
                    "{what}: {rows}x{cols} at stride {} offset {} runs past its {} elements",
                    at.row_stride,
                    at.offset,
                    t.len()
                ),
            ));
        }
    }
    expect_len(OP, "b", b, k * n)?;
    if !alpha.is_finite() {
        return Err(PupilError::arg(OP, format!("alpha {alpha} is not finite")));
    }
    let p = Params {
        m: to_u32(OP, m)?,
        n: to_u32(OP, n)?,
        k: to_u32(OP, k)?,
        accumulate: accumulate as u32,
        alpha,
        lda: to_u32(OP, a_at.row_stride)?,
        a_offset: to_u32(OP, a_at.offset)?,
        ldc: to_u32(OP, c_at.row_stride)?,
        c_offset: to_u32(OP, c_at.offset)?,
        _pad: [0; 3],
    };
    let tiles = to_u32(OP, m.div_ceil(16) * n.div_ceil(16))?;
    let grid = crate::gpu::grid_for(bt.context(), tiles);
    bt.dispatch(&key(layout, dt, b_f32, c_f32), bytemuck::bytes_of(&p), &[a, b, c], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for layout in DenseLayout::ALL {
        v.push(key(layout, DType::F32, false, false));
        for b_f32 in [false, true] {
            for c_f32 in [false, true] {
                v.push(key(layout, DType::F16, b_f32, c_f32));
            }
        }
    }
    v
}
