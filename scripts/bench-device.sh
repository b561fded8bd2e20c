#!/usr/bin/env bash
# Prepare an H100 (or any lent GPU machine) benchmark run, then print the one command to run
# there. The device machine has no Rust toolchain or network: we carry a native x86-64 build
# of pupil-bench and the Vulkan loader's Debian packages (.gl/), as the device notes say.
#   scripts/bench-device.sh            # builds, fetches the loader debs, prints the command
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin pupil-bench
mkdir -p .device-bin && cp target/release/pupil-bench .device-bin/
grep -qx '/.device-bin/' .git/info/exclude 2>/dev/null || echo '/.device-bin/' >> .git/info/exclude
if [ ! -d .gl ] || [ -z "$(ls .gl/*.deb 2>/dev/null)" ]; then
  grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
cat <<'CMD'
Run on the device (carry [".gl", ".device-bin"]):
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; .device-bin/pupil-bench matmul 2>&1 | tee $OUT/bench-matmul.txt
CMD
