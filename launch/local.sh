#!/usr/bin/env bash
# Starts N training processes on this machine, joined by jax.distributed over 127.0.0.1
# (CPU collectives through gloo): the multi-host code path, without a cluster.
#
#   launch/local.sh NUM_PROCESSES [valle-jax train flags...]
#   launch/local.sh 2 --config=configs/tiny.py --config.data.dataset=DS --workdir=/tmp/run
#
# DEVICES_PER_PROCESS (default 1) simulated CPU devices each; PORT (default 12355).
# Process i's output goes to <workdir>/process_<i>.log; the script exits non-zero if any
# process fails.
set -euo pipefail
num=${1:?usage: launch/local.sh NUM_PROCESSES [train flags...]}
shift
port=${PORT:-12355}
workdir=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir=${arg#--workdir=} ;; esac
done
[ -n "$workdir" ] || { echo "launch/local.sh: pass --workdir=DIR" >&2; exit 2; }
mkdir -p "$workdir"
pids=()
for ((i = 0; i < num; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-1} \
    python3 -m valle_jax.cli train "$@" \
      --config.distributed.coordinator="127.0.0.1:${port}" \
      --config.distributed.num_processes="$num" --config.distributed.process_id="$i" \
      --config.distributed.cpu_collectives=gloo >"$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[ "$status" -eq 0 ] || echo "launch/local.sh: a process failed; see $workdir/process_*.log" >&2
exit "$status"
