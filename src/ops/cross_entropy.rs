//! Softmax cross-entropy with its gradient, fused and in place: the LM head's loss for
//! training. The caller feeds `[rows, vocab]` blocks of logits (a chunk of the batch's tokens,
//! so 4 × 256 × 49152 f32 logits never need one 192 MiB binding) and gets each row's loss and
//! the gradient written over the logits, ready for the head's transposed matmul.
//! Kernel: `shaders/cross_entropy.wgsl`. Reference: `reference::cross_entropy`.

use bytemuck::{Pod, Zeroable};

use super::{
    dtype_and_reduction_variants, expect_dtype, expect_len, float_dtype, kernel, row_grid, rows_and_width, to_u32, WG,
};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

/// A target that counts for nothing (loss 0, gradient 0): padding, masked prompt tokens.
pub const IGNORE_TARGET: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    grad_scale: f32,
    _pad: u32,
}

/// `loss[r] = logsumexp(logits[r]) − logits[r, targets[r]]` (f32 `[rows]`; 0 for
/// [`IGNORE_TARGET`]) and, in place, `logits[r] ← (softmax(logits[r]) − onehot) · grad_scale`.
/// Targets must be below the vocabulary or [`IGNORE_TARGET`] (checked by the caller that wrote
/// them: the kernel treats any other id as ignored rather than read out of bounds).
pub fn cross_entropy_forward_backward(
    b: &mut Batch,
    logits: &Tensor,
    targets: &Tensor,
    loss: &Tensor,
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy_forward_backward";
    let dt = float_dtype(b.context(), OP, &[logits])?;
    let (rows, vocab) = rows_and_width(OP, logits)?;
    expect_dtype(OP, "targets", targets, DType::U32)?;
    expect_len(OP, "targets", targets, rows)?;
    expect_dtype(OP, "loss", loss, DType::F32)?;
    expect_len(OP, "loss", loss, rows)?;
    if !grad_scale.is_finite() {
        return Err(PupilError::arg(OP, format!("grad_scale {grad_scale} is not finite")));
    }
    let key = kernel(b.context(), "cross_entropy", "cross_entropy_forward_backward", dt, true, WG);
    let p = Params { rows: to_u32(OP, rows)?, vocab: to_u32(OP, vocab)?, grad_scale, _pad: 0 };
    let grid = row_grid(b, rows)?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[logits, targets, loss], grid)
}

pub fn variants() -> Vec<KernelKey> {
    dtype_and_reduction_variants(
        KernelKey::new("cross_entropy", "cross_entropy_forward_backward").define("WG", WG),
        true,
    )
}
