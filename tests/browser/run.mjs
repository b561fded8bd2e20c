// Runs the kernel test page in headless Chromium (WebGPU on SwiftShader here) and reports:
// every shader variant compiled by Tint, and every self-test case through Pupil's wgpu path.
// Usage: node run.mjs [--families rms_norm,rope] [--timeout 600]
import { chromium } from 'playwright-core';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : dflt; };
const timeoutS = Number(opt('timeout', '900'));
const families = opt('families', '');
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const CHROMIUM_ARGS = [
  '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const server = await serve(root);
const url = `http://127.0.0.1:${server.address().port}/tests/browser/kernels.html?families=${families}`;
const profile = await mkdtemp(join(tmpdir(), 'pupil-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS,
});
let failed = 0, passed = 0, skipped = 0;
const consoleErrors = [];
try {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => window.__pupilResult, null, { timeout: timeoutS * 1000, polling: 500 });
  const r = await page.evaluate(() => window.__pupilResult);
  if (r.error) throw new Error(`page failed: ${r.error}`);
  console.log(r.info.describe);
  console.log(`adapter features: ${r.tint.adapter_features.join(', ')}`);
  console.log(`Pupil via wgpu: f16 path ${r.selftest.caps.f16}, subgroup path ${r.selftest.caps.subgroups}`);
  for (const v of r.tint.variants) {
    if (v.status === 'skipped') { skipped++; continue; }
    console.log(`${v.status === 'passed' ? 'ok  ' : 'FAIL'} tint ${v.name} ${v.detail}`);
    v.status === 'passed' ? passed++ : failed++;
  }
  for (const c of r.selftest.reports) {
    console.log(`${c.passed ? 'ok  ' : 'FAIL'} ${c.op} ${c.dtype} ${c.subgroups ? 'sg' : 'shm'} ${c.case} rel ${c.rel_err.toExponential(2)} ${c.detail}`);
    c.passed ? passed++ : failed++;
  }
  if (r.selftest.reports.length === 0) { console.log('FAIL no self-test cases ran'); failed++; }
  const skippedNames = r.tint.variants.filter((v) => v.status === 'skipped');
  if (skippedNames.length) console.log(`skipped ${skippedNames.length} variants: ${skippedNames[0].detail}`);
  // Sampling: the browser's seeded token stream must equal the native run's, which
  // `cargo test --test sampling` writes (PUPIL_SAMPLING_STREAM overrides the path).
  const nativePath = process.env.PUPIL_SAMPLING_STREAM || join(root, 'target', 'pupil-sampling-native.json');
  const native = await readFile(nativePath, 'utf8').then(JSON.parse, () => null);
  const web = JSON.parse(await page.evaluate(async () => (await import('/target/web/pkg/pupil.js')).sampling_stream()));
  if (!native) {
    console.log(`FAIL sampling stream: no native stream at ${nativePath} (run cargo test --test sampling first)`); failed++;
  } else {
    const diff = web.streams.findIndex((s, i) => JSON.stringify([s.name, s.tokens]) !== JSON.stringify([native.streams[i]?.name, native.streams[i]?.tokens]));
    const routes = web.streams.map((s) => `${s.name} ${s.candidates}/${s.full_row}`).join(', ');
    if (diff >= 0 || web.streams.length !== native.streams.length) {
      const s = web.streams[diff] || {};
      console.log(`FAIL sampling stream differs from native at ${s.name}: browser ${JSON.stringify(s.tokens)} native ${JSON.stringify(native.streams[diff]?.tokens)}`); failed++;
    } else {
      console.log(`ok   sampling stream: ${web.streams.length} configs x ${web.steps} tokens identical to native (candidates/full-row reads: ${routes})`); passed++;
    }
  }
  // Engine API on a synthetic model: tokens must equal the native run that
  // `cargo test --test web_reference` writes (PUPIL_WEB_SYNTH overrides the path).
  const synthPath = process.env.PUPIL_WEB_SYNTH || join(root, 'target', 'pupil-web-synth-native.json');
  const synth = await readFile(synthPath, 'utf8').then(JSON.parse, () => null);
  if (!synth) {
    console.log(`FAIL engine: no native run at ${synthPath} (run cargo test --test web_reference first)`); failed++;
  } else {
    for (const c of await page.evaluate((n) => window.__pupilEngineChecks(n), synth)) {
      console.log(`${c.ok ? 'ok  ' : 'FAIL'} engine: ${c.name}${c.ok ? '' : ` (${c.detail})`}`);
      c.ok ? passed++ : failed++;
    }
  }
  // Training steps: losses must equal the native run (cargo test --test web_reference).
  const trainPath = process.env.PUPIL_WEB_TRAIN || join(root, 'target', 'pupil-web-train-native.json');
  const train = await readFile(trainPath, 'utf8').then(JSON.parse, () => null);
  if (!train) {
    console.log(`FAIL train: no native run at ${trainPath} (run cargo test --test web_reference first)`); failed++;
  } else {
    for (const c of await page.evaluate((n) => window.__pupilTrainChecks(n), train)) {
      console.log(`${c.ok ? 'ok  ' : 'FAIL'} train: ${c.name}${c.ok ? '' : ` (${c.detail})`}`);
      c.ok ? passed++ : failed++;
    }
  }
  // Distillation runs: losses and KLs must equal the native runs (cargo test --test web_reference).
  const distillPath = process.env.PUPIL_WEB_DISTILL || join(root, 'target', 'pupil-web-distill-native.json');
  const distill = await readFile(distillPath, 'utf8').then(JSON.parse, () => null);
  if (!distill) {
    console.log(`FAIL distill: no native run at ${distillPath} (run cargo test --test web_reference first)`); failed++;
  } else {
    for (const c of await page.evaluate((n) => window.__pupilDistillChecks(n), distill)) {
      console.log(`${c.ok ? 'ok  ' : 'FAIL'} distill: ${c.name}${c.ok ? '' : ` (${c.detail})`}`);
      c.ok ? passed++ : failed++;
    }
  }
  if (consoleErrors.length) { console.log(`FAIL console errors:\n  ${consoleErrors.join('\n  ')}`); failed++; }
} catch (e) {
  console.log(`FAIL ${e.message}`);
  failed++;
} finally {
  await context.close();
  server.close();
  await rm(profile, { recursive: true, force: true });
}
console.log(`browser: ${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed ? 1 : 0);
