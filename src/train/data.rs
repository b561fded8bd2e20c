//! Training data: plain text, JSONL of `{"text": …}`, or chat JSONL of `{"messages": [...]}`
//! rendered through the model's chat template (the loss counts the assistant turns only),
//! tokenized and packed into fixed-length rows of documents.

use serde::Deserialize;

use crate::error::{PupilError, Result};
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
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub doc_lengths: Vec<usize>,
}

impl Row {
    pub fn counted(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_TARGET).count()
    }
}

/// Pack documents into rows of at most `seq_len` tokens, in order: a document longer than a
/// row is split into row-sized pieces, shorter ones share rows. Rows without a counted target
/// are dropped.
pub fn pack(docs: &[Document], seq_len: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = Row { ids: Vec::new(), targets: Vec::new(), doc_lengths: Vec::new() };
    for d in docs {
        for (piece, counted) in d.ids.chunks(seq_len).zip(d.counted.chunks(seq_len)) {
            if piece.len() < 2 {
                continue;
            }
            if row.ids.len() + piece.len() > seq_len {
                rows.push(std::mem::replace(
                    &mut row,
                    Row { ids: Vec::new(), targets: Vec::new(), doc_lengths: Vec::new() },
                ));
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

/// Several rows as one batch (each row's documents stay apart).
pub fn concat(rows: &[&Row]) -> Row {
    Row {
        ids: rows.iter().flat_map(|r| r.ids.iter().copied()).collect(),
        targets: rows.iter().flat_map(|r| r.targets.iter().copied()).collect(),
        doc_lengths: rows.iter().flat_map(|r| r.doc_lengths.iter().copied()).collect(),
    }
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
        assert_eq!(rows[0], Row { ids: vec![1, 2, 3], targets: vec![2, 3, IGNORE_TARGET], doc_lengths: vec![3] });
        // [4, 5] then [6, 7] does not fit beside it; [8] alone is dropped (no target).
        assert_eq!(rows[1].ids, vec![4, 5]);
        assert_eq!(rows[2], Row { ids: vec![6, 7], targets: vec![7, IGNORE_TARGET], doc_lengths: vec![2] });
        let masked = Document { ids: vec![1, 2, 3], counted: vec![true, false, true] };
        assert_eq!(pack(&[masked], 8)[0].targets, vec![IGNORE_TARGET, 3, IGNORE_TARGET]);
    }
}
