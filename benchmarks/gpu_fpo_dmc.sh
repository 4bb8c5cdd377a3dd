#!/usr/bin/env bash
# The fpo-dmc protocol at the paper's scale, for a machine with one CUDA GPU (the H200 machine:
# Python 3.12, torch with CUDA and jax with its CUDA plugin in its image, no package registry).
# Within 8 minutes it:
#   1. measures the torch <-> JAX bridge on CUDA, copy against zero-copy DLPack, with 2048 envs
#      (benchmarks/playground_speed.py; CartpoleBalance and CheetahRun);
#   2. runs (task, method, seed) triples of the fpo-dmc protocol at the paper's settings and
#      60M env steps (presets fpo-playground and ppo-playground), FPO and PPO on the same task
#      and seed side by side, most informative first, until the time is spent, and records
#      whatever finished (bench.py's results page) and how far every run got with its env
#      steps/s and time split per iteration (its metrics.jsonl). Targets: FPO >= 200,000 env
#      steps/s end to end, FPO's wall-clock <= 1.5x PPO's.
# Every step has its own time limit (timeout ends the step's whole process group); everything
# is in $OUT.
#
# On the GPU machine, from the repository root (the .whl folder made here by
# `bash ../shared/gpu/wheels.sh core playground`, carried along):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
#   XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 bash benchmarks/gpu_fpo_dmc.sh
# Try it on a CPU with tiny sizes: FPO_DMC_TINY=1 FPO_DMC_DEVICE=cpu bash benchmarks/gpu_fpo_dmc.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_fpo_dmc_out}
WORK=$(mktemp -d)
DEVICE=${FPO_DMC_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "${FPO_DMC_TINY:-0}" = 1 ]; then  # a CPU rehearsal: every step, tiny sizes
  envs=16; speed_steps=3; runs_limit=150; steps=7680; eval_every=3840; eval_episodes=2
  sizes=(--num-envs 16 --num-steps 240); pairs=("CartpoleBalance 0")
else
  envs=2048; speed_steps=200; runs_limit=400; steps=60000000; eval_every=6000000
  eval_episodes=10; sizes=()
  # Most informative first: the paper's largest FPO-over-PPO tasks, then the rest.
  pairs=("CheetahRun 0" "FingerSpin 0" "BallInCup 0" "ReacherHard 0")
fi

source benchmarks/gpu_steps.sh  # step

record_machine

# 1. The bridge on this device (compilation is not timed).
step speed 70 $PYTHON benchmarks/playground_speed.py --device "$DEVICE" --num-envs "$envs" \
  --steps "$speed_steps" --envs CartpoleBalance CheetahRun --out "$OUT/playground_speed.md"

# 2. Triples at 60M steps, two at a time, until the time is spent.
start=$SECONDS
for pair in "${pairs[@]}"; do
  read -r task seed <<< "$pair"
  left=$((runs_limit - (SECONDS - start)))
  [ "$left" -gt 60 ] || break
  step "fpo_dmc_${task}_$seed" "$left" $PYTHON benchmarks/bench.py fpo-dmc \
    --envs "playground/$task" --methods fpo ppo --seeds "$seed" --jobs 2 \
    --steps "playground/$task=$steps" --eval-every "$eval_every" \
    --eval-episodes "$eval_episodes" --runs-root "$WORK/runs" --docs-dir "$WORK/docs" \
    --device "$DEVICE" --train-args="${sizes[*]}"
done
# What finished (the page) and how far every run got (its metrics, finished or not).
$PYTHON benchmarks/bench.py fpo-dmc --collect-only --runs-root "$WORK/runs" \
  --docs-dir "$OUT/page" > "$OUT/collect.txt" 2>&1
find "$WORK/runs" -name metrics.jsonl | while read -r file; do
  dest="$OUT/metrics/$(dirname "${file#"$WORK"/runs/}")"
  mkdir -p "$dest" && cp "$file" "$(dirname "$file")/config.json" "$dest/" 2>/dev/null
done
rm -rf "$WORK"
echo "done; results in $OUT" | tee -a "$OUT/log.txt"
