"""python -m nasfast.evaluate: mIoU, fwIoU, mean accuracy, pixel accuracy and per-class IoU of a
trained checkpoint on a dataset split (the numbers of the paper's Table 5); the evaluation that
training's validation uses too."""
import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from .checkpoint import check_classes, load_checkpoint, model_from_checkpoint
from .cli import UsageError, counted, loader_workers, non_negative_int, path_text, positive_float, resolve_device, run
from .data import EvalTransform, make_dataset
from .data.datasets import DATASETS, every_image_in_every_split, find_data_root, unsplit_note
from .data.transforms import scaled_size
from .encoder import MobileNetV2Encoder
from .files import finite_or_none
from .metrics import metrics_of
from .ops.memory import cpu_memory_cache
from .predictions import PredictionWriter, make_folders, prediction_paths, refuse_to_replace
from .progress import progress_bar

PROG = "python -m nasfast.evaluate"


def evenly_spaced(dataset, count: int):
    """`count` images spread evenly over the dataset (all when count is 0 or at least its size):
    the validation images of a training with val_images = count, and evaluate --limit count."""
    if not count or count >= len(dataset):
        return dataset
    return Subset(dataset, [i * len(dataset) // count for i in range(count)])


def dataset_and_indices(images) -> Tuple[Dataset, Sequence[int]]:
    """The dataset that `images` (a dataset or a Subset of one) reads, and the indices it reads."""
    if isinstance(images, Subset):
        return images.dataset, images.indices
    return images, range(len(images))


def evaluate_model(model, loader, num_classes, ignore_index, device,
                   predictions: Optional[Callable[[Tensor], None]] = None) -> dict:
    """The metrics of `model` over `loader`'s batches; `predictions` is called with each batch's logits."""
    model.eval()

    def forward(images: Tensor) -> Tensor:
        logits = model(images)
        if predictions is not None:
            predictions(logits)
        return logits

    with cpu_memory_cache(device):
        return metrics_of(forward, ((images.to(device), labels) for images, labels in loader), num_classes,
                          ignore_index)


def prediction_writer(directory: str, images, root) -> PredictionWriter:
    """Writes the predictions of `images` (a dataset or a Subset of one) under `directory`, made now:
    a folder that cannot be is said before the model runs."""
    full, indices = dataset_and_indices(images)
    paths = prediction_paths(Path(os.path.abspath(directory)), Path(root), [full.pairs[i][0] for i in indices])
    refuse_to_replace(Path(directory), paths, [path for pair in full.pairs for path in pair])
    make_folders(paths)
    return PredictionWriter(paths, [full.image_size(i) for i in indices])


def evaluation_loader(dataset, workers: int, batch_size: int = 8) -> DataLoader:
    """Images through the model batch_size at a time when they all have one size (CamVid), one at
    a time otherwise (VOC); the worker processes persist from one pass to the next."""
    full, indices = dataset_and_indices(dataset)
    one_size = len({full.image_size(i) for i in indices}) <= 1
    workers = loader_workers(workers)
    return DataLoader(dataset, batch_size=batch_size if one_size else 1, num_workers=workers,
                      persistent_workers=workers > 0)


def check_scale_option(dataset, scale: float) -> None:
    """Refuses a --scale that shrinks the images below the encoder's coarsest stride: the scores
    of a few pixels' worth of features say nothing (1x1 images scored mIoU 1.0). The training's
    own scale, the default, is not checked: it is what the model validated at."""
    width, height = dataset.image_size(0)
    scaled = scaled_size(height, width, scale)
    stride = max(MobileNetV2Encoder.strides)
    if min(scaled) < stride:
        raise UsageError(f"--scale {scale} makes the images {scaled[1]}x{scaled[0]} pixels (from {width}x{height}), "
                         f"less than the encoder's coarsest stride, {stride}, a side: give at least "
                         f"{math.ceil(stride / min(width, height) * 1000) / 1000}")


def format_metrics(metrics: dict, class_names) -> str:
    lines = [f"mIoU {metrics['miou']:.4f}  fwIoU {metrics['fwiou']:.4f}  mean acc {metrics['mean_acc']:.4f}  "
             f"pixel acc {metrics['pixel_acc']:.4f}", "per-class IoU:"]
    names = list(class_names) or [str(c) for c in range(len(metrics["iou"]))]
    lines += [f"  {name:<14} {iou:.4f}" for name, iou in zip(names, metrics["iou"])]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--checkpoint", required=True, type=path_text,
                        help="best.pt or last.pt of python -m nasfast.train")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="camvid, voc or folder [the checkpoint's]")
    parser.add_argument("--data-root", type=path_text,
                        help="dataset directory (default: the training's, stored in the checkpoint, where "
                             "it still is; else $NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>)")
    parser.add_argument("--split", default="val",
                        help="camvid: train, val or test (where the data have test.txt); voc: train_aug, "
                             "train or val; folder: the names in <SPLIT>.txt (every image where there is "
                             "neither train.txt nor val.txt) [val]")
    parser.add_argument("--scale", type=positive_float,
                        help="resize the images by this factor before the model sees them (the scores are counted at "
                             "the labels' own size) [the training's, stored in the checkpoint]")
    parser.add_argument("--limit", type=non_negative_int, default=0,
                        help="evaluate N images spread evenly over the split, those a training with N validation "
                             "images (the tiny preset: 8) validates on [0: all]")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N [auto]")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="data-loading processes [2]")
    parser.add_argument("--predictions", type=path_text, metavar="DIR",
                        help="also write each image's predicted classes to DIR/<its path under the data root>.png, "
                             "at the image's size: a palette PNG whose values are the class indices (PASCAL VOC's "
                             "colours)")
    parser.add_argument("--json", action="store_true",
                        help="print the metrics as JSON: miou, fwiou, mean_acc, pixel_acc, reward (their geometric "
                             "mean, the search's), and per class iou and acc in the order of class_names")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    dataset_name = args.dataset or checkpoint.get("dataset", "camvid")
    scale = args.scale or checkpoint.get("scale", 1.0)  # checkpoints before the scale was stored: 1.0
    recorded = checkpoint.get("data_root") if dataset_name == checkpoint.get("dataset") else None
    root = find_data_root(dataset_name, args.data_root, recorded)
    dataset = make_dataset(dataset_name, str(root), args.split, EvalTransform(scale))
    check_classes(f"{dataset_name} in {root}", dataset.class_names, checkpoint)
    images = evenly_spaced(dataset, args.limit)
    if args.scale is not None:
        check_scale_option(dataset, scale)
    model = model_from_checkpoint(checkpoint, source=args.checkpoint).to(device)
    print(f"{args.checkpoint} on {dataset_name} {args.split} ({root}): {counted(len(images), 'image')} at scale "
          f"{scale}", file=sys.stderr if args.json else sys.stdout, flush=True)
    if every_image_in_every_split(dataset):
        print(unsplit_note(root), file=sys.stderr)
    writer = prediction_writer(args.predictions, images, root) if args.predictions else None
    loader = evaluation_loader(images, args.workers)
    batches = progress_bar(loader, desc="evaluating", unit="batch", leave=False, disable=args.no_progress)
    metrics = evaluate_model(model, batches, dataset.num_classes, dataset.ignore_index, device, writer)
    named = {**metrics, "class_names": list(dataset.class_names)}  # whose iou and acc the lists are
    print(json.dumps(finite_or_none(named)) if args.json else format_metrics(metrics, dataset.class_names))
    if writer is not None:
        print(f"predictions: {counted(writer.written, 'PNG file')} under {args.predictions}", file=sys.stderr)
    if math.isnan(metrics["miou"]):
        print("note: mIoU is nan: the labels hold no class pixels (all 255 = ignore)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
