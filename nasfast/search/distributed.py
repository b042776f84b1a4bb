"""One search over many processes (torchrun): rank 0 owns the strategy, the gate and the log;
every rank, rank 0 included, evaluates candidates.

Control messages are small pickled dicts, each sent as one fixed-size uint8 CPU tensor over
gloo. Workers ask rank 0 for a task (returning their last result with the request) and, between
the two stages of a candidate, for the gate's decision. On rank 0 the worker runs in the main
thread and calls the coordinator directly; a relay thread serves the other ranks. The coordinator
saves the state after every hand-out and every result, in-flight proposals included, so a
restarted group (torchrun --max-restarts) hands those out again first and logs each index once.
"""
import _thread
import contextlib
import os
import pickle
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import torch
import torch.distributed as dist

from ..cli import counted, message_of, reported_in_one_line, resolve_device
from ..data import DataError
from ..data.datasets import OtherLayout
from ..files import SEARCH_STATE, save_torch
from ..genotype import Genotype
from ..strategies import Proposal
from .context import SearchContext
from .config import SearchConfig
from .job import TIMEOUT, agent_store, agree_on_attempt, attempt, rank, store_connection, world_size
from .loop import DeviceLost, Search, evaluate_record
from .records import load_state
from .summary import PROG, mend_data_note, resume_command

MESSAGE_BYTES = 1 << 20          # one message, 8 bytes of length first
HEADER = struct.Struct("<Q")

Message = Dict[str, Any]
Request = Callable[[Message], Message]


# -- processes and devices -------------------------------------------------------------------
def init_process_group() -> None:
    """gloo (CPU tensors: the messages only) over torchrun's store. The keys of each start of the
    processes get their own prefix: the agent's store outlives a restart, and a rank that read the
    address of a peer of the previous start (dead) failed to connect, spending a restart."""
    dist.init_process_group("gloo", store=dist.PrefixStore(f"nasfast/attempt{agree_on_attempt()}", agent_store()),
                            rank=rank(), world_size=world_size(), timeout=TIMEOUT)


def configure_threads() -> None:
    """Shares the CPU cores among the processes of this machine, unless OMP_NUM_THREADS says."""
    if "OMP_NUM_THREADS" not in os.environ:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))


def worker_device(requested: str, local_rank: int, workers_per_gpu: int) -> str:
    """The device of the process with this local rank: `workers_per_gpu` processes share each
    GPU, cuda:(local_rank // workers_per_gpu) % device_count. An explicit cpu or cuda:K stays."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{(local_rank // max(1, workers_per_gpu)) % torch.cuda.device_count()}"
    return requested


def has_pending(run_dir: str) -> bool:
    """Whether the search saved in `run_dir` has candidates in flight (a torchrun search)."""
    return bool(load_state(os.path.join(run_dir, SEARCH_STATE)).get("pending"))


# -- messages --------------------------------------------------------------------------------
def encode(message: Message) -> torch.Tensor:
    data = pickle.dumps(message)
    if len(data) > MESSAGE_BYTES - HEADER.size:
        raise ValueError(f"message of {len(data)} bytes is over the {MESSAGE_BYTES - HEADER.size} allowed")
    buffer = torch.zeros(MESSAGE_BYTES, dtype=torch.uint8)
    framed = HEADER.pack(len(data)) + data
    buffer[:len(framed)] = torch.frombuffer(bytearray(framed), dtype=torch.uint8)
    return buffer


def decode(buffer: torch.Tensor) -> Message:
    raw = buffer.numpy().tobytes()
    (length,) = HEADER.unpack_from(raw)
    return pickle.loads(raw[HEADER.size:HEADER.size + length])


class Rank0Lost(Exception):
    """Rank 0 has ended (killed, say): its connection is closed. torchrun restarts the ranks."""


def remote_request(message: Message) -> Message:
    """A worker's round trip to rank 0. The sender's rank travels in the message."""
    buffer = torch.empty(MESSAGE_BYTES, dtype=torch.uint8)
    try:
        dist.send(encode({**message, "rank": rank()}), dst=0)
        dist.recv(buffer, src=0)
    except RuntimeError as error:  # gloo's, as rank 0's end closed the connection
        raise Rank0Lost(message_of(error)) from None
    return decode(buffer)


# A worker rank adds one to its count in the store every BEAT seconds; rank 0 takes one whose count
# stood still for SILENCE seconds for gone (torchrun stops no machine's processes when another
# machine's restarts are spent or its agent dies: they would wait for it for TIMEOUT).
BEAT, SILENCE = 5.0, 60.0


class RankLost(RuntimeError):
    """A worker rank that stopped beating: its process or its machine is gone."""


def _alive_key(worker: int) -> str:
    return f"nasfast/attempt{attempt()}/alive/{worker}"


def beat() -> None:
    """This rank's heartbeat, from a daemon thread, for as long as the process lives."""
    def beating(store=store_connection(), key=_alive_key(rank())):
        with contextlib.suppress(RuntimeError):  # the store gone with its torchrun: rank 0 says so
            while True:
                store.add(key, 1)
                time.sleep(BEAT)
    threading.Thread(target=beating, name="heartbeat", daemon=True).start()


def watch(workers: Callable[[], Set[int]], errors: List[BaseException]) -> None:
    """Rank 0's daemon thread: interrupts the main thread, with RankLost in `errors`, when one of
    the `workers()` still working has not beaten for SILENCE seconds."""
    def watching(store=store_connection()):
        heard: Dict[int, Tuple[int, float]] = {}  # rank: (count, when it last changed)
        lost = None
        while lost is None:
            time.sleep(BEAT)
            lost = _lost_rank(store, workers(), heard)
        errors.append(lost)
        _thread.interrupt_main()
    threading.Thread(target=watching, name="watch", daemon=True).start()


def _lost_rank(store: dist.Store, workers: Set[int], heard: Dict[int, Tuple[int, float]]) -> Optional[RankLost]:
    """RankLost for a worker whose count in `store` stood still for SILENCE seconds (`heard`: each
    one's count, and when it last changed), or for a store gone; None while all beat."""
    now = time.monotonic()
    try:
        counts = {worker: store.add(_alive_key(worker), 0) for worker in workers}
    except RuntimeError as error:  # the torchrun that holds the store has ended
        return RankLost(f"torchrun's store cannot be reached ({message_of(error)})")
    for worker, count in counts.items():
        if heard.get(worker, (None,))[0] != count:
            heard[worker] = (count, now)
        elif now - heard[worker][1] > SILENCE:
            return RankLost(f"rank {worker} has not been heard from for {SILENCE:.0f} s: its process or its machine "
                            f"is gone")
    return None


def receive_any() -> Message:
    buffer = torch.empty(MESSAGE_BYTES, dtype=torch.uint8)
    dist.irecv(buffer).wait()  # from any rank; gloo's is_completed() never turns true, so block
    return decode(buffer)


def share(message: Optional[Message]) -> Message:
    """Rank 0's `message`, on every rank."""
    box = [message]
    if world_size() > 1:
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as error:
            if rank() == 0:
                raise
            raise Rank0Lost(message_of(error)) from None
    return box[0]


# -- rank 0: the coordinator -----------------------------------------------------------------
def _proposal(saved) -> Proposal:
    """A pending proposal as state_dict saves it, [genotype list, log-probability], or as a Proposal
    (as states saved before it were)."""
    return saved if isinstance(saved, Proposal) else Proposal(Genotype.parse(saved[0]), saved[1])


class Coordinator(Search):
    """The strategy, the gate and the log of a search whose candidates other workers evaluate,
    possibly finishing out of order. Thread-safe: handle() is all a worker calls."""

    def __init__(self, run_dir: str, config: SearchConfig, context_factory, budget: Optional[int] = None,
                 time_budget: Optional[float] = None, workers: int = 1):
        super().__init__(run_dir, config, context_factory, budget, time_budget)
        self.pending: Dict[int, Proposal] = {}        # handed out, not finished
        self.gate_decisions: Dict[int, bool] = {}     # of pending candidates, so a rerun asks once
        self.retry: List[int] = []                    # pending when the processes were restarted
        self.workers, self.working = workers, set(range(workers))
        self.state_lock = threading.Lock()            # the relay thread and the main one both log candidates
        self._clock: Optional[float] = None

    def state_dict(self) -> Dict[str, Any]:
        pending = {index: [proposal.genotype.to_list(), proposal.log_prob] for index, proposal in self.pending.items()}
        return {**super().state_dict(), "pending": pending, "gate_decisions": dict(self.gate_decisions)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pending = {index: _proposal(saved) for index, saved in state.get("pending", {}).items()}
        self.gate_decisions = dict(state.get("gate_decisions", {}))
        self.retry = sorted(self.pending)

    def in_flight(self) -> Iterable[int]:
        return self.pending

    def handle(self, worker: int, message: Message) -> Message:
        """A worker's request: {"want": "task", "result": record or None} gets {"task": (index,
        genotype list)} or {"stop": True}, and {"result": record} alone (a worker's last) {"stop": True};
        {"gate": (index, stage1_reward, coin)} gets {"go": bool}."""
        with self.state_lock:
            if "gate" in message:
                return {"go": self.decide(*message["gate"])}
            if message.get("result") is not None:
                self.finish(message["result"])
            task = self.hand_out() if message.get("want") == "task" else None
            if task is None:
                self.working.discard(worker)
                return {"stop": True}
            return {"task": task}

    def remote_working(self) -> bool:
        return bool(self.remote_workers())

    def remote_workers(self) -> Set[int]:
        with self.state_lock:
            return self.working - {0}

    def decide(self, index: int, stage1_reward: float, coin: float) -> bool:
        if index not in self.gate_decisions:
            self.gate_decisions[index] = self.gate.decide(stage1_reward, coin)
        return self.gate_decisions[index]

    def hand_out(self) -> Optional[Tuple[int, list]]:
        if self.retry:
            index = self.retry.pop(0)
        elif self.spent():
            return None
        else:
            index, self.next_index = self.next_index, self.next_index + 1
            self.pending[index] = self.strategy.sample()
            self.save()  # before it leaves: a restart hands it out again
        return index, self.pending[index].genotype.to_list()

    def finish(self, record: Dict[str, Any]) -> None:
        index = record["index"]
        proposal = self.pending.pop(index)
        self.gate_decisions.pop(index, None)
        self.learn_and_log(proposal, record)
        self.save()
        self.show(record)

    def save(self) -> None:
        self._tick()
        save_torch(self.state_dict(), self.path(SEARCH_STATE))

    def spent(self) -> bool:
        self._tick()
        return super().spent()

    def start_clock(self) -> None:
        """The time budget counts the wall-clock time from here (start-up and caching done) on, over
        every session."""
        self._clock = time.time()

    def _tick(self) -> None:
        if self._clock is not None:
            now = time.time()
            self.elapsed += now - self._clock
            self._clock = now


def relay(coordinator: Coordinator, errors: List[BaseException]) -> None:
    """Rank 0's thread that serves the other ranks, one message at a time, until all are stopped."""
    try:
        while coordinator.remote_working():
            message = receive_any()
            dist.send(encode(coordinator.handle(message["rank"], message)), dst=message["rank"])
    except BaseException as error:  # the main thread must learn of it
        errors.append(error)
        _thread.interrupt_main()


# -- every rank: the worker ------------------------------------------------------------------
def work(request: Request, ctx: SearchContext) -> None:
    """Evaluates the candidates rank 0 hands out until it says stop."""
    result = None
    while True:
        reply = request({"want": "task", "result": result})
        if reply.get("stop"):
            return
        index, genotype = reply["task"]

        def decide(stage1_reward: float, coin: float, index=index) -> bool:
            return request({"gate": (index, stage1_reward, coin)})["go"]

        try:
            result = evaluate_record(Genotype.parse(genotype), index, ctx, decide)
        except DeviceLost as lost:
            request({"result": lost.record})  # logged, and no other candidate for this process
            raise


# -- the command -----------------------------------------------------------------------------
def run(args, choose_run: Callable[[], Tuple[str, SearchConfig, bool]]) -> int:
    """python -m nasfast.search under torchrun (or continuing such a search in one process).
    `choose_run` (called on rank 0 only) gives RUN_DIR, the options, and whether to resume."""
    from .context import build_context  # heavy imports

    if world_size() > 1:
        init_process_group()
        if rank() > 0:
            beat()
    configure_threads()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = worker_device(args.device, local_rank, args.workers_per_gpu)
    resolve_device(device)  # a device this machine lacks: a one-line error; cuda:N becomes the current device

    def factory(cache: str):
        return lambda config, run_dir, recorded: build_context(config, run_dir, recorded, args.data_root, device,
                                                               cache, progress=not args.no_progress)

    if rank() == 0:
        return _run_rank0(args, choose_run, factory("build" if world_size() > 1 else "auto"))
    try:
        plan = share(None)
        if "exit" in plan:  # rank 0 said why
            dist.destroy_process_group()
            return plan["exit"]
        ctx = factory("open")(SearchConfig.from_dict(plan["config"]), plan["run_dir"], plan["data"])
        work(remote_request, ctx)
    except KeyboardInterrupt:
        _exit_now(130)
    except DataError as error:  # a file this rank's candidate could not read: the search is saved
        root = (plan["data"] or {}).get("root")
        _exit_on_error(mend_data_note(error, plan["config"]["dataset"], args.data_root or root, plan["run_dir"],
                                      args.data_root))
    except DeviceLost as error:  # logged: torchrun's restart, or a resume, goes on with this process's GPU anew
        _exit_on_error(f"rank {rank()}: {error}")
    except Rank0Lost:  # rank 0 says what happened, if it can: one line here, not a traceback of gloo's
        print(f"{PROG}: rank {rank()}: rank 0 has ended, so this rank ends too", file=sys.stderr)
        _exit_now(1)
    dist.destroy_process_group()
    return 0


def _run_rank0(args, choose_run, context_factory) -> int:
    resume = False
    try:
        run_dir, config, resume = choose_run()
        coordinator = Coordinator(run_dir, config, context_factory, args.budget, args.time_budget, world_size())
        if not coordinator.open(resume, args.tensorboard, args.top):
            _stop_every_rank(0)
            return 0
        coordinator.prepare(resume)  # builds the cache the other ranks open; fails early without data
    except SystemExit as stop:  # an error the parser reported
        _stop_every_rank(stop.code)
        raise
    except BaseException as error:
        said = error.for_resumed_run() if resume and isinstance(error, OtherLayout) else error  # no dataset change
        _stop_every_rank(2 if reported_in_one_line(said) else 1)
        if said is not error:
            raise said from None
        raise
    if resume:
        print(coordinator.resuming_note(), file=sys.stderr)
    try:
        share({"run_dir": run_dir, "config": config.to_dict(), "data": coordinator.data})
    except RuntimeError as error:  # gloo's: a rank ended while the cache was built
        print(f"{PROG}: another rank has ended ({message_of(error)}); {restart_note(run_dir)}", file=sys.stderr)
        _exit_now(1)
    coordinator.show_progress(bar=not args.no_progress)
    return _serve_and_work(coordinator, args.top, coordinator.data_root(args.data_root, resume))


def _stop_every_rank(code) -> None:
    """Tells the other ranks to exit with `code`, before rank 0 raises its error."""
    share({"exit": code})
    if world_size() > 1:  # not left to the exit: its teardown could abort the process
        dist.destroy_process_group()


def _serve_and_work(coordinator: Coordinator, top: int, data_root: Optional[str]) -> int:
    errors: List[BaseException] = []
    relay_thread = threading.Thread(target=relay, args=(coordinator, errors), name="relay", daemon=True)
    try:  # Ctrl-C, or SIGTERM (torchrun's, as cli.run makes it): the note of what is saved
        coordinator.start_clock()
        if world_size() > 1:
            relay_thread.start()
            watch(coordinator.remote_workers, errors)
        work(lambda message: coordinator.handle(0, message), coordinator.context())
        while relay_thread.is_alive():
            relay_thread.join(0.5)
    except KeyboardInterrupt:
        with coordinator.state_lock:  # the relay thread may be logging a candidate
            coordinator.close()
        _exit_now(stop_note(coordinator, errors[0] if errors else None, data_root))
    except DataError as error:  # a file rank 0's candidate could not read: the search is saved
        with coordinator.state_lock:
            coordinator.close()
        _exit_on_error(mend_data_note(error, coordinator.config.dataset, data_root, coordinator.run_dir, data_root))
    except DeviceLost as error:  # logged
        with coordinator.state_lock:
            coordinator.close()
        _exit_on_error(f"{error}; {restart_note(coordinator.run_dir)}")
    coordinator.close()
    if errors:
        raise RuntimeError("the relay to the other ranks failed") from errors[0]
    coordinator.print_closing(top, data_root)
    if world_size() > 1:
        dist.destroy_process_group()
    return 0


def stop_note(coordinator: Coordinator, relay_error: Optional[BaseException], data_root: Optional[str]) -> int:
    """Says why rank 0 stops before the end, returning the exit status: its relay thread's error,
    if a user's (a diverged controller), in one line as one process would (2); else what is saved
    and how to continue (130)."""
    if relay_error is not None and reported_in_one_line(relay_error):
        print(f"{PROG}: error: {message_of(relay_error)}", file=sys.stderr)
        return 2
    reason = (str(relay_error) if isinstance(relay_error, RankLost) else f"relay failed: {relay_error!r}"
              if relay_error else "stopped")  # Ctrl-C, or torchrun's SIGTERM
    print(f"\n{reason}: {counted(len(coordinator.records), 'candidate')} saved; {restart_note(coordinator.run_dir)}, "
          f"under torchrun as before or in one process: {resume_command(coordinator.run_dir, data_root)}",
          file=sys.stderr)
    return 130


def restart_note(run_dir: str) -> str:
    return f"unless torchrun restarts the processes (--max-restarts), continue with --resume {run_dir}"


def _exit_on_error(message: str) -> None:
    """A user's error in one line, as cli.run prints it, then _exit_now (exit status 2)."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    _exit_now(2)


def _exit_now(code: int) -> None:
    """Exits at once: the relay thread may be blocked in a receive that would hold up an orderly
    shutdown. The state on disk is consistent at any moment."""
    if world_size() == 1:
        raise SystemExit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
