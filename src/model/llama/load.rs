//! Loading a llama model: plan every allocation from the GGUF header alone, refuse what will
//! not fit before the first allocation, then read, repack and upload one tensor at a time from
//! a [`ModelSource`] (peak host memory: about the largest tensor, or a stacked pair).

use std::sync::Arc;

use super::{Layer, LlamaModel, ModelOptions, Overflow, Scratch, Stacked};
use crate::error::{PupilError, Result};
use crate::gpu::{DType, GpuContext, Tensor};
use crate::model::config::{ModelConfig, RopeScaling};
use crate::model::gguf::{parse_header, GgufHeader, TensorInfo};
use crate::model::source::{now_or_never, read_header, ModelSource};
use crate::model::split::split_info;
use crate::ops::attention::{AttentionConfig, Streaming};
use crate::ops::matmul::GEMV_MAX_M;
use crate::ops::qweight::gpu_layout;
use crate::ops::{QuantWeight, RopeConfig, RopeTable};
use crate::quant::{dequantize, QuantType};

/// Bytes a repacked GGUF weight takes on the GPU.
fn quant_bytes(ty: QuantType, rows: usize, cols: usize) -> u64 {
    let (block, qw, sw) = gpu_layout(ty);
    (rows * cols.div_ceil(block) * (qw + sw) * 4) as u64
}

/// Looks tensors up by name and checks their shapes before anything is allocated.
struct Tensors<'a> {
    h: &'a GgufHeader,
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

/// Positions a sliding-window layer's rolling cache keeps beyond its window, so that a session
/// can roll back (a chat turn re-tokenised differently, a regenerated answer) by this many
/// tokens without recomputing the prompt.
pub const LOCAL_ROLLBACK_MARGIN: usize = 128;

/// Resolved sizes of a load: (dtype, context, rows of scratch, sliding-window layers' slots).
struct Sizes {
    dtype: DType,
    context: usize,
    rows: usize,
    /// `Some(window + margin)` when that is less than the context: those layers roll.
    local_slots: Option<usize>,
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
    if dtype == DType::F16 && cfg.needs_f32_activations() {
        return Err(PupilError::Unsupported(format!(
            "f16 activations for {}: its residual stream exceeds f16's range; load it with f32",
            cfg.architecture
        )));
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
        if cfg.sliding_window.is_some() {
            return Err(PupilError::Unsupported(format!(
                "streaming past the context for {} (interleaved sliding-window layers); use the error policy",
                cfg.architecture
            )));
        }
        if !cfg.n_rot.is_multiple_of(8) {
            return Err(PupilError::Unsupported(format!(
                "streaming attention with n_rot {} (needs a multiple of 8)",
                cfg.n_rot
            )));
        }
    }
    let local_slots = cfg.sliding_window.as_ref().map(|sw| sw.window + LOCAL_ROLLBACK_MARGIN).filter(|&s| s < context);
    Ok(Sizes { dtype, context, rows: opts.chunk.max(opts.max_batch), local_slots })
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
            (n("attn_q"), cfg.q_rows(), h),
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
        t.vector(&n(cfg.ffn_norm_name()), h)?;
        weights += 2 * h as u64 * el;
        if cfg.post_norms {
            t.vector(&n("post_attention_norm"), h)?;
            t.vector(&n("post_ffw_norm"), h)?;
            weights += 2 * h as u64 * el;
        }
        if cfg.qk_norm {
            t.vector(&n("attn_q_norm"), hd)?;
            t.vector(&n("attn_k_norm"), hd)?;
            weights += 2 * hd as u64 * el;
        }
    }
    let r = s.rows as u64;
    let kv_layer = (max_batch * s.context * kd) as u64 * el;
    let buffers = [
        ("one layer's K (or V) cache (lower the context)", kv_layer),
        ("the RoPE table (lower the context)", (s.context * cfg.n_rot) as u64 * 4),
        ("the logits scratch (lower the chunk)", r * cfg.vocab_size as u64 * el),
        // gate|up outputs; QK-norm models also project K into it, however wide K is.
        ("the MLP scratch (lower the chunk)", r * (2 * f).max(kd) as u64 * el),
    ];
    let largest = buffers.iter().max_by_key(|b| b.1).map(|b| (b.0.to_string(), b.1)).unwrap_or_default();
    let local_rope = if cfg.sliding_window.is_some() { buffers[1].1 } else { 0 };
    let post = if cfg.post_norms { r * h as u64 * el } else { 0 };
    let gate = if cfg.output_gate { r * qd as u64 * el } else { 0 };
    let scratch = buffers[1..].iter().map(|b| b.1).sum::<u64>()
        + local_rope
        + post
        + gate
        + r * 4 * 4
        + r * el * (4 * h + (qd + kd) + 2 * qd + 2 * kd + 2 * f.max(kd)) as u64
        + r * cfg.n_heads as u64 * 4;
    let kv = (0..cfg.n_layers)
        .map(|i| match s.local_slots {
            Some(slots) if cfg.layer_window(i).is_some() => (max_batch * slots * kd) as u64 * el,
            _ => kv_layer,
        })
        .sum::<u64>()
        * 2;
    Ok((LoadPlan { weight_bytes: weights, kv_cache_bytes: kv, scratch_bytes: scratch }, largest))
}

impl LlamaModel {
    /// What loading `file` with `opts` would allocate; errors as [`load`](Self::load) would,
    /// without allocating anything.
    pub fn plan(ctx: &GpuContext, file: &[u8], opts: &ModelOptions) -> Result<LoadPlan> {
        Self::plan_with_header(ctx, &parse_header(file)?, opts)
    }

    /// [`plan`](Self::plan) from a header already read.
    pub fn plan_with_header(ctx: &GpuContext, h: &GgufHeader, opts: &ModelOptions) -> Result<LoadPlan> {
        let cfg = ModelConfig::from_gguf(h)?;
        let s = resolve(ctx, &cfg, opts)?;
        Ok(plan(&Tensors { h }, &cfg, &s, opts.max_batch)?.0)
    }

    /// Load a GGUF model held in memory: [`load_from`](Self::load_from) over the bytes, which
    /// never waits.
    pub fn load(
        ctx: &GpuContext,
        file: &[u8],
        opts: &ModelOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LlamaModel> {
        now_or_never(Self::load_from(ctx, file, opts, progress))
            .unwrap_or_else(|| Err(PupilError::arg("LlamaModel::load", "an in-memory read did not complete")))
    }

    /// Load a GGUF model from `source`, reading the header and then each tensor once.
    /// `progress(done, total)` reports weight bytes uploaded.
    pub async fn load_from<S: ModelSource + ?Sized>(
        ctx: &GpuContext,
        source: &S,
        opts: &ModelOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LlamaModel> {
        let h = read_header(source).await?;
        Self::load_with_header(ctx, &h, source, opts, progress).await
    }

    /// [`load_from`](Self::load_from) with the header already read ([`read_header`]; the
    /// tokenizer and chat template need only it). Every tensor's presence, shape and size,
    /// and the whole footprint, are checked before the first GPU allocation.
    pub async fn load_with_header<S: ModelSource + ?Sized>(
        ctx: &GpuContext,
        h: &GgufHeader,
        source: &S,
        opts: &ModelOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LlamaModel> {
        if let Some((no, count)) = split_info(h) {
            return Err(PupilError::Format(format!(
                "this file is shard {} of {count} of a split GGUF: load every shard together (model::read_split; \
                 the CLI finds the others from any shard's name)",
                no + 1
            )));
        }
        if source.len() < h.file_size() {
            return Err(PupilError::Truncated { what: "GGUF file".into(), needed: h.file_size(), have: source.len() });
        }
        let cfg = ModelConfig::from_gguf(h)?;
        let s = resolve(ctx, &cfg, opts)?;
        let t = Tensors { h };
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
        let mut loader = Loader { ctx, t, source, dtype: s.dtype, done: 0, total: plan.weight_bytes, progress };
        let model = loader.upload(&cfg, &s, opts, plan.scratch_bytes).await?;
        (loader.progress)(loader.total, loader.total);
        Ok(model)
    }
}

/// One load in progress: reads tensors from the source as they are uploaded.
struct Loader<'a, S: ?Sized> {
    ctx: &'a GpuContext,
    t: Tensors<'a>,
    source: &'a S,
    dtype: DType,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

fn stacked_bytes(s: &Stacked) -> u64 {
    match s {
        Stacked::One(w) => w.gpu_bytes(),
        Stacked::Two(a, b) => a.gpu_bytes() + b.gpu_bytes(),
    }
}

impl<S: ModelSource + ?Sized> Loader<'_, S> {
    fn report(&mut self, bytes: u64) {
        self.done += bytes;
        (self.progress)(self.done.min(self.total), self.total);
    }

    /// The tensor's GGUF bytes (the header checked that they lie inside the file).
    async fn bytes(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        self.source.read_at(self.t.h.data_offset + t.offset, t.size).await
    }

    async fn floats(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let v = dequantize(t.ty, &self.bytes(t).await?, t.n_elements() as usize)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(PupilError::Format(format!("tensor `{}` holds a non-finite value at {i}", t.name)));
        }
        Ok(v)
    }

    async fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QuantWeight> {
        let info = self.t.matrix(name, rows, cols)?;
        let w = QuantWeight::upload(self.ctx, info.ty, rows, cols, &self.bytes(info).await?)?;
        self.report(w.gpu_bytes());
        Ok(w)
    }

    /// A norm weight in the path's dtype.
    async fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        let info = self.t.vector(name, len)?;
        Tensor::from_f32(self.ctx, &self.floats(info).await?, &[len], self.dtype)
    }

    /// Two projections of the same input as one weight (rows of `a`, then `b`) when their
    /// formats agree and `apart` is false.
    async fn stacked(
        &mut self,
        (a, ar): (&str, usize),
        (b, br): (&str, usize),
        cols: usize,
        apart: bool,
    ) -> Result<Stacked> {
        let (ia, ib) = (self.t.matrix(a, ar, cols)?, self.t.matrix(b, br, cols)?);
        let s = if ia.ty == ib.ty && !apart {
            let (da, db) = (self.bytes(ia).await?, self.bytes(ib).await?);
            Stacked::One(QuantWeight::upload_concat(self.ctx, ia.ty, cols, &[(ar, &da), (br, &db)])?)
        } else {
            let wa = QuantWeight::upload(self.ctx, ia.ty, ar, cols, &self.bytes(ia).await?)?;
            Stacked::Two(wa, QuantWeight::upload(self.ctx, ib.ty, br, cols, &self.bytes(ib).await?)?)
        };
        self.report(stacked_bytes(&s));
        Ok(s)
    }

    /// A gated-attention model's `attn_q` (per head: head_dim query rows, then head_dim gate
    /// rows, as Qwen3-Next's q_proj packs them) as two weights, the queries' and the gates',
    /// each with its heads contiguous: QK-norm and RoPE then see plain query heads, and the gate
    /// logits come out `[tokens, heads, head_dim]`. Rows are whole blocks, so this moves bytes.
    async fn query_and_gate(
        &mut self,
        name: &str,
        heads: usize,
        head_dim: usize,
        cols: usize,
    ) -> Result<(QuantWeight, QuantWeight)> {
        let info = self.t.matrix(name, 2 * heads * head_dim, cols)?;
        let raw = self.bytes(info).await?;
        let row = info.ty.row_bytes(cols)?;
        let (mut q, mut g) = (Vec::with_capacity(raw.len() / 2), Vec::with_capacity(raw.len() / 2));
        for (i, rows) in raw.chunks_exact(row * head_dim).enumerate() {
            if i % 2 == 0 { &mut q } else { &mut g }.extend_from_slice(rows);
        }
        drop(raw);
        let qd = heads * head_dim;
        let query = QuantWeight::upload(self.ctx, info.ty, qd, cols, &q)?;
        let gate = QuantWeight::upload(self.ctx, info.ty, qd, cols, &g)?;
        self.report(query.gpu_bytes() + gate.gpu_bytes());
        Ok((query, gate))
    }

    /// Q|K (and V) biases: stacked like the weights, absent halves zero.
    async fn biases(&self, i: usize, qk: &Stacked, qd: usize, kd: usize) -> Result<[Option<Tensor>; 4]> {
        let (ctx, dt) = (self.ctx, self.dtype);
        let bias = |s: &str, len: usize| self.t.optional_vector(&format!("blk.{i}.{s}.bias"), len);
        let (qb, kb, vb) = (bias("attn_q", qd)?, bias("attn_k", kd)?, bias("attn_v", kd)?);
        let [mut qk_bias, mut q_bias, mut k_bias, mut v_bias] = [None, None, None, None];
        if qb.is_some() || kb.is_some() {
            let qv = match qb {
                Some(b) => self.floats(b).await?,
                None => vec![0.0; qd],
            };
            let kv = match kb {
                Some(b) => self.floats(b).await?,
                None => vec![0.0; kd],
            };
            if let Stacked::One(_) = qk {
                let both: Vec<f32> = qv.iter().chain(&kv).copied().collect();
                qk_bias = Some(Tensor::from_f32(ctx, &both, &[qd + kd], dt)?);
            } else {
                q_bias = Some(Tensor::from_f32(ctx, &qv, &[qd], dt)?);
                k_bias = Some(Tensor::from_f32(ctx, &kv, &[kd], dt)?);
            }
        }
        if let Some(b) = vb {
            v_bias = Some(Tensor::from_f32(ctx, &self.floats(b).await?, &[kd], dt)?);
        }
        Ok([qk_bias, q_bias, k_bias, v_bias])
    }

    async fn upload(
        &mut self,
        cfg: &ModelConfig,
        s: &Sizes,
        opts: &ModelOptions,
        scratch_bytes: u64,
    ) -> Result<LlamaModel> {
        let (h, f, hd) = (cfg.hidden, cfg.ffn_hidden, cfg.head_dim);
        let (qd, kd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let (ctx, dt) = (self.ctx, self.dtype);
        let streaming = matches!(opts.overflow, Overflow::Streaming { .. });
        let embd = self.matrix("token_embd.weight", cfg.vocab_size, h).await?;
        let output =
            if cfg.tied_embeddings { None } else { Some(self.matrix("output.weight", cfg.vocab_size, h).await?) };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let attn_norm = self.vector(&n("attn_norm"), h).await?;
            // A streaming model keeps Q and K apart: raw Q and K go straight to the attention
            // kernels, which rotate them. So does a QK-norm model: each is normalised apart.
            let (qk, q_gate) = if cfg.output_gate {
                let (q, gate) = self.query_and_gate(&n("attn_q"), cfg.n_heads, hd, h).await?;
                (Stacked::Two(q, self.matrix(&n("attn_k"), kd, h).await?), Some(gate))
            } else {
                (self.stacked((&n("attn_q"), qd), (&n("attn_k"), kd), h, streaming || cfg.qk_norm).await?, None)
            };
            let qk_norm = if cfg.qk_norm {
                Some((self.vector(&n("attn_q_norm"), hd).await?, self.vector(&n("attn_k_norm"), hd).await?))
            } else {
                None
            };
            let [qk_bias, q_bias, k_bias, v_bias] = self.biases(i, &qk, qd, kd).await?;
            let v = self.matrix(&n("attn_v"), kd, h).await?;
            let o = self.matrix(&n("attn_output"), h, qd).await?;
            let ffn_norm = self.vector(&n(cfg.ffn_norm_name()), h).await?;
            let gate_up = self.stacked((&n("ffn_gate"), f), (&n("ffn_up"), f), h, false).await?;
            let down = self.matrix(&n("ffn_down"), h, f).await?;
            let post_norms = if cfg.post_norms {
                Some((self.vector(&n("post_attention_norm"), h).await?, self.vector(&n("post_ffw_norm"), h).await?))
            } else {
                None
            };
            layers.push(Layer {
                attn_norm,
                qk,
                qk_bias,
                q_bias,
                k_bias,
                qk_norm,
                q_gate,
                v,
                v_bias,
                o,
                ffn_norm,
                gate_up,
                down,
                post_norms,
            });
        }
        let output_norm = self.vector("output_norm.weight", h).await?;
        let mut rope_cfg = RopeConfig::new(cfg.n_rot, cfg.rope_base, cfg.rope_layout);
        match &cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => rope_cfg.freq_scale = 1.0 / factor,
            RopeScaling::FreqFactors(_) => {
                let info = self.t.vector("rope_freqs.weight", cfg.n_rot / 2)?;
                rope_cfg.freq_factors = Some(self.floats(info).await?);
            }
        }
        let rope = Arc::new(RopeTable::new(ctx, rope_cfg, s.context)?);
        let mut attn = AttentionConfig::new(cfg.n_heads, cfg.n_kv_heads, hd);
        attn.softcap = cfg.attn_softcap;
        // Local layers: their own base and no long-context scaling (HF's rope_local_base_freq).
        let local = match &cfg.sliding_window {
            None => None,
            Some(sw) => {
                let table = RopeTable::new(ctx, RopeConfig::new(cfg.n_rot, sw.rope_base, cfg.rope_layout), s.context)?;
                let mut local_attn = attn.clone();
                local_attn.window = Some(sw.window);
                Some((Arc::new(table), local_attn))
            }
        };
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
            gu: e(&[r, (2 * f).max(kd)], dt)?,
            h: e(&[r, f], dt)?,
            aux: e(&[r, f.max(kd)], dt)?,
            post: if cfg.post_norms { Some(e(&[r, h], dt)?) } else { None },
            gate: if cfg.output_gate { Some(e(&[r, qd], dt)?) } else { None },
            last: e(&[r, h], dt)?,
            last_n: e(&[r, h], dt)?,
            logits: e(&[r, cfg.vocab_size], dt)?,
        };
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
                        + l.post_norms.as_ref().map_or(0, |(a, b)| a.buffer_size() + b.buffer_size())
                        + l.qk_norm.as_ref().map_or(0, |(a, b)| a.buffer_size() + b.buffer_size())
                        + l.q_gate.as_ref().map_or(0, |w| w.gpu_bytes())
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
            local,
            local_slots: s.local_slots,
            overflow: opts.overflow,
            scratch,
            weight_bytes,
            scratch_bytes,
        })
    }
}
