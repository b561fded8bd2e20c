//! Fused causal attention with a KV cache: prefill (a chunk of new tokens of one sequence) and
//! decode (one new token for each of a batch of sequences, split-K "flash decoding").
//! Kernels: `shaders/attention_prefill.wgsl`, `shaders/attention_decode.wgsl`,
//! `shaders/attention_kv_write.wgsl`. Reference: `reference::attention`.
//!
//! The KV cache ([`KvCache`]) holds per layer one K and one V tensor
//! `[n_seqs, slots, n_kv_heads, head_dim]` (the path's dtype). Sequences share each tensor, one
//! block of `slots` rows each. A [`KvCacheKind::Full`] cache has one slot per position (`slots`
//! = capacity); a [`KvCacheKind::Rolling`] cache of `slots` = W keeps only the last W positions
//! (memory O(W), slot = position mod W), for sliding-window layers (the window must be at most
//! `slots`); a [`KvCacheKind::Streaming`] cache keeps positions `0..S` in slots `0..S` forever
//! and rolls the rest through the other `slots − S` (StreamingLLM, below).
//!
//! Order within a step: prefill reads keys before `pos0` from the cache and the chunk's own K/V
//! from its inputs, so record [`attention_prefill_forward`] and then [`kv_write_chunk`] (a
//! rolling cache may overwrite slots the chunk's first queries still need). Decode reads every
//! key from the cache: record [`kv_write`] first, then [`attention_decode_forward`]. Both in one
//! batch are ordered by the compute pass.
//!
//! **StreamingLLM** ([`Streaming`], Xiao et al. 2023): a query at position n sees the first S
//! positions ("attention sinks") and the last W (the window) — `[0, min(S, n+1)) ∪
//! [max(S, n+1−W), n]` — and positions are *cache-relative*: the kept keys get positions
//! 0, 1, … in order and the query the last one, so no position ever exceeds S + W − 1 however
//! long the generation runs. Keys are therefore cached **unrotated** and the kernels rotate q
//! and k themselves (the `ROPE` variants, from a [`RopeTable`] of at least S + W positions):
//! re-rotating stored keys instead would rewrite all W cached keys every step (each moves one
//! cache-relative position down once the cache is full) and round them again each time in f16,
//! while rotating at read time costs a table row per key (decode rotates each key once for all
//! query heads of its block; prefill scores from the unrotated q, k and the table row at their
//! distance, since a RoPE score depends only on the distance). The model must skip its RoPE for
//! such layers and pass raw q and k (and write raw k into the cache). The semantics are per
//! query, so a chunked prefill equals token-by-token decode and any chunking; the window must
//! fit the cache's rolling slots (W ≤ slots − S). Learned gpt-oss `sinks` are a different answer
//! to the same problem and are refused together with StreamingLLM.
//!
//! **Output gate** (gated attention, Qwen3-Next): `Y' = Y ⊙ σ(gate)` with gate logits per
//! element or per head ([`GateInput`], from a matmul the model runs), fused into the epilogue of
//! prefill and of the decode reduction ([`AttentionInputs::gate`]). The log-sum-exp stays that of
//! the ungated softmax. Where a prefill variant has no storage binding left (learned sinks or
//! StreamingLLM RoPE, with a cache: 8 already), the gate runs as a separate in-place pass
//! (`ops::gate::gate_apply_forward`) right after — the same result.
//!
//! **Packed documents** ([`AttentionInputs::doc_start`], prefill without a cache, pos0 = 0):
//! several sequences in one row; `doc_start[t]` (u32) is the index of the first token of token
//! t's document, and t sees only keys in `[doc_start[t], t]` (plus window). RoPE positions
//! restarting per document are the caller's rope positions. Key tiles below every row's document
//! start are skipped, not masked. [`doc_starts`] builds the tensor from document lengths.
//!
//! Storage bindings stay ≤ 8 per kernel (the WebGPU default): prefill binds q, k, v, out, lse and
//! then either the cache K, V and one of {sinks, RoPE table, gate}, or (packed documents, no
//! cache) doc_start and any of {sinks, gate}.

use bytemuck::{Pod, Zeroable};

use std::sync::Arc;

use super::gate::gate_apply_forward;
pub use super::gate::{GateInput, GateMode};
use super::rope::{RopeLayout, RopeTable};
use super::{dtype_and_reduction_variants, elem_grid, expect_dtype, expect_len, float_dtype, kernel, to_u32, WG};
use crate::error::{PupilError, Result};
use crate::gpu::{grid_for, Batch, DType, GpuContext, KernelKey, Tensor};

/// Head dimensions with a compiled kernel variant.
pub const HEAD_DIMS: [usize; 3] = [64, 128, 256];
/// Workgroup sizes: prefill, decode (one key per invocation per tile), decode reduction.
const WG_PREFILL: u32 = 64;
const WG_DECODE: u32 = 128;
const WG_REDUCE: u32 = 64;
/// Query heads one decode workgroup serves (the kernel's MAXH).
const DECODE_HEADS: usize = 8;
/// Decode splits each sequence's keys into about this many chunks ...
const TARGET_CHUNKS: usize = 32;
/// ... of at most this many tiles of WG_DECODE keys each (bounded work per workgroup; also
/// keeps each invocation's loop trip count far below llvmpipe's per-shader cap of 65535).
const MAX_CHUNK_TILES: usize = 4;
/// `window` parameter meaning "no window".
const NO_WINDOW: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheKind {
    /// slot = position; `slots` is the largest number of positions a sequence can hold.
    Full,
    /// slot = position mod `slots`: the last `slots` positions (sliding-window layers).
    Rolling,
    /// StreamingLLM: positions `0..sinks` keep slots `0..sinks`; later positions roll through
    /// the other `slots − sinks` slots. Keys are stored unrotated (see the module doc).
    Streaming { sinks: usize },
}

impl KvCacheKind {
    /// Slots that never roll (the StreamingLLM sinks).
    pub fn fixed_slots(self) -> usize {
        match self {
            KvCacheKind::Streaming { sinks } => sinks,
            _ => 0,
        }
    }
}

/// Per-layer K and V on the GPU, `[n_seqs, slots, n_kv_heads, head_dim]` each. Layers may differ
/// in kind and slots ([`KvCache::with_layers`]): Gemma 3's sliding-window layers keep a rolling
/// window while its global layers keep every position.
pub struct KvCache {
    pub n_seqs: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    kinds: Vec<KvCacheKind>,
    slots: Vec<usize>,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

/// One layer of a [`KvCache`] as the ops see it.
struct CacheLayer<'a> {
    kind: KvCacheKind,
    slots: usize,
    k: &'a Tensor,
    v: &'a Tensor,
}

impl KvCache {
    /// Every layer of one kind and size.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &GpuContext,
        kind: KvCacheKind,
        layers: usize,
        n_seqs: usize,
        slots: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        if layers == 0 {
            return Err(PupilError::shape("KvCache::new", "layers must be positive"));
        }
        Self::with_layers(ctx, &vec![(kind, slots); layers], n_seqs, n_kv_heads, head_dim, dtype)
    }

    /// One `(kind, slots)` per layer.
    pub fn with_layers(
        ctx: &GpuContext,
        layers: &[(KvCacheKind, usize)],
        n_seqs: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        const OP: &str = "KvCache::new";
        if layers.is_empty() || n_seqs == 0 || n_kv_heads == 0 || head_dim == 0 {
            return Err(PupilError::shape(OP, "layers, sequences, slots, heads and head_dim must be positive"));
        }
        if !dtype.is_float() {
            return Err(PupilError::dtype(OP, format!("cache dtype must be f32 or f16, got {}", dtype.name())));
        }
        if dtype == DType::F16 && !ctx.caps.f16 {
            return Err(PupilError::MissingFeature("shader-f16"));
        }
        for &(kind, slots) in layers {
            if slots == 0 {
                return Err(PupilError::shape(OP, "slots must be positive"));
            }
            if kind.fixed_slots() >= slots {
                return Err(PupilError::shape(
                    OP,
                    format!("{slots} slots leave none to roll after {} sinks", kind.fixed_slots()),
                ));
            }
            to_u32(OP, n_seqs * slots * n_kv_heads * head_dim)?;
        }
        let mut k = Vec::with_capacity(layers.len());
        let mut v = Vec::with_capacity(layers.len());
        for &(_, slots) in layers {
            let shape = [n_seqs, slots, n_kv_heads, head_dim];
            k.push(Tensor::empty(ctx, &shape, dtype)?);
            v.push(Tensor::empty(ctx, &shape, dtype)?);
        }
        Ok(KvCache {
            n_seqs,
            n_kv_heads,
            head_dim,
            dtype,
            kinds: layers.iter().map(|l| l.0).collect(),
            slots: layers.iter().map(|l| l.1).collect(),
            k,
            v,
        })
    }

    pub fn n_layers(&self) -> usize {
        self.k.len()
    }

    /// Layer `layer`'s kind (layer 0's when out of range).
    pub fn kind(&self, layer: usize) -> KvCacheKind {
        self.kinds.get(layer).copied().unwrap_or(self.kinds[0])
    }

    /// Layer `layer`'s slots per sequence (layer 0's when out of range).
    pub fn slots(&self, layer: usize) -> usize {
        self.slots.get(layer).copied().unwrap_or(self.slots[0])
    }

    fn layer(&self, op: &'static str, layer: usize) -> Result<CacheLayer<'_>> {
        match (self.k.get(layer), self.v.get(layer)) {
            (Some(k), Some(v)) => Ok(CacheLayer { kind: self.kinds[layer], slots: self.slots[layer], k, v }),
            _ => Err(PupilError::arg(op, format!("layer {layer} of a cache with {} layers", self.k.len()))),
        }
    }

    /// Bytes of layer 0 (K and V).
    pub fn layer_bytes(&self) -> u64 {
        self.k[0].buffer_size() + self.v[0].buffer_size()
    }

    /// Bytes of every layer (K and V).
    pub fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(|t| t.buffer_size()).sum()
    }
}

/// Head layout and masking of an attention layer.
#[derive(Clone, Debug)]
pub struct AttentionConfig {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// 64, 128 or 256.
    pub head_dim: usize,
    /// Logit scale; `None` = 1/sqrt(head_dim).
    pub scale: Option<f32>,
    /// Sliding window W: a query at p sees keys in (p - W, p]. `None` = all earlier keys.
    pub window: Option<usize>,
    /// Logit soft-capping `cap · tanh(s / cap)` (Gemma 2); `None` = off.
    pub softcap: Option<f32>,
    /// Attention sinks (gpt-oss): f32 `[n_heads]`, one learned logit per query head that joins
    /// every softmax without contributing a value. `None` = off.
    pub sinks: Option<Tensor>,
    /// StreamingLLM sink tokens and in-kernel RoPE (needs `window`); `None` = off.
    pub streaming: Option<Streaming>,
}

/// StreamingLLM (see the module doc): the first `sink_tokens` positions stay visible to every
/// query besides the window, at cache-relative positions.
#[derive(Clone)]
pub struct Streaming {
    /// S, the attention-sink tokens kept forever.
    pub sink_tokens: usize,
    /// The layer's RoPE, applied by the attention kernels at cache-relative positions to raw q
    /// and k (its `n_rot` must be a multiple of 8, its table at least S + W positions long).
    /// `None`: a model without rotary embeddings.
    pub rope: Option<Arc<RopeTable>>,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("sink_tokens", &self.sink_tokens)
            .field("rope", &self.rope.as_ref().map(|r| (&r.config, r.max_positions)))
            .finish()
    }
}

/// Per-call tensors beyond q, k, v (all optional): see [`attention_prefill_forward_with`] and
/// [`attention_decode_forward_with`].
#[derive(Clone, Copy, Default)]
pub struct AttentionInputs<'a> {
    /// Output gate: `out ⊙ σ(gate)` over `[tokens, n_heads, head_dim]`.
    pub gate: Option<GateInput<'a>>,
    /// Packed documents (prefill without a cache): u32 `[tokens]`, each token's document start.
    pub doc_start: Option<&'a Tensor>,
}

/// The `doc_start` tensor's contents for documents of these lengths packed in order.
pub fn doc_starts(lengths: &[usize]) -> Vec<u32> {
    let mut out = Vec::with_capacity(lengths.iter().sum());
    let mut start = 0;
    for &n in lengths {
        out.extend(std::iter::repeat_n(start as u32, n));
        start += n;
    }
    out
}

impl AttentionConfig {
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: None,
            window: None,
            softcap: None,
            sinks: None,
            streaming: None,
        }
    }

    pub fn scale_value(&self) -> f32 {
        self.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    pub(crate) fn validate(&self, op: &'static str) -> Result<()> {
        if !HEAD_DIMS.contains(&self.head_dim) {
            return Err(PupilError::arg(op, format!("head_dim {} is not one of {HEAD_DIMS:?}", self.head_dim)));
        }
        if self.n_kv_heads == 0 || self.n_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(PupilError::arg(
                op,
                format!("{} query heads cannot share {} KV heads evenly", self.n_heads, self.n_kv_heads),
            ));
        }
        if self.window == Some(0) {
            return Err(PupilError::arg(op, "window must be at least 1"));
        }
        if let Some(w) = self.window {
            to_u32(op, w)?;
        }
        let s = self.scale_value();
        if !s.is_finite() || s <= 0.0 {
            return Err(PupilError::arg(op, format!("scale must be positive and finite, got {s}")));
        }
        if let Some(t) = &self.sinks {
            expect_dtype(op, "sinks", t, DType::F32)?;
            expect_len(op, "sinks", t, self.n_heads)?;
        }
        if let Some(c) = self.softcap {
            if !c.is_finite() || c <= 0.0 {
                return Err(PupilError::arg(op, format!("softcap must be positive and finite, got {c}")));
            }
        }
        if let Some(st) = &self.streaming {
            let Some(w) = self.window else {
                return Err(PupilError::arg(op, "StreamingLLM needs a window (the recent keys kept)"));
            };
            if self.sinks.is_some() {
                return Err(PupilError::arg(op, "learned sinks and StreamingLLM sink tokens do not combine"));
            }
            to_u32(op, st.sink_tokens + w)?;
            if let Some(r) = &st.rope {
                let n_rot = r.config.n_rot;
                if n_rot > self.head_dim || !n_rot.is_multiple_of(8) {
                    return Err(PupilError::arg(
                        op,
                        format!("in-kernel RoPE needs n_rot a multiple of 8 and ≤ head_dim, got {n_rot}"),
                    ));
                }
                if r.max_positions < st.sink_tokens + w {
                    return Err(PupilError::arg(
                        op,
                        format!(
                            "RoPE table of {} positions, StreamingLLM needs S + W = {}",
                            r.max_positions,
                            st.sink_tokens + w
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn sink_tokens(&self) -> usize {
        self.streaming.as_ref().map_or(0, |s| s.sink_tokens)
    }

    fn rope(&self) -> Option<&RopeTable> {
        self.streaming.as_ref().and_then(|s| s.rope.as_deref())
    }

    /// (n_rot, neox) for kernel parameters (zeros without in-kernel RoPE).
    fn rope_params(&self) -> (u32, u32) {
        self.rope().map_or((0, 0), |r| (r.config.n_rot as u32, (r.config.layout == RopeLayout::NeoX) as u32))
    }

    fn window_param(&self) -> u32 {
        self.window.map_or(NO_WINDOW, |w| w.min(NO_WINDOW as usize - 1) as u32)
    }

    /// The cache must hold this layer's heads and, if it rolls, the whole window.
    fn check_cache(&self, op: &'static str, cache: &KvCache, layer: usize, dt: DType) -> Result<()> {
        let (kind, slots) = (cache.kind(layer), cache.slots(layer));
        if cache.n_kv_heads != self.n_kv_heads || cache.head_dim != self.head_dim {
            return Err(PupilError::shape(
                op,
                format!(
                    "cache holds {} KV heads of {}, layer has {} of {}",
                    cache.n_kv_heads, cache.head_dim, self.n_kv_heads, self.head_dim
                ),
            ));
        }
        if cache.dtype != dt {
            return Err(PupilError::dtype(op, format!("cache is {}, inputs are {}", cache.dtype.name(), dt.name())));
        }
        if kind == KvCacheKind::Rolling && self.window.is_none_or(|w| w > slots) {
            return Err(PupilError::arg(
                op,
                format!("a rolling cache of {slots} slots needs a window of at most {slots} (got {:?})", self.window),
            ));
        }
        let rolling = slots - kind.fixed_slots();
        match (kind, &self.streaming) {
            (KvCacheKind::Streaming { sinks }, Some(st))
                if sinks != st.sink_tokens || self.window.is_none_or(|w| w > rolling) =>
            {
                Err(PupilError::arg(
                    op,
                    format!(
                        "a streaming cache of {sinks} sinks + {rolling} slots needs S = {sinks} and W ≤ {rolling} \
                         (got S = {}, W = {:?})",
                        st.sink_tokens, self.window
                    ),
                ))
            }
            (KvCacheKind::Streaming { .. }, None) => {
                Err(PupilError::arg(op, "a streaming cache needs a StreamingLLM layer"))
            }
            (KvCacheKind::Rolling, Some(_)) => {
                Err(PupilError::arg(op, "StreamingLLM needs a streaming (or full) cache, not a rolling one"))
            }
            _ => Ok(()),
        }
    }
}

/// The KV cache rows one prefill call reads: sequence `seq` of `layer`.
#[derive(Clone, Copy)]
pub struct CacheSeq<'a> {
    pub cache: &'a KvCache,
    pub layer: usize,
    pub seq: usize,
}

fn distinct_outputs(op: &'static str, outputs: &[&Tensor], inputs: &[&Tensor]) -> Result<()> {
    for (i, o) in outputs.iter().enumerate() {
        if inputs.iter().chain(&outputs[..i]).any(|t| std::ptr::eq(t.buffer(), o.buffer())) {
            return Err(PupilError::arg(op, "an output shares a buffer with another binding"));
        }
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PrefillParams {
    tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    pos0: u32,
    cache_base: u32,
    slots: u32,
    window: u32,
    scale: f32,
    softcap: f32,
    row_tiles: u32,
    sink_tokens: u32,
    n_rot: u32,
    neox: u32,
    gate: [u32; 4],
}

/// Causal attention of `tokens` new queries at positions `pos0..` of one sequence.
///
/// `q`, `out`: `[tokens, n_heads, head_dim]`; `k`, `v`: this chunk's keys and values
/// `[tokens, n_kv_heads, head_dim]`; `lse`: f32 `[tokens, n_heads]`, each row's log-sum-exp of
/// its scaled (and capped) logits, for a backward pass. Keys before `pos0` come from `cache`
/// (required when `pos0 > 0`; for a rolling cache they must be the last `slots` positions).
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_forward(
    b: &mut Batch,
    cfg: &AttentionConfig,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: Option<CacheSeq>,
    pos0: usize,
    out: &Tensor,
    lse: &Tensor,
) -> Result<()> {
    attention_prefill_forward_with(b, cfg, q, k, v, cache, pos0, out, lse, AttentionInputs::default())
}

/// Packed documents (see the module doc): prefill without a cache of `tokens` tokens of several
/// documents, `doc_start` u32 `[tokens]`; `gate` optional.
#[allow(clippy::too_many_arguments)]
pub fn attention_packed_forward(
    b: &mut Batch,
    cfg: &AttentionConfig,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    doc_start: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    gate: Option<GateInput>,
) -> Result<()> {
    let inputs = AttentionInputs { gate, doc_start: Some(doc_start) };
    attention_prefill_forward_with(b, cfg, q, k, v, None, 0, out, lse, inputs)
}

/// [`attention_prefill_forward`] with an output gate and/or packed documents.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill_forward_with(
    b: &mut Batch,
    cfg: &AttentionConfig,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: Option<CacheSeq>,
    pos0: usize,
    out: &Tensor,
    lse: &Tensor,
    inputs: AttentionInputs,
) -> Result<()> {
    const OP: &str = "attention_prefill_forward";
    cfg.validate(OP)?;
    let dt = float_dtype(b.context(), OP, &[q, k, v, out])?;
    expect_dtype(OP, "lse", lse, DType::F32)?;
    let hd = cfg.head_dim;
    let tokens = q.shape().first().copied().unwrap_or(0);
    if q.shape() != [tokens, cfg.n_heads, hd] || tokens == 0 {
        return Err(PupilError::shape(
            OP,
            format!("q is {:?}, expected [tokens > 0, {}, {hd}]", q.shape(), cfg.n_heads),
        ));
    }
    expect_len(OP, "k", k, tokens * cfg.n_kv_heads * hd)?;
    expect_len(OP, "v", v, tokens * cfg.n_kv_heads * hd)?;
    expect_len(OP, "out", out, q.len())?;
    expect_len(OP, "lse", lse, tokens * cfg.n_heads)?;
    let s_tok = cfg.sink_tokens();
    let (kc, vc, cache_base, slots) = match cache {
        Some(c) => {
            let l = c.cache.layer(OP, c.layer)?;
            cfg.check_cache(OP, c.cache, c.layer, dt)?;
            if c.seq >= c.cache.n_seqs {
                return Err(PupilError::arg(OP, format!("sequence {} of a cache of {}", c.seq, c.cache.n_seqs)));
            }
            if l.kind == KvCacheKind::Full && pos0 > l.slots {
                return Err(PupilError::arg(OP, format!("pos0 {pos0} past a full cache of {} slots", l.slots)));
            }
            if l.slots <= s_tok {
                return Err(PupilError::arg(OP, format!("{} cache slots for {s_tok} sink tokens", l.slots)));
            }
            (l.k, l.v, c.seq * l.slots, l.slots)
        }
        None if pos0 == 0 => (k, v, 0, s_tok + 1),
        None => return Err(PupilError::arg(OP, format!("pos0 = {pos0} needs a KV cache for the earlier keys"))),
    };
    if let Some(ds) = inputs.doc_start {
        expect_dtype(OP, "doc_start", ds, DType::U32)?;
        expect_len(OP, "doc_start", ds, tokens)?;
        if cache.is_some() || cfg.streaming.is_some() {
            return Err(PupilError::arg(OP, "packed documents take no cache and no StreamingLLM"));
        }
    }
    if let Some(g) = &inputs.gate {
        g.check(OP, dt, tokens, cfg.n_heads, hd)?;
    }
    let mut ins = vec![q, k, v, kc, vc];
    ins.extend(cfg.sinks.as_ref());
    ins.extend(cfg.rope().map(|r| &r.table));
    ins.extend(inputs.gate.as_ref().map(|g| g.logits));
    ins.extend(inputs.doc_start);
    distinct_outputs(OP, &[out, lse], &ins)?;
    to_u32(OP, pos0 + tokens)?;
    let group = cfg.n_heads / cfg.n_kv_heads;
    let rows_per_tile = 1024 / hd;
    let row_tiles = (tokens * group).div_ceil(rows_per_tile);
    let docs = inputs.doc_start.is_some();
    // The gate is fused unless the variant's 8 bindings are taken (cache + sinks or RoPE).
    let fused_gate = inputs.gate.filter(|_| docs || (cfg.sinks.is_none() && cfg.rope().is_none()));
    let (n_rot, neox) = cfg.rope_params();
    let p = PrefillParams {
        tokens: to_u32(OP, tokens)?,
        n_heads: cfg.n_heads as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        group: group as u32,
        pos0: pos0 as u32,
        cache_base: to_u32(OP, cache_base)?,
        slots: to_u32(OP, slots)?,
        window: cfg.window_param(),
        scale: cfg.scale_value(),
        softcap: cfg.softcap.unwrap_or(0.0),
        row_tiles: to_u32(OP, row_tiles)?,
        sink_tokens: s_tok as u32,
        n_rot,
        neox,
        gate: fused_gate.map_or([0; 4], |g| g.params()),
    };
    let feat =
        PrefillFeatures { sinks: cfg.sinks.is_some(), rope: cfg.rope().is_some(), gate: fused_gate.is_some(), docs };
    let key = prefill_key(dt, hd, feat);
    let grid = grid_for(b.context(), to_u32(OP, row_tiles * cfg.n_kv_heads)?);
    let mut bindings = vec![q, k, v, out, lse];
    match inputs.doc_start {
        Some(ds) => bindings.push(ds),
        None => bindings.extend([kc, vc]),
    }
    bindings.extend(cfg.sinks.as_ref());
    bindings.extend(cfg.rope().map(|r| &r.table));
    bindings.extend(fused_gate.as_ref().map(|g| g.logits));
    b.dispatch(&key, bytemuck::bytes_of(&p), &bindings, grid)?;
    match (&inputs.gate, &fused_gate) {
        (Some(g), None) => gate_apply_forward(b, out, g),
        _ => Ok(()),
    }
}

/// Which optional parts a prefill variant has.
#[derive(Clone, Copy, Default)]
struct PrefillFeatures {
    sinks: bool,
    rope: bool,
    gate: bool,
    docs: bool,
}

/// Every prefill variant that fits 8 storage bindings: with a cache, at most one of sinks,
/// RoPE, gate; packed documents (no cache), sinks and gate in any combination.
const PREFILL_VARIANTS: [PrefillFeatures; 8] = {
    const fn f(sinks: bool, rope: bool, gate: bool, docs: bool) -> PrefillFeatures {
        PrefillFeatures { sinks, rope, gate, docs }
    }
    [
        f(false, false, false, false),
        f(true, false, false, false),
        f(false, true, false, false),
        f(false, false, true, false),
        f(false, false, false, true),
        f(true, false, false, true),
        f(false, false, true, true),
        f(true, false, true, true),
    ]
};

fn prefill_key(dt: DType, hd: usize, f: PrefillFeatures) -> KernelKey {
    KernelKey::new("attention_prefill", "attention_prefill")
        .flag("F16", dt == DType::F16)
        .flag("SINKS", f.sinks)
        .flag("ROPE", f.rope)
        .flag("GATE", f.gate)
        .flag("DOCS", f.docs)
        .define("HD", hd as u32)
        .define("WG", WG_PREFILL)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DecodeParams {
    batch: u32,
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    hb: u32,
    blocks: u32,
    n_seqs: u32,
    slots: u32,
    window: u32,
    chunks: u32,
    chunk_len: u32,
    scale: f32,
    softcap: f32,
    sink_tokens: u32,
    n_rot: u32,
    neox: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    rows: u32,
    chunks: u32,
    head_dim: u32,
    n_heads: u32,
    gate: [u32; 4],
}

/// How decode splits the at most `span` valid keys of a sequence: (chunk length, chunks).
fn decode_split(span: usize) -> (usize, usize) {
    let wg = WG_DECODE as usize;
    let chunk_len = span.div_ceil(TARGET_CHUNKS).next_multiple_of(wg).clamp(wg, MAX_CHUNK_TILES * wg);
    (chunk_len, span.div_ceil(chunk_len).max(1))
}

/// Attention of one new token per sequence against the cache (its own K/V already written).
///
/// `q`, `out`: `[batch, n_heads, head_dim]`; `seqs`: u32 `[batch, 2]`, for each batch entry
/// (cache sequence, position of the new token). Lengths live on the GPU, so no readback is
/// needed between steps; the split is sized for the longest possible sequence (the cache's
/// slots or the window). A sequence index past the cache yields zeros; a position past a full
/// cache reads wrapped slots (kv_write refuses to write there).
/// Scratch for the split (`batch·n_heads·chunks·(head_dim + 2)` f32) is allocated per call.
pub fn attention_decode_forward(
    b: &mut Batch,
    cfg: &AttentionConfig,
    q: &Tensor,
    seqs: &Tensor,
    cache: &KvCache,
    layer: usize,
    out: &Tensor,
) -> Result<()> {
    attention_decode_forward_with(b, cfg, q, seqs, cache, layer, out, None)
}

/// [`attention_decode_forward`] with an output gate over `[batch, n_heads, head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_forward_with(
    b: &mut Batch,
    cfg: &AttentionConfig,
    q: &Tensor,
    seqs: &Tensor,
    cache: &KvCache,
    layer: usize,
    out: &Tensor,
    gate: Option<GateInput>,
) -> Result<()> {
    const OP: &str = "attention_decode_forward";
    cfg.validate(OP)?;
    let dt = float_dtype(b.context(), OP, &[q, out])?;
    let l = cache.layer(OP, layer)?;
    cfg.check_cache(OP, cache, layer, dt)?;
    expect_dtype(OP, "seqs", seqs, DType::U32)?;
    let hd = cfg.head_dim;
    let batch = q.shape().first().copied().unwrap_or(0);
    if q.shape() != [batch, cfg.n_heads, hd] || batch == 0 {
        return Err(PupilError::shape(
            OP,
            format!("q is {:?}, expected [batch > 0, {}, {hd}]", q.shape(), cfg.n_heads),
        ));
    }
    expect_len(OP, "seqs", seqs, 2 * batch)?;
    expect_len(OP, "out", out, q.len())?;
    let s_tok = cfg.sink_tokens();
    if l.slots <= s_tok {
        return Err(PupilError::arg(OP, format!("{} cache slots for {s_tok} sink tokens", l.slots)));
    }
    if let Some(g) = &gate {
        g.check(OP, dt, batch, cfg.n_heads, hd)?;
    }
    let (kc, vc) = (l.k, l.v);
    let mut ins = vec![q, seqs, kc, vc];
    ins.extend(cfg.sinks.as_ref());
    ins.extend(cfg.rope().map(|r| &r.table));
    ins.extend(gate.as_ref().map(|g| g.logits));
    distinct_outputs(OP, &[out], &ins)?;
    let group = cfg.n_heads / cfg.n_kv_heads;
    let hb = group.min(DECODE_HEADS);
    let blocks = group.div_ceil(hb);
    // The most keys a sequence keeps: the sinks and the window, or the window, or the cache.
    let span = match cfg.window {
        Some(w) if cfg.streaming.is_some() => (s_tok + w).min(l.slots),
        Some(w) => w.min(l.slots),
        None => l.slots,
    };
    let (chunk_len, chunks) = decode_split(span);
    let ctx = b.context();
    let part = Tensor::empty(ctx, &[batch, cfg.n_heads, chunks, hd], DType::F32)?;
    let stats = Tensor::empty(ctx, &[batch, cfg.n_heads, chunks, 2], DType::F32)?;
    let (n_rot, neox) = cfg.rope_params();
    let p = DecodeParams {
        batch: to_u32(OP, batch)?,
        n_heads: cfg.n_heads as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        group: group as u32,
        hb: hb as u32,
        blocks: blocks as u32,
        n_seqs: to_u32(OP, cache.n_seqs)?,
        slots: to_u32(OP, l.slots)?,
        window: cfg.window_param(),
        chunks: chunks as u32,
        chunk_len: to_u32(OP, chunk_len)?,
        scale: cfg.scale_value(),
        softcap: cfg.softcap.unwrap_or(0.0),
        sink_tokens: s_tok as u32,
        n_rot,
        neox,
    };
    let key = kernel(ctx, "attention_decode", "attention_decode", dt, true, WG_DECODE)
        .define("HD", hd as u32)
        .flag("ROPE", cfg.rope().is_some());
    let grid = grid_for(ctx, to_u32(OP, batch * cfg.n_kv_heads * blocks * chunks)?);
    let mut bindings = vec![q, seqs, kc, vc, &part, &stats];
    bindings.extend(cfg.rope().map(|r| &r.table));
    b.dispatch(&key, bytemuck::bytes_of(&p), &bindings, grid)?;
    let rows = batch * cfg.n_heads;
    let rp = ReduceParams {
        rows: to_u32(OP, rows)?,
        chunks: chunks as u32,
        head_dim: hd as u32,
        n_heads: cfg.n_heads as u32,
        gate: gate.map_or([0; 4], |g| g.params()),
    };
    let key = reduce_key(dt, cfg.sinks.is_some(), gate.is_some());
    let grid = grid_for(ctx, to_u32(OP, rows)?);
    let mut bindings = vec![&part, &stats, out];
    bindings.extend(cfg.sinks.as_ref());
    bindings.extend(gate.as_ref().map(|g| g.logits));
    b.dispatch(&key, bytemuck::bytes_of(&rp), &bindings, grid)
}

fn reduce_key(dt: DType, sinks: bool, gate: bool) -> KernelKey {
    KernelKey::new("attention_decode", "attention_decode_reduce")
        .flag("F16", dt == DType::F16)
        .flag("SINKS", sinks)
        .flag("GATE", gate)
        .flag("REDUCE", true)
        .define("WG", WG_REDUCE)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvWriteParams {
    tokens: u32,
    row: u32,
    slots: u32,
    n_seqs: u32,
    seq: u32,
    pos0: u32,
    first_token: u32,
    wrap: u32,
    sinks: u32,
}

fn kv_write_checks<'c>(
    op: &'static str,
    b: &Batch,
    cache: &'c KvCache,
    layer: usize,
    k: &Tensor,
    v: &Tensor,
) -> Result<(DType, usize, CacheLayer<'c>)> {
    let dt = float_dtype(b.context(), op, &[k, v])?;
    if cache.dtype != dt {
        return Err(PupilError::dtype(op, format!("cache is {}, K/V are {}", cache.dtype.name(), dt.name())));
    }
    let row = cache.n_kv_heads * cache.head_dim;
    let tokens = k.len() / row;
    if tokens == 0 || k.len() != tokens * row {
        return Err(PupilError::shape(op, format!("k is {:?}, expected [tokens > 0, {row}]", k.shape())));
    }
    expect_len(op, "v", v, k.len())?;
    Ok((dt, tokens, cache.layer(op, layer)?))
}

/// Write a chunk's K and V rows (`[tokens, n_kv_heads·head_dim]`) at positions
/// `pos0..pos0+tokens` of sequence `seq`. A rolling cache keeps the chunk's last `slots` rows;
/// a streaming cache its rows at sink positions and its last `slots − S` rows.
pub fn kv_write_chunk(
    b: &mut Batch,
    cache: &KvCache,
    layer: usize,
    seq: usize,
    pos0: usize,
    k: &Tensor,
    v: &Tensor,
) -> Result<()> {
    const OP: &str = "kv_write_chunk";
    let (dt, tokens, l) = kv_write_checks(OP, b, cache, layer, k, v)?;
    if seq >= cache.n_seqs {
        return Err(PupilError::arg(OP, format!("sequence {seq} of a cache of {}", cache.n_seqs)));
    }
    if l.kind == KvCacheKind::Full && pos0 + tokens > l.slots {
        return Err(PupilError::arg(
            OP,
            format!("positions up to {} past a full cache of {} slots", pos0 + tokens, l.slots),
        ));
    }
    to_u32(OP, pos0 + tokens)?;
    let p = KvWriteParams {
        tokens: to_u32(OP, tokens)?,
        row: (cache.n_kv_heads * cache.head_dim) as u32,
        slots: l.slots as u32,
        n_seqs: cache.n_seqs as u32,
        seq: seq as u32,
        pos0: pos0 as u32,
        first_token: tokens.saturating_sub(l.slots - l.kind.fixed_slots()) as u32,
        wrap: (l.kind != KvCacheKind::Full) as u32,
        sinks: l.kind.fixed_slots() as u32,
    };
    let key = kernel(b.context(), "attention_kv_write", "attention_kv_write", dt, false, WG);
    let grid = elem_grid(b, k.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[k, v, l.k, l.v], grid)
}

/// Write K and V rows (`[tokens, n_kv_heads·head_dim]`) where `dest` (u32 `[tokens, 2]`,
/// (sequence, position) per row — the same tensor decode takes as `seqs`) says. No two rows
/// may target one slot. Rows for a sequence past the cache, or past a full cache's last
/// slot, are dropped.
pub fn kv_write(b: &mut Batch, cache: &KvCache, layer: usize, k: &Tensor, v: &Tensor, dest: &Tensor) -> Result<()> {
    const OP: &str = "kv_write";
    let (dt, tokens, l) = kv_write_checks(OP, b, cache, layer, k, v)?;
    expect_dtype(OP, "dest", dest, DType::U32)?;
    expect_len(OP, "dest", dest, 2 * tokens)?;
    let p = KvWriteParams {
        tokens: to_u32(OP, tokens)?,
        row: (cache.n_kv_heads * cache.head_dim) as u32,
        slots: l.slots as u32,
        n_seqs: cache.n_seqs as u32,
        seq: 0,
        pos0: 0,
        first_token: 0,
        wrap: (l.kind != KvCacheKind::Full) as u32,
        sinks: l.kind.fixed_slots() as u32,
    };
    let key = kernel(b.context(), "attention_kv_write", "attention_kv_write", dt, false, WG).flag("INDEXED", true);
    let grid = elem_grid(b, k.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[k, v, dest, l.k, l.v], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for hd in HEAD_DIMS {
        for dt in [DType::F32, DType::F16] {
            for f in PREFILL_VARIANTS {
                v.push(prefill_key(dt, hd, f));
            }
        }
        for rope in [false, true] {
            v.extend(dtype_and_reduction_variants(
                KernelKey::new("attention_decode", "attention_decode")
                    .define("HD", hd as u32)
                    .define("WG", WG_DECODE)
                    .flag("ROPE", rope),
                true,
            ));
        }
    }
    for dt in [DType::F32, DType::F16] {
        for sinks in [false, true] {
            for gate in [false, true] {
                v.push(reduce_key(dt, sinks, gate));
            }
        }
    }
    for indexed in [false, true] {
        v.extend(dtype_and_reduction_variants(
            KernelKey::new("attention_kv_write", "attention_kv_write").define("WG", WG).flag("INDEXED", indexed),
            false,
        ));
    }
    v
}
