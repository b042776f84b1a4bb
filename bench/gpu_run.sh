#!/usr/bin/env bash
# The CUDA tests and the GPU figures of bench/RESULTS.md, on a machine with an NVIDIA GPU, in steps
# that fit short leases of a shared machine (each step prints how long it took).
#
#   bench/gpu_run.sh pack DIR       # CamVid and the ImageNet weights in 64 MB, to send
#   NASFAST_DATA=DIR TORCH_HOME=DIR/torch bench/gpu_run.sh build tests ops latency    # ~8 minutes
#   NASFAST_DATA=DIR TORCH_HOME=DIR/torch TRAIN_SECONDS=200 bench/gpu_run.sh throughput train
#   A training over leases: VAL_AS_JPEG=1 bench/gpu_run.sh pack DIR (42 MB), then in each lease
#   NASFAST_DATA=DIR TORCH_HOME=DIR/torch TRAIN_SECONDS=S bench/gpu_run.sh train (no build: training
#   needs no native ops), and here
#   bench/gpu_run.sh unpack DIR (the folder of what came back); the next lease carries DIR/camvid and the run's
#   last.pt, log.jsonl and config.json (runs/gpu/arch0/), 58 MB, and resumes it
#
# Steps run in the order given, each one even when an earlier one failed (the exit status says if
# any did); their output goes to $OUT (else gpu-results/: eight files at most), the training and
# the searches to $RUNS (else runs/gpu, kept for a later call on the same machine). Limits:
#   pack DIR    CamVid from $NASFAST_DATA with its training images as JPEG (quality 90: 16 MB instead
#               of 91; the labels and validation images stay lossless, the latter JPEG too, quality 95,
#               with VAL_AS_JPEG=1: room for a training run beside them), and the MobileNet-v2 weights
#   build       the ops library in place with CUDA kernels for this GPU (1-2 minutes), by /usr/bin/g++
#               where there is one (the machine's default links the C++ runtime statically)
#   tests       the CUDA tests (pytest -m cuda), the build's and the C++ program's tests
#   ops         bench/ops.py --device cuda, each family of ops (the loss has no CUDA kernel: left out)
#               within $OPS_SECONDS (60), then --profile
#   sanitize    the native ops' CUDA tests under compute-sanitizer, its memcheck, racecheck and
#               synccheck on nasfast's kernels alone, each within $SANITIZE_SECONDS (150): what the
#               kernels' CPU emulation cannot see (accesses out of bounds, shared-memory races)
#   latency     bench/latency.py --device cuda --genotype all --size 512, within $LATENCY_SECONDS (180),
#               torch.compile's variant only with LATENCY_COMPILE=1 (its compilation takes minutes)
#   train_step  bench/train_step.py --device cuda --profile (where the training step's time goes), then
#               its variants (torch.compile's last), within $TRAIN_STEP_SECONDS (240)
#   throughput  bench/search_throughput.py --device cuda --preset fast --workers-per-gpu $WORKERS (1 4),
#               $WINDOW seconds (60) a setup, all within $THROUGHPUT_SECONDS (300), under NVIDIA's
#               Multi-Process Service where it can be started
#   train       arch0 on CamVid (paper preset, 200 epochs, ~18 minutes on an H200; $TRAIN_ARGS adds
#               options) for $TRAIN_SECONDS (none: to the end), resumed from $RUNS/arch0 where an
#               earlier call stopped (on this machine, or carried there), then best.pt evaluated on
#               val; last.pt and best.pt go to the output in parts of 15 MiB (what comes back)
#   unpack DIR  the run `train` sent back (DIR: a lease's output) written into $RUNS/arch0: last.pt, the
#               log and config.json, and best.pt where that lease made one
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
RESULTS=${OUT:-gpu-results}
RUNS=${RUNS:-runs/gpu}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pack() {
    local dest=$1
    "$PY" - "${NASFAST_DATA:?set NASFAST_DATA to the folder that holds camvid/}/camvid" "$dest" \
        "$([ "${VAL_AS_JPEG:-0}" = 1 ] && echo 95 || echo 0)" <<'EOF'
import shutil, sys
from pathlib import Path
from PIL import Image
from nasfast.encoder import find_pretrained_weights

source, dest, val_quality = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for part in ("trainannot", "valannot"):
    shutil.copytree(source / part, dest / "camvid" / part, dirs_exist_ok=True)


def copy_split(split: str, quality: int) -> int:
    """The split's images as JPEG of this quality (0: as they are), its labels and list as they are."""
    (dest / "camvid" / split).mkdir(parents=True, exist_ok=True)
    pairs = []
    for line in (source / f"{split}.txt").read_text().split("\n"):
        if line.strip():
            image, label = line.split()
            if quality:
                image_out = str(Path(image).with_suffix(".jpg"))
                Image.open(source / image).convert("RGB").save(dest / "camvid" / image_out, quality=quality)
            else:
                image_out = image
                shutil.copy(source / image, dest / "camvid" / image)
            pairs.append(f"{image_out} {label}\n")
    (dest / "camvid" / f"{split}.txt").write_text("".join(pairs))
    return len(pairs)


count = copy_split("train", 90)
copy_split("val", val_quality)
weights = dest / "torch" / "hub" / "checkpoints"
weights.mkdir(parents=True, exist_ok=True)
shutil.copy(find_pretrained_weights(), weights)
print(f"{dest}: camvid/ ({count} training images as JPEG{', validation images too' if val_quality else ''}) "
      f"and torch/hub/checkpoints/")
EOF
}

compile() {
    NASFAST_FORCE_CUDA=1 MAX_JOBS=$(nproc) "$PY" setup.py -q build_ext --inplace >>"$RESULTS/build.log" 2>&1 ||
        { tail -30 "$RESULTS/build.log"; false; }
}

build() {
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"; } |
        tee "$RESULTS/build.log"
    # The GPU machine's default compiler (/opt/gcc) links the C++ runtime statically, which setup.py
    # refuses: the system's g++ where there is one, for the C++ program's build in the tests too.
    if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
    compile || return 1
    objdump -p nasfast/_C.so | grep NEEDED | tee -a "$RESULTS/build.log"
    "$PY" -c "import sys, nasfast.ops as o; print(o.library_path() or o.why_unavailable())
sys.exit(not o.available())" | tee -a "$RESULTS/build.log"
}

tests() {
    local parallel=()
    "$PY" -c "import xdist" 2>/dev/null && parallel=(-n 4)  # a crashing test then loses only its worker
    ( status=0
      export NASFAST_REQUIRE_OPS=1  # a library that does not load fails the build's tests instead of skipping
      "$PY" -m pytest -q -p no:cacheprovider "${parallel[@]}" -m cuda tests || status=1
      "$PY" -m pytest -q -p no:cacheprovider tests/test_build.py || status=1
      "$PY" -m pytest -q -p no:cacheprovider tests/test_deploy.py -k cpp || status=1
      exit $status ) 2>&1 | tee "$RESULTS/cuda_tests.txt"
}

ops() {
    local family status=0
    for family in sep upsample reward; do  # not loss: on a GPU it runs ATen's ops on both sides (no kernel of ours)
        timeout "${OPS_SECONDS:-60}" "$PY" bench/ops.py --device cuda --only $family 2>&1 |
            tee -a "$RESULTS/ops_cuda.txt" || status=1
    done
    timeout "${OPS_SECONDS:-60}" "$PY" bench/ops.py --device cuda --profile >"$RESULTS/ops_cuda_profile.txt" 2>&1 ||
        status=1
    return $status
}

sanitize() {
    local sanitizer tool status=0
    sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
    [ -x "$sanitizer" ] || { echo "sanitize: no compute-sanitizer (it comes with the CUDA toolkit)" >&2; return 1; }
    for tool in memcheck racecheck synccheck; do
        echo "== $tool" | tee -a "$RESULTS/sanitize.txt"
        timeout "${SANITIZE_SECONDS:-150}" "$sanitizer" --tool $tool --kernel-name kns=nasfast --error-exitcode 1 \
            "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_ops_separable.py tests/test_ops_upsample_add.py \
            tests/test_ops_confusion.py 2>&1 | tail -40 | tee -a "$RESULTS/sanitize.txt"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    done
    return $status
}

latency() {
    # torch.compile's compilation (minutes for three designs) only with LATENCY_COMPILE=1
    timeout "${LATENCY_SECONDS:-180}" "$PY" bench/latency.py --device cuda --genotype all --size 512 \
        $([ "${LATENCY_COMPILE:-0}" = 1 ] || echo --no-compile) 2>&1 |
        tee "$RESULTS/latency_cuda.txt"
}

train_step() {
    timeout "${TRAIN_STEP_SECONDS:-240}" bash -c '"$0" bench/train_step.py --device cuda --profile &&
        "$0" bench/train_step.py --device cuda' "$PY" 2>&1 | tee "$RESULTS/train_step_cuda.txt"
}

throughput() (  # a subshell: the MPS variables stay here
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/nasfast-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/nasfast-mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    echo quit | nvidia-cuda-mps-control >/dev/null 2>&1  # one left by an interrupted call
    if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
        echo "under MPS" | tee "$RESULTS/throughput_cuda.txt"
    else
        echo "MPS could not be started: the processes time-slice the GPU" | tee "$RESULTS/throughput_cuda.txt"
    fi
    timeout -k 30 "${THROUGHPUT_SECONDS:-300}" "$PY" bench/search_throughput.py --device cuda --preset fast \
        --workers-per-gpu ${WORKERS:-1 4} --time-budget "${WINDOW:-60}" --keep "$RUNS/throughput-$(date +%s)" 2>&1 |
        tee -a "$RESULTS/throughput_cuda.txt"
    status=$?
    echo quit | nvidia-cuda-mps-control >/dev/null 2>&1
    exit $status
)

train() {
    local run="$RUNS/arch0" command=(--resume "$RUNS/arch0") workers=$(($(nproc) > 5 ? $(nproc) - 4 : 1)) status
    [ -f "$run/last.pt" ] || command=(--genotype arch0 --dataset camvid --out "$run" ${TRAIN_ARGS:-})
    command+=(--workers $workers --no-progress)
    # SIGINT: the run stops as after Ctrl-C, its finished epochs kept for --resume (status 124: stopped in time)
    ${TRAIN_SECONDS:+timeout -k 60 -s INT "$TRAIN_SECONDS"} "$PY" -m nasfast.train "${command[@]}" 2>&1 |
        tee -a "$RESULTS/train.txt"
    status=${PIPESTATUS[0]}
    cp "$run/log.jsonl" "$RESULTS/train_log.jsonl" && cp "$run/config.json" "$RESULTS/train_config.json" &&
        split -b 15M -d "$run/last.pt" "$RESULTS/last.pt.part" || return 1
    if [ ! -f "$run/best.pt" ]; then  # resumed from a carried last.pt, and no epoch here beat the best before
        echo "no best.pt here: the best epoch was in an earlier lease" | tee -a "$RESULTS/train.txt"
    else
        split -b 15M -d "$run/best.pt" "$RESULTS/best.pt.part" &&
            "$PY" -m nasfast.evaluate --checkpoint "$run/best.pt" --workers $workers 2>&1 |
            tee -a "$RESULTS/train.txt" || return 1
    fi
    [ "$status" -eq 0 ] || [ "$status" -eq 124 ]
}

unpack() {  # what `train` sent back, written into the run directory that `train` resumes from
    local from=$1 run="$RUNS/arch0"
    [ -f "$from/last.pt.part00" ] && [ -f "$from/train_config.json" ] ||
        { echo "unpack: $from holds no training run of gpu_run.sh (last.pt.part00, train_config.json)" >&2; return 1; }
    mkdir -p "$run" && cp "$from/train_config.json" "$run/config.json" && cp "$from/train_log.jsonl" "$run/log.jsonl" &&
        cat "$from"/last.pt.part* >"$run/last.pt" || return 1
    if [ -f "$from/best.pt.part00" ]; then cat "$from"/best.pt.part* >"$run/best.pt" || return 1; fi
    echo "$run: $(wc -l <"$run/log.jsonl") epochs of its training; to resume in a lease, carry the data's camvid/" \
        "and this run's last.pt, log.jsonl and config.json (best.pt stays here unless a later lease beats it)"
}

steps=("$@")
for ((i = 0; i < ${#steps[@]}; i++)); do  # all names checked before any step runs
    case ${steps[i]} in
        pack|unpack) [ -n "${steps[i + 1]:-}" ] || { echo "${steps[i]} needs a folder" >&2; exit 2; }; i=$((i + 1)) ;;
        build|tests|ops|sanitize|latency|train_step|throughput|train) ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
        *) echo "unknown step ${steps[i]} (see --help)" >&2 && exit 2 ;;
    esac
done

failed=()
while [ $# -gt 0 ]; do
    step=$1 && shift
    started=$(date +%s)
    case $step in
        pack|unpack) folder=$1 && shift && $step "$folder" ;;
        *) mkdir -p "$RESULTS" "$RUNS" && $step ;;
    esac || failed+=("$step")
    echo "== $step: $(($(date +%s) - started)) s${failed[*]:+ (failed so far: ${failed[*]})}"
done
[ ${#failed[@]} -eq 0 ]
