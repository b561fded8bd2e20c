// The engine's home: a module Web Worker, so downloads, WASM and GPU work never block the page.
//
// Protocol. The page posts { id, cmd, ...args }; the worker answers with messages carrying the
// same id:
//   { id, type: 'progress', done, total, phase }   load: 'download', then the engine's phases
//   { id, type: 'token', text, tokenId, reasoning } chat/generate: one per streamed token (a
//                                                  reasoning model's <think> text in `reasoning`)
//   { id, type: 'step', step }                     finetune/distill: one per optimizer step
//   { id, type: 'done', result }                   the command finished
//   { id, type: 'error', error: { name, message } } it failed; name is the error kind
// Commands: init {options} (create the engine; result: adapter info), info, load {source,
// options} with source {kind: 'url', url} | {kind: 'file', file} | {kind: 'bytes', bytes} |
// {kind: 'synth', preset, seed} | {kind: 'blob', blob, name} (a file the engine wrote), chat {messages, options}, generate {prompt, options},
// finetune {data, options} (LoRA training of the loaded model; result: the report),
// distill {data, options} (distillation from the teacher into LoRA adapters of the loaded
// model; result: the report; both with `modelFile`, a Blob, when `apply` replaced the model), loadTeacher {source, options} (a second model as the teacher;
// result: its info), pruneIntoStudent {options} (the loaded model becomes the teacher, its copy
// without some layers the loaded model; result: {kept, dropped, influence, model, teacher,
// modelFile}),
// unloadTeacher, trainedWeights (result: what the last finetune/distill trained, safetensors
// bytes, or null), stop, reset, unload, memory, loseDevice (test hook).
//
// Commands run one at a time in arrival order (the engine is single-threaded and a call must
// not start while another awaits the GPU) — except `stop`, which is handled at once: it sets a
// flag that the running generation's next token callback sees. Its `done` is the stop
// acknowledgement: since this worker posts every token from that callback, no token of the
// stopped generation can follow it.
import init, { Engine, synthModel } from '../target/web/pkg/pupil.js';
import { fetchModel } from './models.js';

let engine = null;
let model = null; // the loaded model's info
let generating = null; // id of the running generation
let stopRequested = false;
let queue = Promise.resolve();
let wasmReady = null;
let wasm = null; // the module's exports (its linear memory)

// The wasm linear memory's size: it only grows, so this is the peak heap so far.
const wasmHeapBytes = () => (wasm ? wasm.memory.buffer.byteLength : 0);

const post = (message) => self.postMessage(message);

// Errors from the engine are Errors whose name is the kind; anything else becomes one.
function plainError(e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'message' in e)) {
    return { name: e.name || 'Error', message: e.message || String(e) };
  }
  return { name: 'Error', message: String(e) };
}

function requireEngine() {
  if (!engine) throw Object.assign(new Error('The engine is not started'), { name: 'NoEngine' });
  return engine;
}

function requireModel() {
  requireEngine();
  if (!model) throw Object.assign(new Error('No model is loaded'), { name: 'NoModel' });
}

// At most ~10 progress messages a second: the page only redraws a bar.
function throttled(id) {
  let last = 0;
  return (done, total, phase) => {
    const now = performance.now();
    if (now - last < 100 && done < total) return;
    last = now;
    post({ id, type: 'progress', done, total, phase });
  };
}

async function modelBlob(source, progress) {
  switch (source.kind) {
    case 'url': {
      const got = await fetchModel(source.url, (done, total) => progress(done, total, 'download'));
      return { blob: got.blob, fromCache: got.fromCache, bytesFetched: got.bytesFetched, note: got.note };
    }
    case 'file': return { blob: source.file, name: source.file.name };
    case 'bytes': return { blob: new Blob([source.bytes]) };
    case 'blob': return { blob: source.blob, name: source.name };
    case 'synth': return { blob: new Blob([synthModel(source.preset, source.seed ?? 1)]), name: `synthetic ${source.preset}` };
    default: throw Object.assign(new Error(`unknown model source ${source.kind}`), { name: 'Format' });
  }
}

// Run one generation; tokens stream out as messages until the engine finishes or stop is asked.
async function generate(id, prompt, options) {
  requireModel();
  generating = id;
  stopRequested = false;
  const tokenIds = [];
  try {
    const json = await engine.generate(prompt, JSON.stringify(options || {}), (text, tokenId, reasoning, logprobs) => {
      if (stopRequested) return false;
      tokenIds.push(tokenId);
      // logprobs (asked for): this token's, in OpenAI's shape.
      post({ id, type: 'token', text, tokenId, reasoning, logprobs: logprobs && JSON.parse(logprobs) });
      return true;
    });
    return { ...JSON.parse(json), tokenIds, prompt };
  } finally {
    generating = null;
    stopRequested = false;
  }
}

const commands = {
  async init({ options }) {
    wasmReady ??= init().catch((e) => { wasmReady = null; throw e; });
    wasm = await wasmReady;
    if (engine) { try { engine.free(); } catch { /* a lost device may refuse; drop it anyway */ } }
    engine = null;
    model = null;
    engine = await Engine.create(JSON.stringify(options || {}));
    return JSON.parse(engine.info());
  },
  info: () => JSON.parse(requireEngine().info()),
  async load({ source, options }, id) {
    requireEngine();
    const progress = throttled(id);
    const t0 = performance.now();
    const got = await modelBlob(source, progress);
    const t1 = performance.now();
    // Free the previous model's GPU memory before the next one claims its own.
    if (model) { engine.unloadModel(); model = null; }
    const info = JSON.parse(await engine.loadModel(got.blob, JSON.stringify(options || {}), progress));
    model = info;
    return {
      model: info, fromCache: !!got.fromCache, bytesFetched: got.bytesFetched || 0, note: got.note,
      fileBytes: got.blob.size, downloadMs: t1 - t0, loadMs: performance.now() - t1,
      memory: JSON.parse(engine.memory()), wasmHeapBytes: wasmHeapBytes(),
    };
  },
  // The chat template turns the conversation into the prompt; the engine reuses the KV cache
  // for the part of it the previous turn already processed.
  chat({ messages, options, enableThinking }, id) {
    requireModel();
    // A model without a template gets ChatML from the engine. enableThinking (Qwen3's
    // enable_thinking) is passed only when set: undefined leaves the template's default.
    const prompt = engine.applyChatTemplate(JSON.stringify(messages), true, enableThinking ?? undefined);
    return generate(id, prompt, options);
  },
  generate: ({ prompt, options }, id) => generate(id, prompt, options),
  // With `apply` the model is replaced by the merged one: its file comes back as `modelFile`
  // (a Blob), so the page can load it again after a device loss.
  async finetune({ data, options }, id) {
    requireModel();
    const report = JSON.parse(await engine.finetune(String(data), JSON.stringify(options || {}),
      (s) => post({ id, type: 'step', step: JSON.parse(s) })));
    return report.merged ? { ...report, modelFile: engine.modelFile() } : report;
  },
  async distill({ data, options }, id) {
    requireModel();
    const report = JSON.parse(await engine.distill(String(data), JSON.stringify(options || {}),
      (s) => post({ id, type: 'step', step: JSON.parse(s) })));
    return report.merged ? { ...report, modelFile: engine.modelFile() } : report;
  },
  async loadTeacher({ source, options }, id) {
    requireEngine();
    const progress = throttled(id);
    const got = await modelBlob(source, progress);
    return JSON.parse(await engine.loadTeacher(got.blob, JSON.stringify(options || {}), progress));
  },
  async pruneIntoStudent({ options }) {
    requireModel();
    const result = JSON.parse(await engine.pruneIntoStudent(JSON.stringify(options || {})));
    model = result.model;
    return { ...result, memory: JSON.parse(engine.memory()), modelFile: engine.modelFile() };
  },
  unloadTeacher() { requireEngine().unloadTeacher(); return true; },
  // What the last finetune or distill trained (safetensors bytes), or null before any.
  trainedWeights() { requireModel(); return engine.trainedWeights() ?? null; },
  reset() { requireModel(); engine.resetSession(); return true; },
  unload() { if (model) requireEngine().unloadModel(); model = null; return true; },
  memory: () => ({ ...JSON.parse(requireEngine().memory()), wasmHeapBytes: wasmHeapBytes() }),
  loseDevice() { requireEngine().loseDeviceForTest(); return true; },
};

self.onmessage = ({ data }) => {
  const { id, cmd, ...args } = data;
  if (cmd === 'stop') {
    if (generating !== null) stopRequested = true;
    post({ id, type: 'done', result: { stopping: generating } });
    return;
  }
  queue = queue.then(async () => {
    try {
      if (!commands[cmd]) throw Object.assign(new Error(`unknown command ${cmd}`), { name: 'Protocol' });
      post({ id, type: 'done', result: await commands[cmd](args, id) });
    } catch (e) {
      post({ id, type: 'error', error: plainError(e) });
    }
  });
};
