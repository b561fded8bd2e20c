//! Writes the seed inputs of the fuzz targets into `fuzz/corpus/<target>/seed-*`:
//! real headers and templates, the tokenizer's hard strings, synthetic models.
//! `scripts/fuzz.sh` runs it before fuzzing; `cargo run --example fuzz_seeds`.

use std::fs;
use std::path::Path;

use pupil::model::gguf::parse_header;
use pupil::model::synth::{preset, synthesize};
use pupil::tokenizer::CHATML_TEMPLATE;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

fn main() {
    let tiny = synthesize(&preset("tiny-llama").expect("preset"), 1, &mut |_, _| {}).expect("synth");
    write("gguf_header", "tiny-llama", &tiny);
    write("gguf_model", "tiny-llama", &tiny);

    let fixtures = Path::new("tests/fixtures/tokenizer");
    let tok: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixtures.join("smollm2.json")).expect("fixture")).expect("json");
    for (i, case) in tok["cases"].as_array().expect("cases").iter().enumerate() {
        if let Some(text) = case["text"].as_str() {
            for mode in [0u8, 1] {
                write("tokenizer", &format!("case{i}-{mode}"), &[&[mode][..], text.as_bytes()].concat());
            }
        }
    }
    let chat: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixtures.join("smollm2_chat.json")).expect("fixture")).expect("json");
    let mut templates = vec![CHATML_TEMPLATE.to_string()];
    if let Some(map) = chat["templates"].as_object() {
        templates.extend(map.values().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    for (i, t) in templates.iter().enumerate() {
        write("chat_template", &format!("template{i}"), format!("{t}\0You are kind.\0Hi!\0Hello.").as_bytes());
    }

    // The real model's header alone (vocabulary, merges, template), when cached.
    let home = std::env::var("HOME").unwrap_or_default();
    let model = std::env::var("PUPIL_SMOLLM2")
        .unwrap_or_else(|_| format!("{home}/.cache/pupil/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if let Ok(file) = fs::read(&model) {
        let h = parse_header(&file).expect("real header");
        write("gguf_model", "smollm2-header", &file[..h.data_offset as usize]);
        write("gguf_header", "smollm2-header", &file[..h.data_offset as usize]);
        let t = h.get("tokenizer.chat_template").and_then(|v| v.as_str()).unwrap_or_default();
        write("chat_template", "smollm2", format!("{t}\0You are kind.\0Hi!\0Hello.\0Bye").as_bytes());
    }
    println!("seeds written under fuzz/corpus/");
}
