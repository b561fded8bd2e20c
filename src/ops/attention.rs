//! Fused causal attention with a KV cache: prefill (a chunk of new tokens of one sequence) and
//! decode (one new token for each of a batch of sequences, split-K "flash decoding").
//! Kernels: `shaders/attention_prefill.wgsl`, `shaders/attention_decode.wgsl`,
//! `shaders/attention_kv_write.wgsl`. Reference: `reference::attention`.
//!
//! The KV cache ([`KvCache`]) holds per layer one K and one V tensor
//! `[n_seqs, slots, n_kv_heads, head_dim]` (the path's dtype). Sequences share each tensor, one
//! block of `slots` rows each; position `pos` of sequence `s` lives at row `s * slots + pos %
//! slots`. A [`KvCacheKind::Full`] cache has one slot per position (`slots` = capacity); a
//! [`KvCacheKind::Rolling`] cache of `slots` = W keeps only the last W positions (memory O(W)),
//! for sliding-window layers (the window must be at most `slots`).
//!
//! Order within a step: prefill reads keys before `pos0` from the cache and the chunk's own K/V
//! from its inputs, so record [`attention_prefill_forward`] and then [`kv_write_chunk`] (a
//! rolling cache may overwrite slots the chunk's first queries still need). Decode reads every
//! key from the cache: record [`kv_write`] first, then [`attention_decode_forward`]. Both in one
//! batch are ordered by the compute pass.

use bytemuck::{Pod, Zeroable};

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
}

/// Per-layer K and V on the GPU, `[n_seqs, slots, n_kv_heads, head_dim]` each.
pub struct KvCache {
    pub kind: KvCacheKind,
    pub n_seqs: usize,
    pub slots: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl KvCache {
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
        const OP: &str = "KvCache::new";
        if layers == 0 || n_seqs == 0 || slots == 0 || n_kv_heads == 0 || head_dim == 0 {
            return Err(PupilError::shape(OP, "layers, sequences, slots, heads and head_dim must be positive"));
        }
        if !dtype.is_float() {
            return Err(PupilError::dtype(OP, format!("cache dtype must be f32 or f16, got {}", dtype.name())));
        }
        if dtype == DType::F16 && !ctx.caps.f16 {
            return Err(PupilError::MissingFeature("shader-f16"));
        }
        let shape = [n_seqs, slots, n_kv_heads, head_dim];
        to_u32(OP, shape.iter().product())?;
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(Tensor::empty(ctx, &shape, dtype)?);
            v.push(Tensor::empty(ctx, &shape, dtype)?);
        }
        Ok(KvCache { kind, n_seqs, slots, n_kv_heads, head_dim, dtype, k, v })
    }

    fn layer(&self, op: &'static str, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match (self.k.get(layer), self.v.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(PupilError::arg(op, format!("layer {layer} of a cache with {} layers", self.k.len()))),
        }
    }

    /// Bytes of one layer (K and V).
    pub fn layer_bytes(&self) -> u64 {
        2 * (self.n_seqs * self.slots * self.n_kv_heads * self.head_dim) as u64 * self.dtype.size_bytes()
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
}

impl AttentionConfig {
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        AttentionConfig { n_heads, n_kv_heads, head_dim, scale: None, window: None, softcap: None, sinks: None }
    }

    pub fn scale_value(&self) -> f32 {
        self.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    fn validate(&self, op: &'static str) -> Result<()> {
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
        Ok(())
    }

    fn window_param(&self) -> u32 {
        self.window.map_or(NO_WINDOW, |w| w.min(NO_WINDOW as usize - 1) as u32)
    }

    /// The cache must hold this layer's heads and, if it rolls, the whole window.
    fn check_cache(&self, op: &'static str, cache: &KvCache, dt: DType) -> Result<()> {
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
        if cache.kind == KvCacheKind::Rolling && self.window.is_none_or(|w| w > cache.slots) {
            return Err(PupilError::arg(
                op,
                format!(
                    "a rolling cache of {} slots needs a window of at most {} (got {:?})",
                    cache.slots, cache.slots, self.window
                ),
            ));
        }
        Ok(())
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
    let (kc, vc, cache_base, slots) = match cache {
        Some(c) => {
            cfg.check_cache(OP, c.cache, dt)?;
            let (kc, vc) = c.cache.layer(OP, c.layer)?;
            if c.seq >= c.cache.n_seqs {
                return Err(PupilError::arg(OP, format!("sequence {} of a cache of {}", c.seq, c.cache.n_seqs)));
            }
            if c.cache.kind == KvCacheKind::Full && pos0 > c.cache.slots {
                return Err(PupilError::arg(OP, format!("pos0 {pos0} past a full cache of {} slots", c.cache.slots)));
            }
            (kc, vc, c.seq * c.cache.slots, c.cache.slots)
        }
        None if pos0 == 0 => (k, v, 0, 1),
        None => return Err(PupilError::arg(OP, format!("pos0 = {pos0} needs a KV cache for the earlier keys"))),
    };
    let mut inputs = vec![q, k, v, kc, vc];
    inputs.extend(cfg.sinks.as_ref());
    distinct_outputs(OP, &[out, lse], &inputs)?;
    to_u32(OP, pos0 + tokens)?;
    let group = cfg.n_heads / cfg.n_kv_heads;
    let rows_per_tile = 1024 / hd;
    let row_tiles = (tokens * group).div_ceil(rows_per_tile);
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
    };
    let key = prefill_key(dt, hd, cfg.sinks.is_some());
    let grid = grid_for(b.context(), to_u32(OP, row_tiles * cfg.n_kv_heads)?);
    let mut bindings = vec![q, k, v, kc, vc, out, lse];
    bindings.extend(cfg.sinks.as_ref());
    b.dispatch(&key, bytemuck::bytes_of(&p), &bindings, grid)
}

fn prefill_key(dt: DType, hd: usize, sinks: bool) -> KernelKey {
    KernelKey::new("attention_prefill", "attention_prefill")
        .flag("F16", dt == DType::F16)
        .flag("SINKS", sinks)
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
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    rows: u32,
    chunks: u32,
    head_dim: u32,
    n_heads: u32,
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
    const OP: &str = "attention_decode_forward";
    cfg.validate(OP)?;
    let dt = float_dtype(b.context(), OP, &[q, out])?;
    cfg.check_cache(OP, cache, dt)?;
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
    let (kc, vc) = cache.layer(OP, layer)?;
    let mut inputs = vec![q, seqs, kc, vc];
    inputs.extend(cfg.sinks.as_ref());
    distinct_outputs(OP, &[out], &inputs)?;
    let group = cfg.n_heads / cfg.n_kv_heads;
    let hb = group.min(DECODE_HEADS);
    let blocks = group.div_ceil(hb);
    let span = cfg.window.map_or(cache.slots, |w| w.min(cache.slots));
    let (chunk_len, chunks) = decode_split(span);
    let ctx = b.context();
    let part = Tensor::empty(ctx, &[batch, cfg.n_heads, chunks, hd], DType::F32)?;
    let stats = Tensor::empty(ctx, &[batch, cfg.n_heads, chunks, 2], DType::F32)?;
    let p = DecodeParams {
        batch: to_u32(OP, batch)?,
        n_heads: cfg.n_heads as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        group: group as u32,
        hb: hb as u32,
        blocks: blocks as u32,
        n_seqs: to_u32(OP, cache.n_seqs)?,
        slots: to_u32(OP, cache.slots)?,
        window: cfg.window_param(),
        chunks: chunks as u32,
        chunk_len: to_u32(OP, chunk_len)?,
        scale: cfg.scale_value(),
        softcap: cfg.softcap.unwrap_or(0.0),
    };
    let key = kernel(ctx, "attention_decode", "attention_decode", dt, true, WG_DECODE).define("HD", hd as u32);
    let grid = grid_for(ctx, to_u32(OP, batch * cfg.n_kv_heads * blocks * chunks)?);
    b.dispatch(&key, bytemuck::bytes_of(&p), &[q, seqs, kc, vc, &part, &stats], grid)?;
    let rows = batch * cfg.n_heads;
    let rp = ReduceParams {
        rows: to_u32(OP, rows)?,
        chunks: chunks as u32,
        head_dim: hd as u32,
        n_heads: cfg.n_heads as u32,
    };
    let key = reduce_key(dt, cfg.sinks.is_some());
    let grid = grid_for(ctx, to_u32(OP, rows)?);
    let mut bindings = vec![&part, &stats, out];
    bindings.extend(cfg.sinks.as_ref());
    b.dispatch(&key, bytemuck::bytes_of(&rp), &bindings, grid)
}

fn reduce_key(dt: DType, sinks: bool) -> KernelKey {
    KernelKey::new("attention_decode", "attention_decode_reduce")
        .flag("F16", dt == DType::F16)
        .flag("SINKS", sinks)
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
}

fn kv_write_checks<'c>(
    op: &'static str,
    b: &Batch,
    cache: &'c KvCache,
    layer: usize,
    k: &Tensor,
    v: &Tensor,
) -> Result<(DType, usize, &'c Tensor, &'c Tensor)> {
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
    let (kc, vc) = cache.layer(op, layer)?;
    Ok((dt, tokens, kc, vc))
}

/// Write a chunk's K and V rows (`[tokens, n_kv_heads·head_dim]`) at positions
/// `pos0..pos0+tokens` of sequence `seq`. A rolling cache keeps the chunk's last `slots` rows.
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
    let (dt, tokens, kc, vc) = kv_write_checks(OP, b, cache, layer, k, v)?;
    if seq >= cache.n_seqs {
        return Err(PupilError::arg(OP, format!("sequence {seq} of a cache of {}", cache.n_seqs)));
    }
    if cache.kind == KvCacheKind::Full && pos0 + tokens > cache.slots {
        return Err(PupilError::arg(
            OP,
            format!("positions up to {} past a full cache of {} slots", pos0 + tokens, cache.slots),
        ));
    }
    to_u32(OP, pos0 + tokens)?;
    let p = KvWriteParams {
        tokens: to_u32(OP, tokens)?,
        row: (cache.n_kv_heads * cache.head_dim) as u32,
        slots: cache.slots as u32,
        n_seqs: cache.n_seqs as u32,
        seq: seq as u32,
        pos0: pos0 as u32,
        first_token: tokens.saturating_sub(cache.slots) as u32,
        wrap: (cache.kind == KvCacheKind::Rolling) as u32,
    };
    let key = kernel(b.context(), "attention_kv_write", "attention_kv_write", dt, false, WG);
    let grid = elem_grid(b, k.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[k, v, kc, vc], grid)
}

/// Write K and V rows (`[tokens, n_kv_heads·head_dim]`) where `dest` (u32 `[tokens, 2]`,
/// (sequence, position) per row — the same tensor decode takes as `seqs`) says. No two rows
/// may target one slot. Rows for a sequence past the cache, or past a full cache's last
/// slot, are dropped.
pub fn kv_write(b: &mut Batch, cache: &KvCache, layer: usize, k: &Tensor, v: &Tensor, dest: &Tensor) -> Result<()> {
    const OP: &str = "kv_write";
    let (dt, tokens, kc, vc) = kv_write_checks(OP, b, cache, layer, k, v)?;
    expect_dtype(OP, "dest", dest, DType::U32)?;
    expect_len(OP, "dest", dest, 2 * tokens)?;
    let p = KvWriteParams {
        tokens: to_u32(OP, tokens)?,
        row: (cache.n_kv_heads * cache.head_dim) as u32,
        slots: cache.slots as u32,
        n_seqs: cache.n_seqs as u32,
        seq: 0,
        pos0: 0,
        first_token: 0,
        wrap: (cache.kind == KvCacheKind::Rolling) as u32,
    };
    let key = kernel(b.context(), "attention_kv_write", "attention_kv_write", dt, false, WG).flag("INDEXED", true);
    let grid = elem_grid(b, k.len())?;
    b.dispatch(&key, bytemuck::bytes_of(&p), &[k, v, dest, kc, vc], grid)
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for hd in HEAD_DIMS {
        for dt in [DType::F32, DType::F16] {
            for sinks in [false, true] {
                v.push(prefill_key(dt, hd, sinks));
            }
        }
        v.extend(dtype_and_reduction_variants(
            KernelKey::new("attention_decode", "attention_decode").define("HD", hd as u32).define("WG", WG_DECODE),
            true,
        ));
    }
    for dt in [DType::F32, DType::F16] {
        for sinks in [false, true] {
            v.push(reduce_key(dt, sinks));
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
