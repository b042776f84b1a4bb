"""The search on real CamVid with the tiny preset, as a user runs it: a separate process."""
import copy
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import nasfast.ops as ops
from conftest import has_tensorboard, tensorboard_scalars
from nasfast.data import EvalTransform
from nasfast.decoder import Decoder
from nasfast.genotype import ZOO
from nasfast.ops.memory import cpu_memory_cached
from nasfast.search.cache import FeatureCache
from nasfast.search.candidate import CandidateFailed
from nasfast.search.config import SearchConfig, preset
from nasfast.search.gate import Gate
from nasfast.search.polyak import Polyak
from nasfast.files import read_records
from nasfast.steps import LateLossCheck, NonFiniteLoss, check_loss, descend, segmentation_loss

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"index", "genotype", "reward", "stage1_reward", "stage2_reward", "gate", "status", "error",
          "params", "madds", "seconds"}


def search(*args, wait=True, without=()):
    """`python -m nasfast.search ARGS` with the tiny preset, its environment `without` those variables."""
    cmd = [sys.executable, "-m", "nasfast.search", "--dataset", "camvid", "--preset", "tiny", "--no-progress", *args]
    env = {k: v for k, v in dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1").items() if k not in without}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def comparable(records):
    return [{k: r[k] for k in ("index", "genotype", "reward", "stage1_reward", "stage2_reward", "gate", "status",
                               "params", "madds")} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, camvid_root):
    run = tmp_path_factory.mktemp("search") / "run"
    result = search("--out", str(run), "--budget", "4", "--seed", "3",
                    *(["--tensorboard"] if has_tensorboard() else []))
    assert result.returncode == 0, result.stderr
    return run, result


def test_run_writes_config_log_and_table(uninterrupted):
    run, result = uninterrupted
    records = read_records(str(run / "candidates.jsonl"))
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    started = (run / "config.json").stat().st_mtime  # written as the search began
    for r in records:
        assert FIELDS <= set(r) and r["status"] == "ok" and 0 < r["reward"] <= 1
        assert (r["worker"], r["host"], r["restart"]) == (0, socket.gethostname(), 0)  # who evaluated it, and when
        assert started - 1 <= r["finished"] <= (run / "candidates.jsonl").stat().st_mtime + 1
        assert r["gate"] in ("continue", "stop")
        assert (r["stage2_reward"] is None) == (r["gate"] == "stop")
        assert r["reward"] == (r["stage2_reward"] if r["gate"] == "continue" else r["stage1_reward"])
    config = SearchConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert config.seed == 3 and config.stage1_images == preset("tiny").stage1_images
    assert "top 4 of 4 candidates" in result.stdout and "stage-1 cache" in result.stderr


@pytest.mark.skipif(not has_tensorboard(), reason="needs the optional tensorboard package")
def test_tensorboard_gets_each_candidates_rewards(uninterrupted):
    run, _ = uninterrupted
    records = read_records(str(run / "candidates.jsonl"))
    scalars = tensorboard_scalars(run / "tensorboard")
    assert scalars["reward"] == [(r["index"], pytest.approx(r["reward"])) for r in records]
    best = [(i, max(r["reward"] for r in records[:i + 1])) for i in range(len(records))]  # on the indices' axis
    assert scalars["best reward"] == [(step, pytest.approx(value)) for step, value in best]


def test_sigkill_then_resume_gives_the_uninterrupted_candidates(uninterrupted, tmp_path, camvid_root):
    run, data = tmp_path / "run", tmp_path / "my camvid"
    data.symlink_to(camvid_root)
    process = search("--out", str(run), "--budget", "4", "--seed", "3", "--data-root", str(data), wait=False)
    log = run / "candidates.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_records(str(log))) < 2 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-candidate (the third), or right after the second
    process.wait()
    assert 1 <= len(read_records(str(log))) < 4
    result = search("--resume", str(run), "--budget", "4", without=["NASFAST_DATA"])  # the data are where they were
    assert result.returncode == 0, result.stderr
    assert f"camvid data in {data}: 367 training images" in result.stderr
    expected = comparable(read_records(str(uninterrupted[0] / "candidates.jsonl")))
    assert comparable(read_records(str(log))) == expected


KILL_POINTS = {  # code run before the search, making it kill itself at a chosen moment of its bookkeeping
    "logged, not saved": "import nasfast.search.loop as m\nsave = m.save_torch\n"
                         "m.save_torch = lambda state, *p: os.kill(os.getpid(), 9) if state['next_index'] == 2 "
                         "else save(state, *p)",
    "state half written": "replace, saves = os.replace, []\n"
                          "def kill_at_the_third_state(tmp, path):  # the search's first, then candidate 0's\n"
                          "    saves.extend([1] if path.endswith('state.pt') else [])\n"
                          "    os.kill(os.getpid(), 9) if len(saves) == 3 else replace(tmp, path)\n"
                          "os.replace = kill_at_the_third_state",
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_each_moment_of_the_bookkeeping_then_resume_gives_the_uninterrupted_candidates(point, uninterrupted,
                                                                                                 tmp_path, camvid_root):
    """The moments a kill by timing practically never hits: a candidate logged but the state not yet
    saved (it is evaluated again), and state.pt's temporary written but not yet in place."""
    run = tmp_path / "run"
    argv = ["nasfast.search", "--dataset", "camvid", "--preset", "tiny", "--no-progress", "--out", str(run),
            "--budget", "4", "--seed", "3"]
    code = f"import os, runpy, sys\n{KILL_POINTS[point]}\nsys.argv = {argv!r}\nrunpy.run_module('nasfast.search', " \
           f"run_name='__main__')"
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(read_records(str(run / "candidates.jsonl"))) == 2
    result = search("--resume", str(run), "--budget", "4")
    assert result.returncode == 0, result.stderr
    assert comparable(read_records(str(run / "candidates.jsonl"))) == \
        comparable(read_records(str(uninterrupted[0] / "candidates.jsonl")))
    assert not [name for name in os.listdir(run) if ".tmp" in name]


def test_ctrl_c_saves_and_exits_cleanly_and_a_running_search_is_not_resumed_twice(tmp_path, camvid_root):
    run = tmp_path / "run"
    process = search("--out", str(run), "--budget", "50", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_records(str(run / "candidates.jsonl"))) < 1:
        time.sleep(0.05)
    second = search("--resume", str(run), "--budget", "50")
    assert second.returncode == 2
    assert f"error: {run} is in use by another process (pid {process.pid})" in second.stderr
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "--resume" in output
    saved = torch.load(run / "state.pt", weights_only=False)
    assert saved["next_index"] == len(read_records(str(run / "candidates.jsonl"))) >= 1


def test_a_failing_candidate_is_logged_and_the_search_goes_on(tmp_path, monkeypatch):
    import nasfast.search.loop as loop

    def evaluate(genotype, index, context, gate, known):
        if index == 1:
            raise CandidateFailed("non-finite loss (nan) at stage 1, step 3")
        return dict(reward=0.5, stage1_reward=0.5, stage2_reward=None, gate="stop", params=1, madds=1, seconds=0.0)

    monkeypatch.setattr(loop, "evaluate_candidate", evaluate)
    search_run = loop.Search(str(tmp_path), preset("tiny"), lambda config, run_dir, recorded: None, budget=3)
    search_run.start()
    records = search_run.run(progress=False)
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert "non-finite loss" in records[1]["error"] and records[1]["reward"] is None
    assert [r["status"] for r in read_records(str(tmp_path / "candidates.jsonl"))] == ["ok", "failed", "ok"]


def test_a_failed_candidate_s_tensors_are_freed_before_the_gpu_cache_is_emptied(tmp_path, monkeypatch):
    """In the handler, the error's frames still held them: emptying the cache there gave nothing back
    to the processes that share the GPU."""
    import weakref
    import nasfast.search.loop as loop
    held = []

    def evaluate(genotype, index, context, gate, known):
        weights = torch.zeros(1000)
        held.append(weakref.ref(weights))
        raise torch.OutOfMemoryError("CUDA out of memory")
    alive_when_emptied = []
    monkeypatch.setattr(loop, "evaluate_candidate", evaluate)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_when_emptied.append(held[-1]() is not None))
    from nasfast.genotype import ZOO
    record = loop.evaluate_record(ZOO["arch0"], 0, None, lambda reward, coin: True)
    assert record["status"] == "failed" and alive_when_emptied == [False]


def test_non_finite_loss_fails_the_candidate():
    with pytest.raises(NonFiniteLoss, match="stage 2, step 7"):
        check_loss(torch.tensor(float("nan")), 2, 7)
    check_loss(torch.tensor(1.0), 1, 0)


def test_segmentation_loss_is_the_cross_entropy_of_the_upsampled_logits_plus_the_weighted_aux_ones():
    g = torch.Generator().manual_seed(0)
    logits, aux = torch.randn(2, 3, 4, 4, generator=g), [torch.randn(2, 3, 8, 8, generator=g)]
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    labels[0, :4] = 255

    def cross_entropy(x):
        up = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        return torch.nn.functional.cross_entropy(up, labels, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, aux, labels, 255, 0.15),
                               cross_entropy(logits) + 0.15 * cross_entropy(aux[0]))


def test_distillation_compares_the_logits_at_the_label_size():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    upsampled = torch.nn.functional.interpolate(student, size=(16, 16), mode="bilinear", align_corners=False)
    expected = ((upsampled - teacher) ** 2).mean()
    without = segmentation_loss(student, [], labels, 255, 0.15)
    with_teacher = segmentation_loss(student, [], labels, 255, 0.15, teacher, 0.3)
    torch.testing.assert_close(with_teacher - without, 0.3 * expected)


def test_losses_are_checked_one_step_late_with_their_own_step():
    check = LateLossCheck(1)
    assert check() is None  # nothing yet
    check.defer(torch.tensor(1.5), 0)
    assert check() == 1.5
    check.defer(torch.tensor(float("inf")), 1)
    with pytest.raises(NonFiniteLoss, match="stage 1, step 1"):
        check()  # before step 2, or after the last step


def test_gate_continues_above_the_running_mean_and_anneals():
    gate = Gate(p_start=0.9, p_end=0.1, anneal=4)
    assert gate.decide(0.5, coin=0.99)           # first: nothing to compare with
    assert gate.decide(0.6, coin=0.99)           # above the mean 0.5
    assert not gate.decide(0.1, coin=0.95)       # below the mean, and the coin is over p = 0.5
    assert gate.decide(0.1, coin=0.2)            # below the mean, but the coin is under p = 0.3
    assert gate.p() == pytest.approx(0.1)
    restored = Gate(0.9, 0.1, 4)
    restored.load_state_dict(gate.state_dict())
    assert restored.p() == gate.p() and restored.total == gate.total


def test_polyak_average():
    module = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    polyak = Polyak(module, decay=0.9)
    with torch.no_grad():
        module.weight.fill_(1.0)
    polyak.update()
    polyak.update()
    torch.testing.assert_close(polyak.average[0], torch.full((1, 2), 1 - 0.9 ** 2))
    assert torch.equal(module.weight, torch.ones(1, 2))  # until applied
    polyak.apply()
    assert torch.equal(module.weight, polyak.average[0])


def test_stage1_applies_its_polyak_average_to_the_decoder(monkeypatch):
    """SPEC section 5: the average is applied before validation, so stage 2 goes on from it."""
    import nasfast.search.candidate as candidate
    averages = []

    def recorded_polyak(module, decay):
        averages.append(Polyak(module, decay))
        return averages[-1]
    monkeypatch.setattr(candidate, "Polyak", recorded_polyak)
    g = torch.Generator().manual_seed(0)
    shapes = [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)]
    cache = FeatureCache([torch.randn(8, *s, generator=g) for s in shapes],
                         torch.randint(0, 3, (8, 16, 16), generator=g))
    config = preset("tiny")
    ctx = cached_context(config, cache)
    decoder = Decoder(ZOO["arch0"], in_channels=[s[0] for s in shapes], num_classes=3, channels=16,
                      sep_repeats=1, in_strides=(4, 8, 16, 32))
    before = [p.clone() for p in decoder.parameters()]
    reward = candidate.run_stage1(decoder, ctx, torch.Generator().manual_seed(1))
    assert 0 < reward <= 1 and len(averages) == 1
    trained = list(decoder.parameters())
    assert all(torch.equal(p, average) for p, average in zip(trained, averages[0].average))
    assert sum(not torch.equal(p, start) for p, start in zip(trained, before)) > len(before) // 2


@pytest.mark.skipif(not ops.available(), reason="native ops library not built")
def test_stage1_keeps_freed_memory_for_its_next_steps_and_frees_it_after(monkeypatch):
    import nasfast.search.candidate as candidate
    kept = []

    def descend_and_look(loss, *optimizers):
        descend(loss, *optimizers)
        kept.append(cpu_memory_cached())
    monkeypatch.setattr(candidate, "descend", descend_and_look)
    g = torch.Generator().manual_seed(0)
    shapes = [(24, 64, 64), (32, 32, 32), (96, 16, 16), (320, 8, 8)]
    cache = FeatureCache([torch.randn(8, *s, generator=g) for s in shapes],
                         torch.randint(0, 3, (8, 64, 64), generator=g))
    ctx = cached_context(preset("tiny"), cache)
    decoder = Decoder(ZOO["arch0"], in_channels=[s[0] for s in shapes], num_classes=3, channels=32)
    candidate.run_stage1(decoder, ctx, torch.Generator().manual_seed(1))
    assert len(kept) == 2 and min(kept) > 2 ** 20  # the steps' activations, 1 MiB blocks and more
    assert cpu_memory_cached() == 0


@pytest.mark.skipif(not ops.available(), reason="native ops library not built")
def test_building_the_stage1_cache_keeps_freed_memory_between_batches_and_frees_it_after():
    from nasfast.encoder import MobileNetV2Encoder
    from nasfast.search.cache import build_cache
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(3, 128, 128, generator=g), torch.zeros(128, 128, dtype=torch.long)) for _ in range(4)]
    kept = []

    def progress(starts):
        for start in starts:
            yield start
            kept.append(cpu_memory_cached())  # after the batch
    build_cache(pairs, MobileNetV2Encoder(), batch_size=2, progress=progress)
    assert len(kept) == 2 and min(kept) > 2 ** 20  # the encoder's activations, 1 MiB blocks and more
    assert cpu_memory_cached() == 0


def test_cache_is_memory_mapped_when_large(tmp_path):
    from nasfast.encoder import MobileNetV2Encoder
    from nasfast.search.cache import build_cache
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(3, 64, 64, generator=g), torch.randint(0, 11, (64, 64), generator=g)) for _ in range(5)]
    pairs[1][1].fill_(255)
    pairs[3][1][1:].fill_(255)  # one labelled row left
    encoder = MobileNetV2Encoder()
    in_memory = build_cache(pairs, encoder, batch_size=2)
    on_disk = build_cache(pairs, encoder, directory=str(tmp_path), memory_limit=0, batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "level0.npy", "level1.npy", "level2.npy",
                                                          "level3.npy"]
    index = torch.tensor([4, 0])
    for a, b in zip(in_memory.batch(index)[0], on_disk.batch(index)[0]):
        torch.testing.assert_close(a, b)
    assert torch.equal(in_memory.batch(index)[1], on_disk.batch(index)[1])
    for cache in (in_memory, on_disk):
        assert cache.labelled_images(255).tolist() == [True, False, True, True, True]


def test_a_cache_moved_to_a_device_gathers_the_same_batches_there(tmp_path):
    from nasfast.encoder import MobileNetV2Encoder
    from nasfast.search.cache import build_cache, open_cache
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(3, 64, 64, generator=g), torch.randint(0, 11, (64, 64), generator=g)) for _ in range(5)]
    teacher = lambda images: images[:, :2] * 3  # noqa: E731 (logits of two classes)
    build_cache(pairs, MobileNetV2Encoder(), teacher, directory=str(tmp_path), memory_limit=0, batch_size=2)
    on_disk = open_cache(str(tmp_path))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        moved = on_disk.to(device)
        assert not moved.on_disk and moved.nbytes() == on_disk.nbytes()
        index = torch.tensor([4, 0, 2])
        (feats, labels, logits), (expected_feats, expected_labels, expected_logits) = moved.batch(index), on_disk.batch(
            index)
        assert all(f.device.type == device.type and torch.equal(f.cpu(), e) for f, e in zip(feats, expected_feats))
        assert torch.equal(labels.cpu(), expected_labels) and labels.dtype == torch.long
        assert torch.equal(logits.cpu(), expected_logits)


def test_the_stage1_cache_moves_to_a_gpu_where_it_takes_under_a_sixteenth_of_its_free_memory(monkeypatch, capsys):
    from nasfast.search.cache import on_the_gpu_if_it_fits
    cache = stage1_cache()
    monkeypatch.setattr(FeatureCache, "to", lambda self, device: ("moved to", device))
    for free, moved in ((16 * cache.nbytes(), True), (16 * cache.nbytes() - 1, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 2 * free))
        kept = on_the_gpu_if_it_fits(cache, torch.device("cuda:1"), "meta-train")
        assert kept == (("moved to", torch.device("cuda:1")) if moved else cache)
        assert ("stage-1 cache: the meta-train features kept on cuda:1" in capsys.readouterr().err) == moved
    assert on_the_gpu_if_it_fits(cache, torch.device("cpu"), "meta-train") is cache


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_stage1_cache_is_kept_there(tmp_path, camvid_root, capsys):
    from nasfast.search.context import build_context
    config = preset("tiny")
    ctx = build_context(config, str(tmp_path), device="cuda")
    err = capsys.readouterr().err
    assert "stage-1 cache: the meta-train features kept on cuda" in err and "the meta-val features kept on" in err
    feats, labels, _ = ctx.stage1.batch(torch.arange(2))
    assert all(f.is_cuda for f in feats) and labels.is_cuda
    on_cpu = build_context(config, str(tmp_path / "cpu"), device="cpu")
    assert "kept on" not in capsys.readouterr().err
    assert torch.equal(on_cpu.stage1.batch(torch.arange(2))[1], labels.cpu())


def test_a_complete_memory_mapped_cache_is_reused_and_a_changed_one_rebuilt(tmp_path, camvid_root, capsys):
    from nasfast.search.context import build_context
    config = preset("tiny")
    config.stage1_images, config.val_images, config.memory_limit_gb = 6, 3, 0.0

    def context():
        ctx = build_context(config, str(tmp_path), device="cpu")
        return ctx, capsys.readouterr().err

    built, log = context()
    assert "reusing" not in log and (tmp_path / "cache" / "complete.json").exists()
    reused, log = context()
    assert "reusing" in log
    index = torch.arange(6)
    for a, b in zip(built.stage1.batch(index)[0], reused.stage1.batch(index)[0]):
        torch.testing.assert_close(a, b)
    assert torch.equal(built.stage1_val.batch(torch.arange(3))[1], reused.stage1_val.batch(torch.arange(3))[1])
    config.stage1_images = 5                        # other images: built again
    changed, log = context()
    assert "reusing" not in log and len(changed.stage1) == 5


def test_meta_val_follows_a_memory_mapped_meta_train_to_disk_so_that_a_resumed_search_reuses_both(
        tmp_path, camvid_root, capsys):
    from nasfast.search.context import build_context
    config = preset("tiny")
    config.stage1_images, config.val_images = 12, 2  # meta-val keeps its labels at their own size
    in_memory = build_context(config, str(tmp_path / "a"), device="cpu")
    stage1, val = in_memory.stage1.nbytes(), in_memory.stage1_val.nbytes()
    config.memory_limit_gb = (stage1 + val) / 2 / 1e9  # under meta-train's size, over meta-val's
    assert stage1 > config.memory_limit_gb * 1e9 > val
    built = build_context(config, str(tmp_path / "b"), device="cpu")
    assert built.stage1.on_disk and built.stage1_val.on_disk and "MB (memory-mapped)" in capsys.readouterr().err
    build_context(config, str(tmp_path / "b"), device="cpu")
    assert "stage-1 cache: reusing" in capsys.readouterr().err


def zero_bytes(path, start: int, count: int) -> None:
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(count))


def test_a_damaged_memory_mapped_cache_is_built_again(tmp_path, camvid_root, capsys):
    """A file of it cut short or overwritten, or its marker damaged, stopped every resume with an
    error that did not name the cache (mmap length..., EOF..., pickled data...); a file removed or
    copied from the other cache failed every candidate; bytes changed in place were taken as built."""
    from nasfast.search.context import build_context
    config = preset("tiny")
    config.stage1_images, config.val_images, config.memory_limit_gb = 6, 3, 0.0
    cache = tmp_path / "cache"
    built = build_context(config, str(tmp_path), device="cpu").stage1.batch(torch.arange(6))[0]
    level0 = cache / "stage1" / "level0.npy"
    for damage in (lambda: os.truncate(level0, 1000), lambda: level0.write_bytes(b"\0" * 8 + level0.read_bytes()[8:]),
                   lambda: (cache / "complete.json").write_text("{"), lambda: (cache / "val" / "level3.npy").unlink(),
                   lambda: shutil.copy(cache / "val" / "level0.npy", level0),  # another cache's images
                   lambda: zero_bytes(cache / "val" / "level2.npy", 2000, 400)):  # as a bad disk: the same size
        damage()
        capsys.readouterr()
        rebuilt = build_context(config, str(tmp_path), device="cpu").stage1.batch(torch.arange(6))[0]
        err = capsys.readouterr().err
        assert "warning: " in err and "is built again" in err and "reusing" not in err
        for a, b in zip(built, rebuilt):
            torch.testing.assert_close(a, b)
    build_context(config, str(tmp_path), device="cpu")
    assert "reusing" in capsys.readouterr().err


def test_a_memory_mapped_cache_reserves_its_disk_space_first(tmp_path, monkeypatch):
    """Sparse files on a full disk: the first write to a page without a block was a SIGBUS, the
    search's end without a word; the space is now taken at once, and a full disk an OSError."""
    import errno
    from nasfast.cli import message_of
    from nasfast.search import cache
    reserved = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: reserved.append((offset, length)))
    class Encoder(torch.nn.Module):
        def forward(self, images):
            return [images[:, :2, ::2, ::2]]

    pairs = [(torch.randn(3, 8, 8), torch.zeros(8, 8, dtype=torch.long)) for _ in range(3)]
    cache.build_cache(pairs, Encoder(), directory=str(tmp_path), memory_limit=0)
    sizes = sorted(os.path.getsize(tmp_path / name) for name in ("level0.npy", "labels.npy"))
    assert sorted(length for _, length in reserved) == sizes and all(offset == 0 for offset, _ in reserved)

    def fails(number):
        def fallocate(fd, offset, length):
            raise OSError(number, os.strerror(number))
        return fallocate

    monkeypatch.setattr(os, "posix_fallocate", fails(errno.ENOSPC))
    with pytest.raises(OSError) as raised:
        cache.build_cache(pairs, Encoder(), directory=str(tmp_path / "again"), memory_limit=0)
    assert message_of(raised.value) == f"No space left on device: {tmp_path / 'again' / 'level0.npy'}"
    monkeypatch.setattr(os, "posix_fallocate", fails(errno.EOPNOTSUPP))  # a file system that cannot reserve
    assert len(cache.build_cache(pairs, Encoder(), directory=str(tmp_path / "sparse"), memory_limit=0)) == 3


def test_a_cache_built_from_other_files_is_built_again(tmp_path, camvid_root, capsys):
    from nasfast.data import CamVid
    from nasfast.search.context import _image_indices, build_context
    copy = tmp_path / "camvid"  # the same files, linked one by one
    copy.mkdir()
    for entry in camvid_root.iterdir():
        if entry.is_dir():
            (copy / entry.name).mkdir()
        for file in (entry.iterdir() if entry.is_dir() else [entry]):
            (copy / file.relative_to(camvid_root)).symlink_to(file)
    config = preset("tiny")
    config.stage1_images, config.val_images, config.memory_limit_gb = 6, 3, 0.0

    def reused(root) -> bool:
        build_context(config, str(tmp_path / "run"), data_root=str(root), device="cpu")
        return "reusing" in capsys.readouterr().err

    assert not reused(camvid_root) and not reused(copy) and reused(copy)  # another data root: built again
    image = CamVid(copy).pairs[_image_indices(config, len(CamVid(copy)))[1][0]][0]
    shutil.copy(image, tmp_path / "replacement.png")
    os.replace(tmp_path / "replacement.png", image)  # the same pixels, but a new file
    assert not reused(copy) and reused(copy)
    marker = tmp_path / "run" / "cache" / "complete.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    assert not reused(copy)  # a cache of an earlier version, which did not record its files


def test_a_stage2_batch_larger_than_the_epoch_says_the_largest_that_fits():
    from nasfast.search.context import _image_indices
    config = preset("tiny")
    with pytest.raises(ValueError, match=r"^--stage2-batch-size 8 \(preset tiny's\) exceeds the 5 images of a stage-2 "
                                         r"epoch: give --stage2-batch-size 5 or less$"):  # maybe not given
        _image_indices(config, 6)  # one image for meta-val
    config.stage2.batch_size = 7
    with pytest.raises(ValueError, match=r"^--stage2-batch-size 7 exceeds"):
        _image_indices(config, 6)


def test_the_common_size_of_tiny_images_is_at_least_one_pixel_as_the_transforms_make_them():
    from nasfast.search.context import _common_size
    images = SimpleNamespace(image_size=lambda i: [(1, 1), (1, 2)][i])  # (width, height)
    assert _common_size(images, [0, 1]) == (2, 1)  # the labels'; the images' at scale 0.25 was (0, 0)
    image, label = EvalTransform(0.25, (2, 1))(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8), 0)
    assert image.shape == (3, 1, 1) and label.shape == (2, 1)


def test_each_stage_of_a_candidate_shows_its_steps_on_a_bar_of_their_number(tmp_path, camvid_root, monkeypatch,
                                                                            one_thread):
    """A candidate showed no progress: on a CPU, a paper-preset candidate runs for minutes."""
    import nasfast.search.candidate as candidate
    from nasfast.search.context import build_context
    bars = []

    def recorded_bar(batches, **options):
        bars.append((options, candidate_bar(batches, **options)))
        return bars[-1][1]
    candidate_bar = candidate.progress_bar
    monkeypatch.setattr(candidate, "progress_bar", recorded_bar)
    ctx = build_context(preset("tiny"), str(tmp_path / "run"), device="cpu", progress=True)
    assert ctx.step_bars and ctx.stage2_steps == 32 // 8  # the tiny preset: 32 images in batches of 8
    candidate.evaluate_candidate(ZOO["arch0"], 0, ctx, lambda reward, coin: True)
    assert [(options["desc"], options["disable"]) for options, _ in bars] == [("stage 1", False), ("stage 2", False)]
    assert [options["total"] for options, _ in bars] == [bar.n for _, bar in bars] == [2 * 48 // 8, 4]  # steps taken
    assert not build_context(preset("tiny"), str(tmp_path / "run2"), device="cpu", cache="build").step_bars  # torchrun


def test_a_stage_2_too_short_to_move_its_polyak_average_is_said(tmp_path, camvid_root, capsys):
    from nasfast.search.context import build_context, stage2_weight_note
    config = preset("tiny")  # 32 images in batches of 8 at decay 0.99: 0.99 ** 4 of stage 1's weights kept
    build_context(config, str(tmp_path / "run"), device="cpu", progress=False)
    assert ("note: stage 2 takes 4 steps (32 images in batches of 8), after which its Polyak average (decay 0.99) "
            "still keeps 96% of the weights stage 1 ended with") in capsys.readouterr().err
    assert stage2_weight_note(preset("paper"), 9524) is None  # PASCAL VOC's meta-train: 297 steps, 5% kept
    config.stage2.polyak_decay = 0.8  # 41%
    assert stage2_weight_note(config, 32) is None
    config.stage2.polyak_decay, config.stage2.epochs = 0.99, 80  # 320 steps
    assert stage2_weight_note(config, 32) is None


def test_kept_decoded_images_give_the_same_batches(tmp_path, camvid_root):
    from nasfast.search.context import build_context
    contexts = []
    for gigabytes in (0.0, 1.0):
        config = preset("tiny")
        config.stage1_images, config.val_images, config.stage2_images, config.image_cache_gb = 6, 3, 4, gigabytes
        config.stage2.batch_size = 2
        contexts.append(build_context(config, str(tmp_path / str(gigabytes)), device="cpu"))
    for batches in (lambda ctx: ctx.stage2_batches(5), lambda ctx: ctx.val_batches()):
        first, second = (list(batches(ctx)) for ctx in contexts)
        assert len(first) == len(second) > 0
        for (a, b), (c, d) in zip(first, second):
            assert torch.equal(a, c) and torch.equal(b, d)
    kept = [ctx.stage2_batches(5).dataset.dataset.kept_bytes for ctx in contexts]
    assert kept[0] == 0 and kept[1] > 0


def test_distillation_from_a_torchscript_teacher_and_time_budget(tmp_path, camvid_root):
    """The teacher: a model as nasfast.export writes it (the README says a trained one serves)."""
    from nasfast.export import main as export
    teacher = tmp_path / "teacher.pt"
    assert export(["--genotype", "arch1", "--num-classes", "11", "--out", str(teacher)]) == 0
    run = tmp_path / "run"
    result = search("--out", str(run), "--budget", "2", "--time-budget", "0.001s", "--teacher", str(teacher),
                    "--aux", "classifier")
    assert result.returncode == 0, result.stderr
    records = read_records(str(run / "candidates.jsonl"))
    assert len(records) == 1 and records[0]["status"] == "ok"  # any candidate spends the time budget: one ran
    config = json.loads((run / "config.json").read_text())
    assert config["teacher"] == str(teacher) and config["aux"] == "classifier"
    assert "teacher" in result.stderr  # the cache reports the teacher's logits


def test_ctrl_c_during_the_bookkeeping_takes_effect_after_the_state_is_saved(tmp_path, monkeypatch):
    import nasfast.search.loop as loop

    monkeypatch.setattr(loop, "evaluate_candidate", lambda g, i, c, gate, known: dict(
        reward=0.5, stage1_reward=0.5, stage2_reward=None, gate="stop", params=1, madds=1, seconds=0.0))
    real_save = loop.save_torch

    def save_and_get_interrupted(state, path):
        if state["next_index"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the state is being written
        real_save(state, path)

    monkeypatch.setattr(loop, "save_torch", save_and_get_interrupted)
    search_run = loop.Search(str(tmp_path), preset("tiny"), lambda config, run_dir, recorded: None, budget=5)
    search_run.start()
    with pytest.raises(KeyboardInterrupt):
        search_run.run(progress=False)
    saved = torch.load(tmp_path / "state.pt", weights_only=False)
    assert saved["next_index"] == 2 == len(read_records(str(tmp_path / "candidates.jsonl")))


def test_polyak_update_is_a_lerp_of_every_parameter_exactly():
    """The multi-tensor update gives the values of one lerp_ per parameter."""
    from nasfast.encoder import MobileNetV2Encoder as encoder
    decoder = Decoder("arch1", in_channels=encoder.channels, num_classes=5, channels=8, sep_repeats=1, aux="cell",
                      in_strides=encoder.strides)
    polyak, expected = Polyak(decoder, decay=0.9), [p.detach().clone() for p in decoder.parameters()]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            for p, average in zip(decoder.parameters(), expected):
                p.add_(torch.randn(p.shape, generator=g))
                average.lerp_(p, 0.1)
        polyak.update()
    assert len(expected) > 100 and all(torch.equal(a, b) for a, b in zip(polyak.average, expected))


def test_polyak_averages_only_the_parameters_and_the_module_keeps_its_statistics():
    """Batch-norm running statistics are not parameters: applying the average leaves the trained ones."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    polyak = Polyak(module, decay=0.9)
    start = [p.detach().clone() for p in module.parameters()]
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        module(3 * torch.randn(16, 3, generator=g) + 1)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)
        polyak.update()
    statistics = {name: b.clone() for name, b in module[1].named_buffers()}
    polyak.apply()
    bn = module[1]
    assert not torch.equal(bn.running_mean, torch.zeros(4)) and not torch.equal(bn.running_var, torch.ones(4))
    assert all(torch.equal(b, statistics[name]) for name, b in bn.named_buffers()) and len(statistics) == 3
    for p, first in zip(module.parameters(), start):
        torch.testing.assert_close(p, 0.9 * (first + 0.1) + 0.1 * (first + 2))


@pytest.fixture
def one_thread():
    """These models are tiny: on a busy 2-core machine, more threads only add waiting (conftest's
    restore_torch_threads sets the count back)."""
    torch.set_num_threads(1)


STAGE1_SHAPES = [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)]


def tiny_decoder(in_channels=tuple(s[0] for s in STAGE1_SHAPES)) -> Decoder:
    """The same weights whichever tests ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Decoder(ZOO["arch0"], in_channels=list(in_channels), num_classes=3, channels=16, sep_repeats=1,
                       in_strides=(4, 8, 16, 32))


def images_context(config, **more) -> SimpleNamespace:
    """What run_stage2 reads of a search's context (but its images), 3 classes."""
    return SimpleNamespace(config=config, device=torch.device("cpu"), num_classes=3, ignore_index=255, exclude=(),
                           stage2_steps=None, step_bars=False, **more)


def cached_context(config, cache: FeatureCache, **more) -> SimpleNamespace:
    """What run_stage1 reads of a search's context, with `cache` for meta-train and meta-val, 3 classes."""
    return images_context(config, stage1=cache, stage1_val=cache, stage1_labelled=cache.labelled_images(255), **more)


def recording(monkeypatch, candidate):
    """The Polyak averages run_stage1/2 make, and a copy of the model each trained, taken before averaging."""
    averages, trained, models = [], [], []

    def recorded_polyak(module, decay):
        averages.append(Polyak(module, decay))
        models.append(module)  # what the stage's loop then trains
        return averages[-1]

    def train_and_keep(*args):
        candidate_train(*args)
        trained.append(copy.deepcopy(models[-1]).eval())
    candidate_train = candidate._train
    monkeypatch.setattr(candidate, "Polyak", recorded_polyak)
    monkeypatch.setattr(candidate, "_train", train_and_keep)
    return averages, trained


def test_stage1_reward_is_the_polyak_averages_score_and_the_decoder_takes_its_statistics(monkeypatch, one_thread):
    import nasfast.search.candidate as candidate
    from nasfast.metrics import metrics_of
    averages, trained = recording(monkeypatch, candidate)
    g = torch.Generator().manual_seed(0)
    cache = FeatureCache([torch.randn(8, *s, generator=g) for s in STAGE1_SHAPES],
                         torch.randint(0, 3, (8, 16, 16), generator=g))
    config = preset("tiny")
    config.stage1.epochs, config.stage1.decoder_lr = 4, 0.05
    ctx = cached_context(config, cache)
    decoder = tiny_decoder()
    reward = candidate.run_stage1(decoder, ctx, torch.Generator().manual_seed(1))

    feats, labels, _ = cache.batch(torch.arange(8))
    with torch.no_grad():
        score = lambda forward: metrics_of(forward, [(feats, labels)], 3)["reward"]
        averaged, raw = score(decoder), score(trained[0])  # the decoder holds the average now
    assert all(torch.equal(p, average) for p, average in zip(decoder.parameters(), averages[0].average))
    assert raw != pytest.approx(averaged, abs=1e-3)
    assert reward == pytest.approx(averaged, abs=1e-6)
    statistics = [(name, b) for name, b in decoder.named_buffers() if "running_mean" in name]
    assert statistics and not any(torch.equal(b, torch.zeros_like(b)) for _, b in statistics)
    for (name, b), kept in zip(decoder.named_buffers(), trained[0].buffers()):
        assert torch.equal(b, kept), name


class TinyEncoder(torch.nn.Module):
    """Four feature maps at MobileNet-v2's strides, from a conv each: stage 2 in a fraction of a second."""
    channels = (8, 8, 8, 8)

    def __init__(self):
        super().__init__()
        self.levels = torch.nn.ModuleList(torch.nn.Conv2d(3, 8, 1) for _ in self.channels)

    def forward(self, x):
        return [conv(torch.nn.functional.avg_pool2d(x, stride)) for conv, stride in zip(self.levels, (4, 8, 16, 32))]


def test_stage2_trains_encoder_and_decoder_at_their_rates_and_rewards_the_polyak_average(monkeypatch, one_thread):
    import nasfast.search.candidate as candidate
    from nasfast.metrics import metrics_of
    from nasfast.model import Segmenter
    averages, trained = recording(monkeypatch, candidate)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 3, (4, 64, 64), generator=g)
    val = [(torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 3, (4, 64, 64), generator=g))]
    config = preset("tiny")
    config.stage2.encoder_lr, config.stage2.decoder_lr = 0.02, 0.05
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = TinyEncoder()
    decoder = tiny_decoder(TinyEncoder.channels)
    ctx = images_context(config, make_encoder=lambda: encoder, stage2_batches=lambda seed: [(images, labels)],
                         val_batches=lambda: val)
    reference = Segmenter(copy.deepcopy(encoder), copy.deepcopy(decoder)).train()
    segmentation_loss(*reference.forward_with_aux(images), labels, 255, config.aux_weight).backward()

    reward = candidate.run_stage2(decoder, ctx, seed=7)

    def steps_taken(module, start, step_of_gradient) -> int:
        """How many of `start`'s parameters the loss reaches; each must have taken its expected step."""
        reached = [(after, before) for after, before in zip(module.parameters(), start.parameters())
                   if before.grad is not None and before.grad.abs().max() > 1e-6]
        for after, before in reached:
            torch.testing.assert_close(after, before - step_of_gradient(before.grad), rtol=0, atol=1e-5)
        return len(reached)
    assert steps_taken(trained[0].encoder, reference.encoder, lambda grad: 0.02 * grad) >= 2  # SGD's first step
    assert steps_taken(trained[0].decoder, reference.decoder, lambda grad: 0.05 * grad / (grad.abs() + 1e-8)) > \
        len(list(decoder.parameters())) // 2  # Adam's first step
    with torch.no_grad():
        score = lambda model: metrics_of(lambda x: model.decoder(model.encoder(x)), val, 3)["reward"]
        averaged, raw = score(SimpleNamespace(encoder=encoder, decoder=decoder)), score(trained[0])  # averaged now
    assert raw != pytest.approx(averaged, abs=1e-3)
    assert reward == pytest.approx(averaged, abs=1e-6)


@pytest.mark.parametrize("stage", [1, 2])
def test_a_non_finite_loss_in_a_real_stage_fails_the_candidate_with_its_reason(stage, one_thread):
    """The stages' loss check was tested only alone, or through a stub that raised its error."""
    import nasfast.search.loop as loop
    g = torch.Generator().manual_seed(0)
    shapes = [(8,) + s[1:] for s in STAGE1_SHAPES]  # TinyEncoder's channels, so that stage 2 can run
    feats = [torch.randn(8, *s, generator=g) for s in shapes]
    if stage == 1:
        feats[3][:] = float("nan")  # every image: the first step's loss is NaN
    images = torch.full((4, 3, 64, 64), float("nan") if stage == 2 else 0.0)
    labels = torch.randint(0, 3, (4, 64, 64), generator=g)
    ctx = cached_context(preset("tiny"), FeatureCache(feats, torch.randint(0, 3, (8, 16, 16), generator=g)),
                         in_channels=list(TinyEncoder.channels), in_strides=(4, 8, 16, 32), make_encoder=TinyEncoder,
                         stage2_batches=lambda seed: [(images, labels)], val_batches=lambda: [(images, labels)])
    record = loop.evaluate_record(ZOO["arch0"], 0, ctx, lambda reward, coin: True)  # the gate lets it go on
    assert (record["status"], record["reward"]) == ("failed", None)
    assert f"non-finite loss (nan) at stage {stage}, step 0" in record["error"], record["error"]
    assert (record["gate"] == "continue") == (stage == 2)


def test_paper_preset_is_the_spec_protocol():
    """SPEC section 4: "PPO (clipped ratio, ε = 0.1), Adam lr 1e-4, ... baseline (decay 0.95)". Section 5:
    "10% val"; stage 1 "4,000 images ... 5 epochs, Adam lr 3e-3 ... 0.3 · mean squared error ... (decay 0.9)";
    "p starts at 0.9"; stage 2 "1 epoch; encoder SGD (momentum 0.9, lr 1e-3), decoder Adam (3e-3); Polyak decay
    0.99; no distillation"; the reward on meta-val (all of it), a stage-2 epoch all of meta-train. Section 3:
    "C = 48 during search", R "is 1 during search", auxiliary cells with "λ_aux = 0.15 in search"."""
    config = preset("paper").to_dict()
    found = {**{k: v for k, v in config.items() if k not in ("stage1", "stage2")},
             **{f"{stage}.{k}": v for stage in ("stage1", "stage2") for k, v in config[stage].items()}}
    spec = {"val_fraction": 0.1, "stage1_images": 4000, "val_images": 0, "stage2_images": 0, "strategy": "ppo",
            "stage1.epochs": 5, "stage1.decoder_lr": 3e-3, "stage1.polyak_decay": 0.9, "stage1.distillation": 0.3,
            "stage1.encoder_lr": 0.0,
            "stage2.epochs": 1, "stage2.encoder_lr": 1e-3, "stage2.decoder_lr": 3e-3, "stage2.polyak_decay": 0.99,
            "stage2.distillation": 0.0,
            "gate_p_start": 0.9, "ppo_clip": 0.1, "controller_lr": 1e-4, "baseline_decay": 0.95,
            "channels": 48, "sep_repeats": 1, "aux": "cell", "aux_weight": 0.15}
    assert {k: found[k] for k in spec} == spec


def test_the_search_gives_its_strategy_and_gate_the_configs_values(tmp_path):
    import nasfast.search.loop as loop
    config = preset("tiny")
    config.controller_lr, config.ppo_clip, config.ppo_epochs, config.baseline_decay = 5e-4, 0.3, 2, 0.8
    config.entropy_weight, config.gate_p_start, config.gate_p_end, config.gate_anneal = 0.01, 0.7, 0.2, 9
    search_run = loop.Search(str(tmp_path), config, lambda *a: None, budget=1)
    strategy, gate = search_run.strategy, search_run.gate
    assert [group["lr"] for group in strategy.optimizer.param_groups] == [5e-4]
    assert (strategy.clip, strategy.ppo_epochs, strategy.baseline_decay, strategy.entropy_weight) == (0.3, 2, 0.8, 0.01)
    assert (gate.p_start, gate.p_end, gate.anneal) == (0.7, 0.2, 9)


def stage1_cache(teacher: bool = False) -> FeatureCache:
    g = torch.Generator().manual_seed(0)
    return FeatureCache([torch.randn(8, *s, generator=g) for s in STAGE1_SHAPES],
                        torch.randint(0, 3, (8, 16, 16), generator=g),
                        torch.randn(8, 3, 16, 16, generator=g) if teacher else None)


def recording_steps(monkeypatch, candidate):
    """Per descent step: the loss, and each optimizer's (parameter, gradient) pairs after the step."""
    steps = []

    def descend_and_record(loss, *optimizers):
        value = loss.item()
        descend(loss, *optimizers)
        steps.append((value, [[(p.detach().clone(), None if p.grad is None else p.grad.clone())
                               for group in o.param_groups for p in group["params"]] for o in optimizers]))
    monkeypatch.setattr(candidate, "descend", descend_and_record)
    return steps


def polyak_of(start, steps_params, decay):
    """The Polyak average of parameters `start` updated with every step's parameters."""
    average = [p.clone() for p in start]
    for params in steps_params:
        average = [a + (1 - decay) * (p - a) for a, p in zip(average, params)]
    return average


def test_stage1_takes_adam_steps_at_its_rate_and_averages_every_step_with_its_decay(monkeypatch, one_thread):
    import nasfast.search.candidate as candidate
    averages, _ = recording(monkeypatch, candidate)
    steps = recording_steps(monkeypatch, candidate)
    config = preset("tiny")
    config.stage1.epochs, config.stage1.decoder_lr, config.stage1.polyak_decay = 4, 0.02, 0.8
    cache = stage1_cache()
    ctx = cached_context(config, cache)
    start = [p.detach().clone() for p in tiny_decoder().parameters()]
    candidate.run_stage1(tiny_decoder(), ctx, torch.Generator().manual_seed(1))
    assert len(steps) == 4 and [len(optimizers) for _, optimizers in steps] == [1] * 4
    first = steps[0][1][0]
    reached = [(before, after, grad) for before, (after, grad) in zip(start, first)
               if grad is not None and grad.abs().max() > 1e-6]
    assert len(reached) > len(start) // 2
    for before, after, grad in reached:  # Adam's first step: lr · g / (|g| + eps)
        torch.testing.assert_close(after, before - 0.02 * grad / (grad.abs() + 1e-8), rtol=0, atol=1e-6)
    assert len(averages) == 1 and averages[0].decay == 0.8
    expected = polyak_of(start, [[p for p, _ in optimizers[0]] for _, optimizers in steps], 0.8)
    for average, want in zip(averages[0].average, expected):
        torch.testing.assert_close(average, want, rtol=0, atol=1e-6)


def test_stage1_skips_the_batches_of_images_without_a_labelled_pixel(monkeypatch, one_thread):
    """A batch all ignore_index has a mean loss of 0 / 0: a NaN that would fail the candidate."""
    import nasfast.search.candidate as candidate
    steps = recording_steps(monkeypatch, candidate)
    config = preset("tiny")
    config.stage1.epochs, config.stage1.batch_size = 1, 2
    cache = stage1_cache()
    cache.labels[[0, 1, 2, 3, 5]] = 255  # images 4 and 6, 7 keep their labels
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1)).tolist()
    expected = sum(any(i in (4, 6, 7) for i in order[start:start + 2]) for start in range(0, 8, 2))
    assert 0 < expected < 4
    candidate.run_stage1(tiny_decoder(), cached_context(config, cache), torch.Generator().manual_seed(1))
    assert len(steps) == expected and all(math.isfinite(loss) for loss, _ in steps)


def test_stage2_skips_the_batches_without_a_labelled_pixel(monkeypatch, one_thread):
    import nasfast.search.candidate as candidate
    steps = recording_steps(monkeypatch, candidate)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 3, (4, 64, 64), generator=g)
    labels[:2] = 255
    ctx = images_context(preset("tiny"), make_encoder=TinyEncoder, val_batches=lambda: [(images, labels)],
                         stage2_batches=lambda seed: [(images[:2], labels[:2]), (images[2:], labels[2:])])
    candidate.run_stage2(tiny_decoder(TinyEncoder.channels), ctx, seed=7)
    assert len(steps) == 1 and math.isfinite(steps[0][0])


def test_stage1_loss_adds_the_distillation_to_the_cached_teacher_logits(monkeypatch, one_thread):
    """SPEC section 5: stage 1's loss adds 0.3 · MSE(student logits, teacher logits), the teacher's cached."""
    import nasfast.search.candidate as candidate
    steps = recording_steps(monkeypatch, candidate)
    config = preset("tiny")
    config.stage1.epochs = 1
    cache = stage1_cache(teacher=True)
    ctx = cached_context(config, cache)
    feats, labels, teacher = cache.batch(torch.arange(8))
    with torch.no_grad():
        outputs = tiny_decoder().train().forward_with_aux(feats)
        distilled = segmentation_loss(*outputs, labels, 255, config.aux_weight, teacher, 0.3).item()
        plain = segmentation_loss(*outputs, labels, 255, config.aux_weight).item()
    candidate.run_stage1(tiny_decoder(), ctx, torch.Generator().manual_seed(1))
    assert distilled - plain > 0.1
    assert steps[0][0] == pytest.approx(distilled, abs=1e-5)


def test_stage2_encoder_sgd_has_momentum_and_the_average_its_decay_at_every_step(monkeypatch, one_thread):
    """SPEC section 5: stage 2's encoder SGD has momentum 0.9; its Polyak decay is stage 2's (0.99 by default)."""
    import nasfast.search.candidate as candidate
    averages, _ = recording(monkeypatch, candidate)
    steps = recording_steps(monkeypatch, candidate)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 3, (4, 64, 64), generator=g)
    config = preset("tiny")
    config.stage2.encoder_lr, config.stage2.polyak_decay = 0.02, 0.95
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = TinyEncoder()
    start = [p.detach().clone() for p in encoder.parameters()]
    ctx = images_context(config, make_encoder=lambda: encoder, val_batches=lambda: [(images, labels)],
                         stage2_batches=lambda seed: [(images[:2], labels[:2]), (images[2:], labels[2:])])
    candidate.run_stage2(tiny_decoder(TinyEncoder.channels), ctx, seed=7)
    assert len(steps) == 2
    (first, _), (second, _) = (optimizers for _, optimizers in steps)
    reached = 0
    for p0, (p1, g1), (p2, g2) in zip(start, first, second):
        if g1 is None or g2 is None:
            continue
        reached += 1
        torch.testing.assert_close(p1, p0 - 0.02 * g1, rtol=0, atol=1e-6)
        torch.testing.assert_close(p2, p1 - 0.02 * (0.9 * g1 + g2), rtol=0, atol=1e-6)
    assert reached >= 2 and max((0.02 * 0.9 * g).abs().max() for _, g in first if g is not None) > 1e-4
    assert len(averages) == 1 and averages[0].decay == 0.95
    expected = polyak_of(start, [[p for p, _ in optimizers[0]] for _, optimizers in steps], 0.95)
    for average, want in zip(averages[0].average[:len(expected)], expected):  # the encoder's come first
        torch.testing.assert_close(average, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("go", [False, True])
def test_a_stopped_candidates_reward_is_its_stage1_reward_and_stage2_is_skipped(monkeypatch, one_thread, go):
    """SPEC section 5: "A stopped candidate's reward is its stage-1 reward"; one that continues gets stage 2's."""
    import nasfast.search.candidate as candidate

    def stage2(decoder, ctx, seed):
        assert go, "stage 2 of a stopped candidate"
        time.sleep(0.2)
        return 0.77
    monkeypatch.setattr(candidate, "run_stage2", stage2)
    decisions = []

    def decide(reward, coin):
        decisions.append((reward, coin))
        return go
    record = candidate.evaluate_candidate(ZOO["arch0"], 0, stage1_context(), decide)
    assert len(decisions) == 1 and 0 <= decisions[0][1] < 1
    assert 0 < record["stage1_reward"] == decisions[0][0] <= 1
    assert record["gate"] == ("continue" if go else "stop")
    assert record["stage2_reward"] == (0.77 if go else None)
    assert record["reward"] == (0.77 if go else record["stage1_reward"])
    assert 0 < record["stage1_seconds"] < record["seconds"]  # where a candidate's time goes
    assert (0.2 <= record["stage2_seconds"] < record["seconds"] - record["stage1_seconds"]) if go else \
        record["stage2_seconds"] is None


def stage1_context() -> SimpleNamespace:
    """What evaluate_candidate reads of a search's context up to stage 2, on a small cache."""
    cache = stage1_cache()
    return cached_context(preset("tiny"), cache, in_channels=[s[0] for s in STAGE1_SHAPES], in_strides=(4, 8, 16, 32))


def test_a_candidate_failing_in_stage2_is_logged_with_its_size_stage1_reward_and_gate_decision(monkeypatch,
                                                                                               one_thread):
    """The gate counted its stage-1 reward in its mean: the log shows it too (SPEC section 6)."""
    import nasfast.search.candidate as candidate
    import nasfast.search.loop as loop

    def stage2(decoder, ctx, seed):
        raise RuntimeError("CUDA out of memory")
    monkeypatch.setattr(candidate, "run_stage2", stage2)
    gate = Gate()
    record = loop.evaluate_record(ZOO["arch0"], 0, stage1_context(), gate.decide)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: CUDA out of memory"
    assert record["gate"] == "continue" and 0 < record["stage1_reward"] == gate.total
    assert record["params"] > 0 and record["madds"] > 0
    assert record["reward"] is None and record["stage2_reward"] is None


def gate_after(rewards, anneal=1000) -> Gate:
    gate = Gate(p_start=0.9, p_end=0.1, anneal=anneal)
    for reward in rewards:
        gate.decide(reward, coin=0.0)
    return gate


@pytest.mark.parametrize("reward, go", [(0.5 + 1e-6, True), (0.5, False), (0.5 - 1e-6, False)])
def test_gate_continues_only_strictly_above_the_arithmetic_mean(reward, go):
    """With a coin over p, only a reward above the mean 0.5 of (0.25, 1.0, 0.25) continues."""
    gate = gate_after([0.25, 1.0, 0.25])
    assert gate.total / gate.count == 0.5
    assert gate.decide(reward, coin=0.999) == go


def test_gate_anneals_p_linearly():
    assert [gate_after([0.5] * n, anneal=8).p() for n in (0, 2, 4, 6, 8, 12)] == \
        pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1, 0.1])


@pytest.mark.parametrize("n, fraction, seed", [(367, 0.1, 0), (367, 0.1, 5), (100, 0.3, 1), (21, 0.1, 2)])
def test_meta_train_and_meta_val_are_disjoint_and_cover_the_training_images(n, fraction, seed):
    from nasfast.search.context import split_indices
    train, val = split_indices(n, fraction, seed)
    assert not set(train) & set(val) and sorted(train + val) == list(range(n))
    assert len(val) == round(n * fraction)


def test_meta_val_is_drawn_at_random():
    from nasfast.search.context import _image_indices, split_indices
    splits = [split_indices(367, 0.1, seed)[1] for seed in (0, 1)]
    assert splits[0] != splits[1] and splits[0] != list(range(37))
    config = preset("tiny")  # scores 16 of the 37 meta-val images: at random too, not the first 16
    _, _, val, _ = _image_indices(config, 367)
    meta_val = split_indices(367, config.val_fraction, config.seed)[1]
    assert len(val) == 16 and val != meta_val[:16] and max(val) >= 163  # CamVid's third sequence starts at 163


@pytest.mark.parametrize("stage1_images, val_images", [(48, 16), (1000, 0), (330, 37)])
def test_stage1_images_come_from_meta_train_and_scored_images_from_meta_val(stage1_images, val_images):
    from nasfast.search.context import _image_indices, split_indices
    config = preset("tiny")
    config.stage1_images, config.val_images, config.seed = stage1_images, val_images, 4
    train, stage1, val, _ = _image_indices(config, 367)
    meta_train, meta_val = split_indices(367, config.val_fraction, config.seed)
    assert sorted(train) == meta_train and not set(train) & set(val)
    assert set(stage1) <= set(train) and len(set(stage1)) == min(stage1_images, len(train))
    assert set(val) <= set(meta_val) and len(set(val)) == (val_images or len(meta_val))
