#!/usr/bin/env bash
# DSRL and FQL on a machine with one CUDA GPU (the H200 machine: Python 3.12, torch with CUDA and
# pytest in its image, no package registry). Within 8 minutes it:
#   1. runs their tests on CUDA (test_dsrl.py, test_fql.py and their contract-suite cases:
#      training on CUDA, evaluation on a CPU, exact resume);
#   2. measures their training throughput on Hopper-v5 on CUDA (benchmarks/throughput.py:
#      DSRL from an untrained stand-in of the reference BC flow policy, FQL online from scratch);
#   3. runs the fine-tuning seeds that the CPU budget did not cover, Hopper-v5 seeds 1 and 2 of
#      both methods, four runs at a time on the GPU, from the reference BC flow policy and
#      dataset carried from the CPU machine (runs/reference/Hopper-v5, 29 MB; made by
#      `bash benchmarks/reference_policies.sh Hopper-v5`), for as long as the time allows, and
#      records how far each got (bench.py's page and every run's metrics.jsonl). A run of
#      500k env steps does not finish in these minutes (about 45 and 80 CPU-minutes here): the
#      partial curves say how fast each method climbs on a GPU, not where it ends.
# Every step has its own time limit (timeout ends the step's whole process group); everything
# is in $OUT: machine.txt, log.txt (every step's output), results.md, page/, metrics/.
#
# On the GPU machine, from the repository root (the .whl folder made here by
# `bash ../shared/gpu/wheels.sh core`, and runs/reference/Hopper-v5, carried along):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
#   PYTHONUNBUFFERED=1 bash benchmarks/gpu_dsrl_fql.sh
# Try it on a CPU with tiny sizes: GPU_DSRL_FQL_TINY=1 GPU_DSRL_FQL_DEVICE=cpu \
#   bash benchmarks/gpu_dsrl_fql.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_dsrl_fql_out}
WORK=$(mktemp -d)
DEVICE=${GPU_DSRL_FQL_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
REFERENCE=runs/reference/Hopper-v5
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src
if [ "${GPU_DSRL_FQL_TINY:-0}" = 1 ]; then  # a CPU rehearsal: every step, tiny sizes
  tests=(tests/algos/test_dsrl.py -k bad_input)
  its=1; small="--num-envs 2"; runs_limit=120
  budget=(--steps Hopper-v5=1000 --eval-every 500 --eval-episodes 1)
  groups=("dsrl|" "fql|--offline-steps 20")  # FQL's 20k offline steps take minutes on a CPU
else
  tests=(tests/algos/test_dsrl.py tests/algos/test_fql.py tests/algos/test_contract.py
         -k "dsrl or fql")
  # pytest-xdist is not in that image's list (../shared/gpu/wheels.sh): use it where it is.
  $PYTHON -c "import xdist" 2>/dev/null && tests=(-n 4 "${tests[@]}")
  its=3; small=""; runs_limit=240
  budget=()  # the protocol's: 500k env steps, an evaluation every 25k
  groups=("dsrl fql|")  # all four runs at once
fi

source benchmarks/gpu_steps.sh  # step, throughput

record_machine
echo "# DSRL and FQL on $DEVICE ($(date -u +%F))" > "$OUT/results.md"

# 1. The tests on CUDA.
step tests 90 $PYTHON -m pytest -q -rs -p no:cacheprovider "${tests[@]}"

# 2. Throughput: several iterations each, the first one not counted.
step stand_in 20 $PYTHON benchmarks/stand_in_policy.py --env Hopper-v5 --out "$WORK/stand_in.pt"
throughput dsrl 50 --methods dsrl:dsrl-cpu dsrl:dsrl --init "$WORK/stand_in.pt" \
  --iterations "$its" --train-args="$small"
throughput fql 50 --methods fql:fql-cpu fql:fql --iterations "$its" --train-args="$small"

# 3. The fine-tuning seeds the CPU did not run, from the carried reference.
if [ -f "$REFERENCE/bc-flow/policy.pt" ] && [ -f "$REFERENCE/data/dataset.hdf5" ]; then
  for group in "${groups[@]}"; do  # "METHODS|TRAIN ARGS"
    IFS='|' read -r methods train_args <<< "$group"
    # shellcheck disable=SC2086  # the methods are words
    step "finetune_${methods// /_}" "$runs_limit" $PYTHON benchmarks/bench.py finetune \
      --envs Hopper-v5 --methods $methods --seeds 1 2 --jobs 4 --device "$DEVICE" \
      "${budget[@]}" --runs-root "$WORK/runs" --docs-dir "$WORK/docs" --train-args="$train_args"
  done
  # What finished (the page) and how far every run got (its metrics, finished or not).
  $PYTHON benchmarks/bench.py finetune --collect-only --envs Hopper-v5 --methods dsrl fql \
    --seeds 1 2 --runs-root "$WORK/runs" --docs-dir "$OUT/page" > "$OUT/collect.txt" 2>&1
  find "$WORK/runs" -name metrics.jsonl | while read -r file; do
    dest="$OUT/metrics/$(dirname "${file#"$WORK"/runs/}")"
    mkdir -p "$dest" && cp "$file" "$(dirname "$file")/config.json" "$dest/" 2>/dev/null
  done
else
  echo "no $REFERENCE/bc-flow/policy.pt or data/dataset.hdf5: carry runs/reference/Hopper-v5" \
    "(make it with bash benchmarks/reference_policies.sh Hopper-v5); fine-tuning skipped" \
    | tee -a "$OUT/log.txt"
fi

rm -rf "$WORK"
echo "done; results in $OUT" | tee -a "$OUT/log.txt"
