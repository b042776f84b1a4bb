import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "search_throughput.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("search_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_counts_from_the_first_start_to_the_last_finish():
    bench = bench_module()
    records = [{"finished": 110.0, "seconds": 10.0}, {"finished": 112.0, "seconds": 8.0},
               {"finished": 130.0, "seconds": 18.0}]
    count, window, per_hour = bench.throughput(records)
    assert (count, window) == (3, 30.0) and per_hour == pytest.approx(360.0)
    assert bench.throughput([]) == (0, 0.0, 0.0)
    assert bench.busy_share([(1.0, 50.0), (2.0, 70.0), (9.0, 0.0)], 0.5, 3.0) == 60.0


def test_setups_on_cpu_and_gpu():
    bench = bench_module()
    Setup = bench.Setup
    assert bench.setups("cpu", [1, 2, 4], [1, 2, 4]) == [Setup(1), Setup(2), Setup(4)]
    assert bench.setups("cuda", [1, 2], [1, 2, 4], gpu_count=2) == [Setup(1, 1), Setup(2, 2), Setup(4, 4), Setup(2, 1)]
    assert bench.setups("cuda", [1, 2], [1, 4], gpu_count=1) == [Setup(1, 1), Setup(4, 4)]


def test_one_and_two_processes_on_cpu(camvid_root):
    result = subprocess.run([sys.executable, str(SCRIPT), "--budget", "2", "--procs", "1", "2", "--",
                             "--stage1-images", "16"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("  ")[0]: line.split() for line in result.stdout.splitlines()
            if " proc " in line and "/" not in line}
    assert set(rows) == {"1 proc", "2 proc"}
    assert rows["1 proc"][-2] == "1.00x" and rows["2 proc"][3] == "2"  # candidates of the 2-process run
    assert "2 proc / 1 proc:" in result.stdout
