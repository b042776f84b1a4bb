#!/usr/bin/env bash
# The CUDA tests and the GPU figures of bench/RESULTS.md, on a machine with an NVIDIA GPU, in steps
# that fit short leases of a shared machine (each step prints how long it took).
#
#   bench/gpu_run.sh pack DIR       # CamVid and the ImageNet weights in 64 MB, to send
#   NASFAST_DATA=DIR TORCH_HOME=DIR/torch bench/gpu_run.sh build tests ops latency throughput train
#
# Steps run in the order given, each one even when an earlier one failed (the exit status says if
# any did); their output goes to $OUT (else gpu-results/), the training to $RUNS (else runs/gpu).
#   pack DIR    CamVid from $NASFAST_DATA with its training images as JPEG (quality 90: 16 MB instead
#               of 91; the labels and validation images stay lossless), and the MobileNet-v2 weights
#   build       the ops library in place with CUDA kernels for this GPU; rebuilt with /usr/bin/g++
#               if the compiler linked its C++ runtime statically (that makes errors crash)
#   tests       the CUDA tests (pytest -m cuda) and the build's tests
#   ops         bench/ops.py --device cuda, each family of ops within $OPS_SECONDS (150)
#   latency     bench/latency.py --device cuda --genotype all --size 512, within $LATENCY_SECONDS (240)
#   throughput  bench/search_throughput.py --device cuda --preset fast --workers-per-gpu 1 4, $WINDOW
#               seconds (60) a setup, under NVIDIA's Multi-Process Service where it can be started
#   train       arch0 on CamVid (paper preset, 200 epochs; $TRAIN_ARGS adds options) stopped after
#               $TRAIN_SECONDS (none: all of it; a later run resumes it), then best.pt evaluated on val
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
RESULTS=${OUT:-gpu-results}
RUNS=${RUNS:-runs/gpu}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pack() {
    local dest=$1
    "$PY" - "${NASFAST_DATA:?set NASFAST_DATA to the folder that holds camvid/}/camvid" "$dest" <<'EOF'
import shutil, sys
from pathlib import Path
from PIL import Image
from nasfast.encoder import find_pretrained_weights

source, dest = Path(sys.argv[1]), Path(sys.argv[2])
for part in ("trainannot", "val", "valannot"):
    shutil.copytree(source / part, dest / "camvid" / part, dirs_exist_ok=True)
shutil.copy(source / "val.txt", dest / "camvid" / "val.txt")
(dest / "camvid" / "train").mkdir(parents=True, exist_ok=True)
pairs = []
for line in (source / "train.txt").read_text().split("\n"):
    if line.strip():
        image, label = line.split()
        jpeg = str(Path(image).with_suffix(".jpg"))
        Image.open(source / image).convert("RGB").save(dest / "camvid" / jpeg, quality=90)
        pairs.append(f"{jpeg} {label}\n")
(dest / "camvid" / "train.txt").write_text("".join(pairs))
weights = dest / "torch" / "hub" / "checkpoints"
weights.mkdir(parents=True, exist_ok=True)
shutil.copy(find_pretrained_weights(), weights)
print(f"{dest}: camvid/ ({len(pairs)} training images as JPEG) and torch/hub/checkpoints/")
EOF
}

compile() {
    MAX_JOBS=$(nproc) "$PY" setup.py -q build_ext --inplace >>"$RESULTS/build.log" 2>&1 ||
        { tail -30 "$RESULTS/build.log"; false; }
}

build() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
    compile || return 1
    if ! objdump -p nasfast/_C.so | grep -Eq 'NEEDED +lib(std)?c\+\+\.so' && [ -x /usr/bin/g++ ]; then
        echo "the library links its C++ runtime statically: rebuilding with /usr/bin/g++"
        rm -rf build && CC=/usr/bin/gcc CXX=/usr/bin/g++ compile || return 1
    fi
    objdump -p nasfast/_C.so | grep NEEDED
    "$PY" -c "import torch, nasfast.ops as o; print(o.library_path())
assert torch._C._dispatch_has_kernel_for_dispatch_key('nasfast::sep_conv', 'CUDA'), 'built without CUDA kernels'"
}

tests() {
    local parallel=()
    "$PY" -c "import xdist" 2>/dev/null && parallel=(-n 4)  # a crashing test then loses only its worker
    { "$PY" -m pytest -q -p no:cacheprovider "${parallel[@]}" -m cuda tests &&
        "$PY" -m pytest -q -p no:cacheprovider tests/test_build.py; } 2>&1 | tee "$RESULTS/cuda_tests.txt"
}

ops() {
    local family status=0
    for family in sep upsample reward loss; do
        timeout "${OPS_SECONDS:-150}" "$PY" bench/ops.py --device cuda --only $family 2>&1 |
            tee -a "$RESULTS/ops_cuda.txt" || status=1
    done
    return $status
}

latency() {
    timeout "${LATENCY_SECONDS:-240}" "$PY" bench/latency.py --device cuda --genotype all --size 512 2>&1 |
        tee "$RESULTS/latency_cuda.txt"
}

throughput() {
    local mps=""
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/nasfast-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/nasfast-mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
        mps=1 && echo "under MPS"
    else
        echo "MPS could not be started: the processes time-slice the GPU"
    fi
    "$PY" bench/search_throughput.py --device cuda --preset fast --workers-per-gpu 1 4 --time-budget "${WINDOW:-60}" \
        --keep "$RUNS/throughput" 2>&1 | tee "$RESULTS/throughput_cuda.txt"
    local status=$?
    [ -z "$mps" ] || echo quit | nvidia-cuda-mps-control
    return $status
}

train() {
    local run="$RUNS/arch0" command=(--resume "$RUNS/arch0") workers=$(($(nproc) > 5 ? $(nproc) - 4 : 1))
    [ -f "$run/last.pt" ] || command=(--genotype arch0 --dataset camvid --out "$run" ${TRAIN_ARGS:-})
    command+=(--workers $workers --no-progress)
    # SIGINT: the run stops as after Ctrl-C, its finished epochs kept for --resume
    ${TRAIN_SECONDS:+timeout -s INT "$TRAIN_SECONDS"} "$PY" -m nasfast.train "${command[@]}" 2>&1 |
        tee -a "$RESULTS/train.txt"
    cp "$run/log.jsonl" "$RESULTS/train_log.jsonl"
    "$PY" -m nasfast.evaluate --checkpoint "$run/best.pt" --workers $workers 2>&1 | tee "$RESULTS/evaluate.txt"
}

failed=()
while [ $# -gt 0 ]; do
    step=$1 && shift
    started=$(date +%s)
    case $step in
        pack) dest=${1:?pack needs a destination folder} && shift && pack "$dest" ;;
        build|tests|ops|latency|throughput|train) mkdir -p "$RESULTS" "$RUNS" && $step ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
        *) echo "unknown step $step (see --help)" >&2 && exit 2 ;;
    esac || failed+=("$step")
    echo "== $step: $(($(date +%s) - started)) s${failed[*]:+ (failed so far: ${failed[*]})}"
done
[ ${#failed[@]} -eq 0 ]
