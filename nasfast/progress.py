"""Progress bars of long work, on a terminal and in a log."""
import os
import sys
from typing import Optional

LOG_EVERY = 60.0  # seconds between the progress lines of a log


def progress_bar(iterable=None, disable: bool = False, log_every: Optional[float] = LOG_EVERY, **options):
    """A tqdm progress bar on stderr. Where stderr is not a terminal (a log file, which would fill
    with redrawn frames), it writes a line every `log_every` seconds instead, the first once that
    long has passed, so that long work shows it is alive; with `log_every` None it is disabled there
    (`.disable`)."""
    from tqdm import tqdm
    if not sys.stderr.isatty():
        if log_every is None or disable:
            return tqdm(iterable, disable=True, **options)
        return tqdm(iterable, file=_LogLines(sys.stderr), ascii=True, delay=log_every, mininterval=log_every,
                    maxinterval=log_every, **{**options, "leave": False, "dynamic_ncols": False})
    size = _terminal_size(sys.stderr)
    if size is not None and 0 in size:  # tqdm would draw nothing at all in a terminal 0 rows high
        options = {"ncols": size.columns or 80, "nrows": size.lines or 24, **options, "dynamic_ncols": False}
    return tqdm(iterable, disable=disable, **options)


class _LogLines:
    """A log file as tqdm's output: each frame on a line of its own (tqdm redraws one with "\r")."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _terminal_size(stream) -> Optional[os.terminal_size]:
    """The size the terminal of `stream` reports: 0 x 0 where none was set, as on some serial
    consoles and in some containers."""
    try:
        return os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's capture of stderr)
        return None
