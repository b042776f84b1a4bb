"""Crash-safe files and the lock of a run directory."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nasfast import files
from nasfast.cli import run

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from nasfast.files import lock_directory; lock = lock_directory(sys.argv[1]); "
        "print(1, flush=True); time.sleep(120)")


def test_a_failed_atomic_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch, capsys):
    path = tmp_path / "state.pt"
    path.write_bytes(b"old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    assert run(lambda argv: files.write_atomic(str(path), b"new"), "tool") == 2  # one line, not a traceback
    assert capsys.readouterr().err == f"tool: error: No space left on device: {path}\n"
    assert os.listdir(tmp_path) == ["state.pt"] and path.read_bytes() == b"old"


def test_a_directory_locked_by_another_process_is_refused_until_it_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(ValueError, match=f"{tmp_path} is in use by another process \\(pid {holder.pid}\\): let it "
                                             f"finish, or stop it first"):
            files.lock_directory(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    files.lock_directory(str(tmp_path)).close()  # the system released the killed process's lock


def test_locking_a_run_directory_removes_what_a_killed_writer_left_of_its_files(tmp_path):
    """write_atomic's temporaries of a process killed while writing (SIGKILL runs no clean-up)."""
    left = ["last.pt.tmp4242", "state.pt.tmp7", "log.jsonl.tmp99"]
    kept = ["last.pt", "plot.png.tmp3", "last.pt.tmpx", "notes.tmp12"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"x")
    files.lock_directory(str(tmp_path)).close()
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [files.LOCK])


def test_a_directory_that_cannot_be_written_is_said_so_not_its_lock_file(tmp_path, monkeypatch):
    import errno

    def read_only(path, mode="r"):
        raise OSError(errno.EROFS, "Read-only file system", path)
    monkeypatch.setattr(files, "open", read_only, raising=False)
    with pytest.raises(ValueError, match=f"^{tmp_path} cannot be written \\(Read-only file system\\): a run keeps "
                                         f"its state there; choose a writable directory \\(or copy a run to one to go "
                                         f"on with it\\)$"):
        files.lock_directory(str(tmp_path))


def test_a_damaged_line_inside_a_log_is_refused_with_the_file_and_line_not_skipped(tmp_path, capsys):
    # Only a torn last line is what a crash leaves; a damaged earlier one is an edit or a broken
    # disk, and dropping it would silently lose a candidate or an epoch.
    log = tmp_path / "candidates.jsonl"
    log.write_text('{"index": 0}\n{"index": 1}\n{"index": 2, "sta\n{"index": 3}\n{"index": 4, "st')
    with pytest.raises(ValueError, match=f"^{log} is damaged: line 3 is not valid JSON "):
        files.read_records(str(log))
    assert run(lambda argv: files.read_records(str(log)), "tool") == 2  # one line, not a traceback
    err = capsys.readouterr().err
    assert err.startswith(f"tool: error: {log} is damaged: line 3 is not valid JSON") and err.count("\n") == 1
    log.write_text('{"index": 0}\n{"index": 1}\n{"index": 2, "st')
    assert files.read_records(str(log)) == [{"index": 0}, {"index": 1}]  # the torn last line alone is dropped


def test_stop_signals_leave_a_signal_the_process_ignores_ignored():
    """A search begun as a background job of a shell (SIGINT ignored) stopped at a Ctrl-C meant for the shell."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with files.StopSignals():
            os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with pytest.raises(KeyboardInterrupt), files.StopSignals():
            os.kill(os.getpid(), signal.SIGTERM)  # handled: not ignored
    finally:
        signal.signal(signal.SIGINT, previous)
