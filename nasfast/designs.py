"""A design named on a command line (--genotype): a zoo name, JSON, a file holding either, a
training checkpoint, an export, or a search's run directory or log (its best design)."""
import os
import zipfile
from typing import Optional

from .checkpoint import export_info, is_torchscript, load_checkpoint, starts_as_zip
from .files import SEARCH_LOG, SEARCH_STATE, checkpoints_in, read_search_log, search_run_paths
from .genotype import ZOO, Genotype
from .search.records import load_state


def _is_archive(text: str) -> bool:
    """Whether `text` names a zip archive (torch.save's, torch.jit.save's), whole or cut short."""
    return zipfile.is_zipfile(text) or os.path.isfile(text) and starts_as_zip(text)


def genotype_from_option(text: str) -> Genotype:
    """What a --genotype option takes: a zoo name, JSON text, a file holding either, a checkpoint of
    python -m nasfast.train or an export of python -m nasfast.export (their design), or a search (its
    run directory or candidates.jsonl: its best design); the errors about a file name it."""
    if names_the_zoo(text):
        return ZOO[text]
    if os.path.isdir(text) or text.endswith(".jsonl"):
        return best_of_search(text)
    if _is_archive(text):
        if is_torchscript(text):  # its errors name it
            return Genotype.parse(export_info(text)["genotype"])
        return Genotype.parse(load_checkpoint(text, ("genotype",))["genotype"])  # checked as it loads
    if not os.path.isfile(text):
        a_path = os.sep in text or os.path.splitext(text)[1] != ""  # not a zoo name (or JSON: below)
        if a_path and not text.lstrip().startswith("["):
            raise FileNotFoundError(f"genotype file {text}: no such file")
        return Genotype.parse(text)
    try:
        with open(text, encoding="utf-8-sig") as f:  # a byte order mark, as some editors write, is skipped
            return Genotype.parse(f.read())
    except UnicodeDecodeError:
        raise ValueError(f"genotype file {text} is not UTF-8 text") from None
    except ValueError as error:
        raise ValueError(f"genotype file {text}: {error}") from None


def names_the_zoo(text: str) -> bool:
    """Whether `text` is a zoo name meant as one. A file or a search of that name here makes it
    ambiguous: refused, with how to name either; a directory without a search (a training run
    named after its design, say) is no design, so the zoo's is meant."""
    if text not in ZOO:
        return False
    if os.path.isfile(text) or os.path.isfile(os.path.join(text, SEARCH_LOG)):
        what = "file" if os.path.isfile(text) else "search"
        raise ValueError(f"--genotype {text}: the zoo design, or the {what} {os.path.join(os.curdir, text)}? Give "
                         f"{os.path.join(os.curdir, text)} for the {what}'s, or run from another directory for the "
                         f"zoo's")
    return True


def recorded_classes(text: str) -> Optional[int]:
    """The number of classes recorded with the design a --genotype option names: a search's (`text`
    names its RUN_DIR or log), a training checkpoint's or an export's; else None."""
    if names_the_zoo(text):
        return None
    if _is_archive(text):
        return (export_info(text) if is_torchscript(text) else load_checkpoint(text, ("num_classes",)))["num_classes"]
    if not (os.path.isdir(text) or os.path.basename(text) == SEARCH_LOG):
        return None  # a log under another name is a copy: the state beside it may be another search's
    state = os.path.join(search_run_paths(text)[0], SEARCH_STATE)
    if not os.path.isfile(state):
        return None
    classes = (load_state(state).get("data") or {}).get("classes")
    return len(classes) if classes else None


def best_of_search(path: str) -> Genotype:
    """The design of the highest reward in a search's log (`path`: the run directory or the log)."""
    run_dir, log = search_run_paths(path)
    if not os.path.isfile(log):
        trained = checkpoints_in(run_dir)
        raise ValueError(f"{log}: no such search log" + (f" ({run_dir} holds a training run: give its checkpoint, "
                                                          f"{trained[0]}, for its design)" if trained else ""))
    records = read_search_log(log)
    finished = [r for r in records if r.get("status") == "ok" and r.get("reward") is not None]
    if not finished:
        raise ValueError(f"{log}: no candidate has finished yet" if not records else
                         f"{log}: none of its {len(records)} candidates finished (python -m nasfast.report says why)")
    return Genotype.parse(max(finished, key=lambda r: r["reward"])["genotype"])
