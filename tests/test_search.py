"""The search on real CamVid with the tiny preset, as a user runs it: a separate process."""
import copy
import json
import os
import shutil
import signal
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
    for r in records:
        assert FIELDS <= set(r) and r["status"] == "ok" and 0 < r["reward"] <= 1
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
    best = [(i + 1, max(r["reward"] for r in records[:i + 1])) for i in range(len(records))]
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

    def evaluate(genotype, index, context, gate):
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
    polyak.update(module)
    polyak.update(module)
    torch.testing.assert_close(polyak.average.weight, torch.full((1, 2), 1 - 0.9 ** 2))


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
    ctx = SimpleNamespace(config=config, stage1=cache, stage1_val=cache, device=torch.device("cpu"), num_classes=3,
                          ignore_index=255, exclude=())
    decoder = Decoder(ZOO["arch0"], in_channels=[s[0] for s in shapes], num_classes=3, channels=16,
                      sep_repeats=1, in_strides=(4, 8, 16, 32))
    before = [p.clone() for p in decoder.parameters()]
    reward = candidate.run_stage1(decoder, ctx, torch.Generator().manual_seed(1))
    assert 0 < reward <= 1 and len(averages) == 1
    trained = list(decoder.parameters())
    assert all(torch.equal(p, average) for p, average in zip(trained, averages[0].average.parameters()))
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
    ctx = SimpleNamespace(config=preset("tiny"), stage1=cache, stage1_val=cache, device=torch.device("cpu"),
                          num_classes=3, ignore_index=255, exclude=())
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
    encoder = MobileNetV2Encoder()
    in_memory = build_cache(pairs, encoder, batch_size=2)
    on_disk = build_cache(pairs, encoder, directory=str(tmp_path), memory_limit=0, batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "level0.npy", "level1.npy", "level2.npy",
                                                          "level3.npy"]
    index = torch.tensor([4, 0])
    for a, b in zip(in_memory.batch(index)[0], on_disk.batch(index)[0]):
        torch.testing.assert_close(a, b)
    assert torch.equal(in_memory.batch(index)[1], on_disk.batch(index)[1])


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


def test_a_cache_built_from_other_files_is_built_again(tmp_path, camvid_root, capsys):
    from nasfast.data import CamVid
    from nasfast.search.context import _images, build_context
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
    image = CamVid(copy).pairs[_images(config, len(CamVid(copy)))[1][0]][0]
    shutil.copy(image, tmp_path / "replacement.png")
    os.replace(tmp_path / "replacement.png", image)  # the same pixels, but a new file
    assert not reused(copy) and reused(copy)
    marker = tmp_path / "run" / "cache" / "complete.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    assert not reused(copy)  # a cache of an earlier version, which did not record its files


def test_the_common_size_of_tiny_images_is_at_least_one_pixel_as_the_transforms_make_them():
    from nasfast.search.context import _common_size
    images = SimpleNamespace(load=lambda i: (None, np.zeros([(1, 1), (2, 1)][i])))
    assert _common_size(images, [0, 1], 0.25) == (1, 1)  # was (0, 0): an error naming no file or option


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
    from nasfast import create_model
    teacher = tmp_path / "teacher.pt"
    torch.jit.script(create_model("arch1", 11).eval()).save(str(teacher))
    run = tmp_path / "run"
    result = search("--out", str(run), "--budget", "2", "--time-budget", "1s", "--teacher", str(teacher),
                    "--aux", "classifier")
    assert result.returncode == 0, result.stderr
    records = read_records(str(run / "candidates.jsonl"))
    assert len(records) == 1 and records[0]["status"] == "ok"  # the time budget ended it after one
    config = json.loads((run / "config.json").read_text())
    assert config["teacher"] == str(teacher) and config["aux"] == "classifier"
    assert "teacher" in result.stderr  # the cache reports the teacher's logits


def test_ctrl_c_during_the_bookkeeping_takes_effect_after_the_state_is_saved(tmp_path, monkeypatch):
    import nasfast.search.loop as loop

    monkeypatch.setattr(loop, "evaluate_candidate", lambda g, i, c, gate: dict(
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


def test_polyak_copies_the_buffers_and_averages_only_the_parameters():
    """Batch-norm running statistics are not parameters: the average takes the trained module's own."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    polyak = Polyak(module, decay=0.9)
    start = [p.detach().clone() for p in module.parameters()]
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        module(3 * torch.randn(16, 3, generator=g) + 1)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)
        polyak.update(module)
    trained, averaged = module[1], polyak.average[1]
    assert not torch.equal(trained.running_mean, torch.zeros(4)) and not torch.equal(trained.running_var, torch.ones(4))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(averaged, name), getattr(trained, name)), name
    for average, first in zip(polyak.average.parameters(), start):
        torch.testing.assert_close(average, 0.9 * (first + 0.1) + 0.1 * (first + 2))


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


def recording(monkeypatch, candidate):
    """The Polyak averages run_stage1/2 make, and a copy of the model each trained, taken before averaging."""
    averages, trained = [], []

    def recorded_polyak(module, decay):
        averages.append(Polyak(module, decay))
        return averages[-1]

    def train_and_keep(model, *args):
        candidate_train(model, *args)
        trained.append(copy.deepcopy(model).eval())
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
    ctx = SimpleNamespace(config=config, stage1=cache, stage1_val=cache, device=torch.device("cpu"), num_classes=3,
                          ignore_index=255, exclude=())
    decoder = tiny_decoder()
    reward = candidate.run_stage1(decoder, ctx, torch.Generator().manual_seed(1))

    feats, labels, _ = cache.batch(torch.arange(8))
    with torch.no_grad():
        score = lambda forward: metrics_of(forward, [(feats, labels)], 3)["reward"]
        averaged, raw = score(averages[0].average), score(trained[0])
    assert raw != pytest.approx(averaged, abs=1e-3)
    assert reward == pytest.approx(averaged, abs=1e-6)
    statistics = [(name, b) for name, b in decoder.named_buffers() if "running_mean" in name]
    assert statistics and not any(torch.equal(b, torch.zeros_like(b)) for _, b in statistics)
    for (name, b), average in zip(decoder.named_buffers(), averages[0].average.buffers()):
        assert torch.equal(b, average), name


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
    ctx = SimpleNamespace(config=config, device=torch.device("cpu"), num_classes=3, ignore_index=255, exclude=(),
                          make_encoder=lambda: encoder, stage2_batches=lambda seed: [(images, labels)],
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
    assert steps_taken(encoder, reference.encoder, lambda grad: 0.02 * grad) >= 2  # SGD's first step: no momentum yet
    assert steps_taken(decoder, reference.decoder, lambda grad: 0.05 * grad / (grad.abs() + 1e-8)) > \
        len(list(decoder.parameters())) // 2  # Adam's first step
    with torch.no_grad():
        score = lambda model: metrics_of(lambda x: model.decoder(model.encoder(x)), val, 3)["reward"]
        averaged, raw = score(averages[0].average), score(trained[0])
    assert raw != pytest.approx(averaged, abs=1e-3)
    assert reward == pytest.approx(averaged, abs=1e-6)
