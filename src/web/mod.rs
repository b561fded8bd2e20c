//! wasm-bindgen exports (feature `web`). Thin: converts types and forwards to the library.
//! Results cross to JavaScript as JSON strings. `Engine` (engine.rs) is the runtime pages use;
//! the free functions here serve the kernel test page.

mod blob;
mod engine;

use wasm_bindgen::prelude::*;

use crate::error::PupilError;
use crate::gpu::shader::{render, Dialect};
use crate::gpu::{ContextOptions, GpuContext};

pub use engine::{synth_model, Engine};

/// A JS `Error` with this `name` (what callers branch on) and `message`.
pub(crate) fn named_error(name: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name(name);
    e.into()
}

/// A library error as a JS `Error` named by its kind (`TooLarge`, `DeviceLost`, `Format`, …).
pub(crate) fn js_error(e: &PupilError) -> JsValue {
    named_error(e.kind(), &e.to_string())
}

fn js_err(e: PupilError) -> JsValue {
    js_error(&e)
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Adapter description and capabilities as seen through wgpu's WebGPU backend.
#[wasm_bindgen]
pub async fn gpu_info() -> Result<String, JsValue> {
    let ctx = GpuContext::new(ContextOptions::default()).await.map_err(js_err)?;
    let info = serde_json::json!({
        "adapter": ctx.adapter_info.name,
        "backend": format!("{:?}", ctx.adapter_info.backend),
        "adapter_features": format!("{:?}", ctx.adapter_features),
        "caps": ctx.caps,
        "describe": ctx.describe(),
    });
    Ok(info.to_string())
}

/// Run the kernel self-test (all families, or those named comma-separated in `families`)
/// and return `{ caps, reports: [CaseReport] }` as JSON.
#[wasm_bindgen]
pub async fn run_selftest(families: String) -> Result<String, JsValue> {
    let ctx = GpuContext::new(ContextOptions::default()).await.map_err(js_err)?;
    let wanted: Vec<&str> = families.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let chosen: Vec<&str> =
        crate::selftest::FAMILIES.iter().copied().filter(|f| wanted.is_empty() || wanted.contains(f)).collect();
    let reports = crate::selftest::run_families(&ctx, &chosen).await.map_err(js_err)?;
    Ok(serde_json::json!({ "caps": ctx.caps, "reports": reports }).to_string())
}

/// Every kernel variant's WGSL as the browser compiler (Tint) will read it:
/// `[{ name, entry, needs_f16, needs_subgroups, source }]`.
#[wasm_bindgen]
pub fn shader_variants() -> Result<String, JsValue> {
    let mut out = Vec::new();
    for key in crate::ops::all_variants() {
        out.push(serde_json::json!({
            "name": key.to_string(),
            "entry": key.entry,
            "needs_f16": key.needs_f16(),
            "needs_subgroups": key.needs_subgroups(),
            "source": render(&key, Dialect::Tint).map_err(js_err)?,
        }));
    }
    Ok(serde_json::Value::Array(out).to_string())
}

/// The fixed seeded sampling stream (`sampling::determinism_stream`: pseudo-random logits
/// uploaded as f32, sampled with the GPU path) as JSON; the browser test compares its tokens
/// with the native run's.
#[wasm_bindgen]
pub async fn sampling_stream() -> Result<String, JsValue> {
    let ctx = GpuContext::new(ContextOptions::default()).await.map_err(js_err)?;
    let stream = crate::sampling::determinism_stream(&ctx).await.map_err(js_err)?;
    Ok(stream.to_string())
}
