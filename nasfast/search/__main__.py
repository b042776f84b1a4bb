"""python -m nasfast.search: search for a compact segmentation decoder."""
import argparse
import copy
import dataclasses
import os
import re
import sys
import textwrap
from typing import Any, Dict, List, Optional, Tuple

from ..cli import counted, data_check_command, message_of, option_text, positive_int, run
from ..data import DATASETS, DataError
from ..data.datasets import OtherLayout
from ..files import (CONFIG, SEARCH_FILES, SEARCH_LOG, SEARCH_STATE, TRAINING_FILES, checkpoints_in, read_json,
                     read_search_log, why_unwritable)
from ..tensorboard import check_available
from . import distributed
from .cache import foreign_cache
from .config import FIXED, MACHINE_OPTIONS, PRESETS, SearchConfig, StageConfig, missing_keys, preset
from .distributed import begun_by_this_job, has_pending, restart_count, world_size
from .loop import NO_BUDGET, Search
from .summary import PROG, resume_command

USAGE = "%(prog)s (--out RUN_DIR | --resume RUN_DIR) [--budget N] [--time-budget T] [options]"
# Files of a search (the first three) or of a training run: a new search must not mix with them.
RUN_FILES = (CONFIG,) + SEARCH_FILES + TRAINING_FILES

EPILOG = """examples:
  python -m nasfast.search --dataset camvid --preset tiny --budget 40 --out runs/tiny
  python -m nasfast.search --resume runs/tiny                  # continue after Ctrl-C, up to 40
  python -m nasfast.search --resume runs/tiny --budget 80      # continue, up to 80 candidates
  python -m nasfast.search --dataset voc --time-budget 4d --out runs/voc --device cuda

Data are found through --data-root, else (with --resume) where the search read them, else
$NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>.
RUN_DIR receives config.json (the options), candidates.jsonl (one line per candidate) and
state.pt (to resume). Ctrl-C stops after saving; --resume continues with nothing lost or repeated,
with the options saved in config.json and the budgets saved in state.pt: the budgets, --device,
--data-root, --workers, --image-cache-gb, --memory-limit-gb and the output options may change, the
others not.

Several processes, GPUs or machines (rank 0 owns the controller and the log, every rank evaluates):
  torchrun --nproc-per-node 4 --max-restarts 3 -m nasfast.search --dataset camvid --budget 1000 --out runs/c4
  torchrun --nproc-per-node 8 -m nasfast.search --workers-per-gpu 4 ...    # 8 processes on 2 GPUs"""


def preset_differences() -> str:
    """The options in which each preset differs from `paper`, as they would be written."""
    paper, rows = SearchConfig().to_dict(), []
    for name in PRESETS:
        if name == "paper":
            continue
        values = preset(name).to_dict()
        changed = [(key, values[key]) for key in paper
                   if key != "preset" and not isinstance(paper[key], dict) and values[key] != paper[key]]
        changed += [(f"{stage}.{key}", values[stage][key]) for stage in ("stage1", "stage2")
                    for key in paper[stage] if values[stage][key] != paper[stage][key]]
        rows.append(textwrap.fill(f"{name}: " + " ".join(f"{flag(key)} {value}" for key, value in changed), width=96,
                                  initial_indent="  ", subsequent_indent="        ", break_on_hyphens=False))
    heading = "presets, as the options that differ from paper's (whose values each option above shows):"
    return heading + "\n" + "\n".join(rows)


class Parser(argparse.ArgumentParser):
    """An error shows the short usage line and the error, not the usage of every option; under
    torchrun only rank 0 shows it (every rank parses the same command line)."""

    def error(self, message):
        shown = f"{self.format_usage()}{self.prog}: error: {message}\n(see {self.prog} --help)\n"
        self.exit(2, shown if distributed.rank() == 0 else None)


DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
UNITS_IN_ORDER = re.compile("".join(f"(?:{DURATION_NUMBER}{unit})?" for unit in DURATION_UNITS))  # 2d12h, 1h30m


def duration(text: str) -> float:
    """Seconds from '90' (a bare number is seconds), '90s', '30m', '4h', '2d', or several units,
    largest first ('1h30m'); more than 0."""
    compact = text.replace(" ", "")
    try:
        if compact[-1:] in DURATION_UNITS:
            seconds = float(compact[:-1]) * DURATION_UNITS[compact[-1]]
        else:
            seconds = float(compact)
    except ValueError:
        match = UNITS_IN_ORDER.fullmatch(compact)
        if not match or not any(match.groups()):
            raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600 seconds, 30m, 4h, 1h30m, 2d)") \
                from None
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in zip(match.groups(), DURATION_UNITS) if n)
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 and finite, got {text}")
    return seconds


# -- options ---------------------------------------------------------------------------------
def _config_keys() -> List[str]:
    """The options stored in config.json, as argparse dests: 'seed', 'stage1.epochs' ..."""
    keys = [f.name for f in dataclasses.fields(SearchConfig) if f.type is not StageConfig]
    return keys + [f"{s}.{f.name}" for s in ("stage1", "stage2") for f in dataclasses.fields(StageConfig)]


def flag(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protocol (defaults: the chosen preset's, see the presets below; paper's shown; "
                                      "'ours': a value the paper leaves open)")
    defaults = SearchConfig()
    for f in dataclasses.fields(SearchConfig):
        if f.type is not StageConfig and f.name not in ("dataset", "preset"):  # options of the run group
            _add_field(group, f, getattr(defaults, f.name), f.name)
    for stage in ("stage1", "stage2"):
        for f in dataclasses.fields(StageConfig):
            if f"{stage}.{f.name}" not in FIXED:
                _add_field(group, f, getattr(getattr(defaults, stage), f.name), f"{stage}.{f.name}")


def _add_field(group, f, default, key: str) -> None:
    # default None: an option given can be told from one left out (see given_options)
    kwargs = dict(dest=key, default=None, type=f.metadata["type"], choices=f.metadata["choices"],
                  help=f"{f.metadata['help']} [{default}]")
    if isinstance(default, tuple):
        kwargs.update(nargs=len(default), metavar="X")
    group.add_argument(flag(key), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, usage=USAGE, description=__doc__.split(":", 1)[1].strip(),
                    epilog=f"{preset_differences()}\n\n{EPILOG}", formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("run")
    where = group.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="RUN_DIR", help="directory of a new search (absent, or without another run's "
                                                        "files)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue the search saved in RUN_DIR, with its options")
    group.add_argument("--dataset", choices=sorted(DATASETS), help="dataset [camvid]")
    group.add_argument("--data-root", help="dataset directory (default: with --resume, where the search read "
                                           "them; else $NASFAST_DATA/<dataset>)")
    group.add_argument("--preset", choices=list(PRESETS),
                       help="protocol preset: paper (the paper's values), fast (shorter, for a GPU), "
                            "tiny (seconds per candidate on a CPU) [paper]")
    group.add_argument("--budget", type=positive_int, metavar="N",
                       help="stop after this many candidates in total (the paper: 1000; --resume keeps the run's)")
    group.add_argument("--time-budget", type=duration, metavar="T",
                       help="stop after this much search time in total (candidates' time, checked between "
                            "them; start-up and caching not counted): seconds (a bare number), or 30m, 4h, 1h30m, 2d")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... [auto: cuda when available]")
    group.add_argument("--workers-per-gpu", type=positive_int, default=1, metavar="W",
                       help="under torchrun: processes sharing one GPU; local rank r uses "
                            "cuda:(r // W) %% device count (ignored on a CPU) [1]")
    group.add_argument("--tensorboard", action="store_true",
                       help="also log each candidate's rewards for TensorBoard, in RUN_DIR/tensorboard (needs the "
                            "tensorboard package; then: tensorboard --logdir RUN_DIR)")
    group.add_argument("--top", type=positive_int, default=10, help="rows of the table of best designs [10]")
    group.add_argument("--no-progress", action="store_true",
                       help="no progress bars (a line per finished candidate instead, as in a log file)")
    _add_config_options(parser)
    return parser


def given_options(args) -> Dict[str, Any]:
    """The options of config.json given on the command line, as config.json holds them."""
    given = {}
    for key in _config_keys():
        value = vars(args).get(key)
        if isinstance(value, list):
            value = tuple(value)
        if value is not None:
            given[key] = None if key == "aux" and value == "none" else value
    return given


def _get(config: SearchConfig, key: str) -> Any:
    for name in key.split("."):
        config = getattr(config, name)
    return config


def _set(config: SearchConfig, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    for parent in parents:
        config = getattr(config, parent)
    setattr(config, name, value)


def config_from_args(args, base: Optional[SearchConfig] = None) -> SearchConfig:
    """`base` (else the chosen preset) with the options given on the command line."""
    config = copy.deepcopy(base) if base is not None else preset(args.preset or "paper")
    for key, value in given_options(args).items():
        _set(config, key, value)
    return config


def resume_conflicts(args, saved: SearchConfig) -> List[str]:
    """What the options given with --resume would change in the saved search (refused). A search
    saved before config.json recorded its preset is taken to agree with any --preset."""
    given = given_options(args)
    if saved.preset is None:
        given.pop("preset", None)
    return [f"{flag(key)} {option_text(value)} differs from the run's {option_text(_get(saved, key))}"
            for key, value in given.items() if key not in MACHINE_OPTIONS and value != _get(saved, key)]


# -- the run directory -----------------------------------------------------------------------
def _refuse(parser, message: str) -> None:
    """A one-line error that ends every process (SystemExit: under torchrun rank 0 passes its code on)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def choose_run(args, parser) -> Tuple[str, SearchConfig, bool]:
    """RUN_DIR, its options, and whether to continue the search saved there."""
    if args.tensorboard:  # only this process (rank 0 under torchrun) writes the TensorBoard log
        check_available()
    if args.resume:
        return args.resume, _resumed_config(args, parser), True
    run_dir = args.out
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        _refuse(parser, f"--out {run_dir} is a file; give a directory (new or empty)")
    unwritable = why_unwritable(run_dir)
    if unwritable:
        _refuse(parser, f"--out {run_dir} cannot be written: {unwritable}")
    held = run_files_in(run_dir)
    if never_began(run_dir, held):
        held = []  # written again by this search
    if SEARCH_STATE in held and restart_count() > 0 and begun_by_this_job(run_dir):  # torchrun restarted the processes
        return run_dir, _saved_config(run_dir, parser), True
    if SEARCH_STATE in held:
        _refuse(parser, f"--out {run_dir} already holds a search ({', '.join(held)}): continue it with "
                        f"--resume {run_dir}, or choose another directory")
    if held:
        _refuse(parser, f"--out {run_dir} already holds {', '.join(held)} (another run's files): "
                        f"choose another directory, or remove them")
    foreign = foreign_cache(run_dir)
    if foreign:
        _refuse(parser, f"--out {run_dir}: its cache/ {foreign}, not a search's stage-1 cache, which the search "
                        f"keeps there: choose another directory")
    config = config_from_args(args)
    _check_new_config(config, parser)
    return run_dir, config, False


def run_files_in(run_dir: str) -> List[str]:
    return [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]


def never_began(run_dir: str, held: List[str]) -> bool:
    """Whether the run files `held` in RUN_DIR are those of a search stopped while it wrote them
    (Search.start: its options and an empty log, then the state): no candidate began."""
    if not held or not set(held) <= {CONFIG, SEARCH_LOG}:
        return False
    log, config = os.path.join(run_dir, SEARCH_LOG), os.path.join(run_dir, CONFIG)
    if os.path.exists(log) and os.path.getsize(log) > 0:
        return False
    if not os.path.exists(config):
        return True
    try:  # every option, as Search.start writes them
        saved = read_json(config)
        return isinstance(saved, dict) and not missing_keys(saved) and bool(SearchConfig.from_dict(saved))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # another tool's file, damaged, a directory
        return False


def _check_new_config(config: SearchConfig, parser) -> None:
    low, high = config.scale_range
    if low > high:
        _refuse(parser, f"--scale-range {low} {high}: the first must not be larger than the second")
    if config.teacher is not None and not os.path.isfile(config.teacher):
        _refuse(parser, f"--teacher {config.teacher}: no such file")


def _resumed_config(args, parser) -> SearchConfig:
    run_dir = args.resume
    if not os.path.isdir(run_dir):
        _refuse(parser, f"--resume {run_dir}: no such directory")
    if not os.path.isfile(os.path.join(run_dir, SEARCH_STATE)):
        hint = ""
        if checkpoints_in(run_dir):
            hint = f"; it holds a training run: python -m nasfast.train --resume {run_dir}"
        elif never_began(run_dir, run_files_in(run_dir)):
            hint = f"; a search stopped as it began left its files: start it again with --out {run_dir}"
        _refuse(parser, f"--resume {run_dir}: no saved search there ({SEARCH_STATE} missing){hint}")
    saved = _saved_config(run_dir, parser)
    conflicts = resume_conflicts(args, saved)
    if conflicts:
        _refuse(parser, f"--resume: {'; '.join(conflicts)} (a search keeps its options: leave them out, "
                        f"or start a new search with --out)")
    for key, value in given_options(args).items():
        if key in MACHINE_OPTIONS:
            _set(saved, key, value)
    return saved


def _saved_config(run_dir: str, parser) -> SearchConfig:
    path = os.path.join(run_dir, CONFIG)
    way_on = (f"; without the search's options it cannot go on: restore {CONFIG} from a copy, or search anew in "
              f"another --out (python -m nasfast.report {run_dir} still shows its candidates)")
    if not os.path.isfile(path):
        _refuse(parser, f"{path} is missing{way_on}")
    try:
        saved = read_json(path)
    except ValueError as error:  # read_json names the file
        _refuse(parser, f"{error}{way_on}")
    try:
        config = SearchConfig.from_dict(saved)
    except ValueError as error:  # a value edited by hand
        _refuse(parser, f"{path} is damaged: {error}")
    except (TypeError, KeyError, AttributeError) as error:
        _refuse(parser, f"{path} is damaged: not the options of a search ({type(error).__name__}: {error})")
    missing = missing_keys(saved)
    if missing:  # an older version's, or edited by hand
        values = f"preset {config.preset}'s" if config.preset in PRESETS else "the paper's"
        print(f"warning: {path} lacks {', '.join(missing)}: {values} values are used", file=sys.stderr)
    return config


# -- the search ------------------------------------------------------------------------------
def exit_status(records: List[Dict[str, Any]]) -> int:
    """1 when every candidate failed (the options are likely wrong; the table says why), else 0."""
    return 1 if records and all(r["status"] != "ok" for r in records) else 0


def interrupted_note(run_dir: str, candidates_saved: Optional[int], data_root: Optional[str] = None,
                     made_run_dir: bool = False) -> str:
    """What an interrupted search kept, and what to run next; `made_run_dir`: the search made RUN_DIR."""
    if candidates_saved is None:
        if not os.path.isdir(run_dir):  # gone with what was made for it
            return "interrupted before the search began: nothing was saved; run the same command again"
        removable = f", or remove {run_dir}" if made_run_dir else ""  # not a directory of the user's own files
        return (f"interrupted before the search began: nothing was saved; run the same command again "
                f"(--out {run_dir} can be reused){removable}")
    return (f"interrupted: {counted(candidates_saved, 'candidate')} saved; continue with "
            f"{resume_command(run_dir, data_root)}")


def search_in_this_process(args, run_dir: str, config: SearchConfig, resume: bool) -> int:
    from .context import build_context  # heavy imports after the arguments are checked

    search = Search(run_dir, config, lambda cfg, d, recorded: build_context(
        cfg, d, recorded, args.data_root, args.device, progress=not args.no_progress), args.budget, args.time_budget)
    if not search.open(resume, args.tensorboard, args.top):
        return exit_status(search.records)
    if resume:
        print(search.resuming_note(), file=sys.stderr)
    try:
        search.prepare(resume)
        search.run(progress=not args.no_progress)
    except KeyboardInterrupt:
        saved = search.next_index if os.path.exists(search.path(SEARCH_STATE)) else None
        print("\n" + interrupted_note(run_dir, saved, args.data_root, search.made_run_dir), file=sys.stderr)
        return 130
    except DataError as error:  # a file first read by a candidate (stage 2 reads every training image)
        if not os.path.exists(search.path(SEARCH_STATE)):
            raise
        if isinstance(error, OtherLayout):
            raise error.for_resumed_run() from None
        check = data_check_command(config.dataset, args.data_root or search.recorded_root())
        raise DataError(f"{message_of(error)}; once it is mended ({check} lists every file that cannot be used), "
                        f"continue with {resume_command(run_dir, args.data_root)}") from None
    search.print_closing(args.top, search.data_root(args.data_root, resume))
    return exit_status(search.records)


def search_with_torchrun(args, choose) -> int:
    """The search over several processes (or a torchrun search continued in one); on rank 0 the
    exit status also says whether every candidate failed."""
    chosen: List[str] = []

    def choose_and_remember():
        run_dir, config, resume = choose()
        chosen.append(run_dir)
        return run_dir, config, resume

    status = distributed.run(args, choose_and_remember)
    if status == 0 and chosen:
        return exit_status(read_search_log(os.path.join(chosen[0], SEARCH_LOG)))
    return status


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.budget is None and args.time_budget is None and not args.resume:  # a resume keeps its budgets
        parser.error(NO_BUDGET)
    if world_size() > 1:
        return search_with_torchrun(args, lambda: choose_run(args, parser))
    run_dir, config, resume = choose_run(args, parser)
    if resume and has_pending(run_dir):  # a torchrun search, continued in one process
        return search_with_torchrun(args, lambda: (run_dir, config, resume))
    return search_in_this_process(args, run_dir, config, resume)


if __name__ == "__main__":
    sys.exit(run(main, PROG))
