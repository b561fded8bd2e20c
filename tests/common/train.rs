//! Shared by the training tests (train_lora, train_export, distill): the PyTorch/PEFT fixtures
//! of tests/fixtures/train (made by scripts/fixtures/make_train_fixtures.py and
//! make_export_fixtures.py) and the GGUF ↔ HF row order of llama's Q and K.

use std::path::Path;

use pupil::model::synth;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// A fixture: `<kind>_<preset>.json` (settings and scalars) and `.f32.bin` (its arrays, one
/// after another, little-endian f32).
pub struct Fixture {
    pub meta: Json,
    pub blobs: Vec<f32>,
}

/// `tests/fixtures/train/<kind>_<preset>.{json,f32.bin}` (kind: lora, last1, gates, kd, align,
/// export, prune, …; the preset's dashes become underscores in the name).
pub fn fixture_of(kind: &str, preset: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train");
    let name = preset.replace('-', "_");
    let meta =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{kind}_{name}.json"))).unwrap()).unwrap();
    let bin = std::fs::read(dir.join(format!("{kind}_{name}.f32.bin"))).unwrap();
    Fixture { meta, blobs: bin.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() }
}

/// `pupil synth PRESET --seed SEED` of the fixture, checked by sha256 to be the file PyTorch read.
pub fn synth_file(fx: &Fixture) -> Vec<u8> {
    let preset = fx.meta["preset"].as_str().unwrap();
    let file =
        synth::synthesize(&synth::preset(preset).unwrap(), fx.meta["seed"].as_u64().unwrap(), &mut |_, _| {}).unwrap();
    assert_eq!(
        format!("{:x}", Sha256::digest(&file)),
        fx.meta["gguf_sha256"].as_str().unwrap(),
        "`pupil synth {preset}` changed"
    );
    file
}

/// A llama GGUF stores Q and K rows permuted (pairs adjacent, see model::config): HF row
/// `h·P + e·P/2 + i` is file row `h·P + 2i + e`. Maps rows of an `[rows, cols]` matrix.
pub fn hf_to_gguf_rows(m: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let per = rows / heads;
    let mut out = vec![0.0; m.len()];
    for h in 0..heads {
        for i in 0..per / 2 {
            for e in 0..2 {
                let (src, dst) = (h * per + e * per / 2 + i, h * per + 2 * i + e);
                out[dst * cols..][..cols].copy_from_slice(&m[src * cols..][..cols]);
            }
        }
    }
    out
}
