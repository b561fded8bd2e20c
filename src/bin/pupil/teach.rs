//! `pupil teach`: run a teacher once over training data and write its top-k next-token
//! distribution per packed row (`pupil::train::teach`'s file), for `pupil distill --data` to
//! learn from without the teacher in memory.

use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use pupil::gpu::GpuContext;
use pupil::train::{self, teach, DataFormat};

use super::{load, other, ModelArgs};

/// Write `out` (whole or not at all): the header, then a line per packed row of `data`.
pub async fn run(
    ctx: &GpuContext,
    model: &ModelArgs,
    data: &Path,
    out: &Path,
    (top_k, tau, seq): (usize, f32, usize),
) -> pupil::Result<()> {
    let text = std::fs::read_to_string(data).map_err(|e| other(format!("{}: {e}", data.display())))?;
    let l = load(ctx, &ModelArgs { f16: false, ..model.clone() })?;
    let docs = train::documents(&text, DataFormat::guess(&data.to_string_lossy()), &l.tokenizer, Some(&l.template))?;
    let rows = train::pack(&docs, seq.min(l.model.context));
    let header = teach::TeachHeader {
        pupil_teach: 1,
        teacher: l.name.clone(),
        vocab: l.model.config.vocab_size,
        top_k,
        tau,
        seq_len: seq.min(l.model.context),
    };
    eprintln!(
        "{}: {} documents, {} rows of ≤ {} tokens; the teacher's top {top_k} at τ {tau}",
        data.display(),
        docs.len(),
        rows.len(),
        header.seq_len
    );
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(|e| other(format!("{}: {e}", tmp.display())))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| other(format!("{}: {e}", tmp.display()));
    let header_line = serde_json::to_string(&header).map_err(|e| other(format!("teach header: {e}")))?;
    writeln!(w, "{header_line}").map_err(io)?;
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {elapsed_precise} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = web_time::Instant::now();
    let mut tokens = 0usize;
    for row in &rows {
        let top = teach::teach_row(ctx, &l.model, row, top_k, tau).await?;
        let line = teach::row_line(&train::Row { top_k: Some(top), ..row.clone() })?;
        writeln!(w, "{line}").map_err(io)?;
        tokens += row.ids.len();
        bar.inc(1);
    }
    w.flush().map_err(io)?;
    drop(w);
    bar.finish_and_clear();
    std::fs::rename(&tmp, out).map_err(|e| other(format!("{}: {e}", out.display())))?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} rows ({tokens} tokens) taught in {:.1} s: {} written ({bytes} bytes); distil with `pupil distill --data {}`",
        rows.len(),
        start.elapsed().as_secs_f64(),
        out.display(),
        out.display()
    );
    Ok(())
}
