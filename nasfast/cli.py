"""What every command-line tool shares: argument types that refuse bad values while parsing, the
--device and --workers a machine can take, and `run`, which reports a problem with the user's input
as one line instead of a traceback."""
import argparse
import errno
import os
import shlex
import signal
import sys
import threading
from typing import Callable, List, Optional, Tuple, Union


class UsageError(Exception):
    """A problem with the user's input (options, files, data): printed as one line, exit status 2."""


# Raised by the tools for missing or wrong files and bad values: the user's input, not a bug.
USER_ERRORS = (UsageError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
# The machine's, not a bug either: a full disk or quota, a file-size limit (ulimit -f), a read-only
# file system (and MemoryError).
MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def option_text(value) -> str:
    """A value as it is given on the command line: a sequence as words, none as "none"."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def reported_in_one_line(error: BaseException) -> bool:
    machine = isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno in MACHINE_ERRNOS)
    return isinstance(error, USER_ERRORS) or machine


def message_of(error: BaseException) -> str:
    """What the error says, without the traceback that torch puts in the message of an error it
    passes on from a DataLoader worker process."""
    text = str(error)
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror}: {error.filename}"
    if isinstance(error, MemoryError):
        return f"out of memory{': ' + text if text else ''}"
    if "\nOriginal Traceback (most recent call last):\n" not in text:
        return text
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    start = text.rfind(f"\n{name}: ")  # the traceback's last line: the error as the worker raised it
    return text[start + len(name) + 3:].rstrip("\n") if start >= 0 else text


def run(main: Callable[[Optional[List[str]]], int], prog: str, argv: Optional[List[str]] = None) -> int:
    """main(argv), with user errors printed as `prog: error: ...` (exit 2; NASFAST_TRACEBACK=1 raises
    them instead, for their traceback) and Ctrl-C, or SIGTERM (a scheduler's, timeout's), as a
    one-line note (exit 130), unless main handles it itself."""
    catch = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is not \
        signal.SIG_IGN  # an ignored SIGTERM stays ignored
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if catch else None
    if hasattr(sys.stdout, "reconfigure"):  # a redirected stdout: lines in order with stderr's, kept if killed
        sys.stdout.reconfigure(line_buffering=True)
    try:
        status = main(argv)
        sys.stdout.flush()  # here, where a reader gone (`| head`) is caught below
        return status
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        try:  # and keep the interpreter's final flush of stdout from raising again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor
            pass
        return 141
    except Exception as error:
        if not reported_in_one_line(error) or os.environ.get("NASFAST_TRACEBACK") == "1":
            raise
        print(f"{prog}: error: {message_of(error)}", file=sys.stderr)
        return 2
    finally:
        if catch:
            signal.signal(signal.SIGTERM, previous)


def _number(kind, minimum, inclusive: bool, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole' if kind is int else 'a'} number, got {text!r}") \
            from None
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    if not value >= minimum or (value == minimum and not inclusive):  # `not >=`: NaN fails too
        bound = "at least" if inclusive else "greater than"
        raise argparse.ArgumentTypeError(f"must be {bound} {minimum}, got {text}")
    return value


def _below(value, maximum, inclusive: bool, text: str):
    if value > maximum or (value == maximum and not inclusive):
        raise argparse.ArgumentTypeError(f"must be {'at most' if inclusive else 'less than'} {maximum}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(int, 1, True, text)


def non_negative_int(text: str) -> int:
    return _number(int, 0, True, text)


def path_text(text: str) -> str:
    """A file or directory option: refuses an empty one (a variable left unset, say), which would
    fail later with an OS error naming no option."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a file or directory")
    return text


def absolute_path(text: str) -> str:
    return os.path.abspath(path_text(text))


def run_directory(out: Optional[str], resume: Union[str, bool, None]) -> Tuple[Optional[str], bool]:
    """(the run directory, whether it is resumed) of `--out DIR`, `--out DIR --resume` or `--resume
    DIR` (`resume`: DIR, True for `--resume` alone, else None or False); the directory is None where
    neither option names one. UsageError where the two name different directories."""
    if isinstance(resume, str):
        if out is not None and os.path.abspath(out) != os.path.abspath(resume):
            raise UsageError(f"--resume {resume} and --out {out} name two directories: give one")
        return resume, True
    return out, bool(resume)


def command(*words: Optional[str]) -> str:
    """A command line to copy: its words quoted for the shell, None left out."""
    return " ".join(shlex.quote(str(w)) for w in words if w is not None)


def data_root_option(data_root: Optional[str]) -> List[Optional[str]]:
    return ["--data-root", data_root] if data_root else []


def once_mended(error: BaseException, dataset: str, data_root: Optional[str]) -> str:
    """A data file's `error`, and the start of the way on: once it is mended (with the command that
    lists every file of the data that cannot be used), ..."""
    check = command("python", "-m", "nasfast.data", "--dataset", dataset, *data_root_option(data_root))
    return f"{message_of(error)}; once it is mended ({check} lists every file that cannot be used)"


def counted(n: int, noun: str) -> str:
    """'1 candidate', '3 candidates'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def at_least_two(text: str) -> int:
    return _number(int, 2, True, text)


def positive_float(text: str) -> float:
    return _number(float, 0.0, False, text)


def non_negative_float(text: str) -> float:
    return _number(float, 0.0, True, text)


def images_per_batch(text: str) -> int:
    """Images per training batch: at least 2, as the batch norm after a global pooling (the
    operation "global average pooling") has one value per channel and image to normalise."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (batch norm after global pooling), got {text}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    return _below(positive_float(text), 1, False, text)


def probability(text: str) -> float:
    """A number from 0 to 1."""
    return _below(non_negative_float(text), 1, True, text)


def decay(text: str) -> float:
    """The decay of a moving average: from 0 to less than 1."""
    return _below(non_negative_float(text), 1, False, text)


def resolve_device(name: str = "auto"):
    """The torch.device of auto (a GPU when there is one), cpu, cuda or cuda:N; UsageError for what
    this machine lacks. A cuda:N becomes the current device, that of what uses the current one
    (DataLoader's pinning thread): else GPU 0 holds memory of this process too."""
    import torch  # not for --help
    from .ops.memory import default_capacity
    default_capacity()  # a bad NASFAST_CPU_CACHE_GB fails now, not when the first training starts
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r}: nasfast runs on the CPU and on CUDA GPUs (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(device)
    return device


def loader_workers(requested: int) -> int:
    """DataLoader worker processes: those requested, at most one per CPU this process may use
    (more only compete for them, and torch warns)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(requested, cpus)
