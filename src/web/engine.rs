//! The browser engine (`Engine` in JavaScript): one GPU context, at most one model with its
//! tokenizer, chat template and a session whose KV cache persists across `generate` calls.
//! Options and results cross as JSON strings; every rejection is a JS `Error` named after
//! `PupilError::kind()` (or `Busy`).
//!
//! Re-entrancy: JS callbacks (`onProgress`, `onToken`) run inside a load or a generation, and
//! between GPU readbacks the page's event loop runs, so any method may be called meanwhile.
//! State lives in an `Rc<Inner>` each call clones; no `RefCell` borrow is held across an
//! await or a callback, and a generation takes the session out of the cell while it runs.
//! Loading, generating, `resetSession` and `unloadModel` are exclusive (`Busy`); `memory`,
//! `info` and the tokenizer calls work at any time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::prelude::*;

use super::{js_error, named_error};
use crate::engine::{
    generate_text, generate_text_speculative, openai_logprobs, split_reasoning as split_reasoning_text, Flow,
    ReasoningSplit, Session, SplitDelta, TextOptions,
};
use crate::error::PupilError;
use crate::gpu::{ContextOptions, DType, GpuContext};
use crate::model::gguf::GgufHeader;
use crate::model::{prune, read_header, LlamaModel, ModelConfig, ModelOptions, Overflow};
use crate::sampling::{Sampler, SamplerConfig, TokenLogprobs};
use crate::tokenizer::{ChatMessage, ChatTemplate, TemplateValue, Tokenizer};

/// Parse an options object; `""` means `{}`.
fn options<T: for<'de> Deserialize<'de>>(op: &'static str, text: &str) -> Result<T, JsValue> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| js_error(&PupilError::arg(op, format!("options: {e}"))))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateOptions {
    allow_f16: Option<bool>,
    allow_subgroups: Option<bool>,
    max_storage_binding: Option<u64>,
    /// Lowers the buffer-size limit the loader checks (to exercise "does not fit" paths).
    max_buffer_size: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadOptions {
    context: Option<usize>,
    dtype: Option<String>,
    overflow: Option<String>,
    sink_tokens: Option<usize>,
    memory_budget: Option<u64>,
}

/// `pruneIntoStudent`'s options.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PruneOptions {
    keep: Option<Vec<usize>>,
    drop: Option<usize>,
    /// Calibration text for `drop` (block influence), `"text"` or `"jsonl"` per `format`.
    data: Option<String>,
    format: Option<String>,
    /// At most this many calibration tokens (4096).
    calibration_tokens: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenerateJsOptions {
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    repetition_last_n: Option<usize>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    parse_special: Option<bool>,
    /// Split a `<think>` thought from the answer (default: when the vocabulary has `</think>`).
    split_reasoning: Option<bool>,
    /// Speculative decoding: the loaded teacher (`loadTeacher`, or a pruned student's
    /// original) generates, the loaded model drafting `draftTokens` per verification pass.
    speculative: Option<SpeculativeJsOptions>,
    /// Report each token's log-probability (`Sampler::with_logprobs`), with its `topLogprobs`
    /// (0..=20) most likely alternatives.
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpeculativeJsOptions {
    /// Guesses per pass (default 4).
    draft_tokens: Option<usize>,
}

impl GenerateJsOptions {
    /// `pupil chat`'s defaults; greedy (temperature 0) without a penalty unless one is given,
    /// so it is the model's own arg-max.
    fn sampler(&self) -> SamplerConfig {
        let temperature = self.temperature.unwrap_or(0.7);
        let penalty_default = if temperature == 0.0 { 1.0 } else { 1.1 };
        SamplerConfig {
            temperature,
            top_k: self.top_k.unwrap_or(40),
            top_p: self.top_p.unwrap_or(0.95),
            min_p: self.min_p.unwrap_or(0.05),
            repetition_penalty: self.repetition_penalty.unwrap_or(penalty_default),
            repetition_last_n: self.repetition_last_n.unwrap_or(64),
            seed: self.seed.unwrap_or(42),
        }
    }
}

struct Loaded {
    tokenizer: Tokenizer,
    /// The model's own template; `None`: ChatML is used.
    template: Option<ChatTemplate>,
    /// `None` while a generation has it.
    session: Option<Session<'static>>,
    /// What the last `finetune` or `distill` of this model trained, as safetensors
    /// (`trainedWeights`).
    trained: Option<Vec<u8>>,
    /// The model the session runs (trainers borrow it; `pruneIntoStudent` makes it the teacher).
    model: Arc<LlamaModel>,
    /// The file it was loaded from, and its header (`pruneIntoStudent` reads it again).
    source: web_sys::Blob,
    header: GgufHeader,
    /// Which layers of its teacher a pruned student kept (its file's record).
    kept_layers: Option<Vec<usize>>,
}

/// The teacher of `distill`: a second model (`loadTeacher`), or the model a pruned student came
/// from (`pruneIntoStudent`).
struct TeacherModel {
    model: Arc<LlamaModel>,
    info: serde_json::Value,
    /// Its cache for speculative generation (made on first use; `None` while one runs).
    session: Option<Session<'static>>,
}

impl TeacherModel {
    fn new(model: Arc<LlamaModel>, info: serde_json::Value) -> Self {
        TeacherModel { model, info, session: None }
    }
}

struct Inner {
    ctx: GpuContext,
    loaded: RefCell<Option<Loaded>>,
    teacher: RefCell<Option<TeacherModel>>,
    busy: Cell<bool>,
}

/// Marks the engine busy until dropped (also when a call fails half-way).
struct BusyGuard(Rc<Inner>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

fn busy_error(what: &str) -> JsValue {
    named_error("Busy", &format!("{what}: the engine is busy loading a model or generating; wait for it to finish"))
}

fn no_model(op: &'static str) -> JsValue {
    js_error(&PupilError::arg(op, "no model is loaded (call loadModel first)"))
}

/// What `generate` ran: the loaded model alone, or the teacher with it drafting.
enum GenerationOutput {
    Plain(crate::engine::TextGeneration),
    Speculative(crate::engine::SpeculativeText),
}

/// `generate`'s result JSON: the text (split into content and reasoning when asked), the
/// tokens, the statistics, and for a speculative run how the draft fared (`speculative`).
fn generation_json(
    prompt: &str,
    split_reasoning: bool,
    (finish, tokens, text): (crate::engine::FinishReason, &[u32], &str),
    s: &crate::engine::GenerationStats,
    speculative: Option<&crate::engine::SpeculativeStats>,
) -> serde_json::Value {
    let (reasoning, content) =
        if split_reasoning { split_reasoning_text(prompt, text) } else { (String::new(), text.to_string()) };
    let mut out = json!({
        "finishReason": finish,
        "tokens": tokens,
        "text": text,
        "content": content,
        "reasoning": reasoning,
        "promptTokens": s.prompt_tokens,
        "reusedTokens": s.reused_tokens,
        "generatedTokens": s.generated_tokens,
        "timeToFirstTokenMs": s.time_to_first_token_s * 1e3,
        "prefillTokensPerS": s.prefill_tokens_per_s,
        "decodeTokensPerS": s.decode_tokens_per_s,
        "latencyP50Ms": s.latency_p50_ms,
        "latencyP99Ms": s.latency_p99_ms,
        "peakGpuBytes": s.peak_gpu_bytes,
        "dispatchesPerToken": s.dispatches_per_token,
        "submitsPerToken": s.submits_per_token,
    });
    if let Some(sp) = speculative {
        out["speculative"] = json!({
            "draftedTokens": sp.drafted_tokens,
            "acceptedTokens": sp.accepted_tokens,
            "acceptanceRate": sp.acceptance_rate,
            "targetPasses": sp.target_passes,
            "tokensPerTargetPass": sp.tokens_per_target_pass,
        });
    }
    out
}

impl Inner {
    /// The teacher's generation session (made on first use), taken until given back.
    fn teacher_session(&self, op: &'static str) -> Result<Session<'static>, JsValue> {
        let mut teacher = self.teacher.borrow_mut();
        let t = teacher.as_mut().ok_or_else(|| {
            js_error(&PupilError::arg(op, "speculative: no teacher is loaded to generate (call loadTeacher first)"))
        })?;
        match t.session.take() {
            Some(s) => Ok(s),
            None => Session::shared(&self.ctx, t.model.clone()).map_err(|e| js_error(&e)),
        }
    }

    fn begin(self: &Rc<Self>, what: &str) -> Result<BusyGuard, JsValue> {
        if self.busy.replace(true) {
            return Err(busy_error(what));
        }
        Ok(BusyGuard(self.clone()))
    }

    /// `DeviceLost` for good once the device is gone (the context remembers it).
    fn check_device(&self) -> Result<(), JsValue> {
        self.ctx.check_device().map_err(|e| js_error(&e))
    }

    /// Run `f` on the loaded model's tokenizer and template (never borrowed across a callback).
    fn with_text<T>(&self, op: &'static str, f: impl FnOnce(&Loaded) -> crate::Result<T>) -> Result<T, JsValue> {
        let loaded = self.loaded.try_borrow().map_err(|_| busy_error(op))?;
        f(loaded.as_ref().ok_or_else(|| no_model(op))?).map_err(|e| js_error(&e))
    }
}

#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl Engine {
    /// Open the GPU. `optionsJson`: `{allowF16?, allowSubgroups?, maxStorageBinding?, maxBufferSize?}`.
    pub async fn create(#[wasm_bindgen(js_name = optionsJson)] options_json: String) -> Result<Engine, JsValue> {
        let o: CreateOptions = options("Engine.create", &options_json)?;
        let d = ContextOptions::default();
        let mut ctx = GpuContext::new(ContextOptions {
            allow_f16: o.allow_f16.unwrap_or(d.allow_f16),
            allow_subgroups: o.allow_subgroups.unwrap_or(d.allow_subgroups),
            max_storage_binding: o.max_storage_binding,
            ..d
        })
        .await
        .map_err(|e| js_error(&e))?;
        if let Some(cap) = o.max_buffer_size {
            ctx.caps.max_buffer_size = ctx.caps.max_buffer_size.min(cap);
        }
        let inner = Inner { ctx, loaded: RefCell::new(None), teacher: RefCell::new(None), busy: Cell::new(false) };
        Ok(Engine { inner: Rc::new(inner) })
    }

    /// Adapter, backend, the paths in use and the limits, as JSON.
    pub fn info(&self) -> String {
        let ctx = &self.inner.ctx;
        let c = &ctx.caps;
        json!({
            "adapter": ctx.adapter_info.name,
            "backend": format!("{:?}", ctx.adapter_info.backend),
            "f16": c.f16,
            "subgroups": c.subgroups,
            "subgroupMinSize": c.subgroup_min_size,
            "subgroupMaxSize": c.subgroup_max_size,
            "limits": {
                "maxBufferSize": c.max_buffer_size,
                "maxStorageBinding": c.max_storage_binding,
                "maxWorkgroupStorage": c.max_workgroup_storage,
                "maxInvocationsPerWorkgroup": c.max_invocations_per_workgroup,
                "maxStorageBuffersPerStage": c.max_storage_buffers_per_stage,
            },
            "describe": ctx.describe(),
        })
        .to_string()
    }

    /// Load a GGUF model from a `Blob`, reading it range by range; replaces the loaded model
    /// (freed first). `onProgress(done, total, phase)`: phase `"header"`, then `"weights"`
    /// (bytes uploaded, ending at `total`). Resolves to the model's description as JSON.
    #[wasm_bindgen(js_name = loadModel, unchecked_return_type = "Promise<string>")]
    pub fn load_model(
        &self,
        source: web_sys::Blob,
        #[wasm_bindgen(js_name = optionsJson)] options_json: String,
        #[wasm_bindgen(js_name = onProgress, unchecked_param_type = "(done: number, total: number, phase: string) => void")]
        on_progress: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            inner.check_device()?;
            let _busy = inner.begin("loadModel")?;
            let o: LoadOptions = options("Engine.loadModel", &options_json)?;
            // Free the old model first so its GPU memory is back before the new one is planned.
            inner.loaded.replace(None);
            let opts = model_options(&o).map_err(|e| js_error(&e))?;
            let mut callback_error = None;
            let mut progress = |done: u64, total: u64, phase: &str| {
                let r = on_progress.call3(&JsValue::NULL, &(done as f64).into(), &(total as f64).into(), &phase.into());
                if let (Err(e), None) = (r, &callback_error) {
                    callback_error = Some(e);
                }
            };
            let result = load_from(&inner.ctx, source, &opts, &mut progress).await;
            if let Some(e) = callback_error {
                return Err(e);
            }
            let (loaded, info) = result.map_err(|e| js_error(&e))?;
            inner.loaded.replace(Some(loaded));
            Ok(JsValue::from_str(&info.to_string()))
        })
    }

    /// Render `[{role, content}]` with the model's chat template (ChatML if it has none).
    /// `enableThinking`, when given, is the template's `enable_thinking` variable (Qwen3:
    /// `false` pre-closes the think block); left out, the template sees it undefined.
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(
        &self,
        #[wasm_bindgen(js_name = messagesJson)] messages_json: String,
        #[wasm_bindgen(js_name = addGenerationPrompt)] add_generation_prompt: bool,
        #[wasm_bindgen(js_name = enableThinking)] enable_thinking: Option<bool>,
    ) -> Result<String, JsValue> {
        const OP: &str = "Engine.applyChatTemplate";
        let messages: Vec<ChatMessage> = serde_json::from_str(&messages_json)
            .map_err(|e| js_error(&PupilError::arg(OP, format!("messages: {e}"))))?;
        let extra: Vec<(&str, TemplateValue)> =
            enable_thinking.map(|b| ("enable_thinking", TemplateValue::from(b))).into_iter().collect();
        self.inner.with_text(OP, |l| match &l.template {
            Some(t) => t.render_with(&messages, add_generation_prompt, &extra),
            None => ChatTemplate::chatml().render_with(&messages, add_generation_prompt, &extra),
        })
    }

    /// Token ids of `text` (no BOS/EOS added); `parseSpecial`: special-token text becomes ids.
    pub fn encode(
        &self,
        text: String,
        #[wasm_bindgen(js_name = parseSpecial)] parse_special: bool,
    ) -> Result<Vec<u32>, JsValue> {
        self.inner.with_text("Engine.encode", |l| l.tokenizer.encode(&text, parse_special))
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        self.inner.with_text("Engine.decode", |l| l.tokenizer.decode(&ids, false))
    }

    /// Generate after `prompt` (BOS added if the model asks for it and the text lacks it),
    /// reusing the cached prefix from the previous call. `onToken(textDelta, tokenId,
    /// reasoningDelta)` once per token: for a reasoning model the `<think>` thought goes to
    /// `reasoningDelta` and the answer to `textDelta` (`engine::ReasoningSplit`); returning
    /// `false` stops (finish reason `"abort"`). Resolves to JSON: `text` (raw), `content` and
    /// `reasoning` (split), finish reason, token ids and statistics.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn generate(
        &self,
        prompt: String,
        #[wasm_bindgen(js_name = optionsJson)] options_json: String,
        #[wasm_bindgen(
            js_name = onToken,
            unchecked_param_type = "(textDelta: string, tokenId: number, reasoningDelta: string, logprobsJson?: string) => boolean | void"
        )]
        on_token: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            const OP: &str = "Engine.generate";
            inner.check_device()?;
            let _busy = inner.begin("generate")?;
            let o: GenerateJsOptions = options(OP, &options_json)?;
            let mut sampler = Sampler::new(o.sampler()).map_err(|e| js_error(&e))?;
            let want_logprobs = o.logprobs == Some(true) || o.top_logprobs.is_some();
            if want_logprobs {
                if o.speculative.is_some() {
                    let e = PupilError::arg(OP, "logprobs are not reported by speculative decoding");
                    return Err(js_error(&e));
                }
                sampler = sampler.with_logprobs(o.top_logprobs.unwrap_or(0)).map_err(|e| js_error(&e))?;
            }
            let (tokenizer, mut session) = {
                let mut loaded = inner.loaded.borrow_mut();
                let l = loaded.as_mut().ok_or_else(|| no_model(OP))?;
                (l.tokenizer.clone(), l.session.take().ok_or_else(|| busy_error(OP))?)
            };
            // Speculative: the teacher's session (the loaded model drafts for it).
            let mut teacher_session = match &o.speculative {
                None => None,
                Some(_) => {
                    let taken = inner.teacher_session(OP);
                    match taken {
                        Ok(t) => Some(t),
                        Err(e) => {
                            if let Some(l) = inner.loaded.borrow_mut().as_mut() {
                                l.session = Some(session);
                            }
                            return Err(e);
                        }
                    }
                }
            };
            let text_opts = TextOptions {
                max_tokens: o.max_tokens.unwrap_or(256),
                stop_tokens: tokenizer.stop_ids().to_vec(),
                stop_strings: o.stop.clone().unwrap_or_default(),
                skip_special: true,
            };
            let mut callback_error = None;
            let split_reasoning = o.split_reasoning.unwrap_or(tokenizer.token_id("</think>").is_some());
            let mut split = ReasoningSplit::for_prompt(&prompt);
            let result = match tokenizer.encode_for_model(&prompt, o.parse_special.unwrap_or(true)) {
                Ok(ids) => {
                    let mut on_text = |delta: &str, id: u32, lp: Option<&TokenLogprobs>| {
                        let d = if split_reasoning {
                            split.push(delta)
                        } else {
                            SplitDelta { content: delta.to_string(), reasoning: String::new() }
                        };
                        let (content, reasoning) = (JsValue::from_str(&d.content), JsValue::from_str(&d.reasoning));
                        let args = js_sys::Array::of4(
                            &content,
                            &id.into(),
                            &reasoning,
                            &lp.map_or(JsValue::UNDEFINED, |lp| openai_logprobs(&tokenizer, lp).to_string().into()),
                        );
                        match on_token.apply(&JsValue::NULL, &args) {
                            Ok(v) if v.as_bool() == Some(false) => Flow::Stop,
                            Ok(_) => Flow::Continue,
                            Err(e) => {
                                callback_error = Some(e);
                                Flow::Stop
                            }
                        }
                    };
                    let ctx = &inner.ctx;
                    match (&o.speculative, &mut teacher_session) {
                        (Some(spec), Some(target)) => {
                            let k = spec.draft_tokens.unwrap_or(4);
                            let cfg = o.sampler();
                            generate_text_speculative(
                                ctx,
                                target,
                                &mut session,
                                &tokenizer,
                                &ids,
                                &text_opts,
                                k,
                                &cfg,
                                &mut on_text,
                            )
                            .await
                            .map(GenerationOutput::Speculative)
                        }
                        _ => generate_text(ctx, &mut session, &tokenizer, &ids, &text_opts, &mut sampler, &mut on_text)
                            .await
                            .map(GenerationOutput::Plain),
                    }
                }
                Err(e) => Err(e),
            };
            // The sessions go back whatever happened (unloadModel was refused meanwhile).
            if let Some(l) = inner.loaded.borrow_mut().as_mut() {
                l.session = Some(session);
            }
            if let (Some(t), Some(s)) = (inner.teacher.borrow_mut().as_mut(), teacher_session) {
                t.session = Some(s);
            }
            if let Some(e) = callback_error {
                return Err(e);
            }
            let json = match result.map_err(|e| js_error(&e))? {
                GenerationOutput::Plain(o) => {
                    let mut json =
                        generation_json(&prompt, split_reasoning, (o.finish, &o.tokens, &o.text), &o.stats, None);
                    if want_logprobs {
                        json["logprobs"] = o.logprobs.iter().map(|lp| openai_logprobs(&tokenizer, lp)).collect();
                    }
                    json
                }
                GenerationOutput::Speculative(o) => {
                    let s = &o.stats;
                    generation_json(&prompt, split_reasoning, (o.finish, &o.tokens, &o.text), &s.generation, Some(s))
                }
            };
            Ok(JsValue::from_str(&json.to_string()))
        })
    }

    /// Fine-tune fresh LoRA adapters of the loaded model (f32 path) on `data` (text, or JSONL
    /// with `format: "jsonl"`): `optionsJson` is `train::FinetuneOptions` (rank, alpha,
    /// targets, steps, seqLen, batchRows, lr, warmup, evalFraction, seed, …) and `apply`
    /// (merge what was trained into the loaded model afterwards, so generation uses it).
    /// `onStep(stepJson)` after every optimizer step (`{step, steps, loss, gradNorm, lr,
    /// tokens, applied}`). Resolves to the report as JSON (held-out loss before and after,
    /// every step; with `apply`, `merged`). What it trained is kept for `trainedWeights`.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn finetune(
        &self,
        data: String,
        #[wasm_bindgen(js_name = optionsJson)] options_json: String,
        #[wasm_bindgen(js_name = onStep, unchecked_param_type = "(stepJson: string) => void")]
        on_step: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            const OP: &str = "Engine.finetune";
            inner.check_device()?;
            let _busy = inner.begin("finetune")?;
            let (options_json, apply) = take_apply(OP, &options_json).map_err(|e| js_error(&e))?;
            let o: crate::train::FinetuneOptions = options(OP, &options_json)?;
            let (cfg, format) = o.config().map_err(|e| js_error(&e))?;
            let l = inner.snapshot(OP)?;
            let mut callback_error = None;
            let result = {
                let mut progress = |s: &crate::train::StepLog| {
                    if let Err(e) = on_step.call1(&JsValue::NULL, &JsValue::from_str(&s.to_json().to_string())) {
                        callback_error.get_or_insert(e);
                    }
                };
                let run = async {
                    let docs = crate::train::documents(&data, format, &l.tokenizer, l.template.as_ref())?;
                    let rows = crate::train::pack(&docs, cfg.seq_len);
                    let mut trainer = crate::train::trainer_for(&inner.ctx, &l.model, &cfg)?;
                    let report = crate::train::finetune(&inner.ctx, &mut trainer, &rows, &cfg, &mut progress).await?;
                    let outputs = trained_outputs(&inner.ctx, &trainer, &l, apply).await?;
                    Ok::<_, PupilError>((report, outputs))
                };
                run.await
            };
            finish_training(&inner, &l, result, callback_error).await
        })
    }

    /// Load a teacher for `distill`: a second GGUF model from a `Blob` (f32, as training runs;
    /// the same vocabulary as the student), replacing any teacher. `onProgress` as `loadModel`'s.
    /// Resolves to its description as JSON.
    #[wasm_bindgen(js_name = loadTeacher, unchecked_return_type = "Promise<string>")]
    pub fn load_teacher(
        &self,
        source: web_sys::Blob,
        #[wasm_bindgen(js_name = optionsJson)] options_json: String,
        #[wasm_bindgen(js_name = onProgress, unchecked_param_type = "(done: number, total: number, phase: string) => void")]
        on_progress: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            const OP: &str = "Engine.loadTeacher";
            inner.check_device()?;
            let _busy = inner.begin("loadTeacher")?;
            let o: LoadOptions = options(OP, &options_json)?;
            if o.dtype.as_deref().is_some_and(|d| d != "f32") {
                return Err(js_error(&PupilError::arg(OP, "a teacher runs on the f32 path (training's)")));
            }
            inner.teacher.replace(None);
            let opts = ModelOptions { dtype: Some(DType::F32), ..model_options(&o).map_err(|e| js_error(&e))? };
            let mut callback_error = None;
            let mut progress = |done: u64, total: u64, phase: &str| {
                let r = on_progress.call3(&JsValue::NULL, &(done as f64).into(), &(total as f64).into(), &phase.into());
                if let (Err(e), None) = (r, &callback_error) {
                    callback_error = Some(e);
                }
            };
            let result = load_from(&inner.ctx, source, &opts, &mut progress).await;
            if let Some(e) = callback_error {
                return Err(e);
            }
            // The teacher needs no session, tokenizer or template: the student's are used.
            let (loaded, info) = result.map_err(|e| js_error(&e))?;
            inner.teacher.replace(Some(TeacherModel::new(loaded.model.clone(), info.clone())));
            Ok(JsValue::from_str(&info.to_string()))
        })
    }

    /// The teacher's description as JSON (`loadTeacher`, `pruneIntoStudent`), or `undefined`.
    #[wasm_bindgen(js_name = teacherInfo)]
    pub fn teacher_info(&self) -> Option<String> {
        self.inner.teacher.try_borrow().ok()?.as_ref().map(|t| t.info.to_string())
    }

    /// Drop the teacher; its GPU memory is freed (unless it is also the loaded model).
    #[wasm_bindgen(js_name = unloadTeacher)]
    pub fn unload_teacher(&self) -> Result<(), JsValue> {
        let _busy = self.inner.begin("Engine.unloadTeacher")?;
        self.inner.teacher.replace(None);
        Ok(())
    }

    /// Make a depth-pruned student of the loaded model (Minitron-style): the loaded model
    /// becomes the teacher, and its copy without some layers (`model::prune::keep_layers`)
    /// becomes the loaded model, to be healed by `distill`. `optionsJson`: `{keep: [layers]}`,
    /// or `{drop: N, data, format?, calibrationTokens?}` to drop the N layers of least block
    /// influence on `data` (the first and last layer stay). Applied again to a pruned student
    /// it prunes further (progressive pruning: distil between the steps; the record of kept
    /// layers composes, the teacher stays the original). Resolves to JSON `{kept, dropped,
    /// influence, model, teacher}`.
    #[wasm_bindgen(js_name = pruneIntoStudent, unchecked_return_type = "Promise<string>")]
    pub fn prune_into_student(&self, #[wasm_bindgen(js_name = optionsJson)] options_json: String) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            const OP: &str = "Engine.pruneIntoStudent";
            inner.check_device()?;
            let _busy = inner.begin("pruneIntoStudent")?;
            let o: PruneOptions = options(OP, &options_json)?;
            let Snapshot { model, source, header, tokenizer, template, kept_layers } = inner.snapshot(OP)?;
            let n = model.config.n_layers;
            let (keep, influence) = match (&o.keep, o.drop, &o.data) {
                (Some(keep), None, None) => (keep.clone(), None),
                (None, Some(drop), Some(data)) => {
                    let format = crate::train::DataFormat::parse(OP, o.format.as_deref()).map_err(|e| js_error(&e))?;
                    let docs = crate::train::documents(data, format, &tokenizer, template.as_ref())
                        .map_err(|e| js_error(&e))?;
                    let take = o.calibration_tokens.unwrap_or(4096);
                    let ids: Vec<u32> = docs.iter().flat_map(|d| d.ids.iter().copied()).take(take).collect();
                    let influence =
                        prune::calibrated_influence(&inner.ctx, &model, &ids).await.map_err(|e| js_error(&e))?;
                    (prune::least_influential_dropped(&influence, drop).map_err(|e| js_error(&e))?, Some(influence))
                }
                _ => return Err(js_error(&PupilError::arg(OP, "give {keep: [layers]}, or {drop: N, data}"))),
            };
            let bytes = prune::keep_layers(&header, &source, &keep).await.map_err(|e| js_error(&e))?;
            let blob = bytes_blob(&bytes)?;
            drop(bytes);
            let opts =
                ModelOptions { dtype: Some(model.dtype), context: Some(model.context), ..ModelOptions::default() };
            // The teacher: the one the loaded model was distilled from if it is already a pruned
            // student (progressive pruning keeps the original), else the loaded model itself.
            let teacher_info = {
                let mut teacher = inner.teacher.borrow_mut();
                if teacher.is_none() || kept_layers.is_none() {
                    let name = header.get("general.name").and_then(|v| v.as_str()).unwrap_or("").to_string();
                    let info = model_info(&model, &tokenizer, &name, template.is_some());
                    *teacher = Some(TeacherModel::new(model.clone(), info));
                }
                teacher.as_ref().map(|t| t.info.clone())
            };
            inner.loaded.replace(None);
            drop(model);
            let (loaded, info) =
                load_from(&inner.ctx, blob, &opts, &mut |_, _, _| {}).await.map_err(|e| js_error(&e))?;
            let kept = loaded.kept_layers.clone().unwrap_or_else(|| keep.clone());
            inner.loaded.replace(Some(loaded));
            let dropped: Vec<usize> = (0..n).filter(|l| !keep.contains(l)).collect();
            Ok(JsValue::from_str(
                &json!({
                    "kept": kept, "dropped": dropped, "influence": influence, "model": info, "teacher": teacher_info,
                })
                .to_string(),
            ))
        })
    }

    /// Distil the teacher into fresh LoRA adapters of the loaded model (f32 path) on `data`.
    /// The teacher: the one `loadTeacher` / `pruneIntoStudent` gave; without one, the loaded
    /// model itself reading `instruction` before each JSONL line (context distillation); none
    /// when `data` is a `pupil teach` file (its top-k). `optionsJson`: `finetune`'s options and
    /// `tau` (2), `kdAlpha` (0.5), `divergence` (`forward` | `reverse` | `jsd` | `jsd:β`),
    /// `tauEnd`, `kdAlphaEnd`, `instruction`, `alignHidden` (weight), `alignPairs`.
    /// `onStep(stepJson)` after every step (with its `kl`). Resolves to the report as JSON
    /// (held-out loss and KL before and after, the teacher's held-out loss). What it trained is
    /// kept for `trainedWeights`.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn distill(
        &self,
        data: String,
        #[wasm_bindgen(js_name = optionsJson)] options_json: String,
        #[wasm_bindgen(js_name = onStep, unchecked_param_type = "(stepJson: string) => void")]
        on_step: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            const OP: &str = "Engine.distill";
            inner.check_device()?;
            let _busy = inner.begin("distill")?;
            let (options_json, apply) = take_apply(OP, &options_json).map_err(|e| js_error(&e))?;
            let (ft, kd) = crate::train::distill::split_options(OP, &options_json).map_err(|e| js_error(&e))?;
            let (cfg, format) = ft.config().map_err(|e| js_error(&e))?;
            let l = inner.snapshot(OP)?;
            let teacher = inner.teacher.borrow().as_ref().map(|t| t.model.clone());
            let mut callback_error = None;
            let result = {
                let mut progress = |s: &crate::train::StepLog| {
                    if let Err(e) = on_step.call1(&JsValue::NULL, &JsValue::from_str(&s.to_json().to_string())) {
                        callback_error.get_or_insert(e);
                    }
                };
                let input = crate::train::distill::DistillInput {
                    student: &l.model,
                    student_kept: l.kept_layers.as_deref(),
                    teacher: teacher.as_deref(),
                    tokenizer: &l.tokenizer,
                    template: l.template.as_ref(),
                    data: &data,
                    format,
                };
                let run = async {
                    let (report, trainer) =
                        crate::train::distill::distill_data(&inner.ctx, &input, &cfg, &kd, &mut progress).await?;
                    let outputs = trained_outputs(&inner.ctx, &trainer, &l, apply).await?;
                    Ok::<_, PupilError>((report, outputs))
                };
                run.await
            };
            drop(teacher);
            finish_training(&inner, &l, result, callback_error).await
        })
    }

    /// What the last successful `finetune` of the loaded model trained, as a safetensors file
    /// (`train::trained_safetensors`: LoRA A/B per layer and projection, fully trained layers
    /// under GGUF names, gates; F32, the file's row order); `undefined` before any.
    #[wasm_bindgen(js_name = trainedWeights)]
    pub fn trained_weights(&self) -> Option<Vec<u8>> {
        self.inner.loaded.borrow().as_ref().and_then(|l| l.trained.clone())
    }

    /// The file the loaded model runs from, as a `Blob` (CPU memory, not the GPU's): the one
    /// given to `loadModel`, or after `pruneIntoStudent` or an `apply: true` merge the student's
    /// GGUF the engine wrote — what a page keeps to load the same model again after the device
    /// is lost. `undefined` without a model.
    #[wasm_bindgen(js_name = modelFile)]
    pub fn model_file(&self) -> Option<web_sys::Blob> {
        self.inner.loaded.borrow().as_ref().map(|l| l.source.clone())
    }

    /// Forget the conversation (the next generate computes its whole prompt).
    #[wasm_bindgen(js_name = resetSession)]
    pub fn reset_session(&self) -> Result<(), JsValue> {
        const OP: &str = "Engine.resetSession";
        self.inner.check_device()?;
        let _busy = self.inner.begin(OP)?;
        let mut loaded = self.inner.loaded.borrow_mut();
        let session = loaded.as_mut().and_then(|l| l.session.as_mut()).ok_or_else(|| no_model(OP))?;
        session.rollback(0).map_err(|e| js_error(&e))
    }

    /// GPU memory Pupil holds now, as JSON `{allocatedBytes, peakBytes, liveBuffers}`.
    pub fn memory(&self) -> String {
        let m = &self.inner.ctx.memory;
        json!({ "allocatedBytes": m.current_bytes(), "peakBytes": m.peak_bytes(), "liveBuffers": m.live_buffers() })
            .to_string()
    }

    /// Drop the model and its session; their GPU memory is freed.
    #[wasm_bindgen(js_name = unloadModel)]
    pub fn unload_model(&self) -> Result<(), JsValue> {
        let _busy = self.inner.begin("Engine.unloadModel")?;
        self.inner.loaded.replace(None);
        Ok(())
    }

    /// Destroy the GPU device, as a driver reset would (tests of recovery): later GPU calls
    /// reject with `DeviceLost`; create a new Engine to go on.
    #[wasm_bindgen(js_name = loseDeviceForTest)]
    pub fn lose_device_for_test(&self) {
        self.inner.ctx.destroy_device();
    }
}

/// Read `source`'s header, tokenizer and template and load its model (`opts.dtype` unset: f16
/// where the adapter has it and the model's activations fit it): the loaded model and its
/// description.
async fn load_from(
    ctx: &GpuContext,
    source: web_sys::Blob,
    opts: &ModelOptions,
    progress: &mut dyn FnMut(u64, u64, &str),
) -> crate::Result<(Loaded, serde_json::Value)> {
    let header = read_header(&source).await?;
    progress(header.data_offset, header.data_offset, "header");
    let tokenizer = Tokenizer::from_gguf(&header)?;
    let template = ChatTemplate::from_gguf(&header).ok();
    let mut opts = opts.clone();
    if opts.dtype.is_none() {
        let cfg = ModelConfig::from_gguf(&header)?;
        let f16 = ctx.caps.f16 && !cfg.needs_f32_activations();
        opts.dtype = Some(if f16 { DType::F16 } else { DType::F32 });
    }
    let model =
        LlamaModel::load_with_header(ctx, &header, &source, &opts, &mut |d, t| progress(d, t, "weights")).await?;
    let name = header.get("general.name").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let info = model_info(&model, &tokenizer, &name, template.is_some());
    let kept_layers = prune::kept_layers(&header, model.config.n_layers);
    // Arc for the native API's sake; in the browser everything lives on one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    let model = Arc::new(model);
    let session = Session::shared(ctx, model.clone())?;
    let loaded =
        Loaded { tokenizer, template, session: Some(session), trained: None, model, source, header, kept_layers };
    Ok((loaded, info))
}

/// `bytes` as a JS `Blob` (out of the wasm heap).
fn bytes_blob(bytes: &[u8]) -> Result<web_sys::Blob, JsValue> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    web_sys::Blob::new_with_u8_array_sequence(&parts)
}

/// The loaded model's parts a training run reads (cloned: no borrow is held across an await).
struct Snapshot {
    model: Arc<LlamaModel>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    kept_layers: Option<Vec<usize>>,
    source: web_sys::Blob,
    header: GgufHeader,
}

impl Inner {
    fn snapshot(&self, op: &'static str) -> Result<Snapshot, JsValue> {
        let loaded = self.loaded.try_borrow().map_err(|_| busy_error(op))?;
        let l = loaded.as_ref().ok_or_else(|| no_model(op))?;
        Ok(Snapshot {
            model: l.model.clone(),
            tokenizer: l.tokenizer.clone(),
            template: l.template.clone(),
            kept_layers: l.kept_layers.clone(),
            source: l.source.clone(),
            header: l.header.clone(),
        })
    }
}

/// A training call's `apply` option (merge what was trained into the loaded model), taken out
/// of its options object so the rest parses strictly.
fn take_apply(op: &'static str, json: &str) -> crate::Result<(String, bool)> {
    let text = if json.trim().is_empty() { "{}" } else { json };
    let mut all: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| PupilError::arg(op, format!("options: {e}")))?;
    let apply = match all.remove("apply") {
        None => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(other) => return Err(PupilError::arg(op, format!("options: apply is true or false, not {other}"))),
    };
    Ok((serde_json::Value::Object(all).to_string(), apply))
}

/// What a run trained: the trained-weights file (safetensors), and with `apply` the loaded
/// model's file with it merged in (each matrix in its own type) and the merge's report.
type TrainedOutputs = (Vec<u8>, Option<(Vec<u8>, crate::train::MergeReport)>);

/// Gathers a run's [`TrainedOutputs`].
async fn trained_outputs(
    ctx: &GpuContext,
    trainer: &crate::model::Trainer<'_>,
    l: &Snapshot,
    apply: bool,
) -> crate::Result<TrainedOutputs> {
    let weights = crate::train::trained_safetensors(ctx, trainer, &l.model.config.architecture).await?;
    let merged = match apply {
        true => Some(crate::train::merged_gguf(ctx, trainer, &l.header, &l.source, None, &mut |_, _| {}).await?),
        false => None,
    };
    Ok((weights, merged))
}

/// The end of `finetune` / `distill`: keep what was trained for `trainedWeights`; with a merged
/// file, load it as the model (the chat then runs the trained model; a fresh conversation);
/// resolve to the report.
async fn finish_training(
    inner: &Rc<Inner>,
    l: &Snapshot,
    result: crate::Result<(crate::train::FinetuneReport, TrainedOutputs)>,
    callback_error: Option<JsValue>,
) -> Result<JsValue, JsValue> {
    if let Some(e) = callback_error {
        return Err(e);
    }
    let (report, (weights, merged)) = result.map_err(|e| js_error(&e))?;
    let mut json = report.to_json();
    if let Some((bytes, m)) = merged {
        let blob = bytes_blob(&bytes)?;
        drop(bytes);
        let opts =
            ModelOptions { dtype: Some(l.model.dtype), context: Some(l.model.context), ..ModelOptions::default() };
        inner.loaded.replace(None);
        let (loaded, _) = load_from(&inner.ctx, blob, &opts, &mut |_, _, _| {}).await.map_err(|e| js_error(&e))?;
        inner.loaded.replace(Some(loaded));
        json["merged"] = json!({ "tensors": m.tensors.len(), "update": m.update, "requantisation": m.requantisation });
    }
    if let Some(loaded) = inner.loaded.borrow_mut().as_mut() {
        loaded.trained = Some(weights);
    }
    Ok(JsValue::from_str(&json.to_string()))
}

fn model_options(o: &LoadOptions) -> crate::Result<ModelOptions> {
    const OP: &str = "Engine.loadModel";
    // None: chosen once the model's header is read (f16 when the adapter and the model allow).
    let dtype = match o.dtype.as_deref() {
        None => None,
        Some("f32") => Some(DType::F32),
        Some("f16") => Some(DType::F16),
        Some(other) => return Err(PupilError::arg(OP, format!("dtype `{other}` (f32 or f16)"))),
    };
    let overflow = match o.overflow.as_deref() {
        None | Some("error") => Overflow::Error,
        Some("streaming") => Overflow::Streaming { sink_tokens: o.sink_tokens.unwrap_or(4) },
        Some(other) => return Err(PupilError::arg(OP, format!("overflow `{other}` (error or streaming)"))),
    };
    Ok(ModelOptions { dtype, context: o.context, overflow, memory_budget: o.memory_budget, ..ModelOptions::default() })
}

fn model_info(m: &LlamaModel, t: &Tokenizer, name: &str, has_template: bool) -> serde_json::Value {
    let c = &m.config;
    let text = |id: Option<u32>| id.and_then(|i| t.token_text(i)).map(str::to_string);
    json!({
        "arch": c.architecture,
        "name": name,
        "layers": c.n_layers,
        "hidden": c.hidden,
        "heads": c.n_heads,
        "kvHeads": c.n_kv_heads,
        "headDim": c.head_dim,
        "vocab": c.vocab_size,
        "context": m.context,
        "dtype": m.dtype.name(),
        "weightBytes": m.weight_bytes,
        "kvBytes": m.cache_bytes(1),
        "scratchBytes": m.scratch_bytes,
        "hasChatTemplate": has_template,
        "bosToken": text(t.bos_id()),
        "eosToken": text(t.eos_id()),
        "stopIds": t.stop_ids(),
    })
}

/// A random-weight GGUF of a known shape (`src/model/synth.rs`: `tiny-llama`, `smollm2-135m`,
/// `qwen2-1.5b`), so pages and tests can load a model without a download.
#[wasm_bindgen(js_name = synthModel)]
pub fn synth_model(preset: &str, seed: u32) -> Result<Vec<u8>, JsValue> {
    let spec = crate::model::synth::preset(preset).map_err(|e| js_error(&e))?;
    crate::model::synth::synthesize(&spec, seed as u64, &mut |_, _| {}).map_err(|e| js_error(&e))
}
