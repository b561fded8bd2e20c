//! Replays every fuzz input kept in the repository through the same checks the fuzz targets
//! run (`pupil::fuzzing`): the committed seeds (`fuzz/seeds/<target>/`: a coverage-minimised
//! selection of the fuzzers' corpora) and every crash a fuzzer ever found
//! (`fuzz/regressions/<target>/`, one file per crash, named after the fix).
//! CI replays; it does not fuzz (scripts/fuzz.sh does, see fuzz/README.md).

use std::path::Path;

use pupil::fuzzing::{fuzz_tokenizer, run, TARGETS};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["fuzz/seeds", "fuzz/regressions"] {
        let Ok(entries) = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_file() {
                out.push((e.path().display().to_string(), std::fs::read(e.path()).expect("read corpus file")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_committed_fuzz_input_passes_its_check() {
    let (tokenizer, which) = fuzz_tokenizer();
    eprintln!("tokenizer target uses the {which} vocabulary");
    for target in TARGETS {
        let inputs = inputs(target);
        assert!(!inputs.is_empty(), "fuzz/seeds/{target} and fuzz/regressions/{target} are empty");
        for (name, data) in &inputs {
            let r = std::panic::catch_unwind(|| run(target, data, &tokenizer));
            assert!(r.is_ok(), "{target}: {name} fails its check (replay: cargo +nightly fuzz run {target} {name})");
        }
        eprintln!("{target}: {} inputs", inputs.len());
    }
}

/// The checks themselves can fail: a broken property must be caught, or the corpus proves
/// nothing.
#[test]
fn the_checks_detect_broken_properties() {
    let (tokenizer, _) = fuzz_tokenizer();
    // An id outside the vocabulary is a typed error both whole and streamed, not a panic.
    pupil::fuzzing::tokenizer_ids(&tokenizer, &[0, u32::MAX]);
    // A template that loops forever runs out of fuel instead of hanging.
    let t = pupil::tokenizer::ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        None,
        None,
    )
    .expect("compiles");
    let e = t.render(&[], true).expect_err("must run out of fuel");
    assert!(e.to_string().contains("fuel"), "{e}");
}

/// What the inputs produce, by outcome (for issue notes): `cargo test --test fuzz_corpus --
/// --ignored --nocapture` over the working corpus `fuzz/corpus/` (after scripts/fuzz.sh) or
/// the seeds.
#[test]
#[ignore]
fn tally_outcomes() {
    use pupil::model::config::ModelConfig;
    use pupil::model::gguf::parse_header;
    use pupil::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
    use std::collections::BTreeMap;
    let (tokenizer, _) = fuzz_tokenizer();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let dir = if root.is_dir() { "fuzz/corpus" } else { "fuzz/seeds" };
    for target in TARGETS {
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        let mut count = |k: String| *tally.entry(k).or_default() += 1;
        let files = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target)).unwrap();
        for f in files.flatten() {
            let data = std::fs::read(f.path()).unwrap();
            match *target {
                "gguf_header" => count(match parse_header(&data) {
                    Ok(_) => "parsed".into(),
                    Err(e) => format!("error {}", e.kind()),
                }),
                "gguf_model" => match parse_header(&data) {
                    Err(e) => count(format!("header error {}", e.kind())),
                    Ok(h) => {
                        count(
                            ModelConfig::from_gguf(&h)
                                .map_or_else(|e| format!("config error {}", e.kind()), |_| "config ok".into()),
                        );
                        count(
                            Tokenizer::from_gguf(&h)
                                .map_or_else(|e| format!("tokenizer error {}", e.kind()), |_| "tokenizer ok".into()),
                        );
                        count(
                            ChatTemplate::from_gguf(&h)
                                .map_or_else(|e| format!("template error {}", e.kind()), |_| "template ok".into()),
                        );
                    }
                },
                "tokenizer" => {
                    let text = String::from_utf8_lossy(data.get(1..).unwrap_or_default()).into_owned();
                    count(match data.first().map(|m| m % 3) {
                        None => "empty".into(),
                        Some(2) => "ids".into(),
                        Some(m) => tokenizer
                            .encode(&text, m == 1)
                            .map_or_else(|e| format!("encode error {}", e.kind()), |_| "encoded".into()),
                    });
                }
                _ => {
                    let source =
                        String::from_utf8_lossy(data.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
                    count(match ChatTemplate::new(&source, None, None) {
                        Err(e) => format!("compile error {}", e.kind()),
                        Ok(t) => t
                            .render(&[ChatMessage::user("hi")], true)
                            .map_or_else(|e| format!("render error {}", e.kind()), |_| "rendered".into()),
                    });
                }
            }
        }
        eprintln!("{target} ({dir}): {tally:?}");
    }
}
