"""python -m nasfast.search's command line: its options, and the search's settings
(SearchConfig) they give."""
import argparse
import copy
import dataclasses
import re
import textwrap
from typing import Any, Dict, List, Optional

from ..cli import UsageError, option_text, path_text, positive_int, run_directory
from ..data import DATASETS
from ..settings import add_option
from .config import FIXED, MACHINE_OPTIONS, MOVABLE, PRESETS, SearchConfig, StageConfig, preset
from .job import rank
from .summary import PROG

USAGE = "%(prog)s (--out RUN_DIR | --resume RUN_DIR) [--budget N] [--time-budget T] [options]"

EPILOG = """examples:
  python -m nasfast.search --dataset camvid --preset tiny --budget 40 --out runs/tiny
  python -m nasfast.search --resume runs/tiny                  # continue after Ctrl-C, up to 40
  python -m nasfast.search --resume runs/tiny --budget 80      # continue, up to 80 candidates
  python -m nasfast.search --dataset voc --time-budget 4d --out runs/voc --device cuda

A new search needs --budget, --time-budget or both (it stops at the first reached).
Data are found through --data-root, else (with --resume) where the search read them, else
$NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>.
RUN_DIR receives config.json (the options), candidates.jsonl (one line per candidate) and
state.pt (to resume). Ctrl-C stops after saving; --resume continues with nothing lost or repeated,
with the options saved in config.json and the budgets saved in state.pt: the budgets, --device,
--data-root, --workers, --image-cache-gb, --memory-limit-gb, the output options and where the
--teacher file is now (the same file: checked) may change, the others not.

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
        self.exit(2, shown if rank() == 0 else None)

    def parse_args(self, args=None, namespace=None):
        """args.resume: the run to continue (--resume RUN_DIR, or --out RUN_DIR --resume as train
        takes it); args.out: a new search's run, else None."""
        parsed = super().parse_args(args, namespace)
        try:
            run_dir, resumed = run_directory(parsed.out, parsed.resume)
        except UsageError as error:
            self.error(str(error))
        if run_dir is None:
            self.error("--resume needs the run: --resume RUN_DIR (or --out RUN_DIR --resume)" if resumed else
                       "one of the arguments --out --resume is required")
        parsed.out, parsed.resume = (None, run_dir) if resumed else (run_dir, None)
        return parsed


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
            add_option(group, f, flag(f.name), getattr(defaults, f.name), dest=f.name)
    for stage in ("stage1", "stage2"):
        for f in dataclasses.fields(StageConfig):
            if f"{stage}.{f.name}" not in FIXED:
                key = f"{stage}.{f.name}"
                add_option(group, f, flag(key), getattr(getattr(defaults, stage), f.name), dest=key)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, usage=USAGE, description="search for a compact segmentation decoder",
                    epilog=f"{preset_differences()}\n\n{EPILOG}", formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("run")
    group.add_argument("--out", metavar="RUN_DIR", type=path_text,
                       help="directory of a new search (absent, or without another run's "
                            "files)")
    group.add_argument("--resume", metavar="RUN_DIR", type=path_text, nargs="?", const=True,
                       help="continue the search saved in RUN_DIR (or in --out's), with its options")
    group.add_argument("--dataset", choices=sorted(DATASETS), help="dataset [camvid]")
    group.add_argument("--data-root", type=path_text,
                       help="dataset directory (default: with --resume, where the search read "
                            "them; else $NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>)")
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
                       help="under torchrun only: processes sharing one GPU; local rank r uses "
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
    may_change = MACHINE_OPTIONS + tuple(key for key in MOVABLE if _get(saved, key) is not None)
    return [f"{flag(key)} {option_text(value)} differs from the run's {option_text(_get(saved, key))}"
            for key, value in given.items() if key not in may_change and value != _get(saved, key)]


def with_machine_options(saved: SearchConfig, args) -> SearchConfig:
    """A resumed search's settings with the options given that may change on resume (how the
    machine runs it: MACHINE_OPTIONS; where its files are now: MOVABLE)."""
    for key, value in given_options(args).items():
        if key in MACHINE_OPTIONS + MOVABLE:
            _set(saved, key, value)
    return saved


# Options that act only with another setting: given without it, they would be ignored silently.
ONLY_WITH = [
    (("ppo_epochs", "ppo_clip", "controller_lr", "baseline_decay", "entropy_weight"), "--strategy ppo",
     lambda config: config.strategy == "ppo"),
    (("aux_weight",), "auxiliary heads (--aux cell or classifier)", lambda config: config.aux is not None),
    (("stage1.distillation",), "--teacher", lambda config: config.teacher is not None),
]


def ignored_options(args, config: SearchConfig) -> List[str]:
    """The options given that `config` would ignore, each with what it needs."""
    given = given_options(args)
    return [f"{flag(key)} acts only with {needs}" for keys, needs, acts in ONLY_WITH if not acts(config)
            for key in keys if key in given]
