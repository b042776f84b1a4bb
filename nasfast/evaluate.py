"""python -m nasfast.evaluate: mIoU, fwIoU, mean accuracy, pixel accuracy and per-class IoU of a
trained checkpoint on a dataset split (the numbers of the paper's Table 5)."""
import argparse
import json
import sys

from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import EvalTransform, make_dataset
from .data.datasets import DATASETS
from .search.context import resolve_device
from .train import evaluate_model, evaluation_loader


def format_metrics(metrics: dict, class_names) -> str:
    lines = [f"mIoU {metrics['miou']:.4f}  fwIoU {metrics['fwiou']:.4f}  mean acc {metrics['mean_acc']:.4f}  "
             f"pixel acc {metrics['pixel_acc']:.4f}", "per-class IoU:"]
    names = list(class_names) or [str(c) for c in range(len(metrics["iou"]))]
    lines += [f"  {name:<14} {iou:.4f}" for name, iou in zip(names, metrics["iou"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasfast.evaluate", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt of python -m nasfast.train")
    parser.add_argument("--dataset", default="camvid", choices=sorted(DATASETS), help="[camvid]")
    parser.add_argument("--data-root", help="dataset directory (default: $NASFAST_DATA/<dataset>)")
    parser.add_argument("--split", default="val", help="[val]")
    parser.add_argument("--scale", type=float, default=1.0, help="resize images by this factor [1.0]")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N images only [all]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes [2]")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    model = model_from_checkpoint(checkpoint).to(device)
    dataset = make_dataset(args.dataset, args.data_root, args.split, EvalTransform(args.scale))
    if dataset.num_classes != checkpoint["num_classes"]:
        parser.error(f"{args.dataset} has {dataset.num_classes} classes, the checkpoint {checkpoint['num_classes']}")
    if args.limit:
        dataset.pairs = dataset.pairs[:args.limit]
    loader = evaluation_loader(dataset, args.workers)
    metrics = evaluate_model(model, loader, dataset.num_classes, dataset.ignore_index, (), device)
    print(json.dumps(metrics) if args.json else format_metrics(metrics, dataset.class_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
