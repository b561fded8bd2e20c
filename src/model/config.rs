//! Architecture hyper-parameters read from GGUF metadata, with an error that names the missing
//! key rather than a panic or a silent default where no default is standard.

use super::gguf::{GgufHeader, Value};
use crate::error::{PupilError, Result};
use crate::ops::RopeLayout;

/// Architectures this build can run, by their `general.architecture` name.
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// How RoPE angles are stretched for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear {
        factor: f64,
    },
    /// Per-frequency divisors from the `rope_freqs.weight` tensor (llama 3.x: the GGUF
    /// converter bakes the llama3 schedule into that tensor).
    FreqFactors(Vec<f32>),
}

/// A decoder-only transformer's shape, as stored in GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Rotated dims per head (≤ head_dim).
    pub n_rot: usize,
    pub rope_base: f64,
    pub rope_scaling: RopeScaling,
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    /// Context length the model was trained for.
    pub context_length: usize,
    pub vocab_size: usize,
    /// The output head reuses the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// Each Q and K head is RMS-normalised (own weights, `attn_q_norm`/`attn_k_norm`) before
    /// RoPE (qwen3).
    pub qk_norm: bool,
}

fn key<'a>(h: &'a GgufHeader, name: &str) -> Result<&'a Value> {
    h.get(name).ok_or_else(|| PupilError::Format(format!("GGUF metadata lacks `{name}`")))
}

fn uint(h: &GgufHeader, name: &str) -> Result<usize> {
    let v = key(h, name)?;
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| PupilError::Format(format!("GGUF metadata `{name}` must be a non-negative integer, got {v:?}")))
}

fn uint_or(h: &GgufHeader, name: &str, default: usize) -> Result<usize> {
    if h.get(name).is_some() {
        uint(h, name)
    } else {
        Ok(default)
    }
}

fn float_or(h: &GgufHeader, name: &str, default: f64) -> Result<f64> {
    match h.get(name) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| PupilError::Format(format!("GGUF metadata `{name}` must be a finite number, got {v:?}"))),
    }
}

/// `general.architecture`, checked against what this build runs.
pub fn architecture(h: &GgufHeader) -> Result<String> {
    let arch = key(h, "general.architecture")?
        .as_str()
        .ok_or_else(|| PupilError::Format("GGUF metadata `general.architecture` must be a string".into()))?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(PupilError::Unsupported(format!(
            "model architecture `{arch}` (this build runs: {})",
            SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    Ok(arch.to_string())
}

impl ModelConfig {
    /// Read and check the hyper-parameters of a supported architecture.
    pub fn from_gguf(h: &GgufHeader) -> Result<ModelConfig> {
        let arch = architecture(h)?;
        let k = |s: &str| format!("{arch}.{s}");
        let n_layers = uint(h, &k("block_count"))?;
        let hidden = uint(h, &k("embedding_length"))?;
        let ffn_hidden = uint(h, &k("feed_forward_length"))?;
        let n_heads = uint(h, &k("attention.head_count"))?;
        let n_kv_heads = uint_or(h, &k("attention.head_count_kv"), n_heads)?;
        let bad = |what: String| Err(PupilError::Format(format!("{arch} model: {what}")));
        if n_layers == 0 || hidden == 0 || ffn_hidden == 0 || n_heads == 0 || n_kv_heads == 0 {
            return bad(format!(
                "layers {n_layers}, hidden {hidden}, ffn {ffn_hidden}, heads {n_heads}/{n_kv_heads} must all be positive"
            ));
        }
        if !n_heads.is_multiple_of(n_kv_heads) {
            return bad(format!("{n_heads} query heads cannot share {n_kv_heads} KV heads"));
        }
        let head_dim = uint_or(h, &k("attention.key_length"), hidden / n_heads)?;
        if uint_or(h, &k("attention.value_length"), head_dim)? != head_dim {
            return Err(PupilError::Unsupported(format!("{arch}: value heads of a different size than key heads")));
        }
        let n_rot = uint_or(h, &k("rope.dimension_count"), head_dim)?;
        if n_rot == 0 || n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return bad(format!("rope.dimension_count {n_rot} must be even and at most head_dim {head_dim}"));
        }
        let rope_base = float_or(h, &k("rope.freq_base"), 10000.0)?;
        if !(rope_base > 1.0) {
            return bad(format!("rope.freq_base {rope_base} must exceed 1"));
        }
        let rope_scaling = match h.get(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor = float_or(h, &k("rope.scaling.factor"), 1.0)?;
                if !(factor > 0.0) {
                    return bad(format!("rope.scaling.factor {factor} must be positive"));
                }
                RopeScaling::Linear { factor }
            }
            Some(other) => return Err(PupilError::Unsupported(format!("{arch}: RoPE scaling `{other}`"))),
        };
        // llama 3.x: the per-frequency factors live in a tensor (read by the loader).
        let rope_scaling = if h.tensor("rope_freqs.weight").is_some() {
            match rope_scaling {
                RopeScaling::None => RopeScaling::FreqFactors(Vec::new()),
                _ => return bad("both rope_freqs.weight and rope.scaling.type are set".into()),
            }
        } else {
            rope_scaling
        };
        let rms_eps = float_or(h, &k("attention.layer_norm_rms_epsilon"), 1e-5)? as f32;
        if !(rms_eps > 0.0) {
            return bad(format!("layer_norm_rms_epsilon {rms_eps} must be positive"));
        }
        let context_length = uint_or(h, &k("context_length"), 2048)?.max(1);
        let embd = h
            .tensor("token_embd.weight")
            .ok_or_else(|| PupilError::Format(format!("{arch} model lacks tensor `token_embd.weight`")))?;
        let (vocab_size, embd_cols) = embd.rows_cols();
        if embd_cols != hidden || vocab_size == 0 {
            return bad(format!("token_embd.weight is {:?}, expected [{hidden}, vocab]", embd.dims));
        }
        let rope_layout = if arch == "llama" { RopeLayout::Normal } else { RopeLayout::NeoX };
        let qk_norm = arch == "qwen3";
        Ok(ModelConfig {
            architecture: arch,
            n_layers,
            hidden,
            ffn_hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            n_rot,
            rope_base,
            rope_scaling,
            // GGUF's llama converter permutes Q/K rows so that rotation pairs are adjacent
            // (2i, 2i+1): llama.cpp's "normal" RoPE on the stored weights equals HF's NeoX-style
            // rotation on the original ones, so nothing needs un-permuting. qwen2 files keep
            // HF's row order and rotate NeoX pairs (i, i + n_rot/2); so do qwen3 files.
            rope_layout,
            rms_eps,
            context_length,
            vocab_size,
            tied_embeddings: h.tensor("output.weight").is_none(),
            qk_norm,
        })
    }

    /// Parameters of the weights (for summaries).
    pub fn parameter_count(&self) -> u64 {
        let (h, f, v) = (self.hidden as u64, self.ffn_hidden as u64, self.vocab_size as u64);
        let qkvo = h * (self.n_heads * self.head_dim) as u64 * 2 + h * (self.n_kv_heads * self.head_dim) as u64 * 2;
        let per_layer = qkvo + 3 * h * f + 2 * h;
        per_layer * self.n_layers as u64 + v * h * if self.tied_embeddings { 1 } else { 2 } + h
    }
}
