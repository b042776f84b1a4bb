"""Optional TensorBoard logs (--tensorboard): the scalars of a search's candidates or of a
training's epochs, in RUN_DIR/tensorboard beside the JSON-lines log, which stays the record.
Needs the tensorboard package, imported only when asked for."""
import os
from typing import Dict, Optional

from .cli import UsageError

DIRECTORY = "tensorboard"


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def check_available() -> None:
    """UsageError now, before any work, when the tensorboard package is missing."""
    _summary_writer()


class TensorBoardLog:
    """Its folder is made with the first scalars: a run that fails before any leaves none."""

    def __init__(self, run_dir: str):
        self.directory = os.path.join(run_dir, DIRECTORY)
        self._make_writer = _summary_writer()
        self.writer = None

    def add(self, step: int, scalars: Dict[str, Optional[float]]) -> None:
        """The scalars that are not None, at `step`, written out at once (a crash keeps them)."""
        if self.writer is None:
            self.writer = self._make_writer(self.directory)
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
