"""The full training of a design (the paper's section 4.4): its data, the epochs with the validation
mean IoU after each, the checkpoints (last and best) and the log of a run directory, from scratch or
resumed; python -m nasfast.train is its command line."""
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .checkpoint import (DAMAGED_ADVICE, RESUME_KEYS, check_classes, classifier_weights, load_checkpoint,
                         load_exact_weights, load_fitting_weights)
from .cli import (UsageError, counted, fraction, images_per_batch, loader_workers, message_of, non_negative_float,
                  non_negative_int, once_mended, positive_float, positive_int, reported_in_one_line, resolve_device)
from .data import DataError, EvalTransform, SegmentationDataset, TrainTransform, make_dataset
from .data.datasets import (DATASETS, OtherLayout, absent_classes_warning, find_data_root, refuse_run_in_data,
                             split_warning)
from .evaluate import dataset_and_indices, evaluate_model, evaluation_loader, evenly_spaced
from .files import (BEST, CONFIG, LAST, SEARCH_FILES, TRAINING_FILES, TRAINING_LOG, StopSignals, append_record,
                    files_in, finite_or_none, keep_copy, lock_directory, read_json, save_torch, why_unwritable,
                    write_atomic, write_json)
from .genotype import Genotype, genotype_name
from .metrics import NonFiniteScores
from .model import FINAL_CHANNELS, FINAL_SEP_REPEATS, create_model
from .ops.memory import cpu_memory_cache
from .progress import progress_bar
from .settings import check_low_high, check_settings, option
from .steps import LateLossCheck, NonFiniteLoss, descend, has_labelled_pixel, segmentation_loss
from .tensorboard import TensorBoardLog

PROG = "python -m nasfast.train"


@dataclass
class TrainConfig:
    """SPEC section 7; what the paper's VOC recipe (Appendix B: three stages over three datasets)
    does not carry over to one dataset is ours: epochs, batch, crop, the schedule's shape, weight
    decay, and the auxiliary weights' stages as quarters of the epochs."""
    epochs: int = option(200, "training epochs", positive_int)
    batch_size: int = option(16, "images per batch", images_per_batch)
    crop_size: int = option(360, "side of the square training crops", positive_int)
    scale: float = option(1.0, "images are resized by this factor first", positive_float)
    scale_range: Tuple[float, float] = option((0.5, 2.0), "random scale range of the augmentation", positive_float,
                                              nargs=2)
    encoder_lr: float = option(1e-3, "the encoder's base learning rate (SGD, momentum 0.9)", positive_float)
    decoder_lr: float = option(3e-3, "the decoder's base learning rate", positive_float)
    decoder_optimizer: str = option("adam", "the decoder's optimizer: Adam, or SGD with momentum 0.9 (the encoder "
                                            "always uses SGD)", choices=("adam", "sgd"))
    weight_decay: float = option(1e-5, "weight decay", non_negative_float)
    poly_power: float = option(0.9, "lr = base * (1 - step / steps) ** power", positive_float)
    lr_steps: Tuple[int, ...] = option((), "a step schedule instead of poly: the learning rates are multiplied by "
                                           "--step-factor after each of these epochs (e.g. 90 120)", positive_int)
    step_factor: float = option(0.1, "what --lr-steps multiplies the learning rates by", fraction)
    aux_weights: Tuple[float, ...] = option((0.3, 0.25, 0.2, 0.15), "one per part of the training (quarters)",
                                            non_negative_float)
    train_images: int = option(0, "training images used (0: all)", non_negative_int)
    val_images: int = option(0, "validation images used (0: all)", non_negative_int)
    seed: int = option(0, "seed of the images' order, their augmentation and the weights that start afresh (the "
                          "decoder's; with --init, a classifier of other classes)", non_negative_int)
    workers: int = option(2, "data-loading processes", non_negative_int)

    def __post_init__(self):
        """Each setting as its option takes it (a config.json edited by hand comes here: "5" is 5);
        ValueError naming the first that its option would refuse. Lists become tuples."""
        check_settings(self)
        check_low_high("scale_range", self.scale_range)
        if not self.aux_weights:
            raise ValueError("aux_weights is empty: expected a weight for each part of the training")


KEPT_IMAGE_BYTES = 1e9  # of decoded images, with workers 0 (as the search's --image-cache-gb)

PRESETS = {
    "paper": TrainConfig(),
    "fast": TrainConfig(epochs=50, crop_size=320),
    "tiny": TrainConfig(epochs=2, batch_size=8, crop_size=64, scale=0.25, train_images=32, val_images=8, workers=0),
}


class TrainingInterrupted(Exception):
    """Ctrl-C during the epochs; the message says what was saved and how to go on."""


def known_miou(saved: Optional[float]) -> Optional[float]:
    """A checkpoint's best mIoU; None when no epoch had a finite one (older runs saved -1 then)."""
    return saved if saved is not None and saved >= 0 else None


def format_miou(miou: Optional[float]) -> str:
    return "none" if miou is None else f"{miou:.4f}"


def better(miou: float, best: Optional[float]) -> bool:
    return math.isfinite(miou) and (best is None or miou > best)


def aux_weight(config: TrainConfig, epoch: int) -> float:
    """The auxiliary weights decrease over equal parts of the training."""
    part = min(len(config.aux_weights) - 1, epoch * len(config.aux_weights) // config.epochs)
    return config.aux_weights[part]


def _checked_loss(check: LateLossCheck, steps_per_epoch: int, out: str, saved_epochs: int) -> Optional[float]:
    """check(), with a non-finite loss as a user error worded for training (and what was saved)."""
    try:
        return check()
    except NonFiniteLoss as error:
        epoch, step_in_epoch = divmod(error.step, steps_per_epoch)
        raise UsageError(f"non-finite loss at epoch {epoch + 1}, step {step_in_epoch + 1}: {error.value} (the "
                         f"learning rate may be too high); {saved_note(out, saved_epochs)}") from None


def _record(loss, losses: list, bar) -> None:
    if loss is not None:
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)  # shown at the bar's next drawing: a log gets no line each


def make_optimizers(model, config: TrainConfig) -> Tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """SGD for the pre-trained encoder; Adam or SGD for the decoder."""
    decoder = model.decoder.parameters()
    decoder_opt = (torch.optim.Adam(decoder, config.decoder_lr, weight_decay=config.weight_decay)
                   if config.decoder_optimizer == "adam" else
                   torch.optim.SGD(decoder, config.decoder_lr, momentum=0.9, weight_decay=config.weight_decay))
    encoder_opt = torch.optim.SGD(model.encoder.parameters(), config.encoder_lr, momentum=0.9,
                                  weight_decay=config.weight_decay)
    return encoder_opt, decoder_opt


def interrupted_note(out: str, saved_epochs: int) -> str:
    return f"interrupted in epoch {saved_epochs + 1}: {saved_note(out, saved_epochs)}"


def saved_note(out: str, saved_epochs: int) -> str:
    if saved_epochs == 0:
        return f"nothing was saved; run the same command to start again in {out}, or remove it"
    last = os.path.join(out, LAST)
    if not os.path.isfile(last):  # its folder removed meanwhile, say
        return f"{last}, which held epoch {saved_epochs}, is gone: there is nothing to continue from"
    return f"{last} holds epoch {saved_epochs}; continue with {PROG} --resume {shlex.quote(out)}"


def check_files(subset, what: str, quiet: bool) -> None:
    """Reads each image and label of `subset` once, so that a broken file (a label value outside the
    classes, say) is named before the first epoch rather than after it, and warns of classes
    without a pixel there."""
    dataset, indices = dataset_and_indices(subset)
    checked = progress_bar(indices, desc=f"checking the {what} files", unit="image", leave=False, disable=quiet)
    pixels = sum((dataset.label_pixels(index) for index in checked), np.zeros(256, np.int64))
    warning = absent_classes_warning(pixels, dataset.class_names, f"the {len(indices)} {what} labels",
                                     "wherever the model predicts them, they count as IoU 0 in the mIoU")
    if warning:
        print(warning, file=sys.stderr)


def share_text(subset, dataset) -> str:
    return f"{len(subset)}" if len(subset) == len(dataset) else f"{len(subset)} of the {len(dataset)}"


@dataclass
class TrainingData:
    dataset: str                      # its name (--dataset)
    root: Path
    train_set: SegmentationDataset    # every training image, for its classes and ignore index
    train_images: Dataset             # those trained on (the preset's count)
    val_images: Dataset
    augment: TrainTransform


def load_data(args, config: TrainConfig, resumed: Optional[dict]) -> TrainingData:
    """The data, checked before anything is written: a resumed run's classes, every validation
    file; it says where they are and how many images it uses."""
    augment = TrainTransform(config.crop_size, config.scale_range, config.scale, seed=config.seed)
    root = find_data_root(args.dataset, args.data_root, resumed and resumed.get("data_root"))
    try:
        train_set = make_dataset(args.dataset, str(root), transform=augment)
    except OtherLayout as error:
        raise error.for_resumed_run() if resumed else error from None
    if resumed:
        check_classes(f"--data-root {args.data_root}" if args.data_root else str(root), train_set.class_names, resumed)
    val_set = make_dataset(args.dataset, str(root), split=DATASETS[args.dataset][2],
                           transform=EvalTransform(config.scale))
    refuse_run_in_data(args.out, root, [train_set, val_set])
    warning = split_warning(train_set, val_set, root)
    if warning:
        print(warning, file=sys.stderr)
    train_images, val_images = evenly_spaced(train_set, config.train_images), evenly_spaced(val_set, config.val_images)
    if len(train_images) < config.batch_size:
        whose = "" if args.batch_size is not None else f" (preset {args.preset or 'paper'}'s)"
        raise ValueError(_too_few_images(len(train_images), config.batch_size, root, resumed is not None, whose))
    print(f"{args.dataset} data in {root}: {share_text(train_images, train_set)} training and "
          f"{share_text(val_images, val_set)} validation images", file=sys.stderr)
    if config.workers == 0:  # every image is decoded in this process: once, not at every epoch
        for images in (train_set, val_set):
            images.keep_decoded(KEPT_IMAGE_BYTES / 2)
    check_files(val_images, "validation", args.no_progress)
    return TrainingData(args.dataset, root, train_set, train_images, val_images, augment)


def _too_few_images(images: int, batch_size: int, root: Path, resumed: bool, whose: str) -> str:
    """Why `images` training images cannot make a batch, and what to do (`whose`: where the batch
    size came from)."""
    if resumed:  # the batch size is the run's
        return (f"the run's batches of {batch_size} exceed the {counted(images, 'training image')} in {root}: give "
                f"--data-root the data it trained on")
    if images < 2:
        return f"{root} holds {counted(images, 'training image')}: a batch needs 2 at least"
    return (f"--batch-size {batch_size}{whose} exceeds the {images} training images: give --batch-size {images} or "
            f"less")


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """What the learning rates are multiplied by at `step`: the poly schedule, or the step schedule
    of config.lr_steps."""
    if config.lr_steps:
        return config.step_factor ** sum(step // steps_per_epoch >= epoch for epoch in config.lr_steps)
    return (1 - step / (config.epochs * steps_per_epoch)) ** config.poly_power


def train_epoch(model, batches, epoch: int, optimizers, config: TrainConfig, ignore_index: int, device,
                saved: Tuple[str, int]) -> Tuple[float, float]:
    """One epoch of `batches` (a progress bar over them) under the learning-rate schedule; its mean
    loss and the seconds spent waiting for batches. `saved` (OUT, epochs saved) words the error of
    a non-finite loss."""
    steps_per_epoch = len(batches)
    losses, check, skipped = [], LateLossCheck(0), 0
    waited, asked = 0.0, time.perf_counter()
    for step, (images, labels) in enumerate(batches, epoch * steps_per_epoch):
        waited += time.perf_counter() - asked
        if not has_labelled_pixel(labels, ignore_index):  # checked on the CPU, before the copy to the device
            skipped, asked = skipped + 1, time.perf_counter()
            continue
        _record(_checked_loss(check, steps_per_epoch, *saved), losses, batches)
        factor = lr_factor(config, step, steps_per_epoch)
        for optimizer, base in zip(optimizers, (config.encoder_lr, config.decoder_lr)):
            for group in optimizer.param_groups:
                group["lr"] = base * factor
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits, aux = model.forward_with_aux(images)
        loss = segmentation_loss(logits, aux, labels, ignore_index, aux_weight(config, epoch))
        check.defer(loss, step)
        descend(loss, *optimizers)
        asked = time.perf_counter()
    _record(_checked_loss(check, steps_per_epoch, *saved), losses, batches)
    if skipped:
        _report_skipped(skipped, steps_per_epoch, epoch, ignore_index, *saved)
    return sum(losses) / len(losses), waited


def _report_skipped(skipped: int, steps_per_epoch: int, epoch: int, ignore_index: int, out: str,
                    saved_epochs: int) -> None:
    """Says how many of the epoch's batches held no labelled pixel; an error when all did."""
    which = "every batch" if skipped == steps_per_epoch else f"{skipped} of the {steps_per_epoch} batches"
    what = f"{which} of epoch {epoch + 1} held no labelled pixel (all {ignore_index} = ignore)"
    if skipped == steps_per_epoch:
        raise UsageError(f"{what}: nothing to learn from; the training labels hold no class pixels, or too few for "
                         f"the random crops to meet (python -m nasfast.data counts them); "
                         f"{saved_note(out, saved_epochs)}")
    print(f"warning: {what} and were skipped", file=sys.stderr)


def train(args, config: TrainConfig, genotype: Genotype, resumed: Optional[dict] = None,
          initial: Optional[dict] = None) -> dict:
    """Trains into args.out, from the ImageNet encoder, from the weights of the checkpoint `initial`
    (--init), or on from the checkpoint `resumed` (last.pt); nothing is written before the data and
    the options have been checked."""
    device = resolve_device(args.device)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed crop size: let cuDNN pick its kernels once
    if resumed:
        print(f"resuming {args.out} at epoch {resumed['epoch'] + 2} of {config.epochs} ({LAST})", file=sys.stderr)
    print(f"design: {genotype_name(genotype)}", file=sys.stderr)
    data = load_data(args, config, resumed)
    # Resuming and --init load the encoder's weights from a checkpoint: no need for the ImageNet file then.
    model = create_model(genotype, data.train_set.num_classes, pretrained=resumed is None and initial is None,
                         aux="cell")
    if initial is not None:
        start_from(model, initial, args.init, data.train_set.class_names)
    model = model.to(device)
    epochs = Epochs(model, make_optimizers(model, config), genotype, data, config, device, args.no_progress)

    os.makedirs(args.out, exist_ok=True)
    lock = lock_directory(args.out)  # held while this process trains
    board = TensorBoardLog(args.out) if args.tensorboard else None
    check_still_as_checked(args.out, resumed)
    if resumed:
        start_epoch, best = resume_from(model, epochs.optimizers, resumed, args.out)
    else:
        start_epoch, best = 0, None  # None until an epoch has a finite mIoU
        init = {"init": os.path.abspath(args.init)} if initial is not None else {}
        write_json(os.path.join(args.out, CONFIG),
                   {"genotype": genotype.to_list(), "dataset": args.dataset, **init, **asdict(config)})
    try:
        best = run_epochs(epochs, args.out, start_epoch, best, board)
    finally:
        lock.close()
        if board is not None:
            board.close()
    return {"best_miou": best, "best_checkpoint": os.path.join(args.out, BEST)}


@dataclass
class Epochs:
    """What each epoch of a training uses; `run` trains and validates one, `checkpoint` is what
    last.pt and best.pt then hold."""
    model: torch.nn.Module
    optimizers: Tuple[torch.optim.Optimizer, torch.optim.Optimizer]
    genotype: Genotype
    data: TrainingData
    config: TrainConfig
    device: torch.device
    quiet: bool  # no progress bars

    def __post_init__(self):
        self.loader, self.order = training_loader(self.data.train_images, self.config, self.device)
        self.val_loader = evaluation_loader(self.data.val_images, self.config.workers)

    def run(self, epoch: int, saved: Tuple[str, int]) -> Tuple[dict, float]:
        """Trains epoch `epoch` and validates the model: the log's record, and the val mIoU.
        `saved` (OUT, epochs saved) words the errors."""
        started = time.time()
        self.data.augment.set_epoch(epoch)
        self.order.manual_seed(self.config.seed * 1000 + epoch)  # each epoch's order, resumed or not
        self.model.train()
        with cpu_memory_cache(self.device):
            loss, data_seconds = train_epoch(self.model, self._bar("epoch", self.loader, epoch), epoch,
                                             self.optimizers, self.config, self.data.train_set.ignore_index,
                                             self.device, saved)
        validation_started = time.time()
        metrics = evaluate_model(self.model, self._bar("validation", self.val_loader, epoch),
                                 self.data.train_set.num_classes, self.data.train_set.ignore_index, self.device)
        finished = time.time()
        record = finite_or_none({"epoch": epoch, "loss": loss, "val_miou": metrics["miou"],
                                 "val_pixel_acc": metrics["pixel_acc"], "seconds": round(finished - started, 2),
                                 "val_seconds": round(finished - validation_started, 2),
                                 "data_seconds": round(data_seconds, 2)})
        return record, metrics["miou"]

    def checkpoint(self, epoch: int, best: Optional[float]) -> dict:
        """The weights and optimizers, and the recipe of the model."""
        encoder_opt, decoder_opt = self.optimizers
        train_set = self.data.train_set
        return {"model": self.model.state_dict(), "encoder_optimizer": encoder_opt.state_dict(),
                "decoder_optimizer": decoder_opt.state_dict(), "epoch": epoch, "best_miou": best,
                "genotype": self.genotype.to_list(), "num_classes": train_set.num_classes, "channels": FINAL_CHANNELS,
                "sep_repeats": FINAL_SEP_REPEATS, "dataset": self.data.dataset, "data_root": str(self.data.root),
                "class_names": list(train_set.class_names), "scale": self.config.scale}

    def _bar(self, what: str, loader: DataLoader, epoch: int):
        return progress_bar(loader, desc=f"{what} {epoch + 1}/{self.config.epochs}", unit="batch", disable=self.quiet,
                            leave=False)


def run_epochs(epochs: Epochs, out: str, start_epoch: int, best: Optional[float],
               board: Optional[TensorBoardLog]) -> Optional[float]:
    """Trains the epochs from `start_epoch` on, saving each into OUT; the best val mIoU. A stop or
    an error says what was saved."""
    saved_epochs = start_epoch
    try:
        with StopSignals() as stop:  # SIGTERM stops as Ctrl-C does
            for epoch in range(start_epoch, epochs.config.epochs):
                record, miou = epochs.run(epoch, (out, saved_epochs))
                improved = better(miou, best)
                best = miou if improved else best
                state = epochs.checkpoint(epoch, best)
                state["record"] = record  # the log's line, should the run stop before it is appended
                with stop.deferred():  # what the note of a stop says was saved is what was
                    save_epoch(out, state, improved)
                    saved_epochs = epoch + 1
                    append_record(os.path.join(out, TRAINING_LOG), record)
                if board is not None:
                    board.add(epoch + 1, {key: value for key, value in record.items() if key != "epoch"})
                print(f"epoch {epoch + 1}/{epochs.config.epochs}: loss {record['loss']:.4f}, val mIoU {miou:.4f}"
                      f" (best {format_miou(best)})", file=sys.stderr)
    except KeyboardInterrupt:
        raise TrainingInterrupted(interrupted_note(out, saved_epochs)) from None
    except DataError as error:  # a training file first read in an epoch: what was saved still counts
        raise DataError(f"{once_mended(error, epochs.data.dataset, str(epochs.data.root))}, "
                        f"{saved_note(out, saved_epochs)}") from None
    except NonFiniteScores as error:
        raise UsageError(f"validation of epoch {saved_epochs + 1}: {error} (the learning rate may be too high); "
                         f"{saved_note(out, saved_epochs)}") from None
    except OSError as error:  # a full disk, say: what was saved still counts
        if not reported_in_one_line(error):
            raise
        raise UsageError(f"{message_of(error)}; {saved_note(out, saved_epochs)}") from None
    return best


def save_epoch(out: str, state: dict, improved: bool) -> None:
    """Saves an epoch's checkpoint as last.pt, and as best.pt where it improved. Until an epoch has
    a finite mIoU, best.pt is the first epoch's: it exists once announced."""
    best_path, last = os.path.join(out, BEST), os.path.join(out, LAST)
    save_torch(state, *((best_path, last) if improved or not os.path.isfile(best_path) else (last,)))


def resume_from(model, optimizers, resumed: dict, out: str) -> Tuple[int, Optional[float]]:
    """Loads the last checkpoint's weights and optimizer states; the epoch to go on with and the best mIoU."""
    load_exact_weights(model, resumed["model"], os.path.join(out, LAST))
    for optimizer, key in zip(optimizers, ("encoder_optimizer", "decoder_optimizer")):
        optimizer.load_state_dict(resumed[key])
    mend_log(out, resumed)
    return resumed["epoch"] + 1, best_kept(out, known_miou(resumed["best_miou"]))


def best_kept(out: str, best: Optional[float]) -> Optional[float]:
    """The best mIoU so far, or None where OUT's best.pt is lost or damaged, with a warning: then
    best.pt holds the best of the epochs to come, and says their mIoU, not the lost one's."""
    if best is None:
        return None
    try:
        load_checkpoint(os.path.join(out, BEST))
    except (UsageError, FileNotFoundError) as error:
        reason = message_of(error).replace("; " + DAMAGED_ADVICE, "")
        print(f"warning: {reason}: the weights of the best epoch so far (val mIoU {best:.4f}) are lost; {BEST} will "
              f"hold the best of the epochs from here on", file=sys.stderr)
        return None
    return best


def training_loader(images, config: TrainConfig, device) -> Tuple[DataLoader, torch.Generator]:
    """The training batches, and the generator of their order (seeded at each epoch: a resumed
    run's epochs see the same order)."""
    order, workers = torch.Generator(), loader_workers(config.workers)
    loader = DataLoader(images, batch_size=config.batch_size, drop_last=True,
                        sampler=RandomSampler(images, generator=order), num_workers=workers,
                        persistent_workers=workers > 0,  # no new worker processes each epoch
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    return loader, order


def start_from(model, initial: dict, path: str, class_names: Sequence[str]) -> None:
    """Loads the --init checkpoint's weights into model, and says which layers start afresh (the
    classifiers, for data of other classes, whether as many or not)."""
    trained = initial.get("class_names")
    renamed = len(class_names) == initial["num_classes"] and trained is not None and list(trained) != list(class_names)
    fresh = load_fitting_weights(model, initial, classifiers=not renamed)
    unfit = sorted(set(fresh) - classifier_weights(model))
    if unfit:
        raise UsageError(f"--init {path}: its weights do not fit the model it describes ({len(unfit)} missing or of "
                         f"other shapes, e.g. {unfit[0]}): it was edited, or mixes files of different runs")
    layers = sorted({name.rsplit(".", 1)[0] for name in fresh})
    why = (f"for the classes {list(class_names)}, not its {list(trained)}" if renamed else
           f"for {len(class_names)} classes, not its {initial['num_classes']}")
    print(f"weights from {path}{f'; {why}: ' + ', '.join(layers) + ' start afresh' if fresh else ''}", file=sys.stderr)


def mend_log(out: str, checkpoint: dict) -> None:
    """Rewrites OUT's training log as the checkpoint has it, where it differs; OUT is locked."""
    log = os.path.join(out, TRAINING_LOG)
    text = Path(log).read_text(errors="replace") if os.path.exists(log) else ""  # bytes not UTF-8: a line dropped
    mended = mended_log(log, text, checkpoint)
    if mended is not None:
        if not mended.startswith(text):  # lines dropped
            print(f"warning: {log} as it was: {keep_copy(log)}", file=sys.stderr)
        write_atomic(log, mended.encode())


def mended_log(log: str, text: str, checkpoint: dict) -> Optional[str]:
    """The training log `log`, which holds `text`, as the checkpoint has it, when it differs (else
    None): the epochs up to the checkpoint's, that epoch's line taken from the checkpoint when a run
    stopped between saving the epoch and logging it. Lines torn, damaged or of later epochs are
    dropped, with a warning."""
    lines = text.splitlines(keepends=True)
    records = [r for r in map(_epoch_record, lines) if r is not None and r["epoch"] <= checkpoint["epoch"]]
    if len(records) < len(lines):
        print(f"warning: {log}: {counted(len(lines) - len(records), 'line')} dropped (torn, damaged, or of epochs "
              f"after {LAST}'s)", file=sys.stderr)
    if "record" in checkpoint and checkpoint["epoch"] not in {r["epoch"] for r in records}:
        records.append(checkpoint["record"])
    mended = "".join(json.dumps(r) + "\n" for r in records)
    return None if mended == "".join(lines) else mended


def _epoch_record(line: str) -> Optional[dict]:
    """The record of a complete, well-formed line of the training log, else None."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("epoch"), int) else None


def check_new_run_directory(out: str) -> None:
    """Refuses an --out that is a file or holds a search or a training run. A training that
    stopped before its first epoch was saved left config.json alone (and best.pt, when the disk
    filled as last.pt was written): it may start again."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a directory")
    unwritable = why_unwritable(out)
    if unwritable:
        raise UsageError(f"--out {out} cannot be written: {unwritable}")
    present = files_in(out, SEARCH_FILES + (CONFIG,) + TRAINING_FILES)
    searched = [name for name in present if name in SEARCH_FILES]
    if searched:
        raise UsageError(f"{out} holds a search ({', '.join(searched)}): choose another --out")
    unsaved = CONFIG in present and set(present) <= {CONFIG, BEST} and "genotype" in (read_config(out) or {})
    if present and not unsaved:
        raise UsageError(f"{out} already holds a training run: continue it with --resume, or choose another --out")


def check_still_as_checked(out: str, resumed: Optional[dict]) -> None:
    """Once OUT is locked: another training may have used it since it was checked."""
    if resumed is None:
        check_new_run_directory(out)
    elif load_checkpoint(os.path.join(out, LAST), RESUME_KEYS)["epoch"] != resumed["epoch"]:
        raise UsageError(f"{out} was trained further by another process meanwhile: --resume it again")


def read_config(out: str) -> Optional[dict]:
    """OUT/config.json, or None without one."""
    return read_json(os.path.join(out, CONFIG))


