#!/usr/bin/env bash
# CPU training: slayer vs PyTorch on the same layer layout and trainable set (SmolLM2-135M, slayer
# preset: 35 blocks, the 7 new ones train), batch 1 x 256 and 1 x 1024, and slayer with and without
# per-block statistics, in one run. PyTorch comes from a venv given as $PYTHON (torch,
# transformers).
#     PYTHON=/path/to/venv/bin/python bench/train_cpu.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-6}"
py="${PYTHON:-python3}"
cargo build --release --quiet --example bench-train-smollm2
bin=target/release/slayer
cargo build --release --quiet
"$bin" model fetch smollm2 >/dev/null
work=$(mktemp -d)
"$bin" expand experiments/smollm2-slayer.toml --out "$work/expanded" >/dev/null 2>&1
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; $(date -u +%F); $steps steps, first excluded"
echo "| batch | implementation | tokens/s | step ms | peak RSS MiB |"
echo "|---|---|---|---|---|"
for seq in 256 1024; do
  {
    target/release/examples/bench-train-smollm2 --steps "$steps" --seq-len "$seq"
    target/release/examples/bench-train-smollm2 --steps "$steps" --seq-len "$seq" --no-stats
    "$py" bench/pytorch_train.py "$work/expanded" 2,5,8,11,14,17,20 "$steps" "$seq" 2>/dev/null
  } | sed "s/^| /| 1 × $seq | /"
done
rm -rf "$work"
