"""The command lines of python -m nasfast.train and nasfast.evaluate: one-line errors that write
nothing, --resume taking its settings from the run, Ctrl-C, and the help."""
import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from PIL import Image

from nasfast import create_model, evaluate, files, train, trainer
from nasfast.cell import Cell
from nasfast.checkpoint import classifier_weights, load_checkpoint
from nasfast.cli import UsageError, run
from nasfast.files import SEARCH_FILES
from nasfast.genotype import ZOO


def train_cli(*argv) -> int:
    return run(train.main, train.PROG, [str(a) for a in argv])


def evaluate_cli(*argv) -> int:
    return run(evaluate.main, evaluate.PROG, [str(a) for a in argv])


def one_error_line(capsys) -> str:
    """The error, one line; before it at most train's lines on the run it resumes, the design and the
    data it read."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines()
             if not re.fullmatch(r"\w+ data in .*: .* images|design: .*|resuming .* at epoch .*", line)]
    assert len(lines) == 1 and "error: " in err, err
    return lines[0] + "\n"


def tiny_run_config(**changes) -> dict:
    config = {"genotype": ZOO["arch0"].to_list(), "dataset": "camvid", **asdict(trainer.PRESETS["tiny"])}
    return json.loads(json.dumps({**config, **changes}))


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "log.jsonl", "state.pt", "candidates.jsonl"])
def test_a_new_run_refuses_a_directory_that_holds_a_run(tmp_path, capsys, name):
    (tmp_path / name).write_text("")
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path) == 2
    searched = name in SEARCH_FILES
    assert ("holds a search" if searched else "already holds a training run: continue it with --resume") \
        in one_error_line(capsys)
    assert os.listdir(tmp_path) == [name]


def test_config_json_alone_blocks_a_new_run_unless_it_is_of_an_unstarted_training(tmp_path, capsys):
    trainer.check_new_run_directory(str(tmp_path))  # an empty directory is fine
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "camvid", "budget": 4}))  # a search's
    assert train_cli("--genotype", "arch0", "--out", tmp_path) == 2
    assert "already holds a training run" in one_error_line(capsys)
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config()))
    trainer.check_new_run_directory(str(tmp_path))  # no error


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train_cli("--genotype", "arch0", "--out", tmp_path / "file") == 2
    assert "is a file, not a directory" in one_error_line(capsys)


def test_resume_refuses_each_option_that_changes_the_training(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config()))
    (tmp_path / "last.pt").write_bytes(b"")
    assert train_cli("--out", tmp_path, "--resume", "--epochs", 3, "--genotype", "arch1", "--preset", "fast",
                     "--batch-size", 8, "--dataset", "voc") == 2
    err = one_error_line(capsys)
    assert "--resume: --genotype arch1 differs from the run's arch0, --dataset voc differs from the run's camvid, " \
           "--epochs 3 differs from the run's 2, --preset fast differs from the run's tiny (config.json); to train " \
           f"on from its weights for more epochs: --init {tmp_path / 'last.pt'} in another --out (the schedule " \
           "starts again)" in err
    assert (tmp_path / "last.pt").read_bytes() == b""


def test_step_schedule_multiplies_the_learning_rates_after_each_listed_epoch():
    poly = trainer.TrainConfig(epochs=4)
    assert [trainer.lr_factor(poly, step, 10) for step in (0, 20)] == [1.0, 0.5 ** 0.9]
    steps = replace(poly, lr_steps=(1, 3), step_factor=0.5)
    assert [trainer.lr_factor(steps, step, 10) for step in (0, 9, 10, 29, 30, 39)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_auxiliary_weights_decrease_over_equal_quarters_of_the_training():
    """SPEC 7: "auxiliary cells with weights decreasing over the stages (0.3, 0.25, 0.2, 0.15 in the paper)"."""
    config = replace(trainer.PRESETS["paper"], epochs=8)
    assert [trainer.aux_weight(config, epoch) for epoch in range(8)] == [0.3, 0.3, 0.25, 0.25, 0.2, 0.2, 0.15, 0.15]
    config = replace(config, epochs=4)
    assert [trainer.aux_weight(config, epoch) for epoch in range(4)] == [0.3, 0.25, 0.2, 0.15]


def test_the_paper_preset_scales_images_at_random_in_0_5_to_2():
    """SPEC 7: "random scale [0.5, 2.0], mirror, crop and pad"."""
    assert trainer.PRESETS["paper"].scale_range == (0.5, 2.0)


def param_ids(params) -> list:
    return sorted(id(p) for p in params)


@pytest.mark.parametrize("decoder_optimizer", ["adam", "sgd"])
def test_the_encoder_trains_with_sgd_and_the_decoder_with_adam_or_sgd(decoder_optimizer):
    """SPEC 7: "SGD encoder / Adam or SGD decoder"; the rates of the search's stage 2 (SPEC 5): encoder SGD,
    momentum 0.9, lr 1e-3; decoder 3e-3 (an SGD decoder has momentum 0.9 too)."""
    model = create_model("arch0", num_classes=3, channels=8, sep_repeats=1, aux="cell")
    paper = trainer.PRESETS["paper"]
    assert (paper.encoder_lr, paper.decoder_lr, paper.decoder_optimizer) == (1e-3, 3e-3, "adam")
    for config in (paper, replace(paper, encoder_lr=0.02, decoder_lr=0.05)):
        encoder_opt, decoder_opt = trainer.make_optimizers(model, replace(config, decoder_optimizer=decoder_optimizer))
        assert type(encoder_opt) is torch.optim.SGD
        assert type(decoder_opt) is {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[decoder_optimizer]
        for optimizer, module, lr in ((encoder_opt, model.encoder, config.encoder_lr),
                                      (decoder_opt, model.decoder, config.decoder_lr)):  # the aux heads are in it
            assert param_ids(p for group in optimizer.param_groups for p in group["params"]) == \
                param_ids(module.parameters())
            assert {group["lr"] for group in optimizer.param_groups} == {lr}
            if type(optimizer) is torch.optim.SGD:
                assert {group["momentum"] for group in optimizer.param_groups} == {0.9}


def record_results(monkeypatch, name: str) -> list:
    """What each call of nasfast.trainer's `name` returns, from now on."""
    results, real = [], getattr(trainer, name)

    def recorded(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]
    monkeypatch.setattr(trainer, name, recorded)
    return results


def test_training_uses_auxiliary_cells_random_scales_and_the_first_quarter_s_aux_weight(tmp_path, capsys,
                                                                                       monkeypatch):
    """SPEC 7: the model trains with auxiliary cells, weighted 0.3 in the first quarter, on images scaled at random
    in [0.5, 2.0] and mirrored; at the first step the learning rates are the configured ones."""
    models, augments = record_results(monkeypatch, "create_model"), record_results(monkeypatch, "TrainTransform")
    optimizers, first_step = record_results(monkeypatch, "make_optimizers"), {}

    def first_loss(logits, aux, labels, ignore_index, aux_weight):
        first_step.update(aux=aux, aux_weight=aux_weight,
                          lrs=[[group["lr"] for group in o.param_groups] for o in optimizers[0]])
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "segmentation_loss", first_loss)
    assert train_folder(folder_dataset(tmp_path / "data"), tmp_path / "run") == 130
    assert "interrupted in epoch 1" in capsys.readouterr().err
    (model,), (augment,) = models, augments
    assert len(model.decoder.aux) == 3 and all(isinstance(head.cell, Cell) for head in model.decoder.aux)
    assert len(first_step["aux"]) == 3 and first_step["aux_weight"] == 0.3
    assert augment.scale_range == (0.5, 2.0) and augment.mirror
    tiny = trainer.PRESETS["tiny"]
    assert [set(lrs) for lrs in first_step["lrs"]] == [{tiny.encoder_lr}, {tiny.decoder_lr}]  # poly: factor 1 at 0


@pytest.mark.parametrize("argv, message", [
    (["--lr-steps", "2", "1"], "--lr-steps 2 1: expected increasing epochs below the 200 trained"),
    (["--lr-steps", "200"], "--lr-steps 200: expected increasing epochs below the 200 trained"),
    (["--step-factor", "0.1"], "--step-factor needs --lr-steps"),
])
def test_bad_step_schedules_are_refused(tmp_path, capsys, argv, message):
    assert train_cli("--genotype", "arch0", "--out", tmp_path / "run", *argv) == 2
    assert message in one_error_line(capsys) and not (tmp_path / "run").exists()


def test_learning_rates_and_seed_given_are_the_runs_and_resume_keeps_them(tmp_path, capsys):
    """The training's seed had no option: every training from the command line used seed 0."""
    args = train.build_parser().parse_args(["--genotype", "arch0", "--out", str(tmp_path / "run"), "--encoder-lr",
                                            "0.02", "--decoder-lr", "5e-2", "--decoder-optimizer", "sgd",
                                            "--seed", "3"])
    _, config, _ = train.new_run(args)
    assert (config.encoder_lr, config.decoder_lr, config.decoder_optimizer, config.seed) == (0.02, 0.05, "sgd", 3)
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config(encoder_lr=0.02, seed=3)))
    (tmp_path / "last.pt").write_bytes(b"")
    assert train_cli("--resume", tmp_path, "--encoder-lr", "0.01", "--decoder-lr", "0.003", "--seed", "3") == 2
    assert one_error_line(capsys).endswith("--resume: --encoder-lr 0.01 differs from the run's 0.02 (config.json)\n")
    assert train_cli("--resume", tmp_path, "--seed", "4") == 2
    assert one_error_line(capsys).endswith("--resume: --seed 4 differs from the run's 3 (config.json)\n")
    with pytest.raises(SystemExit):
        train_cli("--resume", tmp_path, "--encoder-lr", "0")
    assert "argument --encoder-lr: must be greater than 0.0, got 0" in capsys.readouterr().err


def test_resume_refuses_another_schedule(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config(lr_steps=[1])))
    (tmp_path / "last.pt").write_bytes(b"")
    assert train_cli("--out", tmp_path, "--resume", "--lr-steps", "1", "--step-factor", "0.5") == 2
    assert "--step-factor 0.5 differs from the run's 0.1 (config.json)" in one_error_line(capsys)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in tiny_run_config().items() if k != "lr_steps"}))
    assert train_cli("--resume", tmp_path, "--lr-steps", "90", "120") == 2  # a run from before the step schedule
    assert "--lr-steps 90 120 differs from the run's none (config.json)" in one_error_line(capsys)


@pytest.mark.parametrize("edit, message", [
    ({"epochs": 3.0}, "epochs is 3.0: expected a whole number, got '3.0'"),
    ({"scale": None}, "scale is None: expected a number, got 'None'"),
    ({"aux_weights": []}, "aux_weights is empty: expected a weight for each part of the training"),
    ({"lr_steps": 5}, "lr_steps is 5: expected a list"),
    ({"scale_range": [0.5, 1, 2]}, "scale_range is [0.5, 1, 2]: expected 2 values"),
    ({"scale_range": [2, 1]}, "scale_range is [2.0, 1.0]: the first must not be larger than the second"),
    ({"decoder_optimizer": "rmsprop"}, "decoder_optimizer is 'rmsprop': choose one of adam, sgd")])
def test_resume_refuses_settings_edited_into_what_a_training_cannot_take(tmp_path, capsys, edit, message):
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config(**edit)))
    (tmp_path / "last.pt").write_bytes(b"")
    assert train_cli("--resume", tmp_path) == 2
    assert one_error_line(capsys).endswith(f"--resume: {tmp_path / 'config.json'} holds settings a training cannot "
                                           f"take ({message}): it was edited?\n")
    assert trainer.TrainConfig(epochs="3", lr_steps=[1]) == trainer.TrainConfig(epochs=3, lr_steps=(1,))  # as typed


def test_the_run_directory_comes_from_out_or_resume(tmp_path, capsys):
    assert train_cli("--genotype", "arch0") == 2
    assert "--out OUT is required (or --resume OUT to continue a run)" in one_error_line(capsys)
    assert train_cli("--resume", tmp_path / "a", "--out", tmp_path / "b") == 2
    assert f"--resume {tmp_path / 'a'} and --out {tmp_path / 'b'} name two directories: give one" in \
        one_error_line(capsys)
    assert train_cli("--resume", tmp_path, "--out", tmp_path) == 2  # the same directory twice: fine, no run there
    assert f"--resume: no {tmp_path / 'last.pt'}" in one_error_line(capsys)


def test_resume_without_last_pt_says_what_to_do(tmp_path, capsys):
    assert train_cli("--out", tmp_path, "--resume") == 2
    assert f"--resume: no {tmp_path / 'last.pt'}\n" in one_error_line(capsys)
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config()))
    assert train_cli("--resume", tmp_path) == 2
    assert f"no {tmp_path / 'last.pt'} (the run stopped before its first epoch ended: start it again without " \
           f"--resume)" in one_error_line(capsys)
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')  # its last.pt lost: not "start it again",
    (tmp_path / "best.pt").write_bytes(b"")                               # which refuses a run's directory
    assert train_cli("--resume", tmp_path) == 2
    assert f"no {tmp_path / 'last.pt'}, though {tmp_path / 'log.jsonl'} records 2 epochs: last.pt was removed or " \
           f"lost, so the run cannot go on; train in another --out (--init {tmp_path / 'best.pt'} starts from its " \
           f"best weights)" in one_error_line(capsys)


def interrupt_on_call(monkeypatch, name: str, call: int) -> None:
    """Ctrl-C from the call-th call of nasfast.trainer's `name` on."""
    calls, real = [], getattr(trainer, name)

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) >= call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, name, interrupted)


def test_the_log_says_how_long_each_epoch_waited_for_its_batches(tmp_path, camvid_root, monkeypatch):
    """A slow loader shows in data_seconds (the tiny preset: 4 batches of 8 an epoch)."""
    class SlowBatches:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch in self.loader:
                time.sleep(0.25)
                yield batch

    loader_of = trainer.training_loader

    def slow_loader(*args):
        loader, order = loader_of(*args)
        return SlowBatches(loader), order

    monkeypatch.setattr(trainer, "training_loader", slow_loader)
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path / "run", "--no-progress") == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(1.0 <= r["data_seconds"] < r["seconds"] - r["val_seconds"] for r in log)


def test_ctrl_c_says_where_the_run_stands_and_resume_finishes_it_as_if_never_stopped(tmp_path, capsys, camvid_root,
                                                                                     monkeypatch):
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", straight, "--no-progress") == 0
    interrupt_on_call(monkeypatch, "descend", 5)  # epoch 2's first step: tiny has 32 images, batches of 8
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", out, "--no-progress") == 130
    assert (f"interrupted in epoch 2: {out / 'last.pt'} holds epoch 1; continue with python -m nasfast.train "
            f"--resume {out}") in capsys.readouterr().err
    monkeypatch.undo()
    assert train_cli("--resume", out, "--no-progress") == 0  # as printed; --out OUT --resume works too
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert all(0 < r["val_seconds"] < r["seconds"] for r in log)  # the validation is part of the epoch
    captured = capsys.readouterr()
    assert json.loads(captured.out)["best_checkpoint"] == str(out / "best.pt")
    assert captured.err.startswith(f"resuming {out} at epoch 2 of 2 (last.pt)\n")
    assert f"best val mIoU {max(r['val_miou'] for r in log):.4f}: {out / 'best.pt'}" in captured.err
    straight_log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [(r["loss"], r["val_miou"]) for r in log] == [(r["loss"], r["val_miou"]) for r in straight_log]
    resumed, uninterrupted = (torch.load(d / "last.pt", weights_only=True) for d in (out, straight))
    for key in ("model", "encoder_optimizer", "decoder_optimizer"):
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0)


@pytest.fixture
def stopped_after_epoch_1(tmp_path, camvid_root, monkeypatch):
    """A tiny run (2 epochs) stopped in its second: OUT."""
    interrupt_on_call(monkeypatch, "descend", 5)
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path / "run", "--no-progress") == 130
    monkeypatch.undo()
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["remove", "cut"])
def test_resume_says_a_lost_best_checkpoint_is_lost_and_keeps_the_best_of_the_epochs_after(damage,
                                                                                           stopped_after_epoch_1,
                                                                                           capsys):
    """A later epoch's weights were saved as best.pt under the lost epoch's mIoU, or a damaged best.pt kept."""
    out, best = stopped_after_epoch_1, stopped_after_epoch_1 / "best.pt"
    epoch_1 = json.loads((out / "log.jsonl").read_text())["val_miou"]
    if damage == "remove":
        best.unlink()
    else:
        best.write_bytes(best.read_bytes()[:1000])
    capsys.readouterr()
    assert train_cli("--resume", out, "--no-progress") == 0
    err = capsys.readouterr().err
    reason = f"checkpoint {best} not found" if damage == "remove" else f"{best} is damaged: a zip archive"
    assert f"warning: {reason}" in err and (f": the weights of the best epoch so far (val mIoU {epoch_1:.4f}) are "
                                            "lost; best.pt will hold the best of the epochs from here on\n") in err
    epoch_2 = json.loads((out / "log.jsonl").read_text().splitlines()[1])["val_miou"]
    assert torch.load(best, weights_only=True)["best_miou"] == pytest.approx(epoch_2)  # its own epoch's
    assert f"best val mIoU {epoch_2:.4f}: {best}" in err


def test_resume_from_a_damaged_last_checkpoint_says_the_run_cannot_go_on(stopped_after_epoch_1, capsys):
    last = stopped_after_epoch_1 / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert train_cli("--resume", stopped_after_epoch_1, "--no-progress") == 2
    assert one_error_line(capsys).endswith(
        f"{last} is damaged: a zip archive, as torch.save writes, that torch.load cannot read (RuntimeError); the run "
        f"cannot go on: train in another --out (--init {stopped_after_epoch_1 / 'best.pt'} starts from its best "
        f"weights)\n")


@pytest.mark.parametrize("epoch", [1, 2])  # tiny has 2: resumed to train on, or resumed finished
def test_a_stop_between_saving_an_epoch_and_logging_it_loses_no_line(epoch, tmp_path, capsys, camvid_root,
                                                                     monkeypatch):
    interrupt_on_call(monkeypatch, "append_record", epoch)  # the epoch saved, not logged
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress") == 130
    monkeypatch.undo()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["record"]
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write('{"epoch": 1, "lo')  # and a line torn by the stop
    torn = (tmp_path / "log.jsonl").read_text()
    assert train_cli("--resume", tmp_path, "--no-progress") == 0
    copy = tmp_path / "log.jsonl.damaged"  # where the repair drops bytes (epoch 2's torn line begins the one restored)
    kept = f"warning: {tmp_path / 'log.jsonl'} as it was: {copy}\n"
    assert (kept in capsys.readouterr().err) == (epoch == 1) == copy.exists()
    assert epoch == 2 or copy.read_text() == torn
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log[epoch - 1] == saved


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_while_an_epoch_is_saved_waits_for_its_files(sig, tmp_path, capsys, camvid_root, monkeypatch):
    """Ctrl-C just after last.pt was written said "nothing was saved; ... or remove it"; SIGTERM
    killed the training without a word."""
    save, handlers = trainer.save_torch, [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]

    def save_then_signal(*args):
        save(*args)
        os.kill(os.getpid(), sig)
    monkeypatch.setattr(trainer, "save_torch", save_then_signal)
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress") == 130
    assert f"interrupted in epoch 2: {tmp_path / 'last.pt'} holds epoch 1; continue with " in capsys.readouterr().err
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [0]
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # given back


def test_the_log_is_mended_as_the_checkpoint_has_it(tmp_path, capsys):
    log = tmp_path / "log.jsonl"

    def mended(checkpoint):
        return trainer.mended_log(str(log), log.read_text() if log.exists() else "", checkpoint)

    lines = [json.dumps({"epoch": e, "val_miou": e / 10}) + "\n" for e in range(4)]
    log.write_text("".join(lines))
    assert mended({"epoch": 3}) is None  # as it should be (a checkpoint of before "record")
    assert mended({"epoch": 3, "record": {"epoch": 3, "val_miou": 0.3}}) is None
    log.write_text(lines[0] + lines[1][:9] + lines[2] + "[3]\n" + lines[3])  # epoch 1 torn, 2 appended to it
    record = {"epoch": 2, "val_miou": 0.2}  # and a line not of a record; epoch 3's is after the checkpoint's
    assert mended({"epoch": 2, "record": record}) == lines[0] + lines[2]
    assert "warning: " + f"{log}: 3 lines dropped (torn, damaged, or of epochs after last.pt's)" in \
        capsys.readouterr().err
    log.unlink()
    assert mended({"epoch": 0, "record": {"epoch": 0}}) == '{"epoch": 0}\n'


def test_ctrl_c_in_the_first_epoch_leaves_a_directory_to_start_again(tmp_path, capsys, camvid_root, monkeypatch):
    interrupt_on_call(monkeypatch, "descend", 1)
    for _ in range(2):  # the second start is not refused
        assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress") == 130
        assert "interrupted in epoch 1: nothing was saved; run the same command" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == [".lock", "config.json"]
    assert train_cli("--out", tmp_path, "--resume") == 2
    assert "start it again without --resume" in one_error_line(capsys)


def test_a_disk_full_as_the_first_epoch_is_saved_leaves_a_directory_to_start_again(tmp_path, capsys, camvid_root,
                                                                                   monkeypatch):
    real_write = files.write_atomic

    def disk_full_at_last_pt(path, data):
        if path.endswith("last.pt"):  # best.pt, written first, is there
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real_write(path, data)
    monkeypatch.setattr(files, "write_atomic", disk_full_at_last_pt)
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress") == 2
    assert one_error_line(capsys).endswith(f"error: No space left on device: {tmp_path / 'last.pt'}; nothing was "
                                           f"saved; run the same command to start again in {tmp_path}, or remove it\n")
    monkeypatch.undo()
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress", "--epochs",
                     "1") == 0


def test_a_log_gets_no_progress_line_at_each_step(tmp_path, capsys, camvid_root):
    """Each step's loss redrew the bar: a line a step in a log, where a line a minute is meant."""
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--epochs", "1", "--out", tmp_path) == 0
    assert "batch/s" not in capsys.readouterr().err  # a short epoch: no line at all


def test_a_run_folder_removed_during_training_is_not_said_to_hold_a_checkpoint(tmp_path, capsys, camvid_root,
                                                                                monkeypatch):
    real_write = files.write_atomic

    def removed_at_epoch_2(path, data):
        if path.endswith("last.pt") and os.path.exists(path):  # epoch 2's
            shutil.rmtree(os.path.dirname(path))
        real_write(path, data)
    monkeypatch.setattr(files, "write_atomic", removed_at_epoch_2)
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path / "run", "--no-progress",
                     "--epochs", "2") == 2
    assert capsys.readouterr().err.endswith(f"{tmp_path / 'run' / 'last.pt'}, which held epoch 1, is gone: there is "
                                            f"nothing to continue from\n")


@pytest.mark.parametrize("module, argv", [
    (train, ["--epochs", "0"]), (train, ["--epochs", "-2"]), (train, ["--batch-size", "0"]),
    (train, ["--batch-size", "1"]),
    (train, ["--workers", "-1"]), (evaluate, ["--scale", "0"]), (evaluate, ["--scale", "inf"]),
    (evaluate, ["--limit", "-100"]), (evaluate, ["--workers", "-1"])])
def test_numbers_out_of_range_are_refused_while_parsing(module, argv, capsys):
    required = ["--out", "x"] if module is train else ["--checkpoint", "x"]
    with pytest.raises(SystemExit) as stop:
        module.build_parser().parse_args(required + argv)
    assert stop.value.code == 2 and "must be" in capsys.readouterr().err


def test_bad_data_and_genotypes_are_reported_without_writing(tmp_path, capsys, camvid_root):
    out = tmp_path / "out"
    assert train_cli("--genotype", "arch0", "--out", out, "--data-root", tmp_path / "nope") == 2
    assert f"error: --data-root {tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    assert train_cli("--genotype", "arch0", "--out", out, "--preset", "tiny", "--batch-size", 1000) == 2
    assert "--batch-size 1000 exceeds the 32 training images: give --batch-size 32 or less" in one_error_line(capsys)
    (tmp_path / "latin1.json").write_bytes(b"\xff\xfe[")
    (tmp_path / "broken.json").write_text("[[1, 2]")
    for name, problem in (("latin1.json", "is not UTF-8 text"),
                          ("broken.json", "genotype '[[1, 2]' is not valid JSON")):
        assert train_cli("--genotype", tmp_path / name, "--out", out) == 2
        line = one_error_line(capsys)
        assert f"genotype file {tmp_path / name}" in line and problem in line
    assert not out.exists()


def test_evaluate_refuses_what_is_not_a_training_checkpoint(tmp_path, capsys):
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"next_index": 3, "elapsed": 1.0, "strategy": {"strategy": "random"}}, tmp_path / "state.pt")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "script.pt"))
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:2000])
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # whole, but a pickled module
    torch.save({**dict.fromkeys(("genotype", "num_classes", "channels", "sep_repeats")),  # bytes overwritten
                "model": {"w": torch.tensor([1.0, float("nan")])}}, tmp_path / "nan.pt")
    for name, reason in (("nope.pt", "checkpoint {} not found"),
                         ("cut.pt", "{} is damaged: a zip archive, as torch.save writes, that torch.load cannot read "
                                    "(RuntimeError); copy it again, or use another checkpoint"),
                         ("module.pt", "{} is not a checkpoint of python -m nasfast.train (torch.load cannot read it"),
                         ("random.pt", "{} is not a checkpoint of python -m nasfast.train (torch.load cannot read it"),
                         ("state.pt", "{} is not a checkpoint of python -m nasfast.train (it lacks model, genotype"),
                         ("script.pt", "{} is not a checkpoint of python -m nasfast.train (it is a TorchScript file"),
                         ("nan.pt", "{} is damaged: its weights hold non-finite values; copy it again")):
        assert evaluate_cli("--checkpoint", tmp_path / name) == 2
        assert reason.format(tmp_path / name) in one_error_line(capsys)


def flip_a_stored_byte(path) -> str:
    """Flips the lowest bit of a float in the middle of the largest tensor of torch.save's (or
    torch.jit.save's) zip archive `path`, as a bad disk or copy may: the member's CRC-32 then
    differs. Returns the member's name."""
    with zipfile.ZipFile(path) as archive:  # tensors are stored, not compressed (TorchScript's code may be)
        info = max((i for i in archive.infolist() if i.compress_type == zipfile.ZIP_STORED), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's
    data[info.header_offset + 30 + name_length + extra_length + info.file_size // 8 * 4] ^= 1
    path.write_bytes(bytes(data))
    return info.filename


def test_a_checkpoint_whose_bytes_changed_after_saving_is_damaged(unlabelled_validation, tmp_path, capsys):
    """torch.load does not check the CRC-32s of torch.save's archive: a flipped byte loaded as a wrong weight."""
    damaged = tmp_path / "best.pt"
    damaged.write_bytes((unlabelled_validation[3] / "best.pt").read_bytes())
    member = flip_a_stored_byte(damaged)
    assert re.fullmatch(r".*/data/\d+", member) and "model" in torch.load(damaged, weights_only=True)
    message = (f"{damaged} is damaged: its bytes differ from what was saved (checksum of {member}); copy it again, "
               f"or use another checkpoint")
    with pytest.raises(UsageError) as error:
        load_checkpoint(str(damaged))
    assert str(error.value) == message
    assert evaluate_cli("--checkpoint", damaged) == 2
    assert one_error_line(capsys).endswith(f"error: {message}\n")


def test_a_checkpoint_saved_without_crc_32s_still_loads(unlabelled_validation, tmp_path):
    """torch.serialization.set_crc32_options(False) stores 0 as every member's CRC-32."""
    checkpoint = load_checkpoint(str(unlabelled_validation[3] / "best.pt"))
    was = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(checkpoint, tmp_path / "no_crc.pt")
    finally:
        torch.serialization.set_crc32_options(was)
    with zipfile.ZipFile(tmp_path / "no_crc.pt") as archive:
        assert {info.CRC for info in archive.infolist()} == {0}
    loaded = load_checkpoint(str(tmp_path / "no_crc.pt"))
    assert loaded["epoch"] == checkpoint["epoch"] and all(torch.equal(v, loaded["model"][k])
                                                          for k, v in checkpoint["model"].items())


def test_help_explains_the_presets_and_every_option():
    text = train.build_parser().format_help()
    for name, config in trainer.PRESETS.items():
        assert f"{name:<6} {config.epochs:>6} {config.batch_size:>5} {config.crop_size:>4} {config.scale:>5}" in text
    text = " ".join(text.split())  # as argparse wraps it
    assert "SPEC section 7 at our epochs, batch and crop" in text and "the encoder always uses SGD" in text
    assert "the encoder's base learning rate (SGD, momentum 0.9) [0.001]" in text
    assert "no progress bar" in text and "voc (PASCAL VOC 2012 + SBD)" in text
    text = " ".join(evaluate.build_parser().format_help().split())
    assert "auto (a GPU when there is one)" in text and "voc: train_aug, train or val" in text
    assert "[the checkpoint's]" in text


def test_resume_names_a_search_or_a_foreign_config_json(tmp_path, capsys):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "state.pt").write_text("")
    assert train_cli("--out", tmp_path / "search", "--resume") == 2
    assert "holds a search (state.pt), not a training run" in one_error_line(capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"a": 1}')
    (tmp_path / "other" / "last.pt").write_text("")
    assert train_cli("--out", tmp_path / "other", "--resume") == 2
    assert "is not the settings of a training run" in one_error_line(capsys)


def test_arch_is_another_name_of_genotype():
    args = train.build_parser().parse_args(["--arch", "arch1", "--out", "x"])
    assert args.genotype == "arch1"


def folder_dataset(root, classes=2, images=8, unlabelled=(), lists=None):
    """A folder dataset of random 64x64 images named im0, im1, ...; the labels of the images in
    `unlabelled` are all 255 (ignore). lists: {split: image numbers} for <split>.txt files."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"class{c}\n" for c in range(classes)))
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        label = np.full((64, 64), 255, np.uint8) if i in unlabelled else rng.integers(0, classes, (64, 64), np.uint8)
        Image.fromarray(label).save(root / "labels" / f"im{i}.png")
    for split, numbers in (lists or {}).items():
        (root / f"{split}.txt").write_text("".join(f"im{i}\n" for i in numbers))
    return root


def train_folder(root, out, *options):
    return train_cli("--genotype", "arch0", "--preset", "tiny", "--dataset", "folder", "--data-root", root,
                     "--out", out, "--no-progress", *options)


def test_a_bad_training_label_read_by_a_loading_process_is_one_line(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", images=16, lists={"train": range(8), "val": range(8, 16)})
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(root / "labels" / "im3.png")
    assert train_folder(root, tmp_path / "run", "--workers", "2") == 2
    assert one_error_line(capsys).endswith(f"error: {root / 'labels' / 'im3.png'}: label values [7] are neither "
                                           f"classes [0, 2) nor the ignore index 255; once it is mended (python -m "
                                           f"nasfast.data --dataset folder --data-root {root} lists every file that "
                                           f"cannot be used), nothing was saved; run the same command to start again "
                                           f"in {tmp_path / 'run'}, or remove it\n")


@pytest.fixture(scope="module")
def unlabelled_validation(tmp_path_factory):
    """A tiny run whose validation images have no labelled pixels: (exit status, stdout, stderr, out)."""
    tmp = tmp_path_factory.mktemp("unlabelled")
    root = folder_dataset(tmp / "data", images=16, unlabelled=range(8, 16),
                          lists={"train": range(8), "val": range(8, 16)})
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = train_folder(root, tmp / "run")
    return status, out.getvalue(), err.getvalue(), tmp / "run"


def test_a_validation_without_labelled_pixels_still_writes_best_pt_and_says_why(unlabelled_validation, capsys):
    status, out, err, run_dir = unlabelled_validation
    assert status == 0, err
    assert json.loads(out) == {"best_miou": None, "best_checkpoint": str(run_dir / "best.pt")}
    assert f"best val mIoU none: {run_dir / 'best.pt'}" in err and "-1.0000" not in err
    assert err.count("every labelled pixel is 255, the ignore index") == 1  # said before the epochs
    assert "val mIoU nan (best none)" in err
    assert trainer.load_checkpoint(str(run_dir / "best.pt"))["epoch"] == 0
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [(r["val_miou"], r["val_pixel_acc"]) for r in log] == [(None, None)] * 2
    assert train_cli("--out", run_dir, "--resume") == 0  # finished
    captured = capsys.readouterr()
    assert json.loads(captured.out)["best_miou"] is None and "best val mIoU none: " in captured.err


def test_evaluate_json_has_null_for_nan_and_finds_the_data_the_run_was_trained_on(unlabelled_validation, capsys,
                                                                                  tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/nasfast/folder
    monkeypatch.setenv("NASFAST_DATA", str(tmp_path))
    folder_dataset(tmp_path / "folder", images=4)  # other data in $NASFAST_DATA: the recorded root goes first
    best = unlabelled_validation[3] / "best.pt"
    assert evaluate_cli("--checkpoint", best, "--json", "--workers", 0) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["miou"] is None and metrics["iou"] == [None, None]
    assert metrics["class_names"] == ["class0", "class1"]  # whose the per-class lists are
    root = unlabelled_validation[3].parent / "data"
    assert f"on folder val ({root}): 8 images" in captured.err
    assert "note: mIoU is nan: the labels hold no class pixels (all 255 = ignore)" in captured.err
    older = torch.load(best, weights_only=True)
    del older["data_root"]
    torch.save(older, tmp_path / "older.pt")
    assert evaluate_cli("--checkpoint", tmp_path / "older.pt", "--split", "train") == 0
    captured = capsys.readouterr()
    assert f"on folder train ({tmp_path / 'folder'}): 4 images" in captured.out
    assert f"note: {tmp_path / 'folder'} has no train.txt or val.txt: every image is in every split" in captured.err


def test_a_non_finite_loss_is_one_line_that_keeps_the_finished_epochs(tmp_path, capsys, monkeypatch):
    split = {"train": range(8), "val": [8, 9]}  # no note on validating on the training images
    ignored = folder_dataset(tmp_path / "ignored", images=10, unlabelled=range(10), lists=split)
    assert train_folder(ignored, tmp_path / "a") == 2
    warning, err = capsys.readouterr().err.splitlines()[-2:]
    assert warning.startswith("warning: no pixel of 2 classes in the 2 validation labels: 'class0' (0), 'class1' "
                              "(1); every labelled pixel is 255, the ignore index")
    assert err.endswith("error: every batch of epoch 1 held no labelled pixel (all 255 = ignore): nothing to learn "
                        "from; the training labels hold no class pixels, or too few for the random crops to meet "
                        "(python -m nasfast.data counts them); nothing was saved; run the same command to start "
                        f"again in {tmp_path / 'a'}, or remove it")
    calls, real = [], trainer.segmentation_loss

    def nan_from_the_second_epoch(*args):
        calls.append(1)
        return real(*args) * (float("nan") if len(calls) > 1 else 1)  # 8 images: one step an epoch
    monkeypatch.setattr(trainer, "segmentation_loss", nan_from_the_second_epoch)
    assert train_folder(folder_dataset(tmp_path / "labelled", images=10, lists=split), tmp_path / "b") == 2
    assert (f"non-finite loss at epoch 2, step 1: nan (the learning rate may be too high); "
            f"{tmp_path / 'b' / 'last.pt'} holds epoch 1; continue with python -m nasfast.train --resume "
            f"{tmp_path / 'b'}") in capsys.readouterr().err.splitlines()[-1]
    assert trainer.load_checkpoint(str(tmp_path / "b" / "last.pt"))["epoch"] == 0
    calls, real_validation = [], trainer.evaluate_model

    def diverged_in_the_second_epoch(model, *args):
        calls.append(1)
        if len(calls) > 1:
            with torch.no_grad():
                next(model.decoder.parameters()).fill_(float("nan"))
        return real_validation(model, *args)
    monkeypatch.setattr(trainer, "segmentation_loss", real)
    monkeypatch.setattr(trainer, "evaluate_model", diverged_in_the_second_epoch)
    assert train_folder(folder_dataset(tmp_path / "labelled-too", images=10, lists=split), tmp_path / "c") == 2
    assert (f"validation of epoch 2: the model's scores are NaN or infinite in 1 batch of 1: its weights have "
            f"diverged (the learning rate may be too high); {tmp_path / 'c' / 'last.pt'} holds epoch 1") in \
        capsys.readouterr().err.splitlines()[-1]


def test_too_few_training_images_for_a_batch_are_said_with_what_would_do(tmp_path, capsys):
    one = folder_dataset(tmp_path / "one", images=2, lists={"train": [0], "val": [1]})
    assert train_folder(one, tmp_path / "a") == 2
    assert one_error_line(capsys).endswith(f"error: {one} holds 1 training image: a batch needs 2 at least\n")
    two = folder_dataset(tmp_path / "two", images=4, lists={"train": [0, 1], "val": [2, 3]})
    assert train_folder(two, tmp_path / "b") == 2
    assert one_error_line(capsys).endswith("error: --batch-size 8 (preset tiny's) exceeds the 2 training images: "
                                           "give --batch-size 2 or less\n")  # the user gave none
    assert train_folder(two, tmp_path / "b", "--batch-size", 3) == 2
    assert one_error_line(capsys).endswith("error: --batch-size 3 exceeds the 2 training images: give --batch-size 2 "
                                           "or less\n")
    assert train_folder(two, tmp_path / "b", "--batch-size", 2, "--epochs", 2) == 0
    (tmp_path / "b" / "log.jsonl").write_text((tmp_path / "b" / "log.jsonl").read_text().splitlines()[0] + "\n")
    checkpoint = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    torch.save(dict(checkpoint, epoch=0), tmp_path / "b" / "last.pt")  # as if stopped after epoch 1
    capsys.readouterr()
    assert train_cli("--resume", "--out", tmp_path / "b", "--data-root", one, "--no-progress") == 2
    assert one_error_line(capsys).endswith(f"error: the run's batches of 2 exceed the 1 training image in {one}: "
                                           f"give --data-root the data it trained on\n")


def test_batches_without_a_labelled_pixel_are_skipped_and_counted(tmp_path, capsys):
    """Their mean loss is 0 / 0: training on would stop at the first (and a rerun at the same one)."""
    sparse = folder_dataset(tmp_path / "sparse", images=18, unlabelled=range(12),
                            lists={"train": range(16), "val": [16, 17]})
    assert train_folder(sparse, tmp_path / "run", "--batch-size", 2, "--epochs", 2) == 0
    err = capsys.readouterr().err
    skipped = [int(n) for n in re.findall(r"warning: (\d+) of the 8 batches of epoch \d held no labelled pixel "
                                          r"\(all 255 = ignore\) and were skipped", err)]
    assert skipped and all(0 < n < 8 for n in skipped)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and all(math.isfinite(r["loss"]) for r in log)


def test_resume_given_own_data_for_a_camvid_run_says_the_root_is_wrong(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(tiny_run_config()))
    torch.save({"model": {}, "genotype": ZOO["arch0"].to_list(), "num_classes": 11, "channels": 64, "sep_repeats": 2,
                "encoder_optimizer": {}, "decoder_optimizer": {}, "epoch": 0, "best_miou": 0.5}, out / "last.pt")
    root = folder_dataset(tmp_path / "own", lists={"train": [0, 1]})
    assert train_cli("--out", out, "--resume", "--data-root", root) == 2
    assert one_error_line(capsys).endswith(f"error: {root} holds your own data's layout (classes.txt, images/), not "
                                           f"the camvid data this run read: give --data-root the directory that "
                                           f"holds them\n")


def test_resume_refuses_a_data_root_with_another_number_of_classes(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(tiny_run_config(dataset="folder")))
    torch.save({"model": {}, "genotype": ZOO["arch0"].to_list(), "num_classes": 2, "channels": 64, "sep_repeats": 2,
                "encoder_optimizer": {}, "decoder_optimizer": {}, "epoch": 0, "best_miou": 0.5}, out / "last.pt")
    root = folder_dataset(tmp_path / "three", classes=3)
    assert train_cli("--out", out, "--resume", "--data-root", root) == 2
    assert f"error: --data-root {root}: the dataset has 3 classes, the model was trained on 2\n" in \
        one_error_line(capsys)
    checkpoint = torch.load(out / "last.pt")
    checkpoint.update(class_names=["road", "car"], data_root=str(tmp_path / "three"))
    torch.save(checkpoint, out / "last.pt")
    two = folder_dataset(tmp_path / "two", classes=2)
    assert train_cli("--out", out, "--resume", "--data-root", two) == 2
    assert "the dataset's class 0 is 'class0', the model's 'road' (classes ['class0', 'class1'] against ['road', " \
           "'car'])" in one_error_line(capsys)
    assert train_cli("--out", out, "--resume") == 2  # the recorded data root, not $NASFAST_DATA's camvid
    assert f"error: {root}: the dataset has 3 classes" in one_error_line(capsys)
    assert evaluate_cli("--checkpoint", out / "last.pt", "--dataset", "folder", "--data-root", two) == 2
    assert f"error: folder in {two}: the dataset's class 0 is 'class0', the model's 'road'" in one_error_line(capsys)


def test_a_folder_without_val_txt_says_the_validation_includes_the_training_images(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data")
    assert train_folder(root, tmp_path / "run", "--epochs", 1) == 0
    err = capsys.readouterr().err
    assert err.count(f"note: {root} has no train.txt or val.txt: every image is in every split, so the validation "
                     f"includes the training images") == 1
    assert "design: arch0\n" in err and f"folder data in {root}: 8 training and 8 validation images" in err
    assert "training images too" not in err  # said once, by the note
    lists = folder_dataset(tmp_path / "lists", lists={"train": range(8), "val": [6, 7]})
    assert train_folder(lists, tmp_path / "run2", "--epochs", 1) == 0
    assert (f"warning: 2 of the 2 validation images are training images too, e.g. {lists / 'images' / 'im6.png'}: "
            f"the validation scores would include them") in capsys.readouterr().err


def test_a_broken_validation_label_is_named_before_the_first_epoch(tmp_path, capsys, monkeypatch):
    root = folder_dataset(tmp_path / "data", images=16, lists={"train": range(8), "val": range(8, 16)})
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(root / "labels" / "im12.png")  # 2 classes: 7 is none
    steps = []
    monkeypatch.setattr(trainer, "descend", lambda *a: steps.append(1))
    assert train_folder(root, tmp_path / "run", "--epochs", 1) == 2
    assert "im12.png: label values [7] are neither classes [0, 2)" in capsys.readouterr().err
    assert steps == [] and not (tmp_path / "run" / "last.pt").exists()


def test_a_run_directory_in_use_by_another_process_is_refused(tmp_path, capsys):
    from test_files import HOLD, REPO
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "1"
        assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress") == 2
        assert f"{tmp_path} is in use by another process (pid {holder.pid})" in one_error_line(capsys)
        assert train_cli("--resume", tmp_path, "--no-progress") == 2  # said before reading what it may rewrite
        assert capsys.readouterr().err == (f"python -m nasfast.train: error: {tmp_path} is in use by another "
                                           f"process (pid {holder.pid}): let it finish, or stop it first\n")
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(tmp_path) == [".lock"]  # nothing of a run written


def test_a_training_that_used_out_while_the_data_loaded_is_not_overwritten(tmp_path, capsys, monkeypatch):
    real_lock = trainer.lock_directory

    def another_training_finished_first(directory):
        (tmp_path / "last.pt").write_bytes(b"another run's")
        return real_lock(directory)

    monkeypatch.setattr(trainer, "lock_directory", another_training_finished_first)
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress") == 2
    assert "already holds a training run" in one_error_line(capsys)
    assert (tmp_path / "last.pt").read_bytes() == b"another run's"


def test_tensorboard_without_its_package_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    assert train_cli("--genotype", "arch0", "--out", tmp_path / "run", "--tensorboard") == 2
    assert "--tensorboard needs the tensorboard package: pip install tensorboard" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_an_out_that_cannot_be_made_is_refused_before_the_data_are_read(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert train_cli("--genotype", "arch0", "--out", tmp_path / "file" / "run") == 2
    assert capsys.readouterr().err == (f"{train.PROG}: error: --out {tmp_path / 'file' / 'run'} cannot be written: "
                                       f"{tmp_path / 'file'} is a file\n")


def test_out_naming_the_dataset_or_a_folder_of_its_files_is_refused_before_anything_is_written(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", images=4)
    before = {folder: sorted(os.listdir(root / folder)) for folder in (".", "images", "labels")}
    assert train_folder(root, root) == 2
    assert f"{root} is the dataset's directory, not one for a run's files: choose another" in capsys.readouterr().err
    for folder in ("images", "labels"):  # a search's report wrote its plot there: the data had a stray file
        assert train_folder(root, root / folder) == 2
        assert f"{root / folder} holds the dataset's images or labels, not a run's files: choose another" in \
            capsys.readouterr().err
    assert {folder: sorted(os.listdir(root / folder)) for folder in before} == before


def test_a_training_run_s_directory_and_files_where_others_are_expected_are_named(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "best.pt").write_bytes(b"PK\x03\x04" + bytes(100))  # a checkpoint cut short
    assert train_cli("--genotype", run_dir, "--out", tmp_path / "new") == 2
    assert one_error_line(capsys).endswith(f"{run_dir / 'candidates.jsonl'}: no such search log ({run_dir} holds a "
                                           f"training run: give its checkpoint, {run_dir / 'best.pt'}, for its "
                                           f"design)\n")
    assert train_cli("--genotype", run_dir / "best.pt", "--out", tmp_path / "new") == 2
    assert f"error: {run_dir / 'best.pt'} is damaged: a zip archive" in one_error_line(capsys)
    assert evaluate_cli("--checkpoint", run_dir) == 2
    assert one_error_line(capsys).endswith(f"error: {run_dir} is a directory: give a checkpoint in it: "
                                           f"{run_dir / 'best.pt'}\n")
    assert train_cli("--resume", run_dir / "best.pt") == 2
    assert one_error_line(capsys).endswith(f"error: --resume {run_dir / 'best.pt'}: a file; give the run's "
                                           f"directory ({run_dir})\n")
    assert train_cli("--resume", tmp_path / "typo") == 2
    assert one_error_line(capsys).endswith(f"error: --resume {tmp_path / 'typo'}: no such directory\n")


def test_init_weights_fit_all_but_the_classifiers_of_other_classes():
    from nasfast.checkpoint import load_fitting_weights
    source, target = create_model("arch0", 11, aux="cell"), create_model("arch0", 2, aux="cell")
    theirs, before = source.state_dict(), {k: v.clone() for k, v in target.state_dict().items()}
    fresh = load_fitting_weights(target, {"model": theirs})
    assert fresh == sorted(k for k, v in before.items() if v.shape != theirs[k].shape)
    layers = {k.rsplit(".", 1)[0] for k in fresh}
    assert layers == {"decoder.head.1", *(f"decoder.aux.{i}.classifier" for i in range(3))}  # the classifiers
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k] if k in fresh else theirs[k]), k


def test_init_on_as_many_classes_of_other_names_starts_the_classifiers_afresh(tmp_path, capsys):
    """Shapes alone kept sky/water's classifiers as background/road's."""
    first = folder_dataset(tmp_path / "first", classes=2, images=8)
    assert train_folder(first, tmp_path / "run1", "--epochs", "1") == 0
    checkpoint = torch.load(tmp_path / "run1" / "best.pt", weights_only=True)
    second = folder_dataset(tmp_path / "second", classes=2, images=8)
    (second / "classes.txt").write_text("sky\nwater\n")
    capsys.readouterr()
    assert train_cli("--init", tmp_path / "run1" / "best.pt", "--preset", "tiny", "--dataset", "folder",
                     "--data-root", second, "--epochs", "1", "--out", tmp_path / "run2", "--no-progress") == 0
    assert (f"weights from {tmp_path / 'run1' / 'best.pt'}; for the classes ['sky', 'water'], not its "
            "['class0', 'class1']: decoder.aux.0.classifier, ") in capsys.readouterr().err
    model = create_model("arch0", 2, aux="cell")
    trainer.start_from(model, checkpoint, "best.pt", ["sky", "water"])
    classifiers = classifier_weights(model)
    assert {k.rsplit(".", 1)[0] for k in classifiers} == {"decoder.head.1", *(f"decoder.aux.{i}.classifier"
                                                                             for i in range(3))}
    for k, v in model.state_dict().items():
        assert torch.equal(v, checkpoint["model"][k]) != (k in classifiers), k
    trainer.start_from(model, checkpoint, "best.pt", ["class0", "class1"])  # the same classes: every weight
    assert all(torch.equal(v, checkpoint["model"][k]) for k, v in model.state_dict().items())


def test_init_trains_from_a_checkpoint_on_data_of_other_classes(tmp_path, capsys):
    first = folder_dataset(tmp_path / "first", classes=3, images=8)
    assert train_folder(first, tmp_path / "run1", "--epochs", "1") == 0
    checkpoint = tmp_path / "run1" / "best.pt"
    second = folder_dataset(tmp_path / "second", classes=2, images=8)
    capsys.readouterr()
    assert train_cli("--init", checkpoint, "--preset", "tiny", "--dataset", "folder", "--data-root", second,
                     "--epochs", "1", "--out", tmp_path / "run2", "--no-progress") == 0  # the design: the checkpoint's
    err = capsys.readouterr().err
    assert re.search(rf"weights from {re.escape(str(checkpoint))}; for 2 classes, not its 3: decoder\.\S*classifier\S*"
                     r"(, \S+)* start afresh\n", err), err
    saved = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert (saved["init"], saved["genotype"]) == (str(checkpoint), ZOO["arch0"].to_list())
    assert train_cli("--init", checkpoint, "--genotype", "arch1", "--out", tmp_path / "run3") == 2
    assert one_error_line(capsys).endswith(f"--init {checkpoint} holds the weights of arch0, not of --genotype arch1: "
                                           f"leave --genotype out to train its design\n")
    assert train_cli("--resume", tmp_path / "run2", "--init", checkpoint) == 2
    assert one_error_line(capsys).endswith("--init starts a new run: --resume goes on from the run's own last.pt\n")


def test_checkpoints_whose_weights_do_not_fit_their_design_are_one_line(stopped_after_epoch_1, tmp_path, capsys):
    last = stopped_after_epoch_1 / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({**state, "genotype": ZOO["arch1"].to_list()}, tmp_path / "mixed.pt")
    assert evaluate_cli("--checkpoint", tmp_path / "mixed.pt", "--limit", 2, "--workers", 0, "--no-progress") == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'mixed.pt'}: its weights do not fit the model it describes (" in err
    assert "): it was edited, or mixes files of different runs\n" in err and err.count("\n") == 1
    assert train_cli("--init", tmp_path / "mixed.pt", "--preset", "tiny", "--out", tmp_path / "init") == 2
    assert (f"error: --init {tmp_path / 'mixed.pt'}: its weights do not fit the model it describes (") in \
        capsys.readouterr().err
    torch.save({**state, "model": [1, 2]}, tmp_path / "list.pt")
    assert evaluate_cli("--checkpoint", tmp_path / "list.pt", "--limit", 2) == 2
    assert f"{tmp_path / 'list.pt'} is damaged: its weights are a list, not named tensors" in capsys.readouterr().err
    good = last.read_bytes()
    torch.save({**state, "genotype": ZOO["arch1"].to_list()}, last)
    assert train_cli("--resume", stopped_after_epoch_1) == 2
    assert (f"--resume: {last} holds the weights of arch1, but config.json trains arch0: files of different "
            f"runs") in capsys.readouterr().err
    torch.save({**state, "model": {**state["model"], "extra": torch.zeros(1)}}, last)
    assert train_cli("--resume", stopped_after_epoch_1, "--no-progress") == 2
    assert (f"{last}: its weights do not fit the model it describes (1 not of the model, e.g. extra): it was edited"
            in capsys.readouterr().err)
    last.write_bytes(good)


@pytest.mark.parametrize("workers", [0, 1])
def test_images_decoded_in_the_training_process_are_decoded_once(tmp_path, camvid_root, workers):
    args = train.build_parser().parse_args(["--genotype", "arch0", "--preset", "tiny", "--out", str(tmp_path / "run"),
                                            "--workers", str(workers), "--no-progress"])
    _, config, _ = train.new_run(args)
    data = trainer.load_data(args, config, None)
    kept = data.val_images.dataset.kept_bytes
    assert (kept == 8 * 360 * 480 * 4) if workers == 0 else kept == 0  # the 8 checked: image and label


@pytest.mark.parametrize("edit, problem", [({"scale": "big"}, "its scale is 'big'"),
                                           ({"data_root": 5}, "its data_root is 5"),
                                           ({"genotype": [1, 2]}, "its genotype is not a design (")])
def test_a_checkpoint_whose_recipe_was_edited_is_one_line(stopped_after_epoch_1, tmp_path, capsys, edit, problem):
    state = torch.load(stopped_after_epoch_1 / "last.pt", weights_only=True)
    torch.save({**state, **edit}, tmp_path / "edited.pt")
    assert evaluate_cli("--checkpoint", tmp_path / "edited.pt", "--limit", 2) == 2
    assert f"error: {tmp_path / 'edited.pt'} is damaged or edited: {problem}" in capsys.readouterr().err
