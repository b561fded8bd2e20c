//! The `llama` family of decoders (SmolLM2, Llama 2/3, DeepSeek-R1-Distill-Llama, TinyLlama …,
//! and with their options qwen2, qwen3 and gemma3): pre-norm decoder blocks of RMSNorm → GQA
//! attention with RoPE → residual, RMSNorm → gated MLP → residual; final RMSNorm and a
//! (possibly tied) output head. The options: Q/K/V biases (qwen2), per-head QK-norm (qwen3,
//! gemma3), Gemma 3's scaled embedding, GELU-tanh gate, "sandwich" norms on the attention
//! and MLP outputs, and interleaved sliding-window layers with their own RoPE base; and
//! gated attention (qwen3next: an elementwise σ(gate) on the attention output, the gate logits
//! packed into q_proj beside each head's query).
//!
//! Weights stay in their GGUF block format on the GPU (`ops::QuantWeight`); activations are the
//! path's dtype (f32, or f16 storage with f32 accumulation). Q|K (and gate|up) are stacked
//! into one weight where their formats agree, so a block records 2 matmuls fewer.
//!
//! One forward pass at a time: [`LlamaModel::forward`] and [`LlamaModel::decode`] write their
//! inputs into the model's scratch, record every layer into one [`Batch`] and submit it; the
//! logits stay on the GPU ([`LlamaModel::logits`]) for the sampler or a readback.

mod load;
mod lora;
mod train;
mod trained;

use std::sync::Arc;

use super::config::ModelConfig;
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::activation::{gated_activation_forward, gated_activation_fused_forward};
use crate::ops::add::add_inplace;
use crate::ops::attention::{
    attention_decode_forward_with, attention_prefill_forward_with, kv_write, kv_write_chunk, AttentionConfig,
    AttentionInputs, CacheSeq, GateInput, GateMode, KvCache, KvCacheKind,
};
use crate::ops::embedding::embedding_quant_scaled_forward;
use crate::ops::matmul::{matmul_forward, matmul_glu_forward, GEMV_MAX_M};
use crate::ops::rope::{rope_forward, RopeInput};
use crate::ops::{rms_norm::rms_norm_forward, NormWeight, QuantWeight, RopeTable};

pub use load::LoadPlan;
pub use lora::{Lora, LoraConfig, LoraPair, LoraTarget};
pub use train::{HiddenAlignment, StepReport, TeacherRow, TopK, Trainer};

/// Choices made when loading a model.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Activation and KV-cache dtype; `None` = f32 (the exact path). f16 halves memory traffic.
    pub dtype: Option<DType>,
    /// Positions one sequence can hold (KV cache slots); `None` = min(trained context, 4096).
    pub context: Option<usize>,
    /// Sequences decoded together (KV cache sequences and the decode batch), at most 8.
    pub max_batch: usize,
    /// Tokens per prefill chunk (sizes the scratch; longer prompts go in several chunks).
    pub chunk: usize,
    /// Refuse to load when weights + KV cache + scratch exceed this many bytes.
    pub memory_budget: Option<u64>,
    /// What happens when a sequence outgrows `context`.
    pub overflow: Overflow,
}

/// The context-overflow policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// A request past the context is refused (`PupilError::ContextOverflow`).
    Error,
    /// StreamingLLM: the cache keeps the first `sink_tokens` positions and the last
    /// `context − sink_tokens`; generation goes on indefinitely with flat memory. Keys are cached
    /// unrotated and rotated at cache-relative positions inside the attention kernels.
    Streaming { sink_tokens: usize },
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            dtype: None,
            context: None,
            max_batch: 1,
            chunk: 128,
            memory_budget: None,
            overflow: Overflow::Error,
        }
    }
}

/// A projection: one stacked weight, or separate ones when their GGUF formats differ.
enum Stacked {
    One(QuantWeight),
    Two(QuantWeight, QuantWeight),
}

struct Layer {
    attn_norm: Tensor,
    /// Q|K rows stacked (Q first); always two weights for a streaming model (raw Q and K go
    /// straight to the attention kernels, which rotate them).
    qk: Stacked,
    /// Stacked Q|K bias (with `Stacked::One`), or the Q and K biases apart.
    qk_bias: Option<Tensor>,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    /// Per-head RMSNorm weights of Q and K, applied before RoPE (qwen3; Q and K then apart).
    qk_norm: Option<(Tensor, Tensor)>,
    /// Output-gate projection (gated attention: the gate rows of Qwen3-Next's packed q_proj).
    q_gate: Option<QuantWeight>,
    v: QuantWeight,
    v_bias: Option<Tensor>,
    o: QuantWeight,
    ffn_norm: Tensor,
    /// gate|up rows stacked (gate first).
    gate_up: Stacked,
    down: QuantWeight,
    /// Norms of the attention and MLP outputs before the residual add (gemma3).
    post_norms: Option<(Tensor, Tensor)>,
}

/// Per-forward buffers, sized for the largest call (`rows` = max(chunk, max_batch)); smaller
/// calls use views at offset 0. Every tensor is its own buffer: kernels may not bind one
/// buffer twice when one binding is written.
struct Scratch {
    rows: usize,
    ids: Tensor,
    positions: Tensor,
    /// (cache sequence, position) per decode row.
    dest: Tensor,
    x: Tensor,
    xn: Tensor,
    qk: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn: Tensor,
    lse: Tensor,
    /// gate|up outputs (2F), or a QK-norm model's raw K (max(2F, K width) columns).
    gu: Tensor,
    h: Tensor,
    /// K or up projection when its format differs from Q's (gate's).
    aux: Tensor,
    /// An attention or MLP output normalised before the residual add (post-norm models).
    post: Option<Tensor>,
    /// Output-gate logits `[rows, heads, head_dim]` (gated-attention models).
    gate: Option<Tensor>,
    /// The rows whose logits are wanted, copied out of `x`.
    last: Tensor,
    last_n: Tensor,
    logits: Tensor,
}

/// Which positions of a forward pass produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token (generation).
    Last,
    /// Every token (perplexity, scoring); at most `chunk` tokens per call.
    All,
}

pub struct LlamaModel {
    pub config: ModelConfig,
    pub dtype: DType,
    /// Positions per sequence the cache and RoPE table hold.
    pub context: usize,
    pub max_batch: usize,
    pub chunk: usize,
    embd: QuantWeight,
    /// `None`: tied to `embd`.
    output: Option<QuantWeight>,
    output_norm: Tensor,
    layers: Vec<Layer>,
    rope: Arc<RopeTable>,
    attn: AttentionConfig,
    /// Sliding-window layers' RoPE table and attention (gemma3's local layers).
    local: Option<(Arc<RopeTable>, AttentionConfig)>,
    /// Slots of the sliding-window layers' rolling caches (`None`: they keep every position,
    /// when the context is not longer than window + margin).
    local_slots: Option<usize>,
    pub overflow: Overflow,
    scratch: Scratch,
    /// GPU bytes of the weights (for summaries).
    pub weight_bytes: u64,
    /// GPU bytes of the per-forward scratch buffers (RoPE table included).
    pub scratch_bytes: u64,
}

impl LlamaModel {
    /// A KV cache for `n_seqs` (≤ max_batch) sequences of up to `context` positions (the
    /// sliding-window layers of a gemma3 model keep only their window plus a rollback margin).
    pub fn new_cache(&self, ctx: &GpuContext, n_seqs: usize) -> Result<KvCache> {
        if n_seqs == 0 || n_seqs > self.max_batch {
            return Err(PupilError::arg("LlamaModel::new_cache", format!("1..={} sequences", self.max_batch)));
        }
        let c = &self.config;
        KvCache::with_layers(ctx, &self.cache_layers(), n_seqs, c.n_kv_heads, c.head_dim, self.dtype)
    }

    /// Each layer's cache kind and slots.
    fn cache_layers(&self) -> Vec<(KvCacheKind, usize)> {
        let global = match self.overflow {
            Overflow::Error => (KvCacheKind::Full, self.context),
            Overflow::Streaming { sink_tokens } => (KvCacheKind::Streaming { sinks: sink_tokens }, self.context),
        };
        (0..self.config.n_layers)
            .map(|i| match self.local_slots {
                Some(slots) if self.config.layer_window(i).is_some() => (KvCacheKind::Rolling, slots),
                _ => global,
            })
            .collect()
    }

    /// GPU bytes of a KV cache for `n_seqs` sequences ([`new_cache`](Self::new_cache)).
    pub fn cache_bytes(&self, n_seqs: usize) -> u64 {
        let c = &self.config;
        let slots: usize = self.cache_layers().iter().map(|l| l.1).sum();
        (2 * n_seqs * slots * c.n_kv_heads * c.head_dim) as u64 * self.dtype.size_bytes()
    }

    /// Whether a cache holding `held` positions can return to `len` (< `held`) under this
    /// model's rolling layers: the next query at `len` needs the `window − 1` keys before it,
    /// and a rolling layer of S slots has overwritten everything before `held − S` (returning to
    /// 0 needs nothing). Full and streaming caches are the session's business.
    pub fn rolling_layers_allow_rollback(&self, held: usize, len: usize) -> bool {
        match (self.local_slots, &self.config.sliding_window) {
            (Some(slots), Some(sw)) => len == 0 || held <= slots || held - len < slots + 2 - sw.window,
            _ => true,
        }
    }

    /// Logits of the last forward: `[rows, vocab]` (rows = 1 for [`Logits::Last`], the number of
    /// tokens for [`Logits::All`], the batch for [`decode`](Self::decode)).
    pub fn logits(&self, rows: usize) -> Result<Tensor> {
        self.scratch.logits.view(0, &[rows, self.config.vocab_size])
    }

    fn check_tokens(&self, op: &'static str, ids: &[u32]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(PupilError::arg(
                op,
                format!("token id {bad} outside the vocabulary of {}", self.config.vocab_size),
            ));
        }
        Ok(())
    }

    /// Run `ids` (at most `chunk` tokens) of cache sequence `seq` at positions `pos0..`: their
    /// keys and values join the cache, and the logits of the last token (or all) are left in
    /// [`logits`](Self::logits). The cache must already hold positions `0..pos0`.
    pub fn forward(
        &self,
        ctx: &GpuContext,
        cache: &KvCache,
        seq: usize,
        pos0: usize,
        ids: &[u32],
        want: Logits,
    ) -> Result<()> {
        const OP: &str = "LlamaModel::forward";
        let m = ids.len();
        if m == 0 || m > self.scratch.rows {
            return Err(PupilError::arg(OP, format!("1..={} tokens per call, got {m}", self.scratch.rows)));
        }
        if pos0 + m > self.context && self.overflow == Overflow::Error {
            return Err(PupilError::ContextOverflow { needed: pos0 + m, context: self.context });
        }
        if u32::try_from(pos0 + m).is_err() {
            return Err(PupilError::arg(OP, "positions past u32"));
        }
        self.check_tokens(OP, ids)?;
        let sc = &self.scratch;
        sc.ids.view(0, &[m])?.write_bytes(ctx, bytemuck::cast_slice(ids))?;
        let pos: Vec<u32> = (pos0..pos0 + m).map(|p| p as u32).collect();
        sc.positions.view(0, &[m])?.write_bytes(ctx, bytemuck::cast_slice(&pos))?;
        let mut b = Batch::new(ctx);
        self.record(&mut b, cache, m, Step::Prefill { seq, pos0 })?;
        let (first, rows) = match want {
            Logits::Last => (m - 1, 1),
            Logits::All => (0, m),
        };
        self.record_head(&mut b, first, rows)?;
        b.submit();
        Ok(())
    }

    /// One new token for each of several sequences: `steps` = (cache sequence, position,
    /// token), at most `max_batch`. Logits `[steps, vocab]` are left in [`logits`](Self::logits).
    pub fn decode(&self, ctx: &GpuContext, cache: &KvCache, steps: &[(usize, usize, u32)]) -> Result<()> {
        const OP: &str = "LlamaModel::decode";
        let m = steps.len();
        if m == 0 || m > self.max_batch.min(cache.n_seqs) {
            return Err(PupilError::arg(
                OP,
                format!("1..={} sequences per step, got {m}", self.max_batch.min(cache.n_seqs)),
            ));
        }
        for (i, &(seq, pos, _)) in steps.iter().enumerate() {
            if seq >= cache.n_seqs || steps[..i].iter().any(|s| s.0 == seq) {
                return Err(PupilError::arg(OP, format!("sequence {seq} missing from the cache or repeated")));
            }
            if pos >= self.context && self.overflow == Overflow::Error {
                return Err(PupilError::ContextOverflow { needed: pos + 1, context: self.context });
            }
            if u32::try_from(pos).is_err() {
                return Err(PupilError::arg(OP, "positions past u32"));
            }
        }
        let ids: Vec<u32> = steps.iter().map(|s| s.2).collect();
        self.check_tokens(OP, &ids)?;
        let sc = &self.scratch;
        sc.ids.view(0, &[m])?.write_bytes(ctx, bytemuck::cast_slice(&ids))?;
        let pos: Vec<u32> = steps.iter().map(|s| s.1 as u32).collect();
        sc.positions.view(0, &[m])?.write_bytes(ctx, bytemuck::cast_slice(&pos))?;
        let dest: Vec<u32> = steps.iter().flat_map(|s| [s.0 as u32, s.1 as u32]).collect();
        sc.dest.view(0, &[m, 2])?.write_bytes(ctx, bytemuck::cast_slice(&dest))?;
        let mut b = Batch::new(ctx);
        self.record(&mut b, cache, m, Step::Decode)?;
        self.record_head(&mut b, 0, m)?;
        b.submit();
        Ok(())
    }

    /// Every block for `m` rows, leaving the residual stream in `scratch.x`.
    fn record(&self, b: &mut Batch, cache: &KvCache, m: usize, step: Step) -> Result<()> {
        let c = &self.config;
        let (h, f, hd) = (c.hidden, c.ffn_hidden, c.head_dim);
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let (qd, kd) = (nh * hd, nkv * hd);
        let sc = &self.scratch;
        let v = |t: &Tensor, shape: &[usize]| t.view(0, shape);
        let (ids, positions, x, xn) =
            (v(&sc.ids, &[m])?, v(&sc.positions, &[m])?, v(&sc.x, &[m, h])?, v(&sc.xn, &[m, h])?);
        let (qk, q, k, vv) =
            (v(&sc.qk, &[m, qd + kd])?, v(&sc.q, &[m, nh, hd])?, v(&sc.k, &[m, nkv, hd])?, v(&sc.v, &[m, nkv, hd])?);
        let (attn, lse, gu, hh) =
            (v(&sc.attn, &[m, qd])?, v(&sc.lse, &[m, nh])?, v(&sc.gu, &[m, 2 * f])?, v(&sc.h, &[m, f])?);
        let attn_heads = attn.view(0, &[m, nh, hd])?;
        let aux_k = v(&sc.aux, &[m, kd])?;
        embedding_quant_scaled_forward(b, &ids, &self.embd, c.embedding_scale.unwrap_or(1.0), &x)?;
        for (li, l) in self.layers.iter().enumerate() {
            let (rope, attn_cfg) = match &self.local {
                Some((rope, cfg)) if c.layer_window(li).is_some() => (rope, cfg),
                _ => (&self.rope, &self.attn),
            };
            rms_norm_forward(b, &x, &l.attn_norm, &xn, c.rms_eps, NormWeight::Plain)?;
            let (qk_row, q_in, k_in) = match &l.qk {
                Stacked::One(w) => {
                    matmul_forward(b, &xn, w, l.qk_bias.as_ref(), &qk, false)?;
                    (qd + kd, &qk, &qk)
                }
                Stacked::Two(wq, wk) => {
                    let streaming = self.attn.streaming.is_some();
                    // Streaming: raw Q and K straight into the attention inputs (the kernels
                    // rotate them at cache-relative positions); else into staging for RoPE.
                    let (q_out, k_out) = if streaming {
                        (q.view(0, &[m, qd])?, k.view(0, &[m, kd])?)
                    } else {
                        (qk.view(0, &[m, qd])?, aux_k.clone())
                    };
                    match &l.qk_norm {
                        None => {
                            matmul_forward(b, &xn, wq, l.q_bias.as_ref(), &q_out, false)?;
                            matmul_forward(b, &xn, wk, l.k_bias.as_ref(), &k_out, false)?;
                        }
                        Some((qn, kn)) => {
                            // Project into buffers free until the attention output and the MLP
                            // (`attn`, `gu`), then normalise each head into where RoPE (or the
                            // streaming kernels) read: a kernel may not read and write one buffer.
                            let (q_raw, k_raw) = (attn.view(0, &[m, qd])?, v(&sc.gu, &[m, kd])?);
                            matmul_forward(b, &xn, wq, l.q_bias.as_ref(), &q_raw, false)?;
                            matmul_forward(b, &xn, wk, l.k_bias.as_ref(), &k_raw, false)?;
                            let heads = |t: &Tensor, n: usize| t.view(0, &[m * n, hd]);
                            rms_norm_forward(
                                b,
                                &heads(&q_raw, nh)?,
                                qn,
                                &heads(&q_out, nh)?,
                                c.rms_eps,
                                NormWeight::Plain,
                            )?;
                            rms_norm_forward(
                                b,
                                &heads(&k_raw, nkv)?,
                                kn,
                                &heads(&k_out, nkv)?,
                                c.rms_eps,
                                NormWeight::Plain,
                            )?;
                        }
                    }
                    (0, &qk, &aux_k)
                }
            };
            if self.attn.streaming.is_none() {
                // Rotate Q and K out of the projection rows into contiguous heads.
                let (q_stride, k_stride, k_off) = if qk_row > 0 { (qk_row, qk_row, qd) } else { (qd, kd, 0) };
                let qin = RopeInput { tokens: m, heads: nh, head_dim: hd, stride: q_stride, offset: 0 };
                let kin = RopeInput { tokens: m, heads: nkv, head_dim: hd, stride: k_stride, offset: k_off };
                rope_forward(b, q_in, &positions, rope, qin, &q)?;
                rope_forward(b, k_in, &positions, rope, kin, &k)?;
            }
            matmul_forward(b, &xn, &l.v, l.v_bias.as_ref(), &vv, false)?;
            let gate_logits = match (&l.q_gate, &sc.gate) {
                (Some(w), Some(g)) => {
                    let g = v(g, &[m, nh, hd])?;
                    matmul_forward(b, &xn, w, None, &g.view(0, &[m, qd])?, false)?;
                    Some(g)
                }
                _ => None,
            };
            // The attention kernels apply σ(gate) in their epilogue.
            let gate = gate_logits.as_ref().map(|g| GateInput::contiguous(g, GateMode::Elementwise, nh, hd));
            match step {
                Step::Prefill { seq, pos0 } => {
                    let at = Some(CacheSeq { cache, layer: li, seq });
                    let inputs = AttentionInputs { gate, doc_start: None };
                    attention_prefill_forward_with(b, attn_cfg, &q, &k, &vv, at, pos0, &attn_heads, &lse, inputs)?;
                    kv_write_chunk(b, cache, li, seq, pos0, &k, &vv)?;
                }
                Step::Decode => {
                    let dest = v(&sc.dest, &[m, 2])?;
                    let (k2, v2) = (k.view(0, &[m, kd])?, vv.view(0, &[m, kd])?);
                    kv_write(b, cache, li, &k2, &v2, &dest)?;
                    attention_decode_forward_with(b, attn_cfg, &q, &dest, cache, li, &attn_heads, gate)?;
                }
            }
            // Without post-norms the output projection accumulates straight into the residual;
            // with them it goes through `xn` (free once Q, K, V are projected) and its norm.
            let post = |b: &mut Batch, out: &Tensor, norm: &Tensor| -> Result<()> {
                let t =
                    sc.post.as_ref().ok_or_else(|| PupilError::arg("LlamaModel::forward", "no post-norm scratch"))?;
                let t = v(t, &[m, h])?;
                rms_norm_forward(b, out, norm, &t, c.rms_eps, NormWeight::Plain)?;
                add_inplace(b, &x, &t)
            };
            match &l.post_norms {
                None => matmul_forward(b, &attn, &l.o, None, &x, true)?,
                Some((attn_post, _)) => {
                    matmul_forward(b, &attn, &l.o, None, &xn, false)?;
                    post(b, &xn, attn_post)?;
                }
            }
            rms_norm_forward(b, &x, &l.ffn_norm, &xn, c.rms_eps, NormWeight::Plain)?;
            match &l.gate_up {
                Stacked::One(w) if m <= GEMV_MAX_M && w.parts.len() == 1 => {
                    matmul_glu_forward(b, &xn, w, c.activation, &hh)?
                }
                Stacked::One(w) => {
                    matmul_forward(b, &xn, w, None, &gu, false)?;
                    gated_activation_fused_forward(b, c.activation, &gu, &hh)?;
                }
                Stacked::Two(wg, wu) => {
                    let (g, u) = (gu.view(0, &[m, f])?, v(&sc.aux, &[m, f])?);
                    matmul_forward(b, &xn, wg, None, &g, false)?;
                    matmul_forward(b, &xn, wu, None, &u, false)?;
                    gated_activation_forward(b, c.activation, &g, &u, &hh)?;
                }
            }
            match &l.post_norms {
                None => matmul_forward(b, &hh, &l.down, None, &x, true)?,
                Some((_, ffn_post)) => {
                    matmul_forward(b, &hh, &l.down, None, &xn, false)?;
                    post(b, &xn, ffn_post)?;
                }
            }
        }
        Ok(())
    }

    /// Final norm and output head over rows `first..first + rows` of the residual stream.
    fn record_head(&self, b: &mut Batch, first: usize, rows: usize) -> Result<()> {
        let c = &self.config;
        let sc = &self.scratch;
        let h = c.hidden;
        // Copies need only 4-byte alignment; a view bound to a kernel would need 256.
        let src = sc.x.view(first * h, &[rows, h])?;
        let last = sc.last.view(0, &[rows, h])?;
        b.copy(&src, &last)?;
        b.next_pass();
        let last_n = sc.last_n.view(0, &[rows, h])?;
        rms_norm_forward(b, &last, &self.output_norm, &last_n, c.rms_eps, NormWeight::Plain)?;
        let head = self.output.as_ref().unwrap_or(&self.embd);
        matmul_forward(b, &last_n, head, None, &self.logits(rows)?, false)
    }
}

#[derive(Clone, Copy)]
enum Step {
    Prefill { seq: usize, pos0: usize },
    Decode,
}
