//! Depth pruning (Minitron, ShortGPT): a GGUF of the same model with some of its blocks
//! dropped. The kept blocks are renumbered in order (`blk.{i}.*`), `block_count` and every
//! per-layer metadata array follow, a sliding-window pattern becomes the kept layers' own flags;
//! embeddings, the final norm and the head stay. The student it makes is an ordinary model:
//! heal it by distillation from the file it came from (`pupil distill --teacher`). The file
//! records which of the original layers it kept ([`KEPT_LAYERS_KEY`], composed through repeated
//! pruning), so hidden-state alignment can map each block to the teacher's ([`alignment_pairs`]).

use crate::error::{PupilError, Result};
use crate::model::gguf::{GgufHeader, GgufWriter, Value};
use crate::model::{ModelConfig, ModelSource};

/// Metadata key of a pruned file: for each of its blocks, the index of the layer it was in the
/// unpruned model (u32 array).
pub const KEPT_LAYERS_KEY: &str = "pupil.prune.kept_layers";

/// The original layer of each block of a pruned file (`None` for a file never pruned, or one
/// whose record does not match its block count).
pub fn kept_layers(header: &GgufHeader, n_layers: usize) -> Option<Vec<usize>> {
    let items = header.get(KEPT_LAYERS_KEY)?.as_array()?;
    let kept: Option<Vec<usize>> = items.iter().map(|v| v.as_u64().map(|x| x as usize)).collect();
    kept.filter(|k| k.len() == n_layers && k.windows(2).all(|w| w[0] < w[1]))
}

/// Hidden-state alignment pairs (student boundary, teacher boundary) of a pruned student: after
/// its block i the student should hold what the teacher holds after the layer that block was.
pub fn alignment_pairs(kept: &[usize]) -> Vec<(usize, usize)> {
    kept.iter().enumerate().map(|(i, &l)| (i + 1, l + 1)).collect()
}

/// Parse `2:2,10:15` (student boundary : teacher boundary, each the residual stream after that
/// many blocks) into pairs.
pub fn parse_alignment_pairs(s: &str) -> Result<Vec<(usize, usize)>> {
    let bad = || PupilError::arg("distill", format!("`{s}` is not a list of boundary pairs such as 2:2,10:15"));
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once(':').ok_or_else(bad)?;
            Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|v| if v.is_empty() { Err(bad()) } else { Ok(v) })
}

/// The layers to keep when dropping the `drop` least influential ones by `influence` (one
/// score per layer, e.g. `Trainer::block_influence`); the first and the last layer are always
/// kept (pruning studies find them the most important, and the last feeds the head).
pub fn least_influential_dropped(influence: &[f64], drop: usize) -> Result<Vec<usize>> {
    let n = influence.len();
    if n < 3 || drop > n - 2 {
        return Err(PupilError::arg(
            "prune",
            format!("can drop at most {} of {n} layers (the first and last stay)", n.saturating_sub(2)),
        ));
    }
    let mut inner: Vec<usize> = (1..n - 1).collect();
    inner.sort_by(|&a, &b| influence[a].total_cmp(&influence[b]).then(a.cmp(&b)));
    let dropped = &inner[..drop];
    Ok((0..n).filter(|l| !dropped.contains(l)).collect())
}

/// Each layer's block influence on calibration tokens `ids` (`Trainer::block_influence`,
/// 1 − cos(block input, block output) averaged over tokens): read in documents of at most 256
/// tokens (within any context), weighted by their lengths. For [`least_influential_dropped`].
pub async fn calibrated_influence(
    ctx: &crate::gpu::GpuContext,
    model: &crate::model::LlamaModel,
    ids: &[u32],
) -> Result<Vec<f64>> {
    let chunk = 256.min(model.context);
    let pieces: Vec<&[u32]> = ids.chunks(chunk).filter(|c| c.len() >= 2).collect();
    if pieces.is_empty() {
        return Err(PupilError::arg("prune", "fewer than 2 calibration tokens"));
    }
    let mut t = crate::model::Trainer::with_last_layers(ctx, model, None, 0, chunk, 1)?;
    let mut influence = vec![0.0; model.config.n_layers];
    for piece in &pieces {
        let bi = t.block_influence(ctx, piece, &[piece.len()]).await?;
        influence.iter_mut().zip(bi).for_each(|(a, b)| *a += b * piece.len() as f64);
    }
    let counted: usize = pieces.iter().map(|p| p.len()).sum();
    influence.iter_mut().for_each(|a| *a /= counted as f64);
    Ok(influence)
}

/// Parse `0-17,29` (ranges and single layers) into sorted distinct layer indices.
pub fn parse_layer_list(s: &str) -> Result<Vec<usize>> {
    let bad = || PupilError::arg("prune", format!("`{s}` is not a layer list such as 0-17,29"));
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
            None => {
                let x: usize = part.parse().map_err(|_| bad())?;
                (x, x)
            }
        };
        if a > b {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// The model of `header` over `source` with only the blocks in `keep` (sorted, distinct,
/// each below the block count), as one GGUF file.
pub async fn keep_layers<S: ModelSource + ?Sized>(header: &GgufHeader, source: &S, keep: &[usize]) -> Result<Vec<u8>> {
    const OP: &str = "prune";
    let config = ModelConfig::from_gguf(header)?;
    let (arch, n) = (config.architecture.clone(), config.n_layers);
    if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) || keep.iter().any(|&l| l >= n) {
        return Err(PupilError::arg(OP, format!("kept layers must be distinct, in order and below {n}: {keep:?}")));
    }
    let block_count = format!("{arch}.block_count");
    let pattern = format!("{arch}.attention.sliding_window_pattern");
    // Layers of the original model, through any earlier pruning.
    let before = kept_layers(header, n).unwrap_or_else(|| (0..n).collect());
    let mut w = GgufWriter::new();
    for (k, v) in &header.metadata {
        if k.starts_with("split.") || k == KEPT_LAYERS_KEY {
            continue;
        }
        let v = if *k == block_count {
            Value::U32(keep.len() as u32)
        } else if *k == pattern {
            continue; // written below from the parsed flags
        } else {
            match v {
                // A per-layer array (head counts, window flags, …): the kept layers' entries.
                Value::Array(items) if k.starts_with(&format!("{arch}.")) && items.len() == n => {
                    Value::Array(keep.iter().map(|&l| items[l].clone()).collect())
                }
                other => other.clone(),
            }
        };
        w.add(k, v);
    }
    w.add(KEPT_LAYERS_KEY, Value::Array(keep.iter().map(|&l| Value::U32(before[l] as u32)).collect()));
    if let Some(sw) = &config.sliding_window {
        // Gemma's pattern may be a period over layer indices: the kept layers' own flags.
        w.add(&pattern, Value::Array(keep.iter().map(|&l| Value::Bool(sw.local[l])).collect()));
    }
    for t in &header.tensors {
        let name = match t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((layer, rest)) => {
                let layer: usize =
                    layer.parse().map_err(|_| PupilError::Format(format!("tensor {} has no layer number", t.name)))?;
                match keep.iter().position(|&k| k == layer) {
                    Some(i) => format!("blk.{i}.{rest}"),
                    None => continue,
                }
            }
            None => t.name.clone(),
        };
        let raw = source.read_at(header.data_offset + t.offset, t.size).await?;
        w.add_tensor(&name, &t.dims, t.ty, raw)?;
    }
    Ok(w.to_bytes())
}
