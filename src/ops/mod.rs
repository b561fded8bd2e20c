//! One Rust op per kernel family. Each op checks shapes and dtypes, picks the kernel variant
//! (f16 or f32 storage, subgroup or shared-memory reductions, workgroup size) and records a
//! dispatch into a [`Batch`]. Ops never wait on the GPU.
//!
//! Names pair up across the tree: `shaders/rms_norm.wgsl` ↔ `ops/rms_norm.rs`
//! (`rms_norm_forward`) ↔ `reference/rms_norm.rs` ↔ `selftest/rms_norm.rs`. Backward passes
//! sit beside their forwards as `*_backward` (in the same WGSL file, their own variant).

pub mod activation;
pub mod add;
pub mod argmax;
pub mod attention;
pub mod attention_backward;
pub mod bench;
pub mod cross_entropy;
pub mod distill_loss;
pub mod dropout;
pub mod embedding;
pub mod gate;
pub mod hidden_mse;
pub mod matmul;
pub mod matmul_dense;
pub mod optim;
pub mod qweight;
pub mod rms_norm;
pub mod rope;
pub mod sampling;
pub mod softmax;
pub mod topk;

use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, KernelKey, Tensor};

pub use activation::Activation;
pub use qweight::QuantWeight;
pub use rms_norm::NormWeight;
pub use rope::{RopeConfig, RopeLayout, RopeTable};

/// Workgroup size of row kernels and elementwise kernels.
pub(crate) const WG: u32 = 256;

/// The common float dtype of `tensors` (all must agree), checked against the device.
pub(crate) fn float_dtype(ctx: &GpuContext, op: &'static str, tensors: &[&Tensor]) -> Result<DType> {
    let dt = tensors[0].dtype();
    for t in tensors {
        if t.dtype() != dt || !dt.is_float() {
            return Err(PupilError::dtype(
                op,
                format!("expected matching f32 or f16 tensors, got {} and {}", dt.name(), t.dtype().name()),
            ));
        }
    }
    if dt == DType::F16 && !ctx.caps.f16 {
        return Err(PupilError::MissingFeature("shader-f16"));
    }
    Ok(dt)
}

pub(crate) fn expect_dtype(op: &'static str, what: &str, t: &Tensor, dt: DType) -> Result<()> {
    if t.dtype() != dt {
        return Err(PupilError::dtype(op, format!("{what} must be {}, got {}", dt.name(), t.dtype().name())));
    }
    Ok(())
}

pub(crate) fn expect_len(op: &'static str, what: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(PupilError::shape(
            op,
            format!("{what} has {} elements ({:?}), expected {len}", t.len(), t.shape()),
        ));
    }
    Ok(())
}

/// Innermost dimension of a tensor (its row width) and the number of rows.
pub(crate) fn rows_and_width(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    let width = *t.shape().last().ok_or_else(|| PupilError::shape(op, "scalar tensor"))?;
    if width == 0 || t.is_empty() {
        return Err(PupilError::shape(op, format!("empty tensor {:?}", t.shape())));
    }
    Ok((t.len() / width, width))
}

/// Element counts go into u32 kernel parameters.
pub(crate) fn to_u32(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| PupilError::shape(op, format!("{n} elements exceed u32 indexing")))
}

/// The variant key for `shader::entry` on this device: storage dtype, reductions (only for
/// kernels that reduce) and workgroup size.
pub(crate) fn kernel(
    ctx: &GpuContext,
    shader: &'static str,
    entry: &'static str,
    dtype: DType,
    reduces: bool,
    wg: u32,
) -> KernelKey {
    KernelKey::new(shader, entry)
        .flag("F16", dtype == DType::F16)
        .flag("SUBGROUPS", reduces && ctx.caps.subgroups)
        .define("WG", wg)
}

/// Every (F16, SUBGROUPS) combination of a base key: the variant lists below are built from it.
pub(crate) fn dtype_and_reduction_variants(base: KernelKey, reduces: bool) -> Vec<KernelKey> {
    let mut out = Vec::new();
    for f16 in [false, true] {
        for sg in if reduces { &[false, true][..] } else { &[false][..] } {
            out.push(base.clone().flag("F16", f16).flag("SUBGROUPS", *sg));
        }
    }
    out
}

/// Every kernel variant any op can dispatch: validated by naga in the native tests and
/// compiled by Tint in the browser tests.
pub fn all_variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    v.extend(rms_norm::variants());
    v.extend(rope::variants());
    v.extend(activation::variants());
    v.extend(add::variants());
    v.extend(softmax::variants());
    v.extend(embedding::variants());
    v.extend(matmul::variants());
    v.extend(bench::variants());
    v.extend(argmax::variants());
    v.extend(topk::variants());
    v.extend(attention::variants());
    v.extend(gate::variants());
    v.extend(sampling::variants());
    v.extend(cross_entropy::variants());
    v.extend(optim::variants());
    v.extend(matmul_dense::variants());
    v.extend(attention_backward::variants());
    v.extend(dropout::variants());
    v.extend(distill_loss::variants());
    v.extend(hidden_mse::variants());
    v
}

/// Dispatch over rows: one workgroup per row.
pub(crate) fn row_grid(b: &Batch, rows: usize) -> Result<[u32; 3]> {
    Ok(crate::gpu::grid_for(b.context(), to_u32("grid", rows)?))
}

/// Dispatch over elements: one invocation per element, WG per workgroup.
pub(crate) fn elem_grid(b: &Batch, n: usize) -> Result<[u32; 3]> {
    Ok(crate::gpu::grid_for(b.context(), to_u32("grid", n.div_ceil(WG as usize))?))
}
