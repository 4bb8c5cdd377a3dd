#!/usr/bin/env bash
# Medium-level demonstration datasets and behaviour-cloned starting policies for the
# fine-tuning benchmarks (docs/reference_policies.md). Usage:
#   bash benchmarks/reference_policies.sh Hopper-v5 [Walker2d-v5 HalfCheetah-v5 ...]
# Everything lands in runs/reference/<env>/ (git-ignored); re-running continues or reuses
# finished steps, so the same command regenerates the same files.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOWPOLICY=${FLOWPOLICY:-.venv/bin/flowpolicy}
for env in "$@"; do
  out=runs/reference/$env
  # 1. A Gaussian PPO expert stopped at the env's medium target, then 200k recorded transitions.
  if [ ! -f "$out/data/dataset.hdf5" ]; then
    $FLOWPOLICY collect --env "$env" --out "$out/data" --seed 0 --transitions 200000
  fi
  # 2. Behaviour cloning on that data: a flow policy (CFM), a DDPM diffusion policy (what DPPO
  #    fine-tunes) and a Gaussian baseline.
  for policy in flow diffusion gaussian; do
    run="$out/bc-$policy"
    if [ -f "$run/checkpoint.pt" ] && [ ! -f "$run/done.json" ]; then
      $FLOWPOLICY pretrain --resume "$run"
    elif [ ! -f "$run/done.json" ]; then
      chunk=4; [ "$policy" = gaussian ] && chunk=1
      $FLOWPOLICY pretrain --dataset "$out/data/dataset.hdf5" --policy "$policy" \
        --chunk "$chunk" --gradient-steps 50000 --eval-every 10000 --seed 0 --run-dir "$run"
    fi
  done
done
