//! Embedding gather from an f32/f16 table. Kernel: `shaders/embedding.wgsl`.
//! Reference: `reference::embedding`. (Quantized tables and tables split across bindings
//! come with the quantized formats.)

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, elem_grid, expect_dtype, expect_len, float_dtype, kernel, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

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

pub fn variants() -> Vec<KernelKey> {
    dtype_and_reduction_variants(KernelKey::new("embedding", "embedding_forward").define("WG", WG), false)
}
