"""The search over several processes: the coordinator's bookkeeping in-process, and the real
torchrun (gloo, two CPU processes) surviving a SIGKILL of a worker through an elastic restart."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
import torch.distributed as dist

from conftest import has_tensorboard, tensorboard_scalars
from nasfast.cli import UsageError, resolve_device
from nasfast.search import distributed, job
from nasfast.search.config import preset
from nasfast.files import SEARCH_RECORD_KEYS, append_record, read_records
from nasfast.search.records import keep_finished_records

REPO = Path(__file__).resolve().parents[1]
SEARCH_ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # for the searches run by torchrun


def fake_evaluate(genotype, index, ctx, decide, known=None):
    stage1_reward = 0.1 + index / 100
    go = decide(stage1_reward, 0.5)
    return dict(reward=stage1_reward, stage1_reward=stage1_reward, stage2_reward=None,
                gate="continue" if go else "stop", params=1, madds=1, seconds=0.0)


@pytest.fixture
def coordinator_at(tmp_path, monkeypatch):
    import nasfast.search.loop as loop
    monkeypatch.setattr(loop, "evaluate_candidate", fake_evaluate)

    def make(budget=4, workers=2, resume=False, time_budget=None):
        c = distributed.Coordinator(str(tmp_path), preset("tiny"), lambda config, run_dir, recorded: None,
                                    budget=budget, workers=workers, time_budget=time_budget)
        c.resume() if resume else c.start()
        return c
    return make


def result(coordinator, index):
    """The record a worker would send for candidate `index`."""
    from nasfast.search.loop import evaluate_record
    genotype = coordinator.pending[index].genotype
    decide = lambda reward, coin: coordinator.handle(0, {"gate": (index, reward, coin)})["go"]  # noqa: E731
    return evaluate_record(genotype, index, None, decide)


def test_messages_round_trip_in_one_fixed_size_tensor():
    message = {"want": "task", "result": {"index": 3, "error": "x" * 1000, "reward": 0.25}, "rank": 1}
    buffer = distributed.encode(message)
    assert buffer.dtype == torch.uint8 and buffer.numel() == distributed.MESSAGE_BYTES
    assert distributed.decode(buffer) == message
    with pytest.raises(ValueError, match="bytes"):
        distributed.encode({"big": b"x" * distributed.MESSAGE_BYTES})


def test_worker_device_shares_gpus(monkeypatch):
    assert distributed.worker_device("cpu", 5, 2) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [distributed.worker_device("auto", r, 2) for r in range(6)] == \
        ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:0", "cuda:0"]
    assert distributed.worker_device("cuda", 3, 1) == "cuda:1"
    assert distributed.worker_device("cuda:1", 0, 4) == "cuda:1"


def test_an_explicit_gpu_beyond_the_machine_s_is_refused_with_their_count(monkeypatch):
    """The one given becomes the current device (what uses the current one took memory on GPU 0)."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device(distributed.worker_device("cuda:1", 3, 1)) == torch.device("cuda:1")
    assert current == [torch.device("cuda:1")] and resolve_device("cuda") == torch.device("cuda") and len(current) == 1
    for name in ("cuda:2", "cuda:7"):
        assert distributed.worker_device(name, 0, 1) == name  # kept as asked, then checked
        with pytest.raises(UsageError, match=rf"^device {name}: this machine has 2 GPU\(s\)$"):
            resolve_device(name)


def test_a_gpu_the_machine_lacks_is_refused_before_any_process_uses_it(monkeypatch):
    """torch.cuda.set_device came first: a traceback on every rank."""
    from nasfast.search.options import build_parser
    monkeypatch.setenv("WORLD_SIZE", "1")
    args = build_parser().parse_args(["--out", "unused", "--budget", "1", "--device", "cuda:1"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="^device cuda:1: CUDA is not available on this machine$"):
        distributed.run(args, lambda: pytest.fail("the run was chosen"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"set_device({device})"))
    with pytest.raises(UsageError, match=r"^device cuda:1: this machine has 1 GPU\(s\)$"):
        distributed.run(args, lambda: pytest.fail("the run was chosen"))


def test_keep_finished_records_drops_unfinished(tmp_path):
    log = str(tmp_path / "log.jsonl")
    for index in (0, 2, 1, 3, 5):
        append_record(log, {**{key: None for key in SEARCH_RECORD_KEYS}, "index": index, "status": "failed"})
    kept = keep_finished_records(log, 4, pending={2})
    assert [r["index"] for r in kept] == [0, 1, 3] == [r["index"] for r in read_records(log)]


def test_out_of_order_results_update_with_the_recorded_proposals(coordinator_at, monkeypatch):
    c = coordinator_at(budget=3, workers=2)
    updates = []
    real_update = c.strategy.update
    monkeypatch.setattr(c.strategy, "update", lambda ps, rs: updates.append((ps, rs)) or real_update(ps, rs))
    assert c.handle(0, {"want": "task", "result": None})["task"][0] == 0
    assert c.handle(1, {"want": "task", "result": None})["task"][0] == 1
    proposals = dict(c.pending)
    saved = torch.load(Path(c.run_dir) / "state.pt", weights_only=False)
    assert sorted(saved["pending"]) == [0, 1] and saved["next_index"] == 2  # saved as handed out
    assert c.handle(1, {"want": "task", "result": result(c, 1)})["task"][0] == 2  # 1 finishes first
    assert c.handle(1, {"want": "task", "result": result(c, 2)}) == {"stop": True}
    assert c.handle(0, {"want": "task", "result": result(c, 0)}) == {"stop": True}
    assert updates[0][0][0] is proposals[1] and updates[2][0][0] is proposals[0]
    log = read_records(str(Path(c.run_dir) / "candidates.jsonl"))
    assert [r["index"] for r in log] == [1, 2, 0] and all("controller" in r for r in log)
    assert not c.pending and not c.working and c.gate.count == 3


def test_a_state_whose_pending_proposals_were_saved_as_objects_resumes(coordinator_at, monkeypatch):
    monkeypatch.delattr(torch.serialization, "safe_globals", raising=False)  # as torch 2.4, which lacks it
    c = coordinator_at(budget=4)
    c.handle(0, {"want": "task", "result": None})
    path = Path(c.run_dir) / "state.pt"
    torch.save({**torch.load(path, weights_only=True), "pending": dict(c.pending)}, path)  # as saved before
    assert coordinator_at(budget=4, resume=True).pending == c.pending


def test_a_restart_hands_out_the_in_flight_proposals_first(coordinator_at):
    c = coordinator_at(budget=4)
    for worker in (0, 1):
        c.handle(worker, {"want": "task", "result": None})
    in_flight = dict(c.pending)
    c.handle(0, {"gate": (1, 0.3, 0.99)})  # candidate 1 passed the gate before the crash
    c.handle(0, {"want": "task", "result": result(c, 0)})  # 0 done, 2 handed out
    logged = {**{key: None for key in SEARCH_RECORD_KEYS}, "index": 1, "status": "failed"}
    append_record(str(Path(c.run_dir) / "candidates.jsonl"), logged)  # logged, state not saved
    restarted = coordinator_at(budget=4, resume=True)
    assert restarted.retry == [1, 2] and [r["index"] for r in restarted.records] == [0]
    assert restarted.pending[1] == in_flight[1]  # its genotype and log-probability, saved as plain lists
    index, genotype = restarted.handle(1, {"want": "task", "result": None})["task"]
    assert index == 1 and genotype == in_flight[1].genotype.to_list()
    assert restarted.handle(1, {"gate": (1, 0.3, 0.99)}) == {"go": c.gate_decisions[1]}
    assert restarted.gate.count == 2  # the decision of candidate 1 is not counted twice
    assert restarted.handle(0, {"want": "task", "result": None})["task"][0] == 2
    assert restarted.handle(0, {"want": "task", "result": None})["task"][0] == 3


@pytest.fixture
def clock(monkeypatch):
    """The coordinator's clock, moved by the test: clock.now seconds."""
    from types import SimpleNamespace
    fake = SimpleNamespace(now=0.0)
    monkeypatch.setattr(distributed, "time", SimpleNamespace(time=lambda: fake.now))
    return fake


def test_the_time_budget_counts_from_the_start_of_the_work(coordinator_at, clock):
    c = coordinator_at(budget=None, time_budget=20)
    assert not c.spent()  # asked first on a resume, as rank 0 does
    clock.now += 30  # start-up and building the cache: not counted
    assert not c.spent() and c.handle(0, {"want": "task", "result": None})["task"][0] == 0
    c.start_clock()
    clock.now += 25
    assert c.spent() and c.elapsed == 25
    c.save()
    restarted = coordinator_at(budget=None, time_budget=100, resume=True)
    assert not restarted.spent()
    clock.now += 30
    assert not restarted.spent() and restarted.elapsed == 25
    restarted.start_clock()
    clock.now += 80
    assert restarted.spent() and restarted.elapsed == 105


@pytest.mark.parametrize("relay_error, status, said", [
    (ValueError("the controller's update made its weights non-finite: it diverged"), 2,
     "python -m nasfast.search: error: the controller's update made its weights non-finite: it diverged\n"),
    (RuntimeError("Connection closed by peer"), 130, "relay failed: RuntimeError('Connection closed by peer'): "
                                                     "0 candidates saved; unless torchrun restarts the processes"),
    (None, 130, "\nstopped: 0 candidates saved; unless torchrun restarts the processes (--max-restarts), continue "
                "with --resume "),  # Ctrl-C, or torchrun's SIGTERM as another process ended
], ids=["a user's error", "a broken connection", "a stop"])
def test_rank0_stops_on_its_relay_thread_s_error(coordinator_at, monkeypatch, capsys, relay_error, status, said):
    """A diverged controller met while serving another rank's result was "relay failed: ValueError(...)"
    (exit 130); in one process it is one line (exit 2)."""
    import _thread

    def failing_relay(coordinator, errors):
        if relay_error is not None:
            errors.append(relay_error)
        _thread.interrupt_main()

    def working(request, ctx):
        deadline = time.monotonic() + 60  # the interrupt ends it; a failed one must not hang the suite
        while time.monotonic() < deadline:
            time.sleep(0.01)

    def exit_now(code):
        raise SystemExit(code)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "watch", lambda workers, errors: None)
    monkeypatch.setattr(distributed, "relay", failing_relay)
    monkeypatch.setattr(distributed, "work", working)
    monkeypatch.setattr(distributed, "_exit_now", exit_now)
    with pytest.raises(SystemExit) as stop:
        distributed._serve_and_work(coordinator_at(), 5, None)
    assert stop.value.code == status and said in capsys.readouterr().err


def test_rank0_takes_a_worker_that_stopped_beating_for_gone(monkeypatch):
    """torchrun stops no machine's processes when another machine's restarts are spent (or its
    agent dies): rank 0 waited for the lost rank until the timeout, 24 hours."""
    import _thread
    store, interrupted = dist.HashStore(), []
    monkeypatch.setattr(distributed, "store_connection", lambda: store)
    monkeypatch.setattr(distributed, "BEAT", 0.01)
    monkeypatch.setattr(distributed, "SILENCE", 0.2)
    monkeypatch.setattr(_thread, "interrupt_main", lambda: interrupted.append(time.monotonic()))
    errors, started = [], time.monotonic()
    distributed.watch(lambda: {1, 2}, errors)
    deadline = started + 10
    while not interrupted and time.monotonic() < deadline:
        store.add(distributed._alive_key(1), 1)  # rank 1 beats, rank 2 does not
        time.sleep(0.01)
    assert interrupted and 0.2 < interrupted[0] - started < 5
    assert [str(e) for e in errors] == ["rank 2 has not been heard from for 0 s: its process or its machine is gone"]

    class Gone:
        def add(self, key, value):
            raise dist.DistNetworkError("Connection reset by peer")
    assert str(distributed._lost_rank(Gone(), {1}, {})) == \
        "torchrun's store cannot be reached (Connection reset by peer)"


def test_a_data_file_a_candidate_cannot_read_says_how_to_go_on_under_torchrun(coordinator_at, monkeypatch, capsys):
    """As in one process: mend it, then resume (it was the bare error, and torchrun's restarts)."""
    import nasfast.search.loop as loop
    from nasfast.data import DataError

    def unreadable(*args):
        raise DataError("/data/camvid/train/a.png: unreadable or truncated image")
    coordinator = coordinator_at()
    monkeypatch.setattr(loop, "evaluate_candidate", unreadable)
    monkeypatch.setattr(coordinator, "context", lambda: None)
    with pytest.raises(SystemExit) as stop:
        distributed._serve_and_work(coordinator, 5, "/data")
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m nasfast.search: error: /data/camvid/train/a.png: unreadable or truncated image; once it is mended "
        f"(python -m nasfast.data --dataset camvid --data-root /data lists every file that cannot be used), continue "
        f"with python -m nasfast.search --resume {coordinator.run_dir} --data-root /data\n")


def test_a_gpu_lost_under_torchrun_is_logged_and_its_process_takes_no_other_candidate(coordinator_at, monkeypatch,
                                                                                     capsys):
    import nasfast.search.loop as loop

    def illegal_access(*args):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    coordinator = coordinator_at(budget=4)
    monkeypatch.setattr(loop, "evaluate_candidate", illegal_access)
    monkeypatch.setattr(coordinator, "context", lambda: None)
    with pytest.raises(SystemExit) as stop:
        distributed._serve_and_work(coordinator, 5, None)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m nasfast.search: error: candidate 0 failed with an error after which this process cannot use its "
        f"GPU (AcceleratorError: CUDA error: an illegal memory access was encountered); it is logged as failed; unless "
        f"torchrun restarts the processes (--max-restarts), continue with --resume {coordinator.run_dir}\n")
    assert [r["status"] for r in read_records(str(Path(coordinator.run_dir) / "candidates.jsonl"))] == ["failed"]
    assert coordinator.next_index == 1 and not coordinator.pending  # no candidate handed out to it after


def test_a_worker_that_lost_its_gpu_sends_its_record_and_asks_for_no_other_candidate(monkeypatch):
    import nasfast.search.loop as loop
    from nasfast.genotype import ZOO

    def illegal_access(*args):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(loop, "evaluate_candidate", illegal_access)
    sent = []

    def request(message):
        sent.append(message)
        return {"task": (3, ZOO["arch0"].to_list())} if len(sent) == 1 else {"stop": True}
    with pytest.raises(loop.DeviceLost, match="candidate 3 failed with an error after which this process cannot"):
        distributed.work(request, None)
    assert len(sent) == 2 and set(sent[1]) == {"result"} and sent[1]["result"]["status"] == "failed"


def test_a_torchrun_search_stops_at_its_time_budget(coordinator_at, clock, monkeypatch, capsys):
    """On the coordinator's clock: caching takes 100 s, each candidate 1 s."""
    import nasfast.search.context
    import nasfast.search.loop as loop
    from nasfast.search.__main__ import main

    def advance(seconds, result=None):
        clock.now += seconds
        return result
    c = coordinator_at(budget=None, time_budget=3)
    c.handle(0, {"want": "task", "result": None})  # then the process dies
    monkeypatch.setattr(nasfast.search.context, "build_context", lambda *args, **kwargs: advance(100, object()))
    monkeypatch.setattr(loop, "evaluate_candidate", lambda *args: advance(1, fake_evaluate(*args)))
    assert main(["--resume", c.run_dir, "--no-progress"]) == 0
    assert "time budget of 3 s reached (3 s of search)" in capsys.readouterr().err
    assert len(read_records(str(Path(c.run_dir) / "candidates.jsonl"))) == 3


def test_a_torchrun_search_continues_in_one_process(coordinator_at, monkeypatch, capsys):
    import nasfast.search.context
    from nasfast.search.__main__ import main
    c = coordinator_at(budget=3)
    for worker in (0, 1):
        c.handle(worker, {"want": "task", "result": None})  # then the processes die
    monkeypatch.setattr(nasfast.search.context, "build_context", lambda *args, **kwargs: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    board = ["--tensorboard"] if has_tensorboard() else []
    assert main(["--resume", c.run_dir, "--budget", "3", "--no-progress", *board]) == 0
    records = read_records(str(Path(c.run_dir) / "candidates.jsonl"))
    assert [r["index"] for r in records] == [0, 1, 2] and {r["worker"] for r in records} == {0}
    assert "(2 in flight)" in capsys.readouterr().err
    if board:  # rank 0 logs for TensorBoard too
        assert [step for step, _ in tensorboard_scalars(Path(c.run_dir) / "tensorboard")["reward"]] == [0, 1, 2]


def test_a_restart_continues_the_search_its_job_began_and_no_other(tmp_path, monkeypatch):
    """A job is known by an id in its torchrun store, not by its rendezvous id: a later job of
    the same --rdzv-id, refused at first, continued the search after its restart."""
    from nasfast.search.__main__ import choose_run
    from nasfast.search.options import build_parser
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "search1")
    job_a, job_b = dist.HashStore(), dist.HashStore()
    monkeypatch.setattr(job, "_agent_store", job_a)
    c = distributed.Coordinator(str(tmp_path / "run"), preset("tiny"), lambda *a: None, budget=4, time_budget=None,
                                workers=2)
    c.start()
    parser = build_parser()
    args = parser.parse_args(["--out", c.run_dir, "--budget", "4"])
    with pytest.raises(SystemExit):  # the first attempt of any job refuses an existing search
        choose_run(args, parser)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert choose_run(args, parser)[::2] == (c.run_dir, True)
    monkeypatch.setattr(job, "_agent_store", job_b)  # a later job, of the same rendezvous id
    with pytest.raises(SystemExit):
        choose_run(args, parser)
    assert job.job_identity() != json.loads((tmp_path / "run" / "torchrun.json").read_text())["job"]


# -- the real thing: torchrun, two processes, a SIGKILL ----------------------------------------
def rank_process(root: int, rank: int):
    """The pid of the process under `root` whose environment has RANK=`rank`, or None."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, root):
            ancestor = parents.get(ancestor)
        if ancestor != root:
            continue
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environment:
            return pid
    return None


@pytest.mark.parametrize("processes, victim", [(2, 1), (2, 0), (1, 0)], ids=["a worker", "rank 0", "the only one"])
def test_torchrun_survives_a_killed_process(processes, victim, tmp_path, camvid_root):
    """A job of one process once refused its own search after its restart."""
    run, budget = tmp_path / "run", 6
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           "--max-restarts", "2", "-m", "nasfast.search", "--dataset", "camvid", "--preset", "tiny",
           "--budget", str(budget), "--out", str(run), "--no-progress", "--stage1-images", "32"]
    torchrun = subprocess.Popen(cmd, env=SEARCH_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = run / "candidates.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and len(read_records(str(log))) < 2 and torchrun.poll() is None:
            time.sleep(0.05)
        pid = rank_process(torchrun.pid, victim)
        assert pid is not None and len(read_records(str(log))) < budget
        os.kill(pid, signal.SIGKILL)
        output, _ = torchrun.communicate(timeout=180)
    finally:
        if torchrun.poll() is None:
            torchrun.kill()
    assert torchrun.returncode == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]  # the ranks that lost a peer say so in a line, if at all
    records = read_records(str(log))
    assert sorted(r["index"] for r in records) == list(range(budget)), output[-5000:]
    assert max(r["restart"] for r in records) >= 1
    assert {r["worker"] for r in records} == set(range(processes))
    state = torch.load(run / "state.pt", weights_only=False)
    assert state["next_index"] == budget and not state.get("pending")
    again = subprocess.run(cmd[:cmd.index("--dataset")] + ["--resume", str(run)], env=SEARCH_ENV, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0 and f"already done: budget of {budget} candidates reached" in again.stderr, \
        again.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines_kill_rank_1(tmp_path, run: Path, budget: int, max_restarts: int, rdzv_id: str,
                             timeout: float) -> Tuple[List[str], List[int], List[str]]:
    """Two torchrun launches here, as two machines of one process each, searching into `run`;
    rank 1's process is killed (SIGKILL) after 2 candidates. Returns the command, and each
    launch's exit status and what it printed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--max-restarts", str(max_restarts), "--rdzv-backend", "c10d", "--rdzv-endpoint",
           f"127.0.0.1:{free_port()}", "--rdzv-id", rdzv_id, "-m", "nasfast.search", "--dataset", "camvid", "--preset",
           "tiny", "--budget", str(budget), "--out", str(run), "--no-progress", "--stage1-images", "32"]
    logs = [tmp_path / f"machine{i}.txt" for i in range(2)]
    machines = []
    for log in logs:  # the first holds the rendezvous's store, and mostly has rank 0 (the lower pid)
        machines.append(subprocess.Popen(cmd, env=SEARCH_ENV, stdout=log.open("w"), stderr=subprocess.STDOUT))
        time.sleep(1)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(read_records(str(run / "candidates.jsonl"))) < 2:
            time.sleep(0.05)
        victim = next(filter(None, (rank_process(machine.pid, 1) for machine in machines)), None)
        assert victim is not None and len(read_records(str(run / "candidates.jsonl"))) < budget
        os.kill(victim, signal.SIGKILL)
        for machine in machines:
            machine.wait(timeout=timeout)
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
    return cmd, [machine.returncode for machine in machines], [log.read_text() for log in logs]


def test_two_machines_run_one_search_through_a_c10d_rendezvous_and_survive_a_killed_process(tmp_path, camvid_root):
    """README's several machines, as two torchrun launches here (one process each) sharing RUN_DIR;
    rank 1's process is killed. The machine whose process lived did not count the restart
    (torchrun's restart count is per machine), so the two ranks waited for each other under
    different keys until the timeout."""
    run, budget = tmp_path / "run", 6
    cmd, codes, outputs = two_machines_kill_rank_1(tmp_path, run, budget, 1, "two-machines", 300)
    assert codes == [0, 0], [output[-3000:] for output in outputs]
    records = read_records(str(run / "candidates.jsonl"))
    assert sorted(r["index"] for r in records) == list(range(budget))
    assert {r["worker"] for r in records} == {0, 1}  # both machines evaluated candidates
    assert {r["restart"] for r in records} == {0, 1}  # after the restart, on both machines alike
    assert sum("top 6 of 6 candidates" in output for output in outputs) == 1  # rank 0's table, once
    # A later job of the same --rdzv-id, for a new search there: refused, and still refused after
    # its restart (it once took the search for its own then, and continued it).
    search = cmd[cmd.index("nasfast.search") - 1:]
    again = cmd[:cmd.index("--nnodes")] + ["--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                                            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id",
                                            "two-machines", "--max-restarts", "1"] + search
    refused = subprocess.run(again + ["--seed", "5"], env=SEARCH_ENV, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "resuming" not in refused.stderr, refused.stderr[-3000:]
    assert f"--out {run} already holds a search" in refused.stderr
    assert len(read_records(str(run / "candidates.jsonl"))) == budget
    assert json.loads((run / "config.json").read_text())["seed"] == 0


def test_when_one_machine_s_restarts_are_spent_the_other_stops_and_resume_goes_on(tmp_path, camvid_root):
    """torchrun stops no machine's processes when another machine's agent gives up: rank 0 waited for
    the lost rank for 24 hours. It takes a rank that has not beaten for a minute for gone."""
    run, budget = tmp_path / "run", 6
    _, codes, outputs = two_machines_kill_rank_1(tmp_path, run, budget, 0, "spent", distributed.SILENCE + 120)
    outputs = "".join(outputs)
    assert all(code != 0 for code in codes), outputs[-3000:]
    # Mostly rank 0 waits for rank 1 (gloo's receive from any rank does not see it end); if it was
    # sending to rank 1 then, gloo's error says so at once. Where rank 1's machine held the
    # rendezvous's store, the other torchrun fails on its own, stopping rank 0.
    assert re.search(r"(rank 1 has not been heard from for 60 s: its process or its machine is gone|relay failed: "
                     r"RuntimeError\(.*Connection closed by peer.*\)): \d+ candidates? saved; unless torchrun restarts",
                     outputs) or "RendezvousConnectionError" in outputs, outputs[-3000:]
    resumed = subprocess.run([sys.executable, "-m", "nasfast.search", "--resume", str(run), "--no-progress"],
                             env=SEARCH_ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(r["index"] for r in read_records(str(run / "candidates.jsonl"))) == list(range(budget))
