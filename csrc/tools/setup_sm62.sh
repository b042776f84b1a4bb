#!/usr/bin/env bash
# Prepares what compiling nasfast's CUDA kernels for the Jetson TX2 (sm_62) needs here, where
# CUDA 13's nvcc no longer targets Pascal: clang++-16 (Debian) and a CUDA 12.9 root assembled
# from NVIDIA's pip wheels. Idempotent. Prints the CUDA root (for NASFAST_SM62_ROOT) last.
#
#   csrc/tools/setup_sm62.sh [DIR]    DIR defaults to $NASFAST_SM62_DIR or ~/.cache/nasfast/sm62
#   PYTHON=...                        the Python whose pip installs the wheels (default python3)
set -euo pipefail

DIR="${1:-${NASFAST_SM62_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nasfast/sm62}}"
PYTHON="${PYTHON:-python3}"
ROOT="$DIR/cuda"
WHEELS="$DIR/wheels"

if ! command -v clang++-16 >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -qq clang-16 >&2 || { $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq clang-16 >&2; }
fi

if [ ! -f "$ROOT/version.json" ]; then
    "$PYTHON" -m pip install -q --disable-pip-version-check --target "$WHEELS" \
        "nvidia-cuda-nvcc-cu12==12.9.86" "nvidia-cuda-runtime-cu12==12.9.*" >&2
    NVCC="$WHEELS/nvidia/cuda_nvcc"
    RUNTIME="$WHEELS/nvidia/cuda_runtime"
    rm -rf "$ROOT.tmp"
    mkdir -p "$ROOT.tmp/include" "$ROOT.tmp/bin" "$ROOT.tmp/nvvm"
    cp -r "$RUNTIME/include/." "$ROOT.tmp/include/"
    cp -r "$NVCC/include/." "$ROOT.tmp/include/"          # crt/..., nvcc's own headers
    cp -r "$NVCC/nvvm/libdevice" "$ROOT.tmp/nvvm/"
    cp "$NVCC/bin/ptxas" "$ROOT.tmp/bin/"
    touch "$ROOT.tmp/include/curand_mtgp32_kernel.h"      # clang's CUDA wrapper includes it
    echo '{"cuda":{"name":"CUDA SDK","version":"12.9.0"}}' > "$ROOT.tmp/version.json"
    rm -rf "$ROOT"
    mv "$ROOT.tmp" "$ROOT"                                # complete or absent, never half made
fi

echo "$ROOT"
