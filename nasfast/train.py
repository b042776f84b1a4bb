"""python -m nasfast.train: full training of a found design (SPEC section 7), with validation
mean IoU per epoch, checkpoints (last and best) and --resume."""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Tuple

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .data import EvalTransform, TrainTransform, make_dataset
from .data.datasets import DATASETS
from .genotype import Genotype
from .metrics import ConfusionMatrix
from .model import create_model
from .search.candidate import LateLossCheck, descend, segmentation_loss
from .search.context import resolve_device
from .search.records import append_record


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 16
    crop_size: int = 360
    scale: float = 1.0                     # images resized by this factor first
    scale_range: Tuple[float, float] = (0.5, 2.0)
    encoder_lr: float = 1e-3               # SGD, momentum 0.9
    decoder_lr: float = 3e-3
    decoder_optimizer: str = "adam"        # or "sgd"
    weight_decay: float = 1e-5
    poly_power: float = 0.9                # lr = base * (1 - step / steps) ** power
    aux_weights: Tuple[float, ...] = (0.3, 0.25, 0.2, 0.15)  # one per quarter of the training
    train_images: int = 0                  # 0: all
    val_images: int = 0
    seed: int = 0
    workers: int = 2


PRESETS = {
    "paper": TrainConfig(),
    "fast": TrainConfig(epochs=50, crop_size=320),
    "tiny": TrainConfig(epochs=2, batch_size=8, crop_size=64, scale=0.25, train_images=32, val_images=8, workers=0),
}


def aux_weight(config: TrainConfig, epoch: int) -> float:
    """The auxiliary weights decrease over equal parts of the training."""
    part = min(len(config.aux_weights) - 1, epoch * len(config.aux_weights) // config.epochs)
    return config.aux_weights[part]


def parse_genotype(text: str) -> Genotype:
    """A zoo name, JSON text, or a file holding JSON."""
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    return Genotype.parse(text.strip())


def evaluate_model(model, loader, num_classes, ignore_index, exclude, device) -> dict:
    matrix = ConfusionMatrix(num_classes, ignore_index, exclude)
    model.eval()
    with torch.no_grad():
        for images, labels in loader:
            matrix.update(model(images.to(device)), labels.to(device))
    return matrix.compute()


def evaluation_loader(dataset, workers: int, batch_size: int = 8) -> DataLoader:
    """Images through the model batch_size at a time when they all have one size (CamVid), one at
    a time otherwise (VOC); the worker processes persist from one pass to the next."""
    if isinstance(dataset, Subset):
        sizes = {dataset.dataset.image_size(i) for i in dataset.indices}
    else:
        sizes = {dataset.image_size(i) for i in range(len(dataset))}
    one_size = len(sizes) <= 1
    return DataLoader(dataset, batch_size=batch_size if one_size else 1, num_workers=workers,
                      persistent_workers=workers > 0)


def _record(loss, losses: list, bar) -> None:
    if loss is not None:
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")


def _subset(dataset, count: int, seed: int):
    if not count or count >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return Subset(dataset, sorted(order.tolist()))


def train(args, config: TrainConfig) -> dict:
    device = resolve_device(args.device)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed crop size: let cuDNN pick its kernels once
    augment = TrainTransform(config.crop_size, config.scale_range, config.scale, seed=config.seed)
    train_set = make_dataset(args.dataset, args.data_root, transform=augment)
    val_split = DATASETS[args.dataset][2]
    val_set = make_dataset(args.dataset, args.data_root, split=val_split, transform=EvalTransform(config.scale))
    genotype = parse_genotype(args.genotype)
    # Resuming loads every weight from the checkpoint: no need for the ImageNet file then.
    model = create_model(genotype, train_set.num_classes, pretrained=not args.resume, aux="cell").to(device)
    decoder_opt = (torch.optim.Adam(model.decoder.parameters(), config.decoder_lr, weight_decay=config.weight_decay)
                   if config.decoder_optimizer == "adam" else
                   torch.optim.SGD(model.decoder.parameters(), config.decoder_lr, momentum=0.9,
                                   weight_decay=config.weight_decay))
    encoder_opt = torch.optim.SGD(model.encoder.parameters(), config.encoder_lr, momentum=0.9,
                                  weight_decay=config.weight_decay)
    train_subset = _subset(train_set, config.train_images, config.seed)
    steps_per_epoch = len(train_subset) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} exceeds the {len(train_subset)} training images")
    val_loader = evaluation_loader(_subset(val_set, config.val_images, config.seed), config.workers)

    os.makedirs(args.out, exist_ok=True)
    last, best_path, log = (os.path.join(args.out, n) for n in ("last.pt", "best.pt", "log.jsonl"))
    start_epoch, best = 0, -1.0
    if args.resume:
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        encoder_opt.load_state_dict(state["encoder_optimizer"])
        decoder_opt.load_state_dict(state["decoder_optimizer"])
        start_epoch, best = state["epoch"] + 1, state["best_miou"]
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({"genotype": genotype.to_list(), "dataset": args.dataset, **asdict(config)}, f, indent=2)

    total_steps = config.epochs * steps_per_epoch
    order = torch.Generator()
    loader = DataLoader(train_subset, batch_size=config.batch_size, drop_last=True,
                        sampler=RandomSampler(train_subset, generator=order), num_workers=config.workers,
                        persistent_workers=config.workers > 0,  # no new worker processes each epoch
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        augment.set_epoch(epoch)
        order.manual_seed(config.seed * 1000 + epoch)  # each epoch's order, resumed or not
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=args.no_progress,
                   leave=False)
        check = LateLossCheck(0)
        for step, (images, labels) in enumerate(bar, epoch * steps_per_epoch):
            _record(check(), losses, bar)
            factor = (1 - step / total_steps) ** config.poly_power
            for opt, base in ((encoder_opt, config.encoder_lr), (decoder_opt, config.decoder_lr)):
                for group in opt.param_groups:
                    group["lr"] = base * factor
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits, aux = model.forward_with_aux(images)
            loss = segmentation_loss(logits, aux, labels, train_set.ignore_index, aux_weight(config, epoch))
            check.defer(loss, step)
            descend(loss, encoder_opt, decoder_opt)
        _record(check(), losses, bar)
        metrics = evaluate_model(model, val_loader, train_set.num_classes, train_set.ignore_index, (), device)
        record = {"epoch": epoch, "loss": sum(losses) / len(losses), "val_miou": metrics["miou"],
                  "val_pixel_acc": metrics["pixel_acc"], "seconds": round(time.time() - started, 2)}
        improved = metrics["miou"] > best
        best = max(best, metrics["miou"])
        state = {"model": model.state_dict(), "encoder_optimizer": encoder_opt.state_dict(),
                 "decoder_optimizer": decoder_opt.state_dict(), "epoch": epoch,
                 "best_miou": best, "genotype": genotype.to_list(),
                 "num_classes": train_set.num_classes, "channels": 64, "sep_repeats": 2,
                 "dataset": args.dataset, "class_names": list(train_set.class_names)}
        save_checkpoint(state, *((best_path, last) if improved else (last,)))
        append_record(log, record)
        print(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}, val mIoU {metrics['miou']:.4f}"
              f" (best {best:.4f})", file=sys.stderr)
    return {"best_miou": best}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nasfast.train", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--genotype", required=True, help="arch0|arch1|arch2, the genotype's JSON, or a file holding it")
    parser.add_argument("--dataset", default="camvid", choices=sorted(DATASETS), help="[camvid]")
    parser.add_argument("--data-root", help="dataset directory (default: $NASFAST_DATA/<dataset>)")
    parser.add_argument("--out", required=True, help="directory for last.pt, best.pt, log.jsonl, config.json")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="[paper]")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--decoder-optimizer", choices=["adam", "sgd"], help="[adam]")
    parser.add_argument("--workers", type=int, help="data-loading processes [the preset's: 2, tiny 0]")
    parser.add_argument("--device", default="auto", help="cpu, cuda ... [auto]")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = TrainConfig(**asdict(PRESETS[args.preset]))
    for name in ("epochs", "batch_size", "decoder_optimizer", "workers"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.resume and not os.path.isfile(os.path.join(args.out, "last.pt")):
        parser.error(f"--resume: no {os.path.join(args.out, 'last.pt')}")
    try:
        parse_genotype(args.genotype)
    except ValueError as error:
        parser.error(str(error))
    result = train(args, config)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
