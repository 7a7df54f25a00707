#!/usr/bin/env bash
# Builds the CUDA binary into target-cuda/release/slayer (see scripts/cuda-env.sh), and a
# stripped, xz-compressed copy in gpu-bin/slayer.xz (~10 MB) small enough to send to a GPU
# machine (bench/gpu-check.sh unpacks it there; the stripped binary itself is ~70 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
cargo build --release --features cuda --target-dir target-cuda "$@"
mkdir -p gpu-bin
strip -o gpu-bin/slayer target-cuda/release/slayer
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], "rb"), lzma.open(sys.argv[2], "wb", preset=6))' \
  gpu-bin/slayer gpu-bin/slayer.xz
rm gpu-bin/slayer
echo "built target-cuda/release/slayer and gpu-bin/slayer.xz ($(du -h gpu-bin/slayer.xz | cut -f1))" >&2
