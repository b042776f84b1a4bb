"""python -m nasfast.search: search for a compact segmentation decoder."""
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..cli import UsageError, counted, message_of, reported_in_one_line, run
from ..data import DataError
from ..data.datasets import OtherLayout
from ..files import (CONFIG, SEARCH_FILES, SEARCH_LOG, SEARCH_STATE, TRAINING_FILES, checkpoints_in, files_in,
                     read_json, read_search_log, refuse_if_in_use, why_unwritable)
from ..tensorboard import check_available
from . import distributed
from .cache import foreign_cache
from .config import PRESETS, SearchConfig, missing_keys
from .distributed import has_pending
from .job import attempt, begun_by_this_job, under_torchrun, world_size
from .loop import NO_BUDGET, DeviceLost, Search
from .options import build_parser, config_from_args, ignored_options, resume_conflicts, with_machine_options
from .records import load_state
from .summary import PROG, mend_data_note, resume_command

# The files of a search and of a training run (both write config.json): a new search must not mix with them.
RUN_FILES = (CONFIG,) + SEARCH_FILES + TRAINING_FILES


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
    if held:
        refuse_if_in_use(run_dir)  # before "continue it with --resume", which would be refused as in use
    if never_began(run_dir, held):
        held = []  # written again by this search
    if SEARCH_STATE in held and attempt() > 0 and begun_by_this_job(run_dir):  # torchrun restarted the processes
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
    ignored = ignored_options(args, config)
    if ignored:
        _refuse(parser, f"{'; '.join(ignored)}: leave {'it' if len(ignored) == 1 else 'them'} out")
    return run_dir, config, False


def run_files_in(run_dir: str) -> List[str]:
    return files_in(run_dir, RUN_FILES)


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
    return with_machine_options(saved, args)


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
    return f"interrupted: {saved_note(run_dir, candidates_saved, data_root)}"


def saved_note(run_dir: str, candidates_saved: int, data_root: Optional[str]) -> str:
    return f"{counted(candidates_saved, 'candidate')} saved; continue with {resume_command(run_dir, data_root)}"


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
        if not search.finished():
            saved = search.next_index if os.path.exists(search.path(SEARCH_STATE)) else None
            print("\n" + interrupted_note(run_dir, saved, args.data_root, search.made_run_dir), file=sys.stderr)
            return 130
        print("\nstopped as the last candidate was saved: the search is done", file=sys.stderr)
    except DataError as error:  # a file first read by a candidate (stage 2 reads every training image)
        if not os.path.exists(search.path(SEARCH_STATE)):
            raise
        if isinstance(error, OtherLayout):
            raise error.for_resumed_run() from None
        raise DataError(mend_data_note(error, config.dataset, args.data_root or search.recorded_root(), run_dir,
                                       args.data_root)) from None
    except (OSError, DeviceLost) as error:  # a full disk, say: the candidates saved still count
        if (isinstance(error, OSError) and not reported_in_one_line(error)) or \
                not os.path.exists(search.path(SEARCH_STATE)):
            raise
        saved = load_state(search.path(SEARCH_STATE))["next_index"]  # the failure may have come before or after it
        raise UsageError(f"{message_of(error)}; {saved_note(run_dir, saved, args.data_root)}") from None
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
    if args.workers_per_gpu != 1 and not under_torchrun():
        parser.error("--workers-per-gpu acts only under torchrun (processes sharing a GPU): leave it out")
    if world_size() > 1:
        return search_with_torchrun(args, lambda: choose_run(args, parser))
    run_dir, config, resume = choose_run(args, parser)
    if resume and has_pending(run_dir):  # a torchrun search, continued in one process
        return search_with_torchrun(args, lambda: (run_dir, config, resume))
    return search_in_this_process(args, run_dir, config, resume)


if __name__ == "__main__":
    sys.exit(run(main, PROG))
