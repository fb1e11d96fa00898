#!/usr/bin/env bash
# A multi-process run on this machine: P processes of experiments.train on 127.0.0.1, each with
# DEVICES_PER_PROCESS forced CPU devices, joined through jax.distributed (CPU collectives over
# gloo). The same program runs on a cluster with one process per host or GPU (docs/multihost.md).
#
#   bash scripts/multihost_local.sh P [train args...]
#   e.g. bash scripts/multihost_local.sh 2 --config=configs/smoke.py --workdir=runs/mh
#
# Environment: DEVICES_PER_PROCESS (default 4), PORT (default: a free port), PYTHON (default
# python). Every process's output is prefixed with "[p<id>] ". Waits for all; when one fails,
# the others are stopped (SIGTERM, then SIGKILL after 10 s) and the script exits with the first
# failure's status (130 when a signal stopped the run: rerun the same command to resume).
# A SIGINT or SIGTERM to this script is passed to every process (they stop after the same round
# and checkpoint it).
set -u

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash scripts/multihost_local.sh P [train args...]  (P: the number of processes, >= 1)" >&2
  exit 2
fi
P=$1
shift
DEVICES=${DEVICES_PER_PROCESS:-4}
if ! [[ "$DEVICES" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: DEVICES_PER_PROCESS=$DEVICES: allowed an integer >= 1" >&2
  exit 2
fi
PY=${PYTHON:-python}
cd "$(dirname "$0")/.." || exit 2
if [ -z "${PORT:-}" ]; then
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

QUIET='/^\[Gloo\] Rank [0-9]* is connected to/d'   # gloo's one line per connection
pids=()
stop_all() {   # $1: the signal
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null; done
}
trap 'stop_all TERM' TERM
trap 'stop_all INT' INT

for ((i = 0; i < P; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES" JAX_PLATFORMS=cpu \
    "$PY" -u -m experiments.train "$@" --config.shard=True --config.distributed=True \
    --config.coordinator_address="127.0.0.1:$PORT" --config.num_processes="$P" \
    --config.process_id="$i" > >(sed -u -e "$QUIET" -e "s/^/[p$i] /") 2> >(sed -u -e "$QUIET" -e "s/^/[p$i] /" >&2) &
  pids+=("$!")
done

status=0
running=("${pids[@]}")
while [ "${#running[@]}" -gt 0 ]; do
  wait -n -p done_pid "${running[@]}"
  rc=$?
  if [ -z "${done_pid:-}" ]; then   # a trapped signal interrupted wait: keep waiting
    continue
  fi
  rest=()
  for pid in "${running[@]}"; do [ "$pid" != "$done_pid" ] && rest+=("$pid"); done
  running=("${rest[@]+"${rest[@]}"}")
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    echo "multihost_local: a process (pid $done_pid) exited with status $rc; stopping the others" >&2
    stop_all TERM
    ( sleep 10; stop_all KILL ) &
  fi
  unset done_pid
done
wait 2>/dev/null   # the output prefixers
exit "$status"
