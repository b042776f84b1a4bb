"""A run directory's files, safe from crashes: their names, the directory's lock, files replaced
atomically (a crash leaves the old or the new one) or, for JSON-lines logs, appended a whole line
at a time and read back checked, StopSignals, which lets a stop wait for what is being saved, and
which PNG files a tool may replace (its own)."""
import contextlib
import errno
import fcntl
import io
import json
import math
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from PIL import Image

# The files of a run directory: its options, and a search's or a training's own files
CONFIG = "config.json"
SEARCH_FILES = SEARCH_LOG, SEARCH_STATE = "candidates.jsonl", "state.pt"
TRAINING_FILES = TRAINING_LOG, LAST, BEST = "log.jsonl", "last.pt", "best.pt"
LOCK = ".lock"
LOCK_HELD = (errno.EACCES, errno.EAGAIN)  # what lockf says when another process holds the lock


class StopSignals:
    """Within `with StopSignals() as stop:`, Ctrl-C and SIGTERM raise KeyboardInterrupt, except
    inside `with stop.deferred():`, the bookkeeping of what is saved, which they let finish first:
    what the process then says it saved is what it saved. Signals are only the main thread's; one
    the process ignores (SIGINT in a shell's background job) stays ignored."""

    def __init__(self):
        self._deferring = self._requested = False
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)
                              if signal.getsignal(sig) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _stop(self, signum, frame):
        if self._deferring:
            self._requested = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._requested:
            raise KeyboardInterrupt


class Unwritable(ValueError):
    """A run directory that cannot be written, so cannot be locked."""


def lock_directory(directory: str):
    """Locks a run directory for this process until it ends (a killed process's lock is released
    too) and returns the open lock file, to be kept; ValueError while another process holds it,
    Unwritable where the directory cannot be written."""
    path = os.path.join(directory, LOCK)
    try:  # never through a link: the pid written would replace what it points to
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EISDIR):
            raise ValueError(f"{path} is a link or a folder, not the lock file a run keeps there: move it "
                             f"away") from None
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise Unwritable(f"{directory} cannot be written ({error.strerror}): a run keeps its state there; choose "
                         f"a writable directory (or copy a run to one to go on with it)") from None
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in LOCK_HELD:  # a file system without locks (ENOLCK)
            print(f"warning: {directory} cannot be locked ({error.strerror}): make sure that no other search "
                  f"or training uses it", file=sys.stderr)
            return handle
        handle.close()
        raise ValueError(_in_use_message(directory)) from None
    try:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except OSError as error:  # a full disk
        with contextlib.suppress(OSError):  # the write is tried again, and fails again
            handle.close()
        error.filename = path
        raise
    _remove_stale_temporaries(directory)
    return handle


def _in_use_message(directory: str) -> str:
    try:
        with open(os.path.join(directory, LOCK)) as handle:
            owner = handle.read().strip()  # the holder's pid
    except OSError:
        owner = ""
    holder = f" (pid {owner})" if owner else ""
    return f"{directory} is in use by another process{holder}: let it finish, or stop it first"


def refuse_if_in_use(directory: str) -> None:
    """The refusal lock_directory gives while another process holds the directory, before a tool
    reads the run's files (that process may be rewriting them); nothing is locked or written."""
    if in_use(directory):
        raise ValueError(_in_use_message(directory))


def _remove_stale_temporaries(directory: str) -> None:
    """Removes what write_atomic left of the run's files in a process killed while writing them
    (a last.pt.tmpPID of 30 MB, say): only lock holders write those, so none is still being written."""
    run_files = {CONFIG, *SEARCH_FILES, *TRAINING_FILES}
    for name in os.listdir(directory):
        stem, tmp, pid = name.rpartition(".tmp")
        if tmp and stem in run_files and pid.isdigit():
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def why_unwritable(directory: str) -> Optional[str]:
    """Why a run directory could not be created or written, checked before the long work that
    would write there; None when it can be."""
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} is a file"
    return None if os.access(path, os.W_OK) else f"{path} is not writable"


def in_use(directory: str) -> bool:
    """Whether another process holds the lock of a run directory (a search or training running)."""
    try:
        handle = open(os.path.join(directory, LOCK), "r+")  # never created here
    except OSError:  # no lock file, or one this user may not write: nothing to tell
        return False
    with handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            return error.errno in LOCK_HELD
        fcntl.lockf(handle, fcntl.LOCK_UN)
    return False


def is_replaceable_png(path: str, written_here: Callable[[Image.Image], bool]) -> bool:
    """Whether `path` is a file (not a link) holding a PNG that `written_here` recognises as one its
    tool wrote, so that the tool may replace it."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and written_here(image)
    except (OSError, SyntaxError, ValueError):
        return False


def keep_copy(path: str) -> str:
    """Copies `path` to PATH.damaged before a repair rewrites it: what the repair drops stays readable."""
    copy = path + ".damaged"
    with open(path, "rb") as f:
        write_atomic(copy, f.read())
    return copy


def write_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Replaces `path` with `data` so that a failure leaves either the old or the new file, and, when
    `durable`, so does a crash of the machine (it waits for the disk)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # a full disk, say: leave no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError):
            error.filename = path  # not the temporary file's
        raise
    if durable:
        _sync_directory(os.path.dirname(path) or ".")


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str) -> Any:
    """The JSON in `path`, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        try:
            return json.loads(f.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is damaged: not valid JSON ({error})") from None


def read_records(path: str) -> List[Dict[str, Any]]:
    """The complete lines of a JSON-lines log (a torn last line from a crash is dropped; a last
    line that is whole but lacks its newline, as an editor may leave it, is kept)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                if not line.endswith(b"\n"):  # torn
                    break
                raise ValueError(f"{path} is damaged: line {number} is not valid JSON ({error})") from None
    return records


# What every record of a search's log holds (a failed candidate's rewards, gate, sizes are null).
SEARCH_RECORD_KEYS = ("index", "genotype", "status", "reward", "stage1_reward", "stage2_reward", "gate", "params",
                      "madds", "seconds")


def read_search_log(path: str) -> List[Dict[str, Any]]:
    """The candidates' records of a search's candidates.jsonl; ValueError at the first line that is
    not one (a file edited, or another program's)."""
    records = read_records(path)
    for number, record in enumerate(records, 1):
        problem = _record_problem(record)
        if problem:
            raise ValueError(f"{path}: not the candidates.jsonl of a search (line {number} {problem})")
    return records


def files_in(directory: str, names) -> List[str]:
    """Those of `names` that `directory` holds."""
    return [name for name in names if os.path.exists(os.path.join(directory, name))]


def checkpoints_in(directory: str) -> List[str]:
    """The paths of a training run's best.pt and last.pt in `directory`, those that are there."""
    return [path for path in (os.path.join(directory, name) for name in (BEST, LAST)) if os.path.isfile(path)]


def search_run_paths(path: str) -> Tuple[str, str]:
    """(RUN_DIR, its candidates.jsonl) of a search named by either; a log elsewhere (a copy) is
    taken with the directory it is in."""
    if os.path.isdir(path):
        return path, os.path.join(path, SEARCH_LOG)
    return os.path.dirname(path) or ".", path


def _record_problem(record: Any) -> Optional[str]:
    if not isinstance(record, dict):
        return "is not a JSON object"
    missing = [key for key in SEARCH_RECORD_KEYS if key not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(record["index"], int) or record["index"] < 0:
        return f"has index {record['index']!r}, not a candidate number"
    if record["status"] == "ok" and not isinstance(record["reward"], (int, float)):
        return f"has status ok and reward {record['reward']!r}"
    return None


def append_record(path: str, record: Dict[str, Any]) -> None:
    """Appends `record` as a line of JSON; where that fails (a full disk), the file is cut back to
    its lines before, so that no half line is left."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            while line:  # os.write may write part of it
                line = line[os.write(fd, line):]
            os.fsync(fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            error.filename = path
            raise
    finally:
        os.close(fd)


def save_torch(obj: Any, *paths: str) -> None:
    """torch.save(obj) once, written atomically to each path."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    for path in paths:
        write_atomic(path, buffer.getvalue())


def finite_or_none(value):
    """value with each non-finite number (NaN, inf) as None, so that JSON holds null for it."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value
