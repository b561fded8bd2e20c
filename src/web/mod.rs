//! wasm-bindgen exports (feature `web`). Thin: converts types and forwards to the library.
//! Results cross to JavaScript as JSON strings.

use wasm_bindgen::prelude::*;

use crate::gpu::shader::{render, Dialect};
use crate::gpu::{ContextOptions, GpuContext};

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
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
