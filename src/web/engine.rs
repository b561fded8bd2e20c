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
    generate_text, split_reasoning as split_reasoning_text, Flow, ReasoningSplit, Session, SplitDelta, TextOptions,
};
use crate::error::PupilError;
use crate::gpu::{ContextOptions, DType, GpuContext};
use crate::model::{read_header, LlamaModel, ModelConfig, ModelOptions, Overflow};
use crate::sampling::{Sampler, SamplerConfig};
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
    /// What the last `finetune` of this model trained, as safetensors (`trainedWeights`).
    trained: Option<Vec<u8>>,
}

struct Inner {
    ctx: GpuContext,
    loaded: RefCell<Option<Loaded>>,
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

impl Inner {
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
        let inner = Inner { ctx, loaded: RefCell::new(None), busy: Cell::new(false) };
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
            let header = read_header(&source).await.map_err(|e| js_error(&e))?;
            progress(header.data_offset, header.data_offset, "header");
            let tokenizer = Tokenizer::from_gguf(&header).map_err(|e| js_error(&e))?;
            let template = ChatTemplate::from_gguf(&header).ok();
            let mut opts = opts;
            if opts.dtype.is_none() {
                // Unspecified: f16 where the adapter has it and the model's activations fit it.
                let cfg = ModelConfig::from_gguf(&header).map_err(|e| js_error(&e))?;
                let f16 = inner.ctx.caps.f16 && !cfg.needs_f32_activations();
                opts.dtype = Some(if f16 { DType::F16 } else { DType::F32 });
            }
            let model = LlamaModel::load_with_header(&inner.ctx, &header, &source, &opts, &mut |d, t| {
                progress(d, t, "weights")
            })
            .await
            .map_err(|e| js_error(&e))?;
            if let Some(e) = callback_error {
                return Err(e);
            }
            let name = header.get("general.name").and_then(|v| v.as_str()).unwrap_or("").to_string();
            let info = model_info(&model, &tokenizer, &name, template.is_some());
            // Arc for the native API's sake; in the browser everything lives on one thread.
            #[allow(clippy::arc_with_non_send_sync)]
            let model = Arc::new(model);
            let session = Session::shared(&inner.ctx, model).map_err(|e| js_error(&e))?;
            inner.loaded.replace(Some(Loaded { tokenizer, template, session: Some(session), trained: None }));
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
            unchecked_param_type = "(textDelta: string, tokenId: number, reasoningDelta: string) => boolean | void"
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
            let (tokenizer, mut session) = {
                let mut loaded = inner.loaded.borrow_mut();
                let l = loaded.as_mut().ok_or_else(|| no_model(OP))?;
                (l.tokenizer.clone(), l.session.take().ok_or_else(|| busy_error(OP))?)
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
                    let mut on_text = |delta: &str, id: u32| {
                        let d = if split_reasoning {
                            split.push(delta)
                        } else {
                            SplitDelta { content: delta.to_string(), reasoning: String::new() }
                        };
                        let (content, reasoning) = (JsValue::from_str(&d.content), JsValue::from_str(&d.reasoning));
                        match on_token.call3(&JsValue::NULL, &content, &id.into(), &reasoning) {
                            Ok(v) if v.as_bool() == Some(false) => Flow::Stop,
                            Ok(_) => Flow::Continue,
                            Err(e) => {
                                callback_error = Some(e);
                                Flow::Stop
                            }
                        }
                    };
                    let ctx = &inner.ctx;
                    generate_text(ctx, &mut session, &tokenizer, &ids, &text_opts, &mut sampler, &mut on_text).await
                }
                Err(e) => Err(e),
            };
            // The session goes back whatever happened (unloadModel was refused meanwhile).
            if let Some(l) = inner.loaded.borrow_mut().as_mut() {
                l.session = Some(session);
            }
            if let Some(e) = callback_error {
                return Err(e);
            }
            let out = result.map_err(|e| js_error(&e))?;
            let (reasoning, content) = if split_reasoning {
                split_reasoning_text(&prompt, &out.text)
            } else {
                (String::new(), out.text.clone())
            };
            let s = &out.stats;
            Ok(JsValue::from_str(
                &json!({
                    "finishReason": out.finish,
                    "tokens": out.tokens,
                    "text": out.text,
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
                })
                .to_string(),
            ))
        })
    }

    /// Fine-tune fresh LoRA adapters of the loaded model (f32 path) on `data` (text, or JSONL
    /// with `format: "jsonl"`): `optionsJson` is `train::FinetuneOptions` (rank, alpha,
    /// targets, steps, seqLen, batchRows, lr, warmup, evalFraction, seed, …). `onStep(stepJson)`
    /// after every optimizer step (`{step, steps, loss, gradNorm, lr, tokens, applied}`).
    /// Resolves to the report as JSON (held-out loss
    /// before and after, every step). What it trained is kept for `trainedWeights`; the
    /// adapters are not applied to generation (yet).
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
            let o: crate::train::FinetuneOptions = options(OP, &options_json)?;
            let (cfg, format) = o.config().map_err(|e| js_error(&e))?;
            // Tokenize and pack first (the template cannot leave the cell), then take the session.
            let (rows, session) = {
                let mut loaded = inner.loaded.borrow_mut();
                let l = loaded.as_mut().ok_or_else(|| no_model(OP))?;
                let docs = crate::train::documents(&data, format, &l.tokenizer, l.template.as_ref())
                    .map_err(|e| js_error(&e))?;
                (crate::train::pack(&docs, cfg.seq_len), l.session.take().ok_or_else(|| busy_error(OP))?)
            };
            let mut callback_error = None;
            let result = {
                let mut progress = |s: &crate::train::StepLog| {
                    if let Err(e) = on_step.call1(&JsValue::NULL, &JsValue::from_str(&s.to_json().to_string())) {
                        callback_error.get_or_insert(e);
                    }
                };
                match crate::train::trainer_for(&inner.ctx, session.model(), &cfg) {
                    Ok(mut trainer) => {
                        match crate::train::finetune(&inner.ctx, &mut trainer, &rows, &cfg, &mut progress).await {
                            Ok(report) => {
                                let arch = &session.model().config.architecture;
                                crate::train::trained_safetensors(&inner.ctx, &trainer, arch)
                                    .await
                                    .map(|bytes| (report, bytes))
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            };
            let trained = result.as_ref().ok().map(|(_, bytes)| bytes.clone());
            let result = result.map(|(report, _)| report);
            if let Some(l) = inner.loaded.borrow_mut().as_mut() {
                l.session = Some(session);
                l.trained = trained;
            }
            if let Some(e) = callback_error {
                return Err(e);
            }
            let report = result.map_err(|e| js_error(&e))?;
            Ok(JsValue::from_str(&report.to_json().to_string()))
        })
    }

    /// What the last successful `finetune` of the loaded model trained, as a safetensors file
    /// (`train::trained_safetensors`: LoRA A/B per layer and projection, fully trained layers
    /// under GGUF names, gates; F32, the file's row order); `undefined` before any.
    #[wasm_bindgen(js_name = trainedWeights)]
    pub fn trained_weights(&self) -> Option<Vec<u8>> {
        self.inner.loaded.borrow().as_ref().and_then(|l| l.trained.clone())
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
