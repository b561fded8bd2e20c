//! Random-weight GGUF files of real architectures and sizes (`pupil synth`), for benchmarks and
//! tests where the real file cannot go: every tensor has the real model's name, shape and GGUF
//! format mix, filled with random but valid blocks (`quant::random_blocks`); the metadata is
//! complete, with a byte-level BPE tokenizer (256 byte tokens, then unused filler tokens) so a
//! loader that wants one finds it. The text such a model writes is noise; its speed is real.

use super::gguf::{GgufWriter, Value};
use crate::error::{PupilError, Result};
use crate::quant::{random_blocks, QuantType};
use crate::rng::SplitMix64;

/// The GGUF format mixes `llama-quantize` produces, as far as they matter for speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMix {
    /// Every matrix in one type; the token embedding Q8_0 (as SmolLM2's Q4_1 file has).
    Uniform(QuantType),
    /// Q4_K_M: Q4_K, with attn_v and ffn_down in Q6_K on the first and last eighth of the
    /// layers and every third layer between, and the output head in Q6_K.
    Q4KM,
}

#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub name: &'static str,
    /// `llama`, `qwen2` (Q/K/V biases, NeoX RoPE), `qwen3` (QK-norm, NeoX RoPE), `gemma3`
    /// (QK-norm, post-norms, GELU-tanh, scaled embedding, interleaved sliding windows) or
    /// `qwen3next` (qwen3 with the gated-attention output gate packed into `attn_q`, RoPE on a
    /// quarter of each head).
    pub architecture: &'static str,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Per-head size when it is not hidden / heads (qwen3: 128 at any width).
    pub head_dim: Option<usize>,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f64,
    pub rms_eps: f32,
    pub tied: bool,
    pub mix: QuantMix,
    /// gemma3: the local layers' window (every sixth layer is global).
    pub sliding_window: Option<usize>,
}

/// The shapes `pupil synth` knows.
pub fn presets() -> Vec<SynthSpec> {
    vec![
        SynthSpec {
            name: "smollm2-135m",
            architecture: "llama",
            n_layers: 30,
            hidden: 576,
            ffn_hidden: 1536,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: None,
            vocab: 49152,
            context: 8192,
            rope_base: 100000.0,
            rms_eps: 1e-5,
            tied: true,
            mix: QuantMix::Uniform(QuantType::Q4_1),
            sliding_window: None,
        },
        SynthSpec {
            name: "qwen2-1.5b",
            architecture: "qwen2",
            n_layers: 28,
            hidden: 1536,
            ffn_hidden: 8960,
            n_heads: 12,
            n_kv_heads: 2,
            head_dim: None,
            vocab: 151936,
            context: 32768,
            rope_base: 1e6,
            rms_eps: 1e-6,
            tied: true,
            mix: QuantMix::Q4KM,
            sliding_window: None,
        },
        SynthSpec {
            name: "qwen3-0.6b",
            architecture: "qwen3",
            n_layers: 28,
            hidden: 1024,
            ffn_hidden: 3072,
            n_heads: 16,
            n_kv_heads: 8,
            head_dim: Some(128),
            vocab: 151936,
            context: 40960,
            rope_base: 1e6,
            rms_eps: 1e-6,
            tied: true,
            mix: QuantMix::Uniform(QuantType::Q8_0),
            sliding_window: None,
        },
        SynthSpec {
            name: "tiny-qwen2",
            architecture: "qwen2",
            n_layers: 2,
            hidden: 256,
            ffn_hidden: 512,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: None,
            vocab: 512,
            context: 1024,
            rope_base: 1e6,
            rms_eps: 1e-6,
            tied: true,
            mix: QuantMix::Uniform(QuantType::Q8_0),
            sliding_window: None,
        },
        SynthSpec {
            name: "tiny-qwen3",
            architecture: "qwen3",
            n_layers: 2,
            hidden: 256,
            ffn_hidden: 512,
            n_heads: 4,
            n_kv_heads: 2,
            // Wider than hidden / heads, as in Qwen3 (and transformers' Qwen3Config default).
            head_dim: Some(128),
            vocab: 512,
            context: 1024,
            rope_base: 1e6,
            rms_eps: 1e-6,
            tied: true,
            mix: QuantMix::Uniform(QuantType::Q8_0),
            sliding_window: None,
        },
        SynthSpec {
            name: "gemma3-270m",
            architecture: "gemma3",
            n_layers: 18,
            hidden: 640,
            ffn_hidden: 2048,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: Some(256),
            vocab: 262144,
            context: 32768,
            rope_base: 1e6,
            rms_eps: 1e-6,
            tied: true,
            mix: QuantMix::Q4KM,
            sliding_window: Some(512),
        },
        SynthSpec {
            // Seven layers: local 0-4 and 6, global 5. head_dim 256 as in every Gemma 3, so
            // 1/√head_dim is also transformers' default query_pre_attn_scalar (256).
            name: "tiny-gemma3",
            architecture: "gemma3",
            n_layers: 7,
            hidden: 128,
            ffn_hidden: 256,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: Some(256),
            vocab: 512,
            context: 1024,
            rope_base: 1e6,
            rms_eps: 1e-6,
            tied: true,
            mix: QuantMix::Uniform(QuantType::Q8_0),
            sliding_window: Some(16),
        },
        SynthSpec {
            name: "tiny-qwen3next",
            architecture: "qwen3next",
            n_layers: 2,
            hidden: 256,
            ffn_hidden: 512,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: Some(64),
            vocab: 512,
            context: 1024,
            rope_base: 1e7,
            rms_eps: 1e-6,
            tied: false,
            mix: QuantMix::Uniform(QuantType::Q8_0),
            sliding_window: None,
        },
        SynthSpec {
            name: "tiny-llama",
            architecture: "llama",
            n_layers: 2,
            hidden: 256,
            ffn_hidden: 512,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: None,
            vocab: 512,
            context: 1024,
            rope_base: 10000.0,
            rms_eps: 1e-5,
            tied: false,
            mix: QuantMix::Uniform(QuantType::Q8_0),
            sliding_window: None,
        },
        // A wider, deeper teacher for tiny-llama (same vocabulary): alignment across hidden sizes.
        SynthSpec {
            name: "tiny-llama-wide",
            architecture: "llama",
            n_layers: 3,
            hidden: 384,
            ffn_hidden: 768,
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: None,
            vocab: 512,
            context: 1024,
            rope_base: 10000.0,
            rms_eps: 1e-5,
            tied: false,
            mix: QuantMix::Uniform(QuantType::Q8_0),
            sliding_window: None,
        },
    ]
}

pub fn preset(name: &str) -> Result<SynthSpec> {
    presets().into_iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
        PupilError::Unsupported(format!("synthetic shape `{name}` (known: {})", names.join(", ")))
    })
}

impl SynthSpec {
    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden / self.n_heads)
    }

    fn gated(&self) -> bool {
        self.architecture == "qwen3next"
    }

    /// Rotated dims per head (Qwen3-Next's partial_rotary_factor is 0.25).
    fn n_rot(&self) -> usize {
        if self.gated() {
            self.head_dim() / 4
        } else {
            self.head_dim()
        }
    }

    /// The format of one matrix, by llama-quantize's rules for the mix.
    fn matrix_type(&self, name: &str, layer: Option<usize>) -> QuantType {
        match self.mix {
            QuantMix::Uniform(t) if name == "token_embd" => {
                if t.block_size() == 32 {
                    QuantType::Q8_0
                } else {
                    t
                }
            }
            QuantMix::Uniform(t) => t,
            QuantMix::Q4KM => {
                let n = self.n_layers;
                let more_bits = |i: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
                match (name, layer) {
                    ("output", _) => QuantType::Q6_K,
                    ("attn_v" | "ffn_down", Some(i)) if more_bits(i) => QuantType::Q6_K,
                    _ => QuantType::Q4_K,
                }
            }
        }
    }

    /// Total bytes of tensor data the file will hold (for progress and checks).
    pub fn data_bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.2.row_bytes(t.1.iter().product::<u64>() as usize).unwrap_or(0) as u64).sum()
    }

    /// (name, ggml dims, type) of every tensor, in file order.
    fn tensors(&self) -> Vec<(String, Vec<u64>, QuantType)> {
        let (h, f, v) = (self.hidden as u64, self.ffn_hidden as u64, self.vocab as u64);
        let hd = self.head_dim() as u64;
        let (qd, kd) = (self.n_heads as u64 * hd, self.n_kv_heads as u64 * hd);
        let mut t = vec![("token_embd.weight".to_string(), vec![h, v], self.matrix_type("token_embd", None))];
        for i in 0..self.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            t.push((n("attn_norm.weight"), vec![h], QuantType::F32));
            let q_rows = if self.gated() { 2 * qd } else { qd };
            for (name, rows, cols) in [("attn_q", q_rows, h), ("attn_k", kd, h), ("attn_v", kd, h)] {
                t.push((n(&format!("{name}.weight")), vec![cols, rows], self.matrix_type(name, Some(i))));
                if self.architecture == "qwen2" {
                    t.push((n(&format!("{name}.bias")), vec![rows], QuantType::F32));
                }
            }
            let gemma = self.architecture == "gemma3";
            if self.architecture == "qwen3" || gemma || self.gated() {
                t.push((n("attn_q_norm.weight"), vec![hd], QuantType::F32));
                t.push((n("attn_k_norm.weight"), vec![hd], QuantType::F32));
            }
            t.push((n("attn_output.weight"), vec![qd, h], self.matrix_type("attn_output", Some(i))));
            if gemma {
                t.push((n("post_attention_norm.weight"), vec![h], QuantType::F32));
            }
            let ffn_norm = if self.gated() { "post_attention_norm.weight" } else { "ffn_norm.weight" };
            t.push((n(ffn_norm), vec![h], QuantType::F32));
            t.push((n("ffn_gate.weight"), vec![h, f], self.matrix_type("ffn_gate", Some(i))));
            t.push((n("ffn_up.weight"), vec![h, f], self.matrix_type("ffn_up", Some(i))));
            t.push((n("ffn_down.weight"), vec![f, h], self.matrix_type("ffn_down", Some(i))));
            if gemma {
                t.push((n("post_ffw_norm.weight"), vec![h], QuantType::F32));
            }
        }
        t.push(("output_norm.weight".to_string(), vec![h], QuantType::F32));
        if !self.tied {
            t.push(("output.weight".to_string(), vec![h, v], self.matrix_type("output", None)));
        }
        t
    }
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the rest are shifted
/// past U+0100, so every byte is a one-character token.
fn byte_token(b: u8) -> String {
    let printable = |c: u8| (b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c);
    if printable(b) {
        char::from(b).to_string()
    } else {
        let shift = (0..=b).filter(|&c| !printable(c)).count() as u32 - 1;
        char::from_u32(256 + shift).expect("below U+0200").to_string()
    }
}

/// The complete synthetic GGUF file. `progress(done, total)` reports tensor bytes generated.
pub fn synthesize(spec: &SynthSpec, seed: u64, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<u8>> {
    if spec.vocab < 260 || spec.n_heads == 0 || (spec.head_dim.is_none() && !spec.hidden.is_multiple_of(spec.n_heads)) {
        return Err(PupilError::arg("synthesize", "vocab ≥ 260 and hidden divisible by heads"));
    }
    let arch = spec.architecture;
    let mut w = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    w.add("general.architecture", Value::String(arch.into()));
    w.add("general.name", Value::String(format!("pupil synthetic {}", spec.name)));
    w.add("general.file_type", Value::U32(0));
    w.add(&k("block_count"), Value::U32(spec.n_layers as u32));
    w.add(&k("context_length"), Value::U32(spec.context as u32));
    w.add(&k("embedding_length"), Value::U32(spec.hidden as u32));
    w.add(&k("feed_forward_length"), Value::U32(spec.ffn_hidden as u32));
    w.add(&k("attention.head_count"), Value::U32(spec.n_heads as u32));
    w.add(&k("attention.head_count_kv"), Value::U32(spec.n_kv_heads as u32));
    w.add(&k("rope.freq_base"), Value::F32(spec.rope_base as f32));
    w.add(&k("attention.layer_norm_rms_epsilon"), Value::F32(spec.rms_eps));
    w.add(&k("rope.dimension_count"), Value::U32(spec.n_rot() as u32));
    if let Some(hd) = spec.head_dim {
        w.add(&k("attention.key_length"), Value::U32(hd as u32));
        w.add(&k("attention.value_length"), Value::U32(hd as u32));
    }
    w.add(&k("vocab_size"), Value::U32(spec.vocab as u32));
    if let Some(window) = spec.sliding_window {
        w.add(&k("attention.sliding_window"), Value::U32(window as u32));
    }
    // Byte-level BPE: 256 byte tokens, two control tokens, unused fillers up to the vocab.
    let mut tokens: Vec<Value> = (0..=255u8).map(|b| Value::String(byte_token(b))).collect();
    let mut types: Vec<Value> = vec![Value::I32(1); 256];
    for s in ["<|endoftext|>", "<|im_start|>"] {
        tokens.push(Value::String(s.to_string()));
        types.push(Value::I32(3));
    }
    while tokens.len() < spec.vocab {
        tokens.push(Value::String(format!("<|unused_{}|>", tokens.len())));
        types.push(Value::I32(5));
    }
    w.add("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add("tokenizer.ggml.pre", Value::String("gpt2".into()));
    w.add("tokenizer.ggml.tokens", Value::Array(tokens));
    w.add("tokenizer.ggml.token_type", Value::Array(types));
    w.add("tokenizer.ggml.merges", Value::Array(Vec::new()));
    w.add("tokenizer.ggml.bos_token_id", Value::U32(256));
    w.add("tokenizer.ggml.eos_token_id", Value::U32(256));
    let mut rng = SplitMix64::new(seed);
    let total = spec.data_bytes();
    let mut done = 0u64;
    for (name, dims, ty) in spec.tensors() {
        let n: u64 = dims.iter().product();
        let data = if ty == QuantType::F32 {
            // Small block-norm weights keep random-weight activations O(1) through every layer
            // (f16 would overflow otherwise); the final norm near 1; small biases.
            let (base, spread) = match name.as_str() {
                "output_norm.weight" => (1.0, 0.1),
                n if n.ends_with("q_norm.weight") || n.ends_with("k_norm.weight") => (1.0, 0.2),
                n if n.ends_with(".bias") => (0.0, 0.1),
                _ => (0.05, 0.02),
            };
            (0..n).flat_map(|_| (base + rng.uniform(-spread, spread)).to_le_bytes()).collect()
        } else {
            random_blocks(ty, n as usize, &mut rng)
        };
        done += data.len() as u64;
        w.add_tensor(&name, &dims, ty, data)?;
        progress(done, total);
    }
    Ok(w.to_bytes())
}
