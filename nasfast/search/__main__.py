"""python -m nasfast.search: search for a compact segmentation decoder (see --help)."""
import argparse
import dataclasses
import os
import sys
from typing import List, Optional, Tuple

from . import distributed
from .config import PRESETS, SearchConfig, StageConfig, preset
from .distributed import begun_by_this_job, has_pending, restart_count, world_size
from .loop import CONFIG, LOG, STATE, Search
from .records import read_json
from .summary import top_table

EPILOG = """examples:
  python -m nasfast.search --dataset camvid --preset tiny --budget 40 --out runs/tiny
  python -m nasfast.search --resume runs/tiny --budget 80      # continue, up to 80 candidates
  python -m nasfast.search --dataset voc --time-budget 4d --out runs/voc --device cuda

Data are found through --data-root, else $NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>.
RUN_DIR receives config.json (the options), candidates.jsonl (one line per candidate) and
state.pt (to resume). Ctrl-C stops after saving; --resume continues with nothing lost or repeated.

Several processes, GPUs or machines (rank 0 owns the controller and the log, every rank evaluates):
  torchrun --nproc-per-node 4 --max-restarts 3 -m nasfast.search --dataset camvid --budget 1000 --out runs/c4
  torchrun --nproc-per-node 8 -m nasfast.search --workers-per-gpu 4 ...    # 8 processes on 2 GPUs"""


def duration(text: str) -> float:
    """Seconds from '90', '90s', '30m', '4h' or '2d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600, 30m, 4h, 2d)")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protocol (defaults: the chosen preset; 'paper' shown)")
    defaults = SearchConfig()
    for f in dataclasses.fields(SearchConfig):
        if f.type is StageConfig or f.name in ("dataset",):
            continue
        _add_field(group, f, getattr(defaults, f.name), f"--{f.name.replace('_', '-')}", f.name)
    for stage in ("stage1", "stage2"):
        for f in dataclasses.fields(StageConfig):
            value = getattr(getattr(defaults, stage), f.name)
            _add_field(group, f, value, f"--{stage}-{f.name.replace('_', '-')}", f"{stage}.{f.name}")


def _add_field(group, f, default, flag: str, dest: str) -> None:
    kwargs = dict(dest=dest, default=None, help=f"{f.metadata['help']} [{default}]")
    if isinstance(default, tuple):
        kwargs.update(nargs=len(default), type=type(default[0]), metavar="X")
    elif f.name == "aux":
        kwargs.update(choices=["cell", "classifier", "none"])
    elif f.name == "strategy":
        kwargs.update(choices=["ppo", "random"])
    elif default is not None:
        kwargs.update(type=type(default))
    group.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nasfast.search", description=__doc__.split(":", 1)[1].strip(),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="RUN_DIR", help="directory of a new search (must not hold one)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue the search saved in RUN_DIR")
    run.add_argument("--dataset", choices=["camvid", "voc", "folder"], help="dataset [camvid]")
    run.add_argument("--data-root", help="dataset directory (default: $NASFAST_DATA/<dataset>)")
    run.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                     help="protocol preset: paper (the paper's values), fast (shorter, for a GPU), "
                          "tiny (seconds per candidate on a CPU) [paper]")
    run.add_argument("--budget", type=int, help="stop after this many candidates in total")
    run.add_argument("--time-budget", type=duration, help="stop after this much search time in total (30m, 4h, 2d)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... [auto: cuda when available]")
    run.add_argument("--workers-per-gpu", type=int, default=1, metavar="W",
                     help="under torchrun: processes sharing one GPU; local rank r uses "
                          "cuda:(r // W) %% device count (ignored on a CPU) [1]")
    run.add_argument("--top", type=int, default=10, help="rows of the table of best designs [10]")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(parser)
    return parser


def config_from_args(args, parser) -> SearchConfig:
    config = preset(args.preset)
    if args.dataset:
        config.dataset = args.dataset
    for key, value in vars(args).items():
        if value is None or key not in _config_keys():
            continue
        target = config
        *parents, name = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        if name == "aux" and value == "none":
            value = None
        setattr(target, name, tuple(value) if isinstance(value, list) else value)
    return config


def _config_keys() -> List[str]:
    keys = [f.name for f in dataclasses.fields(SearchConfig) if f.type is not StageConfig]
    return keys + [f"{s}.{f.name}" for s in ("stage1", "stage2") for f in dataclasses.fields(StageConfig)]


def choose_run(args, parser) -> Tuple[str, SearchConfig, bool]:
    """RUN_DIR, its options, and whether to continue the search saved there."""
    if args.resume:
        run_dir = args.resume
        if not os.path.exists(os.path.join(run_dir, STATE)):
            parser.error(f"--resume {run_dir}: no saved search there ({STATE} missing)")
        return run_dir, _saved_config(run_dir), True
    run_dir = args.out
    if os.path.exists(os.path.join(run_dir, STATE)):
        if restart_count() > 0 and begun_by_this_job(run_dir):  # torchrun restarted the processes
            return run_dir, _saved_config(run_dir), True
        parser.error(f"--out {run_dir} already holds a search: use --resume {run_dir}, or another directory")
    return run_dir, config_from_args(args, parser), False


def _saved_config(run_dir: str) -> SearchConfig:
    return SearchConfig.from_dict(read_json(os.path.join(run_dir, CONFIG)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.budget is None and args.time_budget is None:
        parser.error("give --budget N (candidates) and/or --time-budget (e.g. 4h)")
    if args.workers_per_gpu < 1:
        parser.error("--workers-per-gpu must be at least 1")
    if world_size() > 1:
        return distributed.run(args, lambda: choose_run(args, parser))
    run_dir, config, resume = choose_run(args, parser)
    if resume and has_pending(run_dir):  # a torchrun search, continued in one process
        return distributed.run(args, lambda: (run_dir, config, resume))
    from .context import build_context  # heavy imports after the arguments are checked

    search = Search(run_dir, config, lambda cfg, d: build_context(cfg, d, args.data_root, args.device))
    if resume:
        search.resume()
        print(f"resuming {run_dir} at candidate {search.next_index}", file=sys.stderr)
    search.context()  # fail early on missing data, before any file is written
    if not resume:
        search.start()
    try:
        search.run(budget=args.budget, time_budget=args.time_budget, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {search.next_index} candidates saved; continue with "
              f"python -m nasfast.search --resume {run_dir} --budget ...", file=sys.stderr)
        return 130
    print(top_table(search.records, args.top))
    print(f"log: {os.path.join(run_dir, LOG)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
