//! WGSL sources and their variants.
//!
//! Every `.wgsl` file under `shaders/` is compiled into the binary by [`SHADER_FILES`]. A
//! kernel variant is a [`KernelKey`]: (shader file, entry point, defines). [`render`] turns a
//! key into WGSL with a tiny preprocessor:
//! - `#include "name"` pastes another registered file (shared helpers, e.g. reductions);
//! - `#ifdef NAME` / `#ifndef NAME` / `#else` / `#endif` keep or drop lines;
//! - every define also becomes `const NAME: u32 = value;` so shaders can size arrays and
//!   workgroups with it;
//! - `F16` selects `alias T = f16;` (plus `enable f16;`), otherwise `alias T = f32;`: `T` is
//!   the storage type of activations, arithmetic is always f32;
//! - `SUBGROUPS` selects subgroup reductions. Tint (Chrome) wants `enable subgroups;` while
//!   naga 30 rejects that directive and gates subgroup builtins on the device feature
//!   instead, so the header depends on the [`Dialect`].

use std::fmt;

use serde::Serialize;

use crate::error::{PupilError, Result};

/// (name, source) of every WGSL file; names are paths under `shaders/` without `.wgsl`.
pub const SHADER_FILES: &[(&str, &str)] = &[
    ("common/ids", include_str!("../../shaders/common/ids.wgsl")),
    ("common/reduce", include_str!("../../shaders/common/reduce.wgsl")),
    ("common/dequant", include_str!("../../shaders/common/dequant.wgsl")),
    ("common/act", include_str!("../../shaders/common/act.wgsl")),
    ("common/matmul_io", include_str!("../../shaders/common/matmul_io.wgsl")),
    ("common/attention_logit", include_str!("../../shaders/common/attention_logit.wgsl")),
    ("rms_norm", include_str!("../../shaders/rms_norm.wgsl")),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    ("activation", include_str!("../../shaders/activation.wgsl")),
    ("add", include_str!("../../shaders/add.wgsl")),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
    ("embedding", include_str!("../../shaders/embedding.wgsl")),
    ("embedding_quant", include_str!("../../shaders/embedding_quant.wgsl")),
    ("matmul_gemv", include_str!("../../shaders/matmul_gemv.wgsl")),
    ("matmul_gemm", include_str!("../../shaders/matmul_gemm.wgsl")),
    ("quantize_act", include_str!("../../shaders/quantize_act.wgsl")),
    ("argmax", include_str!("../../shaders/argmax.wgsl")),
    ("topk", include_str!("../../shaders/topk.wgsl")),
    ("sample_logits", include_str!("../../shaders/sample_logits.wgsl")),
    ("sample_candidates", include_str!("../../shaders/sample_candidates.wgsl")),
    ("bench", include_str!("../../shaders/bench.wgsl")),
    ("attention_prefill", include_str!("../../shaders/attention_prefill.wgsl")),
    ("attention_decode", include_str!("../../shaders/attention_decode.wgsl")),
    ("attention_kv_write", include_str!("../../shaders/attention_kv_write.wgsl")),
    ("attention_gate", include_str!("../../shaders/attention_gate.wgsl")),
    ("running_mean", include_str!("../../shaders/running_mean.wgsl")),
    ("cross_entropy", include_str!("../../shaders/cross_entropy.wgsl")),
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("matmul_dense", include_str!("../../shaders/matmul_dense.wgsl")),
    ("attention_backward", include_str!("../../shaders/attention_backward.wgsl")),
    ("dropout", include_str!("../../shaders/dropout.wgsl")),
    ("distill_loss", include_str!("../../shaders/distill_loss.wgsl")),
    ("distill_topk", include_str!("../../shaders/distill_topk.wgsl")),
    ("hidden_mse", include_str!("../../shaders/hidden_mse.wgsl")),
];

/// Which WGSL compiler will read the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Dialect {
    /// wgpu-native (naga).
    Naga,
    /// Browsers (Tint in Chrome; Firefox's WebGPU uses naga but accepts the directive).
    Tint,
}

impl Dialect {
    /// The dialect of the backend this build drives: naga natively, the browser on wasm.
    pub fn of_this_build() -> Dialect {
        if cfg!(target_arch = "wasm32") {
            Dialect::Tint
        } else {
            Dialect::Naga
        }
    }
}

/// One compiled variant: shader file, entry point and sorted defines.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct KernelKey {
    pub shader: &'static str,
    pub entry: &'static str,
    pub defines: Vec<(&'static str, u32)>,
}

impl KernelKey {
    pub fn new(shader: &'static str, entry: &'static str) -> Self {
        KernelKey { shader, entry, defines: Vec::new() }
    }

    /// Add `NAME = value` (replacing an earlier value).
    pub fn define(mut self, name: &'static str, value: u32) -> Self {
        self.defines.retain(|(n, _)| *n != name);
        self.defines.push((name, value));
        self.defines.sort();
        self
    }

    /// Add `NAME` (value 1) when `on`.
    pub fn flag(self, name: &'static str, on: bool) -> Self {
        if on {
            self.define(name, 1)
        } else {
            self
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.defines.iter().any(|(n, _)| *n == name)
    }

    pub fn needs_f16(&self) -> bool {
        self.has("F16")
    }
    pub fn needs_subgroups(&self) -> bool {
        self.has("SUBGROUPS")
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{}", self.shader, self.entry)?;
        for (n, v) in &self.defines {
            if *v == 1 {
                write!(f, " {n}")?;
            } else {
                write!(f, " {n}={v}")?;
            }
        }
        Ok(())
    }
}

fn file(name: &str) -> Result<&'static str> {
    SHADER_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| PupilError::Shader { shader: name.into(), detail: "no such shader file".into() })
}

/// The full WGSL text of a variant.
pub fn render(key: &KernelKey, dialect: Dialect) -> Result<String> {
    let mut out = String::new();
    if key.needs_f16() {
        out.push_str("enable f16;\n");
    }
    if key.needs_subgroups() && dialect == Dialect::Tint {
        out.push_str("enable subgroups;\n");
    }
    out.push_str(if key.needs_f16() { "alias T = f16;\n" } else { "alias T = f32;\n" });
    for (n, v) in &key.defines {
        out.push_str(&format!("const {n}: u32 = {v}u;\n"));
    }
    let mut included = Vec::new();
    expand(key, key.shader, &mut out, &mut included)?;
    Ok(out)
}

/// Paste `name` into `out`, resolving includes (each file once) and conditionals.
fn expand(key: &KernelKey, name: &'static str, out: &mut String, included: &mut Vec<&'static str>) -> Result<()> {
    if included.contains(&name) {
        return Ok(());
    }
    included.push(name);
    let err = |line: usize, detail: &str| PupilError::Shader {
        shader: format!("{name}.wgsl:{}", line + 1),
        detail: detail.into(),
    };
    // Stack of (this block is kept, an enclosing block is dropped).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let live = |stack: &Vec<(bool, bool)>| stack.iter().all(|&(keep, _)| keep);
    for (i, line) in file(name)?.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#ifdef ") {
            let parent_live = live(&stack);
            stack.push((key.has(rest.trim()), !parent_live));
        } else if let Some(rest) = t.strip_prefix("#ifndef ") {
            let parent_live = live(&stack);
            stack.push((!key.has(rest.trim()), !parent_live));
        } else if t == "#else" {
            let top = stack.last_mut().ok_or_else(|| err(i, "#else without #ifdef"))?;
            top.0 = !top.0;
        } else if t == "#endif" {
            stack.pop().ok_or_else(|| err(i, "#endif without #ifdef"))?;
        } else if let Some(rest) = t.strip_prefix("#include ") {
            if live(&stack) {
                let inc = rest.trim().trim_matches('"');
                let inc_name = SHADER_FILES
                    .iter()
                    .map(|(n, _)| *n)
                    .find(|n| *n == inc)
                    .ok_or_else(|| err(i, &format!("unknown include {inc}")))?;
                expand(key, inc_name, out, included)?;
            }
        } else if t.starts_with('#') {
            return Err(err(i, &format!("unknown directive {t}")));
        } else if live(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err(0, "unterminated #ifdef"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditionals_and_header() {
        let k = KernelKey::new("rms_norm", "rms_norm_forward").flag("F16", true).define("WG", 64);
        let s = render(&k, Dialect::Naga).unwrap();
        assert!(s.starts_with("enable f16;\nalias T = f16;\n"));
        assert!(s.contains("const WG: u32 = 64u;"));
        assert!(!s.contains("#ifdef"));
        let k = KernelKey::new("rms_norm", "rms_norm_forward").flag("SUBGROUPS", true);
        assert!(render(&k, Dialect::Tint).unwrap().starts_with("enable subgroups;"));
        assert!(!render(&k, Dialect::Naga).unwrap().contains("enable subgroups;"));
    }
}
