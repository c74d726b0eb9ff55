#!/usr/bin/env bash
# Runs NUM_PROCESSES copies of `python -m dualformer_jax.main` on this machine as one
# multi-process JAX job: CPU devices, a loopback coordinator. For testing the multi-host
# code paths (tests/distributed_test.py) without a cluster.
#
#   launch/local_multiprocess.sh NUM_PROCESSES [main flags...]
#   launch/local_multiprocess.sh 2 --config=configs/maze.py --workdir=runs/mp --mode=train
#
# Variables (environment):
#   CPU_DEVICES  CPU devices per process (default 2): the mesh spans NUM_PROCESSES x CPU_DEVICES
#   PORT         coordinator port on 127.0.0.1 (default: a free port)
#   LOG_DIR      where processes 1.. write process_<i>.log (default: a new temporary directory);
#                process 0 writes to this terminal
#   PYTHON       interpreter (default: python)
#   KILL_AFTER   seconds a stopped process gets before SIGKILL (default 10): a process whose
#                peer died can stay blocked in a collective, and jax catches SIGTERM
#
# Waits for all processes. When one fails, the others are stopped (they would wait for
# it forever) and the script exits with the failing status, printing the tail of each
# failed process's log. A SIGINT/SIGTERM is passed on as SIGTERM, which jax's preemption
# service turns into a checkpoint at a step all processes agree on; a second one kills.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

if [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]]; then
  usage
  exit 0
fi
if [[ $# -lt 1 ]]; then
  echo "error: NUM_PROCESSES is missing: launch/local_multiprocess.sh NUM_PROCESSES [main flags...] (--help)" >&2
  exit 2
fi
NUM_PROCESSES=$1
shift
if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_PROCESSES must be a positive integer, got '$NUM_PROCESSES' (--help for usage)" >&2
  exit 2
fi
CPU_DEVICES=${CPU_DEVICES:-2}
if ! [[ "$CPU_DEVICES" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: CPU_DEVICES must be a positive integer, got '$CPU_DEVICES'" >&2
  exit 2
fi
PYTHON=${PYTHON:-python}
if ! command -v "$PYTHON" > /dev/null; then
  echo "error: PYTHON=$PYTHON not found" >&2
  exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PORT:-}" ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/dualformer_mp.XXXXXX")}
mkdir -p "$LOG_DIR"

# Later XLA flags win, so an inherited device count (e.g. from a test runner) is overridden.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$CPU_DEVICES"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

echo "local_multiprocess: $NUM_PROCESSES processes x $CPU_DEVICES CPU devices," \
     "coordinator 127.0.0.1:$PORT, logs of processes 1.. in $LOG_DIR" >&2
KILL_AFTER=${KILL_AFTER:-10}
if ! [[ "$KILL_AFTER" =~ ^[0-9]+$ ]]; then
  echo "error: KILL_AFTER must be a number of seconds, got '$KILL_AFTER'" >&2
  exit 2
fi

live=()  # processes still running
killer=""
stop_failed_run() {  # a process failed: SIGTERM the rest, SIGKILL after KILL_AFTER seconds
  ((${#live[@]})) || return 0
  kill -TERM "${live[@]}" 2> /dev/null || true
  (sleep "$KILL_AFTER"; kill -KILL "${live[@]}" 2> /dev/null || true) &
  killer=$!
}
signals=0
on_signal() {  # first SIGINT/SIGTERM: pass SIGTERM on (jax saves a checkpoint); second: SIGKILL
  signals=$((signals + 1))
  ((${#live[@]})) || return 0
  if ((signals == 1)); then
    echo "local_multiprocess: passing SIGTERM on; signal again to kill" >&2
    kill -TERM "${live[@]}" 2> /dev/null || true
  else
    kill -KILL "${live[@]}" 2> /dev/null || true
  fi
}
trap on_signal INT TERM

pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  cmd=("$PYTHON" -m dualformer_jax.main --coordinator_address="127.0.0.1:$PORT"
       --num_processes="$NUM_PROCESSES" --process_id="$i" "$@")
  if ((i == 0)); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
  live+=($!)
done

status=0
failed=()
while ((${#live[@]} > 0)); do
  code=0
  done_pid=""
  wait -n -p done_pid "${live[@]}" || code=$?
  [[ -n "${done_pid:-}" ]] || continue  # woken by a trapped signal (-p unsets it): keep waiting
  still=()
  for pid in "${live[@]}"; do [[ "$pid" == "$done_pid" ]] || still+=("$pid"); done
  live=("${still[@]}")
  if ((code != 0)); then
    for i in "${!pids[@]}"; do [[ "${pids[$i]}" == "$done_pid" ]] && failed+=("$i"); done
    if ((status == 0)); then
      status=$code
      echo "local_multiprocess: process ${failed[-1]} exited with status $code; stopping the others" >&2
      stop_failed_run
    fi
  fi
done
[[ -n "$killer" ]] && kill "$killer" 2> /dev/null || true

for i in "${failed[@]}"; do
  if ((i > 0)); then
    echo "---- last lines of process $i ($LOG_DIR/process_$i.log) ----" >&2
    tail -n 30 "$LOG_DIR/process_$i.log" >&2
  fi
done
exit "$status"
