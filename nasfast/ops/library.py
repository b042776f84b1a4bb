"""Finding and loading the compiled ops library (nasfast/_C*.so)."""
import glob
import os
import warnings
from typing import Optional, Tuple

import torch

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find() -> Optional[str]:
    candidates = sorted(glob.glob(os.path.join(_PACKAGE_DIR, "_C*.so")))
    return candidates[0] if candidates else None


def _load() -> Tuple[Optional[str], str]:
    """The loaded library's path, or None and why it is not loaded."""
    if os.environ.get("NASFAST_DISABLE_OPS") == "1":
        return None, "turned off (NASFAST_DISABLE_OPS=1)"
    path = _find()
    if path is None:
        return None, "not built (./install.sh in a checkout, else pip install .)"
    try:
        torch.ops.load_library(path)
    except OSError as error:
        # Typically a library built against another torch (torch upgraded since): keep working with the references.
        warnings.warn(f"nasfast: the ops library {path} does not load with torch {torch.__version__} "
                      f"({error.__cause__ or error}); using the pure-PyTorch references. Rebuild it against "
                      "the torch that is installed: ./install.sh in a checkout, else pip install .")
        return None, f"{path}, which does not load with this torch (rebuild it)"
    return path, ""


_PATH, _MISSING = _load()


def library_path() -> Optional[str]:
    """Absolute path of the loaded ops library, or None when it was not built."""
    return _PATH


def available() -> bool:
    """True when the native ops are loaded (otherwise the references are used)."""
    return _PATH is not None


def why_unavailable() -> str:
    """Why the native ops are not loaded ("" when they are): turned off, not built, or not loadable."""
    return _MISSING


def native_for(tensor: torch.Tensor) -> bool:
    """True when the library is loaded and has kernels for `tensor`'s device (CPU or CUDA)."""
    return available() and tensor.device.type in ("cpu", "cuda")


def kernels_take(x: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether the native kernels take `x` with `other` (a weight, a second input): one dtype, and
    on the CPU float32 or float64 (CUDA also takes float16 and bfloat16); no other device (MPS,
    XPU: the library has no kernels there). Mixed dtypes come from autocast, which the native ops
    are not registered for; the modules run their references then."""
    on_cpu = x.device.type == "cpu" and (x.dtype == torch.float32 or x.dtype == torch.float64)
    return x.dtype == other.dtype and (x.is_cuda or on_cpu)


def reference_where_unavailable(reference: type):
    """A class decorator for a module of the native ops: unpickled where the library is not loaded
    (saved whole with torch.save, loaded by a process without the library), it becomes its
    `reference` class, which computes the same, instead of failing at its first call."""
    def decorate(cls: type) -> type:
        @torch.jit.unused
        def __setstate__(self, state):
            reference.__setstate__(self, state)
            if not available():
                self.__class__ = reference
        cls.__setstate__ = __setstate__
        return cls
    return decorate


def wants_native(fused) -> bool:
    """The `fused` argument of the modules: None means "when the library is loaded"; True
    insists on it."""
    if fused not in (None, True, False):
        raise TypeError(f"fused must be None (native ops when the library is loaded), True or False, got {fused!r}")
    if fused is None:
        return available()
    if fused and not available():
        raise RuntimeError(f"fused=True but the nasfast ops library is {why_unavailable()}")
    return bool(fused)
