//! Embedding gather: from an f32/f16 tensor (`embedding_forward`, kernel
//! `shaders/embedding.wgsl`) or from a repacked GGUF table of any format, split across
//! bindings if large (`embedding_quant_forward`, kernel `shaders/embedding_quant.wgsl`).
//! Reference: `reference::embedding` (over the dequantized table for the quantized form).

use bytemuck::{Pod, Zeroable};

use super::qweight::{format_define, has_scales, QuantWeight};
use super::{dtype_and_reduction_variants, elem_grid, expect_dtype, expect_len, float_dtype, kernel, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};
use crate::quant::QuantType;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_ids: u32,
    dim: u32,
    vocab: u32,
}

/// `y[i] = table[ids[i]]`; `table` is `[vocab, dim]`, `ids` u32 `[n]`, `y` `[n, dim]`.
pub fn embedding_forward(b: &mut Batch, ids: &Tensor, table: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "embedding_forward";
    let dt = float_dtype(b.context(), OP, &[table, y])?;
    expect_dtype(OP, "ids", ids, DType::U32)?;
    let &[vocab, dim] = table.shape() else {
        return Err(PupilError::shape(OP, format!("table must be [vocab, dim], got {:?}", table.shape())));
    };
    expect_len(OP, "output", y, ids.len() * dim)?;
    if ids.is_empty() || dim == 0 {
        return Err(PupilError::shape(OP, "no ids or zero-width table"));
    }
    let key = kernel(b.context(), "embedding", "embedding_forward", dt, false, WG);
    let p = Params { n_ids: to_u32(OP, ids.len())?, dim: to_u32(OP, dim)?, vocab: to_u32(OP, vocab)? };
    let grid = elem_grid(b, ids.len() * dim)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[ids, table, y], grid)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct QuantParams {
    n_ids: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
    vocab: u32,
    scale: f32,
}

/// `y[i] = table[ids[i]]` for a quantized `[vocab, dim]` table; one dispatch per table part.
pub fn embedding_quant_forward(b: &mut Batch, ids: &Tensor, table: &QuantWeight, y: &Tensor) -> Result<()> {
    embedding_quant_scaled_forward(b, ids, table, 1.0, y)
}

/// `y[i] = scale · table[ids[i]]` (Gemma multiplies the embedding by √hidden): the product is
/// taken in f32 before the store, so f32 results equal Hugging Face's `embed(ids) * scale`.
pub fn embedding_quant_scaled_forward(
    b: &mut Batch,
    ids: &Tensor,
    table: &QuantWeight,
    scale: f32,
    y: &Tensor,
) -> Result<()> {
    const OP: &str = "embedding_quant_forward";
    if !scale.is_finite() {
        return Err(PupilError::arg(OP, format!("scale must be finite, got {scale}")));
    }
    let dt = float_dtype(b.context(), OP, &[y])?;
    expect_dtype(OP, "ids", ids, DType::U32)?;
    expect_len(OP, "output", y, ids.len() * table.cols)?;
    if ids.is_empty() {
        return Err(PupilError::shape(OP, "no ids"));
    }
    let key = kernel(b.context(), "embedding_quant", "embedding_quant_forward", dt, false, WG)
        .flag(format_define(table.ty), true)
        .flag("HAS_SCALES", has_scales(table.ty));
    let grid = elem_grid(b, ids.len() * table.cols / 8)?;
    for part in &table.parts {
        let p = QuantParams {
            n_ids: to_u32(OP, ids.len())?,
            dim: to_u32(OP, table.cols)?,
            row_start: to_u32(OP, part.row_start)?,
            rows: to_u32(OP, part.rows)?,
            vocab: to_u32(OP, table.rows)?,
            scale,
        };
        let mut tensors = vec![y, ids, &part.q];
        tensors.extend(part.s.as_ref());
        b.dispatch(&key, bytemuck::bytes_of(&p), &tensors, grid)?;
    }
    Ok(())
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = dtype_and_reduction_variants(KernelKey::new("embedding", "embedding_forward").define("WG", WG), false);
    for ty in QuantType::ALL {
        let base = KernelKey::new("embedding_quant", "embedding_quant_forward")
            .define("WG", WG)
            .flag(format_define(ty), true)
            .flag("HAS_SCALES", has_scales(ty));
        v.extend(dtype_and_reduction_variants(base, false));
    }
    v
}
