#!/usr/bin/env bash
# Build the npm package `pupil-llm` into target/npm/pkg and pack it into target/npm/*.tgz.
# Takes the WASM build from target/web/pkg (scripts/build-web.sh makes it), the page's worker and
# model cache code from www/ (copied, with the worker's import of pupil.js pointed at the
# package's copy: the logic is not forked) and the API from npm/.
# Fails when the gzipped .wasm is over the budget: PUPIL_WASM_GZ_BUDGET bytes, default 1.5 MiB
# (measured 1.21 MiB gzip -9 for a 4.0 MB wasm, wasm-release profile, Dec 2026).
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${PUPIL_WASM_GZ_BUDGET:-1572864}
web=target/web/pkg
out=target/npm/pkg
for f in pupil.js pupil.d.ts pupil_bg.wasm; do
  [ -f "$web/$f" ] || { echo "missing $web/$f: run scripts/build-web.sh first" >&2; exit 1; }
done

rm -rf target/npm
mkdir -p "$out"
cp npm/package.json npm/index.js npm/index.d.ts npm/README.md "$out/"
cp "$web/pupil.js" "$web/pupil.d.ts" "$web/pupil_bg.wasm" www/models.js "$out/"
sed "s#'../target/web/pkg/pupil.js'#'./pupil.js'#" www/worker.js > "$out/worker.js"
grep -q "from './pupil.js'" "$out/worker.js" || { echo "www/worker.js: its import of pupil.js was not rewritten" >&2; exit 1; }
if grep -q "target/web/pkg" "$out/worker.js"; then echo "worker.js still points at target/" >&2; exit 1; fi

gz=$(gzip -9 -c "$out/pupil_bg.wasm" | wc -c)
raw=$(wc -c < "$out/pupil_bg.wasm")
echo "pupil_bg.wasm: $raw bytes, $gz gzipped (budget $budget)"
if [ "$gz" -gt "$budget" ]; then echo "the gzipped wasm is over its budget" >&2; exit 1; fi

(cd target/npm && npm pack ./pkg --pack-destination . --loglevel=warn >/dev/null)
ls -l target/npm/*.tgz
