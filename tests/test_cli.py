"""nasfast.cli: user errors as one line, Ctrl-C as a note, bugs as tracebacks; argument types."""
import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nasfast.cli import (UsageError, at_least_two, counted, decay, fraction, images_per_batch, loader_workers,
                         non_negative_float, non_negative_int, option_text, positive_float, positive_int, probability,
                         resolve_device, run)


def failing(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error, message", [
    (UsageError("--out x holds a run"), "tool: error: --out x holds a run"),
    (ValueError("bad genotype"), "tool: error: bad genotype"),
    (FileNotFoundError(2, "No such file or directory", "/nope.pt"), "tool: error: No such file or directory: /nope.pt"),
    (MemoryError(), "tool: error: out of memory"),
    (MemoryError("Unable to allocate 7.28 TiB"), "tool: error: out of memory: Unable to allocate 7.28 TiB"),
])
def test_user_errors_are_one_line(capsys, error, message):
    assert run(failing(error), "tool") == 2
    assert capsys.readouterr().err.strip() == message


def test_option_text_is_the_value_as_typed():
    assert [option_text(v) for v in (None, (), [], (0.5, 2.0), [30, 40], 3, "sgd")] == \
        ["none", "none", "none", "0.5 2.0", "30 40", "3", "sgd"]


def test_ctrl_c_is_a_note_and_bugs_keep_their_traceback(capsys, monkeypatch):
    assert run(failing(KeyboardInterrupt()), "tool") == 130
    assert capsys.readouterr().err.strip() == "tool: interrupted"
    with pytest.raises(KeyError):
        run(failing(KeyError("bug")), "tool")
    monkeypatch.setenv("NASFAST_TRACEBACK", "1")
    with pytest.raises(UsageError):
        run(failing(UsageError("shown with its traceback")), "tool")


def test_sigterm_is_a_note_as_ctrl_c_is(capsys):
    handler = signal.getsignal(signal.SIGTERM)

    def terminated(argv):
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's, or timeout's
        return 0
    assert run(terminated, "tool") == 130
    assert capsys.readouterr().err.strip() == "tool: interrupted" and signal.getsignal(signal.SIGTERM) == handler


def test_a_tool_terminated_while_it_starts_says_so(tmp_path, camvid_root):
    """SIGTERM before the training's loop (checking the validation files, here) ended it without a word."""
    tool = subprocess.Popen([sys.executable, "-m", "nasfast.train", "--genotype", "arch0", "--preset", "tiny",
                             "--out", str(tmp_path / "run"), "--no-progress"], stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert tool.stderr.readline().startswith("design: arch0")
    tool.send_signal(signal.SIGTERM)
    err = tool.communicate(timeout=300)[1]
    assert tool.returncode == 130 and "interrupted" in err, err


def test_nasfast_traceback_gives_a_user_errors_traceback_and_exit_status_1(tmp_path):
    """As the README says, for a bug report: the same error, with where it was raised."""
    command = [sys.executable, "-m", "nasfast.evaluate", "--checkpoint", str(tmp_path / "missing.pt")]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    plain = subprocess.run(command, capture_output=True, text=True, env=env)
    traced = subprocess.run(command, capture_output=True, text=True, env=dict(env, NASFAST_TRACEBACK="1"))
    assert (plain.returncode, plain.stderr) == (2, f"python -m nasfast.evaluate: error: checkpoint "
                                                   f"{tmp_path / 'missing.pt'} not found\n")
    assert traced.returncode == 1 and traced.stderr.startswith("Traceback (most recent call last):")
    assert traced.stderr.endswith(f"FileNotFoundError: checkpoint {tmp_path / 'missing.pt'} not found\n")


@pytest.mark.parametrize("rows, columns", [(0, 0), (24, 0), (0, 100), (24, 100)])
def test_progress_bars_show_in_a_terminal_that_reports_no_size(rows, columns):
    """A terminal of 0 rows (a serial console, some containers) showed no progress bar at all."""
    import fcntl
    import pty
    import struct
    import termios
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    shown = b""
    with subprocess.Popen([sys.executable, "-c", "from nasfast.progress import progress_bar\n"
                           "for _ in progress_bar(range(3), desc='epoch 1/2', unit='batch', mininterval=0,\n"
                           "                      dynamic_ncols=True): pass"],  # as the search's bar
                          stderr=terminal, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))) as tool:
        os.close(terminal)
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the tool has ended: the terminal is closed
                break
            if not chunk:
                break
            shown += chunk
    os.close(controller)
    assert tool.returncode == 0
    assert b"epoch 1/2: 100%" in shown and b"3/3" in shown and len(shown.split(b"\r")[-2]) >= 40, shown


def test_a_log_gets_a_progress_line_a_while_and_nothing_for_short_work(capsys):
    """In a log (stderr not a terminal) long work was silent for minutes between its lines."""
    import time
    from nasfast.progress import progress_bar
    for _ in progress_bar(range(6), desc="epoch 1/2", unit="batch", log_every=0.2):
        time.sleep(0.1)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 4 and all(line.startswith("epoch 1/2: ") and "\r" not in line for line in lines)
    assert lines[-1].startswith("epoch 1/2: 100%|##########| 6/6")
    for _ in progress_bar(range(6), desc="short", log_every=60):
        pass
    bar = progress_bar(range(6), desc="per line", log_every=None)  # the search's: a line per candidate instead
    assert bar.disable and list(bar) == list(range(6)) and capsys.readouterr().err == ""


@pytest.mark.parametrize("tool, argv", [
    ("search", ["--budget", "1", "--out", ""]), ("search", ["--resume", " "]),
    ("search", ["--budget", "1", "--out", "x", "--teacher", ""]), ("search", ["--budget", "1", "--out", "x",
                                                                             "--data-root", ""]),
    ("train", ["--genotype", "arch0", "--out", ""]), ("train", ["--resume", ""]),
    ("train", ["--genotype", "arch0", "--out", "x", "--init", ""]), ("evaluate", ["--checkpoint", ""]),
    ("export", ["--genotype", "arch0", "--out", ""]), ("export", ["--checkpoint", "", "--out", "m.pt"]),
    ("report", ["x", "--plot", ""]), ("data", ["--data-root", ""]),
])
def test_an_empty_path_is_refused_by_its_option(tool, argv, tmp_path):
    """A variable left unset in a script: "[Errno 2] No such file or directory: ''" after the data
    were read, naming no option."""
    result = subprocess.run([sys.executable, "-m", f"nasfast.{tool}", *argv], capture_output=True, text=True,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    option = next(a for a, value in zip(argv, argv[1:]) if not value.strip())
    assert result.returncode == 2 and f"error: argument {option}: an empty path: give a file or directory" in \
        result.stderr, result.stderr
    assert os.listdir(tmp_path) == []


def test_a_closed_pipe_ends_quietly(capsys):
    assert run(failing(BrokenPipeError()), "tool") == 141
    assert capsys.readouterr().err == ""


def test_a_pipe_closed_after_the_first_line_ends_quietly_with_the_rest_unflushed():
    """`evaluate | head -1`: the rest of stdout, flushed as Python exited, gave status 120 and an
    "Exception ignored ... BrokenPipeError" message."""
    code = ("import time\nfrom nasfast.cli import run\n"
            "def main(argv):\n    print('first', flush=True)\n    time.sleep(1)\n"
            "    for i in range(100):\n        print('line', i)\n    return 0\n"
            "raise SystemExit(run(main, 'tool'))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(env, PYTHONPATH=str(Path(__file__).parents[1]))) as tool:
        assert tool.stdout.readline() == b"first\n"
        tool.stdout.close()  # as head -1 does
        assert tool.wait(timeout=60) == 141 and tool.stderr.read() == b""


def test_loader_workers_are_at_most_one_per_cpu_so_torch_does_not_warn(monkeypatch, camvid_root):
    """On a machine with one CPU, the default 2 workers printed torch's warning twice, through the bars."""
    import warnings
    from nasfast.data import make_dataset
    from nasfast.evaluate import evaluation_loader
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert (loader_workers(0), loader_workers(2)) == (0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluation_loader(make_dataset("camvid", str(camvid_root), split="val"), 2).num_workers == 1


def test_main_gets_argv_and_its_status_is_returned():
    assert run(lambda argv: len(argv), "tool", ["a", "b"]) == 2


@pytest.mark.parametrize("kind, good, bad", [
    (positive_int, [("1", 1), ("64", 64)], ["0", "-3", "1.5", "x"]),
    (at_least_two, [("2", 2), ("100", 100)], ["1", "-2", "x"]),
    (images_per_batch, [("2", 2), ("16", 16)], ["1", "0", "x"]),
    (non_negative_int, [("0", 0), ("2", 2)], ["-1", "x"]),
    (positive_float, [("0.25", 0.25), ("2", 2.0)], ["0", "-0.5", "x", "nan"]),
    (non_negative_float, [("0", 0.0), ("2.5", 2.5)], ["-0.1", "nan"]),
    (fraction, [("0.1", 0.1), ("0.99", 0.99)], ["0", "1", "1.5", "-0.1"]),
    (probability, [("0", 0.0), ("1", 1.0)], ["1.5", "-0.1"]),
    (decay, [("0", 0.0), ("0.95", 0.95)], ["1", "-0.1"]),
])
def test_argument_types(kind, good, bad):
    for text, value in good:
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)


def test_devices_the_machine_lacks_are_refused():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UsageError, match="unknown device 'gpu': expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    for name in ("mps", "meta", "xpu:0"):  # torch's, not nasfast's
        with pytest.raises(UsageError, match=f"device '{name}': nasfast runs on the CPU and on CUDA GPUs"):
            resolve_device(name)
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")


def test_counts_agree_with_their_noun():
    assert [counted(n, "candidate") for n in (0, 1, 2)] == ["0 candidates", "1 candidate", "2 candidates"]


def test_python_m_nasfast_lists_every_tool():
    import importlib.util
    import pkgutil
    import subprocess
    import sys

    import nasfast
    from nasfast.__main__ import TOOLS
    out = subprocess.run([sys.executable, "-m", "nasfast"], capture_output=True, text=True, check=True).stdout
    def is_tool(module) -> bool:  # a module with a command line, or a package with a __main__
        if module.ispkg:
            return importlib.util.find_spec(f"nasfast.{module.name}.__main__") is not None
        return hasattr(importlib.import_module(f"nasfast.{module.name}"), "build_parser")
    tools = {m.name for m in pkgutil.iter_modules(nasfast.__path__) if not m.name.startswith("_") and is_tool(m)}
    assert tools == set(TOOLS)  # a new tool is listed too
    assert all(f"python -m nasfast.{name}" in out for name in TOOLS)
