#!/usr/bin/env bash
# Builds the CUDA binary into target-cuda/release/slayer (see scripts/cuda-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
cargo build --release --features cuda --target-dir target-cuda "$@"
echo "built target-cuda/release/slayer" >&2
