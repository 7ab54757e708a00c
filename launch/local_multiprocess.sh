#!/usr/bin/env bash
# Rehearse a multi-host launch on one machine: N processes on 127.0.0.1 form one JAX
# world (CPU, gloo collectives), each with D simulated devices.
#
#   launch/local_multiprocess.sh N D -- python -m nuwa_jax.SOME_CLI --config=...
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,6p "$0"; exit 2; }
n=$1 d=$2
shift 2
[ "$1" = "--" ] && shift
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$d "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
