// Pupil's static file server, for the demo page (scripts/run.sh) and the browser tests.
//   node scripts/serve.mjs [--port 8080] [--host 127.0.0.1]     (PORT also sets the port)
// Serves the repository root (the page is index.html, it imports target/web/pkg/pupil.js), plus
// /models/<file>.gguf from the model cache ($PUPIL_CACHE or ~/.cache/pupil, where
// scripts/fetch-model.sh puts the default model). Files are streamed with their content-length
// (the page's download progress bar needs it) and single byte ranges are honoured; nothing is
// read whole into memory, so a 1 GiB model costs no server RAM.
import { createServer } from 'node:http';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, dirname, extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.css': 'text/css', '.png': 'image/png',
  '.svg': 'image/svg+xml', '.gguf': 'application/octet-stream',
};

export const modelCacheDir = () => process.env.PUPIL_CACHE || join(homedir(), '.cache', 'pupil');

// Map a URL path to a file, or null (403) when it escapes its root or names a hidden file
// (.git, .ci, ...): the server is for localhost, but there is no reason to serve those.
function resolvePath(base, models, path) {
  if (path.split('/').some((part) => part.startsWith('.') && part !== '')) return null;
  if (path.startsWith('/models/')) {
    const name = path.slice('/models/'.length);
    if (name !== basename(name) || extname(name) !== '.gguf') return null;
    return join(models, name);
  }
  const file = normalize(join(base, path));
  return file.startsWith(base) ? file : null;
}

// options.onServed(path, bytes) is called after each response body is sent (tests count model
// bytes with it); options.models overrides the model directory.
export function serve(root, port = 0, options = {}) {
  const base = resolve(root);
  const models = resolve(options.models || modelCacheDir());
  const host = options.host || '127.0.0.1';
  const server = createServer(async (req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
      let file = resolvePath(base, models, path);
      if (!file) { res.writeHead(403).end('forbidden'); return; }
      let info = await stat(file);
      if (info.isDirectory()) { file = join(file, 'index.html'); info = await stat(file); }
      const headers = {
        'content-type': TYPES[extname(file)] || 'application/octet-stream',
        'cache-control': 'no-store', 'accept-ranges': 'bytes',
      };
      let start = 0, end = info.size - 1, status = 200;
      const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range || '');
      if (range && (range[1] || range[2])) {
        start = range[1] ? Number(range[1]) : Math.max(0, info.size - Number(range[2]));
        end = range[1] && range[2] ? Math.min(Number(range[2]), info.size - 1) : info.size - 1;
        if (start > end) {
          res.writeHead(416, { 'content-range': `bytes */${info.size}` }).end(); return;
        }
        status = 206;
        headers['content-range'] = `bytes ${start}-${end}/${info.size}`;
      }
      headers['content-length'] = String(end - start + 1);
      res.writeHead(status, headers);
      if (req.method === 'HEAD' || info.size === 0) { res.end(); return; }
      const stream = createReadStream(file, { start, end });
      stream.on('error', () => res.destroy());
      res.on('close', () => {
        stream.destroy();
        options.onServed?.(path, res.writableFinished ? end - start + 1 : stream.bytesRead);
      });
      stream.pipe(res);
    } catch {
      if (!res.headersSent) res.writeHead(404).end('not found'); else res.destroy();
    }
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok(server));
  });
}

// `node scripts/serve.mjs`: serve the repository root for the demo page.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : dflt; };
  const port = Number(opt('port', process.env.PORT || 8080));
  const host = opt('host', '127.0.0.1');
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  try {
    await serve(root, port, { host });
  } catch (e) {
    console.error(e.code === 'EADDRINUSE' ? `port ${port} is in use: set PORT to another one` : String(e));
    process.exit(1);
  }
  console.log(`Pupil demo page: http://${host === '127.0.0.1' ? 'localhost' : host}:${port}/`);
  console.log(`  models served from ${modelCacheDir()} under /models/; Ctrl-C stops the server`);
}
