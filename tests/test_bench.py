import os
import subprocess
import sys
from pathlib import Path

import pytest

import nasfast.ops as ops

REPO = Path(__file__).resolve().parents[1]


def latency(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "latency.py"), *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)


def test_latency_table_on_cpu():
    result = latency("--device", "cpu", "--arch", "arch1", "--size", "96", "--runs", "3", "--warmup", "2",
                     "--no-compile")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("arch1")]
    assert len(rows) >= 2 and all("2,809,045" in row and "±" in row for row in rows)


def test_jetson_elsewhere_measures_nothing_and_says_why():
    if os.path.exists("/etc/nv_tegra_release"):
        return
    result = latency("--device", "jetson")
    assert result.returncode != 0 and "not a Jetson" in result.stderr and result.stdout == ""


def test_search_data_table(camvid_root):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "search_data.py"), "--preset", "tiny",
                             "--candidates", "2"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "MB kept" in lines[0] and " 0 MB kept" not in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "2"] and all(row[3].endswith("x") for row in rows)


@pytest.mark.skipif(not ops.available(), reason="native ops library not built")
def test_ops_loss_table_on_cpu():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "ops.py"), "--quick", "--only", "loss",
                             "--threads", "2"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert result.returncode == 0, result.stderr
    assert "freed memory kept up to" in result.stdout.splitlines()[0]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("N=64 34x45->270x360")]
    assert len(rows) == 2 and all(row[-2].endswith("x") and float(row[-2][:-1]) > 0 for row in rows)
