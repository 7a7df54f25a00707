#!/usr/bin/env bash
# `slayer expand` of SmolLM2 with the slayer preset: wall time and peak RSS, beside `cp -r` of the
# resulting directory on the same disk, in one run.
#     bench/expand.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cargo build --release --quiet
bin=target/release/slayer
"$bin" model fetch smollm2 >/dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; $(date -u +%F)"
rm -rf "$work/expanded" "$work/copy"
/usr/bin/time -f '%e %M' -o "$work/expand.time" "$bin" expand experiments/smollm2-slayer.toml --out "$work/expanded" 2>/dev/null
sync
/usr/bin/time -f '%e %M' -o "$work/cp.time" cp -r "$work/expanded" "$work/copy"
sync
size=$(du -sm "$work/expanded" | cut -f1)
read -r e_wall e_rss < "$work/expand.time"
read -r c_wall c_rss < "$work/cp.time"
echo "| operation | wall s | peak RSS MiB | output MiB |"
echo "|---|---|---|---|"
echo "| slayer expand (slayer preset, f32) | $e_wall | $((e_rss / 1024)) | $size |"
echo "| cp -r of the result | $c_wall | $((c_rss / 1024)) | $size |"
rm -rf "$work/expanded" "$work/copy"
