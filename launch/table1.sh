#!/usr/bin/env bash
# NUWA-XL's Table 1 on the synthetic benchmark with the demo bundle: `make table1`, or
#   bash launch/table1.sh [WORK_DIR]          (default runs/table1)
#
# 1. features  the offline feature networks of Avg-FID / B-FVD-16
#              (python -m nuwa_jax.evaluate.train_features, docs/evaluation.md), trained
#              once into WORK_DIR/features; skipped when that .json exists
# 2. table     benchmarks/table1.py: held-out storyboards, DoD and AR videos of
#              $FRAMES frames ($VIDEOS per length and schedule), every metric and the time,
#              into benchmarks/results/table1_demo_cpu.json and docs/results.md
# Both steps continue where an interrupted run stopped. BUNDLE picks the weights
# (default checkpoints/demo/demo); PYTHON the interpreter.
set -euo pipefail
# The whole script is one function, parsed before it runs: editing this file (a git pull)
# while a long run is under way cannot change what that run executes.
main() {
  cd "$(dirname "$0")/.."
  WORK=${1:-runs/table1}
  PYTHON=${PYTHON:-.venv/bin/python}
  BUNDLE=${BUNDLE:-checkpoints/demo/demo}
  FRAMES=${FRAMES:-16,256,1024}
  VIDEOS=${VIDEOS:-4}
  FEATURES="$WORK/features/synthetic_features"
  stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

  if [ ! -f "$FEATURES.json" ]; then
    stamp "features: $FEATURES"
    mkdir -p "$WORK/features"
    $PYTHON -m nuwa_jax.evaluate.train_features --config=configs/demo.py --out="$FEATURES"
  fi
  stamp "table: $FRAMES frames, $VIDEOS videos each, in $WORK"
  $PYTHON benchmarks/table1.py --checkpoint="$BUNDLE" --feature_weights="$FEATURES.json" \
    --frames="$FRAMES" --videos="$VIDEOS" --work="$WORK" --markdown=docs/results.md
  stamp "done: docs/results.md"
}
main "$@"
exit
