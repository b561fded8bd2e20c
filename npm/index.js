// pupil-llm: run small LLMs on the user's GPU through WebGPU. The engine lives in a module Web
// Worker (worker.js, the same file the demo page uses); this module is the page-side client:
// an OpenAI-shaped chat API over the worker's id-tagged protocol (see worker.js's header).
//
// Bundlers: `new Worker(new URL('./worker.js', import.meta.url), { type: 'module' })` here and
// `new URL('pupil_bg.wasm', import.meta.url)` in pupil.js are the patterns Vite and webpack 5
// recognise, so neither needs configuration; a plain <script type="module"> loads them as is.
import { listCachedModels, deleteCachedModel } from './models.js';

export { listCachedModels, deleteCachedModel };

const FINISH = { stop: 'stop', length: 'length', context: 'length', abort: 'abort' };

function namedError(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

// Aborts reject like fetch does: a DOMException named AbortError.
const abortError = () => new DOMException('The request was aborted', 'AbortError');

// Talks to one worker: numbered requests, their token/progress callbacks and promises.
class WorkerClient {
  constructor(worker) {
    this.worker = worker;
    this.nextId = 1;
    this.pending = new Map();
    this.failure = null; // set once the worker died: every later call rejects with it
    worker.onmessage = ({ data }) => {
      const p = this.pending.get(data.id);
      if (!p) return;
      if (data.type === 'token') p.onToken?.(data.text, data.tokenId, data.reasoning || '', data.logprobs);
      else if (data.type === 'progress') p.onProgress?.({ done: data.done, total: data.total, phase: data.phase });
      else if (data.type === 'step') p.onStep?.(data.step);
      else {
        this.pending.delete(data.id);
        if (data.type === 'done') p.resolve(data.result);
        else p.reject(namedError(data.error?.name || 'Error', data.error?.message || 'worker error'));
      }
    };
    // A worker that fails to load or throws outside a command (a wasm panic) is dead for good.
    worker.onerror = (event) => {
      event.preventDefault?.();
      this.fail(namedError('WorkerError', `The Pupil worker failed: ${event.message || 'it could not be loaded'}`));
    };
  }

  fail(error) {
    this.failure ??= error;
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }

  // Posts { id, cmd, ...args }; resolves with the `done` result. `transfer` moves buffers.
  call(cmd, args = {}, { onToken, onProgress, onStep, transfer } = {}) {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onToken, onProgress, onStep });
      this.worker.postMessage({ id, cmd, ...args }, transfer || []);
    });
  }
}

// An async iterable fed by callbacks: push() values, then end() or fail(). The consumer's
// early exit (break / return()) calls onCancel.
function channel(onCancel) {
  const items = [];
  let waiter = null, finished = false, error = null;
  const wake = () => { if (waiter) { const w = waiter; waiter = null; w(); } };
  return {
    push(value) { items.push(value); wake(); },
    end() { finished = true; wake(); },
    fail(e) { error = e; finished = true; wake(); },
    async *[Symbol.asyncIterator]() {
      let complete = false;
      try {
        for (;;) {
          if (items.length) { yield items.shift(); continue; }
          if (error) throw error;
          if (finished) { complete = true; return; }
          await new Promise((resolve) => { waiter = resolve; });
        }
      } finally {
        if (!complete) onCancel();
      }
    },
  };
}

// The model source as the worker's `load` command takes it.
function modelSource(model) {
  if (typeof model === 'string') return { kind: 'url', url: new URL(model, globalThis.location?.href).href };
  if (model instanceof Blob) return { kind: 'file', file: model };
  if (model instanceof ArrayBuffer || ArrayBuffer.isView(model)) return { kind: 'bytes', bytes: model };
  if (model && typeof model === 'object' && 'synth' in model) {
    return { kind: 'synth', preset: model.synth, seed: model.seed ?? 1 };
  }
  throw namedError('TypeError', 'model must be a URL, a Blob/File, an ArrayBuffer/Uint8Array or { synth }');
}

// OpenAI's snake_case request fields to the engine's generate options.
function generateOptions(req, seed) {
  const stop = req.stop == null ? undefined : [].concat(req.stop);
  if (req.top_logprobs != null && !req.logprobs) {
    throw namedError('TypeError', 'top_logprobs needs logprobs: true');
  }
  const o = {
    maxTokens: req.max_tokens, temperature: req.temperature, topP: req.top_p, topK: req.top_k,
    minP: req.min_p, repetitionPenalty: req.repetition_penalty, seed, stop, splitReasoning: req.split_reasoning,
    // Speculative decoding: the teacher (loadTeacher) answers, the loaded model drafting.
    speculative: req.speculative == null ? undefined
      : (req.speculative.draft_tokens == null ? {} : { draftTokens: req.speculative.draft_tokens }),
    // Each token's log-probability under the model (before temperature and truncation).
    logprobs: req.logprobs ? true : undefined,
    topLogprobs: req.logprobs ? (req.top_logprobs ?? 0) : undefined,
  };
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

// A speculative run's figures in OpenAI's casing, summed over the choices.
function addSpeculative(total, r) {
  if (!r.speculative) return total;
  const t = total ?? { drafted_tokens: 0, accepted_tokens: 0, target_passes: 0, acceptance_rate: 0 };
  t.drafted_tokens += r.speculative.draftedTokens;
  t.accepted_tokens += r.speculative.acceptedTokens;
  t.target_passes += r.speculative.targetPasses;
  t.acceptance_rate = t.drafted_tokens ? t.accepted_tokens / t.drafted_tokens : 0;
  return t;
}

const randomSeed = () => Math.floor(Math.random() * 2 ** 32);
const completionId = () => `chatcmpl-${crypto.randomUUID?.() ?? Math.random().toString(36).slice(2)}`;

export class Engine {
  #client;
  #queue = Promise.resolve(); // requests run one at a time, in call order
  #disposed = false;
  #disposal = null; // dispose()'s promise: a second call gets the same
  #stopActive = null; // stops the command the worker is running now, if any

  /** @internal Use createEngine(). */
  constructor(client, adapter, loaded) {
    this.#client = client;
    this.adapter = adapter;
    this.#setLoaded(loaded);
    this.chat = { completions: { create: (req) => this.#createCompletion(req) } };
  }

  #setLoaded(loaded) {
    this.model = loaded.model;
    this.loadStats = { fromCache: loaded.fromCache, bytesFetched: loaded.bytesFetched, fileBytes: loaded.fileBytes,
      downloadMs: loaded.downloadMs, loadMs: loaded.loadMs, note: loaded.note };
  }

  // Queue one worker command. Aborting before it starts rejects without sending it; aborting
  // while it runs sends `stop` (the worker's flag, seen at the next token) and rejects.
  // `internal`: dispose's own commands, which run after the engine is marked disposed.
  #run(cmd, args, { signal, onToken, onProgress, onStep, internal = false } = {}) {
    const job = this.#queue.then(async () => {
      if (this.#disposed && !internal) throw namedError('Disposed', 'The engine was disposed');
      if (signal?.aborted) throw abortError();
      const stop = () => { this.#client.call('stop').catch(() => {}); };
      signal?.addEventListener('abort', stop, { once: true });
      this.#stopActive = stop;
      try {
        const result = await this.#client.call(cmd, args, { onToken, onProgress, onStep });
        if (signal?.aborted) throw abortError();
        return result;
      } finally {
        this.#stopActive = null;
        signal?.removeEventListener('abort', stop);
      }
    });
    this.#queue = job.catch(() => {});
    return job;
  }

  // Stream a command's tokens: yields { type: 'token', text, tokenId, reasoning }, then
  // { type: 'done', result }. Leaving the loop early stops the generation.
  #stream(cmd, args, signal) {
    const inner = new AbortController();
    const forward = () => inner.abort();
    if (signal?.aborted) inner.abort(); else signal?.addEventListener('abort', forward, { once: true });
    const ch = channel(() => inner.abort());
    const onToken = (text, tokenId, reasoning, logprobs) => ch.push({ type: 'token', text, tokenId, reasoning, logprobs });
    this.#run(cmd, args, { signal: inner.signal, onToken })
      .then((result) => { ch.push({ type: 'done', result }); ch.end(); }, (e) => ch.fail(e))
      .finally(() => signal?.removeEventListener('abort', forward));
    return ch;
  }

  /** Generate after a raw prompt (no chat template). */
  generate(prompt, options = {}) {
    const { stream, signal, onToken, ...rest } = options;
    let args;
    try {
      args = { prompt, options: generateOptions(rest, rest.seed ?? randomSeed()) };
    } catch (e) {
      if (stream) throw e;
      return Promise.reject(e);
    }
    if (stream) return this.#stream('generate', args, signal);
    return this.#run('generate', args, { signal, onToken });
  }

  /**
   * Fine-tune LoRA adapters of the loaded model on `data` (text; or JSONL of {"text"} /
   * {"messages"} lines with format: 'jsonl'), on the f32 path. Options: rank, alpha, targets,
   * steps, seqLen, batchRows, lr, warmup, evalFraction, seed, …; onStep(step) after every
   * optimizer step. Resolves to the report (held-out loss before and after, every step).
   */
  finetune(data, options = {}) {
    const { onStep, signal, ...rest } = options;
    return this.#run('finetune', { data, options: rest }, { signal, onStep });
  }

  /**
   * Distil a teacher into LoRA adapters of the loaded model (f32 path) on `data`. The teacher:
   * the one loadTeacher() or pruneIntoStudent() gave; without one, the loaded model itself
   * reading `instruction` before each JSONL line (context distillation); none when `data` is a
   * `pupil teach` file. Options: finetune()'s, and tau (2), kdAlpha (0.5), divergence
   * ('forward' | 'reverse' | 'jsd' | 'jsd:β'), tauEnd, kdAlphaEnd, instruction, alignHidden,
   * alignPairs; onStep(step) after every step (with its kl). Resolves to the report (held-out
   * loss and KL before and after, the teacher's held-out loss).
   */
  distill(data, options = {}) {
    const { onStep, signal, ...rest } = options;
    return this.#run('distill', { data, options: rest }, { signal, onStep });
  }

  /** Load a second model as distill()'s teacher (f32; the same vocabulary as the model). */
  loadTeacher(model, { onProgress, loadOptions } = {}) {
    return this.#run('loadTeacher', { source: modelSource(model), options: loadOptions || {} }, { onProgress });
  }

  /** Drop distill()'s teacher (its GPU memory is freed). */
  unloadTeacher() { return this.#run('unloadTeacher', {}); }

  /**
   * Depth-prune the loaded model into a student: it becomes distill()'s teacher and its copy
   * without some layers becomes the loaded model (engine.model is updated). Options:
   * { keep: [layers] }, or { drop: N, data, format? } to drop the N layers of least block
   * influence on `data`. Again on a pruned student it prunes further (the teacher stays the
   * original). Resolves to { kept, dropped, influence, model, teacher }.
   */
  async pruneIntoStudent(options = {}) {
    const result = await this.#run('pruneIntoStudent', { options });
    this.model = result.model;
    return result;
  }

  /**
   * What the last successful finetune() or distill() of the loaded model trained, as the bytes
   * of a safetensors file (LoRA A/B, fully trained layers, gates; F32), or null before any.
   */
  trainedWeights() {
    return this.#run('trainedWeights', {});
  }

  #createCompletion(req) {
    if (!req || !Array.isArray(req.messages) || req.messages.length === 0) {
      return Promise.reject(namedError('TypeError', 'chat.completions.create needs a non-empty messages array'));
    }
    const n = req.n ?? 1;
    if (!Number.isInteger(n) || n < 1) return Promise.reject(namedError('TypeError', 'n must be a positive integer'));
    const base = req.seed ?? randomSeed();
    const messages = req.messages.map(({ role, content }) => ({ role, content }));
    // enable_thinking goes to the chat template (as transformers' apply_chat_template kwarg).
    const enableThinking = req.enable_thinking == null ? undefined : !!req.enable_thinking;
    let calls;
    try {
      calls = Array.from({ length: n }, (_, i) => ({ messages, options: generateOptions(req, base + i), enableThinking }));
    } catch (e) {
      return Promise.reject(e);
    }
    const meta = { id: completionId(), created: Math.floor(Date.now() / 1000), model: this.model.name || 'pupil' };
    if (req.stream) return Promise.resolve(this.#chunks(calls, meta, req.signal));
    return this.#completion(calls, meta, req.signal);
  }

  async #completion(calls, meta, signal) {
    const choices = [];
    let speculative;
    const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
    for (const [index, args] of calls.entries()) {
      const r = await this.#run('chat', args, { signal });
      // A reasoning model's thought rides apart, as OpenAI-compatible servers send it.
      const message = { role: 'assistant', content: r.content ?? r.text };
      if (r.reasoning) message.reasoning_content = r.reasoning;
      choices.push({ index, message, logprobs: r.logprobs ? { content: r.logprobs, refusal: null } : null,
        finish_reason: FINISH[r.finishReason] ?? r.finishReason });
      if (index === 0) usage.prompt_tokens = r.promptTokens; // the same prompt for every choice
      usage.completion_tokens += r.generatedTokens;
      speculative = addSpeculative(speculative, r);
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    const out = { ...meta, object: 'chat.completion', choices, usage };
    if (speculative) out.speculative = speculative;
    return out;
  }

  // OpenAI's chunk sequence per choice: a delta with the role, content deltas, then an empty
  // delta with finish_reason; `usage` rides on the very last chunk.
  async *#chunks(calls, meta, signal) {
    // With logprobs, a chunk carries those of the tokens since the previous chunk (a token
    // whose text is held back, e.g. a possible stop string, rides on a later one).
    let pending = [];
    const chunk = (index, delta, finish = null) => {
      const logprobs = pending.length ? { content: pending, refusal: null } : null;
      pending = [];
      return { ...meta, object: 'chat.completion.chunk', choices: [{ index, delta, logprobs, finish_reason: finish }] };
    };
    const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
    let speculative;
    for (const [index, args] of calls.entries()) {
      yield chunk(index, { role: 'assistant', content: '' });
      let result;
      for await (const ev of this.#stream('chat', args, signal)) {
        if (ev.type === 'done') result = ev.result;
        else {
          if (ev.logprobs) pending.push(ev.logprobs);
          if (ev.reasoning) yield chunk(index, { reasoning_content: ev.reasoning });
          if (ev.text) yield chunk(index, { content: ev.text });
        }
      }
      if (index === 0) usage.prompt_tokens = result.promptTokens;
      usage.completion_tokens += result.generatedTokens;
      speculative = addSpeculative(speculative, result);
      const last = chunk(index, {}, FINISH[result.finishReason] ?? result.finishReason);
      if (index === calls.length - 1) {
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        last.usage = usage;
        if (speculative) last.speculative = speculative;
      }
      yield last;
    }
  }

  /** Replace the loaded model. */
  async load(model, { onProgress, loadOptions } = {}) {
    const loaded = await this.#run('load', { source: modelSource(model), options: loadOptions || {} }, { onProgress });
    this.#setLoaded(loaded);
    return this.model;
  }

  /** Forget the conversation cached in the KV cache. */
  reset() { return this.#run('reset', {}); }

  /** GPU memory the engine tracks, and the wasm heap size. */
  memory() { return this.#run('memory', {}); }

  /** Stop the running generation (it resolves, finish_reason 'abort'), refuse queued and later
   * requests ('Disposed'), unload the model, report the memory left (allocatedBytes 0) and
   * terminate the worker. */
  dispose() {
    this.#disposal ??= this.#dispose();
    return this.#disposal;
  }

  async #dispose() {
    this.#disposed = true;
    this.#stopActive?.();
    try {
      await this.#run('unload', {}, { internal: true });
      return await this.#run('memory', {}, { internal: true });
    } finally {
      this.#client.fail(namedError('Disposed', 'The engine was disposed'));
      this.#client.worker.terminate();
    }
  }
}

/** Start a worker, open the GPU in it and load a model. */
export async function createEngine(options) {
  const { model, onProgress, loadOptions = {}, engineOptions = {} } = options || {};
  const source = modelSource(model);
  const worker = options.worker ?? new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const client = new WorkerClient(worker);
  try {
    const adapter = await client.call('init', { options: engineOptions });
    const loaded = await client.call('load', { source, options: loadOptions }, { onProgress });
    return new Engine(client, adapter, loaded);
  } catch (e) {
    worker.terminate();
    throw e;
  }
}
