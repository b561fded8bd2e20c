// The demo page: model picker, chat, settings, live statistics. Every engine call goes to the
// worker (www/worker.js); this thread only draws, so the page stays responsive while the GPU
// works. URL parameters (handy for tests and links):
//   model=default|synth|synth:<preset>|<url>   load it at once        autorun=<prompt>  then send it
//   temperature, topP, topK, minP, repetitionPenalty, maxTokens, seed, system     sampling fields
//   context, dtype=f32|f16, overflow=error|streaming, sinkTokens                  load fields
//   maxBufferSize, maxStorageBinding (bytes), f16=0, subgroups=0                  engine limits
// window.__pupil exposes the state, the last load and generation results and a device-loss hook.
import { MODELS, deleteCachedModel, formatBytes, listCachedModels, storageEstimate } from './models.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  phase: 'starting', // starting | nogpu | idle | loading | ready | generating | lost | failed
  info: null, // the adapter (engine.info())
  model: null, // the loaded model's info
  source: null, // where the loaded model came from, to reload it after a device loss
  // A pruned student's original (its distillation teacher), to load again after a device loss;
  // and that teacher's info once Recover has loaded it.
  teacherSource: null,
  teacherRestored: null,
  messages: [], // the conversation, [{ role, content }]
  lastLoad: null,
  lastResult: null,
  events: [], // the current generation's messages in order: 'token', 'stop-ack', 'done'
  loads: 0, // finished loads and generations (successful or not), for tests to wait on
  generations: 0,
  trainings: 0, // finished fine-tuning runs, for tests
  lastTraining: null, // the last run's report (null if it failed)
  distills: 0, // finished distillation runs, for tests
  lastDistill: null, // the last distillation's report (null if it failed)
  timeline: [], // [{ phase, t }] phase changes (performance.now()), for the tests' long-task check
};

// ---------------------------------------------------------------------------------------------
// The worker and its protocol (see worker.js).

let worker = null;
let nextId = 1;
const pending = new Map(); // id -> { resolve, reject, onProgress, onToken }

function startWorker() {
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = ({ data }) => {
    const call = pending.get(data.id);
    if (!call) return;
    if (data.type === 'progress') call.onProgress?.(data);
    else if (data.type === 'token') call.onToken?.(data);
    else if (data.type === 'step') call.onStep?.(data.step);
    else {
      pending.delete(data.id);
      if (data.type === 'done') call.resolve(data.result);
      else call.reject(Object.assign(new Error(data.error.message), { name: data.error.name }));
    }
  };
  // A module worker that cannot load (no WASM build) or a crashed one ends here.
  worker.onerror = (event) => {
    event.preventDefault();
    const detail = event.message || 'the worker script or the WASM build did not load';
    const error = Object.assign(new Error(`The engine worker failed: ${detail}. ` +
      'If you serve this page yourself, build the WASM first (scripts/build-web.sh).'), { name: 'WorkerFailed' });
    const waiting = [...pending.values()];
    pending.clear();
    for (const call of waiting) call.reject(error);
    if (!waiting.length) { fail(error); setPhase('failed'); }
  };
}

function call(cmd, args = {}, handlers = {}) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, ...handlers });
    worker.postMessage({ id, cmd, ...args });
  });
}

// ---------------------------------------------------------------------------------------------
// Page state and messages.

const CONTROLS = {
  // which controls are usable in which phase
  load: ['idle', 'ready', 'failed'],
  send: ['ready'],
  prompt: ['ready', 'generating'],
  stop: ['generating'],
  'new-chat': ['ready'],
  'ft-start': ['ready'],
  'kd-start': ['ready'],
};

function setPhase(phase) {
  state.phase = phase;
  state.timeline.push({ phase, t: performance.now() });
  document.body.dataset.state = phase;
  for (const [id, phases] of Object.entries(CONTROLS)) $(id).disabled = !phases.includes(phase);
  $('status').textContent = {
    starting: 'Starting the engine…',
    nogpu: 'WebGPU is not available.',
    idle: 'Ready — load a model.',
    loading: 'Loading the model…',
    ready: `Ready: ${state.model?.name || 'model'} on ${state.info ? adapterName(state.info) : 'the GPU'}.`,
    generating: 'Generating…',
    training: 'Training…',
    lost: 'The GPU device was lost.',
    failed: 'Something went wrong — see the message above.',
  }[phase];
}

function showNotice(text, kind = 'error', action = null) {
  $('notice').hidden = false;
  $('notice').dataset.kind = kind;
  $('notice-text').textContent = text;
  const button = $('notice-action');
  button.hidden = !action;
  if (action) {
    button.textContent = action.label;
    button.onclick = action.run;
  }
}

function clearNotice() { $('notice').hidden = true; }

function limitsText() {
  const l = state.info?.limits;
  if (!l) return '';
  const lowered = [params.get('maxBufferSize') && 'maxBufferSize', params.get('maxStorageBinding') && 'maxStorageBinding']
    .filter(Boolean);
  return ` This adapter allows buffers of at most ${formatBytes(l.maxBufferSize)} (maxBufferSize) and ` +
    `storage bindings of at most ${formatBytes(l.maxStorageBinding)} (maxStorageBufferBindingSize)` +
    (lowered.length ? `, lowered on purpose by the page's ${lowered.join(' and ')} parameter.` : '.');
}

// Turn an error (its name is the engine's error kind) into what a person can act on.
function explain(e) {
  const m = e.message;
  switch (e.name) {
    case 'TooLarge':
      return `This model does not fit this GPU: ${m}.${limitsText()} ` +
        'Try a smaller model or quantization, a shorter context, or a GPU/browser with higher limits.';
    case 'NoAdapter':
      return `WebGPU is present but gave no GPU adapter (${m}). The GPU may be blocklisted or disabled: ` +
        'see chrome://gpu; on Linux, Chrome needs chrome://flags/#enable-unsafe-webgpu (and Vulkan).';
    case 'DeviceLost':
      return `The GPU device was lost (${m}) — the driver was reset, the GPU ran out of memory, or ` +
        'the tab was in the background too long. Recover to start a new device and reload the model.';
    case 'ContextOverflow':
      return `The conversation no longer fits the context (${state.model?.context ?? '?'} tokens): ${m}. ` +
        'Start a new chat, load the model with a longer context, or choose the streaming window.';
    case 'Format': return `This file is not a GGUF model Pupil can read: ${m}`;
    case 'Unsupported': return `This model needs something Pupil does not support yet: ${m}`;
    case 'Network': case 'Input': case 'WorkerFailed': return m;
    case 'Busy': return `The engine is busy with another request: ${m}`;
    case 'QuotaExceededError':
      return `The browser's storage quota is full: ${m}. Delete cached models below or free disk space.`;
    default: return `${e.name}: ${m}`;
  }
}

function fail(e) {
  if (e.name === 'DeviceLost') return deviceLost(e);
  // A Rust panic surfaces as a wasm RuntimeError and leaves the instance unusable: only a new
  // worker helps.
  const broken = e.name === 'RuntimeError' || e.name === 'WorkerFailed';
  showNotice(explain(e), 'error', broken && e.name === 'RuntimeError' ? { label: 'Restart the engine', run: recover } : null);
  if (broken || e.name === 'NoAdapter') setPhase('failed');
}

function deviceLost(e) {
  setPhase('lost');
  showNotice(explain(e), 'error', { label: 'Recover', run: recover });
}

// ---------------------------------------------------------------------------------------------
// Engine start, model loading.

function createOptions() {
  const o = {};
  if (params.get('maxBufferSize')) o.maxBufferSize = Number(params.get('maxBufferSize'));
  if (params.get('maxStorageBinding')) o.maxStorageBinding = Number(params.get('maxStorageBinding'));
  if (params.get('f16') === '0') o.allowF16 = false;
  if (params.get('subgroups') === '0') o.allowSubgroups = false;
  return o;
}

async function startEngine() {
  setPhase('starting');
  if (!navigator.gpu) {
    setPhase('nogpu');
    showNotice('This browser does not offer WebGPU, which Pupil needs to run the model on your GPU. ' +
      'Use a recent Chrome or Edge (113+), Safari 26+ or Firefox 141+ (Windows); on Linux, Chrome needs ' +
      'chrome://flags/#enable-unsafe-webgpu. Pages must be served over https or from localhost.');
    return false;
  }
  startWorker();
  try {
    state.info = await call('init', { options: createOptions() });
  } catch (e) {
    fail(e);
    setPhase('failed');
    return false;
  }
  showAdapter(state.info);
  setPhase('idle');
  return true;
}

function loadOptions() {
  const o = { overflow: $('overflow').value };
  if ($('context').value) o.context = Number($('context').value);
  if ($('dtype').value) o.dtype = $('dtype').value;
  if (o.overflow === 'streaming') o.sinkTokens = Number($('sink-tokens').value || 4);
  return o;
}

function sourceFromChoice() {
  const choice = $('model-choice').value;
  if (choice === 'default') return { kind: 'url', url: new URL(MODELS[0].url, location.href).href };
  if (choice === 'synth') return { kind: 'synth', preset: 'tiny-llama', seed: 1 };
  if (choice === 'url') {
    const url = $('model-url').value.trim();
    if (!url) throw Object.assign(new Error('enter the URL of a .gguf file'), { name: 'Input' });
    return { kind: 'url', url: new URL(url, location.href).href };
  }
  const file = $('model-file').files[0];
  if (!file) throw Object.assign(new Error('choose a .gguf file'), { name: 'Input' });
  return { kind: 'file', file };
}

function showProgress({ done, total, phase }) {
  const bar = $('load-progress');
  bar.hidden = false;
  bar.value = total ? Math.min(done / total, 1) : 0;
  if (!total) bar.removeAttribute('value'); // indeterminate
  const what = phase === 'download'
    ? `Downloading ${formatBytes(done)}${total ? ` of ${formatBytes(total)}` : ''}`
    : `${phase[0].toUpperCase()}${phase.slice(1)}${total ? ` ${Math.round((100 * done) / total)}%` : ''}`;
  $('load-status').textContent = what;
}

// `keepTeacher`: Recover reloading a pruned student, whose original stays its teacher.
async function loadModel(source, { keepTeacher = false } = {}) {
  clearNotice();
  setPhase('loading');
  state.model = null;
  $('load-progress').hidden = false;
  $('load-progress').value = 0;
  $('load-status').textContent = source.kind === 'url' ? 'Looking in the cache…' : 'Reading…';
  const t0 = performance.now();
  try {
    const r = await call('load', { source, options: loadOptions() }, { onProgress: showProgress });
    r.totalMs = performance.now() - t0;
    state.model = r.model;
    state.source = source;
    if (!keepTeacher) state.teacherSource = null;
    state.lastLoad = r;
    state.loads++;
    const from = source.kind === 'url' ? (r.fromCache ? 'from the browser cache' : `downloaded ${formatBytes(r.bytesFetched)}`)
      : source.kind === 'synth' ? 'synthetic' : source.kind === 'blob' ? `the ${source.name} this page made` : 'from a local file';
    $('load-status').textContent = `Loaded in ${(r.totalMs / 1000).toFixed(1)} s (${from}).`;
    $('stat-load').textContent = `${(r.totalMs / 1000).toFixed(1)} s, ${from}`;
    showModel(r.model);
    showMemory(r.memory);
    if (r.note) showNotice(r.note, 'warning');
    newChat();
    setPhase('ready');
    return true;
  } catch (e) {
    $('load-status').textContent = 'Not loaded.';
    state.lastLoad = null;
    state.loads++;
    setPhase('idle');
    fail(e);
    return false;
  } finally {
    $('load-progress').hidden = true;
    refreshCached();
  }
}

async function recover() {
  clearNotice();
  // A fresh worker: a new GPU device, and a fresh WASM instance in case the old one is broken.
  worker?.terminate();
  for (const c of pending.values()) c.reject(Object.assign(new Error('restarted'), { name: 'Restarted' }));
  pending.clear();
  // The model as it was: a pruned or merged student is reloaded from the file the engine wrote
  // (kept as a Blob), and a pruned student gets its original back as the teacher.
  const { source, teacherSource } = state;
  if (!(await startEngine() && source && await loadModel(source, { keepTeacher: true }))) return;
  if (teacherSource) {
    try {
      state.teacherRestored = await call('loadTeacher', { source: teacherSource, options: {} });
    } catch (e) {
      state.teacherSource = null;
      showNotice(`The student is back, but its original could not be loaded as the teacher: ${explain(e)}`, 'warning');
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Chat.

function samplingOptions() {
  const num = (id) => ($(id).value === '' ? undefined : Number($(id).value));
  return {
    temperature: num('temperature'), topP: num('top-p'), topK: num('top-k'), minP: num('min-p'),
    repetitionPenalty: num('repetition-penalty'), maxTokens: num('max-tokens'), seed: num('seed'),
  };
}

function addMessage(role, text) {
  const li = document.createElement('li');
  li.className = role;
  const body = document.createElement('div');
  body.className = 'text';
  body.append(document.createTextNode(text));
  li.append(body);
  $('messages').append(li);
  li.scrollIntoView({ block: 'end' });
  return li;
}

async function send(text) {
  if (state.phase !== 'ready' || !text.trim()) return;
  clearNotice();
  state.messages.push({ role: 'user', content: text });
  addMessage('user', text);
  const bubble = addMessage('assistant', '');
  const textNode = bubble.firstChild.firstChild;
  bubble.classList.add('streaming');
  $('prompt').value = '';
  setPhase('generating');
  state.events = [];
  const system = $('system').value.trim();
  const messages = system ? [{ role: 'system', content: system }, ...state.messages] : [...state.messages];
  const t0 = performance.now();
  let count = 0;
  let firstAt = 0;
  let thought = null; // a reasoning model's <think> text, shown dimmed above the answer
  const onToken = ({ text: delta, reasoning }) => {
    state.events.push('token');
    if (reasoning) {
      if (!thought) {
        thought = document.createElement('div');
        thought.className = 'thought';
        thought.style.opacity = '0.6';
        thought.style.fontStyle = 'italic';
        bubble.firstChild.before(thought);
      }
      thought.append(reasoning);
    }
    textNode.appendData(delta);
    count++;
    const now = performance.now();
    if (count === 1) firstAt = now;
    const live = count > 1 ? ((count - 1) * 1000) / (now - firstAt) : 0;
    $('stat-tokens').textContent = `${count} generated`;
    $('stat-ttft').textContent = `${(firstAt - t0).toFixed(0)} ms`;
    if (live) $('stat-decode').textContent = `${rate(live)} (live)`;
    if (count % 4 === 1) bubble.scrollIntoView({ block: 'end' });
  };
  try {
    const r = await call('chat', { messages, options: samplingOptions() }, { onToken });
    state.events.push('done');
    // The conversation keeps what was shown (a stopped answer ends where it stopped).
    state.messages.push({ role: 'assistant', content: textNode.data });
    state.lastResult = r;
    state.generations++;
    bubble.dataset.finish = r.finishReason;
    if (r.finishReason === 'abort') bubble.classList.add('stopped');
    showResult(r);
    setPhase('ready');
    call('memory').then(showMemory, () => {});
  } catch (e) {
    state.events.push('error');
    state.generations++;
    state.messages.pop(); // the question was not answered: leave it out of the conversation
    bubble.classList.add('failed');
    textNode.appendData(textNode.data ? ' [failed]' : '[failed]');
    setPhase('ready');
    fail(e);
  } finally {
    bubble.classList.remove('streaming');
  }
}

async function stop() {
  if (state.phase !== 'generating') return;
  $('stop').disabled = true;
  await call('stop');
  state.events.push('stop-ack');
}

async function newChat() {
  state.messages = [];
  $('messages').replaceChildren();
  if (state.phase === 'ready') await call('reset').catch(fail);
}

// ---------------------------------------------------------------------------------------------
// The statistics panel and the cached-model list.

const ms = (x) => `${x.toFixed(x < 10 ? 1 : 0)} ms`;
const rate = (x) => `${x.toFixed(x < 1 ? 2 : 1)} tokens/s`;
const adapterName = (info) => info.adapter || 'an unnamed adapter';

function showAdapter(info) {
  // Some adapters (SwiftShader in Chromium) report no name; the first line of describe is next best.
  $('stat-adapter').textContent = `${adapterName(info)} (${info.backend})`;
  $('stat-features').textContent = `shader-f16 ${info.f16 ? 'yes' : 'no'}, subgroups ${info.subgroups ? `yes (${info.subgroupMinSize}–${info.subgroupMaxSize})` : 'no'}`;
  const l = info.limits;
  $('stat-limits').textContent = `buffer ${formatBytes(l.maxBufferSize)}, storage binding ${formatBytes(l.maxStorageBinding)}, ` +
    `workgroup memory ${formatBytes(l.maxWorkgroupStorage)}, ${l.maxInvocationsPerWorkgroup} invocations, ` +
    `${l.maxStorageBuffersPerStage} storage buffers/stage`;
}

function showModel(m) {
  $('stat-model').textContent = `${m.name} (${m.arch}): ${m.layers} layers, hidden ${m.hidden}, ` +
    `${m.heads}/${m.kvHeads} heads, vocab ${m.vocab}, context ${m.context}, ${m.dtype}; weights ` +
    `${formatBytes(m.weightBytes)}, KV cache ${formatBytes(m.kvBytes)}, scratch ${formatBytes(m.scratchBytes)}` +
    (m.hasChatTemplate ? '' : '; no chat template (ChatML used)');
}

function showMemory(mem) {
  if (mem) $('stat-memory').textContent = `${formatBytes(mem.allocatedBytes)} / ${formatBytes(mem.peakBytes)} (${mem.liveBuffers} buffers)`;
}

function showResult(r) {
  $('stat-decode').textContent = rate(r.decodeTokensPerS);
  $('stat-prefill').textContent = rate(r.prefillTokensPerS);
  $('stat-ttft').textContent = ms(r.timeToFirstTokenMs);
  $('stat-latency').textContent = `${ms(r.latencyP50Ms)} / ${ms(r.latencyP99Ms)}`;
  $('stat-tokens').textContent = `${r.promptTokens} prompt (${r.reusedTokens} reused), ${r.generatedTokens} generated, ` +
    `${r.finishReason}; ${r.dispatchesPerToken} dispatches, ${r.submitsPerToken} submits per token`;
}

async function refreshCached() {
  const list = $('cached');
  try {
    const models = await listCachedModels();
    list.replaceChildren(...models.map((m) => {
      const li = document.createElement('li');
      const del = document.createElement('button');
      del.type = 'button';
      del.textContent = 'Delete';
      del.onclick = async () => { await deleteCachedModel(m.url); refreshCached(); };
      li.append(`${m.name} — ${formatBytes(m.size)} `, del);
      li.title = m.url;
      return li;
    }));
    if (!models.length) list.replaceChildren(Object.assign(document.createElement('li'), { textContent: 'none yet' }));
    const est = await storageEstimate();
    $('storage').textContent = est ? `This site uses ${formatBytes(est.usage)} of ${formatBytes(est.quota)} the browser allows.` : '';
  } catch (e) {
    $('storage').textContent = `Cache unavailable: ${e.message}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring.

function applyParams() {
  const fields = {
    temperature: 'temperature', topP: 'top-p', topK: 'top-k', minP: 'min-p', repetitionPenalty: 'repetition-penalty',
    maxTokens: 'max-tokens', seed: 'seed', system: 'system', context: 'context', dtype: 'dtype', overflow: 'overflow',
    sinkTokens: 'sink-tokens',
  };
  for (const [param, id] of Object.entries(fields)) if (params.has(param)) $(id).value = params.get(param);
}

// ?model=default|synth|synth:<preset>|<url>
function sourceFromParam(value) {
  if (value === 'default') return { kind: 'url', url: new URL(MODELS[0].url, location.href).href };
  if (value === 'synth' || value.startsWith('synth:')) return { kind: 'synth', preset: value.slice(6) || 'tiny-llama', seed: 1 };
  const url = new URL(value, location.href);
  if (!/^https?:$/.test(url.protocol)) throw Object.assign(new Error(`model URL ${value} is not http(s)`), { name: 'Input' });
  return { kind: 'url', url: url.href };
}

// A per-step value (the loss, or the KL) of every step so far, drawn as a line on `canvasId`;
// held-out values as squares at both ends.
function drawChart(canvasId, steps, key, evalBefore, evalAfter) {
  const canvas = $(canvasId);
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  const values = steps.map((s) => s[key]).concat([evalBefore, evalAfter].filter((x) => x != null));
  if (!values.length) return;
  const lo = Math.min(...values), hi = Math.max(...values), pad = 8;
  const n = Math.max(steps[0]?.steps || steps.length, 2);
  const x = (i) => pad + (canvas.width - 2 * pad) * (i / (n - 1));
  const y = (v) => canvas.height - pad - (canvas.height - 2 * pad) * ((v - lo) / Math.max(hi - lo, 1e-9));
  g.strokeStyle = getComputedStyle(document.body).color;
  g.beginPath();
  steps.forEach((s, i) => (i ? g.lineTo(x(i), y(s[key])) : g.moveTo(x(i), y(s[key]))));
  g.stroke();
  g.fillStyle = '#c60';
  if (evalBefore != null) g.fillRect(x(0) - 3, y(evalBefore) - 3, 6, 6);
  if (evalAfter != null) g.fillRect(x(n - 1) - 3, y(evalAfter) - 3, 6, 6);
}

const drawLoss = (steps, evalBefore, evalAfter) => drawChart('ft-chart', steps, 'loss', evalBefore, evalAfter);

// Links to what a run trained (safetensors) and its report (JSON), as blob URLs replaced by the
// next run's.
function offerDownloads(weights, report, prefix = 'ft') {
  const link = (id, blob) => {
    const a = $(id);
    if (a.href.startsWith('blob:')) URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(blob);
  };
  link(`${prefix}-download-weights`, new Blob([weights], { type: 'application/octet-stream' }));
  const { steps, ...summary } = report;
  link(`${prefix}-download-report`, new Blob([JSON.stringify({ ...summary, steps }, null, 1)], { type: 'application/json' }));
  $(`${prefix}-download-weights`).textContent = `trained weights (.safetensors, ${formatBytes(weights.byteLength)})`;
  $(`${prefix}-downloads`).hidden = false;
}

async function finetune() {
  let data = $('ft-data').value;
  const file = $('ft-file').files[0];
  if (file) data = await file.text();
  if (!data.trim()) { showNotice('Paste some training text or choose a file first.', 'info'); return; }
  const num = (id) => Number($(id).value);
  const options = {
    steps: num('ft-steps'), rank: num('ft-rank'), alpha: 2 * num('ft-rank'), seqLen: num('ft-seq'),
    batchRows: num('ft-batch'), lr: num('ft-lr'), evalFraction: num('ft-eval'), warmup: Math.min(3, num('ft-steps')),
    format: file && file.name.endsWith('.jsonl') ? 'jsonl' : 'text', apply: $('ft-apply').checked,
  };
  clearNotice();
  setPhase('training');
  const steps = [];
  $('ft-progress').hidden = false;
  $('ft-progress').value = 0;
  $('ft-status').textContent = 'Measuring the held-out loss…';
  drawLoss([], null, null);
  const t0 = performance.now();
  try {
    const report = await call('finetune', { data, options }, {
      onStep: (s) => {
        steps.push(s);
        $('ft-progress').value = s.step / s.steps;
        const rate = steps.reduce((a, x) => a + x.tokens, 0) / ((performance.now() - t0) / 1000);
        $('ft-status').textContent = `Step ${s.step}/${s.steps}: loss ${s.loss.toFixed(4)}, |g| ${s.gradNorm.toFixed(3)}, ${rate.toFixed(1)} tokens/s`;
        drawLoss(steps, null, null);
      },
    });
    state.lastTraining = report;
    await afterMerge(report);
    drawLoss(report.steps, report.evalLossBefore, report.evalLossAfter);
    offerDownloads(await call('trainedWeights'), report);
    const held = report.evalLossBefore == null ? 'no held-out rows'
      : `held-out loss ${report.evalLossBefore.toFixed(4)} → ${report.evalLossAfter.toFixed(4)}`;
    $('ft-status').textContent = `Done: ${report.steps.length} steps (${report.skippedSteps} skipped), ${held}; ${merged(report)}` +
      `${report.trainableParameters.toLocaleString()} trainable parameters, ${((performance.now() - t0) / 1000).toFixed(1)} s.`;
    setPhase('ready');
  } catch (e) {
    state.lastTraining = null;
    $('ft-status').textContent = 'Fine-tuning stopped.';
    if (['DeviceLost', 'RuntimeError', 'WorkerFailed'].includes(e.name)) fail(e);
    else { showNotice(explain(e)); setPhase('ready'); }
  } finally {
    $('ft-progress').hidden = true;
    state.trainings++;
  }
}

// A run merged into the model (`apply`): the model was reloaded, so the conversation starts over.
async function afterMerge(report) {
  if (!report.merged) return;
  // The model is now the merged file the engine wrote: what Recover reloads.
  if (report.modelFile) state.source = { kind: 'blob', blob: report.modelFile, name: 'merged model' };
  delete report.modelFile;
  state.messages = [];
  $('messages').replaceChildren();
  showMemory(await call('memory'));
}

const merged = (report) => (report.merged
  ? `merged into the model (${report.merged.tensors} tensors, moved ${report.merged.update.toExponential(2)}, requantisation ${report.merged.requantisation.toExponential(2)}); `
  : '');

// `0-17,29` → [0, 1, …, 17, 29] (null when empty or malformed).
function layerList(text) {
  const out = new Set();
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return null;
    for (let l = Number(m[1]); l <= Number(m[2] ?? m[1]); l++) out.add(l);
  }
  return out.size ? [...out].sort((a, b) => a - b) : null;
}

// The distillation panel: pick the student (the loaded model, or its copy without some layers)
// and the teacher (the model itself reading an instruction, another file, or — for a pruned
// student — the original), then distil with live loss and KL charts.
async function distill() {
  let data = $('kd-data').value;
  const file = $('kd-file').files[0];
  if (file) data = await file.text();
  if (!data.trim()) { showNotice('Paste some data or choose a file first.', 'info'); return; }
  const student = $('kd-student').value;
  const teacher = student === 'pruned' ? 'original' : $('kd-teacher').value;
  const format = (file && file.name.endsWith('.jsonl')) || /^\s*\{/.test(data) ? 'jsonl' : 'text';
  const num = (id) => Number($(id).value);
  const options = {
    steps: num('kd-steps'), rank: num('kd-rank'), alpha: 2 * num('kd-rank'), seqLen: num('kd-seq'),
    batchRows: num('kd-batch'), lr: num('kd-lr'), evalFraction: num('kd-eval'), warmup: Math.min(3, num('kd-steps')),
    format, tau: num('kd-tau'), kdAlpha: num('kd-alpha'), divergence: $('kd-divergence').value,
    apply: $('kd-apply').checked,
  };
  if ($('kd-alpha-adapt').checked) options.kdAlphaAdapt = true;
  if ($('kd-tau-adapt').checked) options.kdTauAdapt = true;
  if (num('kd-align') > 0) options.alignHidden = num('kd-align');
  if (teacher === 'context') {
    const instruction = $('kd-instruction').value.trim();
    if (!instruction) { showNotice('Context distillation needs the instruction the teacher reads.', 'info'); return; }
    if (format !== 'jsonl') { showNotice('Context distillation reads JSONL: one {"text"} or {"messages"} object per line.', 'info'); return; }
    options.instruction = instruction;
  }
  const teacherFile = $('kd-teacher-file').files[0];
  if (teacher === 'file' && !teacherFile) { showNotice('Choose the teacher\'s GGUF file first.', 'info'); return; }
  clearNotice();
  setPhase('training');
  const steps = [];
  const status = (text) => { $('kd-status').textContent = text; };
  $('kd-progress').hidden = false;
  $('kd-progress').value = 0;
  drawChart('kd-chart-loss', [], 'loss');
  drawChart('kd-chart-kl', [], 'kl');
  const t0 = performance.now();
  let pruned = '';
  try {
    if (student === 'pruned') {
      const keep = layerList($('kd-keep').value);
      if ($('kd-keep').value.trim() && !keep) throw Object.assign(new Error('keep: a layer list such as 0-17,29'), { name: 'InvalidArgument' });
      status(keep ? 'Pruning…' : 'Measuring each layer\'s influence on the data, then pruning…');
      const p = await call('pruneIntoStudent', { options: keep ? { keep } : { drop: num('kd-drop'), data, format } });
      // Progressive pruning keeps the first original as the teacher.
      state.teacherSource ??= state.source;
      state.source = { kind: 'blob', blob: p.modelFile, name: 'pruned student' };
      state.model = p.model;
      showModel(p.model);
      showMemory(p.memory);
      // A new model: the conversation (and its KV cache) went with the old one.
      state.messages = [];
      $('messages').replaceChildren();
      pruned = `pruned ${p.teacher.layers} → ${p.model.layers} layers (dropped ${p.dropped.join(', ')}); `;
    } else if (teacher === 'file') {
      status('Loading the teacher…');
      state.teacherSource = null;
      await call('loadTeacher', { source: { kind: 'file', file: teacherFile }, options: {} });
    } else {
      state.teacherSource = null;
      await call('unloadTeacher');
    }
    status(`${pruned}measuring the held-out loss and KL…`);
    const report = await call('distill', { data, options }, {
      onStep: (s) => {
        steps.push(s);
        $('kd-progress').value = s.step / s.steps;
        const rate = steps.reduce((a, x) => a + x.tokens, 0) / ((performance.now() - t0) / 1000);
        status(`${pruned}step ${s.step}/${s.steps}: loss ${s.loss.toFixed(4)}, KL ${s.kl.toFixed(4)}${s.alpha === null ? '' : `, α ${s.alpha.toFixed(3)}`}${s.tau === null ? '' : `, τ ${s.tau.toFixed(3)}`}, |g| ${s.gradNorm.toFixed(3)}, ${rate.toFixed(1)} tokens/s`);
        drawChart('kd-chart-loss', steps, 'loss');
        drawChart('kd-chart-kl', steps, 'kl');
      },
    });
    state.lastDistill = report;
    await afterMerge(report);
    drawChart('kd-chart-loss', report.steps, 'loss');
    drawChart('kd-chart-kl', report.steps, 'kl', report.evalKlBefore, report.evalKlAfter);
    offerDownloads(await call('trainedWeights'), report, 'kd');
    const f = (x) => x.toFixed(4);
    const held = report.evalKlBefore == null ? 'no held-out rows'
      : `held-out KL ${f(report.evalKlBefore)} → ${f(report.evalKlAfter)} (${(100 * (report.evalKlAfter - report.evalKlBefore) / report.evalKlBefore).toFixed(1)}%), ` +
        `CE ${f(report.evalLossBefore)} → ${f(report.evalLossAfter)}` +
        (report.teacherEvalLoss == null ? '' : ` (teacher ${f(report.teacherEvalLoss)})`);
    status(`Done: ${pruned}${report.steps.length} steps (${report.skippedSteps} skipped), ${held}; ${merged(report)}` +
      `${report.trainableParameters.toLocaleString()} trainable parameters, ${((performance.now() - t0) / 1000).toFixed(1)} s.`);
    setPhase('ready');
  } catch (e) {
    state.lastDistill = null;
    status('Distillation stopped.');
    if (['DeviceLost', 'RuntimeError', 'WorkerFailed'].includes(e.name)) fail(e);
    else { showNotice(explain(e)); setPhase('ready'); }
  } finally {
    $('kd-progress').hidden = true;
    state.distills++;
  }
}

function showDistillChoices() {
  const pruned = $('kd-student').value === 'pruned';
  $('kd-prune-row').hidden = !pruned;
  $('kd-teacher-row').hidden = pruned;
  const teacher = pruned ? 'original' : $('kd-teacher').value;
  $('kd-instruction-row').hidden = teacher !== 'context';
  $('kd-teacher-file-row').hidden = teacher !== 'file';
}

function wire() {
  $('finetune-form').onsubmit = (e) => { e.preventDefault(); finetune(); };
  $('distill-form').onsubmit = (e) => { e.preventDefault(); distill(); };
  $('kd-student').onchange = showDistillChoices;
  $('kd-teacher').onchange = showDistillChoices;
  showDistillChoices();
  $('model-choice').onchange = () => {
    $('model-url-row').hidden = $('model-choice').value !== 'url';
    $('model-file-row').hidden = $('model-choice').value !== 'file';
  };
  $('model-form').onsubmit = (e) => {
    e.preventDefault();
    try { loadModel(sourceFromChoice()); } catch (err) { showNotice(err.message); }
  };
  $('chat-form').onsubmit = (e) => { e.preventDefault(); send($('prompt').value); };
  $('prompt').onkeydown = (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send($('prompt').value); }
  };
  $('stop').onclick = stop;
  $('new-chat').onclick = () => newChat();
  // Drag and drop: a File is a Blob; the worker gets a handle, not the bytes.
  const overlay = $('drop-overlay');
  document.addEventListener('dragover', (e) => {
    if (![...e.dataTransfer.types].includes('Files')) return;
    e.preventDefault();
    overlay.hidden = false;
  });
  overlay.addEventListener('dragleave', () => { overlay.hidden = true; });
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    overlay.hidden = true;
    const file = e.dataTransfer.files[0];
    if (!file) return;
    if (!['idle', 'ready', 'failed'].includes(state.phase)) { showNotice('Wait for the current work to finish, then drop the file again.'); return; }
    loadModel({ kind: 'file', file });
  });
}

window.__pupil = {
  state,
  get lastResult() { return state.lastResult; },
  get lastLoad() { return state.lastLoad; },
  get lastTraining() { return state.lastTraining; },
  get lastDistill() { return state.lastDistill; },
  send,
  stop,
  // Test hook: destroy the GPU device under the engine, as a driver reset would.
  loseDevice: () => call('loseDevice'),
};

async function main() {
  wire();
  applyParams();
  setPhase('starting');
  refreshCached();
  if (!await startEngine()) return;
  const model = params.get('model');
  if (!model) return;
  let source;
  try { source = sourceFromParam(model); } catch (e) { showNotice(e.message); return; }
  if (source.kind === 'synth') $('model-choice').value = 'synth';
  else if (source.url === new URL(MODELS[0].url, location.href).href) $('model-choice').value = 'default';
  else { $('model-choice').value = 'url'; $('model-url').value = source.url; }
  $('model-choice').onchange();
  if (await loadModel(source) && params.get('autorun')) send(params.get('autorun'));
}

main();
