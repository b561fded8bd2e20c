//! Hugging Face `config.json` → the GGUF metadata `ModelConfig::from_gguf` reads (see
//! `model/config.rs`), keyed and typed as llama.cpp's `convert_hf_to_gguf.py` writes them (u32
//! counts, f32 floats), so a converted file also loads in llama.cpp.
//!
//! The shape (layers, widths, heads, vocabulary) must be present: no default is standard.
//! Other fields take the defaults of transformers' config class for the architecture when
//! absent or null, because `save_pretrained` leaves out values equal to the base class's
//! defaults (`tie_word_embeddings: true` is often missing). A field of the wrong type is a
//! `Format` error naming it; a feature Pupil does not run (sliding windows on qwen, partial
//! rotary, other activations, yarn RoPE, ...) is `Unsupported`.

use serde_json::{Map, Value as Json};

use crate::error::{PupilError, Result};
use crate::model::gguf::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    /// Qwen3-Next's gated attention, as a model whose layers are all full attention with dense
    /// MLPs (the Gated DeltaNet layers and the experts are refused).
    Qwen3Next,
}

impl Arch {
    /// `general.architecture` in GGUF.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen3Next => "qwen3next",
        }
    }
}

/// What the config's `rope_scaling` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Rope {
    None,
    Linear(f64),
    /// llama 3.x: per-frequency divisors (`rope_freqs.weight`, n_rot / 2 values).
    Llama3(Vec<f32>),
}

/// The checked hyper-parameters of a checkpoint.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
    pub rope: Rope,
    metadata: Vec<(String, Value)>,
}

fn field_err(name: &str, want: &str, got: &Json) -> PupilError {
    PupilError::Format(format!("config.json: `{name}` must be {want}, got {got}"))
}

/// Typed access to one JSON object (the config, or its `rope_scaling`); `scope` prefixes names.
struct Fields<'a> {
    obj: &'a Map<String, Json>,
    scope: &'a str,
}

impl Fields<'_> {
    fn name(&self, k: &str) -> String {
        format!("{}{k}", self.scope)
    }
    /// The value, with `null` meaning absent (transformers writes `head_dim: null` and the like).
    fn get(&self, k: &str) -> Option<&Json> {
        self.obj.get(k).filter(|v| !v.is_null())
    }
    fn uint_opt(&self, k: &str) -> Result<Option<usize>> {
        self.get(k)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| field_err(&self.name(k), "a non-negative integer", v))
            })
            .transpose()
    }
    fn uint(&self, k: &str) -> Result<usize> {
        self.uint_opt(k)?.ok_or_else(|| PupilError::Format(format!("config.json lacks `{}`", self.name(k))))
    }
    fn positive(&self, k: &str) -> Result<usize> {
        match self.uint(k)? {
            0 => Err(PupilError::Format(format!("config.json: `{}` must be positive", self.name(k)))),
            n => Ok(n),
        }
    }
    fn float_opt(&self, k: &str) -> Result<Option<f64>> {
        self.get(k)
            .map(|v| v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| field_err(&self.name(k), "a finite number", v)))
            .transpose()
    }
    fn float(&self, k: &str) -> Result<f64> {
        self.float_opt(k)?.ok_or_else(|| PupilError::Format(format!("config.json lacks `{}`", self.name(k))))
    }
    fn bool_or(&self, k: &str, default: bool) -> Result<bool> {
        self.get(k).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| field_err(&self.name(k), "true or false", v)))
    }
    fn str_opt(&self, k: &str) -> Result<Option<&str>> {
        self.get(k).map(|v| v.as_str().ok_or_else(|| field_err(&self.name(k), "a string", v))).transpose()
    }
}

/// The architecture from `model_type` (or, without one, `architectures`).
fn architecture(f: &Fields) -> Result<Arch> {
    let supported = "llama, qwen2, qwen3, gemma3_text, qwen3_next (LlamaForCausalLM, Qwen2ForCausalLM, \
                     Qwen3ForCausalLM, Gemma3ForCausalLM, Qwen3NextForCausalLM)";
    let by_type = |t: &str| match t {
        "llama" => Some(Arch::Llama),
        "qwen2" => Some(Arch::Qwen2),
        "qwen3" => Some(Arch::Qwen3),
        "gemma3_text" => Some(Arch::Gemma3),
        "qwen3_next" => Some(Arch::Qwen3Next),
        _ => None,
    };
    if let Some(t) = f.str_opt("model_type")? {
        return by_type(t).ok_or_else(|| {
            let hint =
                if t == "gemma3" { " (the multimodal Gemma 3; only its text model, gemma3_text, runs)" } else { "" };
            PupilError::Unsupported(format!("model_type `{t}`{hint}; Pupil converts {supported}"))
        });
    }
    let names = match f.get("architectures") {
        None => return Err(PupilError::Format("config.json lacks `model_type`".into())),
        Some(v) => v.as_array().ok_or_else(|| field_err("architectures", "an array of strings", v))?,
    };
    let first = names.first().and_then(Json::as_str).unwrap_or("");
    match first {
        "LlamaForCausalLM" => Ok(Arch::Llama),
        "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
        "Qwen3ForCausalLM" => Ok(Arch::Qwen3),
        "Gemma3ForCausalLM" => Ok(Arch::Gemma3),
        "Qwen3NextForCausalLM" => Ok(Arch::Qwen3Next),
        other => Err(PupilError::Unsupported(format!("architecture `{other}`; Pupil converts {supported}"))),
    }
}

/// llama 3.x's per-frequency divisors, as transformers computes its inverse frequencies
/// (`_compute_llama3_parameters`): wavelengths below `original / high_freq_factor` keep their
/// frequency, those above `original / low_freq_factor` are divided by `factor`, and those between
/// are blended. llama.cpp's converter bakes the same schedule into `rope_freqs.weight`, but reads
/// `original_max_position_embeddings` from the top level of the config (default 8192) where
/// transformers reads it from `rope_scaling`; this follows transformers, which defines the model
/// (real Llama 3.x configs say 8192 in `rope_scaling` and agree either way).
fn llama3_factors(s: &Fields, base: f64, n_rot: usize) -> Result<Vec<f32>> {
    let factor = s.float("factor")?;
    let low = s.float("low_freq_factor")?;
    let high = s.float("high_freq_factor")?;
    let original = s.float("original_max_position_embeddings")?;
    if !(factor > 0.0 && low > 0.0 && high > low && original > 0.0) {
        return Err(PupilError::Format(format!(
            "config.json: llama3 rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0, got \
             {factor}, {high}, {low}"
        )));
    }
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    Ok((0..n_rot / 2)
        .map(|i| {
            let freq = base.powf(-((2 * i) as f64) / n_rot as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect())
}

fn rope_scaling(f: &Fields, base: f64, n_rot: usize) -> Result<Rope> {
    let obj = match f.get("rope_scaling") {
        None => return Ok(Rope::None),
        Some(v) => v.as_object().ok_or_else(|| field_err("rope_scaling", "an object or null", v))?,
    };
    let s = Fields { obj, scope: "rope_scaling." };
    // transformers accepts the older `type` for `rope_type`.
    let kind = match s.str_opt("rope_type")? {
        Some(t) => t,
        None => {
            s.str_opt("type")?.ok_or_else(|| PupilError::Format("config.json lacks `rope_scaling.rope_type`".into()))?
        }
    };
    match kind {
        "default" => Ok(Rope::None),
        "linear" => match s.float("factor")? {
            x if x > 0.0 => Ok(Rope::Linear(x)),
            x => Err(PupilError::Format(format!("config.json: `rope_scaling.factor` {x} must be positive"))),
        },
        "llama3" => Ok(Rope::Llama3(llama3_factors(&s, base, n_rot)?)),
        other => Err(PupilError::Unsupported(format!("RoPE scaling `{other}` (Pupil runs none, linear and llama3)"))),
    }
}

/// `layer_types`, when present: one entry per layer.
fn layer_types<'a>(f: &'a Fields<'a>, n_layers: usize) -> Result<Option<&'a Vec<Json>>> {
    let Some(v) = f.get("layer_types") else { return Ok(None) };
    let items = v.as_array().ok_or_else(|| field_err("layer_types", "an array", v))?;
    if items.len() != n_layers {
        return Err(PupilError::Format(format!(
            "config.json: `layer_types` has {} entries for {n_layers} layers",
            items.len()
        )));
    }
    Ok(Some(items))
}

/// Qwen3-Next as Pupil runs it: every layer full (gated) attention, every MLP dense, no
/// attention biases — checked with transformers' defaults (`full_attention_interval` 4,
/// `num_experts` 512, `decoder_sparse_step` 1), which make a real Qwen3-Next hybrid and sparse.
fn qwen3_next_dense_full_attention(f: &Fields, n_layers: usize) -> Result<()> {
    let full: Vec<bool> = match layer_types(f, n_layers)? {
        Some(items) => items.iter().map(|v| v.as_str() == Some("full_attention")).collect(),
        None => {
            let interval = f.uint_opt("full_attention_interval")?.unwrap_or(4).max(1);
            (0..n_layers).map(|i| (i + 1) % interval == 0).collect()
        }
    };
    if let Some(i) = full.iter().position(|&x| !x) {
        return Err(PupilError::Unsupported(format!(
            "qwen3_next layer {i} is not full attention (Gated DeltaNet linear attention); Pupil runs qwen3_next \
             checkpoints whose `layer_types` are all \"full_attention\""
        )));
    }
    let experts = f.uint_opt("num_experts")?.unwrap_or(512);
    let step = f.uint_opt("decoder_sparse_step")?.unwrap_or(1).max(1);
    let dense_only: Vec<usize> = match f.get("mlp_only_layers") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| field_err("mlp_only_layers", "an array of layer indices", v))?,
    };
    if let Some(i) = (0..n_layers).find(|&i| !dense_only.contains(&i) && experts > 0 && (i + 1) % step == 0) {
        return Err(PupilError::Unsupported(format!(
            "qwen3_next layer {i} has a mixture-of-experts MLP; Pupil runs dense MLPs (num_experts 0, or every \
             layer in mlp_only_layers)"
        )));
    }
    if f.bool_or("attention_bias", false)? {
        return Err(PupilError::Unsupported("attention_bias for qwen3_next".into()));
    }
    Ok(())
}

impl HfConfig {
    /// Parse and check `config.json`.
    pub fn parse(config_json: &str) -> Result<HfConfig> {
        let json: Json = serde_json::from_str(config_json)
            .map_err(|e| PupilError::Format(format!("config.json is not valid JSON: {e}")))?;
        let obj = json.as_object().ok_or_else(|| PupilError::Format("config.json is not a JSON object".into()))?;
        let f = Fields { obj, scope: "" };
        let arch = architecture(&f)?;
        let gemma = arch == Arch::Gemma3;
        let n_layers = f.positive("num_hidden_layers")?;
        let hidden = f.positive("hidden_size")?;
        let ffn = f.positive("intermediate_size")?;
        let n_heads = f.positive("num_attention_heads")?;
        let vocab = f.positive("vocab_size")?;
        let n_kv_heads = f.uint_opt("num_key_value_heads")?.unwrap_or(n_heads);
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(PupilError::Format(format!(
                "config.json: {n_heads} attention heads cannot share {n_kv_heads} key/value heads"
            )));
        }
        // transformers' class defaults; every attention class reads `head_dim` when present.
        let head_dim = f.uint_opt("head_dim")?.unwrap_or(match arch {
            Arch::Qwen3 => 128,
            Arch::Gemma3 | Arch::Qwen3Next => 256,
            _ => hidden / n_heads,
        });
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(PupilError::Format(format!("config.json: head_dim {head_dim} must be positive and even")));
        }
        // Rotated dims per head: all, except Qwen3-Next's (default a quarter), as transformers
        // sizes its rotary embedding (`int(head_dim * partial_rotary_factor)`).
        let n_rot = match (arch, f.float_opt("partial_rotary_factor")?) {
            (Arch::Qwen3Next, p) => {
                let p = p.unwrap_or(0.25);
                let n = (head_dim as f64 * p) as usize;
                if !(p > 0.0 && p <= 1.0) || n == 0 || !n.is_multiple_of(2) {
                    return Err(PupilError::Unsupported(format!(
                        "partial_rotary_factor {p}: head_dim {head_dim} × it must be a positive even number of dims"
                    )));
                }
                n
            }
            (_, None | Some(1.0)) => head_dim,
            (_, Some(p)) => {
                return Err(PupilError::Unsupported(format!("partial_rotary_factor {p} (RoPE on part of each head)")))
            }
        };
        if arch == Arch::Qwen3Next {
            qwen3_next_dense_full_attention(&f, n_layers)?;
        }
        let act_key = if gemma { "hidden_activation" } else { "hidden_act" };
        let want_act = if gemma { "gelu_pytorch_tanh" } else { "silu" };
        if let Some(act) = f.str_opt(act_key)? {
            if act != want_act {
                return Err(PupilError::Unsupported(format!(
                    "{act_key} `{act}` for {} (Pupil runs {want_act})",
                    arch.gguf_name()
                )));
            }
        }
        if f.bool_or("mlp_bias", false)? {
            return Err(PupilError::Unsupported("mlp_bias (biases on the MLP projections)".into()));
        }
        if matches!(arch, Arch::Qwen2 | Arch::Qwen3) && f.bool_or("use_sliding_window", false)? {
            return Err(PupilError::Unsupported(format!("use_sliding_window for {}", arch.gguf_name())));
        }
        if gemma && f.bool_or("use_bidirectional_attention", false)? {
            return Err(PupilError::Unsupported("use_bidirectional_attention (an encoder Gemma 3)".into()));
        }
        let rope_base = f.float_opt("rope_theta")?.unwrap_or(if gemma { 1e6 } else { 10000.0 });
        if !(rope_base > 1.0) {
            return Err(PupilError::Format(format!("config.json: rope_theta {rope_base} must exceed 1")));
        }
        let rope = rope_scaling(&f, rope_base, n_rot)?;
        let rms_eps = f.float_opt("rms_norm_eps")?.unwrap_or(1e-6);
        let context = f.uint_opt("max_position_embeddings")?.unwrap_or(match arch {
            Arch::Llama => 2048,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Next => 32768,
            Arch::Gemma3 => 131072,
        });
        let tied = f.bool_or("tie_word_embeddings", gemma)?;

        let a = arch.gguf_name();
        let k = |s: &str| format!("{a}.{s}");
        let u = |x: usize| Value::U32(x.min(u32::MAX as usize) as u32);
        let mut m = vec![
            ("general.architecture".to_string(), Value::String(a.into())),
            (k("block_count"), u(n_layers)),
            (k("context_length"), u(context)),
            (k("embedding_length"), u(hidden)),
            (k("feed_forward_length"), u(ffn)),
            (k("attention.head_count"), u(n_heads)),
            (k("attention.head_count_kv"), u(n_kv_heads)),
            (k("attention.key_length"), u(head_dim)),
            (k("attention.value_length"), u(head_dim)),
            (k("rope.dimension_count"), u(n_rot)),
            (k("rope.freq_base"), Value::F32(rope_base as f32)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(rms_eps as f32)),
            (k("vocab_size"), u(vocab)),
        ];
        if let Rope::Linear(factor) = rope {
            m.push((k("rope.scaling.type"), Value::String("linear".into())));
            m.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
        }
        if gemma {
            // Pupil scales scores by 1/√head_dim; Gemma 3 by query_pre_attn_scalar^-½.
            let scalar = f.float_opt("query_pre_attn_scalar")?.unwrap_or(256.0);
            if scalar != head_dim as f64 {
                return Err(PupilError::Unsupported(format!(
                    "query_pre_attn_scalar {scalar} ≠ head_dim {head_dim} (Pupil scales attention by 1/√head_dim)"
                )));
            }
            m.push((k("attention.sliding_window"), u(f.uint_opt("sliding_window")?.unwrap_or(4096))));
            let local: Vec<bool> = match layer_types(&f, n_layers)? {
                Some(items) => {
                    let kind = |v: &Json| match v.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(field_err("layer_types", "\"sliding_attention\" or \"full_attention\" entries", v)),
                    };
                    items.iter().map(kind).collect::<Result<_>>()?
                }
                // Older configs: every `sliding_window_pattern`-th layer is global.
                None => {
                    let period = f.uint_opt("sliding_window_pattern")?.unwrap_or(6).max(1);
                    (0..n_layers).map(|i| (i + 1) % period != 0).collect()
                }
            };
            m.push((k("attention.sliding_window_pattern"), Value::Array(local.into_iter().map(Value::Bool).collect())));
            m.push((
                k("rope.freq_base_swa"),
                Value::F32(f.float_opt("rope_local_base_freq")?.unwrap_or(10000.0) as f32),
            ));
            for cap in ["final_logit_softcapping", "attn_logit_softcapping"] {
                if let Some(c) = f.float_opt(cap)? {
                    m.push((k(cap), Value::F32(c as f32)));
                }
            }
        }
        Ok(HfConfig { arch, n_layers, hidden, ffn, n_heads, n_kv_heads, head_dim, vocab, tied, rope, metadata: m })
    }

    /// The GGUF metadata of the converted model (architecture keys only: no tokenizer).
    pub fn metadata(&self) -> Vec<(String, Value)> {
        self.metadata.clone()
    }
}
