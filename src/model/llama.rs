//! The `llama` architecture (SmolLM2, Llama 2/3, DeepSeek-R1-Distill-Llama, TinyLlama …):
//! pre-norm decoder blocks of RMSNorm → GQA attention with RoPE → residual, RMSNorm → SwiGLU
//! MLP → residual; final RMSNorm and a (possibly tied) output head.
//!
//! Weights stay in their GGUF block format on the GPU (`ops::QuantWeight`); activations are the
//! path's dtype (f32, or f16 storage with f32 accumulation). Q|K (and gate|up) are stacked
//! into one weight where their formats agree, so a block records 2 matmuls fewer.
//!
//! One forward pass at a time: [`LlamaModel::forward`] and [`LlamaModel::decode`] write their
//! inputs into the model's scratch, record every layer into one [`Batch`] and submit it; the
//! logits stay on the GPU ([`LlamaModel::logits`]) for the sampler or a readback.

use std::sync::Arc;

use super::config::{ModelConfig, RopeScaling};
use super::gguf::{parse_header, GgufHeader, TensorInfo};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, GpuContext, Tensor};
use crate::ops::activation::{gated_activation_forward, gated_activation_fused_forward};
use crate::ops::attention::{
    attention_decode_forward, attention_prefill_forward, kv_write, kv_write_chunk, AttentionConfig, CacheSeq, KvCache,
    KvCacheKind, Streaming,
};
use crate::ops::embedding::embedding_quant_forward;
use crate::ops::matmul::{matmul_forward, matmul_glu_forward, GEMV_MAX_M};
use crate::ops::qweight::gpu_layout;
use crate::ops::rope::{rope_forward, RopeInput};
use crate::ops::{rms_norm::rms_norm_forward, Activation, NormWeight, QuantWeight, RopeConfig, RopeTable};
use crate::quant::{dequantize, QuantType};

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
    v: QuantWeight,
    v_bias: Option<Tensor>,
    o: QuantWeight,
    ffn_norm: Tensor,
    /// gate|up rows stacked (gate first).
    gate_up: Stacked,
    down: QuantWeight,
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
    /// gate|up outputs (2F) and the gated product (F).
    gu: Tensor,
    h: Tensor,
    /// K or up projection when its format differs from Q's (gate's).
    aux: Tensor,
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
    pub overflow: Overflow,
    scratch: Scratch,
    /// GPU bytes of the weights (for summaries).
    pub weight_bytes: u64,
}

/// Bytes a repacked GGUF weight takes on the GPU.
fn quant_bytes(ty: QuantType, rows: usize, cols: usize) -> u64 {
    let (block, qw, sw) = gpu_layout(ty);
    (rows * cols.div_ceil(block) * (qw + sw) * 4) as u64
}

/// Looks tensors up by name and checks their shapes before anything is allocated.
struct Tensors<'a> {
    h: &'a GgufHeader,
    file: &'a [u8],
}

impl<'a> Tensors<'a> {
    fn info(&self, name: &str) -> Result<&'a TensorInfo> {
        self.h.tensor(name).ok_or_else(|| PupilError::Format(format!("{} model lacks tensor `{name}`", self.arch())))
    }
    fn arch(&self) -> &str {
        self.h.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("?")
    }
    /// A `[rows, cols]` matrix (GGUF dims `[cols, rows]`).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<&'a TensorInfo> {
        let t = self.info(name)?;
        if t.dims.len() != 2 || t.rows_cols() != (rows, cols) {
            return Err(PupilError::Format(format!(
                "tensor `{name}` has dims {:?}, expected [{cols}, {rows}]",
                t.dims
            )));
        }
        Ok(t)
    }
    fn vector(&self, name: &str, len: usize) -> Result<&'a TensorInfo> {
        let t = self.info(name)?;
        if t.n_elements() != len as u64 || t.dims.iter().filter(|&&d| d != 1).count() > 1 {
            return Err(PupilError::Format(format!("tensor `{name}` has dims {:?}, expected [{len}]", t.dims)));
        }
        Ok(t)
    }
    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<&'a TensorInfo>> {
        match self.h.tensor(name) {
            None => Ok(None),
            Some(_) => self.vector(name, len).map(Some),
        }
    }
    fn bytes(&self, t: &TensorInfo) -> Result<&'a [u8]> {
        self.h.tensor_data(self.file, t)
    }
    fn floats(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let v = dequantize(t.ty, self.bytes(t)?, t.n_elements() as usize)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(PupilError::Format(format!("tensor `{}` holds a non-finite value at {i}", t.name)));
        }
        Ok(v)
    }
}

/// What loading will allocate, checked against the adapter before any allocation.
#[derive(Clone, Debug, Default)]
pub struct LoadPlan {
    pub weight_bytes: u64,
    pub kv_cache_bytes: u64,
    pub scratch_bytes: u64,
}

impl LoadPlan {
    pub fn total(&self) -> u64 {
        self.weight_bytes + self.kv_cache_bytes + self.scratch_bytes
    }
}

/// Resolved sizes of a load: (dtype, context, rows of scratch).
struct Sizes {
    dtype: DType,
    context: usize,
    rows: usize,
}

fn resolve(ctx: &GpuContext, cfg: &ModelConfig, opts: &ModelOptions) -> Result<Sizes> {
    const OP: &str = "LlamaModel::load";
    let dtype = opts.dtype.unwrap_or(DType::F32);
    if !dtype.is_float() {
        return Err(PupilError::arg(OP, format!("activation dtype must be f32 or f16, not {}", dtype.name())));
    }
    if dtype == DType::F16 && !ctx.caps.f16 {
        return Err(PupilError::MissingFeature("shader-f16"));
    }
    let context = opts.context.unwrap_or(cfg.context_length.min(4096));
    if context == 0 {
        return Err(PupilError::arg(OP, "context must be at least 1 position"));
    }
    if opts.max_batch == 0 || opts.max_batch > GEMV_MAX_M {
        return Err(PupilError::arg(OP, format!("max_batch must be 1..={GEMV_MAX_M}, got {}", opts.max_batch)));
    }
    if opts.chunk == 0 {
        return Err(PupilError::arg(OP, "chunk must be at least 1 token"));
    }
    if let Overflow::Streaming { sink_tokens } = opts.overflow {
        if sink_tokens == 0 || sink_tokens + opts.chunk > context {
            return Err(PupilError::arg(
                OP,
                format!(
                    "streaming needs 1 ≤ sink tokens and sinks + chunk ≤ context ({sink_tokens} + {} > {context})",
                    opts.chunk
                ),
            ));
        }
        if !cfg.n_rot.is_multiple_of(8) {
            return Err(PupilError::Unsupported(format!(
                "streaming attention with n_rot {} (needs a multiple of 8)",
                cfg.n_rot
            )));
        }
    }
    Ok(Sizes { dtype, context, rows: opts.chunk.max(opts.max_batch) })
}

/// Bytes of every allocation a load makes, and the largest single buffer (name, bytes).
/// Weights are split into row parts that fit a binding, so only their total matters here.
fn plan(t: &Tensors, cfg: &ModelConfig, s: &Sizes, max_batch: usize) -> Result<(LoadPlan, (String, u64))> {
    let (h, f, hd) = (cfg.hidden, cfg.ffn_hidden, cfg.head_dim);
    let (qd, kd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
    let el = s.dtype.size_bytes();
    let matrix = |name: &str, rows: usize, cols: usize| -> Result<u64> {
        Ok(quant_bytes(t.matrix(name, rows, cols)?.ty, rows, cols))
    };
    let mut weights = matrix("token_embd.weight", cfg.vocab_size, h)?;
    if !cfg.tied_embeddings {
        weights += matrix("output.weight", cfg.vocab_size, h)?;
    }
    t.vector("output_norm.weight", h)?;
    weights += h as u64 * el;
    for i in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        for (name, rows, cols) in [
            (n("attn_q"), qd, h),
            (n("attn_k"), kd, h),
            (n("attn_v"), kd, h),
            (n("attn_output"), h, qd),
            (n("ffn_gate"), f, h),
            (n("ffn_up"), f, h),
            (n("ffn_down"), h, f),
        ] {
            weights += matrix(&name, rows, cols)?;
        }
        t.vector(&n("attn_norm"), h)?;
        t.vector(&n("ffn_norm"), h)?;
        weights += 2 * h as u64 * el;
    }
    let r = s.rows as u64;
    let kv_layer = (max_batch * s.context * kd) as u64 * el;
    let buffers = [
        ("one layer's K (or V) cache (lower the context)", kv_layer),
        ("the RoPE table (lower the context)", (s.context * cfg.n_rot) as u64 * 4),
        ("the logits scratch (lower the chunk)", r * cfg.vocab_size as u64 * el),
        ("the MLP scratch (lower the chunk)", r * 2 * f as u64 * el),
    ];
    let largest = buffers.iter().max_by_key(|b| b.1).map(|b| (b.0.to_string(), b.1)).unwrap_or_default();
    let scratch = buffers[1..].iter().map(|b| b.1).sum::<u64>()
        + r * 4 * 4
        + r * el * (4 * h + (qd + kd) + 2 * qd + 2 * kd + 2 * f.max(kd)) as u64
        + r * cfg.n_heads as u64 * 4;
    let kv = 2 * cfg.n_layers as u64 * kv_layer;
    Ok((LoadPlan { weight_bytes: weights, kv_cache_bytes: kv, scratch_bytes: scratch }, largest))
}

impl LlamaModel {
    /// What loading `file` with `opts` would allocate; errors as [`load`](Self::load) would,
    /// without allocating anything.
    pub fn plan(ctx: &GpuContext, file: &[u8], opts: &ModelOptions) -> Result<LoadPlan> {
        let h = parse_header(file)?;
        let cfg = ModelConfig::from_gguf(&h)?;
        let s = resolve(ctx, &cfg, opts)?;
        Ok(plan(&Tensors { h: &h, file }, &cfg, &s, opts.max_batch)?.0)
    }

    /// Load a GGUF model held in memory. Every tensor's presence, shape and size, and the
    /// whole footprint, are checked before the first GPU allocation. `progress(done, total)`
    /// reports weight bytes uploaded.
    pub fn load(
        ctx: &GpuContext,
        file: &[u8],
        opts: &ModelOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LlamaModel> {
        let h = parse_header(file)?;
        if (file.len() as u64) < h.file_size() {
            return Err(PupilError::Truncated {
                what: "GGUF file".into(),
                needed: h.file_size(),
                have: file.len() as u64,
            });
        }
        let cfg = ModelConfig::from_gguf(&h)?;
        let s = resolve(ctx, &cfg, opts)?;
        let t = Tensors { h: &h, file };
        let (plan, (largest_name, largest)) = plan(&t, &cfg, &s, opts.max_batch)?;
        let limit = ctx.caps.max_buffer_size.min(ctx.caps.max_storage_binding);
        if largest > limit {
            return Err(PupilError::TooLarge { what: largest_name, bytes: largest, limit });
        }
        if let Some(budget) = opts.memory_budget {
            if plan.total() > budget {
                return Err(PupilError::TooLarge {
                    what: format!(
                        "model (weights {} + KV cache {} + scratch {} bytes)",
                        plan.weight_bytes, plan.kv_cache_bytes, plan.scratch_bytes
                    ),
                    bytes: plan.total(),
                    limit: budget,
                });
            }
        }
        Self::upload(ctx, &cfg, &t, s, opts, plan.weight_bytes, progress)
    }

    #[allow(clippy::too_many_arguments)]
    fn upload(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        t: &Tensors,
        s: Sizes,
        opts: &ModelOptions,
        total: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LlamaModel> {
        let (h, f, hd) = (cfg.hidden, cfg.ffn_hidden, cfg.head_dim);
        let (qd, kd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let dt = s.dtype;
        let streaming = matches!(opts.overflow, Overflow::Streaming { .. });
        let done = std::cell::Cell::new(0u64);
        let progress = std::cell::RefCell::new(progress);
        let report = |bytes: u64| {
            done.set(done.get() + bytes);
            (progress.borrow_mut())(done.get().min(total), total);
        };
        let upload = |name: &str, rows: usize, cols: usize| -> Result<QuantWeight> {
            let info = t.matrix(name, rows, cols)?;
            let w = QuantWeight::upload(ctx, info.ty, rows, cols, t.bytes(info)?)?;
            report(w.gpu_bytes());
            Ok(w)
        };
        let vector = |name: &str, len: usize| -> Result<Tensor> {
            let info = t.vector(name, len)?;
            Tensor::from_f32(ctx, &t.floats(info)?, &[len], dt)
        };
        let stacked = |a: &str, ar: usize, b: &str, br: usize, cols: usize, apart: bool| -> Result<Stacked> {
            let (ia, ib) = (t.matrix(a, ar, cols)?, t.matrix(b, br, cols)?);
            if ia.ty == ib.ty && !apart {
                let w = QuantWeight::upload_concat(ctx, ia.ty, cols, &[(ar, t.bytes(ia)?), (br, t.bytes(ib)?)])?;
                Ok(Stacked::One(w))
            } else {
                Ok(Stacked::Two(
                    QuantWeight::upload(ctx, ia.ty, ar, cols, t.bytes(ia)?)?,
                    QuantWeight::upload(ctx, ib.ty, br, cols, t.bytes(ib)?)?,
                ))
            }
        };
        let stacked_bytes = |s: &Stacked| match s {
            Stacked::One(w) => w.gpu_bytes(),
            Stacked::Two(a, b) => a.gpu_bytes() + b.gpu_bytes(),
        };
        let embd = upload("token_embd.weight", cfg.vocab_size, h)?;
        let output = if cfg.tied_embeddings { None } else { Some(upload("output.weight", cfg.vocab_size, h)?) };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let bias = |s: &str, len: usize| t.optional_vector(&format!("blk.{i}.{s}.bias"), len);
            let floats = |b: Option<&TensorInfo>, len: usize| b.map_or(Ok(vec![0.0; len]), |b| t.floats(b));
            let (qb, kb) = (bias("attn_q", qd)?, bias("attn_k", kd)?);
            let qk = stacked(&n("attn_q"), qd, &n("attn_k"), kd, h, streaming)?;
            let (mut qk_bias, mut q_bias, mut k_bias) = (None, None, None);
            if qb.is_some() || kb.is_some() {
                let (qv, kv) = (floats(qb, qd)?, floats(kb, kd)?);
                if let Stacked::One(_) = qk {
                    let both: Vec<f32> = qv.iter().chain(&kv).copied().collect();
                    qk_bias = Some(Tensor::from_f32(ctx, &both, &[qd + kd], dt)?);
                } else {
                    q_bias = Some(Tensor::from_f32(ctx, &qv, &[qd], dt)?);
                    k_bias = Some(Tensor::from_f32(ctx, &kv, &[kd], dt)?);
                }
            }
            let v_bias = match bias("attn_v", kd)? {
                Some(b) => Some(Tensor::from_f32(ctx, &t.floats(b)?, &[kd], dt)?),
                None => None,
            };
            let gate_up = stacked(&n("ffn_gate"), f, &n("ffn_up"), f, h, false)?;
            report(stacked_bytes(&qk) + stacked_bytes(&gate_up));
            let layer = Layer {
                attn_norm: vector(&n("attn_norm"), h)?,
                qk,
                qk_bias,
                q_bias,
                k_bias,
                v: upload(&n("attn_v"), kd, h)?,
                v_bias,
                o: upload(&n("attn_output"), h, qd)?,
                ffn_norm: vector(&n("ffn_norm"), h)?,
                gate_up,
                down: upload(&n("ffn_down"), h, f)?,
            };
            layers.push(layer);
        }
        let output_norm = vector("output_norm.weight", h)?;
        let mut rope_cfg = RopeConfig::new(cfg.n_rot, cfg.rope_base, cfg.rope_layout);
        match &cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => rope_cfg.freq_scale = 1.0 / factor,
            RopeScaling::FreqFactors(_) => {
                let info = t.vector("rope_freqs.weight", cfg.n_rot / 2)?;
                rope_cfg.freq_factors = Some(t.floats(info)?);
            }
        }
        let rope = Arc::new(RopeTable::new(ctx, rope_cfg, s.context)?);
        let r = s.rows;
        let e = |shape: &[usize], dtype| Tensor::empty(ctx, shape, dtype);
        let scratch = Scratch {
            rows: r,
            ids: e(&[r], DType::U32)?,
            positions: e(&[r], DType::U32)?,
            dest: e(&[r, 2], DType::U32)?,
            x: e(&[r, h], dt)?,
            xn: e(&[r, h], dt)?,
            qk: e(&[r, qd + kd], dt)?,
            q: e(&[r, cfg.n_heads, hd], dt)?,
            k: e(&[r, cfg.n_kv_heads, hd], dt)?,
            v: e(&[r, cfg.n_kv_heads, hd], dt)?,
            attn: e(&[r, qd], dt)?,
            lse: e(&[r, cfg.n_heads], DType::F32)?,
            gu: e(&[r, 2 * f], dt)?,
            h: e(&[r, f], dt)?,
            aux: e(&[r, f.max(kd)], dt)?,
            last: e(&[r, h], dt)?,
            last_n: e(&[r, h], dt)?,
            logits: e(&[r, cfg.vocab_size], dt)?,
        };
        (progress.borrow_mut())(total, total);
        let mut attn = AttentionConfig::new(cfg.n_heads, cfg.n_kv_heads, hd);
        if let Overflow::Streaming { sink_tokens } = opts.overflow {
            attn.window = Some(s.context - sink_tokens);
            attn.streaming = Some(Streaming { sink_tokens, rope: Some(rope.clone()) });
        }
        let weight_bytes = embd.gpu_bytes()
            + output.as_ref().map_or(0, |w| w.gpu_bytes())
            + layers
                .iter()
                .map(|l| {
                    stacked_bytes(&l.qk)
                        + stacked_bytes(&l.gate_up)
                        + l.v.gpu_bytes()
                        + l.o.gpu_bytes()
                        + l.down.gpu_bytes()
                        + 2 * l.attn_norm.buffer_size()
                })
                .sum::<u64>();
        Ok(LlamaModel {
            config: cfg.clone(),
            dtype: dt,
            context: s.context,
            max_batch: opts.max_batch,
            chunk: s.rows,
            embd,
            output,
            output_norm,
            layers,
            rope,
            attn,
            overflow: opts.overflow,
            scratch,
            weight_bytes,
        })
    }

    /// A KV cache for `n_seqs` (≤ max_batch) sequences of up to `context` positions.
    pub fn new_cache(&self, ctx: &GpuContext, n_seqs: usize) -> Result<KvCache> {
        if n_seqs == 0 || n_seqs > self.max_batch {
            return Err(PupilError::arg("LlamaModel::new_cache", format!("1..={} sequences", self.max_batch)));
        }
        let c = &self.config;
        let kind = match self.overflow {
            Overflow::Error => KvCacheKind::Full,
            Overflow::Streaming { sink_tokens } => KvCacheKind::Streaming { sinks: sink_tokens },
        };
        KvCache::new(ctx, kind, c.n_layers, n_seqs, self.context, c.n_kv_heads, c.head_dim, self.dtype)
    }

    /// GPU bytes of a KV cache for `n_seqs` sequences ([`new_cache`](Self::new_cache)).
    pub fn cache_bytes(&self, n_seqs: usize) -> u64 {
        let c = &self.config;
        (2 * c.n_layers * n_seqs * self.context * c.n_kv_heads * c.head_dim) as u64 * self.dtype.size_bytes()
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
        embedding_quant_forward(b, &ids, &self.embd, &x)?;
        for (li, l) in self.layers.iter().enumerate() {
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
                    matmul_forward(b, &xn, wq, l.q_bias.as_ref(), &q_out, false)?;
                    matmul_forward(b, &xn, wk, l.k_bias.as_ref(), &k_out, false)?;
                    (0, &qk, &aux_k)
                }
            };
            if self.attn.streaming.is_none() {
                // Rotate Q and K out of the projection rows into contiguous heads.
                let (q_stride, k_stride, k_off) = if qk_row > 0 { (qk_row, qk_row, qd) } else { (qd, kd, 0) };
                let qin = RopeInput { tokens: m, heads: nh, head_dim: hd, stride: q_stride, offset: 0 };
                let kin = RopeInput { tokens: m, heads: nkv, head_dim: hd, stride: k_stride, offset: k_off };
                rope_forward(b, q_in, &positions, &self.rope, qin, &q)?;
                rope_forward(b, k_in, &positions, &self.rope, kin, &k)?;
            }
            matmul_forward(b, &xn, &l.v, l.v_bias.as_ref(), &vv, false)?;
            match step {
                Step::Prefill { seq, pos0 } => {
                    let at = Some(CacheSeq { cache, layer: li, seq });
                    attention_prefill_forward(b, &self.attn, &q, &k, &vv, at, pos0, &attn_heads, &lse)?;
                    kv_write_chunk(b, cache, li, seq, pos0, &k, &vv)?;
                }
                Step::Decode => {
                    let dest = v(&sc.dest, &[m, 2])?;
                    let (k2, v2) = (k.view(0, &[m, kd])?, vv.view(0, &[m, kd])?);
                    kv_write(b, cache, li, &k2, &v2, &dest)?;
                    attention_decode_forward(b, &self.attn, &q, &dest, cache, li, &attn_heads)?;
                }
            }
            matmul_forward(b, &attn, &l.o, None, &x, true)?;
            rms_norm_forward(b, &x, &l.ffn_norm, &xn, c.rms_eps, NormWeight::Plain)?;
            match &l.gate_up {
                Stacked::One(w) if m <= GEMV_MAX_M && w.parts.len() == 1 => {
                    matmul_glu_forward(b, &xn, w, Activation::Silu, &hh)?
                }
                Stacked::One(w) => {
                    matmul_forward(b, &xn, w, None, &gu, false)?;
                    gated_activation_fused_forward(b, Activation::Silu, &gu, &hh)?;
                }
                Stacked::Two(wg, wu) => {
                    let (g, u) = (gu.view(0, &[m, f])?, v(&sc.aux, &[m, f])?);
                    matmul_forward(b, &xn, wg, None, &g, false)?;
                    matmul_forward(b, &xn, wu, None, &u, false)?;
                    gated_activation_forward(b, Activation::Silu, &g, &u, &hh)?;
                }
            }
            matmul_forward(b, &hh, &l.down, None, &x, true)?;
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
