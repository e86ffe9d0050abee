#!/usr/bin/env bash
# Runs one training command as N cooperating JAX processes on this machine (loopback only).
#
#   scripts/launch_local.sh N [ARGS...]
#
# starts N copies of `python -m jaxrobust.main ARGS...`, process i with
# `--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i`, and waits for all of
# them. Every process shares the workdir given in ARGS (orbax writes one checkpoint together).
#
# Environment:
#   JAXROBUST_PORT          coordinator port (default: a free port picked now).
#   JAXROBUST_CPU_DEVICES   simulated CPU devices per process (default 2; 0 = leave XLA_FLAGS as is).
#   JAXROBUST_LOG_DIR       if set, process i's output goes to $JAXROBUST_LOG_DIR/process_i.log
#                           instead of this terminal (where lines are prefixed with [pI]).
#   JAXROBUST_KILL_GRACE    seconds the other processes get to stop after one failed before
#                           they are killed (default 30; they may be blocked in a collective).
#   PYTHON                  interpreter (default: python).
#
# The coordinator binds to 127.0.0.1 only (JAX_COORDINATOR_BIND_ADDRESS), so nothing listens on
# other interfaces. SIGTERM/SIGINT sent to this script (Ctrl-C included) is forwarded once to
# every process, which save a checkpoint at the next step boundary and exit 0 (preemption). If one
# process fails, the others are stopped and the script exits with the failing process's status.
set -u

# `wait -n -p` (which process ended) is bash 5.1's: older shells would spin or abort mid-run.
if (( BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1) )); then
  echo "$0 needs bash 5.1 or newer (this is ${BASH_VERSION}); on macOS: brew install bash" >&2
  exit 2
fi

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [python -m jaxrobust.main arguments...]" >&2
  echo "  e.g. $0 2 --config=configs/quickstart.py --workdir=/tmp/qs2" >&2
  exit 2
fi
N=$1
shift
PYTHON=${PYTHON:-python}
PORT=${JAXROBUST_PORT:-$("$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
DEVICES=${JAXROBUST_CPU_DEVICES:-2}
ADDRESS="127.0.0.1:${PORT}"

export JAX_COORDINATOR_BIND_ADDRESS="$ADDRESS"
if [[ "$DEVICES" != 0 ]]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
fi
if [[ -n "${JAXROBUST_LOG_DIR:-}" ]]; then
  mkdir -p "$JAXROBUST_LOG_DIR"
fi

PIDS=()
forward() {  # preemption: every process gets the signal and checkpoints
  for pid in "${PIDS[@]}"; do kill -s "$1" "$pid" 2>/dev/null; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT
# The terminal closed: the processes (in sessions of their own) are asked to checkpoint; their
# output to that terminal is lost, so runs that should outlive it set JAXROBUST_LOG_DIR.
trap 'forward TERM' HUP

for ((i = 0; i < N; i++)); do
  cmd=("$PYTHON" -m jaxrobust.main "$@" "--coordinator_address=$ADDRESS"
       "--num_processes=$N" "--process_id=$i")
  # Each process in a session of its own: Ctrl-C in the terminal reaches only this script, which
  # forwards it once (a second SIGINT would make the processes stop without a checkpoint).
  # setsid execs in place here (a background child is no group leader), so $! stays the python.
  if [[ -n "${JAXROBUST_LOG_DIR:-}" ]]; then
    setsid "${cmd[@]}" >"$JAXROBUST_LOG_DIR/process_$i.log" 2>&1 &
  else
    # process substitution keeps $! the python process, not the prefixing sed; sed ignores
    # INT/TERM so that it outlives a Ctrl-C and prints the processes' checkpointing to the end
    setsid "${cmd[@]}" > >(trap '' INT TERM; exec sed -u "s/^/[p$i] /") 2>&1 &
  fi
  PIDS+=($!)
done

status=0
LIVE=("${PIDS[@]}")
while ((${#LIVE[@]} > 0)); do
  # returns when any listed child ends; a trapped signal interrupts it (no done_pid: re-wait)
  unset done_pid
  wait -n -p done_pid "${LIVE[@]}" 2>/dev/null
  rc=$?
  if [[ -z "${done_pid:-}" ]]; then
    # A child already reaped while a trap ran makes wait -n answer "no such job" at once (and
    # re-waiting would spin for ever): take its status from plain wait, which keeps it.
    for pid in "${LIVE[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid"
        rc=$? done_pid=$pid
        break
      fi
    done
    [[ -z "${done_pid:-}" ]] && continue
  fi
  rest=()
  for pid in "${LIVE[@]}"; do [[ "$pid" != "$done_pid" ]] && rest+=("$pid"); done
  LIVE=("${rest[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "launch_local: process with pid $done_pid exited with status $rc; stopping the others" >&2
    for pid in "${LIVE[@]}"; do kill -s TERM "$pid" 2>/dev/null; done
    # peers blocked in a collective with the dead process never reach a step boundary
    # (its own output closed, so a pending timer never holds this script's stdout open)
    (trap 'kill "$timer" 2>/dev/null; exit 0' TERM
     sleep "${JAXROBUST_KILL_GRACE:-30}" & timer=$!
     wait "$timer" || exit 0
     for pid in "${LIVE[@]}"; do kill -s KILL "$pid" 2>/dev/null; done) >/dev/null 2>&1 &
    KILLER=$!
  fi
done
if [[ -n "${KILLER:-}" ]]; then kill "$KILLER" 2>/dev/null; fi
exit $status
