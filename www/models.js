// Model files: download with progress, keep them in the Cache API so a second visit downloads
// nothing, list and delete them. Used by the worker (downloads, so the page never touches the
// bytes) and by the page (the cached-model list). URLs here are absolute: a worker resolves
// relative URLs against its own script, not the page.
//
// A model comes out of here as a Blob. A Blob from the Cache API or a File from an <input> is a
// handle to bytes on disk; the engine reads it by byte ranges and never copies it whole.

export const CACHE_NAME = 'pupil-models-v1'; // bump the version if the stored format changes

// The models the picker offers. `url` is relative to the page.
export const MODELS = [
  { id: 'smollm2', label: 'SmolLM2-135M-Instruct Q4_1 (94 MiB)', url: 'models/SmolLM2-135M-Instruct.Q4_1.gguf' },
];

// Errors carry a `name` the page maps to an explanation, like the engine's errors.
export function namedError(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

export const formatBytes = (n) => {
  if (!Number.isFinite(n)) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(n < 10 ? 2 : 1) : n} ${units[i]}`;
};

// null where the Cache API is missing: it needs a secure context (https or localhost).
async function openCache() {
  return typeof caches === 'undefined' ? null : caches.open(CACHE_NAME);
}

export async function storageEstimate() {
  if (!navigator.storage?.estimate) return null;
  const { usage = 0, quota = 0 } = await navigator.storage.estimate();
  return { usage, quota, free: Math.max(0, quota - usage) };
}

function quotaMessage(size, est) {
  const need = size ? `${formatBytes(size)} model` : 'model';
  const have = est ? ` (this site may use ${formatBytes(est.quota)}, ${formatBytes(est.usage)} already used)` : '';
  return `The browser's storage quota has no room for the ${need}${have}, so it is not cached and ` +
    'will be downloaded again on the next visit. Delete cached models below, or free disk space ' +
    '(browsers give a site a share of the free disk), to cache it.';
}

export async function cachedModel(url) {
  const cache = await openCache();
  const response = cache && await cache.match(url);
  return response ? response.blob() : null;
}

// Download `url` (or take it from the cache). onProgress(bytesDone, bytesTotal) — total is 0 when
// the server sends no content-length. Resolves { blob, fromCache, bytesFetched, note }: `note`
// explains, when set, why the model was not cached.
export async function fetchModel(url, onProgress = () => {}) {
  const hit = await cachedModel(url);
  if (hit) {
    onProgress(hit.size, hit.size);
    return { blob: hit, fromCache: true, bytesFetched: 0 };
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw namedError('Network', `Could not download ${url}: ${e.message}. ` +
      'A model on another site must allow cross-origin requests (CORS).');
  }
  if (!response.ok) throw namedError('Network', `Could not download ${url}: HTTP ${response.status} ${response.statusText}`);
  // With content-encoding the header counts compressed bytes, not what the body yields.
  const encoded = (response.headers.get('content-encoding') || 'identity') !== 'identity';
  const total = encoded ? 0 : Number(response.headers.get('content-length')) || 0;
  let done = 0;
  const counted = response.body.pipeThrough(new TransformStream({
    transform(chunk, controller) {
      done += chunk.byteLength;
      onProgress(done, total);
      controller.enqueue(chunk);
    },
  }));

  const cache = await openCache();
  const est = await storageEstimate();
  if (!cache || (total && est && est.free < total)) {
    const blob = await new Response(counted).blob();
    const note = cache ? quotaMessage(total, est)
      : 'The Cache API is unavailable (the page needs https or localhost), so the model is not cached.';
    return { blob, fromCache: false, bytesFetched: done, note };
  }
  const headers = { 'content-type': 'application/octet-stream', 'x-pupil-size': String(total) };
  try {
    await cache.put(url, new Response(counted, { headers }));
  } catch (e) {
    if (e.name !== 'QuotaExceededError') throw e;
    // The body is spent: fetch again, this time straight into a Blob.
    const again = await fetch(url);
    const blob = await again.blob();
    return { blob, fromCache: false, bytesFetched: done + blob.size, note: quotaMessage(total, await storageEstimate()) };
  }
  const blob = await cachedModel(url);
  if (total && blob.size !== total) {
    await cache.delete(url);
    throw namedError('Network', `The download of ${url} stopped early (${blob.size} of ${total} bytes)`);
  }
  // Ask the browser not to evict the cache under storage pressure (it may say no; harmless).
  navigator.storage?.persist?.().catch(() => {});
  return { blob, fromCache: false, bytesFetched: done };
}

// [{ url, name, size }] for every cached model.
export async function listCachedModels() {
  const cache = await openCache();
  if (!cache) return [];
  const out = [];
  for (const request of await cache.keys()) {
    const response = await cache.match(request);
    if (!response) continue;
    const size = Number(response.headers.get('x-pupil-size')) || (await response.blob()).size;
    out.push({ url: request.url, name: decodeURIComponent(new URL(request.url).pathname.split('/').pop()), size });
  }
  return out;
}

export async function deleteCachedModel(url) {
  const cache = await openCache();
  return cache ? cache.delete(url) : false;
}
