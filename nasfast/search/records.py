"""A search run's log and state on resume: the finished candidates' records, the saved state."""
import json
import os
import pickle
import sys
from typing import Any, Dict, List, Optional

import torch

from ..checkpoint import damaged_member, holds_non_finite, is_amount
from ..files import keep_copy, read_search_log, write_atomic
from ..genotype import Genotype
from ..strategies import Proposal


# The pending proposals of a torchrun search, as earlier versions saved them (torch 2.4 has no
# safe_globals context).
torch.serialization.add_safe_globals([Proposal, Genotype])


def keep_finished_records(path: str, count: int, pending=()) -> List[Dict[str, Any]]:
    """Keeps only the records of candidates that the saved state counts as finished: index under
    `count` and not in `pending` (handed out, not finished). The others were logged by a crash
    between logging a candidate and saving the state; those candidates are evaluated again."""
    pending, kept = set(pending), {}
    for r in read_search_log(path):
        if r["index"] < count and r["index"] not in pending:
            kept.setdefault(r["index"], r)  # the first of a line copied twice
    records = list(kept.values())
    missing = set(range(count)) - pending - {r["index"] for r in records}
    if missing:
        _warn_of_lost_records(path, missing, keep_copy(path) if os.path.exists(path) else None)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def _warn_of_lost_records(path: str, missing, copy: Optional[str]) -> None:
    """The state counts these candidates as finished, but the log lacks them: it was cut short,
    edited or removed. They cannot be evaluated again (their designs were in the lost lines)."""
    shown = ", ".join(map(str, sorted(missing)[:10])) + (", ..." if len(missing) > 10 else "")
    how = f"the file was cut short or edited; they are lost, and the search goes on without them (the log as it " \
          f"was: {copy})" if copy else "the file was removed; they are lost, and the search goes on without them"
    print(f"warning: {path} lacks the records of {len(missing)} finished candidate(s) (index {shown}): {how}",
          file=sys.stderr)


def load_state(path: str) -> Dict[str, Any]:
    member = damaged_member(path)  # torch.load does not check the archive's CRC-32s
    if member:
        raise ValueError(damaged_state(path, f"its bytes differ from what was saved (checksum of {member})"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # a state from elsewhere runs no code
    except FileNotFoundError:
        raise
    except Exception as error:  # torch.load fails in many ways on a damaged file
        if isinstance(error, pickle.UnpicklingError) and "GLOBAL" in str(error):  # weights_only's refusal
            raise ValueError(f"{path} holds Python objects that a search's state never holds, which could run code "
                             f"as they load: it was not loaded (a state made elsewhere, or edited?)") from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(damaged_state(path, f"it cannot be read ({reason})")) from error
    problem = _state_problem(state)
    if problem:
        raise ValueError(damaged_state(path, problem))
    return state


def _state_problem(state: Any) -> Optional[str]:
    """What makes `state` no search's state (bytes overwritten, or a hand edit), if anything."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a search's state"
    if holds_non_finite(state.get("strategy")):
        return "it holds non-finite controller weights"
    for key, whole, may_be_none in (("next_index", True, False), ("elapsed", False, False), ("budget", True, True),
                                    ("time_budget", False, True)):
        value = state.get(key)
        if key in state and not (value is None and may_be_none) and not is_amount(value, 0, whole):
            return f"its {key} is {value!r}"
    return None


def damaged_state(path: str, how: str) -> str:
    return (f"{path} is damaged: {how}; the search cannot continue from it. Its log of candidates is kept "
            f"(python -m nasfast.report, or train --genotype with the directory); search on in a new directory "
            f"(--out)")
