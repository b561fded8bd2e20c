//! Resumable runs. A checkpoint is a safetensors file: every trainable tensor and its AdamW
//! moments (`Trainer::state_tensors`, F32), and in the metadata one JSON string
//! (`pupil_checkpoint`) with the rest of the run's state — the step reached, the trainer's
//! counters (AdamW's t, training passes, the dropout seed), the data-order RNG and the epoch's
//! remaining order, the step logs so far, the held-out figures measured before training — and
//! what it must be resumed with (the settings, the model's shape, a fingerprint of the rows).
//! Resuming restores all of it, so the resumed run takes the steps the uninterrupted one would
//! have taken, bit for bit.

use serde_json::{json, Value};

use crate::error::{PupilError, Result};
use crate::gpu::GpuContext;
use crate::model::Trainer;

use super::{safetensors_f32, FinetuneConfig, Row, StepLog};

const KEY: &str = "pupil_checkpoint";
const VERSION: u64 = 2;

/// The loop's state between steps.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LoopState {
    /// Steps done.
    pub step: usize,
    pub rng: u64,
    /// The current epoch's rows still to draw (drawn from the back).
    pub order: Vec<usize>,
    pub logs: Vec<StepLog>,
    pub eval_before: (Option<f64>, Option<f64>),
}

/// FNV-1a over the rows' ids, targets and document lengths: resuming on other data is refused.
pub(crate) fn fingerprint(rows: &[Row]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for r in rows {
        eat(r.ids.len() as u64);
        r.ids.iter().chain(&r.targets).for_each(|&v| eat(v as u64));
        r.doc_lengths.iter().for_each(|&v| eat(v as u64));
        if let Some(t) = &r.teacher {
            t.ids.iter().chain(&t.rows).for_each(|&v| eat(v as u64));
            t.doc_lengths.iter().for_each(|&v| eat(v as u64));
        }
    }
    format!("{h:016x}")
}

/// The settings a resumed run must share with the one that wrote the checkpoint.
fn settings(cfg: &FinetuneConfig, trainer: &Trainer<'_>, rows: &[Row], distill: bool) -> Value {
    let c = trainer.model_config();
    json!({
        "config": format!("{cfg:?}"),
        "distill": distill,
        "model": format!("{} {} layers, hidden {}, vocabulary {}", c.architecture, c.n_layers, c.hidden, c.vocab_size),
        "rows": rows.len(),
        "data": fingerprint(rows),
    })
}

/// The checkpoint of `trainer` and the loop at `state`.
pub(crate) async fn save(
    ctx: &GpuContext,
    trainer: &Trainer<'_>,
    cfg: &FinetuneConfig,
    rows: &[Row],
    distill: bool,
    state: &LoopState,
) -> Result<Vec<u8>> {
    let mut tensors = Vec::new();
    for (name, t) in trainer.state_tensors() {
        tensors.push((name, t.shape().to_vec(), t.read_f32(ctx).await?));
    }
    let (steps, calls, seed) = trainer.counters();
    let meta = json!({
        "version": VERSION,
        "settings": settings(cfg, trainer, rows, distill),
        "step": state.step,
        "trainer": [steps.to_string(), calls.to_string(), seed.to_string()],
        "rng": state.rng.to_string(),
        "order": state.order,
        "logs": state.logs.iter().map(log_to_json).collect::<Vec<_>>(),
        "eval_before": [exact(state.eval_before.0), exact(state.eval_before.1)],
    });
    safetensors_f32(json!({ KEY: meta.to_string() }), &tensors)
}

fn bad(detail: impl std::fmt::Display) -> PupilError {
    PupilError::Format(format!("checkpoint: {detail}"))
}

/// Restore `trainer` from `bytes` (a file [`save`] wrote for the same settings, model and
/// rows) and return the loop's state.
pub(crate) async fn restore(
    ctx: &GpuContext,
    trainer: &mut Trainer<'_>,
    bytes: &[u8],
    cfg: &FinetuneConfig,
    rows: &[Row],
    distill: bool,
) -> Result<LoopState> {
    let header = crate::model::safetensors::read_safetensors_header(bytes, "checkpoint").await?;
    let meta = metadata(bytes)?;
    if meta["version"].as_u64() != Some(VERSION) {
        return Err(bad(format!("version {} (this build reads {VERSION})", meta["version"])));
    }
    let want = settings(cfg, trainer, rows, distill);
    if meta["settings"] != want {
        return Err(PupilError::arg(
            "resume",
            format!("the checkpoint was written by another run: it has {}, this run is {}", meta["settings"], want),
        ));
    }
    let state = trainer.state_tensors();
    if header.len() != state.len() {
        return Err(bad(format!("{} tensors, the trainer has {}", header.len(), state.len())));
    }
    for (name, t) in &state {
        let st = header.iter().find(|s| &s.name == name).ok_or_else(|| bad(format!("no tensor {name}")))?;
        let shape: Vec<usize> = st.shape.iter().map(|&d| d as usize).collect();
        if shape != t.shape() || st.dtype != crate::model::safetensors::Dtype::F32 {
            return Err(bad(format!("{name} is {:?} {:?}, the trainer's {:?} F32", st.shape, st.dtype, t.shape())));
        }
        let raw = &bytes[st.start as usize..(st.start + st.len) as usize];
        let v: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        t.write_f32(ctx, &v)?;
    }
    let num = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| bad(format!("bad number {v}")));
    let tr = meta["trainer"].as_array().filter(|a| a.len() == 3).ok_or_else(|| bad("no trainer counters"))?;
    trainer.set_counters((num(&tr[0])?, num(&tr[1])?, num(&tr[2])?));
    let step = meta["step"].as_u64().ok_or_else(|| bad("no step"))? as usize;
    let order = meta["order"]
        .as_array()
        .ok_or_else(|| bad("no data order"))?
        .iter()
        .map(|v| v.as_u64().map(|x| x as usize).filter(|&x| x < rows.len()).ok_or_else(|| bad("bad data order")))
        .collect::<Result<Vec<_>>>()?;
    let logs = meta["logs"]
        .as_array()
        .ok_or_else(|| bad("no step logs"))?
        .iter()
        .map(log_from_json)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("bad step log"))?;
    if logs.len() != step || step > cfg.steps {
        return Err(bad(format!("{} step logs for step {step} of {}", logs.len(), cfg.steps)));
    }
    let eval = meta["eval_before"].as_array().filter(|a| a.len() == 2).ok_or_else(|| bad("no eval figures"))?;
    Ok(LoopState { step, rng: num(&meta["rng"])?, order, logs, eval_before: (float(&eval[0]), float(&eval[1])) })
}

/// An f64 as the shortest decimal that reads back to the same bits (JSON numbers do not
/// promise that through serde_json's default parser); NaN as "NaN", None as null.
fn exact(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |x| Value::String(format!("{x:?}")))
}

fn float(v: &Value) -> Option<f64> {
    v.as_str()?.parse().ok()
}

fn log_to_json(s: &StepLog) -> Value {
    json!([
        s.step,
        s.steps,
        exact(Some(s.loss)),
        exact(Some(s.grad_norm)),
        exact(Some(s.lr)),
        s.tokens,
        s.applied,
        exact(s.kl),
        exact(s.ce),
        exact(s.alpha),
        exact(s.tau)
    ])
}

fn log_from_json(v: &Value) -> Option<StepLog> {
    // (Logs of 10 entries are from before τ was logged.)
    let a = v.as_array().filter(|a| a.len() == 10 || a.len() == 11)?;
    let opt = |i: usize| if a[i].is_null() { Some(None) } else { float(&a[i]).map(Some) };
    let u = |i: usize| a[i].as_u64().map(|x| x as usize);
    Some(StepLog {
        step: u(0)?,
        steps: u(1)?,
        loss: float(&a[2])?,
        grad_norm: float(&a[3])?,
        lr: float(&a[4])?,
        tokens: u(5)?,
        applied: a[6].as_bool()?,
        kl: opt(7)?,
        ce: opt(8)?,
        alpha: opt(9)?,
        tau: if a.len() == 11 { opt(10)? } else { None },
    })
}

/// The checkpoint's JSON state (from the safetensors metadata).
fn metadata(bytes: &[u8]) -> Result<Value> {
    let n =
        u64::from_le_bytes(bytes.get(..8).ok_or_else(|| bad("truncated"))?.try_into().map_err(|_| bad("truncated"))?);
    let json = bytes.get(8..8 + n as usize).ok_or_else(|| bad("truncated header"))?;
    let header: Value = serde_json::from_slice(json).map_err(bad)?;
    let s = header["__metadata__"][KEY]
        .as_str()
        .ok_or_else(|| bad("not a Pupil checkpoint (no pupil_checkpoint metadata)"))?;
    serde_json::from_str(s).map_err(bad)
}

/// The step a checkpoint reached and the run's length (for messages), without restoring it.
pub fn checkpoint_step(bytes: &[u8]) -> Result<usize> {
    metadata(bytes)?["step"].as_u64().map(|s| s as usize).ok_or_else(|| bad("no step"))
}
