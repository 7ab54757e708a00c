#!/usr/bin/env bash
# Multi-slice TPU training through queued resources (several slices joined over DCN).
#
#   launch/multislice.sh create NAME ZONE ACCELERATOR NUM_SLICES
#   launch/multislice.sh run    NAME ZONE NUM_SLICES -- COMMAND...
#
# Slices are named NAME-0 .. NAME-(NUM_SLICES-1). JAX forms one world across them
# (MEGASCALE_* variables are set by the queued-resource runtime); set the mesh's dcn sizes
# in the config, e.g. --config.mesh.dcn_data=NUM_SLICES --config.mesh.ici_fsdp=-1.
# Set up each slice first with `launch/tpu_vm.sh setup NAME-i ZONE`.
set -euo pipefail
usage() { sed -n 2,10p "$0"; exit 2; }
[ $# -ge 3 ] || usage
verb=$1 name=$2 zone=$3
shift 3
case "$verb" in
  create)
    [ $# -ge 2 ] || usage
    gcloud compute tpus queued-resources create "$name" --zone "$zone" \
      --accelerator-type "$1" --runtime-version "${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}" \
      --node-count "$2" --node-prefix "$name"
    ;;
  run)
    [ $# -ge 1 ] || usage
    slices=$1
    shift
    [ "${1:-}" = "--" ] && shift
    for ((i = 0; i < slices; i++)); do
      "$(dirname "$0")/tpu_vm.sh" run "$name-$i" "$zone" -- "$@" &
    done
    wait
    ;;
  *) usage ;;
esac
