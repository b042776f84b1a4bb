"""The torchrun job a search runs in, one process or many: this process's rank among them, and,
after torchrun restarts the job's processes (--max-restarts), the search the job began, which
they continue (and refuse any other)."""
import os
import time
import uuid
from datetime import timedelta
from typing import Callable, List, Optional

import torch.distributed as dist

from ..files import read_json, write_json

JOB = "torchrun.json"  # the torchrun job that began the search in RUN_DIR
# How long a rank may wait on another: rank 0 building the cache, or the relay waiting for the
# next message from any worker (one candidate's time at most). Dead processes are torchrun's job.
TIMEOUT = timedelta(hours=24)

_agent_store: Optional[dist.Store] = None


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def restart_count() -> int:
    """How many times torchrun restarted the processes of this job (0 when not under torchrun), as
    this machine's agent counts them: not a restart for another machine's failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


_attempt: Optional[int] = None


def attempt() -> int:
    """Which start of the job's processes this is, 0 for the first: once agree_on_attempt has run,
    the same on every machine; else restart_count()."""
    return restart_count() if _attempt is None else _attempt


def agree_on_attempt(confirmation: float = 5.0) -> int:
    """Numbers this start of the job's processes in the job's store, for every machine alike
    (torchrun's restart counts differ between machines after a failure on one): rank 0 draws the
    next number; each other rank reads it and waits `confirmation` seconds for rank 0 to confirm
    it, since the number there may be a previous start's, whose rank 0 is dead."""
    global _attempt
    store, me = agent_store(), uuid.uuid4().hex
    if rank() == 0:
        number = store.add("nasfast/attempts", 1) - 1
        store.set("nasfast/attempt", str(number))
        joins = [f"nasfast/attempt{number}/join/{other}" for other in range(1, world_size())]
        _wait(store, joins)
        for key in joins:
            store.set(key.replace("/join/", "/confirmed/"), store.get(key))
    else:
        number = None
        while number is None:
            _wait(store, ["nasfast/attempt"])
            drawn = int(store.get("nasfast/attempt"))
            store.set(f"nasfast/attempt{drawn}/join/{rank()}", me)
            if _confirmed(store, f"nasfast/attempt{drawn}/confirmed/{rank()}", me, confirmation):
                number = drawn
    _attempt = number
    return number


def _confirmed(store: dist.Store, key: str, value: str, seconds: float) -> bool:
    """Whether `key` holds `value` within `seconds`."""
    return _polled(lambda: store.check([key]) and store.get(key).decode() == value, seconds)


def _wait(store: dist.Store, keys: List[str], seconds: float = TIMEOUT.total_seconds()) -> bool:
    """Whether the store holds `keys` within `seconds`."""
    return _polled(lambda: store.check(keys), seconds)


def _polled(ready: Callable[[], bool], seconds: float) -> bool:
    """Whether `ready()` turns true within `seconds`, asked every 50 ms. Polled: in the store's own
    wait, SIGTERM (torchrun's, stopping the processes for a restart) is handled only once it ends,
    so torchrun waited 30 s and killed the process; and the wait logs its timeout."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def agent_store() -> dist.Store:
    """torchrun's store (its agent's): one per job, outliving the job's restarts."""
    global _agent_store
    if _agent_store is None:
        _agent_store = next(dist.rendezvous("env://", timeout=TIMEOUT))[0]
    return _agent_store


def store_connection() -> dist.Store:
    """A connection of its own to torchrun's store, for a thread beside the main one."""
    return next(dist.rendezvous("env://", timeout=TIMEOUT))[0]


def job_identity() -> str:
    """This torchrun job, the same after its restarts and no other job's: a random id, kept in the
    job's store by the first process to ask. (A rendezvous id is the user's --rdzv-id, which later
    jobs may reuse: a job that refused a search once continued it after its restart.)"""
    return agent_store().compare_set("nasfast/job", "", uuid.uuid4().hex).decode()


def record_job(run_dir: str) -> None:
    """Under torchrun, notes in RUN_DIR that this job begins the search there (before its state)."""
    if under_torchrun():
        write_json(os.path.join(run_dir, JOB), {"job": job_identity()})


def begun_by_this_job(run_dir: str) -> bool:
    """Whether this torchrun job began the search in `run_dir`: after a restart a job continues its
    own search, and still refuses one that was there before it."""
    job = read_json(os.path.join(run_dir, JOB))
    return job is not None and job.get("job") == job_identity()
