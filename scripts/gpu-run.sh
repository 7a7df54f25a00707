#!/usr/bin/env bash
# Runs a CUDA-built slayer on a GPU machine without a CUDA toolkit: the CUDA 13 user-space
# libraries (cuBLAS, cuRAND, cudart) are taken from a PyTorch installation's `nvidia` package when
# they are not already known to the loader; libcuda.so.1 comes from the driver.
#     scripts/gpu-run.sh path/to/slayer ARGS...
set -euo pipefail
bin="$1"; shift
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13'; then
  lib="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
  [ -n "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
exec "$bin" "$@"
