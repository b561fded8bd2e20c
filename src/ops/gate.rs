//! Sigmoid gates for gated attention: the output gate `Y' = Y ⊙ σ(X·W_g)` and the query gate
//! `q ← q ⊙ σ(W·m_t)` with `m_t` the causal running mean of hidden states.
//! Kernels: `shaders/attention_gate.wgsl` (in-place gate), `shaders/running_mean.wgsl`.
//! Reference: `reference::gate`.
//!
//! - **Gate logits** come from a matmul (the model's job: `matmul_forward` with W_g, or the
//!   Qwen3-Next q_proj that packs each head's gate beside its query). [`GateInput`] says where
//!   they lie: one per element of `[tokens, heads, head_dim]` ([`GateMode::Elementwise`]) or
//!   one per head ([`GateMode::Headwise`]), read at `t·token_stride + h·head_stride + offset
//!   (+ d)`, so a packed projection row needs no copy.
//! - **Output gate**: attention fuses it into its epilogue (`AttentionInputs::gate`); this
//!   module's [`gate_apply_forward`] is the unfused form (and the fallback where a prefill
//!   variant has no storage binding left).
//! - **Query gate**: [`running_mean_forward`] (a prefill chunk of one sequence) and
//!   [`running_mean_decode_forward`] (one token per sequence, the decode step's `seqs`) give
//!   `m_t` over positions ≤ t only; the sum carries across calls in a [`RunningMean`] state
//!   (Kahan-compensated f32 per sequence and dim), so chunked prefill and decode equal one pass.
//!   A token at position 0 restarts the sum. Then `g = W·m_t` (matmul) and
//!   `gate_apply_forward(q, g)`.
//! - **Near-pass-through init** for a new trainable gate: [`gate_init_near_pass_through`]
//!   gives W small (uniform ±scale/√in) and b = +5, so σ(W·x + b) ≈ σ(5) = 0.9933 ± a little:
//!   the gated model starts within 0.7 % of the ungated one and the gate's gradient
//!   σ'(5) ≈ 0.0066 is small but not vanishing.

use bytemuck::{Pod, Zeroable};

use super::{dtype_and_reduction_variants, elem_grid, expect_dtype, expect_len, float_dtype, kernel, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, KernelKey, Tensor};
use crate::rng::SplitMix64;

/// One gate logit per element or per head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    Elementwise,
    Headwise,
}

/// Where the gate logits of `[tokens, heads, head_dim]` values lie in `logits` (same float
/// dtype as the gated tensor).
#[derive(Clone, Copy, Debug)]
pub struct GateInput<'a> {
    pub logits: &'a Tensor,
    pub mode: GateMode,
    /// Elements between consecutive tokens.
    pub token_stride: usize,
    /// Elements between consecutive heads of one token.
    pub head_stride: usize,
    /// Element of token 0, head 0.
    pub offset: usize,
}

impl<'a> GateInput<'a> {
    /// Contiguous `[tokens, heads, head_dim]` (elementwise) or `[tokens, heads]` (headwise).
    pub fn contiguous(logits: &'a Tensor, mode: GateMode, heads: usize, head_dim: usize) -> Self {
        let per_head = if mode == GateMode::Elementwise { head_dim } else { 1 };
        GateInput { logits, mode, token_stride: heads * per_head, head_stride: per_head, offset: 0 }
    }

    /// Qwen3-Next's q_proj output `[tokens, heads, 2·head_dim]`: each head's query, then its
    /// elementwise gate.
    pub fn packed_after_query(logits: &'a Tensor, heads: usize, head_dim: usize) -> Self {
        GateInput {
            logits,
            mode: GateMode::Elementwise,
            token_stride: heads * 2 * head_dim,
            head_stride: 2 * head_dim,
            offset: head_dim,
        }
    }

    /// Check dtype and that every read stays inside `logits`.
    pub(crate) fn check(
        &self,
        op: &'static str,
        dt: DType,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        expect_dtype(op, "gate", self.logits, dt)?;
        let per = if self.mode == GateMode::Elementwise { head_dim } else { 1 };
        let last = self.offset + (tokens.max(1) - 1) * self.token_stride + (heads.max(1) - 1) * self.head_stride + per;
        if last > self.logits.len() {
            return Err(PupilError::shape(
                op,
                format!("gate layout reads up to element {last} of a gate tensor of {}", self.logits.len()),
            ));
        }
        for n in [self.token_stride, self.head_stride, self.offset, last] {
            to_u32(op, n)?;
        }
        Ok(())
    }

    /// (token stride, head stride, offset, headwise) for kernel parameters.
    pub(crate) fn params(&self) -> [u32; 4] {
        [
            self.token_stride as u32,
            self.head_stride as u32,
            self.offset as u32,
            (self.mode == GateMode::Headwise) as u32,
        ]
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GateParams {
    n: u32,
    heads: u32,
    head_dim: u32,
    token_stride: u32,
    head_stride: u32,
    offset: u32,
    headwise: u32,
}

/// `x ← x ⊙ σ(gate)` in place, `x` `[tokens, heads, head_dim]`.
pub fn gate_apply_forward(b: &mut Batch, x: &Tensor, gate: &GateInput) -> Result<()> {
    const OP: &str = "gate_apply_forward";
    let dt = float_dtype(b.context(), OP, &[x])?;
    let &[tokens, heads, head_dim] = x.shape() else {
        return Err(PupilError::shape(OP, format!("x is {:?}, expected [tokens, heads, head_dim]", x.shape())));
    };
    if x.is_empty() {
        return Err(PupilError::shape(OP, "empty x"));
    }
    gate.check(OP, dt, tokens, heads, head_dim)?;
    if std::ptr::eq(gate.logits.buffer(), x.buffer()) {
        return Err(PupilError::arg(OP, "the gate shares a buffer with x"));
    }
    let [token_stride, head_stride, offset, headwise] = gate.params();
    let p = GateParams {
        n: to_u32(OP, x.len())?,
        heads: heads as u32,
        head_dim: head_dim as u32,
        token_stride,
        head_stride,
        offset,
        headwise,
    };
    let key = kernel(b.context(), "attention_gate", "gate_apply", dt, false, WG);
    let grid = elem_grid(b, x.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[gate.logits, x], grid)
}

/// Per-sequence running sums of hidden states for [`running_mean_forward`]: f32
/// `[n_seqs, dim, 2]` (Kahan sum and compensation).
pub struct RunningMean {
    pub n_seqs: usize,
    pub dim: usize,
    pub state: Tensor,
}

impl RunningMean {
    pub fn new(ctx: &GpuContext, n_seqs: usize, dim: usize) -> Result<RunningMean> {
        const OP: &str = "RunningMean::new";
        if n_seqs == 0 || dim == 0 {
            return Err(PupilError::shape(OP, "sequences and dim must be positive"));
        }
        to_u32(OP, n_seqs * dim * 2)?;
        let state = Tensor::from_f32(ctx, &vec![0.0; n_seqs * dim * 2], &[n_seqs, dim, 2], DType::F32)?;
        Ok(RunningMean { n_seqs, dim, state })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MeanParams {
    tokens: u32,
    dim: u32,
    n_seqs: u32,
    seq: u32,
    pos0: u32,
    t_begin: u32,
    t_end: u32,
}

/// Tokens per dispatch of a chunk (each invocation walks them in order).
const MEAN_TOKENS_PER_DISPATCH: usize = 4096;
const WG_MEAN: u32 = 64;

fn mean_checks(op: &'static str, b: &Batch, st: &RunningMean, x: &Tensor, m: &Tensor) -> Result<(DType, usize)> {
    let dt = float_dtype(b.context(), op, &[x, m])?;
    let tokens = x.len() / st.dim;
    if tokens == 0 || x.len() != tokens * st.dim {
        return Err(PupilError::shape(op, format!("x is {:?}, expected [tokens > 0, {}]", x.shape(), st.dim)));
    }
    expect_len(op, "m", m, x.len())?;
    if std::ptr::eq(m.buffer(), x.buffer()) || std::ptr::eq(m.buffer(), st.state.buffer()) {
        return Err(PupilError::arg(op, "m shares a buffer with x or the state"));
    }
    Ok((dt, tokens))
}

/// `m[t] = mean(x of positions 0..=pos0+t)` for a chunk `x` `[tokens, dim]` of sequence `seq`
/// at positions `pos0..`, continuing the sums of earlier calls (chunk at `pos0 = 0`: fresh).
pub fn running_mean_forward(
    b: &mut Batch,
    state: &RunningMean,
    seq: usize,
    pos0: usize,
    x: &Tensor,
    m: &Tensor,
) -> Result<()> {
    const OP: &str = "running_mean_forward";
    let (dt, tokens) = mean_checks(OP, b, state, x, m)?;
    if seq >= state.n_seqs {
        return Err(PupilError::arg(OP, format!("sequence {seq} of a state of {}", state.n_seqs)));
    }
    to_u32(OP, pos0 + tokens)?;
    let key = kernel(b.context(), "running_mean", "running_mean", dt, false, WG_MEAN);
    let grid = crate::gpu::grid_for(b.context(), to_u32(OP, state.dim.div_ceil(WG_MEAN as usize))?);
    let mut t0 = 0;
    while t0 < tokens {
        let t1 = (t0 + MEAN_TOKENS_PER_DISPATCH).min(tokens);
        let p = MeanParams {
            tokens: tokens as u32,
            dim: state.dim as u32,
            n_seqs: state.n_seqs as u32,
            seq: seq as u32,
            pos0: pos0 as u32,
            t_begin: t0 as u32,
            t_end: t1 as u32,
        };
        b.dispatch(&key, bytemuck::bytes_of(&p), &[x, &state.state, m], grid)?;
        t0 = t1;
    }
    Ok(())
}

/// One token per batch entry: `x`, `m` `[batch, dim]`, `seqs` u32 `[batch, 2]` (sequence,
/// position) as decode takes it. Entries must name distinct sequences; a sequence past the
/// state gets the token's own value and updates nothing.
pub fn running_mean_decode_forward(
    b: &mut Batch,
    state: &RunningMean,
    seqs: &Tensor,
    x: &Tensor,
    m: &Tensor,
) -> Result<()> {
    const OP: &str = "running_mean_decode_forward";
    let (dt, batch) = mean_checks(OP, b, state, x, m)?;
    expect_dtype(OP, "seqs", seqs, DType::U32)?;
    expect_len(OP, "seqs", seqs, 2 * batch)?;
    let p = MeanParams {
        tokens: batch as u32,
        dim: state.dim as u32,
        n_seqs: state.n_seqs as u32,
        seq: 0,
        pos0: 0,
        t_begin: 0,
        t_end: 0,
    };
    let key = kernel(b.context(), "running_mean", "running_mean", dt, false, WG_MEAN).flag("INDEXED", true);
    let grid = crate::gpu::grid_for(b.context(), to_u32(OP, (batch * state.dim).div_ceil(WG_MEAN as usize))?);
    b.dispatch(&key, bytemuck::bytes_of(&p), &[x, &state.state, m, seqs], grid)
}

/// Default bias of a new gate: σ(5) = 0.9933.
pub const GATE_INIT_BIAS: f32 = 5.0;
/// Default weight scale of a new gate: weights uniform in ±scale/√in_features.
pub const GATE_INIT_WEIGHT_SCALE: f32 = 0.01;

/// A new trainable gate projection `[out_features, in_features]` (row-major, as the matmul
/// takes it) and its bias, initialised near pass-through: σ(W·x + b) ≈ σ(bias) ≈ 1 for any
/// reasonably scaled x (|W·x| ≤ weight_scale·‖x‖/√in ≪ bias). See the module doc.
pub fn gate_init_near_pass_through(
    out_features: usize,
    in_features: usize,
    bias: f32,
    weight_scale: f32,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let a = weight_scale / (in_features.max(1) as f32).sqrt();
    let w = (0..out_features * in_features).map(|_| rng.uniform(-a, a)).collect();
    (w, vec![bias; out_features])
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BackParams {
    n: u32,
    _pad: [u32; 3],
}

/// The backward pass of an elementwise gate `y = a ⊙ σ(g)` (contiguous `g`, same shape as `a`):
/// `da = dy ⊙ σ(g)`, `dg = dy ⊙ a ⊙ σ(g)(1 − σ(g))`. (`a` is the ungated value the gated one
/// was made from.)
pub fn gate_backward(b: &mut Batch, a: &Tensor, g: &Tensor, dy: &Tensor, da: &Tensor, dg: &Tensor) -> Result<()> {
    const OP: &str = "gate_backward";
    let dt = float_dtype(b.context(), OP, &[a, g, dy, da, dg])?;
    if a.is_empty() {
        return Err(PupilError::shape(OP, "empty a"));
    }
    for (what, t) in [("g", g), ("dy", dy), ("da", da), ("dg", dg)] {
        expect_len(OP, what, t, a.len())?;
    }
    let p = BackParams { n: to_u32(OP, a.len())?, _pad: [0; 3] };
    let key = kernel(b.context(), "attention_gate", "gate_backward", dt, false, WG).flag("BACKWARD", true);
    let grid = elem_grid(b, a.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[a, g, dy, da, dg], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = dtype_and_reduction_variants(KernelKey::new("attention_gate", "gate_apply").define("WG", WG), false);
    v.extend(dtype_and_reduction_variants(
        KernelKey::new("attention_gate", "gate_backward").define("WG", WG).flag("BACKWARD", true),
        false,
    ));
    for indexed in [false, true] {
        v.extend(dtype_and_reduction_variants(
            KernelKey::new("running_mean", "running_mean").define("WG", WG_MEAN).flag("INDEXED", indexed),
            false,
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_pass_through_init_keeps_the_gate_near_one() {
        let (w, b) = gate_init_near_pass_through(64, 256, GATE_INIT_BIAS, GATE_INIT_WEIGHT_SCALE, 7);
        assert_eq!((w.len(), b.len()), (64 * 256, 64));
        let sigma = |z: f32| 1.0 / (1.0 + (-z).exp());
        // Hidden states with entries up to ±4 (RMS-normalised rows are ~±1).
        let mut rng = SplitMix64::new(9);
        let x: Vec<f32> = (0..256).map(|_| rng.uniform(-4.0, 4.0)).collect();
        for (row, bias) in w.chunks(256).zip(&b) {
            let z: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() + bias;
            assert!(sigma(z) > 0.99 && sigma(z) < 1.0, "σ = {}", sigma(z));
        }
    }
}
