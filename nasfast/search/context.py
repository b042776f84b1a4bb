"""Everything a search's candidates share, built once: the meta-train/meta-val split, the
stage-1 cache of encoder outputs (and teacher logits), and the stage-2 and validation data."""
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..cli import counted, loader_workers, resolve_device
from ..data import EvalTransform, SegmentationDataset, TrainTransform, find_data_root, make_dataset
from ..data.datasets import absent_classes_warning, refuse_run_in_data
from ..encoder import MobileNetV2Encoder
from ..files import write_json
from ..progress import progress_bar
from .cache import (CACHE, COMPLETE, PARTS, FeatureCache, build_cache, check_checksums, check_complete, checksums,
                    fingerprint, marked_complete, on_the_gpu_if_it_fits, open_cache, remove_cache_files)
from .config import PRESETS, SearchConfig, preset
from .teacher import check_same_teacher, load_teacher, teacher_crc32


@dataclass
class SearchContext:
    """What every candidate of one search shares."""
    config: SearchConfig
    num_classes: int
    ignore_index: int
    exclude: Tuple[int, ...]
    stage1: FeatureCache                      # meta-train subset, cached
    stage1_val: FeatureCache                  # meta-val, cached (stage-1 reward)
    stage1_labelled: Tensor                   # for each stage-1 image, whether it holds a labelled pixel
    stage2_batches: Callable[[int], Iterable[Tuple[Tensor, Tensor]]]  # seed -> augmented meta-train
    val_batches: Callable[[], Iterable[Tuple[Tensor, Tensor]]]        # meta-val images, labels
    make_encoder: Callable[[], nn.Module]     # a fresh pre-trained encoder
    in_channels: Tuple[int, ...]
    in_strides: Tuple[int, ...]
    device: torch.device
    data: Dict[str, Any]                      # classes, image count, root: a resumed search checks the first two
    stage2_steps: Optional[int] = None        # batches of a stage-2 epoch
    step_bars: bool = False                   # a progress bar of each stage's steps (a line a minute in a log)


def split_indices(n: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """A random, disjoint meta-train / meta-val split of the training images."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 2:  # a training batch needs two images (the batch norm after global pooling)
        raise ValueError(f"--val-fraction {val_fraction} leaves {max(0, n - n_val)} of the {n} training images for "
                         f"meta-train; it needs at least 2")
    return sorted(order[n_val:]), sorted(order[:n_val])


def _common_size(dataset, indices: List[int]) -> Tuple[int, int]:
    """The largest size among `indices`, (height, width) from the images' headers (a label's is its
    image's): every label is padded to it, and image to it times the scale."""
    sizes = [dataset.image_size(i)[::-1] for i in indices]
    return max(h for h, _ in sizes), max(w for _, w in sizes)


class _Transformed(torch.utils.data.Dataset):
    """Items `indices` of `dataset` through `transform`: the search's views of its data (stage-1
    cache, stage 2, meta-val) share one dataset, and so the decoded images it keeps."""

    def __init__(self, dataset, indices: List[int], transform):
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        if isinstance(item, slice):  # build_cache takes batches: made one at a time, not all at once
            return [self[k] for k in range(*item.indices(len(self)))]
        index = self.indices[item]
        return self.transform(*self.dataset.load(index), index)


CACHE_MODES = ("auto", "build", "open")


def _check_scored_pixels(labels, ignore_index: int, exclude, config: SearchConfig, held_out: int) -> None:
    """Every reward would be undefined (and every candidate fail) on meta-val labels (a tensor or a
    memory-mapped array) without a pixel of a scored class; `held_out`: the meta-val images before
    --val-images took some."""
    if np.isin(np.asarray(labels), [ignore_index, *exclude]).all():
        limited = len(labels) < held_out  # --val-images left some out: raising it adds images
        raise ValueError(f"the {len(labels)} meta-val images have no labelled pixel of a scored class, so no "
                         f"reward can be computed; raise --val-fraction ({config.val_fraction})"
                         f"{f' or --val-images ({config.val_images})' if limited else ''}")


def _build_caches(stage1_pairs, val_pairs, encoder, teacher, directory, memory_limit: float,
                  device: torch.device, show_progress: bool = True) -> Tuple[FeatureCache, FeatureCache]:
    progress = lambda what: (lambda it: progress_bar(it, desc=f"caching {what}", unit="batch", leave=False,
                                                     disable=not show_progress))
    stage1 = build_cache(stage1_pairs, encoder, teacher, directory("stage1"), memory_limit, device,
                         progress=progress("stage 1"))
    # The limit holds for both together; meta-val follows meta-train to disk, where a resumed search
    # finds them both (and opens them instead of building them again).
    val_limit = 0 if stage1.on_disk else memory_limit - stage1.nbytes()
    stage1_val = build_cache(val_pairs, encoder, None, directory("val"), val_limit, device,
                             progress=progress("meta-val"))
    h, w = stage1.labels.shape[1:]
    where = {(True, True): "memory-mapped", (False, False): "in memory",
             (False, True): "meta-train in memory, meta-val memory-mapped"}[stage1.on_disk, stage1_val.on_disk]
    print(f"stage-1 cache: {len(stage1)} meta-train + {len(stage1_val)} meta-val images at "
          f"{h}x{w}{' with teacher logits' if teacher else ''}, "
          f"{(stage1.nbytes() + stage1_val.nbytes()) / 1e6:.1f} MB ({where})", file=sys.stderr)
    return stage1, stage1_val


def _image_indices(config: SearchConfig, n: int) -> Tuple[List[int], List[int], List[int], int]:
    """Indices of the meta-train images, of those cached for stage 1 and of the meta-val ones,
    and the number of images of a stage-2 epoch."""
    train_ids, val_ids = split_indices(n, config.val_fraction, config.seed)
    stage2_count = min(len(train_ids), config.stage2_images or len(train_ids))
    if stage2_count < config.stage2.batch_size:  # its epochs would take no step (whole batches only)
        preset_batch = preset(config.preset).stage2.batch_size if config.preset in PRESETS else None
        whose = f" (preset {config.preset}'s)" if preset_batch == config.stage2.batch_size else ""  # maybe not given
        raise ValueError(f"--stage2-batch-size {config.stage2.batch_size}{whose} exceeds the {stage2_count} images of "
                         f"a stage-2 epoch: give --stage2-batch-size {stage2_count} or less")
    generator = torch.Generator().manual_seed(config.seed)
    stage1_ids = _sample(train_ids, config.stage1_images, generator)
    return train_ids, stage1_ids, _sample(val_ids, config.val_images or len(val_ids), generator), stage2_count


def stage2_weight_note(config: SearchConfig, stage2_count: int) -> Optional[str]:
    """A note where stage 2 is too short to move its Polyak average far from the weights stage 1
    ended with (each step keeps `decay` of the average): its reward is then mostly stage 1's model."""
    steps = stage2_count // config.stage2.batch_size * config.stage2.epochs
    kept = config.stage2.polyak_decay ** steps
    if kept < 0.5:
        return None
    return (f"note: stage 2 takes {counted(steps, 'step')} ({stage2_count} images in batches of "
            f"{config.stage2.batch_size}), after which its Polyak average (decay {config.stage2.polyak_decay:g}) "
            f"still keeps {kept:.0%} of the weights stage 1 ended with, so it changes the rewards little; a lower "
            f"--stage2-polyak-decay or more --stage2-epochs gives it more say")


def _sample(ids: List[int], count: int, generator: torch.Generator) -> List[int]:
    """`count` of `ids` at random (all of them when there are fewer), sorted: the lists are in the
    dataset's order, often by sequence or year, which their first few would not cover."""
    return sorted(torch.tensor(ids)[torch.randperm(len(ids), generator=generator)][:count].tolist())


def _stage1_caches(config: SearchConfig, full, stage1_ids: List[int], val_ids: List[int], encoder, run_dir: str,
                   cache: str, device: torch.device, progress: bool,
                   teacher_crc: Optional[int]) -> Tuple[FeatureCache, FeatureCache, tuple]:
    """The stage-1 caches (see build_context's `cache`) and the common label size of meta-val (the
    stage-1 labels are resized with the images);
    `teacher_crc`: the CRC-32 of config.teacher's file (teacher_crc32), the teacher a cache holds."""
    def directory(what: str) -> str:
        return os.path.join(run_dir, CACHE, what)

    def opened() -> Tuple[FeatureCache, FeatureCache, tuple]:
        stage1, val = open_cache(directory("stage1")), open_cache(directory("val"))
        check_complete(stage1, len(stage1_ids), directory("stage1"), MobileNetV2Encoder.channels)
        check_complete(val, len(val_ids), directory("val"), MobileNetV2Encoder.channels)
        return stage1, val, tuple(val.labels.shape[1:])  # no image read for the size

    if cache == "open":  # the process that builds it has checked it
        return opened()
    marker = directory(COMPLETE)
    contents = {"dataset": config.dataset, "scale": config.scale, "val_labels": "unscaled", "teacher": teacher_crc,
                "stage1_ids": stage1_ids, "val_ids": val_ids,
                "files": fingerprint(full.pairs[i] for i in stage1_ids + val_ids)}
    recorded = marked_complete(marker, contents)
    if recorded is not None:
        try:
            check_checksums(recorded, directory)
            stage1, stage1_val, size = opened()
            print(f"stage-1 cache: reusing {directory('')} ({len(stage1)} + {len(stage1_val)} images)",
                  file=sys.stderr)
            return stage1, stage1_val, size
        except (OSError, ValueError) as error:  # a file cut short or overwritten
            print(f"warning: the stage-1 cache in {directory('')} cannot be read ({error}); it is built again",
                  file=sys.stderr)
    teacher = load_teacher(config.teacher, device, full.class_names)  # checked before caching
    size = _common_size(full, stage1_ids + val_ids)
    if os.path.exists(marker):
        os.remove(marker)  # a rebuild killed half-way must not be taken for complete
    memory_limit = 0 if cache == "build" else config.memory_limit_gb * 1e9
    stage1_set = _Transformed(full, stage1_ids, EvalTransform(config.scale, size, resize_labels=True))
    val_set = _Transformed(full, val_ids, EvalTransform(config.scale, size))  # scored at the labels' own size
    try:
        stage1, stage1_val = _build_caches(stage1_set, val_set, encoder, teacher, directory, memory_limit, device,
                                           progress)
    except BaseException:  # a full disk, say: what was written of the cache goes
        for folder in [directory(part) for part in PARTS] + [directory("")]:
            remove_cache_files(folder)
        raise
    if stage1.on_disk and stage1_val.on_disk:  # a resumed or restarted search opens it again
        write_json(marker, {**contents, "checksums": {part: checksums(directory(part)) for part in PARTS}})
    return stage1, stage1_val, size


SAME_DATA = ("classes", "training images")  # what a resumed search's data must keep


def check_same_data(found: Dict[str, Any], recorded: Optional[Dict[str, Any]], run_dir: str) -> None:
    """A resumed search must read the data it began with (`recorded`); --data-root may have moved them."""
    if recorded is None:
        return
    differences = [f"{key} {_cut(found.get(key))}, the search's {_cut(recorded.get(key))}"
                   for key in SAME_DATA if found.get(key) != recorded.get(key)]
    if differences:
        raise ValueError(f"the data found in {found.get('root')} are not those of the search in {run_dir}: "
                         f"{'; '.join(differences)} (check --data-root)")


def _cut(value: Any) -> str:
    """A value for a message, a long list cut short."""
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} [{', '.join(map(str, value[:3]))}, ...]"
    return str(value)


def _labelled_stage1_images(stage1: FeatureCache, full: SegmentationDataset, warn: bool) -> Tensor:
    """Which stage-1 images hold a labelled pixel; ValueError where none does. `warn`: of classes
    that no stage-1 label holds."""
    if warn:
        pixels = np.bincount(np.asarray(stage1.labels).ravel(), minlength=256)
        warning = absent_classes_warning(pixels, full.class_names, f"the {len(stage1)} stage-1 labels",
                                         "stage 1 cannot learn them")
        if warning:
            print(warning, file=sys.stderr)
    labelled = stage1.labelled_images(full.ignore_index)
    if not labelled.any():
        raise ValueError(f"the {len(stage1)} stage-1 images hold no labelled pixel (all {full.ignore_index} = "
                         f"ignore): there is nothing to train on")
    return labelled


def _image_loaders(config: SearchConfig, full: SegmentationDataset, train_ids: Sequence[int], stage2_count: int,
                   val_ids: Sequence[int], val_size: Tuple[int, int]):
    """stage2_batches(seed): a stage-2 epoch of augmented crops; val_batches(): meta-val's images,
    padded to `val_size`."""
    stage2_set = _Transformed(full, train_ids, TrainTransform(config.crop_size, config.scale_range, config.scale,
                                                              seed=config.seed))
    val_set = _Transformed(full, val_ids, EvalTransform(config.scale, val_size))

    def stage2_batches(seed: int):
        stage2_set.transform.seed = seed
        sampler = torch.randperm(len(train_ids), generator=torch.Generator().manual_seed(seed))[:stage2_count]
        return DataLoader(stage2_set, batch_size=config.stage2.batch_size, sampler=sampler.tolist(),
                          drop_last=True, num_workers=loader_workers(config.workers))

    def val_batches():
        return DataLoader(val_set, batch_size=config.stage1.batch_size, num_workers=loader_workers(config.workers))

    return stage2_batches, val_batches


def build_context(config: SearchConfig, run_dir: str, recorded: Optional[Dict[str, Any]] = None,
                  data_root: Optional[str] = None, device: str = "auto", cache: str = "auto",
                  progress: bool = True) -> SearchContext:
    """The data are read from `data_root` (--data-root), else from where a resumed search read them
    (`recorded`: its root, classes and image count, which the data found must keep), if they are
    still there, else as find_data_root says.
    `cache`: "auto" builds the stage-1 cache in memory, or memory-mapped in RUN_DIR/cache when
    larger than the memory limit; "build" always builds it memory-mapped there, for other
    processes to "open" (they wait until it is built; see distributed.py). A memory-mapped cache
    that is complete and holds the same images is opened instead of being built again (after
    --resume or a torchrun restart). `progress`: progress bars while it is built."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    device = resolve_device(device)
    root = find_data_root(config.dataset, data_root, (recorded or {}).get("root"))
    full = make_dataset(config.dataset, str(root))
    refuse_run_in_data(run_dir, root, [full])
    data = {"classes": list(full.class_names), "training images": len(full), "root": str(root),
            **({"teacher": teacher_crc32(config.teacher)} if config.teacher else {})}
    check_same_data(data, recorded, run_dir)  # before the cache: building it may take long
    check_same_teacher(config.teacher, data, recorded, run_dir)
    if cache != "open":  # said once, by the process that builds the cache
        print(f"{config.dataset} data in {root}: {len(full)} training images", file=sys.stderr)
    if config.workers == 0:  # every image is read in this process: decode each once
        full.keep_decoded(config.image_cache_gb * 1e9)
    train_ids, stage1_ids, val_ids, stage2_count = _image_indices(config, len(full))
    note = stage2_weight_note(config, stage2_count)
    if note and cache != "open":
        print(note, file=sys.stderr)
    encoder = MobileNetV2Encoder(pretrained=True)
    stage1, stage1_val, size = _stage1_caches(config, full, stage1_ids, val_ids, encoder, run_dir, cache, device,
                                              progress, data.get("teacher"))
    _check_scored_pixels(stage1_val.labels, full.ignore_index, full.exclude, config, len(full) - len(train_ids))
    stage1_labelled = _labelled_stage1_images(stage1, full, warn=cache != "open")
    stage1, stage1_val = (on_the_gpu_if_it_fits(c, device, name) for c, name in ((stage1, "meta-train"),
                                                                                 (stage1_val, "meta-val")))
    stage2_batches, val_batches = _image_loaders(config, full, train_ids, stage2_count, val_ids, size)
    return SearchContext(config=config, num_classes=full.num_classes, ignore_index=full.ignore_index,
                         exclude=tuple(full.exclude), stage1=stage1, stage1_val=stage1_val,
                         stage1_labelled=stage1_labelled,
                         stage2_batches=stage2_batches, val_batches=val_batches, make_encoder=_copies_of(encoder),
                         in_channels=MobileNetV2Encoder.channels, in_strides=MobileNetV2Encoder.strides,
                         device=device, data=data, stage2_steps=stage2_count // config.stage2.batch_size,
                         step_bars=progress and cache == "auto")  # one process: several would garble a terminal


def _copies_of(encoder: MobileNetV2Encoder):
    """A function giving a fresh copy of the pre-trained `encoder` (each candidate fine-tunes its own)."""
    state = {k: v.clone() for k, v in encoder.state_dict().items()}

    def make_encoder():
        fresh = MobileNetV2Encoder()
        fresh.load_state_dict(state)
        return fresh
    return make_encoder
