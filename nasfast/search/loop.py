"""The outer loop (SPEC section 6): sample, evaluate, update; logged and resumable."""
import contextlib
import gc
import math
import os
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from ..checkpoint import holds_non_finite
from ..cli import counted
from ..data import DataError
from ..files import (CONFIG, LOCK, SEARCH_LOG, SEARCH_STATE, StopSignals, Unwritable, append_record, lock_directory,
                     save_torch, write_json)
from ..genotype import Genotype
from ..progress import progress_bar
from ..strategies import Proposal, make_strategy
from ..tensorboard import TensorBoardLog
from .candidate import evaluate_candidate
from .context import SearchContext
from .config import SearchConfig
from .gate import Gate
from .job import attempt, rank, record_job
from .records import damaged_state, keep_finished_records, load_state
from .summary import closing_summary, format_reward, progress_line, top_table

NO_BUDGET = "give --budget N (candidates) and/or --time-budget T (e.g. 4h)"


class DeviceLost(RuntimeError):
    """A candidate's CUDA error after which this process cannot use its GPU (an illegal memory
    access, a device-side assert): every later candidate would fail on it too. Carries the
    candidate's record, to be logged (as failed) before the process stops."""

    def __init__(self, record: Dict[str, Any]):
        super().__init__(f"candidate {record['index']} failed with an error after which this process cannot use its "
                         f"GPU ({record['error']}); it is logged as failed")
        self.record = record


def loses_the_device(error: Exception) -> bool:
    """Whether `error` leaves the CUDA context unusable: any CUDA error but running out of memory."""
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error):
        return False
    return isinstance(error, getattr(torch, "AcceleratorError", ())) or "CUDA error: " in str(error)


def evaluate_record(genotype: Genotype, index: int, ctx: SearchContext,
                    decide: Callable[[float, float], bool]) -> Dict[str, Any]:
    """Evaluates candidate `index` into its log record; a failure is recorded, not raised, unless it
    is the data's (DataError: every design would fail on it) or the GPU's (DeviceLost, with the
    record): then the search stops."""
    started = time.time()
    record: Dict[str, Any] = {"index": index, "genotype": genotype.to_list()}
    known: Dict[str, Any] = {}  # the fields known before a failure
    lost = False
    try:
        record.update(evaluate_candidate(genotype, index, ctx, decide, known))
        record.update(status="ok", error=None)
    except (KeyboardInterrupt, SystemExit, DataError):
        raise
    except Exception as error:  # any failure of one design must not stop the search
        record.update({"stage1_reward": None, "gate": None, "params": None, "madds": None, **known}, reward=None,
                      stage2_reward=None, seconds=round(time.time() - started, 3), status="failed",
                      error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(limit=3))
        lost = loses_the_device(error)
    record.update(worker_identity(), finished=round(time.time(), 3))
    if record["status"] == "failed" and torch.cuda.is_available() and not lost:
        # Here, not in the handler, where the error's frames still held the candidate's tensors.
        gc.collect()
        torch.cuda.empty_cache()  # to the processes that share the GPU
    if lost:
        raise DeviceLost(record)
    return record


def worker_identity() -> Dict[str, Any]:
    """Who evaluated a candidate: the rank (0 without torchrun), the host, and the number of
    times torchrun restarted the processes before."""
    return {"worker": rank(), "host": socket.gethostname(), "restart": attempt()}


class Search:
    """One search run in `run_dir`. Everything needed to continue exactly is saved after every
    candidate; a run killed at any moment and resumed logs the same candidates and rewards."""

    def __init__(self, run_dir: str, config: SearchConfig, context_factory, budget: Optional[int] = None,
                 time_budget: Optional[float] = None):
        """`budget` candidates and `time_budget` seconds (counted over every session of the run); on
        resume, one that is None is the search's saved one."""
        self.run_dir = run_dir
        self.budget, self.time_budget = budget, time_budget
        self.config = config
        self.context_factory = context_factory
        self.strategy = make_strategy(config.strategy, seed=config.seed, lr=config.controller_lr,
                                      clip=config.ppo_clip, ppo_epochs=config.ppo_epochs,
                                      baseline_decay=config.baseline_decay,
                                      entropy_weight=config.entropy_weight)
        self.gate = Gate(config.gate_p_start, config.gate_p_end, config.gate_anneal)
        self.next_index = 0
        self.elapsed = 0.0
        self.records: List[Dict[str, Any]] = []
        self.data: Optional[Dict[str, Any]] = None  # SearchContext.data, once known
        self._context: Optional[SearchContext] = None
        self._run_dir_lock = None       # held from lock_run_dir(), start() or resume()
        self.made_run_dir = self._made_lock = False
        self._bar = None                # the progress bar, once shown
        self.tensorboard: Optional[TensorBoardLog] = None  # --tensorboard: each logged candidate's rewards too
        self.workers = 1                # processes evaluating candidates
        self._signals = StopSignals()  # Ctrl-C and SIGTERM wait for the bookkeeping of a candidate

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        self.check_controller()  # under torchrun a failed candidate's save may follow a diverged update
        return {"next_index": self.next_index, "elapsed": self.elapsed, "budget": self.budget,
                "time_budget": self.time_budget, "strategy": self.strategy.state_dict(), "gate": self.gate.state_dict(),
                "data": self.data}

    def check_controller(self) -> None:
        """Refuses non-finite controller weights, never saved: every resume would fail on them."""
        if holds_non_finite(self.strategy.state_dict()):
            raise ValueError(f"the controller's update made its weights non-finite: it diverged (start again with a "
                             f"lower --controller-lr than {self.config.controller_lr}), or "
                             f"{self.path(SEARCH_STATE)} is damaged; the state was not saved")

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = [k for k in ("next_index", "elapsed", "strategy", "gate") if k not in state]
        if missing:
            raise ValueError(f"{self.path(SEARCH_STATE)} is not the state of a search (it lacks {', '.join(missing)})")
        self.next_index, self.elapsed = state["next_index"], state["elapsed"]
        self.data = state.get("data")  # None in states saved before it was recorded
        self.budget = self.budget if self.budget is not None else state.get("budget")
        self.time_budget = self.time_budget if self.time_budget is not None else state.get("time_budget")
        try:
            self.strategy.load_state_dict(state["strategy"])
            self.gate.load_state_dict(state["gate"])
        except (RuntimeError, ValueError, TypeError, KeyError) as error:  # a controller of other sizes, say
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(damaged_state(self.path(SEARCH_STATE), f"its controller cannot be loaded ({reason})")) \
                from None

    def lock_run_dir(self) -> None:
        """Takes RUN_DIR (made when new) for this process, before anything is written there."""
        self.made_run_dir = not os.path.isdir(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self._made_lock = not os.path.exists(self.path(LOCK))
        try:
            self._run_dir_lock = lock_directory(self.run_dir)
        except Unwritable as error:  # a finished search copied to read-only storage, say
            raise Unwritable(f"{error}; python -m nasfast.report {self.run_dir} shows its results without "
                             f"writing") from None

    def abandon(self) -> None:
        """Gives RUN_DIR back after a failure before start(): what was made for it (the directory,
        its lock file) goes again."""
        if self._run_dir_lock is not None:
            if self._made_lock:
                with contextlib.suppress(FileNotFoundError):  # not to hide the error that led here
                    os.remove(self.path(LOCK))  # while it is still held
            self._run_dir_lock.close()
            self._run_dir_lock = None
            if self.made_run_dir and not os.listdir(self.run_dir):
                os.rmdir(self.run_dir)

    def prepare(self, resume: bool) -> None:
        """The shared data first (the stage-1 cache: the longest step, and where missing data
        show), then a new search's files; a new directory made for a search that fails here goes."""
        try:
            self.context()
            if not resume:
                self.start()
        except BaseException:
            if not resume:
                self.abandon()
            raise

    def start(self) -> None:
        if self._run_dir_lock is None:
            self.lock_run_dir()
        if os.path.exists(self.path(SEARCH_STATE)):
            raise ValueError(f"{self.run_dir}: another search began there meanwhile")
        record_job(self.run_dir)  # before the state: see job.begun_by_this_job
        write_json(self.path(CONFIG), self.config.to_dict())
        keep_finished_records(self.path(SEARCH_LOG), 0)
        save_torch(self.state_dict(), self.path(SEARCH_STATE))

    def resume(self) -> None:
        if self._run_dir_lock is None:
            self.lock_run_dir()
        self.load_state_dict(load_state(self.path(SEARCH_STATE)))
        if self.budget is None and self.time_budget is None:  # a state saved before budgets were
            raise ValueError(NO_BUDGET)
        self.records = keep_finished_records(self.path(SEARCH_LOG), self.next_index, self.in_flight())

    def open(self, resume: bool, tensorboard: bool, top: int) -> bool:
        """Locks RUN_DIR, starts the TensorBoard log if asked for and, with `resume`, loads the saved
        search: False, with its table of the best designs printed, when nothing is left to do."""
        self.lock_run_dir()
        if tensorboard:
            self.tensorboard = TensorBoardLog(self.run_dir)
        if resume:
            self.resume()
            if self.finished():
                save_torch(self.state_dict(), self.path(SEARCH_STATE))  # the budgets given, for the next resume
                print(f"already done: {self.spent_note()}", file=sys.stderr)
                print(top_table(self.records, top))
                return False
        return True

    def resuming_note(self) -> str:
        in_flight = len(list(self.in_flight()))
        return f"resuming {self.run_dir} at candidate {self.next_index}" + (f" ({in_flight} in flight)"
                                                                            if in_flight else "")

    def data_root(self, given: Optional[str], resume: bool) -> Optional[str]:
        """The data root the closing commands name: the one given, or on resume the one the search read."""
        return given or (self.recorded_root() if resume else None)

    def print_closing(self, top: int, data_root: Optional[str]) -> None:
        print(self.spent_note(), file=sys.stderr)
        print(closing_summary(self.records, top, self.run_dir, self.config, data_root,
                              self.recorded_training_images()))

    def candidates_done(self) -> int:
        """Candidates of the budget spent: finished, or lost with log lines that a crash cut."""
        return self.next_index - len(list(self.in_flight()))

    def in_flight(self) -> Iterable[int]:
        """Candidates handed out but not finished (by other processes: see distributed.Coordinator)."""
        return ()

    # -- the loop ----------------------------------------------------------------------------
    def context(self) -> SearchContext:
        if self._context is None:
            context = self.context_factory(self.config, self.run_dir, self.data)
            self.data = getattr(context, "data", None) or self.data  # where a resumed search found them now
            self._context = context
        return self._context

    def recorded_root(self) -> Optional[str]:
        """Where the search read its data (None before it began, or in states saved before it was recorded)."""
        return (self.data or {}).get("root")

    def recorded_training_images(self) -> Optional[int]:
        return (self.data or {}).get("training images")

    def step(self) -> Dict[str, Any]:
        """Samples, evaluates and logs one candidate, updates the strategy, saves the state."""
        started = time.time()
        proposal = self.strategy.sample()
        lost = None
        try:
            record = evaluate_record(proposal.genotype, self.next_index, self.context(), self.gate.decide)
        except DeviceLost as error:
            record, lost = error.record, error
        with self._signals.deferred():
            self.learn_and_log(proposal, record)
            self.next_index += 1
            self.elapsed += time.time() - started
            save_torch(self.state_dict(), self.path(SEARCH_STATE))
        if lost is not None:  # logged and saved: a resumed search goes on with the next candidate
            raise lost
        return record

    def learn_and_log(self, proposal: Proposal, record: Dict[str, Any]) -> None:
        """The strategy learns from a finished candidate, which is then logged (the state is
        saved after, by the caller)."""
        if record["status"] == "ok":
            record["controller"] = self.strategy.update([proposal], [record["reward"]])
            self.check_controller()  # before the candidate is logged
        append_record(self.path(SEARCH_LOG), record)
        self.records.append(record)
        if self.tensorboard is not None and record["status"] == "ok":
            self.tensorboard.add(record["index"], {"reward": record["reward"],
                                                   "stage-1 reward": record["stage1_reward"],
                                                   "stage-2 reward": record["stage2_reward"],
                                                   "seconds": record["seconds"]})
            # by candidates logged, counted from 0 as the indices are: under torchrun they finish out of order
            self.tensorboard.add(len(self.records) - 1, {"best reward": self.best_reward()})

    def run(self, progress: bool = True) -> List[Dict[str, Any]]:
        """Evaluates candidates until the budget of candidates or of time is spent."""
        if self.budget is None and self.time_budget is None:
            raise ValueError(NO_BUDGET)
        self.show_progress(bar=progress)
        try:
            with self._signals:
                while not self.spent():
                    self.show(self.step())
        finally:
            self.close()
        return self.records

    def show_progress(self, bar: bool = True) -> None:
        """Finished candidates on a progress bar (on a terminal, unless `bar` is False), else as lines."""
        self._bar = progress_bar(total=self.budget, initial=self.candidates_done(), unit="cand", dynamic_ncols=True,
                                 disable=not bar, log_every=None)  # a log gets a line per candidate instead

    def show(self, record: Dict[str, Any]) -> None:
        """A finished candidate on the progress bar, or as a line where there is none (a log file)."""
        if self._bar is None:
            return
        search_time = None if self.time_budget is None else f"{self.elapsed:.0f}/{self.time_budget:g} s"
        if self._bar.disable:
            print(progress_line(record, self.candidates_done(), self.budget, self.best_reward(), self.workers,
                                search_time), file=sys.stderr, flush=True)
        else:
            self._bar.update(1)
            self._bar.set_postfix(best=format_reward(self.best_reward()), last=format_reward(record["reward"]),
                                  gate=record["gate"] or record["status"], worker=record["worker"],
                                  **({"search time": search_time} if search_time else {}))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def spent(self) -> bool:
        return self.spent_note() is not None

    def finished(self) -> bool:
        """A budget is spent and no candidate is left in flight: nothing is left to do."""
        return self.spent() and not list(self.in_flight())

    def spent_note(self) -> Optional[str]:
        """Which budget is spent, and how to go further; None while neither is."""
        if self.budget is not None and self.next_index >= self.budget:
            if self.next_index > self.budget:  # a resume with a lower budget
                return (f"budget of {counted(self.budget, 'candidate')} reached (the run has {self.next_index}); "
                        f"raise --budget above {self.next_index} to continue")
            return f"budget of {counted(self.budget, 'candidate')} reached; raise --budget to continue"
        if self.time_budget is not None and self.elapsed >= self.time_budget:
            return (f"time budget of {self.time_budget:g} s reached ({self.elapsed:.0f} s of search); raise "
                    f"--time-budget above {math.ceil(self.elapsed)} s to continue")
        return None

    def best_reward(self) -> Optional[float]:
        rewards = [r["reward"] for r in self.records if r["status"] == "ok"]
        return max(rewards) if rewards else None
