//! Architecture hyper-parameters read from GGUF metadata, with an error that names the missing
//! key rather than a panic or a silent default where no default is standard.

use super::gguf::{GgufHeader, Value};
use crate::error::{PupilError, Result};
use crate::ops::{Activation, RopeLayout};

/// Architectures this build can run, by their `general.architecture` name.
/// `qwen3next` runs as its full-attention, dense-MLP subset: the gated-attention output gate
/// with Qwen3-Next's q_proj packing (files with Gated DeltaNet layers or experts are refused).
pub const SUPPORTED_ARCHITECTURES: [&str; 5] = ["llama", "qwen2", "qwen3", "gemma3", "qwen3next"];

/// Gemma 3's local (sliding-window) layers rotate with this base whatever the global base is
/// (Hugging Face `rope_local_base_freq`; llama.cpp hard-codes it too).
const GEMMA3_LOCAL_ROPE_BASE: f64 = 10000.0;
/// Gemma 3 interleaves five local layers with one global layer (`sliding_window_pattern`).
const GEMMA3_SWA_PERIOD: usize = 6;

/// Interleaved sliding-window attention (Gemma 3): local layers see the last `window`
/// positions and rotate with their own RoPE base; the others are global.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Positions a local layer's query sees, itself included (query − key < window).
    pub window: usize,
    /// `local[i]`: layer i is a sliding-window layer.
    pub local: Vec<bool>,
    /// RoPE base of the local layers (no scaling applies to them).
    pub rope_base: f64,
}

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
    /// RoPE (qwen3, gemma3).
    pub qk_norm: bool,
    /// The MLP's gate activation: SiLU (llama, qwen) or GELU-tanh (gemma3).
    pub activation: Activation,
    /// Token embeddings are multiplied by this before the first block (gemma3: √hidden).
    pub embedding_scale: Option<f32>,
    /// The attention and MLP outputs are RMS-normalised before joining the residual
    /// (`post_attention_norm`, `post_ffw_norm`: gemma3's "sandwich" norms).
    pub post_norms: bool,
    /// Interleaved local/global attention layers (gemma3).
    pub sliding_window: Option<SlidingWindow>,
    /// Attention logits soft-capped as `cap·tanh(s/cap)` (Gemma 2 style; absent for Gemma 3).
    pub attn_softcap: Option<f32>,
    /// Gated attention (Qwen3-Next): `attn_q` holds 2·head_dim rows per head, the head's query
    /// then its output-gate logits, and the attention output is multiplied by σ(gate)
    /// elementwise before `attn_output`.
    pub output_gate: bool,
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

/// Gemma 3's window: `attention.sliding_window` (required) on the layers that
/// `attention.sliding_window_pattern` marks (a period p: every p-th layer is global; or one bool
/// per layer), default period 6 as Hugging Face and llama.cpp assume for gemma3 files that
/// carry no pattern.
fn gemma3_window(h: &GgufHeader, arch: &str, n_layers: usize) -> Result<SlidingWindow> {
    let name = format!("{arch}.attention.sliding_window");
    let window = uint(h, &name)?;
    if window == 0 {
        return Err(PupilError::Format(format!("GGUF metadata `{name}` must be positive")));
    }
    let pname = format!("{arch}.attention.sliding_window_pattern");
    let local: Vec<bool> = match h.get(&pname) {
        None => (0..n_layers).map(|i| (i + 1) % GEMMA3_SWA_PERIOD != 0).collect(),
        Some(Value::Array(items)) => {
            let flags: Option<Vec<bool>> =
                items.iter().map(|v| if let Value::Bool(b) = v { Some(*b) } else { None }).collect();
            match flags {
                Some(f) if f.len() == n_layers => f,
                _ => {
                    return Err(PupilError::Format(format!(
                        "GGUF metadata `{pname}` must be {n_layers} booleans (one per layer)"
                    )))
                }
            }
        }
        Some(_) => {
            let period = uint(h, &pname)?;
            if period == 0 {
                return Err(PupilError::Format(format!("GGUF metadata `{pname}` must be positive")));
            }
            (0..n_layers).map(|i| (i + 1) % period != 0).collect()
        }
    };
    let rope_base = float_or(h, &format!("{arch}.rope.freq_base_swa"), GEMMA3_LOCAL_ROPE_BASE)?;
    if !(rope_base > 1.0) {
        return Err(PupilError::Format(format!("{arch} model: rope.freq_base_swa {rope_base} must exceed 1")));
    }
    Ok(SlidingWindow { window, local, rope_base })
}

/// A qwen3next file Pupil can run has only full-attention layers with dense MLPs (Qwen3-Next
/// itself interleaves Gated DeltaNet linear attention and routes a mixture of experts).
fn qwen3next_dense_only(h: &GgufHeader, n_layers: usize) -> Result<()> {
    for i in 0..n_layers {
        let has = |s: &str| h.tensors.iter().any(|t| t.name.starts_with(&format!("blk.{i}.{s}")));
        if has("ssm_") || !has("attn_q.") {
            return Err(PupilError::Unsupported(format!(
                "qwen3next layer {i} is a linear-attention (Gated DeltaNet) layer; Pupil runs qwen3next models \
                 whose layers are all full (gated) attention"
            )));
        }
        if has("attn_q.bias") || has("attn_output.bias") {
            return Err(PupilError::Unsupported(format!("qwen3next layer {i}: attention biases")));
        }
        if has("ffn_gate_inp") || has("ffn_gate_exps") || has("ffn_up_exps") {
            return Err(PupilError::Unsupported(format!(
                "qwen3next layer {i} has a mixture-of-experts MLP; Pupil runs qwen3next models with dense MLPs"
            )));
        }
    }
    Ok(())
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
        // Gemma's GGUF converter keeps HF's row order (NeoX pairs), like qwen.
        let rope_layout = if arch == "llama" { RopeLayout::Normal } else { RopeLayout::NeoX };
        let gemma = arch == "gemma3";
        let gated = arch == "qwen3next";
        if gated {
            qwen3next_dense_only(h, n_layers)?;
        }
        let qk_norm = arch == "qwen3" || gemma || gated;
        let sliding_window = if gemma { Some(gemma3_window(h, &arch, n_layers)?) } else { None };
        if h.get(&k("final_logit_softcapping")).is_some() {
            return Err(PupilError::Unsupported(format!("{arch}: final logit soft-capping")));
        }
        let attn_softcap = match h.get(&k("attn_logit_softcapping")) {
            None => None,
            Some(_) => {
                let cap = float_or(h, &k("attn_logit_softcapping"), 0.0)?;
                if !(cap > 0.0) {
                    return bad(format!("attn_logit_softcapping {cap} must be positive"));
                }
                Some(cap as f32)
            }
        };
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
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            // HF multiplies by `hidden ** 0.5` rounded to the weights' dtype.
            embedding_scale: gemma.then(|| (hidden as f64).sqrt() as f32),
            post_norms: gemma,
            sliding_window,
            attn_softcap,
            output_gate: gated,
        })
    }

    /// The GGUF name (in `blk.N.…`) of the MLP's input norm: llama.cpp calls HF's
    /// `post_attention_layernorm` `ffn_norm`, except for qwen3next (`post_attention_norm`).
    pub fn ffn_norm_name(&self) -> &'static str {
        if self.architecture == "qwen3next" {
            "post_attention_norm"
        } else {
            "ffn_norm"
        }
    }

    /// Rows of `attn_q`: the queries, and with an output gate as many gate logits.
    pub fn q_rows(&self) -> usize {
        self.n_heads * self.head_dim * if self.output_gate { 2 } else { 1 }
    }

    /// Whether f16 activations would overflow: Gemma's residual stream holds values past f16's
    /// 65504 (its "massive activations"), so its activations stay f32, as llama.cpp keeps them.
    pub fn needs_f32_activations(&self) -> bool {
        self.architecture == "gemma3"
    }

    /// Whether layer `i` attends through a sliding window (and which).
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        self.sliding_window.as_ref().filter(|s| s.local.get(i).copied().unwrap_or(false)).map(|s| s.window)
    }

    /// Parameters of the weights (for summaries).
    pub fn parameter_count(&self) -> u64 {
        let (h, f, v) = (self.hidden as u64, self.ffn_hidden as u64, self.vocab_size as u64);
        let qkvo = h * (self.q_rows() + self.n_heads * self.head_dim) as u64
            + h * (self.n_kv_heads * self.head_dim) as u64 * 2;
        let per_layer = qkvo + 3 * h * f + 2 * h;
        per_layer * self.n_layers as u64 + v * h * if self.tied_embeddings { 1 } else { 2 } + h
    }
}
