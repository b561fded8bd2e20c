//! What a run trained, in the formats other tools read:
//! - [`peft_adapter`]: the LoRA adapters as PEFT saves them (`adapter_model.safetensors` +
//!   `adapter_config.json`), rows in Hugging Face's order, so `PeftModel.from_pretrained` on the
//!   original Hugging Face model applies them;
//! - [`merged_gguf`]: the base GGUF with the adapters merged into its weights (`W + (α/r)·B·A`)
//!   and fully trained layers written back, requantised, with the drift it costs measured.

use crate::error::{PupilError, Result};
use crate::gpu::GpuContext;
use crate::model::gguf::{GgufHeader, GgufWriter};
use crate::model::{LoraTarget, ModelSource, Trainer};
use crate::ops::rope::RopeLayout;
use crate::quant::{dequantize, quantize, QuantType};

use super::{safetensors_f32, trained_layer_tensors};

/// A PEFT LoRA adapter: the two files `save_pretrained` writes.
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    /// `adapter_model.safetensors`.
    pub weights: Vec<u8>,
    /// `adapter_config.json`.
    pub config: String,
}

/// The GGUF tensor a LoRA target adapts, per layer.
pub fn gguf_tensor_name(layer: usize, target: LoraTarget) -> String {
    let t = match target {
        LoraTarget::Q => "attn_q",
        LoraTarget::K => "attn_k",
        LoraTarget::V => "attn_v",
        LoraTarget::O => "attn_output",
        LoraTarget::Gate => "ffn_gate",
        LoraTarget::Up => "ffn_up",
        LoraTarget::Down => "ffn_down",
    };
    format!("blk.{layer}.{t}.weight")
}

/// GGUF's llama converter stores each head's Q/K rows interleaved (HF row `e·d/2 + i` at
/// `2i + e`, `d` the head dimension) so that llama.cpp's adjacent-pair RoPE applies; this
/// undoes it for a `[rows, cols]` matrix of `heads` heads.
pub fn gguf_to_hf_rows(m: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let per = rows / heads;
    let mut out = vec![0.0; m.len()];
    for h in 0..heads {
        for i in 0..per / 2 {
            for e in 0..2 {
                let (hf, gguf) = (h * per + e * per / 2 + i, h * per + 2 * i + e);
                out[hf * cols..][..cols].copy_from_slice(&m[gguf * cols..][..cols]);
            }
        }
    }
    out
}

/// The trainer's adapters as a PEFT 0.17 LoRA adapter for the Hugging Face model the GGUF was
/// converted from (`base_model` names it in the config): keys
/// `base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight` …, F32, B's Q/K rows
/// un-permuted for llama files. Adapters only: a run that trained layers in full or attention
/// gates has weights PEFT's LoRA format has no place for (export the merged GGUF instead).
pub async fn peft_adapter(ctx: &GpuContext, trainer: &Trainer<'_>, base_model: &str) -> Result<PeftAdapter> {
    const OP: &str = "peft_adapter";
    if trainer.dense.iter().any(Option::is_some) || !trainer.gates.is_empty() {
        return Err(PupilError::Unsupported(
            "a PEFT LoRA adapter holds adapters only: this run also trained layers in full or attention gates \
             (export the merged GGUF, or the trained-weights file)"
                .into(),
        ));
    }
    let cfg = &trainer.lora.config;
    if trainer.lora.layers.iter().all(Vec::is_empty) {
        return Err(PupilError::arg(OP, "no adapters to export (rank 0)"));
    }
    let c = trainer.model_config();
    let permuted = c.rope_layout == RopeLayout::Normal;
    let mut tensors = Vec::new();
    for (l, p) in trainer.lora.pairs() {
        let module = match p.target {
            LoraTarget::Q | LoraTarget::K | LoraTarget::V | LoraTarget::O => "self_attn",
            LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down => "mlp",
        };
        let key = |ab: &str| format!("base_model.model.model.layers.{l}.{module}.{}.{ab}.weight", p.target.hf_name());
        let mut b = p.b.read_f32(ctx).await?;
        let heads = match p.target {
            LoraTarget::Q => Some(c.n_heads),
            LoraTarget::K => Some(c.n_kv_heads),
            _ => None,
        };
        if let (true, Some(heads)) = (permuted, heads) {
            b = gguf_to_hf_rows(&b, p.out_dim, cfg.rank, heads);
        }
        tensors.push((key("lora_A"), vec![cfg.rank, p.in_dim], p.a.read_f32(ctx).await?));
        tensors.push((key("lora_B"), vec![p.out_dim, cfg.rank], b));
    }
    let weights = safetensors_f32(serde_json::json!({"format": "pt"}), &tensors)?;
    let config = peft_config_json(trainer, base_model);
    Ok(PeftAdapter { weights, config })
}

/// `adapter_config.json` as PEFT 0.17.1's `LoraConfig.save_pretrained` writes it for these
/// settings (every field PEFT writes, its defaults for the ones Pupil has no notion of; keys
/// sorted, two-space indent, as PEFT's `json.dumps(..., indent=2, sort_keys=True)`;
/// `target_modules` sorted, where PEFT writes its set's order).
fn peft_config_json(trainer: &Trainer<'_>, base_model: &str) -> String {
    let cfg = &trainer.lora.config;
    let mut targets: Vec<&str> = cfg.targets.iter().map(|t| t.hf_name()).collect();
    targets.sort_unstable();
    // f32 settings as the decimal a user typed (0.05, not 0.05000000074505806); floats, as
    // PEFT writes the float it was given.
    let decimal = |x: f32| format!("{x}").parse::<f64>().unwrap_or(x as f64);
    let v = serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "corda_config": null,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": decimal(cfg.alpha),
        "lora_bias": false,
        "lora_dropout": decimal(cfg.dropout),
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "qalora_group_size": 16,
        "r": cfg.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// One tensor a merge changed.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedTensor {
    pub name: String,
    /// The type it was written in.
    pub ty: QuantType,
    /// ‖W′ − W‖ / ‖W‖: how far training moved it (W as the base file decodes).
    pub update: f64,
    /// ‖decode(encode(W′)) − W′‖ / ‖W′‖: what writing it in `ty` lost.
    pub requantisation: f64,
}

/// What [`merged_gguf`] changed and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeReport {
    pub tensors: Vec<MergedTensor>,
    /// Over every changed tensor together (sums of squares pooled).
    pub update: f64,
    pub requantisation: f64,
}

/// The base model (`header` over `source`: the file the trainer's model was loaded from) with
/// what `trainer` trained merged in: each adapted weight becomes `W + (α/r)·B·A` (W decoded from
/// the file, summed in f64), each fully trained layer's tensors its trained values; changed
/// matrices are written in `ty` (or each in its own type when `None`), changed vectors (norms,
/// biases) in their own type; every other tensor and all metadata byte for byte (a split file's
/// `split.*` keys dropped: the result is one file). Trained attention gates have no place in a
/// llama-family GGUF: refused.
pub async fn merged_gguf<S: ModelSource + ?Sized>(
    ctx: &GpuContext,
    trainer: &Trainer<'_>,
    header: &GgufHeader,
    source: &S,
    ty: Option<QuantType>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<u8>, MergeReport)> {
    const OP: &str = "merged_gguf";
    if !trainer.gates.is_empty() {
        return Err(PupilError::Unsupported(
            "merging trained attention gates: a llama-family GGUF has no output-gate tensors \
             (save the trained-weights file instead)"
                .into(),
        ));
    }
    let c = trainer.model_config();
    let n_layers = header.get(&format!("{}.block_count", c.architecture)).and_then(|v| v.as_u64());
    if n_layers != Some(c.n_layers as u64) {
        return Err(PupilError::arg(OP, "the GGUF given is not the file the trainer's model was loaded from"));
    }
    // Replacement values by tensor name: trained layers in full, else base + adapter.
    let mut dense: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> =
        trained_layer_tensors(ctx, trainer).await?.into_iter().map(|(n, s, v)| (n, (s, v))).collect();
    let scale = trainer.lora.config.scale() as f64;
    let mut adapters = std::collections::HashMap::new();
    for (l, p) in trainer.lora.pairs() {
        adapters.insert(gguf_tensor_name(l, p.target), (p.a.read_f32(ctx).await?, p.b.read_f32(ctx).await?, p.in_dim));
    }
    let mut w = GgufWriter::new();
    for (k, v) in &header.metadata {
        if !k.starts_with("split.") {
            w.add(k, v.clone());
        }
    }
    let (mut tensors, mut sums) = (Vec::new(), [0.0f64; 4]);
    let total = header.tensors.len();
    for (i, t) in header.tensors.iter().enumerate() {
        progress(i, total);
        let raw = source.read_at(header.data_offset + t.offset, t.size).await?;
        let n = t.n_elements() as usize;
        let (rows, cols) = t.rows_cols();
        // A fully trained layer's values, else the file's; plus the adapter when there is one
        // (a layer can be both: adapters over its trained weights).
        let trained = match dense.remove(&t.name) {
            Some((shape, _)) if shape.iter().product::<usize>() != n => {
                return Err(PupilError::shape(OP, format!("{}: trained {shape:?} vs the file's {:?}", t.name, t.dims)));
            }
            other => other.map(|(_, v)| v),
        };
        let changed = match adapters.remove(&t.name) {
            None => trained,
            Some((a, b, in_dim)) => {
                if in_dim != cols || b.len() % rows != 0 {
                    return Err(PupilError::shape(
                        OP,
                        format!("{}: adapter for {in_dim} columns, file has {cols}", t.name),
                    ));
                }
                let base = match trained {
                    Some(v) => v,
                    None => dequantize(t.ty, &raw, n)?,
                };
                let r = b.len() / rows;
                let mut merged = vec![0.0f32; n];
                for row in 0..rows {
                    let brow = &b[row * r..][..r];
                    for col in 0..cols {
                        let d: f64 = brow.iter().enumerate().map(|(k, &bk)| bk as f64 * a[k * cols + col] as f64).sum();
                        merged[row * cols + col] = (base[row * cols + col] as f64 + scale * d) as f32;
                    }
                }
                Some(merged)
            }
        };
        match changed {
            None => {
                w.add_tensor(&t.name, &t.dims, t.ty, raw)?;
            }
            Some(v) => {
                let base = dequantize(t.ty, &raw, n)?;
                let out_ty = match ty {
                    Some(ty) if t.dims.len() >= 2 && cols.is_multiple_of(ty.block_size()) => ty,
                    _ => t.ty,
                };
                let bytes = quantize(out_ty, &v)?;
                let back = dequantize(out_ty, &bytes, n)?;
                let sq = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(&p, &q)| (p as f64 - q as f64).powi(2)).sum();
                let norm = |x: &[f32]| x.iter().map(|&p| (p as f64).powi(2)).sum::<f64>();
                let s = [sq(&v, &base), norm(&base), sq(&back, &v), norm(&v)];
                sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
                let rel = |d: f64, n: f64| if n > 0.0 { (d / n).sqrt() } else { d.sqrt() };
                tensors.push(MergedTensor {
                    name: t.name.clone(),
                    ty: out_ty,
                    update: rel(s[0], s[1]),
                    requantisation: rel(s[2], s[3]),
                });
                w.add_tensor(&t.name, &t.dims, out_ty, bytes)?;
            }
        }
    }
    progress(total, total);
    if let Some(name) = dense.keys().chain(adapters.keys()).next() {
        return Err(PupilError::arg(OP, format!("the GGUF given has no tensor {name} (not the trainer's model)")));
    }
    let rel = |d: f64, n: f64| if n > 0.0 { (d / n).sqrt() } else { 0.0 };
    let report = MergeReport { update: rel(sums[0], sums[1]), requantisation: rel(sums[2], sums[3]), tensors };
    Ok((w.to_bytes(), report))
}
