#!/usr/bin/env bash
# CPU training on a quiet machine and on a loaded one: slayer and PyTorch at 1 and 2 threads, the
# same layout, trainable set and batches as bench/train_cpu.sh (SmolLM2-135M, slayer preset, 7 new
# blocks train, 1 x 256 and 1 x 1024, f32), in one run. "Loaded" is a second CPU-bound process (a busy loop
# holding one core) running throughout. slayer's threads are set through candle's variables (what
# `--threads` and `[train] threads` set), PyTorch's through OMP_NUM_THREADS; slayer runs twice, with
# the pool spin limit slayer sets (100) and with candle's own (25,000).
#     PYTHON=/path/to/venv/bin/python bench/train_cpu_load.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-6}"
py="${PYTHON:-python3}"
cargo build --release --quiet --example bench-train-smollm2
cargo build --release --quiet
bin=target/release/slayer
"$bin" model fetch smollm2 >/dev/null
work=$(mktemp -d)
hog=""
cleanup() {
  [ -n "$hog" ] && kill "$hog" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" expand experiments/smollm2-slayer.toml --out "$work/expanded" >/dev/null 2>&1
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; $(date -u +%F); $steps steps, first excluded"
echo "| batch | load | threads | implementation | tokens/s | step ms | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
measure() {
  local load=$1 threads=$2 seq=$3
  for spin in 100 25000; do
    CANDLE_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads CANDLE_BARRIER_POOL_SPIN_LIMIT=$spin \
      target/release/examples/bench-train-smollm2 --steps "$steps" --seq-len "$seq" 2>/dev/null \
      | sed "s/^| /| 1 × $seq | $load | $threads | /; s/per-block stats |/per-block stats, spin $spin |/"
  done
  OMP_NUM_THREADS=$threads "$py" bench/pytorch_train.py "$work/expanded" 2,5,8,11,14,17,20 "$steps" "$seq" 2>/dev/null \
    | sed "s/^| /| 1 × $seq | $load | $threads | /"
}
for seq in 256 1024; do
  for threads in 2 1; do measure quiet "$threads" "$seq"; done
done
"$py" -c 'while True: pass' &
hog=$!
for seq in 256 1024; do
  for threads in 2 1; do measure loaded "$threads" "$seq"; done
done
