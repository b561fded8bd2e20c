// The npm package, tested as a user gets it: scripts/build-npm.sh builds and packs the tarball,
// then three fresh apps made from tests/npm/apps/ install it in a temp dir —
//   vite: a Vite 7 app (vite build), webpack: a webpack 5 app (no worker or wasm config),
//   plain: an HTML page importing the package's ESM from its served node_modules path —
// and each built app runs tests/npm/apps/check.js in headless Chromium (WebGPU on SwiftShader):
// the synthetic tiny model in a worker, a streamed and a non-streamed chat completion in
// OpenAI's shapes, n: 2, abort, generate(), dispose() with tracked GPU memory back to zero.
// Also `tsc --noEmit` over tests/npm/types-check.ts (correct use plus @ts-expect-error misuse).
// Prints each check and the phase timings; exits 1 on any failure.
// Usage: node tests/npm/run.mjs [--keep]   (--keep leaves the temp dir for inspection)
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from '../browser/node_modules/playwright-core/index.mjs';
import { serve } from '../../scripts/serve.mjs';

const CHROMIUM_ARGS = [
  '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const keep = process.argv.includes('--keep');
const run = promisify(execFile);

let passed = 0, failed = 0;
const t0 = Date.now();
const timings = [];
const secs = (t) => `${((Date.now() - t) / 1000).toFixed(1)} s`;
function check(ok, what, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? ` — ${detail}` : ''}`);
  ok ? passed++ : failed++;
  return ok;
}
async function timed(name, f) {
  const t = Date.now();
  try { return await f(); } finally { timings.push(`${name.padEnd(40)} ${secs(t)}`); }
}
// Runs a command; on failure prints its output and throws.
async function sh(cmd, args, cwd) {
  try {
    return await run(cmd, args, { cwd, maxBuffer: 64 << 20, env: { ...process.env, NO_COLOR: '1' } });
  } catch (e) {
    console.log(`$ ${cmd} ${args.join(' ')} (in ${cwd})\n${e.stdout || ''}${e.stderr || ''}`);
    throw e;
  }
}
const NPM_FLAGS = ['--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'];

// 1. Build and pack.
await timed('build + pack (scripts/build-npm.sh)', () => sh('bash', ['scripts/build-npm.sh'], root));
const tgz = join(root, 'target', 'npm', (await readdir(join(root, 'target', 'npm'))).find((f) => f.endsWith('.tgz')));
const tmp = await mkdtemp(join(tmpdir(), 'pupil-npm-'));
const APPS = ['vite', 'webpack', 'plain'];

// 2. The apps: template + check.js, the tarball as a dependency, npm install (in parallel).
async function makeApp(name) {
  const dir = join(tmp, name);
  await cp(join(here, 'apps', name), dir, { recursive: true });
  await cp(join(here, 'apps', 'check.js'), join(dir, 'check.js'));
  const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8'));
  pkg.dependencies = { 'pupil-llm': `file:${tgz}` };
  await writeFile(join(dir, 'package.json'), JSON.stringify(pkg, null, 2));
  await timed(`npm install (${name})`, () => sh('npm', ['install', ...NPM_FLAGS], dir));
  return dir;
}
const dirs = {};
try {
  const made = await Promise.all(APPS.map(makeApp));
  APPS.forEach((a, i) => { dirs[a] = made[i]; });
  check(true, 'the tarball installs in fresh vite, webpack and plain apps', tgz.replace(`${root}/`, ''));
} catch (e) {
  check(false, 'npm install of the apps', e.message.split('\n')[0]);
}

// 3. Types: tsc over types-check.ts against the installed package.
if (dirs.plain) {
  await cp(join(here, 'types-check.ts'), join(dirs.plain, 'types-check.ts'));
  await cp(join(here, 'tsconfig.json'), join(dirs.plain, 'tsconfig.json'));
  try {
    await timed('tsc --noEmit (types-check.ts)', () => sh(join(dirs.plain, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'], dirs.plain));
    check(true, 'tsc --noEmit: correct use type-checks, every @ts-expect-error misuse is an error');
  } catch {
    check(false, 'tsc --noEmit over types-check.ts');
  }
}

// 4. Builds: what each app serves.
const served = {};
if (dirs.vite) {
  try {
    await timed('vite build', () => sh(join(dirs.vite, 'node_modules', '.bin', 'vite'), ['build', '--logLevel', 'warn'], dirs.vite));
    served.vite = join(dirs.vite, 'dist');
    const assets = await readdir(join(served.vite, 'assets'));
    check(assets.some((f) => f.endsWith('.wasm')) && assets.some((f) => /worker/.test(f)),
      'vite build emits the wasm and the worker as assets', assets.join(', '));
  } catch { check(false, 'vite build'); }
}
if (dirs.webpack) {
  try {
    await timed('webpack build', () => sh(join(dirs.webpack, 'node_modules', '.bin', 'webpack'), [], dirs.webpack));
    served.webpack = join(dirs.webpack, 'dist');
    await cp(join(dirs.webpack, 'public', 'index.html'), join(served.webpack, 'index.html'));
    const files = await readdir(served.webpack);
    check(files.some((f) => f.endsWith('.wasm')), 'webpack emits the wasm as an asset', files.join(', '));
  } catch { check(false, 'webpack build'); }
}
if (dirs.plain) served.plain = dirs.plain;

// 5. Each app in headless Chromium.
const profile = await mkdtemp(join(tmpdir(), 'pupil-npm-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS,
});
for (const app of APPS) {
  if (!served[app]) continue;
  const server = await serve(served[app], 0);
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  const t = Date.now();
  try {
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    await page.waitForFunction(() => window.__npmResult, null, { timeout: 120_000, polling: 200 });
    const result = await page.evaluate(() => window.__npmResult);
    for (const c of result.checks) check(c.ok, `[${app}] ${c.what}`, c.detail);
    check(!result.error, `[${app}] the app's checks ran to the end`, result.error || `${secs(t)}`);
    check(errors.length === 0, `[${app}] no console errors`, errors.slice(0, 3).join(' | '));
  } catch (e) {
    check(false, `[${app}] the page ran`, `${e.message.split('\n')[0]} ${errors.slice(0, 3).join(' | ')}`);
  }
  timings.push(`${`chromium (${app})`.padEnd(40)} ${secs(t)}`);
  await page.close();
  server.close();
}
await context.close();
await rm(profile, { recursive: true, force: true });
if (!keep) await rm(tmp, { recursive: true, force: true });
else console.log(`apps kept in ${tmp}`);

console.log('--- timings');
for (const line of timings) console.log(`  ${line}`);
console.log(`${passed} passed, ${failed} failed in ${secs(t0)}`);
process.exit(failed ? 1 : 0);
