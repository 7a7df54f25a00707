#!/usr/bin/env bash
# Layer importance (all four metrics) on SmolLM2 over 32 × 256 tokens: wall time and peak RSS.
# Calibration text: the GPL-3, GPL-2 and Apache-2.0 licence texts every Debian system ships
# (~20k tokens of English).
#     bench/importance.sh [CORPUS]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus="${1:-}"
if [ -z "$corpus" ]; then
  corpus=$(mktemp --suffix=.txt)
  cat /usr/share/common-licenses/{GPL-3,GPL-2,Apache-2.0} > "$corpus"
fi
cargo build --release --quiet
bin=target/release/slayer
"$bin" model fetch smollm2 >/dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; $(date -u +%F); corpus $corpus"
out=$(mktemp)
for metric in bi,angular ppl taylor all; do
  /usr/bin/time -f '%e %M' -o "$out" "$bin" importance smollm2 --corpus "$corpus" --samples 32 --seq-len 256 --metric "$metric" --json > /dev/null
  read -r wall rss < "$out"
  echo "| $metric | $wall s | $((rss / 1024)) MiB |"
done
rm -f "$out"
