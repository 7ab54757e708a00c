#!/usr/bin/env bash
# The accelerator benchmarks of one lease, in one command (paper-scale shapes):
#   bash benchmarks/accelerator.sh OUT_DIR
# 1. benchmarks/train_step.py on flintstones_128 for the MTD and the T-KLVAE, trying
#    global batches from the largest down until one fits, with a profile summary of
#    the device time by kernel category (benchmarks/profile_summary.py);
# 2. benchmarks/mardini_asymmetry.py at the paper's size S, 512 px (64x64 latents; planner
#    patches 2x2, so the symmetric planner has 4x the asymmetric one's tokens),
#    13 frames, batch 1, as in the paper's Table 3.
# The text encoder is CLIP-shaped (12 x 768, 77 tokens, frozen) but byte-tokenised, since
# no CLIP weights or tokenizer files can be fetched; its FLOPs are those of CLIP's tower.
# Each result JSON lands in OUT_DIR; logs in OUT_DIR/*.log. A piece that fails or runs
# out of time is logged and the next one still runs.
set -u
out=${1:?usage: benchmarks/accelerator.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
PY=${PY:-python3}
budget() { timeout "${1}" "${@:2}"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/env.log"
$PY -c "import jax, flax, optax, orbax.checkpoint as o; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())" 2>&1 | tee -a "$out/env.log"

TEXT="--config.text.kind=byte --config.text.vocab_size=259 --config.text.hidden_act=gelu"
train_step() {  # model, batches...
  local model=$1; shift
  for b in "$@"; do
    echo "== train_step $model batch $b"
    if budget "${STEP_TIMEOUT:-200}" $PY benchmarks/train_step.py --config=configs/flintstones.py:128 \
        --models="$model" --config.data.batch_size="$b" $TEXT --steps=5 --warmup=2 --profile_steps=2 \
        --out="$out/train_step_flintstones_128_${model}_b${b}.json" >"$out/train_step_${model}_b${b}.log" 2>&1; then
      tail -n 12 "$out/train_step_${model}_b${b}.log"; return 0
    fi
    tail -n 3 "$out/train_step_${model}_b${b}.log"
  done
}
mardini() {
echo "== mardini_asymmetry S 512px 13 frames"
for impl in ${MARDINI_ATTENTION:-cudnn xla}; do
budget "${MARDINI_TIMEOUT:-200}" $PY benchmarks/mardini_asymmetry.py --config=configs/flintstones.py:128 \
  --config.compute.attention_impl=$impl --config.mardini.num_frames=13 --config.mardini.planner_patch_size=2 --latent_size=64 --batch=1 \
  --repeats=3 --sample_steps=25 --out="$out/mardini_asymmetry_S_gpu_${impl}.json" \
  >"$out/mardini_asymmetry_${impl}.log" 2>&1
tail -n 15 "$out/mardini_asymmetry_${impl}.log"
done
}

# An empty MTD_BATCHES / VAE_BATCHES skips that model. PARALLEL=1 runs the train steps
# and the MarDini benchmark side by side (compilation, which dominates here, overlaps;
# memory is allocated on demand; the timed sections take turns under one file lock).
if [ "${PARALLEL:-0}" = 1 ]; then
  export NUWA_BENCH_LOCK=/tmp/nuwa_bench.lock XLA_PYTHON_CLIENT_PREALLOCATE=false
  unset XLA_PYTHON_CLIENT_MEM_FRACTION
  ( train_step mtd ${MTD_BATCHES-32 16 8}; train_step vae ${VAE_BATCHES-8 4 2} ) &
  mardini &
  wait
else
  train_step mtd ${MTD_BATCHES-32 16 8}
  train_step vae ${VAE_BATCHES-8 4 2}
  mardini
fi
