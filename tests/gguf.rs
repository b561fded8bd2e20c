//! The GGUF reader against a file written by gguf-py (independent), the writer by round trip,
//! and hostile inputs: every truncation, byte flips, absurd counts, bad types and layouts must
//! give a typed error — never a panic, never a huge allocation.

use pupil::model::gguf::{parse_header, GgufWriter, Value};
use pupil::quant::{random_blocks, QuantType};
use pupil::rng::SplitMix64;
use pupil::PupilError;
use sha2::{Digest, Sha256};

const TINY: &[u8] = include_bytes!("fixtures/gguf/tiny.gguf");
const TINY_EXPECTED: &str = include_str!("fixtures/gguf/tiny.expected.json");

#[test]
fn reads_a_file_written_by_gguf_py() {
    let h = parse_header(TINY).unwrap();
    assert_eq!((h.version, h.alignment), (3, 32));
    let get = |k: &str| h.get(k).unwrap_or_else(|| panic!("missing {k}")).clone();
    assert_eq!(get("general.architecture"), Value::String("llama".into()));
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), Value::F32(0.15625));
    assert_eq!(get("test.u64"), Value::U64((1 << 60) + 3));
    assert_eq!(get("test.i64"), Value::I64(-(1 << 60) - 3));
    assert_eq!(get("test.f64"), Value::F64(-1.0e300));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(get("test.string"), Value::String("héllo ✓ 世界".into()));
    assert_eq!(get("test.array_i32"), Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)]));
    assert_eq!(
        get("test.array_str").as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
        ["a", "", "ß"]
    );
    assert_eq!(get("llama.context_length").as_u64(), Some(8192));

    let expected: serde_json::Value = serde_json::from_str(TINY_EXPECTED).unwrap();
    let tensors = expected["tensors"].as_object().unwrap();
    assert_eq!(h.tensors.len(), tensors.len());
    for (name, want) in tensors {
        let t = h.tensor(name).unwrap_or_else(|| panic!("missing tensor {name}"));
        assert_eq!(t.ty.name(), want["type"].as_str().unwrap(), "{name}");
        let dims: Vec<u64> = want["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.dims, dims, "{name}");
        assert_eq!(h.data_offset + t.offset, want["offset"].as_u64().unwrap(), "{name}");
        let data = h.tensor_data(TINY, t).unwrap();
        let sha: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sha, want["sha256"].as_str().unwrap(), "{name}");
    }
    // gguf-py pads the file's end to the alignment.
    assert!(h.file_size() <= TINY.len() as u64 && TINY.len() as u64 - h.file_size() < h.alignment);
}

fn sample_file() -> Vec<u8> {
    let mut rng = SplitMix64::new(3);
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()))
        .add("general.alignment", Value::U32(64))
        .add("a.f64s", Value::Array(vec![Value::F64(1.5), Value::F64(-2.0)]))
        .add("a.bool", Value::Bool(false))
        .add("a.i16", Value::I16(-7));
    w.add_tensor("q", &[64, 3], QuantType::Q8_0, random_blocks(QuantType::Q8_0, 192, &mut rng)).unwrap();
    w.add_tensor("k", &[256, 2], QuantType::Q4_K, random_blocks(QuantType::Q4_K, 512, &mut rng)).unwrap();
    w.add_tensor("n", &[5], QuantType::F32, vec![0; 20]).unwrap();
    w.to_bytes()
}

#[test]
fn writer_round_trips() {
    let bytes = sample_file();
    let h = parse_header(&bytes).unwrap();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(h.get("a.f64s"), Some(&Value::Array(vec![Value::F64(1.5), Value::F64(-2.0)])));
    assert_eq!(h.get("a.i16"), Some(&Value::I16(-7)));
    let k = h.tensor("k").unwrap();
    assert_eq!((k.ty, k.dims.clone(), k.size), (QuantType::Q4_K, vec![256, 2], 288));
    assert_eq!(k.offset % 64, 0);
    assert_eq!(h.tensor("n").unwrap().rows_cols(), (1, 5));
    assert_eq!(h.file_size(), bytes.len() as u64);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = sample_file();
    let header_len = parse_header(&bytes).unwrap().data_offset as usize;
    for n in 0..header_len - 1 {
        match parse_header(&bytes[..n]) {
            Err(PupilError::Truncated { needed, have, .. }) => assert!(needed > have && have == n as u64),
            // The padding before the data section is not needed to parse the header.
            Ok(_) => assert!(n >= header_len - 64, "parsed a {n}-byte prefix"),
            Err(e) => panic!("prefix {n}: unexpected error {e}"),
        }
    }
    // A complete header with the data cut off parses; reading the data is the error.
    let h = parse_header(&bytes[..header_len]).unwrap();
    assert!(matches!(h.tensor_data(&bytes[..header_len + 10], h.tensor("k").unwrap()), Err(PupilError::Format(_))));
}

#[test]
fn flipped_bytes_never_panic() {
    let bytes = sample_file();
    let header_len = parse_header(&bytes).unwrap().data_offset as usize;
    let mut rng = SplitMix64::new(9);
    for _ in 0..20_000 {
        let mut b = bytes[..header_len].to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(header_len as u32) as usize;
            b[i] = rng.below(256) as u8;
        }
        let _ = parse_header(&b); // any Result is fine; a panic or abort fails the test
    }
}

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

#[test]
fn hostile_headers_are_refused_before_allocating() {
    assert!(matches!(parse_header(b"GGML\x03\0\0\0"), Err(PupilError::Format(_))));
    let mut v1 = header(0, 0);
    v1[4] = 1;
    assert!(matches!(parse_header(&v1), Err(PupilError::Format(_))));
    // Absurd counts: refused by size, not by trying to allocate them.
    assert!(matches!(parse_header(&header(u64::MAX, 0)), Err(PupilError::Truncated { .. })));
    assert!(matches!(parse_header(&header(0, u64::MAX / 2)), Err(PupilError::Truncated { .. })));
    // A string claiming 2^62 bytes.
    let mut b = header(0, 1);
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(matches!(parse_header(&b), Err(PupilError::Truncated { .. })));
    // An array claiming 2^60 u64 elements.
    let mut b = header(0, 1);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&10u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(parse_header(&b), Err(PupilError::Truncated { .. })));
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = header(1, 0);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b't');
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    // Room past the info, so the size floor of a tensor info is not what rejects it.
    b.extend_from_slice(&[0; 64]);
    b
}

#[test]
fn bad_tensor_infos_are_typed_errors() {
    match parse_header(&one_tensor(&[256], 16, 0)) {
        Err(PupilError::Unsupported(msg)) => assert!(msg.contains("IQ2_XXS"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse_header(&one_tensor(&[], 0, 0)), Err(PupilError::Format(_))));
    assert!(matches!(parse_header(&one_tensor(&[1, 1, 1, 1, 1], 0, 0)), Err(PupilError::Format(_))));
    assert!(matches!(parse_header(&one_tensor(&[u64::MAX, 16], 0, 0)), Err(PupilError::Format(_))));
    assert!(
        matches!(parse_header(&one_tensor(&[33], 8, 0)), Err(PupilError::Format(_))),
        "row not a multiple of the block"
    );
    assert!(matches!(parse_header(&one_tensor(&[32], 0, 3)), Err(PupilError::Format(_))), "misaligned");
    assert!(
        matches!(parse_header(&one_tensor(&[32], 0, u64::MAX - 31)), Err(PupilError::Format(_))),
        "offset overflow"
    );
    assert!(parse_header(&one_tensor(&[32], 0, 0)).is_ok());
}

#[test]
fn fuzz_regressions_are_typed_errors() {
    // Inputs that once crashed the reader under `scripts/fuzz.sh` (one file each).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let _ = parse_header(&bytes); // must return, not panic
        n += 1;
    }
    assert!(n > 0);
    // The first one: a string length near 2^64 (the error's byte count overflowed).
    let mut b = header(0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 32]);
    assert!(matches!(parse_header(&b), Err(PupilError::Truncated { needed: u64::MAX, .. })));
}
