"""Search throughput: candidates per hour of one search run as 1 process or N processes under
torchrun (and, on a GPU, with 1, 2 or 4 worker processes sharing one GPU), at the same preset
and budget.

    python bench/search_throughput.py                                   # CPU, tiny preset, 1 vs 2 processes
    python bench/search_throughput.py --device cuda --workers-per-gpu 1 2 4 --budget 40
    python bench/search_throughput.py --time-budget 10m --procs 1 2 4 --threads 4 -- --stage1-images 32

Throughput counts from the candidates' own start and finish times (`finished` - `seconds` in
the log), over the candidates begun once every worker runs, so the start-up (imports, the stage-1
cache, a later rank's opening of it) is left out. The total thread count is held equal: each of N
processes gets --threads / N (OMP_NUM_THREADS; N must divide --threads). On a GPU the
parent samples the GPU's utilisation every 0.5 s (nvidia-smi) and reports its mean over the
measured window as the busy share. Options after `--` go to `python -m nasfast.search`.
"""
import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from nasfast.cli import UsageError, path_text, positive_int, run
from nasfast.data.datasets import DATASETS, find_data_root
from nasfast.files import SEARCH_LOG, read_records
from nasfast.search.options import build_parser as search_parser, duration
from nasfast.search.config import PRESETS

REPO = Path(__file__).resolve().parents[1]
PROG = Path(__file__).name
TORCHRUN_LOG = re.compile(r"[IWEF]\d{4} ")  # torchrun's own log lines (glog format)
RANK_PREFIX = re.compile(r"\[rank\d+\]: ?")  # torch.distributed's prefix on a process's traceback
ERROR_START = re.compile(r"[\w.]+(Error|Exception|Interrupt)\b|\S.*: error: ")


@dataclass(frozen=True)
class Setup:
    procs: int
    workers_per_gpu: int = 1

    def name(self, device: str) -> str:
        if device == "cuda":
            gpus = -(-self.procs // self.workers_per_gpu)
            shared = f" ({self.workers_per_gpu}/GPU)" if self.workers_per_gpu > 1 else ""
            return f"{self.procs} proc, {gpus} GPU{shared}"
        return f"{self.procs} proc"


def setups(device: str, procs: Sequence[int], workers_per_gpu: Sequence[int], gpu_count: int = 0) -> List[Setup]:
    """On a CPU: each process count. On a GPU: 1, 2, 4... workers sharing GPU 0, then process
    counts of one worker per GPU (as many as there are GPUs)."""
    if device != "cuda":
        return [Setup(n) for n in dict.fromkeys(procs)]
    shared = [Setup(w, w) for w in dict.fromkeys(workers_per_gpu)]
    spread = [Setup(n) for n in dict.fromkeys(procs) if 1 < n <= gpu_count and Setup(n, 1) not in shared]
    return shared + spread


class Throughput(NamedTuple):
    finished: int     # candidates
    seconds: float    # the window measured
    per_hour: float
    start: float      # when the window began (window_start)


def throughput(records: List[Dict]) -> Throughput:
    """Over the candidates begun once every worker runs (window_start), to the last one's finish: a
    failed candidate (out of memory, say) takes time, not a count."""
    if not records:
        return Throughput(0, 0.0, 0.0, 0.0)
    start = window_start(records)
    counted = [r for r in records if r["finished"] - r["seconds"] >= start]
    window = max(r["finished"] for r in counted) - start
    finished = sum(r["status"] == "ok" for r in counted)
    return Throughput(finished, window, 3600 * finished / window if window > 0 else 0.0, start)


def window_start(records: List[Dict]) -> float:
    """When the last worker to begin began its first candidate: under torchrun, the other ranks
    open the cache, load the encoder and decode their images only after rank 0 began its first."""
    first: Dict[Tuple, float] = {}
    for r in records:
        worker = (r.get("host"), r.get("worker"))
        first[worker] = min(first.get(worker, r["finished"]), r["finished"] - r["seconds"])
    return max(first.values())


def busy_share(samples: List[Tuple[float, float]], start: float, end: float) -> Optional[float]:
    inside = [u for t, u in samples if start <= t <= end]
    return sum(inside) / len(inside) if inside else None


def nvidia_smi_names(gpus: Sequence[int]) -> List[str]:
    """How nvidia-smi names CUDA devices `gpus`: by UUID, since it numbers the GPUs in PCI bus
    order, all of them, and CUDA fastest first, only those of CUDA_VISIBLE_DEVICES; by the CUDA
    number where torch gives no UUID (before 2.4)."""
    import torch

    names = []
    for gpu in gpus:
        uuid = str(getattr(torch.cuda.get_device_properties(gpu), "uuid", ""))
        names.append(uuid if uuid[:4] in ("GPU-", "MIG-") else f"GPU-{uuid}" if uuid else str(gpu))
    return names


class GPUSampler:
    """nvidia-smi's utilisation of the given CUDA devices, mean over them, every `interval` seconds."""

    def __init__(self, gpus: Sequence[int], interval: float = 0.5):
        self.gpus, self.interval = nvidia_smi_names(gpus), interval
        self.samples: List[Tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def _loop(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", ",".join(self.gpus)]
        while not self._stop.is_set():
            try:
                values = [float(v) for v in subprocess.run(query, capture_output=True, text=True,
                                                           timeout=5).stdout.split()]
                if values:
                    self.samples.append((time.time(), sum(values) / len(values)))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def search_arguments(setup: Setup, args, extra: List[str], run_dir: Path) -> List[str]:
    """The options of python -m nasfast.search for one setup."""
    budget = (["--budget", str(args.budget)] if args.budget else []) + \
             (["--time-budget", args.time_budget] if args.time_budget else [])
    data = ["--data-root", args.data_root] if args.data_root else []
    return ["--dataset", args.dataset, "--preset", args.preset, "--out", str(run_dir), "--device", args.device,
            "--workers-per-gpu", str(setup.workers_per_gpu), "--no-progress", *budget, *data, *extra]


def search_command(setup: Setup, args, extra: List[str], run_dir: Path) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(setup.procs),
            "-m", "nasfast.search", *search_arguments(setup, args, extra, run_dir)]


def check_search_options(args, extra: List[str]) -> None:
    """Parses what the search will get with its own parser, so that a typo after `--` or data that
    are not there stop here, before any run, in one line."""
    parser = search_parser()

    def refuse(message):
        raise UsageError(f"options for python -m nasfast.search: {message}")
    parser.error = refuse
    search = parser.parse_args(search_arguments(Setup(1), args, extra, Path("RUN_DIR")))
    find_data_root(search.dataset, search.data_root)


def child_error(stderr: str, max_lines: int = 4) -> str:
    """The processes' last error message in torchrun's stderr, without torchrun's own report (its
    log lines and the ChildFailedError traceback after them) or the [rankN] prefixes."""
    own = []
    for line in stderr.splitlines():
        if "ChildFailedError" in line or (TORCHRUN_LOG.match(line) and "failed (exitcode" in line):
            break  # torchrun's report begins
        if not TORCHRUN_LOG.match(line):
            own.append(RANK_PREFIX.sub("", line, count=1))
    starts = [i for i, line in enumerate(own) if ERROR_START.match(line)]
    first = starts[-1] if starts else max(0, len(own) - max_lines)
    return "\n".join(own[first:first + max_lines])


def failure(setup_name: str, result: subprocess.CompletedProcess, run_dir: Path, kept: bool) -> str:
    """What to say when a setup's search fails: its processes' error, and where the full output is."""
    log = run_dir / "torchrun.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    where = f"torchrun's full output: {log}" if kept else "--keep DIR keeps torchrun's full output"
    # stdout: the search's summary
    said = child_error(result.stderr).splitlines() + result.stdout.strip().splitlines()[-2:]
    message = "\n".join("  " + line for line in said)
    return f"{PROG}: {setup_name} failed (exit {result.returncode}):\n{message}\n({where})"


def measure(setup: Setup, args, extra: List[str], run_dir: Path, gpu_count: int) -> Dict:
    threads = max(1, args.threads // setup.procs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    gpus = range(min(gpu_count, -(-setup.procs // setup.workers_per_gpu)))
    sampling = args.device == "cuda" and GPUSampler.available()
    with GPUSampler(gpus) if sampling else contextlib.nullcontext() as sampler:
        result = subprocess.run(search_command(setup, args, extra, run_dir), env=env, capture_output=True,
                                text=True)
    if result.returncode != 0:
        raise SystemExit(failure(setup.name(args.device), result, run_dir, kept=bool(args.keep)))
    records = read_records(str(run_dir / SEARCH_LOG))
    count, window, per_hour, start = throughput(records)
    busy = busy_share(sampler.samples, start, start + window) if sampler else None
    return {"setup": setup.name(args.device), "procs": setup.procs, "workers_per_gpu": setup.workers_per_gpu,
            "threads": threads, "candidates": count, "failed": sum(r["status"] != "ok" for r in records),
            "seconds": window, "per_hour": per_hour, "busy": busy,
            "workers": len({(r["host"], r["worker"]) for r in records}),
            "stage1_s": median_of(records, "stage1_seconds"), "stage2_s": median_of(records, "stage2_seconds")}


def median_of(records: List[Dict], key: str) -> Optional[float]:
    """The median of the records' `key` where they have one (a stage-2 time only where the gate let it run)."""
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


TABLE_HEADER = (f"{'setup':<24} {'threads':>7} {'cand':>5} {'failed':>6} {'window s':>9} {'cand/h':>9} "
                f"{'ratio':>6} {'GPU busy':>8} {'stage 1 s':>9} {'stage 2 s':>9}")


def table_row(r: Dict, base_per_hour: float) -> str:
    """One setup's line of the table; its ratio to the first setup's finished candidates per hour."""
    ratio = r["per_hour"] / base_per_hour if base_per_hour else float("nan")
    busy = "-" if r["busy"] is None else f"{r['busy']:.0f}%"
    stages = " ".join("        -" if r[key] is None else f"{r[key]:>9.2f}" for key in ("stage1_s", "stage2_s"))
    return (f"{r['setup']:<24} {r['threads']:>7} {r['candidates']:>5} {r['failed']:>6} "
            f"{r['seconds']:>9.1f} {r['per_hour']:>9.1f} {ratio:>5.2f}x {busy:>8} {stages}")


def ratios(rows: List[Dict]) -> List[str]:
    return [f"{r['setup']} / {rows[0]['setup']}: {r['per_hour'] / rows[0]['per_hour']:.2f}x"
            for r in rows[1:] if rows[0]["per_hour"] > 0]


def time_budget(text: str) -> str:
    """A search time as python -m nasfast.search takes it (600, 30m, 4h), checked here, kept as text."""
    duration(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the searches run [cpu]")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="search preset [tiny on cpu, fast on cuda]")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="camvid", help="[camvid]")
    parser.add_argument("--data-root", type=path_text,
                        help="dataset directory (default: $NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>)")
    parser.add_argument("--budget", type=positive_int, help="candidates per setup [8, unless --time-budget]")
    parser.add_argument("--time-budget", type=time_budget, help="search time per setup (600, 30m...)")
    parser.add_argument("--procs", type=positive_int, nargs="+", default=[1, 2], help="process counts [1 2]")
    parser.add_argument("--workers-per-gpu", type=positive_int, nargs="+", default=[1, 2, 4],
                        help="on a GPU: processes sharing GPU 0 [1 2 4]")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                        help="CPU threads in total, shared among the processes [all cores]")
    parser.add_argument("--keep", metavar="DIR", type=path_text,
                        help="keep the run directories under DIR (it must not hold "
                             "those of an earlier run)")
    return parser


def parse_args(argv=None):
    """The benchmark's options, and those after `--`, which go to python -m nasfast.search."""
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv[:split])
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (options for python -m nasfast.search go "
                     "after --)")
    args.preset = args.preset or ("fast" if args.device == "cuda" else "tiny")
    uneven = [n for n in args.procs + ([] if args.device != "cuda" else args.workers_per_gpu) if args.threads % n]
    if uneven:
        parser.error(f"{uneven[0]} processes cannot share --threads {args.threads} equally (the benchmark holds the "
                     f"total equal): give --threads a multiple of every process count")
    if args.budget is None and args.time_budget is None:
        args.budget = 8
    return args, argv[split + 1:]


def usable_gpus(device: str) -> int:
    """How many GPUs the setups may use: none on a CPU; UsageError for cuda without one."""
    if device != "cuda":
        return 0
    import torch
    if torch.cuda.device_count() == 0:
        raise UsageError("--device cuda: no GPU here")
    return torch.cuda.device_count()


def run_dirs(root: Path, runs: List[Setup]) -> List[Path]:
    return [root / f"run{i}-p{setup.procs}-w{setup.workers_per_gpu}" for i, setup in enumerate(runs)]


def check_keep(keep: str, dirs: List[Path]) -> None:
    """Refuses a --keep DIR that holds an earlier run's directories: its searches would not start."""
    taken = [d for d in dirs if d.exists()]
    if taken:
        raise UsageError(f"--keep {keep} already holds a search ({taken[0].name}, from an earlier run): "
                         "choose another directory or remove it")


def main(argv=None) -> int:
    args, extra = parse_args(argv)
    check_search_options(args, extra)
    gpu_count = usable_gpus(args.device)
    runs = setups(args.device, args.procs, args.workers_per_gpu, gpu_count)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nasfast-throughput-"))
    dirs = run_dirs(root, runs)
    if args.keep:
        check_keep(args.keep, dirs)
        root.mkdir(parents=True, exist_ok=True)  # a DIR that cannot be made is refused now, before any search
    budget = f"budget {args.budget}" if args.budget else f"time budget {args.time_budget}"
    print(f"search throughput: {args.dataset}, preset {args.preset}, {budget}, device {args.device}, "
          f"{args.threads} CPU threads in total\n{TABLE_HEADER}", flush=True)
    rows = []
    try:
        for setup, run_dir in zip(runs, dirs):  # each row as soon as measured: a timeout keeps the rows done
            print(f"running {setup.name(args.device)} ...", file=sys.stderr, flush=True)
            rows.append(measure(setup, args, extra, run_dir, gpu_count))
            print(table_row(rows[-1], rows[0]["per_hour"]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for line in ratios(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
