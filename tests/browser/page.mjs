// Drives the demo page (index.html) in headless Chromium (WebGPU on SwiftShader here) and checks,
// printing each check and its time:
//   synthetic model: loads and generates (?model=synth), no console errors; Stop (no token after
//     the stop acknowledgement, the next request works); device loss shows a message, Recover
//     reloads, generation works again;
//   SmolLM2-135M (served from the model cache): greedy chat token ids equal the native run's
//     (target/pupil-web-expected.json, written by `cargo test`); load time and tokens/s printed;
//     a screenshot in target/artifacts/page.png;
//   a second visit in the same profile loads the model from the Cache API, fetching zero bytes;
//   no main-thread task over 50 ms while generating (PerformanceObserver 'longtask');
//   a lowered ?maxBufferSize shows the "does not fit" message; no WebGPU shows its message.
// Usage: node tests/browser/page.mjs [--skip-real]   (PUPIL_WEB_EXPECTED overrides the reference)
import { chromium } from 'playwright-core';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const CHROMIUM_ARGS = [
  '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const MODEL_PATH = '/models/SmolLM2-135M-Instruct.Q4_1.gguf';
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const skipReal = process.argv.includes('--skip-real');

let passed = 0, failed = 0;
const t0 = Date.now();
const secs = (t) => `${((Date.now() - t) / 1000).toFixed(1)} s`;
function check(ok, what, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? ` — ${detail}` : ''}`);
  ok ? passed++ : failed++;
  return ok;
}

// Bytes the server sent per path (the model's must stay 0 on a cached visit).
const served = new Map();
const server = await serve(root, 0, { onServed: (path, n) => served.set(path, (served.get(path) || 0) + n) });
const base = `http://127.0.0.1:${server.address().port}/`;
const profile = await mkdtemp(join(tmpdir(), 'pupil-page-'));
// Every request for the model from any page or worker of the profile (the server's count is
// the authority; this one says whether the browser even asked).
const modelRequests = [];
let context;
async function launch() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
  });
  context.on('request', (r) => { if (r.url().includes(MODEL_PATH)) modelRequests.push(r.url()); });
}
await launch();

async function openPage(query, { noWebGPU = false } = {}) {
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  // Long tasks are collected from the start; the checks look at the generating phases.
  await page.addInitScript(() => {
    window.__longtasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longtasks.push({ start: e.startTime, duration: e.duration });
    }).observe({ type: 'longtask', buffered: true });
  });
  if (noWebGPU) await page.addInitScript(() => { delete Navigator.prototype.gpu; });
  await page.goto(base + query);
  return { page, errors };
}

const waitState = (page, states, timeoutS) => page.waitForFunction(
  (s) => s.includes(document.body.dataset.state), states, { timeout: timeoutS * 1000, polling: 100 });

// Waits until the page's count of finished loads passes `previous` (a load started by ?model=
// or Recover has succeeded or failed), or the page failed before loading; returns lastLoad
// (null when that load failed).
async function waitLoad(page, previous, timeoutS) {
  await page.waitForFunction((prev) => {
    const s = window.__pupil.state;
    return s.loads > prev || ['failed', 'nogpu'].includes(s.phase);
  }, previous, { timeout: timeoutS * 1000, polling: 100 });
  return page.evaluate(() => window.__pupil.lastLoad);
}

// Waits until the page's count of finished generations passes `previous`; returns lastResult
// (null if that generation failed).
async function waitGeneration(page, previous, timeoutS) {
  await page.waitForFunction((prev) => window.__pupil.state.generations > prev,
    previous, { timeout: timeoutS * 1000, polling: 100 });
  return page.evaluate(() => (window.__pupil.state.events.includes('error') ? null : window.__pupil.lastResult));
}

const loads = (page) => page.evaluate(() => window.__pupil.state.loads);
const generations = (page) => page.evaluate(() => window.__pupil.state.generations);


// Long tasks (> 50 ms by definition) that overlap a generating phase.
async function longTasksWhileGenerating(page) {
  return page.evaluate(() => {
    const tl = window.__pupil.state.timeline;
    const windows = [];
    tl.forEach((e, i) => { if (e.phase === 'generating') windows.push([e.t, tl[i + 1]?.t ?? performance.now()]); });
    return window.__longtasks.filter((l) => windows.some(([a, b]) => l.start < b && l.start + l.duration > a));
  });
}

async function notice(page) {
  return page.evaluate(() => ({ hidden: document.getElementById('notice').hidden,
    text: document.getElementById('notice-text').textContent,
    action: document.getElementById('notice-action').hidden ? null : document.getElementById('notice-action').textContent }));
}

async function sendAndWait(page, text, timeoutS) {
  const before = await generations(page);
  await page.fill('#prompt', text);
  await page.click('#send');
  return waitGeneration(page, before, timeoutS);
}

async function syntheticModel() {
  let t = Date.now();
  const { page, errors } = await openPage('?model=synth&autorun=Hello&temperature=0&maxTokens=16');
  const load = await waitLoad(page, 0, 120);
  if (!check(!!load, 'synthetic model loads', load ? `${load.model.name}, ${secs(t)}` : (await notice(page)).text)) return page.close();
  let r = await waitGeneration(page, 0, 120);
  check(r && r.generatedTokens > 0 && r.tokenIds.length > 0, 'synthetic model generates',
    r ? `${r.generatedTokens} tokens, ${r.finishReason}, ${r.decodeTokensPerS.toFixed(1)} tokens/s` : 'no result');

  // Stop: a long answer, stopped after a few tokens.
  t = Date.now();
  await page.fill('#max-tokens', String(Math.max(16, Math.min(400, load.model.context - 64))));
  await page.fill('#temperature', '0.8');
  const before = await generations(page);
  await page.fill('#prompt', 'Tell me a long story');
  await page.click('#send');
  await page.waitForFunction(() => window.__pupil.state.events.filter((e) => e === 'token').length >= 3, null, { timeout: 60000, polling: 20 });
  await page.click('#stop');
  r = await waitGeneration(page, before, 60);
  const events = await page.evaluate(() => window.__pupil.state.events);
  const ack = events.indexOf('stop-ack');
  const late = events.slice(ack + 1).filter((e) => e === 'token').length;
  check(ack > 0 && late === 0 && r.finishReason === 'abort', 'Stop: no token after the stop acknowledgement',
    `${events.filter((e) => e === 'token').length} tokens before the ack, ${late} after, finish ${r.finishReason}, ${secs(t)}`);
  await page.fill('#max-tokens', '8');
  r = await sendAndWait(page, 'And another?', 60);
  check(r && r.generatedTokens > 0 && r.finishReason !== 'abort', 'a request after Stop works', r && `${r.generatedTokens} tokens, ${r.finishReason}`);

  // Device loss: the next request fails with DeviceLost; the page offers Recover.
  t = Date.now();
  await page.evaluate(() => window.__pupil.loseDevice());
  await page.fill('#prompt', 'Still there?');
  await page.click('#send');
  await waitState(page, ['lost'], 60).catch(() => {});
  const n = await notice(page);
  check(!n.hidden && /device was lost/i.test(n.text) && n.action === 'Recover', 'device loss shows its message and Recover', n.text.slice(0, 120));
  if (n.action) {
    const previous = await loads(page);
    await page.click('#notice-action');
    const reload = await waitLoad(page, previous, 120);
    check(reload && (await page.evaluate(() => window.__pupil.state.phase)) === 'ready',
      'Recover: a new engine reloads the model', reload ? `in ${(reload.totalMs / 1000).toFixed(1)} s` : (await notice(page)).text);
    r = await sendAndWait(page, 'Back again?', 60);
    check(r && r.generatedTokens > 0, 'after Recover the model generates again', `${r?.generatedTokens} tokens, ${secs(t)}`);
  }
  // The fine-tuning panel: a few LoRA steps from pasted text, loss chart and held-out figures.
  await page.evaluate(() => { document.getElementById('finetune-panel').open = true; });
  await page.fill('#ft-data', 'The quick brown fox jumps over the lazy dog. '.repeat(12));
  for (const [id, v] of [['#ft-steps', '3'], ['#ft-seq', '48'], ['#ft-batch', '2'], ['#ft-lr', '0.01'], ['#ft-eval', '0.25']]) await page.fill(id, v);
  t = Date.now();
  await page.click('#ft-start');
  await page.waitForFunction(() => window.__pupil.state.trainings > 0, null, { timeout: 300_000, polling: 200 });
  const tr = await page.evaluate(() => ({ report: window.__pupil.lastTraining, status: document.getElementById('ft-status').textContent, phase: window.__pupil.state.phase }));
  check(tr.report && tr.report.steps.length === 3 && tr.report.evalLossAfter < tr.report.evalLossBefore && tr.phase === 'ready'
    && tr.status.includes('held-out loss') && tr.report.merged?.tensors > 0 && tr.status.includes('merged into the model'),
  'fine-tuning panel: 3 LoRA steps, held-out loss down, merged into the model, status shown', `${tr.status} (${secs(t)})`);
  // Its downloads: the trained adapters as safetensors (rank 8 from the form) and the report.
  const saved = async (id) => {
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 30_000 }), page.click(id)]);
    return { name: download.suggestedFilename(), bytes: await readFile(await download.path()) };
  };
  const w = await saved('#ft-download-weights');
  const hlen = Number(w.bytes.readBigUInt64LE(0));
  const header = JSON.parse(w.bytes.subarray(8, 8 + hlen).toString('utf8'));
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const end = Math.max(0, ...names.map((k) => header[k].data_offsets[1]));
  check(w.name.endsWith('.safetensors') && header.__metadata__?.rank === '8' && names.length > 0
    && names.filter((k) => k.endsWith('.lora_A')).length === names.length / 2 && w.bytes.length === 8 + hlen + end,
  'fine-tuning panel: the trained adapters download as safetensors', `${w.name}, ${w.bytes.length} bytes, ${names.length} tensors`);
  const rep = await saved('#ft-download-report');
  const repJson = JSON.parse(rep.bytes.toString('utf8'));
  check(repJson.steps?.length === 3 && repJson.evalLossAfter === tr.report.evalLossAfter,
    'fine-tuning panel: the report downloads as JSON', `${rep.name}, ${repJson.steps?.length} steps`);
  r = await sendAndWait(page, 'Still there?', 60);
  check(r && r.generatedTokens > 0, 'the chat works after fine-tuning', `${r?.generatedTokens} tokens`);
  // The distillation panel: context distillation (the model reading an instruction teaches
  // itself without it), then a pruned student healed by its original; live loss and KL charts.
  const inked = (id) => page.evaluate((i) => {
    const c = document.getElementById(i);
    return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, k) => k % 4 === 3 && v > 0);
  }, id);
  const distilRun = async (fields, selects, what) => {
    for (const [id, v] of selects) await page.selectOption(id, v);
    for (const [id, v] of fields) await page.fill(id, v);
    const before = await page.evaluate(() => window.__pupil.state.distills);
    const t0 = Date.now();
    await page.click('#kd-start');
    await page.waitForFunction((n) => window.__pupil.state.distills > n, before, { timeout: 300_000, polling: 200 });
    const out = await page.evaluate(() => ({ report: window.__pupil.lastDistill, status: document.getElementById('kd-status').textContent,
      phase: window.__pupil.state.phase, model: document.getElementById('stat-model').textContent }));
    out.seconds = secs(t0);
    out.charts = (await inked('kd-chart-loss')) && (await inked('kd-chart-kl'));
    if (!out.report) console.log(`     (${what}: ${out.status} ${(await notice(page)).text})`);
    return out;
  };
  await page.evaluate(() => { document.getElementById('distill-panel').open = true; });
  const lines = ['We hold these truths to be self-evident.', 'Life, Liberty and the pursuit of Happiness.',
    'Governments are instituted among Men.', 'Prudence, indeed, will dictate.'].map((t) => JSON.stringify({ text: t })).join('\n');
  const common = [['#kd-steps', '3'], ['#kd-seq', '48'], ['#kd-batch', '2'], ['#kd-lr', '0.01'], ['#kd-eval', '0.25'], ['#kd-tau', '1']];
  const ctxRun = await distilRun([...common, ['#kd-data', lines], ['#kd-alpha', '0'], ['#kd-instruction', 'Answer like a pirate.']],
    [['#kd-student', 'loaded'], ['#kd-teacher', 'context']], 'context');
  const cr = ctxRun.report;
  check(cr && cr.steps.length === 3 && cr.steps.every((x) => x.kl > 0) && cr.evalKlAfter < cr.evalKlBefore
    && ctxRun.phase === 'ready' && ctxRun.status.includes('held-out KL') && ctxRun.charts,
  'distillation panel: context distillation lowers the held-out KL, loss and KL charts drawn', `${ctxRun.status} (${ctxRun.seconds})`);
  await page.check('#kd-alpha-adapt');
  const prRun = await distilRun([...common, ['#kd-data', 'The quick brown fox jumps over the lazy dog. '.repeat(12)], ['#kd-alpha', '0.5'], ['#kd-keep', '1'], ['#kd-align', '0.1']],
    [['#kd-student', 'pruned']], 'pruned');
  await page.uncheck('#kd-alpha-adapt');
  const pr = prRun.report;
  const alphas = pr ? pr.steps.map((x) => x.alpha) : [];
  check(pr && pr.steps.length === 3 && pr.steps.every((x) => x.kl > 0 && x.ce > 0) && pr.teacherEvalLoss > 0 && /: 1 layers/.test(prRun.model)
    && prRun.status.includes('pruned 2 → 1 layers') && prRun.charts && alphas[0] === 0.5 && alphas[1] === 0.5 && alphas[2] !== 0.5,
  'distillation panel: a pruned student (2 → 1 layers) distilled from its original, with alignment and α adapted to the loss',
  `${prRun.status} (${prRun.seconds}); α per step ${alphas.map((a) => a?.toFixed(4)).join(', ')}; ${prRun.model.slice(0, 60)}`);
  const kdw = await saved('#kd-download-weights');
  check(kdw.name.endsWith('.safetensors') && kdw.bytes.length > 8, 'distillation panel: the trained adapters download', `${kdw.name}, ${kdw.bytes.length} bytes`);
  r = await sendAndWait(page, 'And now?', 60);
  check(r && r.generatedTokens > 0, 'the pruned student chats after distillation', `${r?.generatedTokens} tokens`);
  // Device loss now: Recover brings back the pruned and merged student (from the file the
  // engine wrote), not the original, and the original as its teacher.
  await page.evaluate(() => window.__pupil.loseDevice());
  await page.fill('#prompt', 'Still a student?');
  await page.click('#send');
  await waitState(page, ['lost'], 60).catch(() => {});
  if ((await notice(page)).action === 'Recover') {
    const previous = await loads(page);
    await page.click('#notice-action');
    const reload = await waitLoad(page, previous, 120);
    await page.waitForFunction(() => window.__pupil.state.teacherRestored, null, { timeout: 60_000, polling: 200 }).catch(() => {});
    const after = await page.evaluate(() => ({ layers: window.__pupil.state.model?.layers, teacher: window.__pupil.state.teacherRestored?.layers,
      source: window.__pupil.state.source?.kind }));
    check(reload && after.layers === 1 && after.teacher === 2 && after.source === 'blob',
      'Recover after pruning: the 1-layer student comes back with its 2-layer original as the teacher', JSON.stringify(after));
  } else {
    check(false, 'Recover after pruning: the page offers Recover', (await notice(page)).text);
  }
  const long = await longTasksWhileGenerating(page);
  check(long.length === 0, 'no main-thread task over 50 ms while generating (synthetic)', long.map((l) => `${l.duration.toFixed(0)} ms`).join(', '));
  check(errors.length === 0, 'no console errors (synthetic model page)', errors.join(' | '));
  await page.close();
}

async function realModel() {
  const expectedPath = process.env.PUPIL_WEB_EXPECTED || join(root, 'target', 'pupil-web-expected.json');
  const expected = await readFile(expectedPath, 'utf8').then(JSON.parse, () => null);
  if (!check(!!expected, 'native reference present', expectedPath)) {
    console.log('     (cargo test writes it; run the native suite first)');
  }
  const user = expected?.messages?.filter((m) => m.role === 'user').at(-1)?.content || 'What is the capital of France?';
  const system = expected?.messages?.find((m) => m.role === 'system')?.content;
  const maxTokens = expected?.maxTokens || 16;
  const q = new URLSearchParams({ model: 'default', temperature: '0', maxTokens: String(maxTokens), autorun: user });
  if (system) q.set('system', system);

  // First visit: downloads the model into the Cache API.
  let t = Date.now();
  const { page, errors } = await openPage(`?${q}`);
  const load = await waitLoad(page, 0, 240);
  const fetched = served.get(MODEL_PATH) || 0;
  const firstRequests = modelRequests.length;
  if (!check(!!load, 'SmolLM2-135M loads (first visit)', load
    ? `${(load.totalMs / 1000).toFixed(1)} s: download ${(load.downloadMs / 1000).toFixed(1)} s (${fetched} bytes served, ${firstRequests} requests seen), engine load ${(load.loadMs / 1000).toFixed(1)} s; ${load.model.dtype}`
    : (await notice(page)).text)) return page.close();
  t = Date.now();
  // SwiftShader on 2 busy cores has taken 9-21 s a token here; the answer runs all its tokens.
  const r = await waitGeneration(page, 0, 1200);
  await mkdir(join(root, 'target', 'artifacts'), { recursive: true });
  await page.screenshot({ path: join(root, 'target', 'artifacts', 'page.png'), fullPage: true });
  console.log('     screenshot: target/artifacts/page.png');
  if (check(!!r, 'SmolLM2 answers', r ? JSON.stringify(r.text) : 'no result')) {
    const adapter = await page.evaluate(() => window.__pupil.state.info.describe.split('\n')[0].replace(/^adapter\s+/, ''));
    console.log(`     SmolLM2-135M on ${adapter}: prompt ${r.promptTokens} tokens, ` +
      `prefill ${r.prefillTokensPerS.toFixed(1)} tokens/s, first token ${r.timeToFirstTokenMs.toFixed(0)} ms, ` +
      `decode ${r.decodeTokensPerS.toFixed(2)} tokens/s, p50/p99 ${r.latencyP50Ms.toFixed(0)}/${r.latencyP99Ms.toFixed(0)} ms, ` +
      `${r.generatedTokens} tokens (${r.finishReason}), ${r.dispatchesPerToken.toFixed(0)} dispatches and ${r.submitsPerToken.toFixed(1)} submits per token, ` +
      `peak GPU ${(r.peakGpuBytes / 2 ** 20).toFixed(0)} MiB; generation ${secs(t)}`);
    if (expected) {
      const tokens = Array.isArray(r.tokens) ? r.tokens : r.tokenIds;
      check(r.prompt === expected.prompt, 'chat prompt equals the native one', r.prompt === expected.prompt ? '' : `page ${JSON.stringify(r.prompt)} native ${JSON.stringify(expected.prompt)}`);
      check(JSON.stringify(tokens) === JSON.stringify(expected.tokens) && JSON.stringify(r.tokenIds) === JSON.stringify(expected.tokens),
        `greedy token ids equal the native run (${expected.tokens.length} tokens)`,
        `page ${JSON.stringify(tokens)}${tokens === r.tokenIds ? '' : ` streamed ${JSON.stringify(r.tokenIds)}`} native ${JSON.stringify(expected.tokens)}`);
    }
  }
  const long = await longTasksWhileGenerating(page);
  check(long.length === 0, 'no main-thread task over 50 ms while generating (SmolLM2)', long.map((l) => `${l.duration.toFixed(0)} ms`).join(', '));
  check(errors.length === 0, 'no console errors (SmolLM2 page)', errors.join(' | '));
  await page.close();

  // Second visit: the browser restarted on the same profile; the model comes from the Cache API.
  await context.close();
  await launch();
  t = Date.now();
  const before = served.get(MODEL_PATH) || 0;
  const requestsBefore = modelRequests.length;
  const second = await openPage('?model=default');
  const load2 = await waitLoad(second.page, 0, 240);
  const bytes = (served.get(MODEL_PATH) || 0) - before;
  check(load2 && load2.fromCache && bytes === 0 && modelRequests.length === requestsBefore,
    'second visit (browser restarted, same profile) loads from the Cache API, fetching zero model bytes',
    `${bytes} bytes served, ${modelRequests.length - requestsBefore} requests, loaded in ${load2 ? (load2.totalMs / 1000).toFixed(1) : '?'} s`);
  const cached = await second.page.evaluate(() => document.getElementById('cached').textContent);
  check(/SmolLM2-135M-Instruct\.Q4_1\.gguf/.test(cached), 'cached-model list shows the model', cached.trim());
  check(second.errors.length === 0, 'no console errors (second visit)', second.errors.join(' | '));
  await second.page.close();
}

async function limits() {
  // A buffer limit below the model's largest buffer (the embedding alone is ~17 MiB in Q4_1).
  let t = Date.now();
  const { page, errors } = await openPage(`?model=default&maxBufferSize=${4 << 20}`);
  await waitLoad(page, 0, 240);
  let n = await notice(page);
  check(!n.hidden && /does not fit/.test(n.text) && /maxBufferSize/.test(n.text), 'lowered maxBufferSize: "does not fit" message', `${n.text} (${secs(t)})`);
  check(errors.length === 0, 'no console errors (lowered limits)', errors.join(' | '));
  await page.close();

  t = Date.now();
  const nogpu = await openPage('?model=synth', { noWebGPU: true });
  await waitLoad(nogpu.page, 0, 60);
  n = await notice(nogpu.page);
  const phase = await nogpu.page.evaluate(() => document.body.dataset.state);
  check(phase === 'nogpu' && /does not offer WebGPU/.test(n.text), 'no WebGPU: its message', n.text.slice(0, 100));
  await nogpu.page.close();
}

try {
  let t = Date.now();
  await syntheticModel();
  console.log(`     synthetic-model checks: ${secs(t)}`);
  if (!skipReal) {
    t = Date.now();
    await realModel();
    console.log(`     SmolLM2 checks: ${secs(t)}`);
  }
  t = Date.now();
  await limits();
  console.log(`     limit checks: ${secs(t)}`);
} catch (e) {
  check(false, 'page test', e.stack || String(e));
} finally {
  await context?.close();
  server.close();
  await rm(profile, { recursive: true, force: true });
}
console.log(`demo page: ${passed} passed, ${failed} failed (${secs(t0)})`);
process.exit(failed ? 1 : 0);
