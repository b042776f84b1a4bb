import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
    records = [{"finished": finished, "seconds": seconds, "status": "ok"}
               for finished, seconds in ((110.0, 10.0), (112.0, 8.0), (130.0, 18.0))]
    count, window, per_hour, start = bench.throughput(records)
    assert (count, window, start) == (3, 30.0, 100.0) and per_hour == pytest.approx(360.0)
    failed = {"finished": 130.5, "seconds": 0.4, "status": "failed"}  # out of memory, say: time but no candidate
    count, window, per_hour, _ = bench.throughput(records + [failed] * 5)
    assert (count, window) == (3, 30.5) and per_hour == pytest.approx(3600 * 3 / 30.5)
    assert bench.throughput([]) == (0, 0.0, 0.0, 0.0)
    assert bench.busy_share([(1.0, 50.0), (2.0, 70.0), (9.0, 0.0)], 0.5, 3.0) == 60.0


def test_throughput_counts_once_every_worker_runs():
    """A later rank opens the cache and loads the encoder after rank 0 began: that start-up was
    counted against the processes that share the work."""
    bench = bench_module()
    rank0 = [{"finished": 100.0 + 10 * i, "seconds": 10.0, "status": "ok", "host": "h", "worker": 0}
             for i in range(1, 7)]  # from 100 to 160
    rank1 = [{"finished": 120.0 + 10 * i, "seconds": 10.0, "status": "ok", "host": "h", "worker": 1}
             for i in range(1, 5)]  # began at 120
    assert bench.window_start(rank0 + rank1) == 120.0
    assert bench.throughput(rank0 + rank1)[:2] == (8, 40.0)  # rank 0's two candidates before 120 left out
    assert bench.throughput(rank0) == (6, 60.0, 360.0, 100.0)


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
    for setup, row in rows.items():  # row: setup (2 words), threads, candidates, failed, ..., stage 1 s, stage 2 s
        # the candidates begun once every worker ran: with 2 processes, rank 0's first is not among them
        # (unless rank 1, still starting, evaluated none)
        assert row[3] in (("2",) if setup == "1 proc" else ("1", "2")) and row[4] == "0", (setup, row)
        assert float(row[-2]) > 0 and (row[-1] == "-" or float(row[-1]) > 0), (setup, row)
    assert "2 proc / 1 proc:" in result.stdout


def run_main(bench, argv, capsys):
    try:
        status = bench.run(bench.main, "search_throughput.py", argv)
    except SystemExit as exit:  # argparse's errors
        status = exit.code
    return (status, *capsys.readouterr())


@pytest.mark.parametrize("argv, words", [
    (["--budjet", "2"], ["unrecognized arguments: --budjet 2", "go after --"]),
    (["--", "--budjet", "2"], ["options for python -m nasfast.search", "--budjet"]),
    (["--procs", "1", "0"], ["--procs", "at least 1"]),
    (["--threads", "0"], ["--threads", "at least 1"]),
    (["--time-budget", "0"], ["--time-budget", "more than 0"]),
    (["--time-budget", "soon"], ["--time-budget", "soon"]),
    (["--preset", "huge"], ["--preset", "invalid choice"]),
    (["--data-root", "/nonexistent"], ["--data-root /nonexistent: no such directory"]),
    (["--keep", "/proc/nasfast"], ["/proc/nasfast"]),
    (["--threads", "2", "--procs", "1", "3"], ["3 processes cannot share --threads 2 equally"]),
])
def test_bad_options_are_refused_before_any_search_starts(argv, words, capsys):
    status, out, err = run_main(bench_module(), argv, capsys)
    assert status == 2 and "Traceback" not in err and "running" not in err and out == ""
    assert all(word in err.strip().splitlines()[-1] for word in words), err


def test_only_options_after_a_double_dash_go_to_the_search():
    args, extra = bench_module().parse_args(["--budget", "3", "--", "--stage1-images", "16"])
    assert args.budget == 3 and extra == ["--stage1-images", "16"]
    assert bench_module().parse_args(["--procs", "2"])[1] == []


def test_keep_dir_of_an_earlier_run_is_refused_before_starting(tmp_path, capsys):
    (tmp_path / "run0-p1-w1").mkdir()
    status, _, err = run_main(bench_module(), ["--procs", "1", "--keep", str(tmp_path)], capsys)
    assert status == 2 and err.count("\n") == 1 and "already holds a search" in err and "running" not in err


CHILD_STDERR = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "/work/main/nasfast/data/datasets.py", line 41, in find_data_root
[rank0]:     raise FileNotFoundError(
[rank0]: FileNotFoundError: dataset 'camvid' not found; looked in: /nowhere.
[rank0]: Get CamVid as released with the SegNet tutorial, then pass --data-root DIR.
"""
TORCHRUN_REPORT = """\
W1126 10:43:09.090000 26631 api.py:1028] Sending process 26635 closing signal SIGTERM
E1126 10:43:09.124000 26631 api.py:1002] failed (exitcode: 1) local_rank: 1
Traceback (most recent call last):
  File "torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
nasfast.search FAILED
"""


def test_a_failed_search_is_reported_by_its_own_error_not_torchruns():
    bench = bench_module()
    assert bench.child_error(CHILD_STDERR + TORCHRUN_REPORT).splitlines() == [
        "FileNotFoundError: dataset 'camvid' not found; looked in: /nowhere.",
        "Get CamVid as released with the SegNet tutorial, then pass --data-root DIR."]
    one_line = "noise\npython -m nasfast.search: error: --out x already holds a search\n" + TORCHRUN_REPORT
    assert bench.child_error(one_line) == "python -m nasfast.search: error: --out x already holds a search"


def test_a_failed_search_under_torchrun_takes_a_few_lines(tmp_path):
    (tmp_path / "empty").mkdir()  # a directory, so the bench starts the search, which finds no data there
    result = subprocess.run([sys.executable, str(SCRIPT), "--budget", "1", "--procs", "1", "--data-root",
                             str(tmp_path / "empty")], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1 and "ChildFailedError" not in result.stderr
    assert len(result.stderr.splitlines()) <= 6 and "train.txt" in result.stderr, result.stderr


def test_the_gpu_sampler_asks_nvidia_smi_for_the_cuda_devices_by_uuid(tmp_path, monkeypatch):
    """nvidia-smi's GPU 0 is the first on the PCI bus, CUDA's the fastest one or the first of
    CUDA_VISIBLE_DEVICES: numbers would sample another GPU than the search ran on."""
    import torch

    bench = bench_module()
    uuids = {0: "6f1c8e52-0b7e-9d0a-3c55-d0e3e2f1a001", 1: "GPU-0c5aa1b3-77e2-4c1d-9e0f-5b2d3c4e5f60", 2: ""}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuids[i]))
    assert bench.nvidia_smi_names([0, 1, 2]) == ["GPU-" + uuids[0], uuids[1], "2"]
    asked = tmp_path / "asked"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {asked}\necho 40\necho 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with bench.GPUSampler([0, 1], interval=0.01) as sampler:
        deadline = time.monotonic() + 30
        while not sampler.samples and time.monotonic() < deadline:
            time.sleep(0.01)
    assert asked.read_text().split()[-1] == f"GPU-{uuids[0]},{uuids[1]}" and sampler.samples[0][1] == 50.0
