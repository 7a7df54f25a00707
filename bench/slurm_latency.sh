#!/usr/bin/env bash
# Submission-to-start latency and per-run overhead: the local queue against a single-node Slurm
# on this machine (started here as tests/common/slurm.rs starts it: munge, slurmctld and slurmd
# from Debian, a configuration in a temporary directory, free ports; stopped at the end). Each
# backend launches the same short SmolLM2 run RUNS times, one after another; for each run it
# records the time from the launch command to the run's first event (`run_start`: the worker
# is running), to its first step, and to its end.
#     bench/slurm_latency.sh [RUNS]       (as root, with slurm-wlm and munge installed)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
cargo build --release --quiet
bin=$PWD/target/release/slayer
# The fetched model's directory (the command's last line), named by path in the experiment so the
# two backends' data directories share it.
model=$("$bin" model fetch smollm2 2>&1 | tail -1)
dir=$(mktemp -d)
started_munged=""
ctld=""
slurmd_pid=""
cleanup() {
  SLURM_CONF="$dir/slurm.conf" timeout 5 scancel --user=root 2>/dev/null || true
  [ -n "$slurmd_pid" ] && kill "$slurmd_pid" 2>/dev/null || true
  [ -n "$ctld" ] && kill "$ctld" 2>/dev/null || true
  [ -n "$started_munged" ] && pkill -x munged || true
  rm -rf "$dir"
}
trap cleanup EXIT
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  su -s /bin/sh munge -c munged
  started_munged=1
  sleep 1
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
host=$(hostname -s)
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cat > "$dir/slurm.conf" <<EOF
ClusterName=slayerbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/ctld.log
SlurmdLogFile=$dir/log/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
NodeName=$host CPUs=$(nproc) RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
ctld=$(cat "$dir/slurmctld.pid")
slurmd_pid=$(cat "$dir/slurmd.pid")
for _ in $(seq 100); do
  [ "$(sinfo -h -N -o %T | sort -u)" = idle ] && break
  sleep 0.2
done
# A short run: 4 steps of 1 x 64 tokens on the repository's README, one small evaluation.
cat > "$dir/short.toml" <<EOF
name = "short"
[model]
base = "$model"
[plan]
preset = "slayer"
[data]
train = "$PWD/README.md"
heldout_fraction = 0.1
[train]
steps = 4
batch_size = 1
seq_len = 64
[eval]
max_tokens = 128
sample_tokens = 0
EOF
now() { date +%s.%N; }
# Seconds from $1 until the event log $2 has a line with "type":"$3".
wait_event() {
  local t0=$1 log=$2 kind=$3
  until [ -f "$log" ] && grep -q "\"type\":\"$kind\"" "$log"; do sleep 0.05; done
  python3 -c "print(f'{$(now) - $t0:.2f}')"
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; $(date -u +%F); $runs runs per backend, one at a time"
echo "| backend | run | launch command s | to run_start s | to first step s | to end s |"
echo "|---|---|---|---|---|---|"
for backend in local slurm; do
  home="$dir/home-$backend"
  mkdir -p "$home"
  for i in $(seq "$runs"); do
    if [ "$backend" = local ]; then
      args=(--detach)
    else
      args=(--on slurm --partition debug)
    fi
    t0=$(now)
    id=$(SLAYER_HOME="$home" "$bin" --device cpu train "$dir/short.toml" "${args[@]}" 2>/dev/null)
    launch=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
    log="$home/runs/$id/events.jsonl"
    start=$(wait_event "$t0" "$log" run_start)
    step=$(wait_event "$t0" "$log" step)
    end=$(wait_event "$t0" "$log" end)
    # The Slurm job's entry exits after the run's end record: wait for it, so runs do not
    # overlap.
    until [ "$(SLAYER_HOME="$home" "$bin" runs ls --json | python3 -c "import json,sys; print([r['status'] for r in json.load(sys.stdin) if r['id']=='$id'][0])")" = finished ]; do sleep 0.1; done
    echo "| $backend | $i | $launch | $start | $step | $end |"
  done
done
