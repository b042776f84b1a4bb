"""Finding and loading the compiled ops library."""
import glob
import os
from typing import Optional

import torch

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find() -> Optional[str]:
    if os.environ.get("NASFAST_DISABLE_OPS") == "1":
        return None
    candidates = sorted(glob.glob(os.path.join(_PACKAGE_DIR, "_C*.so")))
    return candidates[0] if candidates else None


def _load() -> Optional[str]:
    path = _find()
    if path is not None:
        torch.ops.load_library(path)
    return path


_PATH = _load()


def library_path() -> Optional[str]:
    """Absolute path of the loaded ops library, or None when it was not built."""
    return _PATH


def available() -> bool:
    """True when the native ops are loaded (otherwise the references are used)."""
    return _PATH is not None
