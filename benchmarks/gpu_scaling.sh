#!/usr/bin/env bash
# Data-parallel scaling on a machine with one CUDA GPU (the H200 machine: Python 3.12, torch
# with CUDA and jax with its CUDA plugin in its image, no package registry). Within 8 minutes:
#   1. the data-parallel tests on this machine's torch (gloo on its CPU);
#   2. one GPU, one process, against two processes sharing it, PPO and FPO at the Playground
#      presets on playground/CartpoleBalance (2048 envs) and on Hopper-v5 (CPU envs, the GPU
#      updates): benchmarks/scaling.py, with the gradient all-reduce's time. NCCL refuses two
#      ranks on one GPU, so the two processes meet over gloo on the GPU's tensors
#      (FLOWPOLICY_SHARE_GPUS=1): an upper bound on what NCCL costs between GPUs;
#   3. whether NCCL itself starts: one process, world size 1, a real NCCL all-reduce.
# Every step has its own time limit; everything is in $OUT (log.txt, results.md).
#
# On the GPU machine, from the repository root (the .whl folder made here by
# `bash ../shared/gpu/wheels.sh core playground`, carried along):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
#   XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 OUT=$OUT bash benchmarks/gpu_scaling.sh
# Try it on a CPU with tiny sizes: GPU_SCALING_TINY=1 GPU_SCALING_DEVICE=cpu bash benchmarks/gpu_scaling.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_scaling_out}
WORK=$(mktemp -d)
DEVICE=${GPU_SCALING_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export FLOWPOLICY_SHARE_GPUS=1
if [ "${GPU_SCALING_TINY:-0}" = 1 ]; then  # a CPU rehearsal: every step, tiny sizes
  playground=(--train-args " --num-envs 16 --num-steps 8"); hopper=(--train-args " --num-envs 4")
  iterations=1; tests_limit=300
else
  playground=(--train-args " --num-envs 2048"); hopper=(--train-args " --num-envs 16 --num-minibatches 4")
  iterations=3; tests_limit=90
fi

source benchmarks/gpu_steps.sh  # step

record_machine

# 1. The data-parallel tests (CPU processes, gloo) on this machine's torch.
step tests "$tests_limit" $PYTHON -m pytest -q -x tests/test_distributed.py \
  tests/algos/test_data_parallel.py -k "not killed and not pretraining_shards"

scaling() {  # scaling NAME SECONDS [scaling.py options]: a table into results.md
  local name=$1 limit=$2; shift 2
  table "$name" "$limit" benchmarks/scaling.py --iterations "$iterations" "$@"
}

# 2. One process against two on the one GPU.
scaling playground 200 --envs playground/CartpoleBalance \
  --methods ppo:ppo-playground fpo:fpo-playground "${playground[@]}"
scaling hopper 120 --envs Hopper-v5 --methods ppo fpo "${hopper[@]}"

# 3. NCCL on this GPU: one rank (NCCL refuses two on one GPU), a real all-reduce.
step nccl 40 $PYTHON -c "
import os, torch, torch.distributed as dist
if not torch.cuda.is_available():
    raise SystemExit('no CUDA here: NCCL not tried')
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533')
dist.init_process_group('nccl', rank=0, world_size=1, device_id=torch.device('cuda', 0))
x = torch.ones(10_000, device='cuda'); dist.all_reduce(x); torch.cuda.synchronize()
print('nccl all-reduce ok:', float(x[0]), 'version', torch.cuda.nccl.version())
dist.destroy_process_group()"

echo "done: $OUT" | tee -a "$OUT/log.txt"
