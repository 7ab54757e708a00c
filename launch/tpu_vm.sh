#!/usr/bin/env bash
# Create, set up and run nuwa-jax on a Cloud TPU VM (single host or a pod slice).
#
#   launch/tpu_vm.sh create   NAME ZONE ACCELERATOR [--spot]   e.g. v5litepod-16
#   launch/tpu_vm.sh setup    NAME ZONE                        copy repo, install jax[tpu] + reqs
#   launch/tpu_vm.sh run      NAME ZONE -- COMMAND...          same command on every worker
#   launch/tpu_vm.sh delete   NAME ZONE
#
# On a TPU VM, nuwa_jax.parallel.initialize_distributed() forms the multi-host world on its
# own (no environment variables needed): run the same command on all workers.
# Requires the gcloud CLI, authenticated, with a default project.
set -euo pipefail

usage() { sed -n 2,12p "$0"; exit 2; }
[ $# -ge 3 ] || usage
verb=$1 name=$2 zone=$3
shift 3
repo_dir=$(cd "$(dirname "$0")/.." && pwd)
remote_dir='~/nuwa-jax'
JAX_TPU_SPEC=${JAX_TPU_SPEC:-"jax[tpu]==0.10.2"}

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
    tar -C "$repo_dir" --exclude=.venv --exclude=.git -czf /tmp/nuwa-jax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/nuwa-jax.tgz "$name":/tmp/ --zone "$zone" --worker=all
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
      set -e; mkdir -p $remote_dir && tar -C $remote_dir -xzf /tmp/nuwa-jax.tgz &&
      cd $remote_dir && python3 -m venv .venv &&
      .venv/bin/pip install -q -r requirements.txt &&
      .venv/bin/pip install -q '$JAX_TPU_SPEC' &&
      .venv/bin/pip install -q --no-deps -e . --config-settings editable_mode=compat"
    ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || usage
    cmd=$(printf '%q ' "$@")
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all \
      --command "cd $remote_dir && CUDA_VISIBLE_DEVICES= .venv/bin/python $cmd"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
    ;;
  *) usage ;;
esac
