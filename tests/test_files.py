"""Crash-safe files and the lock of a run directory."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import file_size_limit
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


def test_a_record_that_does_not_fit_leaves_no_half_line_and_names_the_log(tmp_path, capsys):
    log = tmp_path / "candidates.jsonl"
    files.append_record(str(log), {"index": 0})
    with file_size_limit(log.stat().st_size + 10):  # part of the next line fits
        assert run(lambda argv: files.append_record(str(log), {"index": 1, "error": "x" * 100}), "tool") == 2
    assert capsys.readouterr().err == f"tool: error: File too large: {log}\n"
    assert log.read_text() == '{"index": 0}\n'


def test_a_lock_that_cannot_take_the_pid_names_its_file(tmp_path, capsys):
    with file_size_limit(0):
        assert run(lambda argv: files.lock_directory(str(tmp_path)), "tool") == 2
    assert capsys.readouterr().err == f"tool: error: File too large: {tmp_path / files.LOCK}\n"


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

    def read_only(path, flags, mode=0o777):
        raise OSError(errno.EROFS, "Read-only file system", path)
    with monkeypatch.context() as patched, \
            pytest.raises(ValueError, match=f"^{tmp_path} cannot be written \\(Read-only file system\\): a run keeps "
                                            f"its state there; choose a writable directory \\(or copy a run to one to "
                                            f"go on with it\\)$"):
        patched.setattr(os, "open", read_only)
        files.lock_directory(str(tmp_path))


def test_a_lock_file_that_is_a_link_or_a_folder_is_refused_and_its_target_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for run_dir, make in (("linked", lambda lock: lock.symlink_to(tmp_path / "notes.txt")),
                          ("folder", lambda lock: lock.mkdir())):
        (tmp_path / run_dir).mkdir()
        make(tmp_path / run_dir / files.LOCK)
        with pytest.raises(ValueError, match=f"^{tmp_path / run_dir / files.LOCK} is a link or a folder, not the "
                                             f"lock file a run keeps there: move it away$"):
            files.lock_directory(str(tmp_path / run_dir))
    assert (tmp_path / "notes.txt").read_text() == "mine"


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


def test_a_last_line_whole_but_without_its_newline_is_kept_and_bytes_not_utf8_are_damage(tmp_path):
    log = tmp_path / "candidates.jsonl"
    log.write_text('{"index": 0}\n{"index": 1}')  # as an editor may save it
    assert files.read_records(str(log)) == [{"index": 0}, {"index": 1}]
    log.write_bytes(b'{"index": 0}\n\x82\xff\n{"index": 2}\n')
    with pytest.raises(ValueError, match=f"^{log} is damaged: line 2 is not valid JSON "):
        files.read_records(str(log))
    config = tmp_path / "config.json"
    config.write_bytes(b"\x82\xff{}")
    with pytest.raises(ValueError, match=f"^{config} is damaged: not valid JSON "):
        files.read_json(str(config))


def test_a_training_log_with_bytes_not_utf8_is_mended(tmp_path, capsys):
    from nasfast.trainer import mend_log
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"epoch": 0, "loss": 1.0}\n\x82\xff\n{"epoch": 1, "loss": 0.5}')
    mend_log(str(tmp_path), {"epoch": 1})
    assert log.read_text() == '{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "loss": 0.5}\n'
    assert "1 line dropped (torn, damaged" in capsys.readouterr().err
