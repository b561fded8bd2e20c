//! Training a llama-family model's LoRA adapters on the GPU: the forward pass over a packed
//! batch that keeps only each layer's input, and the backward pass that recomputes one layer's
//! forward at a time from it (activation checkpointing per layer: memory for the residual
//! stream of every layer plus one layer's activations), then AdamW. Read top to bottom:
//! [`Trainer::forward_backward`] is the whole step, op by op, each backward the mirror of a
//! forward (llm.c's layout).
//!
//! A batch is documents packed into one row of `tokens` (attention never crosses a document,
//! positions restart at each), with a target per token (the next token, or
//! `IGNORE_TARGET`); the loss is the mean cross-entropy over the counted targets, as
//! transformers computes it with `labels` (`ignore_index`).
//!
//! Supported now: llama, qwen2, qwen3 and gemma3 blocks (biases, QK-norm and post-norm weights
//! frozen unless the layer trains in full; gemma3's sliding windows and per-layer RoPE), f32
//! activations. Gated attention and attention
//! softcaps refuse to train (`Unsupported`).

use super::lora::{dropout_seed, Lora, LoraConfig, LoraPair, LoraTarget};
use super::trained::{copied, dequantized, minus_one, GateWork, Proj};
use super::{Layer, LlamaModel, Stacked};

pub use super::trained::{AttentionGate, DenseLayer, Param};
use distill::Signal;
pub use distill::{HiddenAlignment, TeacherRow, TopK};

mod distill;
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::activation::{gated_activation_fused_backward, gated_activation_fused_forward};
use crate::ops::add::add_inplace;
use crate::ops::attention::{attention_packed_forward, doc_starts, AttentionConfig, GateInput, GateMode};
use crate::ops::attention_backward::{attention_backward, attention_backward_stats, doc_bounds};
use crate::ops::cross_entropy::{cross_entropy_forward_backward, IGNORE_TARGET};
use crate::ops::distill_loss::{distill_loss_forward_backward, distill_topk_forward_backward};
use crate::ops::dropout::dropout_forward;
use crate::ops::gate::{gate_apply_forward, gate_backward};
use crate::ops::matmul::{matmul_forward, matmul_transposed_forward};
use crate::ops::matmul_dense::{matmul_dense_strided, DenseLayout, Strided};
use crate::ops::optim::{adamw_step, grad_sum_squares, sum_squares_slots, AdamW, GradStats};
use crate::ops::rms_norm::{rms_norm_backward, rms_norm_backward_weight, rms_norm_forward};
use crate::ops::rope::{rope_backward, rope_forward, RopeInput};
use crate::ops::{NormWeight, QuantWeight, RopeTable};

/// Rows of logits computed at a time for the loss (a multiple of 64 keeps every row view's
/// byte offset aligned for binding).
const HEAD_ROWS: usize = 64;

/// A block's sizes: hidden, FFN, head size, query and KV heads, Q and K widths.
struct Dims {
    h: usize,
    f: usize,
    hd: usize,
    nh: usize,
    nkv: usize,
    qd: usize,
    kd: usize,
}

impl Dims {
    fn of(c: &crate::model::ModelConfig) -> Dims {
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        Dims { h: c.hidden, f: c.ffn_hidden, hd, nh, nkv, qd: nh * hd, kd: nkv * hd }
    }
}

/// One layer's activations (recomputed in the backward pass) and gradients.
struct Work {
    xn: Tensor,
    rstd: Tensor,
    qk: Tensor,
    /// Q and K apart (`Stacked::Two`): raw Q is `qk`'s first `[tokens, q width]`; raw K, the
    /// QK-normed Q and K, their gradients, and the per-head rstd of the norm's backward.
    split: Option<SplitQk>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    x_mid: Tensor,
    /// Post-norm models (gemma3): the attention's and the MLP's output projections before
    /// their norms, the normed output, and the gradient of a projection's output.
    attn_proj: Tensor,
    mlp_proj: Tensor,
    post_out: Tensor,
    d_post: Tensor,
    xn2: Tensor,
    gu: Tensor,
    h: Tensor,
    /// x·Aᵀ per adapter (LoraTarget::ALL order), `[tokens, rank]`.
    lora_h: Vec<Tensor>,
    dlora_h: Tensor,
    /// An adapter's dropped-out input, and its gradient before the mask (LoRA dropout).
    dropped: Tensor,
    d_dropped: Tensor,
    dx: Tensor,
    dxn: Tensor,
    dqk: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    d_o: Tensor,
    dgu: Tensor,
    dh: Tensor,
    stats: Tensor,
    logits: Tensor,
    loss: Tensor,
    /// Per-token divergence to the teacher (distillation).
    kl: Tensor,
}

/// Work buffers of a block whose Q and K are projected apart (see `Work::split`).
struct SplitQk {
    k_raw: Tensor,
    q_normed: Tensor,
    k_normed: Tensor,
    dq_normed: Tensor,
    dk_normed: Tensor,
    dk_raw: Tensor,
    rstd_heads: Tensor,
}

/// The result of one optimizer step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Mean loss of the batch the gradients came from.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// NaN/Inf gradient values: when non-zero the step was skipped (weights and moments
    /// unchanged) and `applied` is false.
    pub nonfinite: u64,
    pub applied: bool,
}

/// LoRA training of one model: the adapters, their optimizer state and the work buffers for
/// batches of up to `max_tokens` tokens.
pub struct Trainer<'m> {
    model: &'m LlamaModel,
    pub lora: Lora,
    pub max_tokens: usize,
    /// Residual stream entering each layer, and after the last (`n_layers + 1`).
    xs: Vec<Tensor>,
    w: Work,
    ids: Tensor,
    positions: Tensor,
    targets: Tensor,
    doc_start: Tensor,
    /// Context distillation (as a teacher): the row of this trainer's batch each student token
    /// learns from, and those rows' final normed hidden states gathered in student order.
    gather_rows: Tensor,
    gathered: Option<usize>,
    doc_bounds: Tensor,
    partials: Tensor,
    /// `dense[l]`: layer l trains fully (the last `last_layers` layers), else frozen.
    pub dense: Vec<Option<DenseLayer>>,
    /// Ones `[max_tokens, 1]`: biases broadcast over tokens, and their gradients' sums.
    ones: Tensor,
    /// Trainable attention output gates (`with_attention_gates`), one per layer.
    pub gates: Vec<AttentionGate>,
    gate_work: Option<GateWork>,
    /// Optimizer steps applied so far (AdamW's t).
    pub steps: u64,
    last_loss: Option<f64>,
    /// The hard-label cross-entropy of the last pass (see `last_cross_entropy`).
    last_ce: Option<f64>,
    /// The seed given at construction (dropout masks derive from it).
    seed: u64,
    /// Training forward passes run so far, and the one running now while its masks are in use
    /// (None: no dropout, as in evaluation).
    calls: u64,
    dropout_call: Option<u64>,
    /// Hidden-state alignment to a distillation teacher (its per-row loss, any projections).
    align: Option<distill::AlignState>,
    /// An offline teacher's top-k ids and log-probabilities for the batch (u32 and f32
    /// `[max_tokens · k]`, made on first use and when k grows).
    top_k: Option<(usize, Tensor, Tensor)>,
}

/// A pass's gradient weight: finite and positive.
fn check_weight(op: &'static str, weight: f64) -> Result<()> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(PupilError::arg(op, format!("weight must be positive, got {weight}")))
    }
}

impl<'m> Trainer<'m> {
    /// Adapters per `config` on every layer of `model` (seeded init), buffers for `max_tokens`.
    pub fn new(
        ctx: &GpuContext,
        model: &'m LlamaModel,
        config: LoraConfig,
        max_tokens: usize,
        seed: u64,
    ) -> Result<Self> {
        Self::with_last_layers(ctx, model, Some(config), 0, max_tokens, seed)
    }

    /// LoRA adapters per `lora` (if any) and full training of the last `last_layers` layers
    /// (every weight of those blocks, norms and biases included, as f32 copies), buffers for
    /// batches of `max_tokens` tokens.
    pub fn with_last_layers(
        ctx: &GpuContext,
        model: &'m LlamaModel,
        lora: Option<LoraConfig>,
        last_layers: usize,
        max_tokens: usize,
        seed: u64,
    ) -> Result<Self> {
        const OP: &str = "Trainer::new";
        let c = &model.config;
        let unsupported =
            |what: &str| Err(PupilError::Unsupported(format!("training {} models ({what})", c.architecture)));
        if c.output_gate || c.attn_softcap.is_some() {
            return unsupported("gated attention and attention softcaps are not wired into training yet");
        }
        if model.dtype != DType::F32 {
            return Err(PupilError::Unsupported("training with f16 activations (load the model with f32)".into()));
        }
        if model.attn.streaming.is_some() {
            return Err(PupilError::arg(OP, "a streaming model cannot train: load it with the error overflow policy"));
        }
        for (i, l) in model.layers.iter().enumerate() {
            if matches!(l.gate_up, Stacked::Two(..)) {
                return unsupported("gate and up stored in different formats");
            }
            let biased_apart = l.q_bias.is_some() || l.k_bias.is_some();
            if matches!(l.qk, Stacked::Two(..)) && biased_apart && i + last_layers >= c.n_layers {
                return unsupported("full training of layers whose Q and K are apart and biased");
            }
        }
        if max_tokens == 0 || u32::try_from(max_tokens).is_err() {
            return Err(PupilError::arg(OP, format!("max_tokens must be at least 1, got {max_tokens}")));
        }
        let Dims { h, f, hd, nh, nkv, qd, kd } = Dims::of(c);
        let dims = |t: LoraTarget| match t {
            LoraTarget::Q => (h, qd),
            LoraTarget::K | LoraTarget::V => (h, kd),
            LoraTarget::O => (qd, h),
            LoraTarget::Gate | LoraTarget::Up => (h, f),
            LoraTarget::Down => (f, h),
        };
        if last_layers > c.n_layers {
            return Err(PupilError::arg(
                OP,
                format!("more last layers ({last_layers}) than the model has ({})", c.n_layers),
            ));
        }
        let lora = match lora {
            Some(config) => Lora::new(ctx, config, c.n_layers, dims, seed)?,
            None => {
                Lora { config: LoraConfig::new(1, 1.0, vec![]), layers: (0..c.n_layers).map(|_| Vec::new()).collect() }
            }
        };
        let mut dense = Vec::with_capacity(c.n_layers);
        let one_plus = c.architecture == "gemma3";
        for (l, lay) in model.layers.iter().enumerate() {
            if l + last_layers < c.n_layers {
                dense.push(None);
                continue;
            }
            let Stacked::One(gu) = &lay.gate_up else { unreachable!("checked above") };
            let qk = match &lay.qk {
                Stacked::One(qk) => vec![qk],
                Stacked::Two(q, k) => vec![q, k],
            };
            let p = |t: Tensor| Param::new(ctx, t);
            let bias = |t: &Option<Tensor>| t.as_ref().map(|t| p(copied(ctx, t)?)).transpose();
            // Gemma's norms train as w of x̂·(1 + w), as the checkpoint's parameters are.
            let norm = |t: &Tensor| p(if one_plus { minus_one(ctx, t)? } else { copied(ctx, t)? });
            let pair = |t: &Option<(Tensor, Tensor)>| -> Result<Option<(Param, Param)>> {
                match t {
                    Some((a, b)) => Ok(Some((norm(a)?, norm(b)?))),
                    None => Ok(None),
                }
            };
            let (qk_norm, post_norms) = (pair(&lay.qk_norm)?, pair(&lay.post_norms)?);
            dense.push(Some(DenseLayer {
                attn_norm: norm(&lay.attn_norm)?,
                qk: p(dequantized(ctx, &qk)?)?,
                qk_bias: bias(&lay.qk_bias)?,
                qk_norm,
                v: p(dequantized(ctx, &[&lay.v])?)?,
                v_bias: bias(&lay.v_bias)?,
                o: p(dequantized(ctx, &[&lay.o])?)?,
                ffn_norm: norm(&lay.ffn_norm)?,
                gate_up: p(dequantized(ctx, &[gu])?)?,
                down: p(dequantized(ctx, &[&lay.down])?)?,
                post_norms,
                norms_one_plus: one_plus,
                q_rows: c.n_heads * c.head_dim,
            }));
        }
        let t = max_tokens;
        let r = lora.config.rank;
        let dropout = lora.config.dropout > 0.0;
        let e = |shape: &[usize]| Tensor::empty(ctx, shape, DType::F32);
        let w = Work {
            xn: e(&[t, h])?,
            rstd: e(&[t])?,
            qk: e(&[t, qd + kd])?,
            split: if model.layers.iter().any(|l| matches!(l.qk, Stacked::Two(..))) {
                Some(SplitQk {
                    k_raw: e(&[t, kd])?,
                    q_normed: e(&[t, qd])?,
                    k_normed: e(&[t, kd])?,
                    dq_normed: e(&[t, qd])?,
                    dk_normed: e(&[t, kd])?,
                    dk_raw: e(&[t, kd])?,
                    rstd_heads: e(&[t * nh.max(nkv)])?,
                })
            } else {
                None
            },
            q: e(&[t, nh, hd])?,
            k: e(&[t, nkv, hd])?,
            v: e(&[t, nkv, hd])?,
            o: e(&[t, nh, hd])?,
            lse: e(&[t, nh])?,
            x_mid: e(&[t, h])?,
            attn_proj: e(&[if c.post_norms { t * h } else { 1 }])?,
            mlp_proj: e(&[if c.post_norms { t * h } else { 1 }])?,
            post_out: e(&[if c.post_norms { t * h } else { 1 }])?,
            d_post: e(&[if c.post_norms { t * h } else { 1 }])?,
            xn2: e(&[t, h])?,
            gu: e(&[t, 2 * f])?,
            h: e(&[t, f])?,
            lora_h: (0..LoraTarget::ALL.len()).map(|_| e(&[t, r])).collect::<Result<_>>()?,
            dlora_h: e(&[t, r])?,
            dropped: e(&[if dropout { t * h.max(f).max(qd) } else { 1 }])?,
            d_dropped: e(&[if dropout { t * h.max(f).max(qd) } else { 1 }])?,
            dx: e(&[t, h])?,
            dxn: e(&[t, h])?,
            dqk: e(&[t, qd + kd])?,
            dq: e(&[t, nh, hd])?,
            dk: e(&[t, nkv, hd])?,
            dv: e(&[t, nkv, hd])?,
            d_o: e(&[t, qd])?,
            dgu: e(&[t, 2 * f])?,
            dh: e(&[t, f])?,
            stats: attention_backward_stats(ctx, t, nh)?,
            logits: e(&[HEAD_ROWS.min(t), c.vocab_size])?,
            loss: e(&[t])?,
            kl: e(&[t])?,
        };
        let slots = lora
            .pairs()
            .map(|(_, p)| sum_squares_slots(p.a.len()) + sum_squares_slots(p.b.len()))
            .sum::<usize>()
            + dense.iter().flatten().flat_map(|d| d.params()).map(|(_, p)| sum_squares_slots(p.w.len())).sum::<usize>();
        Ok(Trainer {
            model,
            xs: (0..=c.n_layers).map(|_| e(&[t, h])).collect::<Result<_>>()?,
            w,
            ids: Tensor::empty(ctx, &[t], DType::U32)?,
            positions: Tensor::empty(ctx, &[t], DType::U32)?,
            targets: Tensor::empty(ctx, &[t], DType::U32)?,
            doc_start: Tensor::empty(ctx, &[t], DType::U32)?,
            gather_rows: Tensor::empty(ctx, &[t], DType::U32)?,
            gathered: None,
            doc_bounds: Tensor::empty(ctx, &[t, 2], DType::U32)?,
            partials: e(&[slots.max(1), 2])?,
            dense,
            ones: Tensor::from_f32(ctx, &vec![1.0; t], &[t, 1], DType::F32)?,
            gates: Vec::new(),
            gate_work: None,
            lora,
            max_tokens,
            steps: 0,
            last_loss: None,
            last_ce: None,
            seed,
            calls: 0,
            dropout_call: None,
            align: None,
            top_k: None,
        })
    }

    /// Add a trainable output gate to every layer's attention (the model need not have one),
    /// initialised near pass-through (`ops::gate::gate_init_near_pass_through`: small W, b =
    /// `bias`, so σ ≈ σ(bias); 5 gives 0.9933).
    pub fn with_attention_gates(mut self, ctx: &GpuContext, bias: f32, seed: u64) -> Result<Self> {
        let c = &self.model.config;
        let Dims { h, qd, .. } = Dims::of(c);
        let t = self.max_tokens;
        for l in 0..c.n_layers {
            let (w, b) = crate::ops::gate::gate_init_near_pass_through(qd, h, bias, 1.0, seed ^ (l as u64 + 1));
            self.gates.push(AttentionGate {
                w: Param::new(ctx, Tensor::from_f32(ctx, &w, &[qd, h], DType::F32)?)?,
                b: Param::new(ctx, Tensor::from_f32(ctx, &b, &[qd], DType::F32)?)?,
            });
        }
        let e = |shape: &[usize]| Tensor::empty(ctx, shape, DType::F32);
        self.gate_work = Some(GateWork {
            logits: e(&[t, qd])?,
            gated: e(&[t, qd])?,
            dlogits: e(&[t, qd])?,
            d_ungated: e(&[t, qd])?,
        });
        let extra: usize =
            self.gates.iter().map(|g| sum_squares_slots(g.w.w.len()) + sum_squares_slots(g.b.w.len())).sum();
        let slots = self.partials.len() / 2 + extra;
        self.partials = e(&[slots, 2])?;
        Ok(self)
    }

    /// Set layer `l`'s gate from host values: W `[q width, hidden]`, b `[q width]`.
    pub fn set_gate(&self, ctx: &GpuContext, l: usize, w: &[f32], b: &[f32]) -> Result<()> {
        let g =
            self.gates.get(l).ok_or_else(|| PupilError::arg("Trainer::set_gate", format!("no gate on layer {l}")))?;
        if w.len() != g.w.w.len() || b.len() != g.b.w.len() {
            return Err(PupilError::shape(
                "Trainer::set_gate",
                format!("W {} and b {} values, expected {} and {}", w.len(), b.len(), g.w.w.len(), g.b.w.len()),
            ));
        }
        g.w.w.write_f32(ctx, w)?;
        g.b.w.write_f32(ctx, b)
    }

    /// Set adapter weights (layer, target) from host values: A `[rank, in]`, B `[out, rank]`
    /// (tests and resumed runs; B's rows in the file's order, see `lora`).
    pub fn set_adapter(&self, ctx: &GpuContext, layer: usize, target: LoraTarget, a: &[f32], b: &[f32]) -> Result<()> {
        let p = self.lora.get(layer, target).ok_or_else(|| {
            PupilError::arg("Trainer::set_adapter", format!("no {target:?} adapter on layer {layer}"))
        })?;
        if a.len() != p.a.len() || b.len() != p.b.len() {
            return Err(PupilError::shape(
                "Trainer::set_adapter",
                format!("A {} and B {} values, expected {} and {}", a.len(), b.len(), p.a.len(), p.b.len()),
            ));
        }
        p.a.write_f32(ctx, a)?;
        p.b.write_f32(ctx, b)
    }

    /// Write one batch: `ids` packed documents of `doc_lengths` (summing to ids.len()), one
    /// target per token (`IGNORE_TARGET` for none). Returns the number of counted targets.
    fn write_batch(&self, ctx: &GpuContext, ids: &[u32], targets: &[u32], doc_lengths: &[usize]) -> Result<usize> {
        const OP: &str = "Trainer::forward_backward";
        let n = ids.len();
        if n == 0 || n > self.max_tokens {
            return Err(PupilError::arg(OP, format!("1..={} tokens per batch, got {n}", self.max_tokens)));
        }
        if targets.len() != n || doc_lengths.iter().sum::<usize>() != n || doc_lengths.contains(&0) {
            return Err(PupilError::arg(
                OP,
                "one target per token, and document lengths (each ≥ 1) that sum to the tokens",
            ));
        }
        let vocab = self.model.config.vocab_size as u32;
        if let Some(&bad) = ids.iter().chain(targets.iter().filter(|&&t| t != IGNORE_TARGET)).find(|&&t| t >= vocab) {
            return Err(PupilError::arg(OP, format!("token id {bad} outside the vocabulary of {vocab}")));
        }
        if let Some(&long) = doc_lengths.iter().find(|&&l| l > self.model.context) {
            return Err(PupilError::ContextOverflow { needed: long, context: self.model.context });
        }
        let counted = targets.iter().filter(|&&t| t != IGNORE_TARGET).count();
        if counted == 0 {
            return Err(PupilError::arg(OP, "no target counts (all are IGNORE_TARGET)"));
        }
        let positions: Vec<u32> = doc_lengths.iter().flat_map(|&l| 0..l as u32).collect();
        let u = |t: &Tensor, v: &[u32]| t.view(0, &[v.len()])?.write_bytes(ctx, bytemuck::cast_slice(v));
        u(&self.ids, ids)?;
        u(&self.targets, targets)?;
        u(&self.positions, &positions)?;
        u(&self.doc_start, &doc_starts(doc_lengths))?;
        u(&self.doc_bounds, &doc_bounds(doc_lengths))?;
        Ok(counted)
    }

    /// The mean loss of a batch over its counted targets, and the adapters' gradients of it
    /// **added** to what they hold (zero them with [`zero_grads`](Self::zero_grads); [`step`]
    /// does after applying them).
    ///
    /// [`step`]: Self::step
    pub async fn forward_backward(
        &mut self,
        ctx: &GpuContext,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
    ) -> Result<f64> {
        self.forward_backward_weighted(ctx, ids, targets, doc_lengths, 1.0).await
    }

    /// [`forward_backward`](Self::forward_backward) with the batch's gradients scaled by
    /// `weight` (gradient accumulation: micro-batches weighted by their share of the step's
    /// counted targets add up to the gradient of the step's token-mean loss). Returns the
    /// batch's own mean loss, unweighted.
    pub async fn forward_backward_weighted(
        &mut self,
        ctx: &GpuContext,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
        weight: f64,
    ) -> Result<f64> {
        check_weight("Trainer::forward_backward", weight)?;
        let (loss, _) = self.run(ctx, ids, targets, doc_lengths, Some(weight), Signal::Labels).await?;
        self.last_loss = Some(loss);
        Ok(loss)
    }

    /// Block influence (Men et al. 2024, "ShortGPT"): for each layer, 1 − the mean cosine
    /// similarity between the residual stream entering it and leaving it, over the batch's
    /// tokens (the adapters as they are). A layer that barely turns the stream scores near 0 —
    /// the first to drop when pruning the model's depth.
    pub async fn block_influence(&mut self, ctx: &GpuContext, ids: &[u32], doc_lengths: &[usize]) -> Result<Vec<f64>> {
        let mut targets: Vec<u32> = ids[1..].to_vec();
        targets.push(IGNORE_TARGET);
        if ids.len() < 2 {
            return Err(PupilError::arg("Trainer::block_influence", "at least two tokens"));
        }
        self.write_batch(ctx, ids, &targets, doc_lengths)?;
        let mut b = Batch::new(ctx);
        self.record_forward(&mut b, ids.len())?;
        b.submit();
        let (n, h) = (ids.len(), self.model.config.hidden);
        let mut streams = Vec::with_capacity(self.xs.len());
        for x in &self.xs {
            streams.push(x.view(0, &[n, h])?.read_f32(ctx).await?);
        }
        Ok(streams
            .windows(2)
            .map(|w| {
                let cos: f64 = (0..n)
                    .map(|t| {
                        let (a, b) = (&w[0][t * h..][..h], &w[1][t * h..][..h]);
                        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
                        let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                        let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                        dot / (na * nb).max(f64::MIN_POSITIVE)
                    })
                    .sum();
                1.0 - cos / n as f64
            })
            .collect())
    }

    /// The mean hard-label cross-entropy (at temperature 1, over the counted targets) of the
    /// last pass: its loss without labels' weight α, the divergence or the alignment; `None`
    /// before any pass, or after a distillation pass with α = 0 (the CE is then not computed).
    pub fn last_cross_entropy(&self) -> Option<f64> {
        self.last_ce
    }

    /// The mean loss of a batch with the adapters as they are; gradients untouched (evaluation).
    pub async fn loss(&mut self, ctx: &GpuContext, ids: &[u32], targets: &[u32], doc_lengths: &[usize]) -> Result<f64> {
        Ok(self.run(ctx, ids, targets, doc_lengths, None, Signal::Labels).await?.0)
    }

    async fn run(
        &mut self,
        ctx: &GpuContext,
        ids: &[u32],
        targets: &[u32],
        doc_lengths: &[usize],
        backward_weight: Option<f64>,
        signal: Signal<'_, '_>,
    ) -> Result<(f64, f64)> {
        let backward = backward_weight.is_some();
        let counted = self.write_batch(ctx, ids, targets, doc_lengths)?;
        let n = ids.len();
        // Dropout only while training, with fresh masks per training pass.
        self.dropout_call = (backward && self.lora.config.dropout > 0.0).then_some(self.calls);
        if backward {
            self.calls += 1;
        }
        let mut b = Batch::new(ctx);
        let c = &self.model.config;
        if let Signal::Online(t, _) = signal {
            let nt = t.gathered.unwrap_or(n);
            t.record_forward(&mut b, nt)?;
            t.record_final_norm(&mut b, nt)?;
            if t.gathered.is_some() {
                // Context distillation: the teacher rows of the student's tokens, in order.
                let th = t.model.config.hidden;
                crate::ops::embedding::embedding_forward(
                    &mut b,
                    &t.gather_rows.view(0, &[n])?,
                    &t.w.xn.view(0, &[nt, th])?,
                    &t.w.xn2.view(0, &[n, th])?,
                )?;
            }
        }
        self.record_forward(&mut b, n)?;
        // (The head always writes the last stream's gradient; only training carries it down.)
        let scale = (backward_weight.unwrap_or(1.0) / counted as f64) as f32;
        self.head_forward_backward(&mut b, n, scale, signal)?;
        let align = self.alignment_with(ctx, signal.online(), n)?;
        let align_scale = (backward_weight.unwrap_or(1.0) / n as f64) as f32;
        if let (Some(a), false) = (&align, backward) {
            for term in &a.terms {
                a.record(&mut b, term, &self.xs[term.boundary].view(0, &[n, c.hidden])?, None)?;
            }
        }
        if backward {
            for l in (0..c.n_layers).rev() {
                self.layer_forward(&mut b, l, n, false)?;
                // The alignment's gradient joins the output's at the boundary after layer l.
                if let Some(a) = &align {
                    for term in a.terms.iter().filter(|t| t.boundary == l + 1) {
                        let (hs, dx) = (self.xs[l + 1].view(0, &[n, c.hidden])?, self.w.dx.view(0, &[n, c.hidden])?);
                        a.record(&mut b, term, &hs, Some((&dx, align_scale)))?;
                    }
                }
                self.layer_backward(&mut b, l, n)?;
            }
        }
        b.submit();
        let align_loss = align.map(|a| a.loss);
        self.dropout_call = None;
        let mean = |v: Vec<f32>| v.iter().map(|&x| x as f64).sum::<f64>() / counted as f64;
        let mut loss = mean(self.w.loss.view(0, &[n])?.read_f32(ctx).await?);
        let kl = match signal {
            Signal::Labels => 0.0,
            _ => mean(self.w.kl.view(0, &[n])?.read_f32(ctx).await?),
        };
        // The head's per-token loss is `kl_coef · kl + α · CE`: its CE part, from the means.
        self.last_ce = match signal {
            Signal::Labels => Some(loss),
            Signal::Online(_, d) | Signal::TopK(_, d) if d.alpha > 0.0 => {
                Some((loss - d.kl_coef as f64 * kl) / d.alpha as f64)
            }
            _ => None,
        };
        if let Some(l) = &align_loss {
            loss += l.read_f32(ctx).await?.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        }
        Ok((loss, kl))
    }

    /// Embedding and every layer's forward, each layer's input kept (`xs`).
    fn record_forward(&self, b: &mut Batch, n: usize) -> Result<()> {
        let c = &self.model.config;
        let x0 = self.xs[0].view(0, &[n, c.hidden])?;
        let scale = c.embedding_scale.unwrap_or(1.0);
        crate::ops::embedding::embedding_quant_scaled_forward(
            b,
            &self.ids.view(0, &[n])?,
            &self.model.embd,
            scale,
            &x0,
        )?;
        for l in 0..c.n_layers {
            self.layer_forward(b, l, n, true)?;
        }
        Ok(())
    }

    /// The final norm of the last residual stream into `w.xn` (what the head reads).
    fn record_final_norm(&self, b: &mut Batch, n: usize) -> Result<()> {
        let c = &self.model.config;
        let x_last = self.xs[c.n_layers].view(0, &[n, c.hidden])?;
        rms_norm_forward(
            b,
            &x_last,
            &self.model.output_norm,
            &self.w.xn.view(0, &[n, c.hidden])?,
            c.rms_eps,
            NormWeight::Plain,
        )
    }

    /// Zero every adapter gradient.
    pub fn zero_grads(&self, ctx: &GpuContext) {
        for (_, p) in self.lora.pairs() {
            p.da.fill_buffer_u32(ctx, 0);
            p.db.fill_buffer_u32(ctx, 0);
        }
        for (_, p) in self.dense_params() {
            p.g.fill_buffer_u32(ctx, 0);
        }
    }

    /// Everything a resumed run needs besides the counters: every trainable tensor and its AdamW
    /// moments, by a stable name (`lora.{l}.{target}.{a|b|ma|va|mb|vb}`,
    /// `dense.{l}.{param}.{w|m|v}`, `gate.{l}.{w|b}.{w|m|v}`), in a fixed order.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (l, p) in self.lora.pairs() {
            let t = p.target.hf_name();
            let [ma, va, mb, vb] = &p.moments;
            for (k, x) in [("a", &p.a), ("b", &p.b), ("ma", ma), ("va", va), ("mb", mb), ("vb", vb)] {
                out.push((format!("lora.{l}.{t}.{k}"), x.clone()));
            }
        }
        let param = |out: &mut Vec<(String, Tensor)>, name: String, p: &Param| {
            for (k, x) in [("w", &p.w), ("m", &p.m), ("v", &p.v)] {
                out.push((format!("{name}.{k}"), x.clone()));
            }
        };
        for (l, d) in self.dense.iter().enumerate() {
            for (name, p) in d.iter().flat_map(|d| d.params()) {
                param(&mut out, format!("dense.{l}.{name}"), p);
            }
        }
        for (l, g) in self.gates.iter().enumerate() {
            param(&mut out, format!("gate.{l}.w"), &g.w);
            param(&mut out, format!("gate.{l}.b"), &g.b);
        }
        for (i, p) in self.align.iter().flat_map(|a| &a.projections).enumerate() {
            param(&mut out, format!("align.{i}.proj"), p);
        }
        out
    }

    /// (AdamW steps applied, training passes run, the seed dropout masks derive from): with
    /// [`state_tensors`](Self::state_tensors), the whole state of the trainer.
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.steps, self.calls, self.seed)
    }

    /// Restore [`counters`](Self::counters) (a resumed run).
    pub fn set_counters(&mut self, (steps, calls, seed): (u64, u64, u64)) {
        (self.steps, self.calls, self.seed) = (steps, calls, seed);
    }

    /// Every parameter of the fully trained layers, then of the gates, then of the alignment's
    /// projections.
    fn dense_params(&self) -> impl Iterator<Item = (&'static str, &Param)> {
        let gates = self.gates.iter().flat_map(|g| [("gate_w", &g.w), ("gate_b", &g.b)]);
        let projections = self.align.iter().flat_map(|a| &a.projections).map(|p| ("align_proj", p));
        self.dense.iter().flatten().flat_map(|d| d.params()).chain(gates).chain(projections)
    }

    /// The model's configuration.
    pub fn model_config(&self) -> &crate::model::ModelConfig {
        &self.model.config
    }

    /// Trainable parameters (adapters and trained layers).
    pub fn parameter_count(&self) -> usize {
        self.lora.parameter_count() + self.dense_params().map(|(_, p)| p.w.len()).sum::<usize>()
    }

    /// One AdamW step over the gradients held (global-norm clipped to `max_norm`), skipped when
    /// any gradient value is NaN or infinite. Gradients are zeroed afterwards either way.
    pub async fn step(&mut self, ctx: &GpuContext, opt: &AdamW, max_norm: Option<f64>) -> Result<StepReport> {
        if self.parameter_count() == 0 {
            return Err(PupilError::arg("Trainer::step", "nothing to train: no adapters, trained layers or gates"));
        }
        let mut b = Batch::new(ctx);
        let mut slot = 0;
        for (_, p) in self.lora.pairs() {
            slot += grad_sum_squares(&mut b, &p.da, &self.partials, slot)?;
            slot += grad_sum_squares(&mut b, &p.db, &self.partials, slot)?;
        }
        for (_, p) in self.dense_params() {
            slot += grad_sum_squares(&mut b, &p.g, &self.partials, slot)?;
        }
        b.submit();
        let stats = GradStats::from_partials(&self.partials.read_f32(ctx).await?);
        let loss = self.last_loss.unwrap_or(f64::NAN);
        if stats.nonfinite > 0 {
            self.zero_grads(ctx);
            return Ok(StepReport { loss, grad_norm: stats.norm, nonfinite: stats.nonfinite, applied: false });
        }
        self.steps += 1;
        let scale = stats.clip_scale(max_norm) as f32;
        let mut b = Batch::new(ctx);
        for (_, p) in self.lora.pairs() {
            let [ma, va, mb, vb] = &p.moments;
            adamw_step(&mut b, opt, self.steps, &p.a, &p.da, ma, va, scale)?;
            adamw_step(&mut b, opt, self.steps, &p.b, &p.db, mb, vb, scale)?;
        }
        for (_, p) in self.dense_params() {
            adamw_step(&mut b, opt, self.steps, &p.w, &p.g, &p.m, &p.v, scale)?;
        }
        b.submit();
        self.zero_grads(ctx);
        Ok(StepReport { loss, grad_norm: stats.norm, nonfinite: 0, applied: true })
    }

    fn layer(&self, l: usize) -> &'m Layer {
        &self.model.layers[l]
    }

    /// `y (+)= x·Wᵀ` through a frozen weight with its bias, then the adapter of `target` (if
    /// any) into the same output columns: `y[:, cols] += s·(x·Aᵀ)·Bᵀ`, keeping x·Aᵀ for the
    /// backward pass.
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        b: &mut Batch,
        n: usize,
        (l, which): (usize, Proj),
        x: &Tensor,
        y: &Tensor,
        accumulate: bool,
        adapters: &[(usize, LoraTarget, Strided)],
    ) -> Result<()> {
        match &self.dense[l] {
            None => {
                let (w, bias) = self.frozen(l, which);
                matmul_forward(b, x, w, bias, y, accumulate)?;
            }
            Some(d) => {
                let (w, _, bias) = d.proj(which)?;
                let (out, inp) = (w.shape()[0], w.shape()[1]);
                let mut acc = accumulate;
                if let Some(bias) = bias {
                    let ones = self.ones.view(0, &[n, 1])?;
                    matmul_dense_strided(b, (&ones, None), &bias.w, (y, None), DenseLayout::Nn, (n, out, 1), 1.0, acc)?;
                    acc = true;
                }
                matmul_dense_strided(b, (x, None), &w, (y, None), DenseLayout::Nt, (n, out, inp), 1.0, acc)?;
            }
        }
        for &(l, target, at) in adapters {
            if let Some(p) = self.lora.get(l, target) {
                let lh = self.lora_h(target, n)?;
                let r = self.lora.config.rank;
                let x = self.adapter_input(b, n, l, p, x)?;
                matmul_dense_strided(b, (&x, None), &p.a, (&lh, None), DenseLayout::Nt, (n, r, p.in_dim), 1.0, false)?;
                let s = self.lora.config.scale();
                matmul_dense_strided(b, (&lh, None), &p.b, (y, Some(at)), DenseLayout::Nt, (n, p.out_dim, r), s, true)?;
            }
        }
        Ok(())
    }

    /// The model's frozen weight (and bias) of a projection.
    fn frozen(&self, l: usize, which: Proj) -> (&'m QuantWeight, Option<&'m Tensor>) {
        let lay = self.layer(l);
        let one = |s: &'m Stacked| match s {
            Stacked::One(w) => w,
            Stacked::Two(..) => unreachable!("Q|K apart go through Proj::Q and Proj::K; gate|up checked"),
        };
        match (which, &lay.qk) {
            (Proj::Q, Stacked::Two(wq, _)) => return (wq, lay.q_bias.as_ref()),
            (Proj::K, Stacked::Two(_, wk)) => return (wk, lay.k_bias.as_ref()),
            _ => {}
        }
        match which {
            Proj::Qk => (one(&lay.qk), lay.qk_bias.as_ref()),
            Proj::Q | Proj::K => unreachable!("a fused Q|K goes through Proj::Qk"),
            Proj::V => (&lay.v, lay.v_bias.as_ref()),
            Proj::O => (&lay.o, None),
            Proj::GateUp => (one(&lay.gate_up), None),
            Proj::Down => (&lay.down, None),
        }
    }

    /// Layer l's RoPE table and attention: a sliding-window layer's own (gemma3's local layers),
    /// else the model's.
    fn attention_of(&self, l: usize) -> (&'m RopeTable, &'m AttentionConfig) {
        match &self.model.local {
            Some((rope, cfg)) if self.model.config.layer_window(l).is_some() => (rope, cfg),
            _ => (&self.model.rope, &self.model.attn),
        }
    }

    /// How layer l's norm weights apply: the model's as loaded (a GGUF file stores Gemma's
    /// `1 + w`), a trained copy as the checkpoint's parameter (`w` for Gemma, so that AdamW's
    /// weight decay pulls it towards 0 as PyTorch's does).
    fn norm_form(&self, l: usize) -> NormWeight {
        match self.dense[l] {
            Some(ref d) if d.norms_one_plus => NormWeight::OnePlus,
            _ => NormWeight::Plain,
        }
    }

    /// Layer l's post-attention and post-MLP norm weights, if it has them: the trained copies
    /// or the model's.
    fn post_norms(&self, l: usize) -> Option<(&Tensor, &Tensor)> {
        match (&self.dense[l], &self.layer(l).post_norms) {
            (Some(DenseLayer { post_norms: Some((a, m)), .. }), _) => Some((&a.w, &m.w)),
            (_, Some((a, m))) => Some((a, m)),
            _ => None,
        }
    }

    /// Layer l's QK-norm weights, if it has them: the trained copies or the model's.
    fn qk_norm(&self, l: usize) -> Option<(&Tensor, &Tensor)> {
        match (&self.dense[l], &self.layer(l).qk_norm) {
            (Some(DenseLayer { qk_norm: Some((q, k)), .. }), _) => Some((&q.w, &k.w)),
            (_, Some((q, k))) => Some((q, k)),
            _ => None,
        }
    }

    /// Layer l's attention (`attn`) or MLP input norm weight: the trained copy or the model's.
    fn norm(&self, l: usize, attn: bool) -> &Tensor {
        match (&self.dense[l], attn) {
            (Some(d), true) => &d.attn_norm.w,
            (Some(d), false) => &d.ffn_norm.w,
            (None, true) => &self.layer(l).attn_norm,
            (None, false) => &self.layer(l).ffn_norm,
        }
    }

    /// The input gradient of a projection of `x`, `dx (+)= dy·W`, and for a trained layer the
    /// weight's and bias's gradients `dW += dyᵀ·x`, `db += dyᵀ·1` (dy contiguous `[n, out]`).
    #[allow(clippy::too_many_arguments)]
    fn project_backward(
        &self,
        b: &mut Batch,
        n: usize,
        (l, which): (usize, Proj),
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        accumulate: bool,
    ) -> Result<()> {
        match &self.dense[l] {
            None => matmul_transposed_forward(b, dy, self.frozen(l, which).0, dx, accumulate),
            Some(d) => {
                let (w, g, bias) = d.proj(which)?;
                let (out, inp) = (w.shape()[0], w.shape()[1]);
                matmul_dense_strided(b, (dy, None), &w, (dx, None), DenseLayout::Nn, (n, inp, out), 1.0, accumulate)?;
                matmul_dense_strided(b, (dy, None), x, (&g, None), DenseLayout::Tn, (out, inp, n), 1.0, true)?;
                if let Some(bias) = bias {
                    let ones = self.ones.view(0, &[n, 1])?;
                    matmul_dense_strided(
                        b,
                        (dy, None),
                        &ones,
                        (&bias.g, None),
                        DenseLayout::Tn,
                        (out, 1, n),
                        1.0,
                        true,
                    )?;
                }
                Ok(())
            }
        }
    }

    /// After `rms_norm_backward` wrote `rstd`: a trained layer's norm weight gradient.
    fn norm_weight_backward(
        &self,
        b: &mut Batch,
        l: usize,
        attn: bool,
        x: &Tensor,
        dy: &Tensor,
        rstd: &Tensor,
    ) -> Result<()> {
        match &self.dense[l] {
            Some(d) => {
                let g = if attn { &d.attn_norm.g } else { &d.ffn_norm.g };
                rms_norm_backward_weight(b, x, dy, rstd, g, true)
            }
            None => Ok(()),
        }
    }

    fn lora_h(&self, target: LoraTarget, n: usize) -> Result<Tensor> {
        let i = LoraTarget::ALL.iter().position(|&t| t == target).unwrap_or(0);
        self.w.lora_h[i].view(0, &[n, self.lora.config.rank])
    }

    /// The input adapter `p` of layer `l` sees: `x`, or while training with dropout, `x` through
    /// this pass's mask for that adapter (into `w.dropped`; regenerated, never stored).
    fn adapter_input(&self, b: &mut Batch, n: usize, l: usize, p: &LoraPair, x: &Tensor) -> Result<Tensor> {
        let Some(call) = self.dropout_call else { return Ok(x.clone()) };
        let dropped = self.w.dropped.view(0, &[n, p.in_dim])?;
        let seed = dropout_seed(self.seed, call, l, p.target);
        dropout_forward(b, x, &dropped, self.lora.config.dropout, seed, false)?;
        Ok(dropped)
    }

    /// The adapter's gradients for an output gradient `dy` (at `dy_at`) of a projection of `x`
    /// (of layer `l`): `dB += s·dyᵀ·(x'·Aᵀ)`, `dA += (s·dy·B)ᵀ·x'`, and `dx += mask(s·dy·B·A)`,
    /// with x' = x, or x through the dropout mask while training with dropout.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        b: &mut Batch,
        (n, l): (usize, usize),
        p: &LoraPair,
        x: &Tensor,
        dy: &Tensor,
        dy_at: Strided,
        dx: &Tensor,
    ) -> Result<()> {
        let (r, s) = (self.lora.config.rank, self.lora.config.scale());
        let lh = self.lora_h(p.target, n)?;
        let dlh = self.w.dlora_h.view(0, &[n, r])?;
        matmul_dense_strided(b, (dy, Some(dy_at)), &lh, (&p.db, None), DenseLayout::Tn, (p.out_dim, r, n), s, true)?;
        matmul_dense_strided(b, (dy, Some(dy_at)), &p.b, (&dlh, None), DenseLayout::Nn, (n, r, p.out_dim), s, false)?;
        let x_in = self.adapter_input(b, n, l, p, x)?;
        matmul_dense_strided(b, (&dlh, None), &x_in, (&p.da, None), DenseLayout::Tn, (r, p.in_dim, n), 1.0, true)?;
        match self.dropout_call {
            None => {
                matmul_dense_strided(b, (&dlh, None), &p.a, (dx, None), DenseLayout::Nn, (n, p.in_dim, r), 1.0, true)
            }
            Some(call) => {
                // The mask's derivative is itself: the same mask and 1/(1 − p) on the gradient.
                let d_in = self.w.d_dropped.view(0, &[n, p.in_dim])?;
                matmul_dense_strided(
                    b,
                    (&dlh, None),
                    &p.a,
                    (&d_in, None),
                    DenseLayout::Nn,
                    (n, p.in_dim, r),
                    1.0,
                    false,
                )?;
                let seed = dropout_seed(self.seed, call, l, p.target);
                dropout_forward(b, &d_in, dx, self.lora.config.dropout, seed, true)
            }
        }
    }

    /// Layer l's forward from `xs[l]`: every activation into the work buffers, and (`store`)
    /// its output into `xs[l + 1]` (the backward's recomputation skips that last product).
    fn layer_forward(&self, b: &mut Batch, l: usize, n: usize, store: bool) -> Result<()> {
        let c = &self.model.config;
        let form = self.norm_form(l);
        let Dims { h, f, hd, nh, nkv, qd, kd } = Dims::of(c);
        let w = &self.w;
        let v = |t: &Tensor, shape: &[usize]| t.view(0, shape);
        let x = v(&self.xs[l], &[n, h])?;
        let xn = v(&w.xn, &[n, h])?;
        let qk = v(&w.qk, &[n, qd + kd])?;
        let cols = |stride: usize, offset: usize| Strided { row_stride: stride, offset };
        rms_norm_forward(b, &x, self.norm(l, true), &xn, c.rms_eps, form)?;
        let pos = v(&self.positions, &[n])?;
        let (q, k, vv) = (v(&w.q, &[n, nh, hd])?, v(&w.k, &[n, nkv, hd])?, v(&w.v, &[n, nkv, hd])?);
        // RoPE's sources: the fused Q|K rows, or Q and K apart (each QK-normed when the model
        // has it), as (tensor, row stride, K's column offset).
        let (q_src, k_src) = match (&self.layer(l).qk, &w.split) {
            (Stacked::Two(..), Some(sp)) => {
                let (q_raw, k_raw) = (v(&w.qk, &[n, qd])?, v(&sp.k_raw, &[n, kd])?);
                self.project(b, n, (l, Proj::Q), &xn, &q_raw, false, &[(l, LoraTarget::Q, cols(qd, 0))])?;
                self.project(b, n, (l, Proj::K), &xn, &k_raw, false, &[(l, LoraTarget::K, cols(kd, 0))])?;
                match self.qk_norm(l) {
                    Some((qn, kn)) => {
                        let (q_normed, k_normed) = (v(&sp.q_normed, &[n, qd])?, v(&sp.k_normed, &[n, kd])?);
                        let heads = |t: &Tensor, count: usize| t.view(0, &[n * count, hd]);
                        let eps = c.rms_eps;
                        rms_norm_forward(b, &heads(&q_raw, nh)?, qn, &heads(&q_normed, nh)?, eps, form)?;
                        rms_norm_forward(b, &heads(&k_raw, nkv)?, kn, &heads(&k_normed, nkv)?, eps, form)?;
                        ((q_normed, qd, 0), (k_normed, kd, 0))
                    }
                    None => ((q_raw, qd, 0), (k_raw, kd, 0)),
                }
            }
            _ => {
                let qk_adapters = [(l, LoraTarget::Q, cols(qd + kd, 0)), (l, LoraTarget::K, cols(qd + kd, qd))];
                self.project(b, n, (l, Proj::Qk), &xn, &qk, false, &qk_adapters)?;
                ((qk.clone(), qd + kd, 0), (qk.clone(), qd + kd, qd))
            }
        };
        let rope_in = |heads: usize, (_, stride, offset): &(Tensor, usize, usize)| RopeInput {
            tokens: n,
            heads,
            head_dim: hd,
            stride: *stride,
            offset: *offset,
        };
        let (rope, attn) = self.attention_of(l);
        rope_forward(b, &q_src.0, &pos, rope, rope_in(nh, &q_src), &q)?;
        rope_forward(b, &k_src.0, &pos, rope, rope_in(nkv, &k_src), &k)?;
        self.project(b, n, (l, Proj::V), &xn, &vv.view(0, &[n, kd])?, false, &[(l, LoraTarget::V, cols(kd, 0))])?;
        let (o, lse) = (v(&w.o, &[n, nh, hd])?, v(&w.lse, &[n, nh])?);
        attention_packed_forward(b, attn, &q, &k, &vv, &v(&self.doc_start, &[n])?, &o, &lse, None)?;
        let x_mid = v(&w.x_mid, &[n, h])?;
        b.copy(&x, &x_mid)?;
        let o_in = match (self.gates.get(l), &self.gate_work) {
            (Some(g), Some(gw)) => {
                let (logits, gated) = (v(&gw.logits, &[n, qd])?, v(&gw.gated, &[n, nh, hd])?);
                let ones = v(&self.ones, &[n, 1])?;
                matmul_dense_strided(
                    b,
                    (&ones, None),
                    &g.b.w,
                    (&logits, None),
                    DenseLayout::Nn,
                    (n, qd, 1),
                    1.0,
                    false,
                )?;
                matmul_dense_strided(b, (&xn, None), &g.w.w, (&logits, None), DenseLayout::Nt, (n, qd, h), 1.0, true)?;
                b.copy(&o, &gated)?;
                b.next_pass();
                let gl = logits.view(0, &[n, nh, hd])?;
                gate_apply_forward(b, &gated, &GateInput::contiguous(&gl, GateMode::Elementwise, nh, hd))?;
                gated.view(0, &[n, qd])?
            }
            _ => {
                b.next_pass();
                o.view(0, &[n, qd])?
            }
        };
        let o_adapter = [(l, LoraTarget::O, cols(h, 0))];
        let post_norms = self.post_norms(l);
        match post_norms {
            None => self.project(b, n, (l, Proj::O), &o_in, &x_mid, true, &o_adapter)?,
            Some((attn_post, _)) => {
                // x_mid = x + post_norm(o): the projection apart, kept for the backward.
                let (proj, normed) = (v(&w.attn_proj, &[n, h])?, v(&w.post_out, &[n, h])?);
                self.project(b, n, (l, Proj::O), &o_in, &proj, false, &o_adapter)?;
                rms_norm_forward(b, &proj, attn_post, &normed, c.rms_eps, form)?;
                add_inplace(b, &x_mid, &normed)?;
            }
        }
        let (xn2, gu, hh) = (v(&w.xn2, &[n, h])?, v(&w.gu, &[n, 2 * f])?, v(&w.h, &[n, f])?);
        rms_norm_forward(b, &x_mid, self.norm(l, false), &xn2, c.rms_eps, form)?;
        let gu_adapters = [(l, LoraTarget::Gate, cols(2 * f, 0)), (l, LoraTarget::Up, cols(2 * f, f))];
        self.project(b, n, (l, Proj::GateUp), &xn2, &gu, false, &gu_adapters)?;
        gated_activation_fused_forward(b, c.activation, &gu, &hh)?;
        let down = [(l, LoraTarget::Down, cols(h, 0))];
        if let Some((_, ffn_post)) = post_norms {
            // out = x_mid + post_norm(down): the backward needs the projection, recomputed too.
            let proj = v(&w.mlp_proj, &[n, h])?;
            self.project(b, n, (l, Proj::Down), &hh, &proj, false, &down)?;
            if store {
                let (normed, out) = (v(&w.post_out, &[n, h])?, v(&self.xs[l + 1], &[n, h])?);
                rms_norm_forward(b, &proj, ffn_post, &normed, c.rms_eps, form)?;
                b.copy(&x_mid, &out)?;
                b.next_pass();
                add_inplace(b, &out, &normed)?;
            }
        } else if store {
            let out = v(&self.xs[l + 1], &[n, h])?;
            b.copy(&x_mid, &out)?;
            b.next_pass();
            self.project(b, n, (l, Proj::Down), &hh, &out, true, &down)?;
        } else if let Some(p) = self.lora.get(l, LoraTarget::Down) {
            // Only the adapter's x·Aᵀ is needed from the last product.
            let lh = self.lora_h(LoraTarget::Down, n)?;
            let hh = self.adapter_input(b, n, l, p, &hh)?;
            matmul_dense_strided(
                b,
                (&hh, None),
                &p.a,
                (&lh, None),
                DenseLayout::Nt,
                (n, self.lora.config.rank, f),
                1.0,
                false,
            )?;
        }
        Ok(())
    }

    /// Final norm, head and cross-entropy, HEAD_ROWS rows at a time: the loss per token, and
    /// the gradient of the last residual stream into `w.dx`.
    /// With an online teacher (its final norm recorded), the loss is the distillation loss
    /// against its logits, made chunk by chunk from its normed hidden states; with an offline
    /// one, against its top-k in `top_k`.
    fn head_forward_backward(&self, b: &mut Batch, n: usize, grad_scale: f32, signal: Signal<'_, '_>) -> Result<()> {
        let c = &self.model.config;
        let (h, vocab) = (c.hidden, c.vocab_size);
        let w = &self.w;
        let x_last = self.xs[c.n_layers].view(0, &[n, h])?;
        let xn = w.xn.view(0, &[n, h])?;
        self.record_final_norm(b, n)?;
        let head = self.model.output.as_ref().unwrap_or(&self.model.embd);
        let dxn = w.dxn.view(0, &[n, h])?;
        for r0 in (0..n).step_by(HEAD_ROWS) {
            let rows = HEAD_ROWS.min(n - r0);
            let logits = w.logits.view(0, &[rows, vocab])?;
            matmul_forward(b, &xn.view(r0 * h, &[rows, h])?, head, None, &logits, false)?;
            let (targets, loss) = (self.targets.view(r0, &[rows])?, w.loss.view(r0, &[rows])?);
            match signal {
                Signal::Labels => cross_entropy_forward_backward(b, &logits, &targets, &loss, grad_scale)?,
                Signal::TopK(k, cfg) => {
                    let (_, ids, logp) = self.top_k.as_ref().ok_or_else(|| {
                        PupilError::arg("Trainer::distill_topk", "no top-k buffers (internal: set by the caller)")
                    })?;
                    let top = (&ids.view(r0 * k, &[rows, k])?, &logp.view(r0 * k, &[rows, k])?);
                    let kl = w.kl.view(r0, &[rows])?;
                    distill_topk_forward_backward(b, cfg, &logits, top, &targets, (&loss, &kl), grad_scale)?;
                }
                Signal::Online(t, cfg) => {
                    let th = t.model.config.hidden;
                    let t_logits = t.w.logits.view(0, &[rows, vocab])?;
                    let t_head = t.model.output.as_ref().unwrap_or(&t.model.embd);
                    // The teacher's final normed rows: its own, or gathered (context distillation).
                    let t_xn = if t.gathered.is_some() { &t.w.xn2 } else { &t.w.xn };
                    matmul_forward(b, &t_xn.view(r0 * th, &[rows, th])?, t_head, None, &t_logits, false)?;
                    let kl = w.kl.view(r0, &[rows])?;
                    distill_loss_forward_backward(b, cfg, &logits, &t_logits, &targets, (&loss, &kl), grad_scale)?;
                }
            }
            matmul_transposed_forward(b, &logits, head, &dxn.view(r0 * h, &[rows, h])?, false)?;
        }
        let rstd = w.rstd.view(0, &[n])?;
        rms_norm_backward(
            b,
            &x_last,
            &self.model.output_norm,
            &dxn,
            &w.dx.view(0, &[n, h])?,
            &rstd,
            c.rms_eps,
            NormWeight::Plain,
            false,
        )
    }

    /// Layer l's backward from its recomputed activations: `w.dx` holds the gradient of the
    /// layer's output on entry and of its input on return; adapter gradients accumulate.
    fn layer_backward(&self, b: &mut Batch, l: usize, n: usize) -> Result<()> {
        let c = &self.model.config;
        let form = self.norm_form(l);
        let Dims { h, f, hd, nh, nkv, qd, kd } = Dims::of(c);
        let w = &self.w;
        let v = |t: &Tensor, shape: &[usize]| t.view(0, shape);
        let cols = |stride: usize, offset: usize| Strided { row_stride: stride, offset };
        let dx = v(&w.dx, &[n, h])?;
        let rstd = v(&w.rstd, &[n])?;
        // MLP: x_out = x_mid + down(act(gate)·up) of norm(x_mid).
        let (hh, gu, xn2, x_mid) =
            (v(&w.h, &[n, f])?, v(&w.gu, &[n, 2 * f])?, v(&w.xn2, &[n, h])?, v(&w.x_mid, &[n, h])?);
        let (dh, dgu, dxn) = (v(&w.dh, &[n, f])?, v(&w.dgu, &[n, 2 * f])?, v(&w.dxn, &[n, h])?);
        // With a post-norm, the projection's output gradient is the norm's input gradient (and
        // a trained layer's norm weight gets its own).
        let post_norms = self.post_norms(l);
        let trained_post = self.dense[l].as_ref().and_then(|d| d.post_norms.as_ref());
        let through_post = |b: &mut Batch, proj: &Tensor, norm: &Tensor, grad: Option<&Tensor>| -> Result<Tensor> {
            let d = v(&w.d_post, &[n, h])?;
            rms_norm_backward(b, proj, norm, &dx, &d, &rstd, c.rms_eps, form, false)?;
            if let Some(g) = grad {
                rms_norm_backward_weight(b, proj, &dx, &rstd, g, true)?;
            }
            Ok(d)
        };
        let d_down = match post_norms {
            Some((_, ffn_post)) => through_post(b, &v(&w.mlp_proj, &[n, h])?, ffn_post, trained_post.map(|p| &p.1.g))?,
            None => dx.clone(),
        };
        self.project_backward(b, n, (l, Proj::Down), &hh, &d_down, &dh, false)?;
        if let Some(p) = self.lora.get(l, LoraTarget::Down) {
            self.lora_backward(b, (n, l), p, &hh, &d_down, cols(h, 0), &dh)?;
        }
        gated_activation_fused_backward(b, c.activation, &gu, &dh, &dgu)?;
        self.project_backward(b, n, (l, Proj::GateUp), &xn2, &dgu, &dxn, false)?;
        for (target, offset) in [(LoraTarget::Gate, 0), (LoraTarget::Up, f)] {
            if let Some(p) = self.lora.get(l, target) {
                self.lora_backward(b, (n, l), p, &xn2, &dgu, cols(2 * f, offset), &dxn)?;
            }
        }
        rms_norm_backward(b, &x_mid, self.norm(l, false), &dxn, &dx, &rstd, c.rms_eps, form, true)?;
        self.norm_weight_backward(b, l, false, &x_mid, &dxn, &rstd)?;
        // Attention: x_mid = x + o(attention(rope(q), rope(k), v)) of norm(x).
        let (o, lse) = (v(&w.o, &[n, nh, hd])?, v(&w.lse, &[n, nh])?);
        let (q, k, vv) = (v(&w.q, &[n, nh, hd])?, v(&w.k, &[n, nkv, hd])?, v(&w.v, &[n, nkv, hd])?);
        let d_o = v(&w.d_o, &[n, qd])?;
        let gate = self.gates.get(l).zip(self.gate_work.as_ref());
        // The O projection's input: the gated output when there is a gate.
        let o_in = match gate {
            Some((_, gw)) => v(&gw.gated, &[n, qd])?,
            None => o.view(0, &[n, qd])?,
        };
        let d_proj = match post_norms {
            Some((attn_post, _)) => {
                through_post(b, &v(&w.attn_proj, &[n, h])?, attn_post, trained_post.map(|p| &p.0.g))?
            }
            None => dx.clone(),
        };
        self.project_backward(b, n, (l, Proj::O), &o_in, &d_proj, &d_o, false)?;
        if let Some(p) = self.lora.get(l, LoraTarget::O) {
            self.lora_backward(b, (n, l), p, &o_in, &d_proj, cols(h, 0), &d_o)?;
        }
        // Through the gate: d_o is the gated output's gradient; attention gets the ungated one.
        let d_attn = match gate {
            Some((_, gw)) => {
                let (logits, dlogits, d_un) =
                    (v(&gw.logits, &[n, qd])?, v(&gw.dlogits, &[n, qd])?, v(&gw.d_ungated, &[n, qd])?);
                gate_backward(b, &o.view(0, &[n, qd])?, &logits, &d_o, &d_un, &dlogits)?;
                d_un
            }
            None => d_o.clone(),
        };
        let (dq, dk, dv) = (v(&w.dq, &[n, nh, hd])?, v(&w.dk, &[n, nkv, hd])?, v(&w.dv, &[n, nkv, hd])?);
        let stats = v(&w.stats, &[n, nh, 2])?;
        let bounds = v(&self.doc_bounds, &[n, 2])?;
        attention_backward(
            b,
            self.attention_of(l).1,
            (&q, &k, &vv),
            &o,
            &lse,
            &d_attn.view(0, &[n, nh, hd])?,
            Some(&bounds),
            &stats,
            (&dq, &dk, &dv),
        )?;
        let pos = v(&self.positions, &[n])?;
        let rope_at =
            |heads: usize, stride: usize, offset: usize| RopeInput { tokens: n, heads, head_dim: hd, stride, offset };
        let rope = self.attention_of(l).0;
        let xn = v(&w.xn, &[n, h])?;
        // The gradients of the projections' outputs, as (tensor, LoRA column block).
        let (dq_proj, dk_proj) = match (&self.layer(l).qk, &w.split) {
            (Stacked::Two(..), Some(sp)) => {
                let (dq_raw, dk_raw) = (v(&w.dqk, &[n, qd])?, v(&sp.dk_raw, &[n, kd])?);
                match self.qk_norm(l) {
                    Some((qn, kn)) => {
                        let (dq_normed, dk_normed) = (v(&sp.dq_normed, &[n, qd])?, v(&sp.dk_normed, &[n, kd])?);
                        rope_backward(b, &dq, &pos, rope, rope_at(nh, qd, 0), &dq_normed)?;
                        rope_backward(b, &dk, &pos, rope, rope_at(nkv, kd, 0), &dk_normed)?;
                        let heads = |t: &Tensor, count: usize| t.view(0, &[n * count, hd]);
                        let (q_raw, k_raw) = (v(&w.qk, &[n, qd])?, v(&sp.k_raw, &[n, kd])?);
                        let trained = self.dense[l].as_ref().and_then(|d| d.qk_norm.as_ref());
                        let grads = [trained.map(|t| &t.0.g), trained.map(|t| &t.1.g)];
                        for ((raw, norm_w, dy, dx, count), grad) in
                            [(&q_raw, qn, &dq_normed, &dq_raw, nh), (&k_raw, kn, &dk_normed, &dk_raw, nkv)]
                                .into_iter()
                                .zip(grads)
                        {
                            let rstd = v(&sp.rstd_heads, &[n * count])?;
                            let (x, dy, dx) = (heads(raw, count)?, heads(dy, count)?, heads(dx, count)?);
                            rms_norm_backward(b, &x, norm_w, &dy, &dx, &rstd, c.rms_eps, form, false)?;
                            if let Some(g) = grad {
                                rms_norm_backward_weight(b, &x, &dy, &rstd, g, true)?;
                            }
                        }
                    }
                    None => {
                        rope_backward(b, &dq, &pos, rope, rope_at(nh, qd, 0), &dq_raw)?;
                        rope_backward(b, &dk, &pos, rope, rope_at(nkv, kd, 0), &dk_raw)?;
                    }
                }
                self.project_backward(b, n, (l, Proj::Q), &xn, &dq_raw, &dxn, false)?;
                self.project_backward(b, n, (l, Proj::K), &xn, &dk_raw, &dxn, true)?;
                ((dq_raw, cols(qd, 0)), (dk_raw, cols(kd, 0)))
            }
            _ => {
                let dqk = v(&w.dqk, &[n, qd + kd])?;
                rope_backward(b, &dq, &pos, rope, rope_at(nh, qd + kd, 0), &dqk)?;
                rope_backward(b, &dk, &pos, rope, rope_at(nkv, qd + kd, qd), &dqk)?;
                self.project_backward(b, n, (l, Proj::Qk), &xn, &dqk, &dxn, false)?;
                ((dqk.clone(), cols(qd + kd, 0)), (dqk, cols(qd + kd, qd)))
            }
        };
        let dv_flat = dv.view(0, &[n, kd])?;
        self.project_backward(b, n, (l, Proj::V), &xn, &dv_flat, &dxn, true)?;
        for (target, dy, at) in [
            (LoraTarget::Q, &dq_proj.0, dq_proj.1),
            (LoraTarget::K, &dk_proj.0, dk_proj.1),
            (LoraTarget::V, &dv_flat, cols(kd, 0)),
        ] {
            if let Some(p) = self.lora.get(l, target) {
                self.lora_backward(b, (n, l), p, &xn, dy, at, &dxn)?;
            }
        }
        if let Some((g, gw)) = gate {
            // logits = xn·Wᵀ + b: dW += dlᵀ·xn, db += dlᵀ·1, dxn += dl·W.
            let dl = v(&gw.dlogits, &[n, qd])?;
            let ones = v(&self.ones, &[n, 1])?;
            matmul_dense_strided(b, (&dl, None), &xn, (&g.w.g, None), DenseLayout::Tn, (qd, h, n), 1.0, true)?;
            matmul_dense_strided(b, (&dl, None), &ones, (&g.b.g, None), DenseLayout::Tn, (qd, 1, n), 1.0, true)?;
            matmul_dense_strided(b, (&dl, None), &g.w.w, (&dxn, None), DenseLayout::Nn, (n, h, qd), 1.0, true)?;
        }
        let x = v(&self.xs[l], &[n, h])?;
        rms_norm_backward(b, &x, self.norm(l, true), &dxn, &dx, &rstd, c.rms_eps, form, true)?;
        self.norm_weight_backward(b, l, true, &x, &dxn, &rstd)
    }
}
