#!/usr/bin/env bash
# Source this to build slayer with `--features cuda` on any x86_64 Linux box, with or without a
# GPU or a system CUDA toolkit:
#
#     source scripts/cuda-env.sh [PREFIX]      # default PREFIX: .cuda-toolkit/ in the repo
#     cargo build --release --features cuda --target-dir target-cuda
#
# It installs CUDA 13.0.x from PyPI wheels into PREFIX once (~1.2 GB), repairs their layout for
# nvcc and the linker, and exports the four variables cudarc and candle-kernels read. Keep them
# identical for every cargo command of the cuda build: if they change, cudarc's build script reruns
# and fails. Why 13.0 exactly: driver 580 JIT-compiles PTX up to ISA 9.0 only, which newer nvcc
# exceeds. CUDA_COMPUTE_CAP defaults to 90 (H100/H200); override it before sourcing for other GPUs.
_slayer_cuda_setup() {
  set -euo pipefail
  local root prefix cu py
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  prefix="${1:-$root/.cuda-toolkit}"
  py="${PYTHON:-python3}"
  cu="$prefix/nvidia/cu13"
  if [ ! -x "$cu/bin/nvcc" ]; then
    echo "installing CUDA 13.0 build tools into $prefix (once)…" >&2
    "$py" -m pip install --quiet --no-cache-dir --target "$prefix" \
      "nvidia-cuda-nvcc==13.0.48" "nvidia-cuda-crt==13.0.48" "nvidia-nvvm==13.0.48" \
      "nvidia-cuda-runtime==13.0.48" "nvidia-cuda-cccl==13.0.50" \
      "nvidia-cublas==13.0.0.19" "nvidia-curand==10.4.0.35" "nvidia-cuda-nvrtc==13.0.48"
  fi
  # nvcc.profile looks for cicc in nvvm/bin; the wheel ships it in bin/.
  mkdir -p "$cu/nvvm/bin"
  [ -e "$cu/nvvm/bin/cicc" ] || ln -s ../../bin/cicc "$cu/nvvm/bin/cicc"
  # The wheels ship only versioned libraries; the linker wants the plain names.
  local l
  for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "$cu/lib/lib$l.so"; done
  ln -sf libcurand.so.10 "$cu/lib/libcurand.so"
  # A link-time-only libcuda.so stub exporting every cu* entry point of cuda.h; the driver's real
  # libcuda.so.1 is used at run time. Never ship the stub.
  if [ ! -f "$cu/lib/stubs/libcuda.so" ]; then
    mkdir -p "$cu/lib/stubs"
    local h="$cu/include/cuda.h" syms
    syms="$( { grep -ohE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$h" "$cu/include/cudaProfiler.h" | tr -d '( \t'
               grep -ohE '^#define +cu[A-Za-z0-9_]+ +cu[A-Za-z0-9_]+' "$h" | awk '{print $3}'
               grep -ohE '__CUDA_API_PTDS\((cu[A-Za-z0-9_]+)\)' "$h" | sed -E 's/.*\((.*)\)/\1\n\1_ptds/'
               grep -ohE '__CUDA_API_PTSZ\((cu[A-Za-z0-9_]+)\)' "$h" | sed -E 's/.*\((.*)\)/\1\n\1_ptsz/'
               echo cuProfilerInitialize
             } | grep -v '^$' | sort -u )"
    echo "$syms" | sed 's/.*/int &(void) { return 999; }/' > "$cu/lib/stubs/cuda_stub.c"
    "${CC:-cc}" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$cu/lib/stubs/cuda_stub.c"
  fi
  echo "$cu"
}
_slayer_cu="$( (_slayer_cuda_setup "$@") )" || { echo "cuda-env.sh: setup failed" >&2; return 1 2>/dev/null || exit 1; }
export CUDA_HOME="$_slayer_cu"
export NVCC="$_slayer_cu/bin/nvcc"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
unset _slayer_cu
echo "CUDA build environment: CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
