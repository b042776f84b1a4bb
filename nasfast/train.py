"""python -m nasfast.train: full training of a found design (the paper's section 4.4), with validation
mean IoU per epoch, checkpoints (last and best) and --resume."""
import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict, fields, replace
from typing import List, Optional, Tuple

from .checkpoint import DAMAGED_ADVICE, RESUME_KEYS, load_checkpoint
from .cli import UsageError, counted, option_text, path_text, run, run_directory
from .data.datasets import DATASETS
from .designs import genotype_from_option
from .files import (BEST, CONFIG, LAST, SEARCH_FILES, TRAINING_LOG, Unwritable, files_in, lock_directory,
                    read_records, refuse_if_in_use)
from .genotype import Genotype, genotype_name
from .model import FINAL_CHANNELS, FINAL_SEP_REPEATS
from .settings import add_option
from .tensorboard import check_available
from .trainer import (PRESETS, PROG, TrainConfig, TrainingInterrupted, check_new_run_directory, format_miou,
                      known_miou, mend_log, read_config, train)

PRESET_NOTES = {"paper": "SPEC section 7 at our epochs, batch and crop: meant for a GPU",
                "fast": "shorter, for a GPU", "tiny": "seconds on a CPU, for trying it out"}
# The settings that options set over the preset's; workers alone does not change what is trained.
OPTION_FIELDS = ("epochs", "batch_size", "encoder_lr", "decoder_lr", "decoder_optimizer", "lr_steps", "step_factor",
                 "seed", "workers")


def preset_table() -> str:
    rows = ["presets (--epochs and --batch-size override theirs; images: training/validation images used):",
            f"  {'':<6} {'epochs':>6} {'batch':>5} {'crop':>4} {'scale':>5}  images"]
    for name, c in PRESETS.items():
        images = f"{c.train_images}/{c.val_images}" if c.train_images else "all"
        rows.append(f"  {name:<6} {c.epochs:>6} {c.batch_size:>5} {c.crop_size:>4} {c.scale:>5}  {images:<8} "
                    f"{PRESET_NOTES[name]}")
    return "\n".join(rows)


EPILOG = f"""{preset_table()}

With --resume every setting comes from OUT/config.json: --genotype, --dataset, --preset, --epochs,
--batch-size, --encoder-lr, --decoder-lr, --decoder-optimizer, --lr-steps, --step-factor and --seed
may be left out, and are refused if they differ from the run's; --workers, --device, --data-root,
--tensorboard and --no-progress may change.
Ctrl-C stops; the epochs finished so far stay in OUT/last.pt for --resume.

examples:
  {PROG} --genotype arch0 --dataset camvid --preset tiny --out runs/try --epochs 1
  {PROG} --genotype arch0 --dataset camvid --out runs/arch0          # the full training
  {PROG} --resume runs/arch0
  {PROG} --init runs/arch0/best.pt --dataset folder --data-root DATA --out runs/mine   # fine-tune"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genotype", "--arch", dest="genotype",
                        help="arch0|arch1|arch2, the genotype's JSON, a file holding it, a training checkpoint or an "
                             "export (its design; --init starts from a checkpoint's weights too), or a search's "
                             "RUN_DIR (or its candidates.jsonl) for its best design (required unless --resume or "
                             "--init)")
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        help="camvid, voc (PASCAL VOC 2012 + SBD) or folder (your own data; see the README's "
                             "Data section) [camvid]")
    parser.add_argument("--data-root", type=path_text,
                        help="dataset directory (default: with --resume, where the run read its "
                             "data, while it is there; else $NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>)")
    parser.add_argument("--out", type=path_text,
                        help="directory for last.pt, best.pt, log.jsonl, config.json; must not hold a run "
                             "unless --resume")
    parser.add_argument("--resume", nargs="?", const=True, metavar="OUT", type=path_text,
                        help="continue the run in OUT from OUT/last.pt (--resume OUT, as the search's, or --out OUT "
                             "--resume)")
    parser.add_argument("--init", metavar="CHECKPOINT", type=path_text,
                        help="start from the weights of a training's checkpoint (its best.pt or last.pt) instead of "
                             "the ImageNet encoder: to train a design longer, or on other data (a dataset of other "
                             "classes starts its classifiers afresh); its design is the default --genotype. The "
                             "schedule starts again at the full rates: lower --encoder-lr and --decoder-lr to keep "
                             "closer to the weights")
    parser.add_argument("--preset", choices=list(PRESETS), help="paper, fast or tiny: see the table below [paper]")
    _add_setting(parser, "epochs", help="override the preset's epochs (table below)")
    _add_setting(parser, "batch_size", help="override the preset's batch size (table below)")
    for name in ("encoder_lr", "decoder_lr", "decoder_optimizer"):
        _add_setting(parser, name)
    _add_setting(parser, "lr_steps", metavar="EPOCH")
    _add_setting(parser, "step_factor")
    _add_setting(parser, "seed")
    _add_setting(parser, "workers", help="data-loading processes [the preset's: 2, tiny 0]")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N [auto]")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log each epoch's loss and validation scores for TensorBoard, in OUT/tensorboard "
                             "(needs the tensorboard package; then: tensorboard --logdir OUT)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar within an epoch (the line per epoch stays)")
    return parser


def _add_setting(parser: argparse.ArgumentParser, name: str, help: Optional[str] = None, **kwargs) -> None:
    """The option of TrainConfig's setting `name` (its help shows the paper preset's value)."""
    add_option(parser, next(f for f in fields(TrainConfig) if f.name == name), "--" + name.replace("_", "-"),
               help=help, **kwargs)


def preset_of(saved: dict) -> Optional[str]:
    """The preset whose settings (those that options do not set) the run has."""
    for name, config in PRESETS.items():
        settings = json.loads(json.dumps(asdict(config)))  # tuples as the lists of config.json
        if all(saved.get(key) == value for key, value in settings.items() if key not in OPTION_FIELDS):
            return name
    return None


def resume_conflicts(args, saved: dict) -> List[str]:
    """Each option given with --resume that would change the training saved in config.json."""
    conflicts = []
    if args.genotype is not None and genotype_from_option(args.genotype).to_list() != saved["genotype"]:
        conflicts.append(f"--genotype {args.genotype} differs from the run's {genotype_name(saved['genotype'])}")
    for option in ("dataset", *(name for name in OPTION_FIELDS if name != "workers")):
        given, run_value = getattr(args, option), saved.get(option, getattr(TrainConfig, option, None))
        given_text, run_text = option_text(given), option_text(run_value)
        if given is not None and given_text != run_text:
            conflicts.append(f"--{option.replace('_', '-')} {given_text} differs from the run's {run_text}")
    if args.preset is not None and args.preset != preset_of(saved):
        conflicts.append(f"--preset {args.preset} differs from the run's {preset_of(saved) or 'settings'}")
    return conflicts


def _why_no_last(out: str) -> str:
    """The way on from a run without last.pt: stopped before its first epoch ended, or the file was lost."""
    epochs = len(read_records(os.path.join(out, TRAINING_LOG)))
    if not epochs:
        return " (the run stopped before its first epoch ended: start it again without --resume)"
    return (f", though {os.path.join(out, TRAINING_LOG)} records {counted(epochs, 'epoch')}: {LAST} was removed "
            f"or lost, so the run cannot go on; train in another --out{_init_hint(out)}")


def _init_hint(out: str) -> str:
    best = os.path.join(out, BEST)
    return f" (--init {best} starts from its best weights)" if os.path.isfile(best) else ""


def resumed_run(args) -> Tuple[Genotype, TrainConfig, dict]:
    """The genotype, settings and last checkpoint of the run in args.out (its dataset into args)."""
    if os.path.isfile(args.out):
        raise UsageError(f"--resume {args.out}: a file; give the run's directory ({os.path.dirname(args.out) or '.'})")
    if not os.path.isdir(args.out):
        raise UsageError(f"--resume {args.out}: no such directory")
    if args.init is not None:
        raise UsageError("--init starts a new run: --resume goes on from the run's own last.pt")
    last = os.path.join(args.out, LAST)
    searched = files_in(args.out, SEARCH_FILES)
    if searched:
        raise UsageError(f"--resume: {args.out} holds a search ({', '.join(searched)}), not a training run")
    saved = read_config(args.out)
    if not os.path.isfile(last):
        raise UsageError(f"--resume: no {last}{_why_no_last(args.out) if saved else ''}")
    if saved is None:
        raise UsageError(f"--resume: no {os.path.join(args.out, CONFIG)}")
    if not (isinstance(saved, dict) and {"genotype", "dataset"} <= saved.keys()):
        raise UsageError(f"--resume: {os.path.join(args.out, CONFIG)} is not the settings of a training run")
    conflicts = resume_conflicts(args, saved)
    if conflicts:
        longer = (f"; to train on from its weights for more epochs: --init {os.path.join(args.out, LAST)} in another "
                  f"--out (the schedule starts again)" if any(c.startswith("--epochs") for c in conflicts) else "")
        raise UsageError(f"--resume: {', '.join(conflicts)} ({CONFIG}){longer}")
    settings = {f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}
    try:
        config = TrainConfig(**settings)
    except ValueError as error:
        raise UsageError(f"--resume: {os.path.join(args.out, CONFIG)} holds settings a training cannot take "
                         f"({error}): it was edited?") from None
    if args.workers is not None:
        config.workers = args.workers
    args.dataset = saved["dataset"]
    try:
        checkpoint = load_checkpoint(last, RESUME_KEYS)
    except UsageError as error:  # damaged: "another checkpoint" is for --init, in another run
        raise UsageError(str(error).replace(DAMAGED_ADVICE, f"the run cannot go on: train in another "
                                                            f"--out{_init_hint(args.out)}"))
    genotype = Genotype.parse(saved["genotype"])
    if Genotype.parse(checkpoint["genotype"]) != genotype:
        raise UsageError(f"--resume: {last} holds the weights of {genotype_name(checkpoint['genotype'])}, but "
                         f"{CONFIG} trains {genotype_name(genotype)}: files of different runs")
    return genotype, config, checkpoint


def new_run(args) -> Tuple[Genotype, TrainConfig, Optional[dict]]:
    """The genotype, settings and --init checkpoint of a new run from the options (their defaults
    filled into args)."""
    if args.genotype is None and args.init is None:
        raise UsageError("--genotype is required (unless --resume, or --init gives the design)")
    check_new_run_directory(args.out)
    initial = load_checkpoint(args.init) if args.init else None
    genotype = genotype_from_option(args.genotype) if args.genotype else Genotype.parse(initial["genotype"])
    if initial is not None:
        check_initial(args, initial, genotype)
    options = {name: getattr(args, name) for name in OPTION_FIELDS if getattr(args, name) is not None}
    args.dataset = args.dataset or "camvid"
    config = replace(PRESETS[args.preset or "paper"], **options)
    check_schedule(config, args.step_factor is not None)
    return genotype, config, initial


def check_initial(args, initial: dict, genotype: Genotype) -> None:
    """The --init checkpoint's weights must be of the design and size trained."""
    if Genotype.parse(initial["genotype"]) != genotype:
        raise UsageError(f"--init {args.init} holds the weights of {genotype_name(initial['genotype'])}, not of "
                         f"--genotype {args.genotype}: leave --genotype out to train its design")
    if (initial["channels"], initial["sep_repeats"]) != (FINAL_CHANNELS, FINAL_SEP_REPEATS):
        raise UsageError(f"--init {args.init}: a decoder of {initial['channels']} channels and "
                         f"{initial['sep_repeats']} separable repeats, not a training's {FINAL_CHANNELS} and "
                         f"{FINAL_SEP_REPEATS}")


def check_schedule(config: TrainConfig, step_factor_given: bool) -> None:
    if step_factor_given and not config.lr_steps:
        raise UsageError("--step-factor needs --lr-steps (the poly schedule has no steps)")
    beyond = [epoch for epoch in config.lr_steps if epoch >= config.epochs]
    if beyond or list(config.lr_steps) != sorted(set(config.lr_steps)):
        raise UsageError(f"--lr-steps {' '.join(map(str, config.lr_steps))}: expected increasing epochs below the "
                         f"{config.epochs} trained")


def print_result(best_miou: Optional[float], best_checkpoint: str) -> None:
    """One line for people and one JSON line on stdout for scripts."""
    print(f"best val mIoU {format_miou(best_miou)}: {best_checkpoint}", file=sys.stderr)
    print(json.dumps({"best_miou": best_miou, "best_checkpoint": best_checkpoint}))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.out, args.resume = run_directory(args.out, args.resume)
    if args.out is None:
        raise UsageError("--out OUT is required (or --resume OUT to continue a run)")
    if args.tensorboard:
        check_available()
    resumed = initial = None
    if args.resume:
        refuse_if_in_use(args.out)
        genotype, config, resumed = resumed_run(args)
        if resumed["epoch"] + 1 >= config.epochs:
            with contextlib.suppress(Unwritable), contextlib.closing(lock_directory(args.out)):
                mend_log(args.out, resumed)  # not on read-only storage: the result is still said
            print(f"{args.out} has finished its {counted(config.epochs, 'epoch')}", end="; ", file=sys.stderr)
            print_result(known_miou(resumed["best_miou"]), os.path.join(args.out, BEST))
            return 0
    else:
        genotype, config, initial = new_run(args)
    try:
        result = train(args, config, genotype, resumed, initial)
    except TrainingInterrupted as note:
        print(f"\n{PROG}: {note}", file=sys.stderr)
        return 130
    print_result(**result)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
