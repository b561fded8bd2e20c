//! Perplexity of a token sequence: the model's negative log-likelihood of each token given
//! the ones before it, in windows of the model's context (each window a fresh cache, scored
//! from its second token on, as llama.cpp's `perplexity` does without overlap).

use web_time::Instant;

use crate::error::{PupilError, Result};
use crate::gpu::GpuContext;
use crate::model::{LlamaModel, Logits};

#[derive(Clone, Debug, serde::Serialize)]
pub struct PerplexityReport {
    /// Tokens scored (predicted from a prefix).
    pub scored: usize,
    /// Natural-log NLL of each scored token, in order.
    pub nll: Vec<f64>,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub tokens_per_s: f64,
}

/// `log p(target | row)` from one row of logits, in f64.
fn log_prob(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

/// Score `ids` (at least 2 tokens). `progress(done, total)` after each chunk.
pub async fn perplexity(
    ctx: &GpuContext,
    model: &LlamaModel,
    ids: &[u32],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityReport> {
    if ids.len() < 2 {
        return Err(PupilError::arg("perplexity", "needs at least 2 tokens"));
    }
    let start = Instant::now();
    let cache = model.new_cache(ctx, 1)?;
    let vocab = model.config.vocab_size;
    let mut nll = Vec::with_capacity(ids.len());
    for window in ids.chunks(model.context) {
        let mut pos = 0;
        for chunk in window.chunks(model.chunk) {
            model.forward(ctx, &cache, 0, pos, chunk, Logits::All)?;
            let logits = model.logits(chunk.len())?.read_f32(ctx).await?;
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                // Row i predicts the window's token pos + i + 1.
                if let Some(&target) = window.get(pos + i + 1) {
                    let lp = log_prob(row, target as usize);
                    if !lp.is_finite() {
                        return Err(PupilError::Gpu(format!("non-finite log-probability at token {}", pos + i + 1)));
                    }
                    nll.push(-lp);
                }
            }
            pos += chunk.len();
            progress(nll.len(), ids.len());
        }
    }
    let mean = nll.iter().sum::<f64>() / nll.len().max(1) as f64;
    Ok(PerplexityReport {
        scored: nll.len(),
        mean_nll: mean,
        perplexity: mean.exp(),
        nll,
        tokens_per_s: ids.len() as f64 / start.elapsed().as_secs_f64().max(1e-9),
    })
}
