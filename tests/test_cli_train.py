"""The command lines of python -m nasfast.train and nasfast.evaluate: one-line errors that write
nothing, --resume taking its settings from the run, Ctrl-C, and the help."""
import json
import os
from dataclasses import asdict

import pytest
import torch

from nasfast import evaluate, train
from nasfast.cli import run
from nasfast.genotype import ZOO


def train_cli(*argv) -> int:
    return run(train.main, train.PROG, [str(a) for a in argv])


def evaluate_cli(*argv) -> int:
    return run(evaluate.main, evaluate.PROG, [str(a) for a in argv])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error: " in err, err
    return err


def tiny_run_config(**changes) -> dict:
    config = {"genotype": ZOO["arch0"].to_list(), "dataset": "camvid", **asdict(train.PRESETS["tiny"])}
    return json.loads(json.dumps({**config, **changes}))


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "log.jsonl", "state.pt", "candidates.jsonl"])
def test_a_new_run_refuses_a_directory_that_holds_a_run(tmp_path, capsys, name):
    (tmp_path / name).write_text("")
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path) == 2
    searched = name in train.SEARCH_FILES
    assert ("holds a search" if searched else "already holds a training run: continue it with --resume") \
        in one_error_line(capsys)
    assert os.listdir(tmp_path) == [name]


def test_config_json_alone_blocks_a_new_run_unless_it_is_of_an_unstarted_training(tmp_path, capsys):
    train.check_new_run_directory(str(tmp_path))  # an empty directory is fine
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "camvid", "budget": 4}))  # a search's
    assert train_cli("--genotype", "arch0", "--out", tmp_path) == 2
    assert "already holds a training run" in one_error_line(capsys)
    (tmp_path / "config.json").write_text(json.dumps(tiny_run_config()))
    train.check_new_run_directory(str(tmp_path))  # no error


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
           "--epochs 3 differs from the run's 2, --preset fast differs from the run's tiny (config.json)" in err
    assert (tmp_path / "last.pt").read_bytes() == b""


def test_resume_without_last_pt_says_what_to_do(tmp_path, capsys):
    assert train_cli("--out", tmp_path, "--resume") == 2
    assert f"--resume: no {tmp_path / 'last.pt'}\n" in one_error_line(capsys)


def interrupt_on_call(monkeypatch, name: str, call: int) -> None:
    """Ctrl-C from the call-th call of nasfast.train's `name` on."""
    calls, real = [], getattr(train, name)

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) >= call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, name, interrupted)


def test_ctrl_c_says_where_the_run_stands_and_resume_finishes_it(tmp_path, capsys, camvid_root, monkeypatch):
    out = tmp_path / "run"
    interrupt_on_call(monkeypatch, "descend", 5)  # epoch 2's first step: tiny has 32 images, batches of 8
    assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", out, "--no-progress") == 130
    assert (f"interrupted in epoch 2: {out / 'last.pt'} holds epoch 1; continue with python -m nasfast.train "
            f"--out {out} --resume") in capsys.readouterr().err
    monkeypatch.undo()
    assert train_cli("--out", out, "--resume", "--no-progress") == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    captured = capsys.readouterr()
    assert json.loads(captured.out)["best_checkpoint"] == str(out / "best.pt")
    assert f"best val mIoU {max(r['val_miou'] for r in log):.4f}: {out / 'best.pt'}" in captured.err


def test_ctrl_c_in_the_first_epoch_leaves_a_directory_to_start_again(tmp_path, capsys, camvid_root, monkeypatch):
    interrupt_on_call(monkeypatch, "descend", 1)
    for _ in range(2):  # the second start is not refused
        assert train_cli("--genotype", "arch0", "--preset", "tiny", "--out", tmp_path, "--no-progress") == 130
        assert "interrupted in epoch 1: nothing was saved; run the same command" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["config.json"]
    assert train_cli("--out", tmp_path, "--resume") == 2
    assert "start it again without --resume" in one_error_line(capsys)


@pytest.mark.parametrize("module, argv", [
    (train, ["--epochs", "0"]), (train, ["--epochs", "-2"]), (train, ["--batch-size", "0"]),
    (train, ["--batch-size", "1"]),
    (train, ["--workers", "-1"]), (evaluate, ["--scale", "0"]), (evaluate, ["--limit", "-100"]),
    (evaluate, ["--workers", "-1"])])
def test_numbers_out_of_range_are_refused_while_parsing(module, argv, capsys):
    required = ["--out", "x"] if module is train else ["--checkpoint", "x"]
    with pytest.raises(SystemExit) as stop:
        module.build_parser().parse_args(required + argv)
    assert stop.value.code == 2 and "must be" in capsys.readouterr().err


def test_bad_data_and_genotypes_are_reported_without_writing(tmp_path, capsys, camvid_root):
    out = tmp_path / "out"
    assert train_cli("--genotype", "arch0", "--out", out, "--data-root", tmp_path / "nope") == 2
    assert "error: dataset 'camvid' not found" in capsys.readouterr().err
    assert train_cli("--genotype", "arch0", "--out", out, "--preset", "tiny", "--batch-size", 1000) == 2
    assert "batch size 1000 exceeds the 32 training images" in one_error_line(capsys)
    (tmp_path / "latin1.json").write_bytes(b"\xff\xfe[")
    (tmp_path / "broken.json").write_text("[[1, 2]")
    for name, problem in (("latin1.json", "is not UTF-8 text"), ("broken.json", "genotype '[[1, 2]' is neither")):
        assert train_cli("--genotype", tmp_path / name, "--out", out) == 2
        line = one_error_line(capsys)
        assert f"genotype file {tmp_path / name}" in line and problem in line
    assert not out.exists()


def test_evaluate_refuses_what_is_not_a_training_checkpoint(tmp_path, capsys):
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"next_index": 3, "elapsed": 1.0, "strategy": {"strategy": "random"}}, tmp_path / "state.pt")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "script.pt"))
    for name, reason in (("nope.pt", "checkpoint {} not found"),
                         ("random.pt", "{} is not a checkpoint of python -m nasfast.train (torch.load cannot read it"),
                         ("state.pt", "{} is not a checkpoint of python -m nasfast.train (it lacks model, genotype"),
                         ("script.pt", "{} is not a checkpoint of python -m nasfast.train (it is a TorchScript file")):
        assert evaluate_cli("--checkpoint", tmp_path / name) == 2
        assert reason.format(tmp_path / name) in one_error_line(capsys)


def test_help_explains_the_presets_and_every_option():
    text = train.build_parser().format_help()
    for name, config in train.PRESETS.items():
        assert f"{name:<6} {config.epochs:>6} {config.batch_size:>5} {config.crop_size:>4} {config.scale:>5}" in text
    text = " ".join(text.split())  # as argparse wraps it
    assert "hours to days on a CPU" in text and "the encoder always uses SGD" in text
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
