#!/usr/bin/env bash
# Trains the demo hierarchy (configs/demo.py) on the synthetic benchmark and exports the
# bundle that `make demo` uses: `make train-demo`, or
#   bash launch/train_demo.sh [RUN_DIR]          (default runs/demo)
#
# Stages, each a resumable trainer run in RUN_DIR (orbax checkpoints every
# train.checkpoint_every steps): rerunning the script after a kill, a preemption or the
# end of a session resumes the unfinished stage and skips finished ones.
#   1. data      the synthetic benchmark (16 episodes of 6752 frames: 54,032 distinct global
#                windows, docs/data.md), rendered once (by the first trainer run)
#   2. vae       the T-KLVAE (L1 + KL), on the local levels' windows (strides 15 and 1)
#   3. latents   the VAE's posterior moments of every training frame (a latent store)
#   4. global    the global MTD (level 0) on the latent store
#   5. local     the one local MTD shared by levels 1 and 2 (level embedding), on both
#   6. export    EMA weights, 16-bit, one checksummed bundle -> $BUNDLE
# VAE_STEPS is the VAE's total, over every session and bundle. Continue mode: when the
# bundle $BUNDLE.json exists and $RUN/vae has no checkpoint of its own (a new session,
# runs/ lost), training continues from the bundle instead of starting over: a VAE with
# fewer than VAE_STEPS steps in the bundle (manifest sources.vae.total_steps) trains on
# from its weights in $RUN/vae to that total, else it stays frozen (--vae_bundle); the
# latent store is encoded with the VAE in use (and again whenever that VAE has trained
# since, `nuwa_jax.train.progress latents_current`); each MTD stage whose workdir has no
# checkpoint starts from the bundle's weights (--config.train.init_from=$BUNDLE.json) and
# trains its GLOBAL_STEPS / LOCAL_STEPS more, unless the bundle's MTDs are of another
# architecture or diffusion recipe than configs/demo.py (`nuwa_jax.train.progress
# mtds_fit`: a bundle from before a recipe change), whose MTDs then train from scratch
# for GLOBAL_STEPS / LOCAL_STEPS (its VAE still frozen); the export replaces the bundle, its
# manifest counting each network's steps in total (sources.*.total_steps). To train from
# nothing instead, point BUNDLE elsewhere.
# With MARDINI=1, after those (not in the shipped bundle, which stays VAE + MTDs):
#   7. mardini   MarDini's curriculum on the latent store (planner, generator, joint;
#                configs/mardini.py:demo), each stage from the previous one's weights;
#                the 16-frame generator and joint stages read the local MTD's windows
#                (levels 1 and 2, strides 15 and 1: mardini.train_levels='local'), the
#                4-frame planner stage consecutive clips
#   8. export    VAE + MTDs + MarDini -> $RUN/demo_mardini (MarDini locals, its tasks)
# Step counts: VAE_STEPS, GLOBAL_STEPS, LOCAL_STEPS; batches: VAE_BATCH (the VAE's), MTD_BATCH
# (both MTDs'); PARALLEL_MTDS=1 trains the two MTDs at once, each pinned to half the CPUs
# (taskset); other overrides for every stage in EXTRA (e.g. EXTRA="--config.data.worker_count=4").
# PYTHON picks the interpreter. The shipped bundle's recipe is in docs/quickstart.md.
set -euo pipefail
# The whole script is one function, parsed before it runs: editing this file (a git pull)
# while a long run is under way cannot change what that run executes.
main() {
  cd "$(dirname "$0")/.."
  RUN=${1:-runs/demo}
  PYTHON=${PYTHON:-.venv/bin/python}
  BUNDLE=${BUNDLE:-checkpoints/demo/demo}
  VAE_STEPS=${VAE_STEPS:-2500}
  VAE_BATCH=${VAE_BATCH:-4}  # clips of 16 frames: the 32 px VAE costs more per clip than an MTD
  GLOBAL_STEPS=${GLOBAL_STEPS:-1400}
  LOCAL_STEPS=${LOCAL_STEPS:-1500}
  MTD_BATCH=${MTD_BATCH:-8}
  PARALLEL_MTDS=${PARALLEL_MTDS:-1}  # 1: both MTD stages at once (CPU machines, >= 2 cores)
  EXTRA=${EXTRA:-}
  CONFIG=configs/demo.py
  DATA="--config.data.data_dir=$RUN/data"
  mkdir -p "$RUN"
  stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
  has_checkpoint() {  # a finished orbax step directory (unfinished ones carry a suffix)
    local d
    for d in "$1"/checkpoints/*; do
      [[ "$(basename "$d")" =~ ^[0-9]+$ ]] && return 0
    done
    return 1
  }

  VAE="--vae_workdir=$RUN/vae"  # the VAE the latents and the export take
  INIT=""
  # The VAE trains on the local levels' windows, as it did when episodes held one global
  # window each: its clips are decoded at stride 1 (docs/data.md).
  VAE_RUN=(--config.train.model=vae --config.data.batch_size="$VAE_BATCH" --config.train.sample_every=500
    --config.data.levels=1,2)
  if [ -f "$BUNDLE.json" ] && { ! has_checkpoint "$RUN/vae" || [ -f "$RUN/vae/init_from.json" ]; }; then
    INIT="--config.train.init_from=$BUNDLE.json"  # only read by a workdir with no checkpoint
    before=$($PYTHON -m nuwa_jax.train.progress steps_before "$RUN/vae" vae "$BUNDLE.json")
    if [ "$before" -lt "$VAE_STEPS" ]; then
      stamp "continue mode: the VAE of $BUNDLE.json ($before steps) trains on to $VAE_STEPS"
      # shellcheck disable=SC2086
      $PYTHON -m nuwa_jax.train --config=$CONFIG --workdir="$RUN/vae" $DATA "${VAE_RUN[@]}" \
        --config.train.num_steps="$((VAE_STEPS - before))" $INIT $EXTRA
    else
      stamp "continue mode: MTDs from $BUNDLE.json, its VAE ($before steps) frozen"
      VAE="--vae_bundle=$BUNDLE.json"
    fi
  else
    # A run started from another's weights (init_from.json) counts the steps it began with.
    before=$($PYTHON -m nuwa_jax.train.progress steps_before "$RUN/vae" vae)
    stamp "vae: to $VAE_STEPS steps in $RUN/vae (from $before)"
    # shellcheck disable=SC2086
    $PYTHON -m nuwa_jax.train --config=$CONFIG --workdir="$RUN/vae" $DATA "${VAE_RUN[@]}" \
      --config.train.num_steps="$((VAE_STEPS > before ? VAE_STEPS - before : 1))" $EXTRA
  fi

  if [ "$VAE" != "--vae_bundle=$BUNDLE.json" ] && [ -f "$RUN/latents/metadata.json" ] &&
    ! $PYTHON -m nuwa_jax.train.progress latents_current "$RUN/latents" "$RUN/vae"; then
    stamp "latents: $RUN/latents came from an older step of $RUN/vae; encoding again"
    rm -rf "$RUN/latents"
  fi
  if [ ! -f "$RUN/latents/metadata.json" ]; then
    stamp "latents: $RUN/latents ($VAE)"
    # shellcheck disable=SC2086
    $PYTHON -m nuwa_jax.data.latents --config=$CONFIG "$VAE" $DATA \
      --out="$RUN/latents" $EXTRA
  fi

  MTD_INIT=$INIT
  if [ -n "$INIT" ] && ! $PYTHON -m nuwa_jax.train.progress mtds_fit "$BUNDLE.json" $CONFIG; then
    stamp "the MTDs of $BUNDLE.json are of another architecture or recipe (above): they train anew"
    MTD_INIT=""
  fi
  LATENTS="--config.data.latents_dir=$RUN/latents --config.train.model=mtd --config.train.sample_every=0"
  LATENTS="$LATENTS --config.data.batch_size=$MTD_BATCH $MTD_INIT"
  # mtd NAME LEVEL STEPS [CPUS]: one MTD stage, pinned to CPUS (taskset) when given.
  mtd() {
    local pin=()
    [ -n "${4:-}" ] && pin=(taskset -c "$4")
    stamp "$1 MTD (level $2): $3 steps in $RUN/mtd_$1${4:+ on CPUs $4}"
    # shellcheck disable=SC2086
    "${pin[@]}" $PYTHON -m nuwa_jax.train --config=$CONFIG --workdir="$RUN/mtd_$1" $DATA \
      $LATENTS --config.train.level="$2" --config.train.num_steps="$3" $EXTRA
  }
  if [ "$PARALLEL_MTDS" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    # Both MTDs at once, each on its half of the CPUs: XLA:CPU keeps two cores only
    # partly busy with these small convolutions, so two pinned runs train more per hour.
    local half status=0 pids=()
    half=$(($(nproc) / 2))
    mtd global 0 "$GLOBAL_STEPS" "0-$((half - 1))" & pids+=($!)
    mtd local 1 "$LOCAL_STEPS" "$half-$(($(nproc) - 1))" & pids+=($!)
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    [ "$status" = 0 ] || { stamp "an MTD stage failed (exit $status)"; return "$status"; }
  else
    mtd global 0 "$GLOBAL_STEPS"
    mtd local 1 "$LOCAL_STEPS"  # the one local MTD, trained on levels 1 and 2
  fi

  stamp "export: $BUNDLE"
  mkdir -p "$(dirname "$BUNDLE")"
  # shellcheck disable=SC2086
  $PYTHON -m nuwa_jax.export --config=$CONFIG "$VAE" \
    --mtd_workdirs="$RUN/mtd_global,$RUN/mtd_local" --out="$BUNDLE" $EXTRA
  stamp "done: $BUNDLE.json / $BUNDLE.safetensors"

  if [ "${MARDINI:-0}" = 1 ]; then
    ML="--config.data.latents_dir=$RUN/latents --config.train.sample_every=0"
    ML="$ML --config.data.batch_size=$MTD_BATCH"
    prev=""
    for stage in planner generator joint; do
      stamp "MarDini $stage in $RUN/mardini_$stage"
      # shellcheck disable=SC2086
      $PYTHON -m nuwa_jax.train --config=configs/mardini.py:demo:$stage \
        --workdir="$RUN/mardini_$stage" $DATA $ML ${prev:+--config.train.init_from=$prev} $EXTRA
      prev="$RUN/mardini_$stage"
    done
    stamp "export: $RUN/demo_mardini"
    # shellcheck disable=SC2086
    $PYTHON -m nuwa_jax.export --config=$CONFIG "$VAE" \
      --mtd_workdirs="$RUN/mtd_global,$RUN/mtd_local" --mardini_workdir="$prev" \
      --out="$RUN/demo_mardini" $EXTRA
  fi
}
main "$@"
exit
