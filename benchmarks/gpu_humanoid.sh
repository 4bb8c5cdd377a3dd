#!/usr/bin/env bash
# The humanoid-joystick protocol on a machine with one CUDA GPU (the H200 machine: Python 3.12,
# torch with CUDA and jax with its CUDA plugin in its image, no package registry), within 8
# minutes:
#   1. the task's speed with 4096 envs: the simulator alone, through the torch bridge, and with
#      FPO acting (benchmarks/playground_speed.py; target >= 500,000 env steps/s, zero policy);
#   2. FPO++ (fpo++-humanoid), Gaussian PPO (ppo-humanoid) and FPO (fpo-playground), seed 0,
#      each for as long as its time limit (75 s) lets it (checkpoints every 5 iterations; a run cut
#      by its limit keeps its last one), in that order of importance; their metrics come back;
#   3. tracking error per command type and falls per episode of the three final policies
#      (benchmarks/joystick_eval.py), and a 300-step video of each with its command on it.
# Every step has its own time limit; everything is in $OUT (log.txt, the tables, the videos,
# each run's config.json, metrics.jsonl and done.json).
#
# On the GPU machine, from the repository root (the .whl folder made here by
# `bash ../shared/gpu/wheels.sh core playground`, carried along):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
#   XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 OUT=$OUT bash benchmarks/gpu_humanoid.sh
# Try it on a CPU with tiny sizes: GPU_HUMANOID_TINY=1 GPU_HUMANOID_DEVICE=cpu bash benchmarks/gpu_humanoid.sh
# (rehearsed so on 2026-12-06: every step ran; on the CPU the speed step and the first video
# hit their limits compiling JAX, the three runs, tracking and the other videos finished.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_humanoid_out}
WORK=$(mktemp -d)
DEVICE=${GPU_HUMANOID_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src
export XLA_PYTHON_CLIENT_PREALLOCATE=false
ENV=playground/HumanoidJoystick
if [ "${GPU_HUMANOID_TINY:-0}" = 1 ]; then  # a CPU rehearsal: every step, tiny sizes
  envs=8; speed_steps=3; run_limit=240; total=384; eval_every=192; episodes=1; max_steps=20
  sizes=(--num-envs 8 --num-steps 24 --update-epochs 1 --mc-samples 4 --flow-steps 4)
  ppo_sizes=(--num-envs 8 --num-steps 24); fpo_sizes=(--num-envs 8 --num-steps 24)
else
  envs=4096; speed_steps=100; run_limit=75; total=200000000; eval_every=10000000; episodes=4
  max_steps=1000
  sizes=(); ppo_sizes=(); fpo_sizes=()
fi

source benchmarks/gpu_steps.sh  # step

record_machine

# 1. Speed (compilation is not timed).
step speed 90 $PYTHON benchmarks/playground_speed.py --device "$DEVICE" --num-envs "$envs" \
  --steps "$speed_steps" --envs HumanoidJoystick --out "$OUT/humanoid_speed.md"

# 2. The three methods, most important first.
train() {  # train NAME ARGS...: one run under the time limit, its records copied to $OUT
  local name=$1; shift
  step "run-$name" "$run_limit" $PYTHON -m flowpolicy train "$@" --env "$ENV" --seed 0 \
    --device "$DEVICE" --total-steps "$total" --eval-every "$eval_every" --eval-episodes 2 \
    --checkpoint-every 5 --tensorboard False --quiet True --run-dir "$WORK/runs/$name"
  mkdir -p "$OUT/runs/$name"
  cp "$WORK/runs/$name"/{config.json,metrics.jsonl,done.json} "$OUT/runs/$name/" 2>/dev/null
}
train fpo++ fpo --preset fpo++-humanoid "${sizes[@]}"
train ppo ppo --preset ppo-humanoid "${ppo_sizes[@]}"
train fpo fpo --preset fpo-playground "${fpo_sizes[@]}"

# 3. Tracking per command type, and videos.
runs=()
for name in fpo++ ppo fpo; do
  [ -f "$WORK/runs/$name/checkpoint.pt" ] && runs+=("$WORK/runs/$name")
done
if [ ${#runs[@]} -gt 0 ]; then
  step tracking 60 $PYTHON benchmarks/joystick_eval.py "${runs[@]}" --episodes "$episodes" \
    --max-steps "$max_steps" --device "$DEVICE" --out "$OUT/tracking.md"
  for run in "${runs[@]}"; do
    name=$(basename "$run")
    step "video-$name" 40 $PYTHON -m flowpolicy video "$run" --max-steps 300 --width 480 \
      --height 360 --device "$DEVICE" --out "$OUT/$name.mp4"
  done
fi
echo "done: $OUT" | tee -a "$OUT/log.txt"
