//! Split GGUF files (llama.cpp's gguf-split layout: every shard a complete GGUF with
//! `split.no` / `split.count`, the metadata in the first): a model split three ways loads
//! through `read_split` and computes exactly what the single file does; incomplete, misordered
//! or overlapping shard sets are typed errors, and one shard alone says what it is.

mod common;

use pupil::gpu::DType;
use pupil::model::gguf::{parse_header, GgufWriter, Value};
use pupil::model::{read_split, synth, LlamaModel, Logits, ModelOptions};
use pupil::PupilError;

/// The tensors of `file` dealt into `n` shards (round robin), gguf-split style.
fn split(file: &[u8], n: usize, duplicate_first: bool) -> Vec<Vec<u8>> {
    let h = parse_header(file).unwrap();
    (0..n)
        .map(|i| {
            let mut w = GgufWriter::new();
            if i == 0 {
                for (k, v) in &h.metadata {
                    w.add(k, v.clone());
                }
                // A duplicated tensor is counted, so the name check (not the count) catches it.
                let count = h.tensors.len() + duplicate_first as usize;
                w.add("split.tensors.count", Value::I32(count as i32));
            }
            w.add("split.no", Value::U16(i as u16));
            w.add("split.count", Value::U16(n as u16));
            for (j, t) in h.tensors.iter().enumerate() {
                if j % n == i || (duplicate_first && j == 0 && i == 1) {
                    w.add_tensor(&t.name, &t.dims, t.ty, h.tensor_data(file, t).unwrap().to_vec()).unwrap();
                }
            }
            w.to_bytes()
        })
        .collect()
}

fn opts() -> ModelOptions {
    ModelOptions { dtype: Some(DType::F32), context: Some(64), ..ModelOptions::default() }
}

fn logits(ctx: &pupil::GpuContext, model: &LlamaModel) -> Vec<f32> {
    let cache = model.new_cache(ctx, 1).unwrap();
    model.forward(ctx, &cache, 0, 0, &[1, 7, 300, 42, 9], Logits::All).unwrap();
    pollster::block_on(model.logits(5).unwrap().read_f32(ctx)).unwrap()
}

fn format_error<T>(r: pupil::Result<T>, needle: &str) {
    match r {
        Err(PupilError::Format(msg)) => assert!(msg.contains(needle), "{msg}"),
        Err(e) => panic!("expected a Format error about {needle:?}, got {e:?}"),
        Ok(_) => panic!("expected a Format error about {needle:?}, got Ok"),
    }
}

#[test]
fn a_split_model_loads_and_computes_what_the_single_file_does() {
    let file = synth::synthesize(&synth::preset("tiny-qwen2").unwrap(), 3, &mut |_, _| {}).unwrap();
    let ctx = common::full_context();
    let single = LlamaModel::load(&ctx, &file, &opts(), &mut |_, _| {}).unwrap();
    let want = logits(&ctx, &single);

    let (header, source) = pollster::block_on(read_split(split(&file, 3, false))).unwrap();
    assert_eq!(header.tensors.len(), parse_header(&file).unwrap().tensors.len());
    assert!(header.get("split.count").is_none(), "the merged header is not a shard");
    let model =
        pollster::block_on(LlamaModel::load_with_header(&ctx, &header, &source, &opts(), &mut |_, _| {})).unwrap();
    assert_eq!(logits(&ctx, &model), want, "split and single file give identical logits");
}

#[test]
fn bad_shard_sets_are_typed_errors() {
    let file = synth::synthesize(&synth::preset("tiny-llama").unwrap(), 3, &mut |_, _| {}).unwrap();
    let shards = split(&file, 3, false);
    let r = |s: Vec<Vec<u8>>| pollster::block_on(read_split(s)).map(|_| ());
    format_error(r(vec![shards[0].clone(), shards[2].clone(), shards[1].clone()]), "in order");
    format_error(r(shards[..2].to_vec()), "every shard");
    format_error(r(split(&file, 3, true)), "appears in two shards");
    let too_many = [shards.clone(), vec![shards[2].clone()]].concat();
    format_error(r(too_many), "every shard");
    // One shard alone is not a model, and says so.
    let ctx = common::full_context();
    let alone = LlamaModel::load(&ctx, &shards[1], &opts(), &mut |_, _| {});
    format_error(alone, "shard 2 of 3");
    assert_eq!(ctx.memory.current_bytes(), 0);
}
