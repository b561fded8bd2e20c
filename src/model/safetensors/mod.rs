//! Hugging Face checkpoints (`config.json` + safetensors, f32/f16/bf16) of the architectures
//! Pupil runs, loaded through the unchanged GGUF loader as split files are (`model::split`):
//! [`read_safetensors`] builds a *virtual* GGUF — a header with llama.cpp's tensor names and
//! metadata, and a [`SafetensorsSource`] whose bytes are each tensor converted the way llama.cpp's
//! `convert_hf_to_gguf.py` converts it — so `LlamaModel::load_with_header` needs nothing new.
//! [`to_gguf`] writes that virtual file out as a real one (`pupil convert`).
//!
//! The conversion, per tensor, when the loader asks for its bytes (so the host holds one tensor
//! at a time, never the checkpoint: it works in the browser's 4 GiB heap too):
//! - llama's `q_proj`/`k_proj` rows (weights and biases) are permuted as `LlamaModel.permute`
//!   does (`n_head`, resp. `n_head_kv` heads), so that the "normal" RoPE pairs Pupil rotates for
//!   llama GGUF files are HF's rotate-half pairs; qwen and gemma keep HF's order (NeoX RoPE);
//! - gemma3's and qwen3next's norm weights become 1 + w (GGUF stores the plain RMSNorm
//!   weight), added in f32 as transformers does (`1.0 + weight.float()`); qwen3next's q_proj
//!   stays packed (each head's query rows, then its gate rows) as in llama.cpp's files;
//! - 1-D tensors are stored as F32 (exact from f16/bf16); matrices keep their dtype (F32, F16
//!   and BF16 are GGUF types, bit for bit), or are quantised to the requested type when their
//!   rows are whole blocks of it (the rest stay as they were: [`SafetensorsSource::kept`]);
//! - llama 3.x RoPE scaling adds a computed `rope_freqs.weight` (F32), as the converter does.
//!
//! The converted file carries no tokenizer: a tokenizer.json → GGUF vocabulary conversion is not
//! part of this; loading for logits needs none.

mod header;
mod hf_config;

use std::io::Write;

pub use header::{read_safetensors_header, Dtype, StTensor, MAX_SAFETENSORS_HEADER};
pub use hf_config::{Arch, HfConfig, Rope};

use super::gguf::{GgufHeader, TensorInfo, Value, DEFAULT_ALIGNMENT};
use super::source::ModelSource;
use crate::error::{PupilError, Result};
use crate::quant::{dequantize, quantize, QuantType};

/// How a tensor's bytes are made from the checkpoint's.
#[derive(Clone, Debug)]
enum Payload {
    /// A tensor of shard `shard`; rows permuted for `permute` heads when set; + 1 when
    /// `add_one`.
    Hf { shard: usize, src: StTensor, permute: Option<usize>, add_one: bool },
    /// Computed values (`rope_freqs.weight`).
    Values(Vec<f32>),
}

/// The checkpoint seen as a GGUF file laid out as [`to_gguf`] writes its data section (tensors
/// back to back, each aligned to 32 bytes). A read must lie inside one tensor (every loader read
/// is a whole tensor); it converts that tensor and returns the bytes asked for.
pub struct SafetensorsSource<S> {
    shards: Vec<S>,
    tensors: Vec<(TensorInfo, Payload)>,
    len: u64,
    kept: Vec<String>,
}

impl<S> SafetensorsSource<S> {
    /// HF names of the matrices left in their checkpoint dtype although quantisation was asked
    /// for (rows not a whole number of the type's blocks).
    pub fn kept(&self) -> &[String] {
        &self.kept
    }
}

fn permute_rows(raw: &[u8], rows: usize, row_bytes: usize, heads: usize) -> Vec<u8> {
    // LlamaModel.permute: w.reshape(heads, 2, rows/heads/2, ...).swapaxes(1, 2): within each
    // head, output row 2i + h is input row h·half + i.
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = Vec::with_capacity(raw.len());
    for r in 0..rows {
        let (head, j) = (r / per_head, r % per_head);
        let src = head * per_head + (j % 2) * half + j / 2;
        out.extend_from_slice(&raw[src * row_bytes..(src + 1) * row_bytes]);
    }
    out
}

impl<S: ModelSource> SafetensorsSource<S> {
    /// The converted bytes of tensor `i`.
    async fn convert(&self, i: usize) -> Result<Vec<u8>> {
        let (info, payload) = &self.tensors[i];
        let (shard, src, permute, add_one) = match payload {
            Payload::Values(v) => return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Payload::Hf { shard, src, permute, add_one } => (*shard, src, *permute, *add_one),
        };
        let mut raw = self.shards[shard].read_at(src.start, src.len).await?;
        if let Some(heads) = permute {
            let rows = src.shape[0] as usize;
            raw = permute_rows(&raw, rows, raw.len() / rows, heads);
        }
        let from = src.dtype.gguf();
        if info.ty == from && !add_one {
            return Ok(raw);
        }
        let n = info.n_elements() as usize;
        let mut values = dequantize(from, &raw, n)?;
        drop(raw);
        if add_one {
            values.iter_mut().for_each(|x| *x += 1.0);
        }
        quantize(info.ty, &values).map_err(|e| PupilError::Format(format!("tensor `{}`: {e}", src.name)))
    }
}

impl<S: ModelSource> ModelSource for SafetensorsSource<S> {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let i = self.tensors.partition_point(|(t, _)| t.offset <= offset).saturating_sub(1);
        let t = self.tensors.get(i).map(|(t, _)| t);
        match t {
            Some(t) if offset >= t.offset && offset.saturating_add(len) <= t.offset + t.size => {
                let bytes = self.convert(i).await?;
                let at = (offset - t.offset) as usize;
                let part = bytes.get(at..at + len as usize).ok_or_else(|| {
                    PupilError::Format(format!("tensor {} converted to {} bytes, not {}", t.name, bytes.len(), t.size))
                })?;
                Ok(part.to_vec())
            }
            _ if offset.saturating_add(len) > self.len => Err(PupilError::Truncated {
                what: "converted model".into(),
                needed: offset.saturating_add(len),
                have: self.len,
            }),
            _ => Err(PupilError::Format(format!(
                "a read of {len} bytes at {offset} of a converted model does not lie inside one tensor"
            ))),
        }
    }
}

/// The safetensors shard file names listed by a `model.safetensors.index.json` (its
/// `weight_map`'s values, each once, sorted: `model-00001-of-00003.safetensors`, ...). Names
/// with a path separator or `..` are refused, since a caller joins them to the checkpoint's
/// folder.
pub fn index_shards(index_json: &str) -> Result<Vec<String>> {
    let bad = |d: String| PupilError::Format(format!("model.safetensors.index.json: {d}"));
    let json: serde_json::Value = serde_json::from_str(index_json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("lacks `weight_map`".into()))?;
    let mut files = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`{tensor}` maps to {file}, not a file name")))?;
        if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
            return Err(bad(format!("`{file}` is not a file name in the checkpoint's folder")));
        }
        files.push(file.to_string());
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// One HF tensor the model needs: its HF suffix, GGUF name, whether it may be absent, and the
/// llama permutation's head count.
struct Want {
    hf: String,
    gguf: String,
    optional: bool,
    permute: Option<usize>,
}

/// Every tensor of `cfg`'s architecture, in GGUF order, named without the `model.` prefix.
fn wanted(cfg: &HfConfig) -> Vec<Want> {
    let w = |hf: String, gguf: String| Want { hf, gguf, optional: false, permute: None };
    let gemma = cfg.arch == Arch::Gemma3;
    let llama = cfg.arch == Arch::Llama;
    let mut out = vec![w("embed_tokens.weight".into(), "token_embd.weight".into())];
    for i in 0..cfg.n_layers {
        let hf = |s: &str| format!("layers.{i}.{s}");
        let gg = |s: &str| format!("blk.{i}.{s}");
        out.push(w(hf("input_layernorm.weight"), gg("attn_norm.weight")));
        for (proj, name, heads) in [("q", "attn_q", cfg.n_heads), ("k", "attn_k", cfg.n_kv_heads), ("v", "attn_v", 0)] {
            let permute = (llama && heads > 0).then_some(heads);
            out.push(Want {
                permute,
                ..w(hf(&format!("self_attn.{proj}_proj.weight")), gg(&format!("{name}.weight")))
            });
            // Biases: qwen2 has them; llama's attention_bias would (the o_proj bias, which Pupil
            // cannot add, is then refused as an unknown tensor).
            out.push(Want {
                optional: true,
                permute,
                ..w(hf(&format!("self_attn.{proj}_proj.bias")), gg(&format!("{name}.bias")))
            });
        }
        if matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3 | Arch::Qwen3Next) {
            out.push(w(hf("self_attn.q_norm.weight"), gg("attn_q_norm.weight")));
            out.push(w(hf("self_attn.k_norm.weight"), gg("attn_k_norm.weight")));
        }
        out.push(w(hf("self_attn.o_proj.weight"), gg("attn_output.weight")));
        if gemma {
            // Gemma's sandwich: post_attention_layernorm follows attention, the MLP's input norm
            // is pre_feedforward_layernorm. llama/qwen's post_attention_layernorm *is* that input.
            out.push(w(hf("post_attention_layernorm.weight"), gg("post_attention_norm.weight")));
            out.push(w(hf("pre_feedforward_layernorm.weight"), gg("ffn_norm.weight")));
        } else if cfg.arch == Arch::Qwen3Next {
            // llama.cpp's qwen3next keeps HF's name for the MLP's input norm.
            out.push(w(hf("post_attention_layernorm.weight"), gg("post_attention_norm.weight")));
        } else {
            out.push(w(hf("post_attention_layernorm.weight"), gg("ffn_norm.weight")));
        }
        out.push(w(hf("mlp.gate_proj.weight"), gg("ffn_gate.weight")));
        out.push(w(hf("mlp.up_proj.weight"), gg("ffn_up.weight")));
        out.push(w(hf("mlp.down_proj.weight"), gg("ffn_down.weight")));
        if gemma {
            out.push(w(hf("post_feedforward_layernorm.weight"), gg("post_ffw_norm.weight")));
        }
    }
    out.push(w("norm.weight".into(), "output_norm.weight".into()));
    out
}

/// GGUF's `general.file_type` (llama.cpp's `LlamaFileType`) for a uniform output type.
fn file_type(ty: QuantType) -> u32 {
    match ty {
        QuantType::F32 => 0,
        QuantType::F16 => 1,
        QuantType::Q4_0 => 2,
        QuantType::Q4_1 => 3,
        QuantType::Q8_0 => 7,
        QuantType::Q5_0 => 8,
        QuantType::Q5_1 => 9,
        QuantType::Q4_K => 15,
        QuantType::Q5_K => 17,
        QuantType::Q6_K => 18,
        QuantType::BF16 => 32,
    }
}

/// Read a checkpoint: `config_json` (the text of `config.json`) and its safetensors files
/// (`model.safetensors`, or every shard of a sharded checkpoint in any order; see
/// [`index_shards`]). Matrices are quantised to `quantize` when given (Q8_0, Q4_0, Q4_1, Q5_0,
/// Q5_1; any Pupil type works) and their rows allow it. Returns the virtual GGUF's header and
/// bytes for `LlamaModel::load_with_header` or [`to_gguf`]. Reads only the headers; every
/// tensor's presence and size is checked here, before anything is loaded.
pub async fn read_safetensors<S: ModelSource>(
    config_json: &str,
    shards: Vec<S>,
    quantize: Option<QuantType>,
) -> Result<(GgufHeader, SafetensorsSource<S>)> {
    let cfg = HfConfig::parse(config_json)?;
    if shards.is_empty() {
        return Err(PupilError::arg("read_safetensors", "no safetensors files given"));
    }
    let mut found: std::collections::HashMap<String, (usize, StTensor)> = std::collections::HashMap::new();
    for (i, s) in shards.iter().enumerate() {
        let what = if shards.len() == 1 { "file".to_string() } else { format!("shard {} of {}", i + 1, shards.len()) };
        for t in read_safetensors_header(s, &what).await? {
            let name = t.name.clone();
            if found.insert(name.clone(), (i, t)).is_some() {
                return Err(PupilError::Format(format!("tensor `{name}` appears in two safetensors files")));
            }
        }
    }
    // Checkpoints saved from the bare model have no `model.` prefix.
    let prefix = if found.contains_key("model.embed_tokens.weight") { "model." } else { "" };
    let mut wants = wanted(&cfg);
    if !cfg.tied {
        wants.push(Want { hf: "lm_head.weight".into(), gguf: "output.weight".into(), optional: false, permute: None });
    }
    let mut tensors: Vec<(TensorInfo, Payload)> = Vec::new();
    let mut kept = Vec::new();
    if let Rope::Llama3(f) = &cfg.rope {
        let info = TensorInfo {
            name: "rope_freqs.weight".into(),
            dims: vec![f.len() as u64],
            ty: QuantType::F32,
            offset: 0,
            size: 0,
        };
        tensors.push((info, Payload::Values(f.clone())));
    }
    for want in &wants {
        let hf = if want.hf == "lm_head.weight" { want.hf.clone() } else { format!("{prefix}{}", want.hf) };
        let Some((shard, src)) = found.remove(&hf) else {
            if want.optional {
                continue;
            }
            return Err(PupilError::Format(format!("the {} checkpoint lacks tensor `{hf}`", cfg.arch.gguf_name())));
        };
        if src.shape.is_empty() || src.shape.len() > 4 || src.shape.contains(&0) {
            return Err(PupilError::Format(format!("tensor `{hf}` has shape {:?}", src.shape)));
        }
        // The head's rows are the vocabulary the metadata states (transformers refuses a mismatch).
        if matches!(want.gguf.as_str(), "token_embd.weight" | "output.weight")
            && src.shape != [cfg.vocab as u64, cfg.hidden as u64]
        {
            return Err(PupilError::Format(format!(
                "tensor `{hf}` has shape {:?}; config.json says vocab_size {} and hidden_size {}",
                src.shape, cfg.vocab, cfg.hidden
            )));
        }
        if let Some(heads) = want.permute {
            if !src.shape[0].is_multiple_of(2 * heads as u64) {
                return Err(PupilError::Format(format!(
                    "tensor `{hf}` has {} rows, not pairs of rows for {heads} heads",
                    src.shape[0]
                )));
            }
        }
        let ty = if src.shape.len() != 2 {
            QuantType::F32
        } else {
            match quantize {
                Some(q) if src.shape[1].is_multiple_of(q.block_size() as u64) => q,
                Some(_) => {
                    kept.push(hf.clone());
                    src.dtype.gguf()
                }
                None => src.dtype.gguf(),
            }
        };
        let info = TensorInfo {
            name: want.gguf.clone(),
            dims: src.shape.iter().rev().copied().collect(),
            ty,
            offset: 0,
            size: 0,
        };
        // Gemma 3's and Qwen3-Next's RMSNorms scale by 1 + w.
        let add_one = matches!(cfg.arch, Arch::Gemma3 | Arch::Qwen3Next) && hf.ends_with("norm.weight");
        tensors.push((info, Payload::Hf { shard, src, permute: want.permute, add_one }));
    }
    // What is left must be something the model does not need.
    // (old llama checkpoints store RoPE's inverse frequencies; a tied head may be saved too)
    // (Qwen3-Next's multi-token-prediction head, `mtp.*`, is skipped as llama.cpp skips it)
    found.retain(|name, _| {
        !(name.ends_with("rotary_emb.inv_freq")
            || cfg.tied && name == "lm_head.weight"
            || cfg.arch == Arch::Qwen3Next && name.starts_with("mtp."))
    });
    if let Some(name) = found.keys().min() {
        return Err(PupilError::Unsupported(format!(
            "tensor `{name}` is not part of a {} model as Pupil runs it",
            cfg.arch.gguf_name()
        )));
    }
    let mut offset = 0u64;
    for (t, _) in tensors.iter_mut() {
        let n: u64 = t.dims.iter().product();
        t.offset = offset;
        t.size = (n / t.ty.block_size() as u64)
            .checked_mul(t.ty.block_bytes() as u64)
            .ok_or_else(|| PupilError::Format(format!("tensor `{}` is too large", t.name)))?;
        offset = t
            .offset
            .checked_add(t.size)
            .map(|e| e.next_multiple_of(DEFAULT_ALIGNMENT))
            .ok_or_else(|| PupilError::Format("the converted model is too large".into()))?;
    }
    let len = tensors.last().map_or(0, |(t, _)| t.offset + t.size);
    let mut metadata = cfg.metadata();
    metadata.insert(1, ("general.name".into(), Value::String("converted from safetensors by pupil".into())));
    let out_type = quantize
        .unwrap_or_else(|| tensors.iter().find(|(t, _)| t.dims.len() == 2).map_or(QuantType::F32, |(t, _)| t.ty));
    metadata.insert(2, ("general.file_type".into(), Value::U32(file_type(out_type))));
    let infos = tensors.iter().map(|(t, _)| t.clone()).collect();
    let header = GgufHeader::assemble(3, metadata, infos, DEFAULT_ALIGNMENT, 0)?;
    Ok((header, SafetensorsSource { shards, tensors, len, kept }))
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's value type ids and encodings (the subset the converted metadata uses; see gguf.rs).
fn write_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            let elem = a.first().map_or(Ok(4), value_type)?;
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                if value_type(x)? != elem {
                    return Err(PupilError::arg("to_gguf", "a metadata array mixes value types"));
                }
                write_value(out, x)?;
            }
        }
        other => return Err(PupilError::arg("to_gguf", format!("metadata value {other:?} is not written"))),
    }
    Ok(())
}

fn value_type(v: &Value) -> Result<u32> {
    Ok(match v {
        Value::U32(_) => 4,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        other => return Err(PupilError::arg("to_gguf", format!("metadata value {other:?} is not written"))),
    })
}

/// The GGUF v3 header of `h` (metadata, tensor directory, padding to the alignment), with the
/// tensors' offsets as `h` has them.
fn gguf_header_bytes(h: &GgufHeader) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(super::gguf::MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(h.tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(h.metadata.len() as u64).to_le_bytes());
    for (k, v) in &h.metadata {
        write_string(&mut out, k);
        out.extend_from_slice(&value_type(v)?.to_le_bytes());
        write_value(&mut out, v)?;
    }
    for t in &h.tensors {
        write_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
        out.extend_from_slice(&t.ty.ggml_id().to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
    }
    out.resize((out.len() as u64).next_multiple_of(h.alignment) as usize, 0);
    Ok(out)
}

/// Write `h` and its tensors from `source` as a GGUF v3 file, one tensor at a time (the
/// tensors keep their offsets within the data section, which must be aligned as `h` says, as a
/// [`read_safetensors`] header's are). `progress(done, total)` reports tensor bytes written.
/// Returns the file's length.
pub async fn to_gguf<S: ModelSource + ?Sized, W: Write>(
    h: &GgufHeader,
    source: &S,
    out: &mut W,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let io = |e: std::io::Error| PupilError::arg("to_gguf", format!("writing the GGUF file: {e}"));
    if let Some(t) = h.tensors.iter().find(|t| !t.offset.is_multiple_of(h.alignment)) {
        return Err(PupilError::arg("to_gguf", format!("tensor {} is not aligned to {}", t.name, h.alignment)));
    }
    let head = gguf_header_bytes(h)?;
    out.write_all(&head).map_err(io)?;
    let mut order: Vec<&TensorInfo> = h.tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    let total: u64 = order.iter().map(|t| t.size).sum();
    let (mut at, mut done) = (0u64, 0u64);
    for t in order {
        if t.offset < at {
            return Err(PupilError::arg("to_gguf", format!("tensor {} overlaps the one before", t.name)));
        }
        std::io::copy(&mut std::io::Read::take(std::io::repeat(0), t.offset - at), out).map_err(io)?;
        let bytes = source.read_at(h.data_offset + t.offset, t.size).await?;
        out.write_all(&bytes).map_err(io)?;
        at = t.offset + t.size;
        done += t.size;
        progress(done, total);
    }
    Ok(head.len() as u64 + at)
}
