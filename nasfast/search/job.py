"""The torchrun job a search runs in, one process or many: this process's rank among them, and,
after torchrun restarts the job's processes (--max-restarts), the search the job began, which
they continue (and refuse any other)."""
import os
import uuid
from datetime import timedelta
from typing import Optional

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
    """How many times torchrun restarted the processes of this job (0 when not under torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def agent_store() -> dist.Store:
    """torchrun's store (its agent's): one per job, outliving the job's restarts."""
    global _agent_store
    if _agent_store is None:
        _agent_store = next(dist.rendezvous("env://", timeout=TIMEOUT))[0]
    return _agent_store


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
