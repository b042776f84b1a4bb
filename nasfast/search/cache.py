"""Stage-1 cache: frozen-encoder outputs (and teacher logits) computed once per search."""
import contextlib
import errno
import hashlib
import os
import re
import sys
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..data.decode import missing_file
from ..files import read_json
from ..ops.memory import cpu_memory_cache

Pair = Tuple[Tensor, Tensor]  # normalised image 3xHxW, label HxW
# A search's RUN_DIR/cache: stage1/ and val/ of open_cache's files, and complete.json, the mark of a
# complete cache (what it was built from: see the end of this file, and context.py's _stage1_caches).
CACHE, PARTS, COMPLETE = "cache", ("stage1", "val"), "complete.json"
CACHE_FILE = re.compile(r"(level\d+|labels|teacher)\.npy")


def foreign_cache(run_dir: str) -> Optional[str]:
    """What RUN_DIR/cache holds that a search's stage-1 cache does not (a search would overwrite
    or remove its files); None where there is no cache/, or a search's."""
    folder = os.path.join(run_dir, CACHE)
    if not os.path.lexists(folder):
        return None
    if not os.path.isdir(folder):
        return "a file"
    foreign = [name for name in sorted(os.listdir(folder)) if name not in PARTS + (COMPLETE,)]
    for part in PARTS:
        path = os.path.join(folder, part)
        if os.path.isdir(path):
            foreign += [f"{part}/{name}" for name in sorted(os.listdir(path)) if not CACHE_FILE.fullmatch(name)]
        elif os.path.lexists(path):
            foreign.append(part)
    if os.path.exists(os.path.join(folder, COMPLETE)) and not _is_complete_mark(os.path.join(folder, COMPLETE)):
        foreign.append(COMPLETE)
    return f"holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}" if foreign else None


def checksums(directory: str) -> Dict[str, int]:
    """The CRC-32 of each file of a cache on disk: complete.json records them, so that a cache
    whose bytes changed since it was built (a bad disk, a partial copy) is not taken for it."""
    return {name: crc32(os.path.join(directory, name)) for name in sorted(os.listdir(directory))
            if CACHE_FILE.fullmatch(name)}


def crc32(path: str) -> int:
    """The CRC-32 of a file's bytes."""
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _is_complete_mark(path: str) -> bool:
    try:
        mark = read_json(path)
    except (OSError, ValueError):  # not JSON, or not a file
        return False
    return isinstance(mark, dict) and "files" in mark


class FeatureCache:
    """Per-image encoder feature maps, labels and optional teacher logits, indexed together."""

    def __init__(self, features: List[Tensor], labels: Tensor, teacher: Optional[Tensor] = None,
                 on_disk: bool = False):
        self.features, self.labels, self.teacher, self.on_disk = features, labels, teacher, on_disk

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: Tensor) -> Tuple[List[Tensor], Tensor, Optional[Tensor]]:
        """The images `index`, gathered where the cache is (its tensors' device, or the CPU)."""
        in_memory = isinstance(self.labels, Tensor)  # every array alike: tensors, or memory-mapped files
        rows = index.to(self.labels.device) if in_memory else index.tolist()  # once, not for each array

        def take(array):
            return array[rows] if in_memory else torch.as_tensor(array[rows])

        teacher = None if self.teacher is None else take(self.teacher)
        return [take(f) for f in self.features], take(self.labels).long(), teacher

    def labelled_images(self, ignore_index: int) -> Tensor:
        """For each image, whether its label holds a pixel other than ignore_index (on the CPU)."""
        if isinstance(self.labels, Tensor):
            return (self.labels != ignore_index).flatten(1).any(1).cpu()
        return torch.from_numpy(np.array([(label != ignore_index).any() for label in self.labels], dtype=bool))

    def to(self, device: torch.device) -> "FeatureCache":
        """The cache in `device`'s memory (read in from its files, if on disk)."""
        def moved(array):
            return array.to(device) if isinstance(array, Tensor) else torch.from_numpy(np.array(array)).to(device)

        teacher = None if self.teacher is None else moved(self.teacher)
        return FeatureCache([moved(f) for f in self.features], moved(self.labels), teacher)

    def arrays(self) -> list:
        """Every array of the cache: the encoder's levels, the labels, the teacher's logits if any."""
        return self.features + [self.labels] + ([self.teacher] if self.teacher is not None else [])

    def nbytes(self) -> int:
        return sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size() for a in self.arrays())


def open_cache(directory: str) -> FeatureCache:
    """The cache that build_cache wrote to `directory` (memory-mapped files), opened read-only:
    processes that share a machine share its pages."""
    def load(name: str) -> np.ndarray:
        path = os.path.join(directory, name + ".npy")
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:  # cut short or overwritten
            raise ValueError(f"{path}: {error}") from None

    levels = sorted((name for name in os.listdir(directory) if name.startswith("level") and name.endswith(".npy")),
                    key=lambda name: int(name[len("level"):-len(".npy")]))
    if not levels or not os.path.exists(os.path.join(directory, "labels.npy")):
        raise FileNotFoundError(f"no stage-1 cache in {directory}")
    teacher = load("teacher") if os.path.exists(os.path.join(directory, "teacher.npy")) else None
    return FeatureCache([load(name[:-len(".npy")]) for name in levels], load("labels"), teacher, on_disk=True)


def _allocate(shape, dtype, path: Optional[str]):
    """A tensor, or with a `path` a memory-mapped array in that .npy file."""
    if path is None:
        return torch.empty(shape, dtype=dtype)
    np_dtype = {torch.float32: np.float32, torch.uint8: np.uint8}[dtype]
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype, shape=tuple(shape))
    except OSError as error:  # a file-size limit, say
        error.filename = path  # numpy's names no file
        raise
    _reserve(path)
    return array


def _reserve(path: str) -> None:
    """Gives the (sparse) file its disk blocks now: a full disk is then an OSError here (ENOSPC),
    not a SIGBUS at the first write to a page that has no block."""
    if hasattr(os, "posix_fallocate"):  # not on macOS
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OSError(error.errno, error.strerror, path) from None  # naming the file
            # else a C library that leaves it to file systems without it (glibc writes the blocks): sparse, as before
        finally:
            os.close(fd)


@torch.no_grad()
def build_cache(pairs: List[Pair], encoder: torch.nn.Module, teacher: Optional[Callable[[Tensor], Tensor]] = None,
                directory: Optional[str] = None, memory_limit: float = 2e9,
                device: torch.device = torch.device("cpu"), batch_size: int = 8,
                progress: Optional[Callable[[Iterable], Iterable]] = None) -> FeatureCache:
    """Runs the frozen encoder (and teacher) over `pairs` (all of one size) once.

    The cache lives in memory when its estimated size is under `memory_limit` bytes, else in
    memory-mapped .npy files under `directory` (always with `memory_limit=0`; open_cache opens them).
    """
    encoder = encoder.eval().to(device)
    first = [f.cpu() for f in encoder(pairs[0][0][None].to(device))]
    first_teacher = None if teacher is None else teacher(pairs[0][0][None].to(device)).cpu()
    n = len(pairs)
    per_image = sum(f[0].numel() * 4 for f in first) + pairs[0][1].numel()
    if first_teacher is not None:
        per_image += first_teacher[0].numel() * 4
    use_disk = directory is not None and n * per_image > memory_limit
    if use_disk:
        os.makedirs(directory, exist_ok=True)
    path = (lambda name: os.path.join(directory, name + ".npy")) if use_disk else (lambda name: None)

    features = [_allocate((n,) + tuple(f.shape[1:]), torch.float32, path(f"level{i}")) for i, f in enumerate(first)]
    labels = _allocate((n,) + tuple(pairs[0][1].shape), torch.uint8, path("labels"))
    logits = None if first_teacher is None else _allocate(
        (n,) + tuple(first_teacher.shape[1:]), torch.float32, path("teacher"))
    starts = range(0, n, batch_size)
    with cpu_memory_cache(device):
        for start in (progress(starts) if progress else starts):
            chunk = pairs[start:start + batch_size]
            images = torch.stack([image for image, _ in chunk]).to(device)
            for store, out in zip(features, encoder(images)):
                store[start:start + len(chunk)] = out.cpu()
            labels[start:start + len(chunk)] = torch.stack([label for _, label in chunk]).to(torch.uint8)
            if logits is not None:
                logits[start:start + len(chunk)] = teacher(images).float().cpu()
    for store in features + [labels] + ([logits] if logits is not None else []):
        if isinstance(store, np.memmap):  # on disk before complete.json says so: a crash must not leave holes
            store.flush()
    return FeatureCache(features, labels, logits, use_disk)


def remove_cache_files(directory: str) -> None:
    """Removes the files build_cache writes in `directory`, and the directory once empty: what a
    build that failed (on a full disk, say) left, giving the space back."""
    for name in (os.listdir(directory) if os.path.isdir(directory) else []):
        if re.fullmatch(r"(level\d+|labels|teacher)\.npy", name):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))
    with contextlib.suppress(OSError):  # not empty
        os.rmdir(directory)


def on_the_gpu_if_it_fits(cache: FeatureCache, device: torch.device, name: str) -> FeatureCache:
    """On a GPU, the cache moves there when it takes under a sixteenth of the GPU's free memory (a
    few processes may share it, and the candidates need the rest): stage 1 then gathers its batches
    there instead of on the CPU, copied over at every step of every candidate."""
    if device.type != "cuda" or cache.nbytes() > torch.cuda.mem_get_info(device)[0] / 16:
        return cache
    print(f"stage-1 cache: the {name} features kept on {device} ({cache.nbytes() / 2 ** 20:.0f} MiB)",
          file=sys.stderr)
    return cache.to(device)


# -- a cache on disk marked complete (RUN_DIR/cache/complete.json) -------------------------------
def fingerprint(pairs) -> str:
    """A digest of the (image, label) files' paths, sizes and modification times: a cache built from
    other files (another data root, an image replaced) is not taken for this one's."""
    digest = hashlib.sha256()
    for pair in pairs:
        for path, what in zip(pair, ("image", "label")):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                raise missing_file(path, what) from None
            digest.update(os.fsencode(os.path.abspath(path)) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def marked_complete(marker: str, contents: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The cache's marker where it says the cache is complete and holds `contents`' images, else
    None (a damaged marker too: the cache is built again)."""
    try:
        mark = read_json(marker)
    except ValueError as error:
        print(f"warning: {error}; the stage-1 cache is built again", file=sys.stderr)
        return None
    return mark if isinstance(mark, dict) and {k: v for k, v in mark.items() if k != "checksums"} == contents else None


def check_checksums(mark: Dict[str, Any], directory: Callable[[str], str]) -> None:
    """ValueError naming a file of the cache whose bytes differ from those it was built with (a
    marker of a version that recorded no checksums is taken at its word)."""
    for part, recorded in (mark.get("checksums") or {}).items():
        found = checksums(directory(part))
        changed = sorted(name for name in set(recorded) | set(found) if recorded.get(name) != found.get(name))
        if changed:
            raise ValueError(f"{os.path.join(directory(part), changed[0])}: its bytes differ from those built "
                             f"(CRC-32)")


def check_complete(cache: FeatureCache, images: int, directory: str, channels: Sequence[int]) -> None:
    """ValueError unless the files of a cache marked complete hold every encoder level for each of
    its `images`, of the encoder's `channels` (not so when a file was removed, or copied from the
    other cache)."""
    held = [level.shape[1] for level in cache.features]
    counts = {len(array) for array in cache.arrays()}
    if held != list(channels) or counts != {images}:
        raise ValueError(f"{directory} holds levels of {held} channels for {sorted(counts)} images, not "
                         f"{list(channels)} for {images}")
