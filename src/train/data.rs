//! Training data: plain text, JSONL of `{"text": …}`, or chat JSONL of `{"messages": [...]}`
//! rendered through the model's chat template (the loss counts the assistant turns only),
//! tokenized and packed into fixed-length rows of documents.

use serde::Deserialize;

use crate::error::{PupilError, Result};
pub use crate::model::{TeacherRow, TopK};
use crate::ops::cross_entropy::IGNORE_TARGET;
use crate::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

/// How a data file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// The whole file is one document (split into rows of the sequence length).
    Text,
    /// One JSON object per line: `{"text": "..."}` or `{"messages": [{"role", "content"}, …]}`.
    Jsonl,
}

impl DataFormat {
    /// By file name: `.jsonl` is JSONL, anything else text.
    pub fn guess(name: &str) -> DataFormat {
        if name.ends_with(".jsonl") {
            DataFormat::Jsonl
        } else {
            DataFormat::Text
        }
    }

    /// An options field: `"text"` (also when absent) or `"jsonl"`.
    pub fn parse(op: &'static str, name: Option<&str>) -> Result<DataFormat> {
        match name {
            None | Some("text") => Ok(DataFormat::Text),
            Some("jsonl") => Ok(DataFormat::Jsonl),
            Some(other) => Err(PupilError::arg(op, format!("format `{other}` (text or jsonl)"))),
        }
    }
}

/// A tokenized document: ids and, per id, whether predicting it counts in the loss.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    pub ids: Vec<u32>,
    pub counted: Vec<bool>,
}

#[derive(Deserialize)]
struct Line {
    text: Option<String>,
    messages: Option<Vec<ChatMessage>>,
}

/// Tokenize `data` into documents. Text documents count every token; chat documents count the
/// assistant messages (with the template's end-of-turn), the rest being context. Each document
/// starts with BOS where the tokenizer adds one and ends with EOS.
pub fn documents(
    data: &str,
    format: DataFormat,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<Vec<Document>> {
    let text_doc = |text: &str| -> Result<Document> {
        let mut ids = tokenizer.encode_for_model(text, false)?;
        if let Some(eos) = tokenizer.eos_id() {
            ids.push(eos);
        }
        Ok(Document { counted: vec![true; ids.len()], ids })
    };
    let mut docs = Vec::new();
    match format {
        DataFormat::Text => {
            if !data.trim().is_empty() {
                docs.push(text_doc(data)?);
            }
        }
        DataFormat::Jsonl => {
            for (no, line) in data.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let bad = |what: String| PupilError::Format(format!("training data line {}: {what}", no + 1));
                let l: Line = serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
                match (l.text, l.messages) {
                    (Some(t), None) => docs.push(text_doc(&t)?),
                    (None, Some(m)) => {
                        let template =
                            template.ok_or_else(|| bad("chat messages, but the model has no chat template".into()))?;
                        docs.push(chat_doc(&m, template, tokenizer).map_err(|e| bad(e.to_string()))?);
                    }
                    _ => return Err(bad("needs exactly one of \"text\" or \"messages\"".into())),
                }
            }
        }
    }
    if docs.iter().all(|d| d.ids.len() < 2) {
        return Err(PupilError::Format("the training data holds no document of two tokens or more".into()));
    }
    Ok(docs)
}

/// A conversation through the template, segment by segment: the text up to each assistant
/// reply (`render(messages[..i], add_generation_prompt)`) is context, the reply up to the next
/// message is counted. A template whose renders are not prefixes of each other counts all.
fn chat_doc(messages: &[ChatMessage], template: &ChatTemplate, tokenizer: &Tokenizer) -> Result<Document> {
    let full = template.render(messages, false)?;
    let mut doc = Document::default();
    let mut done = 0usize;
    let push = |text: &str, counted: bool, doc: &mut Document| -> Result<()> {
        let ids = tokenizer.encode(text, true)?;
        doc.counted.extend(std::iter::repeat_n(counted, ids.len()));
        doc.ids.extend(ids);
        Ok(())
    };
    for (i, _) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let before = template.render(&messages[..i], true)?;
        let through = template.render(&messages[..=i], false)?;
        if !(full.starts_with(&through) && through.starts_with(&before) && before.len() >= done) {
            let ids = tokenizer.encode(&full, true)?;
            return Ok(Document { counted: vec![true; ids.len()], ids });
        }
        push(&before[done..], false, &mut doc)?;
        push(&through[before.len()..], true, &mut doc)?;
        done = through.len();
    }
    push(&full[done..], false, &mut doc)?;
    Ok(doc)
}

/// One packed row: documents (or pieces of one) back to back, each its own attention span
/// with positions from 0, and the next-token targets (`IGNORE_TARGET` after a piece's last
/// token and where the loss does not count).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub doc_lengths: Vec<usize>,
    /// Context distillation: what the teacher reads instead of `ids`, and the map.
    pub teacher: Option<TeacherRow>,
    /// Offline distillation: the teacher's top-k next-token distribution at every position
    /// (`pupil teach`, [`super::teach`]).
    pub top_k: Option<TopK>,
}

impl Row {
    pub fn counted(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_TARGET).count()
    }

    /// The row as its teacher reads it: the teacher's input with the student's targets at the
    /// rows they map to (itself without a teacher input). Its loss is the teacher's on the
    /// same predictions.
    pub fn as_teacher_reads(&self) -> Row {
        let Some(t) = &self.teacher else { return Row { teacher: None, top_k: None, ..self.clone() } };
        let targets = t.targets_for(&self.targets);
        Row { ids: t.ids.clone(), targets, doc_lengths: t.doc_lengths.clone(), teacher: None, top_k: None }
    }
}

/// Pack documents into rows of at most `seq_len` tokens, in order: a document longer than a
/// row is split into row-sized pieces, shorter ones share rows. Rows without a counted target
/// are dropped.
pub fn pack(docs: &[Document], seq_len: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = Row::default();
    for d in docs {
        for (piece, counted) in d.ids.chunks(seq_len).zip(d.counted.chunks(seq_len)) {
            if piece.len() < 2 {
                continue;
            }
            if row.ids.len() + piece.len() > seq_len {
                rows.push(std::mem::take(&mut row));
            }
            row.ids.extend_from_slice(piece);
            row.targets.extend((1..piece.len()).map(|i| if counted[i] { piece[i] } else { IGNORE_TARGET }));
            row.targets.push(IGNORE_TARGET);
            row.doc_lengths.push(piece.len());
        }
    }
    if !row.ids.is_empty() {
        rows.push(row);
    }
    rows.retain(|r| r.counted() > 0);
    rows
}

/// Several rows as one batch (each row's documents stay apart; the teachers' inputs too, when
/// every row has one).
pub fn concat(rows: &[&Row]) -> Row {
    let teacher = rows.iter().all(|r| r.teacher.is_some()).then(|| {
        let mut t = TeacherRow::default();
        for r in rows.iter().filter_map(|r| r.teacher.as_ref()) {
            let at = t.ids.len() as u32;
            t.rows.extend(r.rows.iter().map(|&x| x + at));
            t.ids.extend_from_slice(&r.ids);
            t.doc_lengths.extend_from_slice(&r.doc_lengths);
        }
        t
    });
    // Top-k rows join when every row has them with one k.
    let k = rows.first().and_then(|r| r.top_k.as_ref()).map(|t| t.k);
    let top_k = rows.iter().all(|r| r.top_k.as_ref().map(|t| t.k) == k && k.is_some()).then(|| TopK {
        k: k.unwrap_or(0),
        ids: rows.iter().flat_map(|r| r.top_k.iter().flat_map(|t| t.ids.iter().copied())).collect(),
        logp: rows.iter().flat_map(|r| r.top_k.iter().flat_map(|t| t.logp.iter().copied())).collect(),
    });
    Row {
        ids: rows.iter().flat_map(|r| r.ids.iter().copied()).collect(),
        targets: rows.iter().flat_map(|r| r.targets.iter().copied()).collect(),
        doc_lengths: rows.iter().flat_map(|r| r.doc_lengths.iter().copied()).collect(),
        teacher,
        top_k,
    }
}

/// A document as the student reads it, and as the teacher reads it (context distillation).
#[derive(Clone, Debug, PartialEq)]
pub struct ContextPair {
    pub student: Document,
    pub teacher: Vec<u32>,
}

/// Context distillation's data (Snell et al. 2022, "Learning by distilling context"): every
/// line of JSONL `data` as the student reads it (as [`documents`] does) and as the teacher reads
/// it, with `instruction` as its system message (added before the conversation's own system
/// message, if any, or before a `{"text"}` line's text).
pub fn context_documents(
    data: &str,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    instruction: &str,
) -> Result<Vec<ContextPair>> {
    let mut pairs = Vec::new();
    for (no, line) in data.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: String| PupilError::Format(format!("training data line {}: {what}", no + 1));
        let l: Line = serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let (student, mut teacher) = match (l.text, l.messages) {
            (Some(t), None) => {
                let student =
                    documents(&serde_json::json!({ "text": t }).to_string(), DataFormat::Jsonl, tokenizer, template)?;
                let with = format!("{instruction}\n\n{t}");
                (student.into_iter().next().unwrap_or_default(), tokenizer.encode_for_model(&with, false)?)
            }
            (None, Some(m)) => {
                let template =
                    template.ok_or_else(|| bad("chat messages, but the model has no chat template".into()))?;
                let student = chat_doc(&m, template, tokenizer).map_err(|e| bad(e.to_string()))?;
                let mut with = m.clone();
                match with.first_mut() {
                    Some(first) if first.role == "system" => {
                        first.content = format!("{instruction}\n\n{}", first.content);
                    }
                    _ => with.insert(0, ChatMessage::system(instruction.to_string())),
                }
                let rendered = template.render(&with, false).map_err(|e| bad(e.to_string()))?;
                (student, tokenizer.encode(&rendered, true)?)
            }
            _ => return Err(bad("needs exactly one of \"text\" or \"messages\"".into())),
        };
        // Both end as the student's does (text documents with EOS).
        if student.ids.last() != teacher.last() {
            teacher.extend(student.ids.last().copied());
        }
        pairs.push(ContextPair { student, teacher });
    }
    if pairs.is_empty() {
        return Err(PupilError::Format("the training data holds no line".into()));
    }
    Ok(pairs)
}

/// Pack context pairs into rows of at most `seq_len` student tokens (a longer document is cut
/// to its first `seq_len`, the teacher's to the same end). Each student token maps to the
/// teacher's token of the same place in the two documents' common end (their longest common
/// suffix of tokens; the token before it maps to the one before the teacher's, as both predict
/// the suffix's first token): a counted token in front of that has no teacher row and stops
/// counting. Rows without a counted target are dropped.
pub fn pack_context(pairs: &[ContextPair], seq_len: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = Row { teacher: Some(TeacherRow::default()), ..Row::default() };
    for p in pairs {
        let (s, t) = (&p.student.ids, &p.teacher);
        let common = s.iter().rev().zip(t.iter().rev()).take_while(|(a, b)| a == b).count();
        let (s0, t0) = (s.len() - common, t.len() - common);
        let len = s.len().min(seq_len);
        if len < 2 || len <= s0 {
            continue;
        }
        let t_len = t0 + (len - s0);
        if !row.ids.is_empty() && row.ids.len() + len > seq_len {
            rows.push(std::mem::replace(&mut row, Row { teacher: Some(TeacherRow::default()), ..Row::default() }));
        }
        let tr = row.teacher.as_mut().expect("context rows have a teacher");
        let at = tr.ids.len() as u32;
        for j in 0..len {
            // Teacher row of student position j, when both predict the same next token.
            let mapped = (j + 1 >= s0 && j + t0 >= s0).then(|| (j + t0 - s0) as u32);
            let target = match mapped {
                Some(_) if j + 1 < len && p.student.counted[j + 1] => s[j + 1],
                _ => IGNORE_TARGET,
            };
            row.targets.push(target);
            tr.rows.push(at + mapped.unwrap_or(0));
        }
        row.ids.extend_from_slice(&s[..len]);
        row.doc_lengths.push(len);
        tr.ids.extend_from_slice(&t[..t_len]);
        tr.doc_lengths.push(t_len);
    }
    if !row.ids.is_empty() {
        rows.push(row);
    }
    rows.retain(|r| r.counted() > 0);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(ids: &[u32]) -> Document {
        Document { ids: ids.to_vec(), counted: vec![true; ids.len()] }
    }

    #[test]
    fn packing_splits_long_documents_and_shares_rows() {
        let rows = pack(&[doc(&[1, 2, 3, 4, 5]), doc(&[6, 7]), doc(&[8])], 3);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            Row {
                ids: vec![1, 2, 3],
                targets: vec![2, 3, IGNORE_TARGET],
                doc_lengths: vec![3],
                teacher: None,
                top_k: None
            }
        );
        // [4, 5] then [6, 7] does not fit beside it; [8] alone is dropped (no target).
        assert_eq!(rows[1].ids, vec![4, 5]);
        assert_eq!(
            rows[2],
            Row { ids: vec![6, 7], targets: vec![7, IGNORE_TARGET], doc_lengths: vec![2], teacher: None, top_k: None }
        );
        let masked = Document { ids: vec![1, 2, 3], counted: vec![true, false, true] };
        assert_eq!(pack(&[masked], 8)[0].targets, vec![IGNORE_TARGET, 3, IGNORE_TARGET]);
    }
}
