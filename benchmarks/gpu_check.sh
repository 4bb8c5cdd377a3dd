#!/usr/bin/env bash
# The GPU check of the GPU-native core, for a machine with one CUDA GPU (the H200 machine:
# Python 3.12, torch with CUDA and pytest in its image, no package registry). It runs the CUDA
# tests and measures, on CUDA:
#   - training throughput of every algorithm on Hopper-v5 (benchmarks/throughput.py), and of
#     PPO and FPO with --vector-env async (one worker process per env),
#   - RLDT and ReinFlow fine-tuning on Hopper-v5 from an untrained stand-in of the reference BC
#     flow policy (benchmarks/stand_in_policy.py; targets: RLDT >= 1,000, ReinFlow >= 13,600
#     env steps/s),
#   - QAM's gradient step, qam-cpu and the authors' sizes (benchmarks/qam_update_speed.py;
#     target: <= 30 ms).
# Every step has its own time limit (timeout ends the step's whole process group), together
# 475 s, so the script ends within 8 minutes and a slow or failing step leaves the others'
# results. Everything is in $OUT.
#
# On the GPU machine, from the repository root (the .whl folder made here by
# `bash ../shared/gpu/wheels.sh core`, carried along):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
#   XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh
# Try it on a CPU with tiny sizes: GPU_CHECK_TINY=1 GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}  # three files: machine.txt, log.txt (every step's output), results.md
WORK=$(mktemp -d)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src
export MUJOCO_GL=${MUJOCO_GL:-egl}
# Sizes in iterations timed per method (one more runs first, untimed): an iteration is the
# method's own rollout (PPO/FPO 2,048 env steps, RLDT 10,000, ReinFlow/DPPO 80,000, qam-cpu 800).
if [ "${GPU_CHECK_TINY:-0}" = 1 ]; then  # a CPU rehearsal: every step, tiny sizes
  its=1; its_long=1; qam_reps=1; qam_replay=5
  tests=(tests/test_device.py -k bad_device)
  small="--num-envs 2 --num-steps 50"; qam_small="$small --utd-ratio 0.02"
else
  its=4; its_long=2; qam_reps=3; qam_replay=625
  tests=(tests/test_device.py tests/algos/test_contract.py tests/test_train.py)
  # pytest-xdist is not in that image's list (../shared/gpu/wheels.sh): use it where it is.
  $PYTHON -c "import xdist" 2>/dev/null && tests=(-n 6 "${tests[@]}")
  small=""; qam_small=""
fi

source benchmarks/gpu_steps.sh  # step, throughput

record_machine
echo "# GPU check ($(date -u +%F), device $DEVICE)" > "$OUT/results.md"

# 1. The CUDA tests (every algorithm trains on CUDA, evaluates on a CPU, resumes exactly).
step tests 80 $PYTHON -m pytest -q -rs -p no:cacheprovider "${tests[@]}"

# 2. Throughput from scratch (several iterations each; the first one is not counted).
throughput scratch 65 --methods ppo fpo fpo:fpo++ --iterations "$its"
throughput dppo 45 --methods dppo --iterations 1 --train-args="$small"
# Gymnasium's AsyncVectorEnv on the 16 cores, against the sync rows above (--vector-env).
throughput async 40 --methods ppo fpo --iterations "$its" --train-args="--vector-env async"

# 3. Fine-tuning RLDT and ReinFlow from a stand-in of the reference BC flow policy.
step stand_in 20 $PYTHON benchmarks/stand_in_policy.py --env Hopper-v5 --out "$WORK/stand_in.pt"
throughput finetune_rldt 65 --methods rldt --init "$WORK/stand_in.pt" --iterations "$its_long" \
  --train-args="$small"
throughput finetune_reinflow 55 --methods reinflow --init "$WORK/stand_in.pt" \
  --iterations "$its_long" --train-args="$small"

# 4. QAM: a short training run, and its gradient step on its own at both sizes.
throughput qam_train 45 --methods qam:qam-cpu --iterations 2 --train-args="$qam_small"
for preset in qam-cpu qam; do
  step "qam_update_$preset" 30 $PYTHON benchmarks/qam_update_speed.py --device "$DEVICE" \
    --init "$WORK/stand_in.pt" --preset "$preset" --steps 10 --repeats "$qam_reps" \
    --replay-iterations "$qam_replay"
  { echo "## qam_update_$preset"; echo; echo '```'; tail -n 6 "$WORK/qam_update_$preset.txt"
    echo '```'; echo; } >> "$OUT/results.md"
done

rm -rf "$WORK"
echo "done; results in $OUT" | tee -a "$OUT/log.txt"
