//! Split GGUF files (llama.cpp's `gguf-split`: `NAME-00001-of-00003.gguf`, ...). Each shard is
//! a complete GGUF file holding some of the tensors; the first also holds the model's metadata,
//! and every shard says which it is (`split.no`, from 0) and how many there are
//! (`split.count`). They load as one model: the shards' bytes are seen end to end as one
//! virtual file ([`ShardedSource`]), and a merged header ([`read_split`]) places every tensor at
//! its offset in that file, so the loader needs nothing special.

use std::path::{Path, PathBuf};

use super::gguf::{GgufHeader, TensorInfo};
use super::source::{read_header, ModelSource};
use crate::error::{PupilError, Result};

/// Shards seen end to end as one file. A read must lie inside one shard (every tensor does).
pub struct ShardedSource<S> {
    shards: Vec<S>,
    /// Virtual offset of each shard's first byte.
    starts: Vec<u64>,
    len: u64,
}

impl<S: ModelSource> ShardedSource<S> {
    pub fn new(shards: Vec<S>) -> Self {
        let mut starts = Vec::with_capacity(shards.len());
        let mut len = 0;
        for s in &shards {
            starts.push(len);
            len += s.len();
        }
        ShardedSource { shards, starts, len }
    }
}

impl<S: ModelSource> ModelSource for ShardedSource<S> {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let i = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let (start, shard) = (self.starts[i], &self.shards[i]);
        if offset.saturating_add(len) > start + shard.len() {
            return Err(PupilError::Format(format!(
                "a read of {len} bytes at {offset} crosses from shard {} into the next",
                i + 1
            )));
        }
        shard.read_at(offset - start, len).await
    }
}

fn split_key(h: &GgufHeader, key: &str) -> Option<u64> {
    h.get(key).and_then(|v| v.as_u64())
}

/// `Some((shard number from 0, shard count))` for a shard of a split file with more than one
/// shard. A merged header ([`read_split`]) has no split keys.
pub fn split_info(h: &GgufHeader) -> Option<(u64, u64)> {
    match (split_key(h, "split.no"), split_key(h, "split.count")) {
        (Some(no), Some(count)) if count > 1 => Some((no, count)),
        _ => None,
    }
}

/// Read every shard's header and merge them: the first shard's metadata (without the split
/// keys), every shard's tensors at their offsets in the shards' concatenation. Shards must be
/// given in order, all of them, each once; tensor names must be unique across them.
pub async fn read_split<S: ModelSource>(shards: Vec<S>) -> Result<(GgufHeader, ShardedSource<S>)> {
    let source = ShardedSource::new(shards);
    let count = source.shards.len() as u64;
    let mut merged: Option<GgufHeader> = None;
    let mut tensors: Vec<TensorInfo> = Vec::new();
    for (i, shard) in source.shards.iter().enumerate() {
        let h = read_header(shard).await?;
        let (no, n) = split_info(&h).unwrap_or((0, 1));
        if n != count || no != i as u64 {
            return Err(PupilError::Format(format!(
                "file {} of the {count} given is shard {} of {n}: give every shard of the split, in order",
                i + 1,
                no + 1
            )));
        }
        let base = source.starts[i] + h.data_offset;
        tensors.extend(h.tensors.iter().map(|t| TensorInfo { offset: base + t.offset, ..t.clone() }));
        if i == 0 {
            merged = Some(h);
        }
    }
    let first = merged.ok_or_else(|| PupilError::arg("read_split", "no shards given"))?;
    if let Some(want) = split_key(&first, "split.tensors.count") {
        if want != tensors.len() as u64 {
            return Err(PupilError::Format(format!(
                "the shards hold {} tensors, the first says {want}",
                tensors.len()
            )));
        }
    }
    let metadata = first.metadata.into_iter().filter(|(k, _)| !k.starts_with("split.")).collect();
    let header = GgufHeader::assemble(first.version, metadata, tensors, first.alignment, 0)?;
    Ok((header, source))
}

/// Every shard's path for a split file's name (`NAME-00002-of-00003.gguf` → the three), or
/// `None` when the name is not a shard's.
pub fn shard_paths(path: &Path) -> Option<Vec<PathBuf>> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    // ...-NNNNN-of-MMMMM
    let (head, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = head.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 || !no.bytes().chain(count.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: usize = count.parse().ok().filter(|&n| n > 0)?;
    Some((1..=n).map(|i| path.with_file_name(format!("{prefix}-{i:05}-of-{n:05}.gguf"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        let p = Path::new("/m/qwen-7b-q4_k_m-00002-of-00003.gguf");
        let all = shard_paths(p).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], Path::new("/m/qwen-7b-q4_k_m-00001-of-00003.gguf"));
        assert_eq!(all[2], Path::new("/m/qwen-7b-q4_k_m-00003-of-00003.gguf"));
        for not in ["/m/model.gguf", "/m/a-1-of-3.gguf", "/m/a-00001-of-00003.bin", "/m/a-0000x-of-00003.gguf"] {
            assert!(shard_paths(Path::new(not)).is_none(), "{not}");
        }
    }
}
