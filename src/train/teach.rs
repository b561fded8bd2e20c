//! Offline teachers (`pupil teach`): a teacher model's top-k next-token distribution written
//! once per packed row, so a student distils from the file without the teacher in memory (a
//! larger teacher, another machine, or one run reused by many students).
//!
//! The file is JSONL. Line 1 is the header, then one line per packed row:
//!
//! ```text
//! {"pupil_teach": 1, "teacher": "SmolLM2 135M", "vocab": 49152, "top_k": 32, "tau": 1.0, "seq_len": 256}
//! {"ids": [...], "targets": [...], "doc_lengths": [...], "top_ids": [...], "top_logp": [...]}
//! ```
//!
//! `ids`, `targets` (`IGNORE_TARGET` = 4294967295 where nothing is learnt) and `doc_lengths`
//! are the row exactly as training packs it; `top_ids` / `top_logp` hold, for every position in
//! order, the teacher's `top_k` most likely next ids and their log-probabilities under
//! softmax(logits / `tau`). The rest of each position's mass (1 − Σ p, the tail) is not stored:
//! the loss keeps it as one bucket (`ops::distill_loss::distill_topk_forward_backward`), so a
//! student is pushed to put the same total mass outside the teacher's top k, spread as it likes.

use serde::{Deserialize, Serialize};

use super::data::{Row, TopK};
use crate::error::{PupilError, Result};
use crate::gpu::GpuContext;
use crate::model::{LlamaModel, Logits};
use crate::ops::cross_entropy::IGNORE_TARGET;
use crate::ops::distill_loss::MAX_TOP_K;

/// Line 1 of a teach file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeachHeader {
    /// The format's version (1).
    pub pupil_teach: u32,
    /// The teacher's name (`general.name`, else its file name).
    pub teacher: String,
    pub vocab: usize,
    pub top_k: usize,
    /// The temperature of the stored distribution (the student's in the loss).
    pub tau: f32,
    pub seq_len: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowLine {
    ids: Vec<u32>,
    targets: Vec<u32>,
    doc_lengths: Vec<usize>,
    top_ids: Vec<u32>,
    top_logp: Vec<f32>,
}

/// Whether `text` starts like a teach file (its first line a header).
pub fn is_teach_file(text: &str) -> bool {
    text.lines().next().is_some_and(|l| l.trim_start().starts_with("{\"pupil_teach\""))
}

/// The `k` largest of `logits / tau` and their log-probabilities, most likely first (ties by
/// lower id); f64 normaliser.
pub fn top_k_of(logits: &[f32], k: usize, tau: f32) -> (Vec<u32>, Vec<f32>) {
    let inv = 1.0 / tau as f64;
    let m = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 * inv));
    let lse = m + logits.iter().map(|&x| (x as f64 * inv - m).exp()).sum::<f64>().ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_value = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let k = k.min(logits.len());
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_value);
        order.truncate(k);
    }
    order.sort_by(by_value);
    let logp = order.iter().map(|&i| (logits[i as usize] as f64 * inv - lse) as f32).collect();
    (order, logp)
}

/// The teacher's top-k at every position of `row`: each document piece through the inference
/// path from position 0 (as the trainer's packed rows attend), `model.chunk` tokens at a time.
pub async fn teach_row(ctx: &GpuContext, model: &LlamaModel, row: &Row, k: usize, tau: f32) -> Result<TopK> {
    const OP: &str = "teach";
    if k == 0 || k > MAX_TOP_K || !(tau.is_finite() && tau > 0.0) {
        return Err(PupilError::arg(OP, format!("1 ≤ k ≤ {MAX_TOP_K} and τ > 0; got k {k}, τ {tau}")));
    }
    let vocab = model.config.vocab_size;
    let cache = model.new_cache(ctx, 1)?;
    let mut out = TopK { k, ids: Vec::with_capacity(row.ids.len() * k), logp: Vec::with_capacity(row.ids.len() * k) };
    let mut at = 0;
    for &len in &row.doc_lengths {
        let piece = &row.ids[at..at + len];
        if len > model.context {
            return Err(PupilError::arg(
                OP,
                format!("a {len}-token piece past the teacher's context {}", model.context),
            ));
        }
        let mut pos = 0;
        for chunk in piece.chunks(model.chunk) {
            model.forward(ctx, &cache, 0, pos, chunk, Logits::All)?;
            let logits = model.logits(chunk.len())?.read_f32(ctx).await?;
            for row_logits in logits.chunks_exact(vocab) {
                let (ids, logp) = top_k_of(row_logits, k, tau);
                out.ids.extend(ids);
                out.logp.extend(logp);
            }
            pos += chunk.len();
        }
        at += len;
    }
    Ok(out)
}

/// A row's line of a teach file (its `top_k` set).
pub fn row_line(row: &Row) -> Result<String> {
    let t = row.top_k.as_ref().ok_or_else(|| PupilError::arg("teach", "a row without the teacher's top-k"))?;
    let line = RowLine {
        ids: row.ids.clone(),
        targets: row.targets.clone(),
        doc_lengths: row.doc_lengths.clone(),
        top_ids: t.ids.clone(),
        top_logp: t.logp.clone(),
    };
    serde_json::to_string(&line).map_err(|e| PupilError::Format(format!("teach row: {e}")))
}

/// A teach file's header (its first line).
pub fn read_header(text: &str) -> Result<TeachHeader> {
    let (no, first) = text
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or_else(|| PupilError::Format("teach file: empty".into()))?;
    let header: TeachHeader = serde_json::from_str(first)
        .map_err(|e| PupilError::Format(format!("teach file line {}: not a teach header: {e}", no + 1)))?;
    let k = header.top_k;
    if header.pupil_teach != 1 {
        return Err(PupilError::Format(format!(
            "teach file: format version {} (this build reads 1)",
            header.pupil_teach
        )));
    }
    if k == 0 || k > MAX_TOP_K || !(header.tau.is_finite() && header.tau > 0.0) || header.seq_len == 0 {
        return Err(PupilError::Format(format!(
            "teach file: top_k {k} (1..={MAX_TOP_K}), τ {} (> 0), seq_len {} (≥ 1)",
            header.tau, header.seq_len
        )));
    }
    Ok(header)
}

/// Read a teach file for a student of vocabulary `vocab`: its header and rows, every row
/// checked (lengths, ids in the vocabulary and distinct per position, log-probabilities finite,
/// at most 0 and summing to at most 1).
pub fn read_teach_file(text: &str, vocab: usize) -> Result<(TeachHeader, Vec<Row>)> {
    let header = read_header(text)?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    lines.next();
    let bad = |no: usize, what: String| PupilError::Format(format!("teach file line {}: {what}", no + 1));
    if header.vocab != vocab {
        return Err(PupilError::Format(format!(
            "teach file: the teacher's vocabulary is {}, the student's {vocab}",
            header.vocab
        )));
    }
    let k = header.top_k;
    let mut rows = Vec::new();
    for (no, line) in lines {
        let r: RowLine = serde_json::from_str(line).map_err(|e| bad(no, format!("not a teach row: {e}")))?;
        let n = r.ids.len();
        if n > header.seq_len {
            return Err(bad(no, format!("{n} tokens, over the header's seq_len {}", header.seq_len)));
        }
        if n == 0
            || r.targets.len() != n
            || r.doc_lengths.iter().sum::<usize>() != n
            || r.doc_lengths.contains(&0)
            || r.top_ids.len() != n * k
            || r.top_logp.len() != n * k
        {
            return Err(bad(no, format!("{n} ids: targets, doc lengths summing to them, and {k} teacher ids and log-probabilities per token")));
        }
        if let Some(&id) = r.ids.iter().chain(&r.top_ids).find(|&&id| id as usize >= vocab) {
            return Err(bad(no, format!("token id {id} outside the vocabulary of {vocab}")));
        }
        if let Some(&t) = r.targets.iter().find(|&&t| t != IGNORE_TARGET && t as usize >= vocab) {
            return Err(bad(no, format!("target {t} outside the vocabulary of {vocab}")));
        }
        for (pos, (ids, lp)) in r.top_ids.chunks(k).zip(r.top_logp.chunks(k)).enumerate() {
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(bad(no, format!("position {pos}: the teacher's ids repeat")));
            }
            let mass: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
            if lp.iter().any(|x| !x.is_finite() || *x > 1e-4) || mass > 1.0 + 1e-3 {
                return Err(bad(no, format!("position {pos}: log-probabilities must be finite, ≤ 0 and sum to ≤ 1")));
            }
        }
        rows.push(Row {
            ids: r.ids,
            targets: r.targets,
            doc_lengths: r.doc_lengths,
            teacher: None,
            top_k: Some(TopK { k, ids: r.top_ids, logp: r.top_logp }),
        });
    }
    if rows.is_empty() {
        return Err(PupilError::Format("teach file: a header and no rows".into()));
    }
    Ok((header, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_the_largest_in_order_with_log_probabilities() {
        let logits = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let (ids, lp) = top_k_of(&logits, 3, 2.0);
        assert_eq!(ids, vec![1, 3, 4], "ties by lower id");
        let lse = logits.iter().map(|&x| (x as f64 / 2.0).exp()).sum::<f64>().ln();
        for (&i, &l) in ids.iter().zip(&lp) {
            assert!((l as f64 - (logits[i as usize] as f64 / 2.0 - lse)).abs() < 1e-6);
        }
        assert_eq!(top_k_of(&logits, 9, 1.0).0.len(), 5);
    }

    #[test]
    fn a_written_row_reads_back_and_bad_files_are_refused() {
        let header = TeachHeader { pupil_teach: 1, teacher: "t".into(), vocab: 8, top_k: 2, tau: 1.0, seq_len: 4 };
        let row = Row {
            ids: vec![1, 2, 3],
            targets: vec![2, 3, IGNORE_TARGET],
            doc_lengths: vec![3],
            teacher: None,
            top_k: Some(TopK { k: 2, ids: vec![2, 5, 3, 1, 0, 7], logp: vec![-0.1, -2.5, -0.3, -1.5, -0.7, -1.0] }),
        };
        let file = format!("{}\n{}\n", serde_json::to_string(&header).unwrap(), row_line(&row).unwrap());
        assert!(is_teach_file(&file) && !is_teach_file("{\"text\": \"hi\"}"));
        let (h, rows) = read_teach_file(&file, 8).unwrap();
        assert_eq!((h, rows), (header.clone(), vec![row.clone()]));
        let kind = |text: &str, vocab: usize| read_teach_file(text, vocab).unwrap_err().kind();
        assert_eq!(kind(&file, 9), "Format", "another vocabulary");
        let h = serde_json::to_string(&header).unwrap();
        for bad_row in [
            r#"{"ids":[1],"targets":[2],"doc_lengths":[1],"top_ids":[2,2],"top_logp":[-1,-2]}"#,
            r#"{"ids":[1],"targets":[2],"doc_lengths":[1],"top_ids":[2,9],"top_logp":[-1,-2]}"#,
            r#"{"ids":[1],"targets":[2],"doc_lengths":[1],"top_ids":[2,3],"top_logp":[-0.01,-0.02]}"#,
            r#"{"ids":[1],"targets":[2],"doc_lengths":[2],"top_ids":[2,3],"top_logp":[-1,-2]}"#,
            r#"{"ids":[1],"targets":[2],"doc_lengths":[1],"top_ids":[2],"top_logp":[-1]}"#,
            "not json",
        ] {
            assert_eq!(kind(&format!("{h}\n{bad_row}\n"), 8), "Format", "{bad_row}");
        }
        assert_eq!(kind(&format!("{h}\n"), 8), "Format", "no rows");
    }
}
