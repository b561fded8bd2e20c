//! Shared by the native GPU tests: open a context on whatever adapter wgpu finds (lavapipe
//! on CI) with the f16 and subgroup paths forced on or off.
//!
//! A path the adapter cannot provide is skipped with a message, unless the feature is named
//! in `PUPIL_REQUIRE_FEATURES` (comma-separated: `f16,subgroups`), as CI does on lavapipe,
//! so a runner that silently lost a feature fails instead of skipping.

#![allow(dead_code)]

pub mod train;

use pupil::{ContextOptions, GpuContext};

fn required(feature: &str) -> bool {
    std::env::var("PUPIL_REQUIRE_FEATURES").map(|v| v.split(',').any(|f| f.trim() == feature)).unwrap_or(false)
}

pub fn context_with(options: ContextOptions) -> GpuContext {
    pollster::block_on(GpuContext::new(options))
        .expect("no GPU adapter: install mesa-vulkan-drivers (lavapipe) or a GPU driver")
}

/// A context with exactly the requested paths, or None (skip) if the adapter lacks one.
pub fn context(f16: bool, subgroups: bool) -> Option<GpuContext> {
    let ctx = context_with(ContextOptions { allow_f16: f16, allow_subgroups: subgroups, ..ContextOptions::default() });
    for (want, have, name) in [(f16, ctx.caps.f16, "f16"), (subgroups, ctx.caps.subgroups, "subgroups")] {
        if want && !have {
            assert!(!required(name), "PUPIL_REQUIRE_FEATURES names {name} but the adapter lacks it");
            eprintln!("skipped: adapter {} has no {name}", ctx.adapter_info.name);
            return None;
        }
    }
    assert_eq!((ctx.caps.f16, ctx.caps.subgroups), (f16, subgroups));
    Some(ctx)
}

/// The default context (every feature the adapter has).
pub fn full_context() -> GpuContext {
    context_with(ContextOptions::default())
}

/// Where a real model is cached: `$<env>` if set, else `$PUPIL_CACHE` or `~/.cache/pupil`
/// joined with `file`, as scripts/fetch-model.sh puts it.
fn cached_model_path(env: &str, file: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("PUPIL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pupil"));
        cache.join(file)
    })
}

/// The real default model's path (`PUPIL_SMOLLM2` overrides).
pub fn smollm2_path() -> std::path::PathBuf {
    cached_model_path("PUPIL_SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma 3 270M Q4_K_M's path (`PUPIL_GEMMA3` overrides; `scripts/fetch-model.sh gemma3`).
pub fn gemma3_path() -> std::path::PathBuf {
    cached_model_path("PUPIL_GEMMA3", "gemma-3-270m-q4_k_m.gguf")
}

/// A real model's bytes, or None (skip) when it is absent — a failure instead when
/// `PUPIL_REQUIRE_MODELS` is set, as CI does.
pub fn read_model(path: &std::path::Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var("PUPIL_REQUIRE_MODELS").is_err(),
                "{}: {e} (run scripts/fetch-model.sh)",
                path.display()
            );
            eprintln!("skipped: {} not found (scripts/fetch-model.sh fetches it)", path.display());
            None
        }
    }
}

/// The real default model's bytes (see [`read_model`]).
pub fn smollm2() -> Option<Vec<u8>> {
    read_model(&smollm2_path())
}

/// Gemma 3 270M's bytes (see [`read_model`]).
pub fn gemma3() -> Option<Vec<u8>> {
    read_model(&gemma3_path())
}

/// One decode step of sequence 0 at position `pos` through layer 0 of `cache`: write this
/// step's key and value, then attend with `q`. Returns the f32 output `[1, heads, head_dim]`.
pub fn decode_step(
    ctx: &GpuContext,
    cfg: &pupil::ops::attention::AttentionConfig,
    cache: &pupil::ops::attention::KvCache,
    pos: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
) -> pupil::Tensor {
    use pupil::gpu::{Batch, DType, Tensor};
    use pupil::ops::attention::{attention_decode_forward, kv_write};
    let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let qt = Tensor::from_f32(ctx, q, &[1, nh, hd], DType::F32).unwrap();
    let kt = Tensor::from_f32(ctx, k, &[1, nkv, hd], DType::F32).unwrap();
    let vt = Tensor::from_f32(ctx, v, &[1, nkv, hd], DType::F32).unwrap();
    let seqs = Tensor::from_u32(ctx, &[0, pos as u32], &[1, 2]).unwrap();
    let out = Tensor::empty(ctx, &[1, nh, hd], DType::F32).unwrap();
    let mut b = Batch::new(ctx);
    kv_write(&mut b, cache, 0, &kt, &vt, &seqs).unwrap();
    attention_decode_forward(&mut b, cfg, &qt, &seqs, cache, 0, &out).unwrap();
    b.submit();
    out
}

/// Checks, step after step, that tracked GPU memory stays where it was after the first step
/// and that the peak stops growing after the second.
#[derive(Default)]
pub struct FlatMemory {
    first: Option<u64>,
    peak_after_first: u64,
}

impl FlatMemory {
    /// Call after step `t` once everything the step allocated has been dropped.
    pub fn after_step(&mut self, ctx: &GpuContext, t: usize) {
        let now = ctx.memory.current_bytes();
        match self.first {
            None => self.first = Some(now),
            Some(first) => assert_eq!(now, first, "GPU memory grew at step {t}"),
        }
        if t == 1 {
            self.peak_after_first = ctx.memory.peak_bytes();
        }
    }

    /// The flat level (bytes held after the first step).
    pub fn bytes(&self) -> u64 {
        self.first.unwrap_or(0)
    }

    pub fn finish(&self, ctx: &GpuContext) {
        assert_eq!(ctx.memory.peak_bytes(), self.peak_after_first, "the peak grew after the first steps");
    }
}

/// Token ids from a JSON fixture array.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// ‖a − b‖ / ‖b‖, accumulated in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den).sqrt()
}
