#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch and flowpolicy (editable) with its Playground extra,
# plus test/benchmark tools.
# Safe to rerun. Needs Python >= 3.10, git and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned, so nothing pulls the multi-GB CUDA build on a CPU machine.
.venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
# The Playground extra (JAX, MJX) too, so that playground/ envs and their tests run here.
.venv/bin/python -m pip install -q -e ".[dev,bench,playground]"
