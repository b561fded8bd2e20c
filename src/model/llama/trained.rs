//! The trainable tensors of a [`Trainer`](super::train::Trainer): a [`Param`] (weights,
//! gradient, AdamW moments), a fully trained layer's f32 copies of its weights
//! ([`DenseLayer`], dequantized on the GPU), and the attention output gates.

use crate::error::Result;
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::matmul::matmul_transposed_forward;
use crate::ops::QuantWeight;

/// A trainable f32 tensor: weights, gradient, AdamW moments.
pub struct Param {
    pub w: Tensor,
    pub g: Tensor,
    pub(super) m: Tensor,
    pub(super) v: Tensor,
}

impl Param {
    pub(super) fn new(ctx: &GpuContext, w: Tensor) -> Result<Param> {
        let z = || Tensor::from_f32(ctx, &vec![0.0; w.len()], w.shape(), DType::F32);
        Ok(Param { g: z()?, m: z()?, v: z()?, w })
    }
}

/// A fully trained layer (`last_layers`): f32 copies of every weight of the block, dequantized
/// from the model's (Q|K and gate|up fused as the model has them; biases when it has them).
pub struct DenseLayer {
    pub attn_norm: Param,
    pub qk: Param,
    pub qk_bias: Option<Param>,
    /// QK-norm weights (qwen3), per head dimension.
    pub qk_norm: Option<(Param, Param)>,
    pub v: Param,
    pub v_bias: Option<Param>,
    pub o: Param,
    pub ffn_norm: Param,
    pub gate_up: Param,
    pub down: Param,
    /// Post-attention and post-MLP norms (gemma3).
    pub post_norms: Option<(Param, Param)>,
    /// The norm weights hold Gemma's `w` of `x̂·(1 + w)` (the file stores `1 + w`).
    pub norms_one_plus: bool,
    /// Q's rows in `qk`.
    pub(super) q_rows: usize,
}

impl DenseLayer {
    /// Every parameter, in a fixed order (for the optimizer and the tests).
    pub fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut out = vec![("attn_norm", &self.attn_norm), ("qk", &self.qk)];
        out.extend(self.qk_bias.as_ref().map(|p| ("qk_bias", p)));
        if let Some((q, k)) = &self.qk_norm {
            out.extend([("q_norm", q), ("k_norm", k)]);
        }
        out.push(("v", &self.v));
        out.extend(self.v_bias.as_ref().map(|p| ("v_bias", p)));
        out.push(("o", &self.o));
        out.extend(self.post_norms.as_ref().map(|p| ("attn_post_norm", &p.0)));
        out.extend([("ffn_norm", &self.ffn_norm), ("gate_up", &self.gate_up), ("down", &self.down)]);
        out.extend(self.post_norms.as_ref().map(|p| ("ffn_post_norm", &p.1)));
        out
    }

    /// A projection's weight and its gradient (Q and K apart: row blocks of the fused Q|K),
    /// and its bias.
    pub(super) fn proj(&self, which: Proj) -> Result<(Tensor, Tensor, Option<&Param>)> {
        let whole = |p: &Param| (p.w.clone(), p.g.clone());
        let ((w, g), bias) = match which {
            Proj::Qk => (whole(&self.qk), self.qk_bias.as_ref()),
            Proj::Q | Proj::K => {
                let cols = self.qk.w.shape()[1];
                let q_rows = self.q_rows;
                let (at, rows) =
                    if which == Proj::Q { (0, q_rows) } else { (q_rows * cols, self.qk.w.shape()[0] - q_rows) };
                ((self.qk.w.view(at, &[rows, cols])?, self.qk.g.view(at, &[rows, cols])?), None)
            }
            Proj::V => (whole(&self.v), self.v_bias.as_ref()),
            Proj::O => (whole(&self.o), None),
            Proj::GateUp => (whole(&self.gate_up), None),
            Proj::Down => (whole(&self.down), None),
        };
        Ok((w, g, bias))
    }
}

/// A trainable output gate of one layer's attention (Qiu et al. 2025, "Gated Attention"): the
/// attention output `o` becomes `o ⊙ σ(xn·Wᵀ + b)` elementwise before `attn_output`, with `xn`
/// the layer's normed input; W `[q width, hidden]`, b `[q width]`.
pub struct AttentionGate {
    pub w: Param,
    pub b: Param,
}

/// The gates' work buffers: logits, gated output, and the two gradients.
pub(super) struct GateWork {
    pub(super) logits: Tensor,
    pub(super) gated: Tensor,
    pub(super) dlogits: Tensor,
    pub(super) d_ungated: Tensor,
}

/// The projections of a block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Proj {
    Qk,
    /// Q and K apart (QK-norm models, or two formats): frozen only.
    Q,
    K,
    V,
    O,
    GateUp,
    Down,
}

/// GGUF weights stacked by rows as one f32 `[Σ rows, cols]` on the GPU: each the transposed
/// product of an identity with it (`dX = I·W`, exact: one product by 1 and sums of zeros per
/// element) into its row block.
pub(super) fn dequantized(ctx: &GpuContext, ws: &[&QuantWeight]) -> Result<Tensor> {
    let (rows, cols) = (ws.iter().map(|w| w.rows).sum::<usize>(), ws[0].cols);
    let out = Tensor::empty(ctx, &[rows, cols], DType::F32)?;
    let mut at = 0;
    for w in ws {
        let mut eye = vec![0.0f32; w.rows * w.rows];
        for i in 0..w.rows {
            eye[i * w.rows + i] = 1.0;
        }
        let eye = Tensor::from_f32(ctx, &eye, &[w.rows, w.rows], DType::F32)?;
        let mut b = Batch::new(ctx);
        matmul_transposed_forward(&mut b, &eye, w, &out.view(at, &[w.rows, cols])?, false)?;
        b.submit();
        at += w.rows * cols;
    }
    Ok(out)
}

/// `t − 1` (a Gemma norm weight as its checkpoint parameter).
pub(super) fn minus_one(ctx: &GpuContext, t: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(ctx, t.shape(), DType::F32)?;
    let ones = Tensor::from_f32(ctx, &vec![-1.0; t.len()], t.shape(), DType::F32)?;
    let mut b = Batch::new(ctx);
    crate::ops::add::add_forward(&mut b, t, &ones, &out)?;
    b.submit();
    Ok(out)
}

/// A copy of a small f32 tensor (norm weights, biases).
pub(super) fn copied(ctx: &GpuContext, t: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(ctx, t.shape(), DType::F32)?;
    let mut b = Batch::new(ctx);
    b.copy(t, &out)?;
    b.submit();
    Ok(out)
}
