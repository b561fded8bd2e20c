//! Shared by the native GPU tests: open a context on whatever adapter wgpu finds (lavapipe
//! on CI) with the f16 and subgroup paths forced on or off.
//!
//! A path the adapter cannot provide is skipped with a message, unless the feature is named
//! in `PUPIL_REQUIRE_FEATURES` (comma-separated: `f16,subgroups`), as CI does on lavapipe,
//! so a runner that silently lost a feature fails instead of skipping.

#![allow(dead_code)]

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

/// Where the real default model is cached (`PUPIL_SMOLLM2`, else `$PUPIL_CACHE` or
/// `~/.cache/pupil`), as scripts/fetch-model.sh puts it.
pub fn smollm2_path() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("PUPIL_SMOLLM2").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("PUPIL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pupil"));
        cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

/// The real model's bytes, or None (skip) when it is absent — a failure instead when
/// `PUPIL_REQUIRE_MODELS` is set, as CI does.
pub fn smollm2() -> Option<Vec<u8>> {
    let path = smollm2_path();
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(std::env::var("PUPIL_REQUIRE_MODELS").is_err(), "{}: {e} (run scripts/fetch-model.sh)", path.display());
            eprintln!("skipped: {} not found (scripts/fetch-model.sh fetches it)", path.display());
            None
        }
    }
}
