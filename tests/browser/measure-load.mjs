// Measures loading and running a large model in the demo page (headless Chromium; WebGPU on
// SwiftShader here): load time, peak wasm heap (the linear memory only grows, so its size after
// the load is the peak), GPU memory, time to first token and tokens/s. Not part of the test
// suite (minutes on SwiftShader); figures go into issue notes.
//   node tests/browser/measure-load.mjs FILE.gguf [--tokens 4] [--prompt "Hello"] [--load-only] [--timeout 1800]
// e.g. after `pupil synth qwen2-1.5b -o /tmp/synth/qwen2-1.5b.gguf` (924 MB).
import { chromium } from 'playwright-core';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : dflt; };
const file = args[0] && !args[0].startsWith('--') ? resolve(args[0]) : null;
if (!file) { console.error('usage: node tests/browser/measure-load.mjs FILE.gguf [--tokens N]'); process.exit(2); }
process.env.PUPIL_CACHE = dirname(file); // the server's /models/ directory
const { serve } = await import('./serve.mjs');
const tokens = Number(opt('tokens', '4'));
const timeoutS = Number(opt('timeout', '1800'));
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const server = await serve(root);
const query = new URLSearchParams({ model: `/models/${basename(file)}`, dtype: 'f32', temperature: '0',
  maxTokens: String(tokens), autorun: opt('prompt', 'Hello') });
const context = await chromium.launchPersistentContext(await mkdtemp(join(tmpdir(), 'pupil-measure-')), {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`console error: ${m.text()}`); });
  const t0 = Date.now();
  await page.goto(`http://127.0.0.1:${server.address().port}/?${query}`);
  await page.waitForFunction(() => window.__pupil?.state.loads > 0 || ['failed', 'nogpu'].includes(window.__pupil?.state.phase),
    null, { timeout: timeoutS * 1000, polling: 500 });
  const load = await page.evaluate(() => window.__pupil.lastLoad);
  if (!load) throw new Error(`load failed: ${await page.evaluate(() => document.getElementById('notice-text').textContent)}`);
  const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  console.log(`model        ${basename(file)}: ${mib(load.fileBytes)} file, ${load.model.arch}, ${load.model.layers} layers`);
  console.log(`load         download (into the Cache API) ${(load.downloadMs / 1000).toFixed(1)} s, engine ${(load.loadMs / 1000).toFixed(1)} s`);
  console.log(`wasm heap    ${mib(load.wasmHeapBytes)} (linear memory after the load = its peak)`);
  console.log(`GPU memory   ${mib(load.memory.allocatedBytes)} allocated after the load (weights ${mib(load.model.weightBytes)})`);
  if (!args.includes('--load-only')) {
    await page.waitForFunction(() => window.__pupil.state.generations > 0, null, { timeout: timeoutS * 1000, polling: 500 });
    const r = await page.evaluate(() => window.__pupil.lastResult);
    if (!r) throw new Error('generation failed');
    console.log(`generation   ${r.promptTokens} prompt tokens, ${r.generatedTokens} generated: time to first token ${(r.timeToFirstTokenMs / 1000).toFixed(1)} s, ` +
      `prefill ${r.prefillTokensPerS.toFixed(2)} tokens/s, decode ${r.decodeTokensPerS.toFixed(3)} tokens/s (p50 ${(r.latencyP50Ms / 1000).toFixed(1)} s/token)`);
  }
  console.log(`total        ${((Date.now() - t0) / 1000).toFixed(0)} s`);
} finally {
  await context.close();
  server.close();
}
