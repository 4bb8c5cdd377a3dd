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
# `flowpolicy video` (and its tests) draw offscreen through EGL: a GPU driver's, or Mesa's on a
# CPU. Install Debian's Mesa EGL where no EGL vendor library is found and apt can (as root).
if ! ldconfig -p 2>/dev/null | grep 'libEGL_' >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri; } >/dev/null \
      || echo "warning: could not install Mesa's EGL; flowpolicy video needs it" >&2
  else
    echo "warning: no EGL library; flowpolicy video needs one (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri)" >&2
  fi
fi
