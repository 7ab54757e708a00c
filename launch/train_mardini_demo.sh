#!/usr/bin/env bash
# Trains the demo MarDini alone, on the latents of a bundle's frozen T-KLVAE, and joins it
# to that bundle, every other network unchanged:
#   bash launch/train_mardini_demo.sh [RUN_DIR]     (default runs/mardini_demo)
#
# Stages, each resumable (rerun the script after a kill or the end of a session: finished
# stages are skipped, an unfinished trainer run resumes from its newest checkpoint):
#   1. data      the synthetic benchmark of configs/demo.py, rendered by the latents CLI
#   2. latents   the posterior moments of every training frame under the VAE of $BUNDLE
#                (`nuwa_jax.data.latents --vae_bundle`), so MarDini learns that VAE's latents
#   3. planner, generator, joint   MarDini's curriculum (configs/mardini.py:demo:<stage>),
#                each stage from the previous one's weights (train.init_from)
#   4. join      `nuwa_jax.export --base_bundle=$BUNDLE.json --mardini_workdir=<joint>`:
#                $BUNDLE's networks byte for byte plus the MarDini -> $OUT
# OUT defaults to $RUN/demo (the shipped bundle untouched); OUT=checkpoints/demo/demo
# writes the MarDini into the shipped bundle itself (atomically: the old one stays whole
# until the new one is complete). Step counts: PLANNER_STEPS, GENERATOR_STEPS, JOINT_STEPS
# (default: configs/common.py's mardini.curriculum for 'demo'); BATCH, the clips per step;
# EXTRA, overrides for every stage (e.g. a short run on a small benchmark:
# EXTRA="--config.data.synthetic_episodes=2 --config.data.synthetic_frames=400").
# PYTHON picks the interpreter.
set -euo pipefail
# One function, parsed before it runs: a `git pull` during a long run cannot change it.
main() {
  cd "$(dirname "$0")/.."
  RUN=${1:-runs/mardini_demo}
  PYTHON=${PYTHON:-.venv/bin/python}
  BUNDLE=${BUNDLE:-checkpoints/demo/demo}
  OUT=${OUT:-$RUN/demo}
  BATCH=${BATCH:-8}
  EXTRA=${EXTRA:-}
  DATA="--config.data.data_dir=$RUN/data"
  mkdir -p "$RUN"
  stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
  [ -f "$BUNDLE.json" ] || { stamp "no bundle $BUNDLE.json"; return 2; }

  if [ ! -f "$RUN/latents/metadata.json" ]; then
    stamp "latents: $RUN/latents (the VAE of $BUNDLE.json)"
    # shellcheck disable=SC2086
    $PYTHON -m nuwa_jax.data.latents --config=configs/demo.py --vae_bundle="$BUNDLE.json" \
      $DATA --out="$RUN/latents" $EXTRA
  fi

  ML="--config.data.latents_dir=$RUN/latents --config.train.sample_every=0"
  ML="$ML --config.data.batch_size=$BATCH"
  declare -A STEPS=([planner]=${PLANNER_STEPS:-} [generator]=${GENERATOR_STEPS:-}
    [joint]=${JOINT_STEPS:-})
  prev=""
  for stage in planner generator joint; do
    steps=${STEPS[$stage]}
    stamp "MarDini $stage${steps:+ ($steps steps)} in $RUN/mardini_$stage"
    # shellcheck disable=SC2086
    $PYTHON -m nuwa_jax.train --config=configs/mardini.py:demo:$stage \
      --workdir="$RUN/mardini_$stage" $DATA $ML \
      ${steps:+--config.mardini.curriculum.$stage.steps=$steps} \
      ${prev:+--config.train.init_from=$prev} $EXTRA
    prev="$RUN/mardini_$stage"
  done

  stamp "join: $BUNDLE.json + $prev -> $OUT"
  mkdir -p "$(dirname "$OUT")"
  # shellcheck disable=SC2086
  $PYTHON -m nuwa_jax.export --config=configs/demo.py --base_bundle="$BUNDLE.json" \
    --mardini_workdir="$prev" --out="$OUT" $EXTRA
  stamp "done: $OUT.json / $OUT.safetensors"
}
main "$@"
exit
