#!/usr/bin/env bash
# Create, set up and run nuwa-jax on a Cloud TPU VM (single host or a pod slice).
#
#   launch/tpu_vm.sh create   NAME ZONE ACCELERATOR [ARGS...]  e.g. v5litepod-16 --spot
#   launch/tpu_vm.sh setup    NAME ZONE                        copy repo, Python >= 3.11 venv
#   launch/tpu_vm.sh run      NAME ZONE [--logdir DIR] -- ARGS...  python ARGS on every worker
#   launch/tpu_vm.sh stop     NAME ZONE                        SIGTERM the run (it checkpoints)
#   launch/tpu_vm.sh fetch    NAME ZONE REMOTE_DIR LOCAL_DIR   worker 0's run records
#   launch/tpu_vm.sh delete   NAME ZONE
#
# setup: the default image (tpu-ubuntu2204-base) has Python 3.10 and nuwa-jax needs >= 3.11,
# so the venv is made by uv (installed into ~/.local/bin on first use), which uses a
# Python >= 3.11 of the image if there is one and otherwise a standalone CPython build
# (PYTHON_VERSION, default 3.11). run: one `gcloud ... ssh --worker=i` per worker, each
# logged to DIR/worker-i.log (default logs/tpu_vm/NAME), worker 0 also to the terminal;
# exits non-zero if any worker fails. Workers: TPU_WORKERS, else counted from
# `gcloud compute tpus tpu-vm describe`. On a TPU VM, nuwa_jax.parallel.
# initialize_distributed() forms the multi-host world on its own: every worker runs the
# same command. A multi-host run's workdir must be on storage every worker sees.
# Requires the gcloud CLI, authenticated, with a default project.
set -euo pipefail

usage() { sed -n 2,20p "$0"; exit 2; }
[ $# -ge 3 ] || usage
verb=$1 name=$2 zone=$3
shift 3
repo_dir=$(cd "$(dirname "$0")/.." && pwd)
remote_dir='~/nuwa-jax'
pid_file='~/nuwa-jax/.run.pid'
JAX_TPU_SPEC=${JAX_TPU_SPEC:-"jax[tpu]==0.10.2"}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}

ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }

num_workers() {
  if [ -n "${TPU_WORKERS:-}" ]; then echo "$TPU_WORKERS"; return; fi
  local ips
  ips=$(gcloud compute tpus tpu-vm describe "$name" --zone "$zone" \
    --format='value(networkEndpoints[].ipAddress)')
  [ -n "$ips" ] || { echo "error: $name: no workers in 'gcloud ... describe'" >&2; exit 1; }
  echo "$ips" | tr ';,' '\n\n' | grep -c .
}

case "$verb" in
  create)
    [ $# -ge 1 ] || usage
    accel=$1
    shift
    version=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
      --accelerator-type "$accel" --version "$version" "$@"
    ;;
  setup)
    tgz=$(mktemp /tmp/nuwa-jax.XXXXXX.tgz)
    trap 'rm -f "$tgz"' EXIT
    tar -C "$repo_dir" --exclude=.venv --exclude=.git -czf "$tgz" .
    gcloud compute tpus tpu-vm scp "$tgz" "$name":/tmp/nuwa-jax.tgz --zone "$zone" --worker=all
    ssh_all "set -e; mkdir -p $remote_dir && tar -C $remote_dir -xzf /tmp/nuwa-jax.tgz
      cd $remote_dir
      command -v uv >/dev/null || [ -x ~/.local/bin/uv ] ||
        curl -LsSf https://astral.sh/uv/install.sh | sh
      export PATH=~/.local/bin:\$PATH
      uv venv --seed --allow-existing --python '>=$PYTHON_VERSION' .venv
      .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
      .venv/bin/pip install -q -r requirements.txt
      .venv/bin/pip install -q '$JAX_TPU_SPEC'
      .venv/bin/pip install -q --no-deps -e . --config-settings editable_mode=compat"
    ;;
  run)
    logdir=logs/tpu_vm/$name
    if [ "${1:-}" = "--logdir" ]; then logdir=$2; shift 2; fi
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || usage
    cmd=$(printf '%q ' "$@")
    n=$(num_workers)
    mkdir -p "$logdir"
    remote="cd $remote_dir && echo \$\$ > $pid_file && CUDA_VISIBLE_DEVICES= exec .venv/bin/python $cmd"
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
    for ((w = 0; w < n; w++)); do
      log="$logdir/worker-$w.log"
      if [ "$w" = 0 ]; then
        gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=$w --command "$remote" \
          > >(tee "$log") 2>&1 &
      else
        gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=$w --command "$remote" \
          >"$log" 2>&1 &
      fi
      pids+=($!)
    done
    status=0
    for ((w = 0; w < n; w++)); do
      wait "${pids[$w]}" || { status=$?; echo "error: worker $w failed ($logdir/worker-$w.log)" >&2; }
    done
    exit $status
    ;;
  stop)
    ssh_all "[ -f $pid_file ] && kill -TERM \$(cat $pid_file) 2>/dev/null || true"
    ;;
  fetch)
    [ $# -eq 2 ] || usage
    mkdir -p "$2"
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=0 --command \
      "cd $1 2>/dev/null && tar -cf - \$(ls metrics.jsonl finished.json 2>/dev/null) || true" |
      tar -xf - -C "$2" 2>/dev/null || true
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
    ;;
  *) usage ;;
esac
