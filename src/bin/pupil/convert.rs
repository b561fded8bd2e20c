//! `pupil convert`: a Hugging Face checkpoint (config.json + safetensors) to a GGUF file. The
//! files are read by byte ranges and the GGUF written one tensor at a time, so a checkpoint
//! larger than memory converts too.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pupil::model::{index_shards, read_safetensors, to_gguf, ModelSource};
use pupil::quant::QuantType;
use pupil::PupilError;

use super::{bytes_bar, other};

/// A file read by byte ranges.
struct FileSource {
    path: PathBuf,
    file: Mutex<File>,
    len: u64,
}

impl FileSource {
    fn open(path: &Path) -> pupil::Result<FileSource> {
        let file = File::open(path).map_err(|e| other(format!("{}: {e}", path.display())))?;
        let len = file.metadata().map_err(|e| other(format!("{}: {e}", path.display())))?.len();
        Ok(FileSource { path: path.to_path_buf(), file: Mutex::new(file), len })
    }
}

impl ModelSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, offset: u64, len: u64) -> pupil::Result<Vec<u8>> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len);
        let n = end.and_then(|_| usize::try_from(len).ok()).ok_or_else(|| PupilError::Truncated {
            what: self.path.display().to_string(),
            needed: offset.saturating_add(len),
            have: self.len,
        })?;
        let mut buf = vec![0; n];
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| other(format!("{}: {e}", self.path.display())))?;
        Ok(buf)
    }
}

/// config.json and the safetensors files of a checkpoint folder (every shard listed by
/// model.safetensors.index.json, else model.safetensors), or of one .safetensors file (its
/// config.json beside it; a shard brings the others its index lists).
fn checkpoint_files(input: &Path) -> pupil::Result<(PathBuf, Vec<PathBuf>)> {
    if !input.exists() {
        return Err(other(format!("{}: no such file or folder", input.display())));
    }
    let dir = if input.is_dir() { input } else { input.parent().unwrap_or(Path::new(".")) };
    let index = dir.join("model.safetensors.index.json");
    let shards = if index.exists() { index_shards(&read_text(&index)?)? } else { Vec::new() };
    let files = match input.file_name().and_then(|n| n.to_str()) {
        _ if input.is_dir() && shards.is_empty() => vec![dir.join("model.safetensors")],
        Some(name) if !input.is_dir() && !shards.iter().any(|s| s == name) => vec![input.to_path_buf()],
        _ => shards.iter().map(|f| dir.join(f)).collect(),
    };
    Ok((dir.join("config.json"), files))
}

fn read_text(path: &Path) -> pupil::Result<String> {
    std::fs::read_to_string(path).map_err(|e| other(format!("{}: {e}", path.display())))
}

pub fn convert(input: &Path, out: &Path, quantize: Option<&str>) -> pupil::Result<()> {
    let quantize = quantize
        .map(|q| {
            QuantType::ALL
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(q))
                .ok_or_else(|| PupilError::Unsupported(format!("quantisation type {q}")))
        })
        .transpose()?;
    let (config, files) = checkpoint_files(input)?;
    let config_json = read_text(&config)?;
    let shards = files.iter().map(|f| FileSource::open(f)).collect::<pupil::Result<Vec<_>>>()?;
    let (header, source) = pollster::block_on(read_safetensors(&config_json, shards, quantize))?;
    if let Some(q) = quantize {
        for name in source.kept() {
            eprintln!("note: {name} stays unquantised (its rows are not whole {q} blocks)");
        }
    }
    let total = header.tensors.iter().map(|t| t.size).sum();
    let bar = bytes_bar(total, "convert");
    let write = || -> pupil::Result<u64> {
        let file = File::create(out).map_err(|e| other(format!("{}: {e}", out.display())))?;
        let mut w = BufWriter::new(file);
        let len = pollster::block_on(to_gguf(&header, &source, &mut w, &mut |done, _| bar.set_position(done)))?;
        w.flush().map_err(|e| other(format!("{}: {e}", out.display())))?;
        Ok(len)
    };
    let len = write().inspect_err(|_| {
        let _ = std::fs::remove_file(out);
    })?;
    bar.finish_and_clear();
    let arch = header.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("?");
    eprintln!(
        "{}: {arch}, {} tensors from {} safetensors file(s), {} bytes",
        out.display(),
        header.tensors.len(),
        files.len(),
        len
    );
    eprintln!(
        "note: the file has no tokenizer (tokenizer.json is not converted): it loads for logits, but \
         generate, chat and perplexity need a GGUF file with one"
    );
    Ok(())
}
