//! Ceiling kernels for benchmark binaries: a vec4 copy (bandwidth) and an FMA chain
//! (arithmetic peak). Kernel: `shaders/bench.wgsl`. Not used by models.

use bytemuck::{Pod, Zeroable};

use super::{expect_len, to_u32};
use crate::error::{PupilError, Result};
use crate::gpu::{grid_for, Batch, DType, KernelKey, Tensor};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    iters: u32,
}

/// Copy `x` to `y` (u32 tensors of the same length, a multiple of 4).
pub fn copy_forward(b: &mut Batch, x: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "copy_forward";
    expect_len(OP, "output", y, x.len())?;
    if x.dtype() != DType::U32 || y.dtype() != DType::U32 || !x.len().is_multiple_of(4) {
        return Err(PupilError::arg(OP, "u32 tensors with a multiple of 4 elements"));
    }
    let n = to_u32(OP, x.len() / 4)?;
    let grid = grid_for(b.context(), n.div_ceil(WG));
    b.dispatch(
        &KernelKey::new("bench", "bench_forward").define("WG", WG),
        bytemuck::bytes_of(&Params { n, iters: 0 }),
        &[y, x],
        grid,
    )
}

/// `invocations` lanes each run `iters` x 16 FMAs (4 chains of vec4) into `y` (u32, 4 per lane).
/// Flops = 2 x 16 x iters x invocations.
pub fn fma_forward(b: &mut Batch, y: &Tensor, iters: u32) -> Result<()> {
    const OP: &str = "fma_forward";
    if y.dtype() != DType::U32 || !y.len().is_multiple_of(4) {
        return Err(PupilError::arg(OP, "a u32 output with a multiple of 4 elements"));
    }
    let n = to_u32(OP, y.len() / 4)?;
    let grid = grid_for(b.context(), n.div_ceil(WG));
    let key = KernelKey::new("bench", "bench_forward").define("WG", WG).flag("FMA", true);
    b.dispatch(&key, bytemuck::bytes_of(&Params { n, iters }), &[y], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let base = KernelKey::new("bench", "bench_forward").define("WG", WG);
    vec![base.clone(), base.flag("FMA", true)]
}
