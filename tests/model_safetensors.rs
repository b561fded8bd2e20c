//! Hugging Face checkpoints (config.json + safetensors) against transformers: tiny random models
//! of each architecture, saved by transformers' `save_pretrained` in f32, f16 and bf16
//! (tests/fixtures/safetensors/, made by scripts/fixtures/make_safetensors_fixtures.py; CI never
//! runs Python), with transformers' logits at every position of three id sequences.
//!
//! Per model: Pupil loading the safetensors matches transformers (1e-4 f32, 5e-3 f16 storage;
//! gemma3 refuses f16 activations);
//! the GGUF `to_gguf` writes is the file the fixture script ran transformers on (sha256) and loads
//! to the very same logits, bit for bit (same weight bytes, same kernels); with Q8_0 on load the
//! logits match transformers reading Pupil's Q8_0 GGUF (1e-4) and stay within 2e-2 of the
//! unquantised reference, and every quantisation (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) reproduces
//! transformers' error on the same file. Then hostile checkpoints: typed errors, nothing on the
//! GPU.

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::{json_ids, rel_err};
use pupil::gpu::{DType, GpuContext};
use pupil::model::gguf::{parse_header, GgufHeader};
use pupil::model::{
    index_shards, read_safetensors, to_gguf, LlamaModel, Logits, ModelConfig, ModelOptions, ModelSource,
};
use pupil::quant::QuantType;
use pupil::PupilError;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors")
}

fn floats(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

struct Fixture {
    meta: Json,
    sequences: Vec<Vec<u32>>,
    /// transformers on the safetensors, and on Pupil's Q8_0 GGUF.
    want: Vec<f32>,
    want_q8: Vec<f32>,
    config: String,
    shards: Vec<Vec<u8>>,
}

fn fixture(name: &str) -> Fixture {
    let json: Json =
        serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap()).unwrap();
    let ckpt = dir().join(name);
    let files = match std::fs::read_to_string(ckpt.join("model.safetensors.index.json")) {
        Ok(index) => index_shards(&index).unwrap(),
        Err(_) => vec!["model.safetensors".to_string()],
    };
    Fixture {
        sequences: json["sequences"].as_array().unwrap().iter().map(|s| json_ids(&s["input_ids"])).collect(),
        meta: json["meta"].clone(),
        want: floats(&dir().join(format!("{name}.f32.bin"))),
        want_q8: floats(&dir().join(format!("{name}.q8_0.f32.bin"))),
        config: std::fs::read_to_string(ckpt.join("config.json")).unwrap(),
        shards: files.iter().map(|f| std::fs::read(ckpt.join(f)).unwrap()).collect(),
    }
}

fn opts(dtype: DType) -> ModelOptions {
    ModelOptions { dtype: Some(dtype), context: Some(64), chunk: 16, ..ModelOptions::default() }
}

fn load<S: ModelSource + ?Sized>(ctx: &GpuContext, h: &GgufHeader, src: &S, dtype: DType) -> pupil::Result<LlamaModel> {
    pollster::block_on(LlamaModel::load_with_header(ctx, h, src, &opts(dtype), &mut |_, _| {}))
}

/// Every position's logits of every sequence, each prompt fed in chunks against its cache.
fn all_logits(ctx: &GpuContext, model: &LlamaModel, sequences: &[Vec<u32>]) -> Vec<f32> {
    let mut out = Vec::new();
    for ids in sequences {
        let cache = model.new_cache(ctx, 1).unwrap();
        for (i, chunk) in ids.chunks(model.chunk).enumerate() {
            model.forward(ctx, &cache, 0, i * model.chunk, chunk, Logits::All).unwrap();
            out.extend(pollster::block_on(model.logits(chunk.len()).unwrap().read_f32(ctx)).unwrap());
        }
    }
    out
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn matches_transformers(name: &str) {
    let fx = fixture(name);
    for f16 in [false, true] {
        let Some(ctx) = common::context(f16, true) else { continue };
        let dtype = if f16 { DType::F16 } else { DType::F32 };
        let (h, src) = pollster::block_on(read_safetensors(&fx.config, fx.shards.clone(), None)).unwrap();
        if f16 && ModelConfig::from_gguf(&h).unwrap().needs_f32_activations() {
            // gemma3: refused, whatever the file format (its residual stream outgrows f16).
            let e = load(&ctx, &h, &src, dtype).err().expect("f16 activations refused");
            assert_eq!(e.kind(), "Unsupported", "{e}");
            continue;
        }
        let model = load(&ctx, &h, &src, dtype).unwrap();
        assert_eq!(model.config.tied_embeddings, fx.meta["tie_word_embeddings"].as_bool().unwrap());
        let got = all_logits(&ctx, &model, &fx.sequences);
        let err = rel_err(&got, &fx.want);
        let tolerance = if f16 { 5e-3 } else { 1e-4 };
        println!("{name} ({}) {}: every position vs transformers, rel err {err:.2e}", fx.meta["dtype"], dtype.name());
        assert!(err < tolerance, "{name} {}: {err}", dtype.name());
        if f16 {
            continue;
        }
        // The GGUF file: what the fixture script gave transformers, and the same logits exactly.
        let mut file = Vec::new();
        let len = pollster::block_on(to_gguf(&h, &src, &mut file, &mut |_, _| {})).unwrap();
        assert_eq!(len, file.len() as u64);
        assert_eq!(
            sha(&file),
            fx.meta["pupil_gguf_sha256"].as_str().unwrap(),
            "{name}: not the GGUF transformers read"
        );
        let back = parse_header(&file).unwrap();
        assert_eq!(back.metadata, h.metadata);
        assert_eq!(back.tensors, h.tensors);
        drop(model);
        let from_file = LlamaModel::load(&ctx, &file, &opts(dtype), &mut |_, _| {}).unwrap();
        assert!(all_logits(&ctx, &from_file, &fx.sequences) == got, "{name}: the GGUF's logits differ");
        println!("{name}: the converted GGUF gives the same logits, bit for bit");
        drop(from_file);
        drop(ctx);
        quantized_on_load(name, &fx);
    }
}

/// Each quantisation on load writes the file the fixture script gave transformers (sha256).
/// Q8_0: Pupil's logits match transformers' from that file (1e-4) and stay within 2e-2 of the
/// unquantised reference. Every type: Pupil's relative error against the reference reproduces
/// transformers' on the same file to 1e-4 (the errors themselves are 1e-2 to 0.25: these
/// random tiny models amplify weight noise).
fn quantized_on_load(name: &str, fx: &Fixture) {
    let ctx = common::context(false, true).unwrap();
    for (ty, want) in fx.meta["quantized"].as_object().unwrap() {
        let q = QuantType::ALL.into_iter().find(|t| t.name() == ty).unwrap();
        let (h, src) = pollster::block_on(read_safetensors(&fx.config, fx.shards.clone(), Some(q))).unwrap();
        assert!(src.kept().is_empty(), "{name}: every matrix's rows are whole {ty} blocks");
        let mut file = Vec::new();
        pollster::block_on(to_gguf(&h, &src, &mut file, &mut |_, _| {})).unwrap();
        assert_eq!(sha(&file), want["gguf_sha256"].as_str().unwrap(), "{name} {ty}: not the file transformers read");
        let got = all_logits(&ctx, &load(&ctx, &h, &src, DType::F32).unwrap(), &fx.sequences);
        let err = rel_err(&got, &fx.want);
        let tf = want["transformers_rel_err_vs_reference"].as_f64().unwrap();
        println!("{name} {ty} on load: rel err {err:.3e} vs the reference (transformers on the file: {tf:.3e})");
        assert!((err - tf).abs() < 1e-4, "{name} {ty}: {err} vs transformers' {tf}");
        if q == QuantType::Q8_0 {
            let exact = rel_err(&got, &fx.want_q8);
            println!("{name} Q8_0: rel err {exact:.2e} vs transformers on the same file");
            assert!(exact < 1e-4, "{name} Q8_0: {exact}");
            assert!(err < 2e-2, "{name} Q8_0 vs the unquantised reference: {err}");
        }
    }
}

/// GQA, llama's Q/K permutation, llama3 RoPE scaling (`rope_freqs`), an untied head, bf16,
/// four shards listed by model.safetensors.index.json.
#[test]
fn llama_bf16_sharded_matches_transformers() {
    matches_transformers("tiny_llama");
}

/// Q/K/V biases, linear RoPE scaling, a tied head, f16.
#[test]
fn qwen2_f16_matches_transformers() {
    matches_transformers("tiny_qwen2");
}

/// QK-norm and head_dim 128 ≠ hidden / heads, f32.
#[test]
fn qwen3_f32_matches_transformers() {
    matches_transformers("tiny_qwen3");
}

/// Sliding-window and global layers as `layer_types` says (not the default period), each with
/// its RoPE base, sandwich norms stored as 1 + w, bf16.
#[test]
fn gemma3_bf16_matches_transformers() {
    matches_transformers("tiny_gemma3");
}

/// Qwen3-Next's gated attention (all layers full attention, dense MLPs): q_proj packing each
/// head's query and output-gate rows, QK-norm and RMSNorms as 1 + w, RoPE on a quarter of each
/// head, f32. (The fixture script reads Pupil's GGUF with gguf-py: transformers' GGUF reader
/// lacks qwen3next.)
#[test]
fn qwen3next_f32_matches_transformers() {
    matches_transformers("tiny_qwen3next");
}

/// A real Qwen3-Next config (hybrid Gated DeltaNet layers, experts) is refused by name, before
/// any tensor is read.
#[test]
fn qwen3next_hybrid_and_sparse_configs_are_refused() {
    let fx = fixture("tiny_qwen3next");
    let mut cfg: Json = serde_json::from_str(&fx.config).unwrap();
    let refuse = |cfg: &Json, says: &str| {
        let e = pollster::block_on(read_safetensors(&cfg.to_string(), fx.shards.clone(), None)).err().unwrap();
        refused(e, "Unsupported", says);
    };
    cfg["layer_types"] = json!(["linear_attention", "full_attention"]);
    refuse(&cfg, "Gated DeltaNet");
    cfg.as_object_mut().unwrap().remove("layer_types");
    refuse(&cfg, "layer 0 is not full attention"); // transformers' default: every 4th layer full
    cfg["layer_types"] = json!(["full_attention", "full_attention"]);
    cfg["num_experts"] = json!(8);
    refuse(&cfg, "mixture-of-experts");
    cfg["mlp_only_layers"] = json!([0, 1]);
    assert!(pollster::block_on(read_safetensors(&cfg.to_string(), fx.shards.clone(), None)).is_ok());
    cfg["partial_rotary_factor"] = json!(0.3);
    refuse(&cfg, "partial_rotary_factor");
}

/// Records the length of its largest read.
struct Counting {
    bytes: Vec<u8>,
    largest: Rc<Cell<u64>>,
}

impl ModelSource for Counting {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    async fn read_at(&self, offset: u64, len: u64) -> pupil::Result<Vec<u8>> {
        self.largest.set(self.largest.get().max(len));
        self.bytes.read_at(offset, len).await
    }
}

/// Reading the checkpoint reads its header alone, a load reads one tensor at a time (the
/// largest read is the largest tensor, not the file), and the virtual file serves part of a
/// tensor but not a read across two.
#[test]
fn reads_one_tensor_at_a_time() {
    let fx = fixture("tiny_qwen3");
    let largest = Rc::new(Cell::new(0));
    let src = Counting { bytes: fx.shards[0].clone(), largest: largest.clone() };
    let (h, virt) = pollster::block_on(read_safetensors(&fx.config, vec![src], None)).unwrap();
    assert_eq!(largest.get(), split(&fx.shards[0]).1 as u64, "only the header was read");
    let ctx = common::full_context();
    largest.set(0);
    load(&ctx, &h, &virt, DType::F32).unwrap();
    // An f32 checkpoint: its largest tensors are the 256 × 128 embedding and Q/O projections.
    assert_eq!(largest.get(), 256 * 128 * 4);
    assert!(largest.get() * 8 < fx.shards[0].len() as u64);
    let t = h.tensor("blk.0.attn_q.weight").unwrap();
    let whole = pollster::block_on(virt.read_at(t.offset, t.size)).unwrap();
    let part = pollster::block_on(virt.read_at(t.offset + 4, 8)).unwrap();
    assert_eq!(part, whole[4..12]);
    let across = pollster::block_on(virt.read_at(t.offset + t.size - 4, 64)).unwrap_err();
    assert_eq!(across.kind(), "Format", "{across}");
    let past = pollster::block_on(virt.read_at(virt.len() - 4, 8)).unwrap_err();
    assert_eq!(past.kind(), "Truncated", "{past}");
}

/// A safetensors file's header length and JSON header (parsed here with serde_json, not Pupil).
fn split(file: &[u8]) -> (Json, usize) {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&file[8..8 + n]).unwrap(), n)
}

/// A file with `header` over the data section of `file`, plus `extra` bytes appended.
fn rebuild(file: &[u8], header: &Json, extra: &[u8]) -> Vec<u8> {
    let (_, n) = split(file);
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&file[8 + n..]);
    out.extend(extra);
    out
}

/// The outcome of reading and loading a checkpoint, with the GPU bytes held before and after.
fn try_load(ctx: &GpuContext, config: &str, shards: Vec<Vec<u8>>) -> PupilError {
    let before = ctx.memory.current_bytes();
    let e = match pollster::block_on(read_safetensors(config, shards, None)) {
        Err(e) => e,
        Ok((h, src)) => load(ctx, &h, &src, DType::F32).err().expect("a load that should fail succeeded"),
    };
    assert_eq!(ctx.memory.current_bytes(), before, "GPU memory allocated before refusing: {e}");
    e
}

#[track_caller]
fn refused(e: PupilError, kind: &str, says: &str) {
    println!("{kind}: {e}");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(says), "`{e}` should mention `{says}`");
}

#[test]
fn hostile_checkpoints_are_typed_errors_before_any_gpu_allocation() {
    let fx = fixture("tiny_qwen2");
    let ctx = common::full_context();
    let file = &fx.shards[0];
    let (header, n) = split(file);
    let with = |f: &dyn Fn(&mut Json)| {
        let mut h = header.clone();
        f(&mut h);
        vec![rebuild(file, &h, &[])]
    };
    let cfg = &fx.config;

    // The container.
    refused(try_load(&ctx, cfg, vec![file[..5].to_vec()]), "Truncated", "safetensors file");
    refused(try_load(&ctx, cfg, vec![file[..8 + n / 2].to_vec()]), "Truncated", "its header");
    let mut huge = file.clone();
    huge[..8].copy_from_slice(&(200u64 << 20).to_le_bytes());
    refused(try_load(&ctx, cfg, vec![huge]), "TooLarge", "header");
    let mut past = file.clone();
    past[..8].copy_from_slice(&(file.len() as u64).to_le_bytes());
    refused(try_load(&ctx, cfg, vec![past]), "Truncated", "header");
    let mut garbage = file.clone();
    garbage[8] = b'[';
    refused(try_load(&ctx, cfg, vec![garbage]), "Format", "not a valid safetensors header");
    let q0 = "model.layers.0.self_attn.q_proj.weight";
    let o0 = "model.layers.0.self_attn.o_proj.weight";
    refused(try_load(&ctx, cfg, with(&|h| h[o0]["data_offsets"] = h[q0]["data_offsets"].clone())), "Format", "overlap");
    refused(try_load(&ctx, cfg, with(&|h| h[q0]["dtype"] = json!("I64"))), "Unsupported", "I64");
    refused(try_load(&ctx, cfg, with(&|h| h[q0]["shape"] = json!([128, 129]))), "Format", q0);
    refused(try_load(&ctx, cfg, with(&|h| h[q0]["data_offsets"][1] = json!(u64::MAX))), "Format", "data section");
    refused(try_load(&ctx, cfg, with(&|h| h[q0]["shape"] = json!(vec![1; 9]))), "Format", "dimensions");
    refused(
        try_load(
            &ctx,
            cfg,
            with(&|h| h["x"] = json!({"dtype": "F32", "shape": [u64::MAX, 4], "data_offsets": [0, 0]})),
        ),
        "Format",
        "2^64",
    );
    // The model's tensors.
    let up1 = "model.layers.1.mlp.up_proj.weight";
    refused(try_load(&ctx, cfg, with(&|h| _ = h.as_object_mut().unwrap().remove(up1))), "Format", up1);
    let data_len = (file.len() - 8 - n) as u64;
    let bias = "model.layers.0.self_attn.o_proj.bias";
    let mut h = header.clone();
    h[bias] = json!({"dtype": "F32", "shape": [128], "data_offsets": [data_len, data_len + 512]});
    refused(try_load(&ctx, cfg, vec![rebuild(file, &h, &[0; 512])]), "Unsupported", bias);
    // A consistent file whose Q projection does not fit the config: refused by the loader's
    // plan, still before any allocation.
    let mut h = header.clone();
    let start = h[q0]["data_offsets"][0].as_u64().unwrap();
    h[q0] = json!({"dtype": "F16", "shape": [64, 128], "data_offsets": [start, start + 64 * 128 * 2]});
    refused(try_load(&ctx, cfg, vec![rebuild(file, &h, &[])]), "Format", "blk.0.attn_q.weight");
    // Shards: a tensor in two of them.
    refused(try_load(&ctx, cfg, vec![file.clone(), file.clone()]), "Format", "two safetensors files");

    // config.json.
    let config: Json = serde_json::from_str(cfg).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, Json>)| {
        let mut c = config.as_object().unwrap().clone();
        f(&mut c);
        serde_json::to_string(&c).unwrap()
    };
    let try_config = |c: String| try_load(&ctx, &c, vec![file.clone()]);
    refused(try_config(edit(&|c| _ = c.remove("hidden_size"))), "Format", "hidden_size");
    refused(try_config(edit(&|c| _ = c.insert("vocab_size".into(), json!(400)))), "Format", "vocab_size 400");
    refused(try_config(edit(&|c| _ = c.insert("num_hidden_layers".into(), json!("2")))), "Format", "num_hidden_layers");
    refused(try_config(edit(&|c| _ = c.insert("model_type".into(), json!("mistral")))), "Unsupported", "mistral");
    refused(try_config(edit(&|c| _ = c.insert("model_type".into(), json!("gemma3")))), "Unsupported", "gemma3_text");
    refused(
        try_config(edit(&|c| _ = c.insert("rope_scaling".into(), json!({"rope_type": "yarn", "factor": 4.0})))),
        "Unsupported",
        "yarn",
    );
    refused(try_config(edit(&|c| _ = c.insert("hidden_act".into(), json!("gelu")))), "Unsupported", "gelu");
    refused(try_config("{".into()), "Format", "config.json");
    // Things config.rs refuses itself, reached through the converted metadata.
    let gemma = fixture("tiny_gemma3");
    let mut g: serde_json::Map<String, Json> = serde_json::from_str(&gemma.config).unwrap();
    g.insert("final_logit_softcapping".into(), json!(30.0));
    refused(try_load(&ctx, &serde_json::to_string(&g).unwrap(), gemma.shards.clone()), "Unsupported", "soft-capping");
    g.insert("query_pre_attn_scalar".into(), json!(128));
    refused(
        try_load(&ctx, &serde_json::to_string(&g).unwrap(), gemma.shards.clone()),
        "Unsupported",
        "query_pre_attn_scalar",
    );
    let mut l: serde_json::Map<String, Json> = serde_json::from_str(&fixture("tiny_llama").config).unwrap();
    l["rope_scaling"].as_object_mut().unwrap().remove("original_max_position_embeddings");
    refused(
        try_load(&ctx, &serde_json::to_string(&l).unwrap(), fixture("tiny_llama").shards),
        "Format",
        "rope_scaling.original_max_position_embeddings",
    );
}

#[test]
fn index_names_files_in_the_folder_only() {
    let ok =
        index_shards(r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#);
    assert_eq!(ok.unwrap(), ["m-1.safetensors", "m-2.safetensors"]);
    for bad in [
        r#"{"weight_map": {"a": "../x.safetensors"}}"#,
        r#"{"weight_map": {"a": "/etc/x"}}"#,
        r#"{"weight_map": {"a": 3}}"#,
        "{}",
        "[",
    ] {
        assert_eq!(index_shards(bad).unwrap_err().kind(), "Format", "{bad}");
    }
}
