#!/usr/bin/env bash
# The GPU check, in one call on a GPU machine with no Rust toolchain (see ../README.md "GPU"):
# correctness of the CUDA build against the CPU, then training and decoding throughput and peak
# memory of slayer beside PyTorch + HF transformers on the same GPU, printed as one Markdown table
# and written to OUT_DIR (results.json, table.md, every command's output).
#
#     bash bench/gpu-check.sh SLAYER_BINARY [OUT_DIR]
#
# SLAYER_BINARY is a `--features cuda` build, or its `.xz` as scripts/build-cuda.sh leaves it in
# gpu-bin/ (unpacked here into a temporary directory). The Python that holds torch
# and transformers runs the reference (PYTHON, default python3); the CUDA 13 libraries come from
# its `nvidia` package (scripts/gpu-run.sh). Memory: `slayer plan check` counts ~58 GB for the 8B
# shape at batch 1 × 2048 in bf16 (f32 master weights and AdamW moments are 21 GB of it), so an
# H100 should hold it; an H200 leaves room. Everything takes about 5 minutes.
# Environment overrides, for a dry run of the plumbing on a CPU box:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SEQ=64 GPU_CHECK_STEPS=1 GPU_CHECK_SHAPES="smollm2-135m:1"
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "$1")"
out="${2:-${OUT:-gpu-check-out}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [[ "$bin" == *.xz ]]; then
  unpacked="$(mktemp -d)/slayer"
  "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin" "$unpacked"
  chmod +x "$unpacked"
  bin="$unpacked"
fi
device="${GPU_CHECK_DEVICE:-cuda}"
seq="${GPU_CHECK_SEQ:-2048}"
steps="${GPU_CHECK_STEPS:-10}"
warmup="${GPU_CHECK_WARMUP:-2}"
limit="${GPU_CHECK_TIMEOUT:-150}"
# shape:batch, the issue's three configurations.
shapes="${GPU_CHECK_SHAPES:-smollm2-135m:8 llama-3.2-1b:4 llama-3-8b:1}"
slayer() { timeout "$limit" "$here/scripts/gpu-run.sh" "$bin" --device "$device" "$@"; }
reference() { timeout "$limit" "$py" "$here/bench/pytorch_gpu_train.py" "$@" --device "$device"; }

# Runs one measurement; its JSON goes to $out/NAME.json, stderr to $out/NAME.err.
measure() {
  local name="$1"; shift
  local t0=$SECONDS
  if "$@" >"$out/$name.json" 2>"$out/$name.err"; then
    echo "ok   $name ($((SECONDS - t0)) s)" >&2
  else
    echo "FAIL $name ($((SECONDS - t0)) s, exit $?): $(tail -n 2 "$out/$name.err" | tr '\n' ' ')" >&2
    rm -f "$out/$name.json"
  fi
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  date -u +%FT%TZ; } >"$out/machine.txt" 2>&1
cat "$out/machine.txt" >&2

# 1. Correctness: the same random SmolLM2 (host-drawn weights, identical on both devices) trained
#    4 steps in f32 on this device and on the CPU: the losses must agree.
if [ "$device" != cpu ]; then
  common=(bench train --shape smollm2-135m --dtype f32 --init host --batch 1 --seq-len 256 --steps 4 --warmup 0 --json)
  measure check-gpu slayer "${common[@]}"
  measure check-cpu timeout "$limit" "$here/scripts/gpu-run.sh" "$bin" --device cpu "${common[@]}"
fi
# Every hand-written op on this device against the CPU in f32 (NaN-poisoned buffers).
for dtype in f32 bf16; do measure "ops-$dtype" slayer bench ops --dtype "$dtype" --json; done

# 2. Training throughput and memory, PyTorch then slayer, per shape.
for entry in $shapes; do
  shape="${entry%%:*}"; batch="${entry##*:}"
  "$bin" bench train --shape "$shape" --describe >"$out/$shape.describe.json"
  measure "torch-train-$shape" reference train "$out/$shape.describe.json" --batch "$batch" --seq-len "$seq" --steps "$steps" --warmup "$warmup"
  measure "slayer-train-$shape" slayer bench train --shape "$shape" --batch "$batch" --seq-len "$seq" --steps "$steps" --warmup "$warmup" --profile --json
  if [ ! -s "$out/slayer-train-$shape.json" ] && [ "$batch" -gt 1 ]; then
    half=$((batch / 2))
    measure "slayer-train-$shape-b$half" slayer bench train --shape "$shape" --batch "$half" --seq-len "$seq" --steps "$steps" --warmup "$warmup" --profile --json
  fi
done

# 3. The largest shape again with frozen blocks recomputed in backward (memory against speed).
last_entry="${shapes##* }"; last="${last_entry%%:*}"
measure "slayer-train-$last-recompute" slayer bench train --shape "$last" --batch "${last_entry##*:}" --seq-len "$seq" --steps "$steps" --warmup "$warmup" --recompute --profile --json

# 4. Chat decoding at batch 1 on the largest shape.
measure "torch-decode-$last" reference decode "$out/$last.describe.json" --prompt-len 128 --tokens 128
measure "slayer-decode-$last" slayer bench decode --shape "$last" --prompt-len 128 --tokens 128 --json

"$py" "$here/bench/gpu_table.py" "$out" | tee "$out/table.md"
