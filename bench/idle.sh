#!/usr/bin/env bash
# Console-less overhead of the queue: one run training and two queued behind it. Lists the slayer
# processes that exist (queued runs have none; a running run has its worker and a supervisor that
# sleeps until the worker exits) and the CPU the supervisor and a `runs tail --follow` on a queued
# run use over SECONDS; then kills the worker and shows the queue moving on by itself.
#     bench/idle.sh [SECONDS]        (SLAYER_MODELS: a models/ folder holding smollm2)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
cargo build --release --quiet
bin="$PWD/target/release/slayer"
models="${SLAYER_MODELS:-$HOME/.local/share/slayer/models}"
home=$(mktemp -d)
ln -s "$models" "$home/models"
export SLAYER_HOME="$home"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; $(date -u +%F)"
ids=()
for n in 1 2 3; do
  ids+=("$("$bin" --device cpu train smollm2-slayer --detach 2>/dev/null)")
done
"$bin" runs tail "${ids[2]}" --follow >/dev/null &
tail_pid=$!
sleep 3
echo "slayer processes:"
ps -o pid=,rss=,args= -p "$(pgrep -d, -x slayer)" | sed "s|$bin|slayer|; s|--data-dir $home ||"
supervisor=$(pgrep -f "runs supervise ${ids[0]}")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
s0=$(ticks "$supervisor"); t0=$(ticks "$tail_pid")
sleep "$secs"
s1=$(ticks "$supervisor"); t1=$(ticks "$tail_pid")
hz=$(getconf CLK_TCK)
pct() { awk "BEGIN{printf \"%.3f\", $1/$hz/$secs*100}"; }
echo "over ${secs} s: supervisor $((s1 - s0)) ticks ($(pct $((s1 - s0))) % of a core); runs tail --follow $((t1 - t0)) ticks ($(pct $((t1 - t0))) %)"
kill "$tail_pid"
"$bin" runs kill "${ids[0]}" >/dev/null
sleep 3
echo "after kill -9 of the first worker:"
"$bin" runs ls
for id in "${ids[@]}"; do "$bin" runs kill "$id" >/dev/null 2>&1 || true; done
sleep 2
for id in "${ids[@]}"; do "$bin" runs kill "$id" >/dev/null 2>&1 || true; done
rm -rf "$home"
