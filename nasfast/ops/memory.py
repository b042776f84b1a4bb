"""Keeping freed CPU memory for reuse while a model trains on the CPU.

torch's CPU allocator hands blocks of 32 MiB and more back to the system when they are freed (glibc
serves them with mmap), so every training step faults the pages of each activation in again: a
third of a CPU candidate's time went to the kernel. Within `cpu_memory_cache`, the ops library's
allocator keeps freed blocks of 1 MiB or more and hands them out again to requests of the same
size, as a step makes every step; on leaving, it frees them. Without the library it does nothing.
"""
import contextlib
import math
import os
from typing import Iterator, Optional, Union

import torch

from .library import available

ENV = "NASFAST_CPU_CACHE_GB"


def default_capacity() -> int:
    """Bytes kept at most: NASFAST_CPU_CACHE_GB when set (0: off), else a quarter of the memory."""
    value = os.environ.get(ENV)
    if value is None:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    try:
        gb = float(value)
    except ValueError:
        gb = math.nan
    if not 0 <= gb < math.inf:
        raise ValueError(f"{ENV} must be a number of GB >= 0 (0 turns the cache off), got {value!r}")
    return min(int(gb * 2 ** 30), 2 ** 62)  # the op takes an int64


@contextlib.contextmanager
def cpu_memory_cache(device: Union[str, torch.device] = "cpu", capacity: Optional[int] = None) -> Iterator[None]:
    """Within, freed CPU blocks of 1 MiB or more are kept (up to `capacity` bytes, default
    `default_capacity()`) for reuse by size; before a fresh block, the oldest kept blocks are freed as
    needed to stay within 1.25x the most memory in use at once, so sizes that do not recur (images of
    many sizes) do not add up. On leaving, the kept blocks are freed and the capacity before is
    restored (nested uses: in order, from one thread). Only when `device` is the CPU and the ops
    library is loaded."""
    if torch.device(device).type != "cpu" or not available():
        yield
        return
    capacity = default_capacity() if capacity is None else min(int(capacity), 2 ** 62)  # 1.5e9 bytes, say
    before = None
    try:
        before = torch.ops.nasfast.set_cpu_memory_cache(capacity)
        yield
    finally:
        if before is not None:
            torch.ops.nasfast.set_cpu_memory_cache(before)


def cpu_memory_cached() -> int:
    """Bytes of freed CPU blocks kept now (0 without the ops library)."""
    return torch.ops.nasfast.cpu_memory_cached() if available() else 0
