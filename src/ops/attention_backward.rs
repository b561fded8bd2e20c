//! Attention's backward pass for training (FlashAttention-2's two passes over the forward's
//! saved log-sum-exp): packed sequences without a KV cache, causal, sliding window, grouped
//! query heads, packed documents. The forward for training is
//! `attention::attention_packed_forward` (or `attention_prefill_forward` from position 0
//! without a cache); its ungated output `o` and `lse` are what this needs. An output gate's
//! gradient is the gate op's business (`ops::gate`), before this.
//! Kernel: `shaders/attention_backward.wgsl`. Reference: `reference::attention::attention_backward`.

use bytemuck::{Pod, Zeroable};

use super::attention::{AttentionConfig, HEAD_DIMS};
use super::{expect_dtype, expect_len, float_dtype, to_u32};
use crate::error::{PupilError, Result};
use crate::gpu::{Batch, DType, KernelKey, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    window: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// The `doc_bounds` tensor's contents (u32 pairs: first position of the token's document, one
/// past its last) for documents of these lengths packed in order.
pub fn doc_bounds(lengths: &[usize]) -> Vec<u32> {
    let mut out = Vec::with_capacity(2 * lengths.iter().sum::<usize>());
    let mut start = 0;
    for &n in lengths {
        for _ in 0..n {
            out.extend([start as u32, (start + n) as u32]);
        }
        start += n;
    }
    out
}

/// Scratch the backward needs: f32 `[tokens, n_heads, 2]` (each row's lse and `D = dout·o`).
pub fn attention_backward_stats(ctx: &crate::gpu::GpuContext, tokens: usize, n_heads: usize) -> Result<Tensor> {
    Tensor::empty(ctx, &[tokens, n_heads, 2], DType::F32)
}

fn key(entry: &'static str, dt: DType, hd: usize, docs: bool) -> KernelKey {
    let k = KernelKey::new("attention_backward", entry).flag("F16", dt == DType::F16).define("HD", hd as u32);
    match entry {
        "attention_backward_delta" => k.flag("DELTA", true),
        "attention_backward_q" => k.flag("DQ", true).flag("DOCS", docs),
        _ => k.flag("DOCS", docs),
    }
}

/// Gradients `dq` `[tokens, n_heads, hd]`, `dk`, `dv` `[tokens, n_kv_heads, hd]` (written, not
/// accumulated) of the attention `cfg` computed from `q`, `k`, `v` into `out` with `lse`
/// (f32 `[tokens, n_heads]`), given `dout`. `doc_bounds`: u32 `[tokens, 2]` ([`doc_bounds`])
/// for packed documents. `stats`: scratch from [`attention_backward_stats`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    b: &mut Batch,
    cfg: &AttentionConfig,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    doc_bounds: Option<&Tensor>,
    stats: &Tensor,
    (dq, dk, dv): (&Tensor, &Tensor, &Tensor),
) -> Result<()> {
    const OP: &str = "attention_backward";
    cfg.validate(OP)?;
    if cfg.softcap.is_some() || cfg.sinks.is_some() || cfg.streaming.is_some() {
        return Err(PupilError::Unsupported("attention backward with softcap, sinks or StreamingLLM".into()));
    }
    let dt = float_dtype(b.context(), OP, &[q, k, v, out, dout, dq, dk, dv])?;
    let hd = cfg.head_dim;
    debug_assert!(HEAD_DIMS.contains(&hd));
    let tokens = q.len() / (cfg.n_heads * hd);
    if tokens == 0 || q.len() != tokens * cfg.n_heads * hd {
        return Err(PupilError::shape(OP, format!("q {:?} is not [tokens, {}, {hd}]", q.shape(), cfg.n_heads)));
    }
    let (qn, kn) = (tokens * cfg.n_heads * hd, tokens * cfg.n_kv_heads * hd);
    for (what, t, n) in [
        ("k", k, kn),
        ("v", v, kn),
        ("out", out, qn),
        ("dout", dout, qn),
        ("dq", dq, qn),
        ("dk", dk, kn),
        ("dv", dv, kn),
    ] {
        expect_len(OP, what, t, n)?;
    }
    expect_dtype(OP, "lse", lse, DType::F32)?;
    expect_len(OP, "lse", lse, tokens * cfg.n_heads)?;
    expect_dtype(OP, "stats", stats, DType::F32)?;
    expect_len(OP, "stats", stats, 2 * tokens * cfg.n_heads)?;
    if let Some(d) = doc_bounds {
        expect_dtype(OP, "doc_bounds", d, DType::U32)?;
        expect_len(OP, "doc_bounds", d, 2 * tokens)?;
    }
    let window = cfg.window.map_or(Ok(u32::MAX), |w| to_u32(OP, w.min(tokens)))?;
    let p = Params {
        tokens: to_u32(OP, tokens)?,
        n_heads: to_u32(OP, cfg.n_heads)?,
        n_kv_heads: to_u32(OP, cfg.n_kv_heads)?,
        group: to_u32(OP, cfg.n_heads / cfg.n_kv_heads)?,
        window,
        scale: cfg.scale_value(),
        _pad: [0; 2],
    };
    let params = bytemuck::bytes_of(&p);
    let ctx = b.context();
    let rows = to_u32(OP, tokens * cfg.n_heads)?;
    b.dispatch(
        &key("attention_backward_delta", dt, hd, false),
        params,
        &[dout, out, lse, stats],
        crate::gpu::grid_for(ctx, rows.div_ceil(64)),
    )?;
    // (Each dispatch is its own usage scope: the passes below see the stats written.)
    let blocks = tokens.div_ceil(16);
    let docs = doc_bounds.is_some();
    let mut kv: Vec<&Tensor> = vec![q, k, v, dout, stats, dk, dv];
    kv.extend(doc_bounds);
    let kv_groups = to_u32(OP, blocks * cfg.n_kv_heads)?;
    b.dispatch(&key("attention_backward_kv", dt, hd, docs), params, &kv, crate::gpu::grid_for(ctx, kv_groups))?;
    let mut qb: Vec<&Tensor> = vec![q, k, v, dout, stats, dq];
    qb.extend(doc_bounds);
    let q_groups = to_u32(OP, blocks * cfg.n_heads)?;
    b.dispatch(&key("attention_backward_q", dt, hd, docs), params, &qb, crate::gpu::grid_for(ctx, q_groups))
}

pub fn variants() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for dt in [DType::F32, DType::F16] {
        for hd in HEAD_DIMS {
            v.push(key("attention_backward_delta", dt, hd, false));
            for docs in [false, true] {
                v.push(key("attention_backward_kv", dt, hd, docs));
                v.push(key("attention_backward_q", dt, hd, docs));
            }
        }
    }
    v
}
