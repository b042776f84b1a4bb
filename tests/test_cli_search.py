"""python -m nasfast.search as a user meets it: its options, errors, notes and exit statuses. In
process (main through nasfast.cli.run); only the last test trains a candidate."""
import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import nasfast.search.context
import nasfast.search.loop as loop
from nasfast.cli import UsageError, run
from nasfast.search.__main__ import PROG, RUN_FILES, choose_run, main
from nasfast.search.options import build_parser, duration
from nasfast.search.candidate import CandidateFailed, batch_bounds
from nasfast.data import DATASETS
from nasfast.search.config import PRESETS, SearchConfig, preset
from nasfast.search.records import load_state
from nasfast.files import read_records
from nasfast.search.summary import madds_text
from test_cli_train import flip_a_stored_byte


REAL_BUILD_CONTEXT = nasfast.search.context.build_context  # before the fixtures below replace it


def search(*argv) -> int:
    """The exit status of `python -m nasfast.search ARGV`."""
    try:
        return run(main, PROG, [str(a) for a in argv])
    except SystemExit as stop:  # argparse and the run directory's checks end the process themselves
        return stop.code


def fake_evaluate(genotype, index, ctx, decide, known=None):
    return dict(reward=0.5, stage1_reward=0.5, stage2_reward=None, gate="stop", params=1, madds=3_600_000,
                seconds=0.0)


@pytest.fixture
def no_data(monkeypatch):
    """Candidates and the shared context cost nothing; the arguments build_context got are kept."""
    calls = []
    monkeypatch.setattr(loop, "evaluate_candidate", fake_evaluate)
    monkeypatch.setattr(nasfast.search.context, "build_context",
                        lambda *a, **k: calls.append(SimpleNamespace(config=a[0], options=k)))
    return calls


@pytest.fixture
def saved_search(tmp_path, no_data):
    """A tiny-preset search with seed 3 and 3 candidates done, in tmp_path/run."""
    run_dir = tmp_path / "run"
    assert search("--out", run_dir, "--preset", "tiny", "--seed", 3, "--budget", 3, "--no-progress") == 0
    return run_dir


def test_out_with_a_cache_folder_of_other_files_is_refused_and_a_searchs_own_is_taken(tmp_path, no_data, capsys):
    """A user's cache/complete.json was removed by the search (and cache/stage1's files overwritten)."""
    from nasfast.search.cache import foreign_cache
    mine = tmp_path / "mine"
    (mine / "cache").mkdir(parents=True)
    (mine / "cache" / "complete.json").write_text('{"my": "precious"}')
    assert search("--out", mine, "--preset", "tiny", "--budget", 1, "--no-progress") == 2
    assert (f"--out {mine}: its cache/ holds complete.json, not a search's stage-1 cache, which the search keeps "
            f"there: choose another directory\n") in capsys.readouterr().err
    assert (mine / "cache" / "complete.json").read_text() == '{"my": "precious"}' and not no_data
    own = tmp_path / "own" / "cache"  # as a search killed before its first save left it
    for part in ("stage1", "val"):
        (own / part).mkdir(parents=True)
        for name in ("level0.npy", "level3.npy", "labels.npy"):
            (own / part / name).write_bytes(b"")
    (own / "complete.json").write_text('{"files": "0123", "dataset": "camvid"}')
    assert foreign_cache(str(own.parent)) is None and foreign_cache(str(tmp_path / "none")) is None
    (own / "val" / "notes.txt").write_text("")
    (own / "stage2").mkdir()
    assert foreign_cache(str(own.parent)) == "holds stage2, val/notes.txt"


@pytest.mark.parametrize("options, message", [
    (["--strategy", "random", "--controller-lr", "5", "--entropy-weight", "3"],
     "--controller-lr acts only with --strategy ppo; --entropy-weight acts only with --strategy ppo: leave them out"),
    (["--aux", "none", "--aux-weight", "0.5"], "--aux-weight acts only with auxiliary heads (--aux cell or "
                                               "classifier): leave it out"),
    (["--stage1-distillation", "0.9"], "--stage1-distillation acts only with --teacher: leave it out"),
])
def test_options_a_search_would_ignore_are_refused(options, message, tmp_path, no_data, capsys):
    """They were accepted, and changed nothing."""
    assert search("--out", tmp_path / "run", "--preset", "tiny", "--budget", 1, *options) == 2
    assert capsys.readouterr().err.endswith(f"error: {message}\n") and not (tmp_path / "run").exists()


def test_numbers_are_checked_while_parsing(tmp_path, capsys):
    for option, expected in [("--budget=0", "at least 1"), ("--budget=-3", "at least 1"),
                             ("--time-budget=0", "more than 0"), ("--time-budget=-5m", "more than 0"),
                             ("--channels=0", "at least 1"), ("--stage2-batch-size=1", "at least 2"),
                             ("--val-fraction=1.5", "less than 1"), ("--gate-p-end=2", "at most 1"),
                             ("--stage1-decoder-lr=0", "greater than"), ("--top=-2", "at least 1"),
                             ("--aux-weight=-1", "at least 0"), ("--workers-per-gpu=0", "at least 1")]:
        assert search("--out", tmp_path / "r", "--budget", "1", option) == 2, option
        error = capsys.readouterr().err
        assert f"argument {option.split('=')[0]}: must be {expected}" in error, error
        assert len(error.splitlines()) == 3 and error.startswith("usage: ") and "--help" in error
    assert search("--out", tmp_path / "r", "--budget", "2.5") == 2
    assert "argument --budget: expected a whole number, got '2.5'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_under_torchrun_only_rank_0_shows_an_option_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert search("--out", tmp_path / "r", "--budget", "0") == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert search("--out", tmp_path / "r", "--budget", "0") == 2
    assert "argument --budget: must be at least 1" in capsys.readouterr().err


def test_durations():
    for text in ("0", "-5m", "inf", "5x", "1h30", "h", "1h-30m", "0h0m", "30m30m", "30m1h"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(text)
    assert [duration(t) for t in ("90", "90s", "30m", "4h", "2d", "1h30m", "1.5h", "2d12h", "30 m", "1e3s")] == \
        [90, 90, 1800, 14400, 172800, 5400, 5400, 216000, 1800, 1000]


def test_a_run_directory_and_a_budget_are_required(tmp_path, capsys):
    assert search("--budget", "1") == 2
    assert "one of the arguments --out --resume is required" in capsys.readouterr().err
    assert search("--out", tmp_path / "x") == 2
    assert "give --budget N" in capsys.readouterr().err
    assert search("--resume", tmp_path / "nothing", "--budget", "1") == 2
    assert f"--resume {tmp_path / 'nothing'}: no such directory" in capsys.readouterr().err
    assert search("--resume", tmp_path, "--budget", "1") == 2
    assert capsys.readouterr().err.rstrip().endswith("no saved search there (state.pt missing)")
    (tmp_path / "best.pt").write_bytes(b"a training's checkpoint")
    assert search("--resume", tmp_path, "--budget", "1") == 2
    assert (f"no saved search there (state.pt missing); it holds a training run: python -m nasfast.train --resume "
            f"{tmp_path}") in capsys.readouterr().err


def test_help(capsys):
    assert search("--help") == 0
    text = " ".join(capsys.readouterr().out.split())  # as argparse wraps it
    for option in ("--stage1-epochs", "--stage2-encoder-lr", "--gate-p-start", "--aux-weight", "--time-budget"):
        assert option in text
    assert "(see --help)" not in text
    assert "--stage1-encoder-lr" not in text and "--stage2-distillation" not in text  # fixed by the method
    assert "tiny: --stage1-images 48 --val-images 16" in text and "'ours': a value the paper leaves open" in text
    assert "--preset {paper,fast,tiny}" in text
    assert "teacher's logits (with --teacher) [0.3]" in text
    assert "seconds (a bare number)" in text and "{camvid,folder,voc}" in text
    assert text.startswith("usage: python -m nasfast.search (--out RUN_DIR | --resume RUN_DIR)")


@pytest.mark.parametrize("name", RUN_FILES)
def test_out_refuses_a_directory_with_run_files(tmp_path, capsys, name):
    (tmp_path / name).write_text("{}")
    assert search("--out", tmp_path, "--budget", "1") == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and name in error
    assert ("--resume" in error) == (name == "state.pt")
    assert (tmp_path / name).read_text() == "{}"


def test_out_takes_an_empty_directory_and_refuses_a_file(tmp_path, capsys):
    parser = build_parser()
    run_dir, config, resume = choose_run(parser.parse_args(["--out", str(tmp_path), "--budget", "1"]), parser)
    assert (run_dir, resume, config.stage1_images) == (str(tmp_path), False, 4000)
    (tmp_path / "file").write_text("")
    assert search("--out", tmp_path / "file", "--budget", "1") == 2
    assert "is a file" in capsys.readouterr().err
    assert search("--out", tmp_path / "file" / "run", "--budget", "1") == 2  # found before any caching
    assert f"cannot be written: {tmp_path / 'file'} is a file" in capsys.readouterr().err


def test_missing_data_and_teacher_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NASFAST_DATA", str(tmp_path))
    assert search("--out", tmp_path / "a", "--budget", "1", "--dataset", "voc") == 2
    assert "dataset 'voc' not found" in capsys.readouterr().err
    assert search("--out", tmp_path / "b", "--budget", "1", "--data-root", tmp_path / "nope") == 2
    assert f"--data-root {tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    assert search("--out", tmp_path / "c", "--budget", "1", "--teacher", tmp_path / "nope.pt") == 2
    assert "--teacher" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_resume_refuses_options_that_change_the_search(saved_search, capsys):
    assert search("--resume", saved_search, "--budget", "4", "--dataset", "voc", "--preset", "fast",
                  "--seed", "7", "--stage1-epochs", "9", "--strategy", "random") == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1
    for part in ("--seed 7 differs from the run's 3", "--dataset voc differs from the run's camvid",
                 "--stage1-epochs 9 differs from the run's 2", "--strategy random differs from the run's ppo",
                 "--preset fast differs from the run's tiny"):
        assert part in error


def test_resume_takes_its_run_as_train_does_too(saved_search, no_data, capsys):
    """--out RUN_DIR --resume, as python -m nasfast.train takes it (it was 'expected one argument')."""
    assert search("--out", saved_search, "--resume", "--budget", "4", "--no-progress") == 0
    assert len(read_records(str(saved_search / "candidates.jsonl"))) == 4
    assert search("--resume", saved_search, "--out", saved_search, "--budget", "5", "--no-progress") == 0  # one run
    assert len(read_records(str(saved_search / "candidates.jsonl"))) == 5
    capsys.readouterr()
    assert search("--resume", saved_search, "--out", saved_search.parent / "other", "--budget", "6") == 2
    assert f"--resume {saved_search} and --out {saved_search.parent / 'other'} name two directories" in \
        capsys.readouterr().err
    assert search("--resume", "--budget", "6") == 2
    assert "--resume needs the run: --resume RUN_DIR (or --out RUN_DIR --resume)" in capsys.readouterr().err
    assert len(read_records(str(saved_search / "candidates.jsonl"))) == 5


def test_resume_takes_the_saved_options_and_new_machine_options(saved_search, no_data, capsys):
    assert search("--resume", saved_search, "--budget", "4", "--preset", "tiny", "--workers", "1",
                  "--memory-limit-gb", "0.5", "--top", "2", "--device", "cpu", "--no-progress") == 0
    resumed = no_data[-1]
    assert resumed.options == {"progress": False}
    assert resumed.config.workers == 1 and resumed.config.memory_limit_gb == 0.5
    assert resumed.config.seed == 3 and resumed.config.stage1_images == preset("tiny").stage1_images
    assert len(read_records(str(saved_search / "candidates.jsonl"))) == 4
    assert "top 2 of 4 candidates" in capsys.readouterr().out


def test_a_resumed_search_hints_at_training_on_the_data_it_read(saved_search, capsys):
    state = torch.load(saved_search / "state.pt", weights_only=False)
    state["data"] = {"root": "/data/own"}  # where the search read its data (recorded when it began)
    torch.save(state, saved_search / "state.pt")
    assert search("--resume", saved_search, "--budget", "4", "--no-progress") == 0
    assert capsys.readouterr().out.strip().endswith("--dataset camvid --data-root /data/own --preset tiny --out DIR")


def test_resume_of_a_search_that_did_not_record_its_preset(saved_search, capsys):
    config = json.loads((saved_search / "config.json").read_text())
    del config["preset"]
    (saved_search / "config.json").write_text(json.dumps(config))
    assert search("--resume", saved_search, "--budget", "3", "--preset", "fast") == 0
    assert search("--resume", saved_search, "--budget", "3", "--seed", "4") == 2
    assert "--seed 4 differs from the run's 3" in capsys.readouterr().err


def test_resume_names_a_damaged_file(saved_search, capsys):
    state, config = saved_search / "state.pt", saved_search / "config.json"
    good_state = state.read_bytes()
    state.write_bytes(torch.randint(0, 256, (300,), dtype=torch.uint8).numpy().tobytes())
    assert search("--resume", saved_search, "--budget", "4") == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and f"{state} is damaged" in error
    assert "Its log of candidates is kept (python -m nasfast.report, or train --genotype" in error
    torch.save({"epoch": 1, "model": {}}, state)  # a training's last.pt
    assert search("--resume", saved_search, "--budget", "4") == 2
    assert f"{state} is not the state of a search (it lacks next_index" in capsys.readouterr().err
    state.write_bytes(good_state)
    config.write_text('{"seed": ')
    assert search("--resume", saved_search, "--budget", "4") == 2
    assert f"{config} is damaged: not valid JSON" in capsys.readouterr().err
    config.unlink()  # the way on, whether it is lost or damaged
    assert search("--resume", saved_search, "--budget", "4") == 2
    assert (f"{config} is missing; without the search's options it cannot go on: restore config.json from a copy, "
            f"or search anew in another --out (python -m nasfast.report {saved_search} still shows its candidates)"
            ) in capsys.readouterr().err


def test_resume_names_a_state_whose_bytes_changed_after_saving(saved_search, capsys):
    """torch.load does not check the CRC-32s of torch.save's archive: a flipped byte loaded as a wrong weight."""
    state = saved_search / "state.pt"
    member = flip_a_stored_byte(state)
    assert re.fullmatch(r".*/data/\d+", member) and "strategy" in torch.load(state, weights_only=False)
    message = (f"{state} is damaged: its bytes differ from what was saved (checksum of {member}); the search cannot "
               f"continue from it. Its log of candidates is kept")
    with pytest.raises(ValueError) as error:
        load_state(str(state))
    assert str(error.value).startswith(message)
    assert search("--resume", saved_search, "--budget", "4") == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and f"error: {message}" in error


def test_none_written_in_config_json_as_on_the_command_line_is_none():
    """--aux none is saved as null; a hand-edited "none" made every candidate fail."""
    assert SearchConfig.from_dict({**SearchConfig().to_dict(), "aux": "none"}).aux is None


def test_an_edited_config_json_is_checked_as_the_options_are(saved_search, capsys):
    """A value the option refuses was a traceback (seed "x", from the controller's manual_seed);
    a key taken out silently took the paper's value (stage1.epochs 5, not the tiny preset's 2)."""
    path = saved_search / "config.json"
    good = json.loads(path.read_text())
    for key, value, message in (("seed", "x", "seed is 'x': expected a whole number"),
                                ("strategy", "ppo2", "strategy is 'ppo2': choose one of ppo, random"),
                                ("stage1", {**good["stage1"], "batch_size": 1}, "stage1.batch_size is 1: "),
                                ("scale_range", "12", "scale_range is '12': expected 2 values"),  # was (1.0, 2.0)
                                ("scale_range", [2, 1], "scale_range is [2.0, 1.0]: the first must not be larger"),
                                ("preset", "bogus", "preset is 'bogus': choose one of paper, fast, tiny"),
                                ("dataset", "cityscapes", "dataset is 'cityscapes': choose one of camvid, voc")):
        path.write_text(json.dumps({**good, key: value}))
        assert search("--resume", saved_search, "--budget", 4) == 2
        error = capsys.readouterr().err
        assert len(error.splitlines()) == 1 and f"error: {path} is damaged: {message}" in error
    path.write_text(json.dumps({**good, "seed": "3", "stage1": {k: v for k, v in good["stage1"].items()
                                                                 if k != "epochs"}}))
    parser = build_parser()
    config = choose_run(parser.parse_args(["--resume", str(saved_search)]), parser)[1]
    assert config.seed == 3 and config.stage1.epochs == preset("tiny").stage1.epochs == 2
    fields = {f.name: f.metadata.get("choices") for f in dataclasses.fields(SearchConfig)}
    assert set(fields["preset"]) == set(PRESETS) and set(fields["dataset"]) == set(DATASETS)
    assert f"warning: {path} lacks stage1.epochs: preset tiny's values are used" in capsys.readouterr().err


def test_non_finite_controller_weights_are_neither_resumed_nor_saved(saved_search, capsys, monkeypatch):
    """Bytes of state.pt overwritten can still load: the next update then made every weight NaN,
    that state was saved, and every later resume ended in a traceback."""
    from nasfast.strategies.ppo import PPOController
    state = saved_search / "state.pt"
    good_state = state.read_bytes()
    damaged = torch.load(state, weights_only=False)
    next(iter(damaged["strategy"]["controller"].values())).view(-1)[0] = float("nan")
    torch.save(damaged, state)
    assert search("--resume", saved_search, "--budget", 4) == 2
    assert f"{state} is damaged: it holds non-finite controller weights; the search cannot continue from it" in \
        capsys.readouterr().err
    state.write_bytes(good_state)
    real_update = PPOController.update

    def update_to_nan(self, proposals, rewards):
        result = real_update(self, proposals, rewards)
        with torch.no_grad():
            next(self.controller.parameters()).fill_(float("inf"))
        return result

    monkeypatch.setattr(PPOController, "update", update_to_nan)
    assert search("--resume", saved_search, "--budget", 4, "--no-progress") == 2
    assert f"the controller's update made its weights non-finite: it diverged (start again with a lower " \
           f"--controller-lr than 0.0001), or {state} is damaged; the state was not saved" in capsys.readouterr().err
    assert state.read_bytes() == good_state and len(read_records(str(saved_search / "candidates.jsonl"))) == 3
    # Nor does any later save write them (under torchrun, another rank's failed candidate is saved).
    diverged = loop.Search(str(saved_search), preset("tiny"), None)
    next(diverged.strategy.controller.parameters()).data.fill_(float("nan"))
    with pytest.raises(ValueError, match="the controller's update made its weights non-finite"):
        diverged.state_dict()


class RunsCode:
    def __reduce__(self):
        return (exec, ("open('ran', 'w').close()",))


def test_a_state_holding_python_objects_is_not_loaded_so_runs_no_code(saved_search, capsys, monkeypatch):
    state = saved_search / "state.pt"
    hostile = torch.load(state, weights_only=True)
    hostile["data"] = RunsCode()
    torch.save(hostile, state)
    monkeypatch.chdir(saved_search)
    assert search("--resume", saved_search, "--budget", 4) == 2
    assert (f"{state} holds Python objects that a search's state never holds, which could run code as they load: "
            f"it was not loaded") in capsys.readouterr().err
    assert not (saved_search / "ran").exists()


@pytest.mark.parametrize("edit, problem", [
    (lambda state: {**state, "next_index": -5}, "its next_index is -5"),
    (lambda state: {**state, "elapsed": None}, "its elapsed is None"),
    (lambda state: [state], "it holds a list, not a search's state"),
    (lambda state: {**state, "strategy": {**state["strategy"], "controller": {
        **state["strategy"]["controller"], "embedding.weight": torch.zeros(2, 2)}}},
     "its controller cannot be loaded (Error(s) in loading state_dict"),
])
def test_a_state_edited_into_values_no_search_saves_is_refused_and_the_log_kept(saved_search, capsys, edit,
                                                                                  problem):
    state = saved_search / "state.pt"
    log = (saved_search / "candidates.jsonl").read_text()
    torch.save(edit(torch.load(state, weights_only=True)), state)
    assert search("--resume", saved_search, "--budget", 4) == 2
    assert f"{state} is damaged: {problem}" in capsys.readouterr().err
    assert (saved_search / "candidates.jsonl").read_text() == log


def test_a_log_line_copied_twice_is_kept_once(saved_search):
    log = saved_search / "candidates.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + lines[1] + lines[1] + lines[2])
    assert search("--resume", saved_search, "--budget", 4, "--no-progress") == 0
    assert [r["index"] for r in read_records(str(log))] == [0, 1, 2, 3]


def test_resume_names_a_log_line_that_is_not_a_candidate(saved_search, capsys):
    log = saved_search / "candidates.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], json.dumps({"index": 1, "status": "ok"}), lines[2]]) + "\n")
    assert search("--resume", saved_search, "--budget", "4") == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and f"{log}: not the candidates.jsonl of a search (line 2 lacks genotype, " \
        "reward, stage1_reward" in error


def test_resume_past_the_budget_says_so(saved_search, capsys):
    assert search("--resume", saved_search, "--budget", "1") == 0
    out, err = capsys.readouterr()
    assert "already done: budget of 1 candidate reached (the run has 3); raise --budget above 3 to continue" in err
    assert "top 3 of 3 candidates" in out


def test_resume_in_a_directory_that_cannot_be_written_points_to_the_report(saved_search, monkeypatch, capsys):
    import builtins
    import errno
    import nasfast.files

    def read_only(path, mode="r", **kwargs):
        if mode.strip("b") == "r":
            return builtins.open(path, mode, **kwargs)
        raise OSError(errno.EROFS, "Read-only file system", path)

    def read_only_descriptor(path, flags, *args, real=os.open):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real(path, flags, *args)
    monkeypatch.setattr(nasfast.files, "open", read_only, raising=False)
    monkeypatch.setattr(os, "open", read_only_descriptor)  # the lock file's
    assert search("--resume", saved_search) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and f"{saved_search} cannot be written (Read-only file system)" in error
    assert error.endswith(f"; python -m nasfast.report {saved_search} shows its results without writing\n")


def test_resume_keeps_the_budgets_not_given_again(saved_search, capsys):
    assert search("--resume", saved_search, "--no-progress") == 0
    assert "already done: budget of 3 candidates reached" in capsys.readouterr().err
    assert search("--resume", saved_search, "--budget", 5, "--no-progress") == 0
    assert "budget of 5 candidates reached; raise --budget to continue\n" in capsys.readouterr().err  # why it ended
    assert search("--resume", saved_search, "--time-budget", "1h", "--no-progress") == 0  # still 5 candidates
    assert "already done: budget of 5 candidates reached" in capsys.readouterr().err
    assert len(read_records(str(saved_search / "candidates.jsonl"))) == 5


def test_budgets_given_to_a_resume_that_is_already_done_are_kept(saved_search, capsys):
    """A raised --budget given while the time budget was spent was dropped without a word."""
    state = torch.load(saved_search / "state.pt", weights_only=False)
    torch.save({**state, "elapsed": 100.0}, saved_search / "state.pt")  # 100 s of search so far
    assert search("--resume", saved_search, "--budget", 5, "--time-budget", 50, "--no-progress") == 0
    assert ("already done: time budget of 50 s reached (100 s of search); raise --time-budget above 100 s to "
            "continue") in capsys.readouterr().err
    assert search("--resume", saved_search, "--time-budget", "1h", "--no-progress") == 0  # to the 5 given before
    err = capsys.readouterr().err
    assert "budget of 5 candidates reached" in err
    spent = re.search(r"\[5/5\] candidate 4: reward 0.5000, gate stop, 0.0 s; best 0.5000; search time (\d+)/3600 s\n",
                      err)
    assert spent and 100 <= int(spent.group(1)) < 110, err  # from the 100 s saved (a busy machine adds a second)
    assert len(read_records(str(saved_search / "candidates.jsonl"))) == 5


def test_resume_of_a_state_without_budgets_asks_for_one(saved_search, capsys):
    state = torch.load(saved_search / "state.pt", weights_only=False)
    del state["budget"], state["time_budget"]  # as saved before budgets were
    torch.save(state, saved_search / "state.pt")
    assert search("--resume", saved_search) == 2
    assert "error: give --budget N (candidates) and/or --time-budget T (e.g. 4h)" in capsys.readouterr().err


def test_resume_warns_of_lost_log_lines_and_keeps_the_log_as_it_was(saved_search, capsys):
    log = saved_search / "candidates.jsonl"
    damaged = log.read_text()[:-50]  # candidate 2's line cut: what is left of it was lost with the repair
    log.write_text(damaged)
    assert search("--resume", saved_search, "--budget", "4", "--no-progress") == 0
    err = capsys.readouterr().err
    assert (f"lacks the records of 1 finished candidate(s) (index 2): the file was cut short or edited; they are "
            f"lost, and the search goes on without them (the log as it was: {log}.damaged)") in err
    assert (saved_search / "candidates.jsonl.damaged").read_text() == damaged
    log.write_text(log.read_text().splitlines(keepends=True)[0])
    assert search("--resume", saved_search, "--budget", "5", "--no-progress") == 0
    err = capsys.readouterr().err
    assert "lacks the records of 3 finished candidate(s) (index 1, 2, 3)" in err
    assert "[5/5] candidate 4: " in err  # the lost ones count against the budget
    assert [r["index"] for r in read_records(str(log))] == [0, 4]  # each index once at most
    log.unlink()
    assert search("--resume", saved_search, "--budget", "6", "--no-progress") == 0
    assert (f"{log} lacks the records of 5 finished candidate(s) (index 0, 1, 2, 3, 4): the file was removed; "
            f"they are lost") in capsys.readouterr().err


def test_failures_are_explained_and_all_failed_exits_1(tmp_path, no_data, monkeypatch, capsys):
    def fail(genotype, index, ctx, decide, known):
        raise CandidateFailed(f"non-finite loss (nan) at stage 1, step {index}")

    monkeypatch.setattr(loop, "evaluate_candidate", fail)
    assert search("--out", tmp_path / "r", "--budget", "2", "--no-progress") == 1
    out = capsys.readouterr().out
    assert "every candidate failed; the first (index 0): CandidateFailed: non-finite loss (nan) at stage 1, " \
           "step 0 (in every design: do the labels hold class pixels, not only 255 = ignore?" in out
    assert "train the best design" not in out
    monkeypatch.setattr(loop, "evaluate_candidate", fake_evaluate)
    assert search("--resume", tmp_path / "r", "--budget", "3", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "2 of 3 failed; the first (index 0)" in out and "3.60M" in out


@pytest.mark.parametrize("error, lost", [
    (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), True),
    (RuntimeError("CUDA error: device-side assert triggered"), True),  # torch before 2.8
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("CUDA error: out of memory"), False),
    (CandidateFailed("non-finite loss (nan) at stage 1, step 3"), False),
])
def test_a_gpu_error_that_leaves_the_gpu_unusable_is_logged_then_stops_the_search(tmp_path, no_data, monkeypatch,
                                                                                  capsys, error, lost):
    """Every later candidate of the process failed on it at once, spending the budget on nothing."""
    def fails_at_1(genotype, index, ctx, decide, known):
        if index == 1:
            raise error
        return fake_evaluate(genotype, index, ctx, decide, known)
    monkeypatch.setattr(loop, "evaluate_candidate", fails_at_1)
    assert search("--out", tmp_path / "r", "--budget", 3, "--no-progress") == (2 if lost else 0)
    records = read_records(str(tmp_path / "r" / "candidates.jsonl"))
    assert [r["status"] for r in records] == ["ok", "failed"] + ([] if lost else ["ok"])
    if lost:
        assert capsys.readouterr().err.endswith(
            f"error: candidate 1 failed with an error after which this process cannot use its GPU "
            f"({type(error).__name__}: {error}); it is logged as failed; 2 candidates saved; continue with "
            f"python -m nasfast.search --resume {tmp_path / 'r'}\n")
        monkeypatch.setattr(loop, "evaluate_candidate", fake_evaluate)
        assert search("--resume", tmp_path / "r", "--no-progress") == 0
        assert [r["index"] for r in read_records(str(tmp_path / "r" / "candidates.jsonl"))] == [0, 1, 2]


def test_a_full_disk_in_a_search_says_what_was_saved_and_how_to_go_on(tmp_path, no_data, monkeypatch, capsys):
    """The trainer said so; the search said only "No space left on device"."""
    import errno
    real_save = loop.save_torch

    def disk_full_at_state_2(state, path):
        if state["next_index"] == 2:  # candidate 1 logged, its state not saved
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real_save(state, path)
    monkeypatch.setattr(loop, "save_torch", disk_full_at_state_2)
    assert search("--out", tmp_path / "r", "--budget", 3, "--no-progress") == 2
    assert capsys.readouterr().err.endswith(
        f"error: No space left on device: {tmp_path / 'r' / 'state.pt'}; 1 candidate saved; continue with python -m "
        f"nasfast.search --resume {tmp_path / 'r'}\n")
    monkeypatch.setattr(loop, "save_torch", real_save)
    assert search("--resume", tmp_path / "r", "--no-progress") == 0
    assert [r["index"] for r in read_records(str(tmp_path / "r" / "candidates.jsonl"))] == [0, 1, 2]


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_caching_saves_nothing_and_the_directory_can_be_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nasfast.search.context, "build_context", ctrl_c)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "cache").mkdir()  # a memory-mapped cache may have been begun
    assert search("--out", run_dir, "--budget", "1") == 130
    error = capsys.readouterr().err
    assert error.endswith(f"interrupted before the search began: nothing was saved; run the same command again "
                          f"(--out {run_dir} can be reused)\n")  # not "or remove" a directory of the user's
    parser = build_parser()
    assert choose_run(parser.parse_args(["--out", str(run_dir), "--budget", "1"]), parser)[2] is False
    assert search("--out", tmp_path / "new", "--budget", "1") == 130
    assert capsys.readouterr().err.endswith("interrupted before the search began: nothing was saved; run the same "
                                            "command again\n") and not (tmp_path / "new").exists()

    def cache_begun_then_ctrl_c(config, run_dir, *args, **kwargs):
        os.makedirs(os.path.join(run_dir, "cache"))
        raise KeyboardInterrupt
    monkeypatch.setattr(nasfast.search.context, "build_context", cache_begun_then_ctrl_c)
    assert search("--out", tmp_path / "made", "--budget", "1") == 130
    assert capsys.readouterr().err.endswith(f"(--out {tmp_path / 'made'} can be reused), or remove "
                                            f"{tmp_path / 'made'}\n")


def test_a_search_stopped_while_writing_its_first_files_can_be_started_again(tmp_path, no_data, monkeypatch, capsys):
    """Stopped (Ctrl-C, or killed) after its options and empty log were written but before its
    state: the same command refused the directory as "another run's files", and --resume it as
    holding no search."""
    run_dir = tmp_path / "r"
    real_save = loop.save_torch
    monkeypatch.setattr(loop, "save_torch", ctrl_c)
    assert search("--out", run_dir, "--preset", "tiny", "--budget", 2, "--no-progress") == 130
    assert "nothing was saved; run the same command again" in capsys.readouterr().err
    assert sorted(os.listdir(run_dir)) == ["candidates.jsonl", "config.json"]
    assert search("--resume", run_dir, "--budget", 2) == 2
    assert f"no saved search there (state.pt missing); a search stopped as it began left its files: start it again " \
           f"with --out {run_dir}" in capsys.readouterr().err
    monkeypatch.setattr(loop, "save_torch", real_save)
    assert search("--out", run_dir, "--preset", "tiny", "--budget", 2, "--no-progress") == 0
    assert len(read_records(str(run_dir / "candidates.jsonl"))) == 2
    (tmp_path / "d" / "config.json").mkdir(parents=True)  # not a file: another run's all the same
    assert search("--out", tmp_path / "d", "--budget", 1) == 2
    assert "(another run's files)" in capsys.readouterr().err
    (tmp_path / "t").mkdir()  # a training run's options alone are still another run's files
    (tmp_path / "t" / "config.json").write_text(json.dumps({"genotype": "arch0", "epochs": 2}))
    assert search("--out", tmp_path / "t", "--budget", 1) == 2
    assert "(another run's files)" in capsys.readouterr().err


def test_ctrl_c_while_caching_a_resumed_search(saved_search, monkeypatch, capsys):
    monkeypatch.setattr(nasfast.search.context, "build_context", ctrl_c)
    assert search("--resume", saved_search, "--budget", "5") == 130
    assert f"interrupted: 3 candidates saved; continue with {PROG} --resume {saved_search}" in \
        capsys.readouterr().err


def test_ctrl_c_as_the_last_candidate_is_saved_ends_the_search_as_done(tmp_path, no_data, monkeypatch, capsys):
    """The stop takes effect once the state is saved: the search is then done, not to be resumed."""
    real_save = loop.save_torch

    def save_and_get_interrupted(state, path):
        if state["next_index"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the last state is being written
        real_save(state, path)

    monkeypatch.setattr(loop, "save_torch", save_and_get_interrupted)
    assert search("--out", tmp_path / "r", "--preset", "tiny", "--budget", 2, "--no-progress") == 0
    out, err = capsys.readouterr()
    assert "stopped as the last candidate was saved: the search is done" in err and "--resume" not in err
    assert "top 2 of 2 candidates (0 failed)" in out
    monkeypatch.setattr(loop, "save_torch", real_save)
    assert search("--resume", tmp_path / "r", "--no-progress") == 0
    assert "already done: budget of 2 candidates reached" in capsys.readouterr().err


def test_a_new_search_on_a_directory_in_use_is_told_so_first(saved_search, capsys):
    """It was told to continue it with --resume, which was then refused as in use."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from nasfast.files import lock_directory\n"
                               "lock = lock_directory(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
                               str(saved_search)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    try:
        assert holder.stdout.readline() == "locked\n"
        assert search("--out", saved_search, "--budget", 5) == 2
    finally:
        holder.kill()
        holder.wait()
    error = capsys.readouterr().err
    assert f"{saved_search} is in use by another process" in error and "--resume" not in error


def test_workers_per_gpu_without_torchrun_is_refused(tmp_path, monkeypatch, capsys):
    """One process has nothing to share a GPU with: the option was ignored without a word."""
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert search("--out", tmp_path / "r", "--budget", 1, "--workers-per-gpu", 4) == 2
    assert "--workers-per-gpu acts only under torchrun (processes sharing a GPU): leave it out" in \
        capsys.readouterr().err and not (tmp_path / "r").exists()


def test_madds_are_readable():
    assert [madds_text(m) for m in (3_640_000, 42_100_000, 950_000_000, 1_234_000_000)] == \
        ["3.64M", "42.1M", "950M", "1.23G"]


def test_a_real_tiny_search_without_progress_bars_at_the_edge_sizes(tmp_path, camvid_root, capsys):
    # 17 cached images in batches of 8 (a last batch of one joins the one before: batch norm after
    # global pooling cannot train on one) and a decoder of one channel (the separable op's
    # one-channel matrices): each once made every candidate fail.
    run_dir = tmp_path / "r"
    assert search("--dataset", "camvid", "--preset", "tiny", "--budget", "1", "--out", run_dir, "--no-progress",
                  "--stage1-images", "17", "--val-images", "8", "--stage2-images", "8", "--channels", "1") == 0
    out, err = capsys.readouterr()
    assert "caching" not in err and "stage-1 cache: 17 meta-train + 8 meta-val" in err
    assert "top 1 of 1 candidates (0 failed)" in out and "M  [[" in out
    assert out.strip().endswith(f"train the best design: python -m nasfast.train --genotype {run_dir} "
                                f"--dataset camvid --preset tiny --out DIR")
    assert json.loads((run_dir / "config.json").read_text())["stage1_images"] == 17


def test_batches_of_one_are_avoided():
    assert batch_bounds(17, 8) == [(0, 8), (8, 17)]
    assert batch_bounds(16, 8) == [(0, 8), (8, 16)] and batch_bounds(10, 8) == [(0, 8), (8, 10)]
    assert batch_bounds(9, 8) == [(0, 9)] and batch_bounds(5, 8) == [(0, 5)]


def test_one_stage1_image_and_meta_train_of_one_are_refused(tmp_path, capsys):
    from nasfast.search.context import split_indices
    assert search("--out", tmp_path / "r", "--stage1-images", "1", "--budget", "1") == 2
    assert "--stage1-images: must be at least 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="leaves 1 of the 367 training images for meta-train; it needs at least 2"):
        split_indices(367, 0.997, 0)


def test_a_teacher_is_recorded_by_its_absolute_path(tmp_path, no_data, monkeypatch):
    (tmp_path / "t.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert search("--out", "run", "--preset", "tiny", "--budget", 1, "--teacher", "t.pt", "--no-progress") == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["teacher"] == str(tmp_path / "t.pt")
    monkeypatch.chdir("/")  # a resume from elsewhere, naming the same file
    assert search("--resume", tmp_path / "run", "--budget", 2, "--teacher", tmp_path / "t.pt", "--no-progress") == 0


def test_a_teacher_may_move_between_resumes_but_not_change(tmp_path, camvid_root, capsys):
    """A moved teacher stopped the search for good (--teacher refused as another option); a file
    replaced at its path went on silently with other logits."""
    teacher, moved, run_dir = tmp_path / "t.pt", tmp_path / "moved.pt", tmp_path / "run"
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Conv2d(3, 11, 1)).save(str(teacher))
    assert search("--dataset", "camvid", "--out", run_dir, "--preset", "tiny", "--budget", 1, "--teacher", teacher,
                  "--no-progress") == 0
    teacher.rename(moved)
    assert search("--resume", run_dir, "--budget", 2, "--no-progress") == 2
    assert f"teacher {teacher}: no such TorchScript file (moved? give --teacher where it is now)" in \
        capsys.readouterr().err
    assert search("--resume", run_dir, "--budget", 2, "--teacher", moved, "--no-progress") == 0
    torch.jit.script(torch.nn.Conv2d(3, 11, 1)).save(str(moved))  # other weights, the same path
    capsys.readouterr()
    assert search("--resume", run_dir, "--budget", 3, "--teacher", moved, "--no-progress") == 2
    assert (f"teacher {moved} is not the file the search in {run_dir} began with (its bytes differ): give "
            f"--teacher that file") in capsys.readouterr().err
    assert len(read_records(str(run_dir / "candidates.jsonl"))) == 2


def test_a_search_begun_without_a_teacher_is_not_resumed_with_one(saved_search, tmp_path, capsys):
    torch.jit.script(torch.nn.Conv2d(3, 11, 1)).save(str(tmp_path / "t.pt"))
    assert search("--resume", saved_search, "--budget", 4, "--teacher", tmp_path / "t.pt") == 2
    assert f"--teacher {tmp_path / 't.pt'} differs from the run's none" in capsys.readouterr().err


class Infinite(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 11) + x.shape[2:], float("inf"))


def test_a_teacher_of_another_class_count_or_non_finite_logits_is_refused_before_caching(tmp_path):
    from nasfast.search.teacher import load_teacher
    classes = lambda k: [f"c{i}" for i in range(k)]  # noqa: E731
    torch.jit.script(torch.nn.Conv2d(3, 5, 1)).save(str(tmp_path / "five.pt"))
    with pytest.raises(ValueError, match=r"gives \(1, 5, 64, 64\) logits .* needs N x 11 x H x W logits"):
        load_teacher(str(tmp_path / "five.pt"), torch.device("cpu"), classes(11))
    assert load_teacher(str(tmp_path / "five.pt"), torch.device("cpu"), classes(5))(torch.zeros(2, 3, 8, 8)).shape == \
        (2, 5, 8, 8)
    torch.jit.script(torch.nn.Linear(4, 4)).save(str(tmp_path / "linear.pt"))
    with pytest.raises(ValueError, match="fails on a 64x64 image"):
        load_teacher(str(tmp_path / "linear.pt"), torch.device("cpu"), classes(11))
    torch.jit.script(Infinite()).save(str(tmp_path / "inf.pt"))
    with pytest.raises(ValueError, match="inf.pt gives non-finite logits"):
        load_teacher(str(tmp_path / "inf.pt"), torch.device("cpu"), classes(11))
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"notes.txt is not a TorchScript file \(PytorchStreamReader failed "
                                         r"reading zip archive: not a ZIP archive\)$"):
        load_teacher(str(tmp_path / "notes.txt"), torch.device("cpu"), classes(11))
    info = {"genotype": "arch0", "num_classes": 5, "class_names": classes(5)}
    torch.jit.script(torch.nn.Conv2d(3, 5, 1)).save(str(tmp_path / "export.pt"),
                                                   _extra_files={"nasfast.json": json.dumps(info)})
    assert load_teacher(str(tmp_path / "export.pt"), torch.device("cpu"), classes(5)) is not None
    with pytest.raises(UsageError, match=r"teacher .*export.pt: the dataset's class 4 is 'sky', the model's 'c4'"):
        load_teacher(str(tmp_path / "export.pt"), torch.device("cpu"), classes(4) + ["sky"])
    member = flip_a_stored_byte(tmp_path / "five.pt")  # a bad copy: torch.jit.load took a wrong weight
    with pytest.raises(UsageError, match=rf"five.pt is damaged: its bytes differ from what was saved \(checksum of "
                                         rf"{member}\); copy it again, or export it again$"):
        load_teacher(str(tmp_path / "five.pt"), torch.device("cpu"), classes(5))


def test_a_data_error_in_a_candidate_stops_the_search_and_resume_goes_on(saved_search, capsys, monkeypatch):
    from nasfast.data import DataError

    def broken_label(genotype, index, ctx, decide, known):
        raise DataError("labels/x.png: label values [42] are neither classes [0, 11) nor the ignore index 255")

    monkeypatch.setattr(loop, "evaluate_candidate", broken_label)
    assert search("--resume", saved_search, "--budget", "5") == 2
    assert (f"error: labels/x.png: label values [42] are neither classes [0, 11) nor the ignore index 255; once "
            f"it is mended (python -m nasfast.data --dataset camvid lists every file that cannot be used), continue "
            f"with {PROG} --resume {saved_search}") in capsys.readouterr().err
    assert len(read_records(str(saved_search / "candidates.jsonl"))) == 3  # not logged as a failed design
    monkeypatch.setattr(loop, "evaluate_candidate", fake_evaluate)
    assert search("--resume", saved_search, "--budget", "5") == 0
    assert [r["index"] for r in read_records(str(saved_search / "candidates.jsonl"))] == [0, 1, 2, 3, 4]


def test_a_resume_given_own_data_for_a_camvid_search_says_the_root_is_wrong(saved_search, capsys, monkeypatch):
    from pathlib import Path
    from nasfast.data import DataError
    from nasfast.data.datasets import OtherLayout

    def own_data(*args, **kwargs):
        raise OtherLayout(DataError("train.txt, line 1: expected 'image label', got 'im0'"), "camvid", Path("/own"))
    monkeypatch.setattr(nasfast.search.context, "build_context", own_data)
    assert search("--resume", saved_search, "--data-root", "/own", "--budget", "5") == 2
    said = ("/own holds your own data's layout (classes.txt, images/), not the camvid data this run read: give "
            "--data-root the directory that holds them")
    assert capsys.readouterr().err.endswith(f"error: {said}\n")
    from nasfast.search import distributed  # a torchrun search, or one continued in one process
    parser = build_parser()
    args = parser.parse_args(["--resume", str(saved_search), "--data-root", "/own", "--budget", "5"])
    with pytest.raises(DataError, match=re.escape(said)):
        distributed.run(args, lambda: choose_run(args, parser))


def test_a_resumed_search_reads_its_data_where_it_did_and_refuses_other_data(tmp_path):
    from types import SimpleNamespace
    from nasfast.search.config import preset
    from nasfast.search.context import check_same_data
    recorded = []

    def factory(classes, images, root):
        def context(config, run_dir, data):
            recorded.append(data)
            return SimpleNamespace(data={"classes": classes, "training images": images, "root": root})
        return context

    camvid = [f"class{i}" for i in range(11)]
    first = loop.Search(str(tmp_path), preset("tiny"), factory(camvid, 367, "/data/camvid"), budget=1)
    first.context()
    first.start()
    moved = loop.Search(str(tmp_path), preset("tiny"), factory(camvid, 367, "/moved/camvid"))
    moved.resume()
    moved.context()  # the same data elsewhere (--data-root): accepted, and recorded for the next resume
    loop.save_torch(moved.state_dict(), moved.path(loop.SEARCH_STATE))
    again = loop.Search(str(tmp_path), preset("tiny"), factory(camvid, 367, "/moved/camvid"))
    again.resume()
    again.context()
    assert [data and data["root"] for data in recorded] == [None, "/data/camvid", "/moved/camvid"]
    other = {"classes": ["road", "car"], "training images": 12, "root": "/data/other"}
    with pytest.raises(ValueError, match=r"data found in /data/other are not those of the search in run: classes "
                                         r"\['road', 'car'\], the search's 11 \[class0, class1, class2, \.\.\.\]; "
                                         r"training images 12, the search's 367 \(check --data-root\)"):
        check_same_data(other, recorded[-1], "run")


def test_a_resume_on_other_data_is_refused_before_the_cache_is_built(saved_search, camvid_root, capsys,
                                                                     monkeypatch):
    state = torch.load(saved_search / "state.pt", weights_only=False)
    state["data"] = {"classes": ["road", "car"], "training images": 5, "root": "/gone"}
    torch.save(state, saved_search / "state.pt")
    monkeypatch.setattr(nasfast.search.context, "build_context", REAL_BUILD_CONTEXT)
    monkeypatch.setattr(nasfast.search.context, "_stage1_caches", lambda *a: pytest.fail("the cache was built"))
    assert search("--resume", saved_search, "--budget", 4, "--data-root", camvid_root, "--no-progress") == 2
    assert f"the data found in {camvid_root} are not those of the search in {saved_search}: classes" in \
        capsys.readouterr().err


def test_hints_are_command_lines_to_copy():
    from types import SimpleNamespace
    from nasfast.search.summary import closing_summary, resume_command
    assert resume_command("runs/my search", "my data") == \
        "python -m nasfast.search --resume 'runs/my search' --data-root 'my data'"
    records = [dict(fake_evaluate(None, 0, None, None), index=0, genotype=[], status="ok")]
    config = SimpleNamespace(dataset="folder", preset=None, channels=16, sep_repeats=1)
    summary = closing_summary(records, 1, "runs/x y", config, "/data/own")
    assert summary.endswith("train the best design: python -m nasfast.train --genotype 'runs/x y' --dataset folder "
                            "--data-root /data/own --out DIR")
    assert "params and MAdds: the decoder as searched (16 channels, separable repeats 1, at the searched image " \
           "size); trained, with 64 channels" in summary


def test_meta_val_without_a_scored_pixel_is_refused_before_any_candidate(tmp_path, capsys):
    from test_cli_train import folder_dataset
    root = folder_dataset(tmp_path / "data", images=16, unlabelled=range(16))
    for val_images in (16, 4):  # the preset's, and as many as held out: neither left any out
        assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 2, "--val-fraction",
                      0.25, "--val-images", val_images, "--out", tmp_path / "run", "--no-progress") == 2
        assert ("the 4 meta-val images have no labelled pixel of a scored class, so no reward can be computed; raise "
                "--val-fraction (0.25)\n") in capsys.readouterr().err
        assert not (tmp_path / "run" / "candidates.jsonl").exists()
    assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 2, "--val-fraction",
                  0.25, "--val-images", 3, "--out", tmp_path / "run3", "--no-progress") == 2
    assert "the 3 meta-val images have no labelled pixel of a scored class, so no reward can be computed; raise " \
           "--val-fraction (0.25) or --val-images (3)\n" in capsys.readouterr().err


def test_stage1_images_without_a_labelled_pixel_are_refused_before_any_candidate(tmp_path, capsys):
    from test_cli_train import folder_dataset
    from nasfast.search.context import split_indices
    meta_train, _ = split_indices(16, 0.25, preset("tiny").seed)
    numbers = sorted(range(16), key=lambda i: f"im{i}")  # the dataset's order: that of the file names
    root = folder_dataset(tmp_path / "data", images=16, unlabelled=[numbers[i] for i in meta_train])
    assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 2, "--val-fraction",
                  0.25, "--out", tmp_path / "run", "--no-progress") == 2
    assert "the 12 stage-1 images hold no labelled pixel (all 255 = ignore): there is nothing to train on\n" in \
        capsys.readouterr().err
    assert not (tmp_path / "run" / "candidates.jsonl").exists()


def test_a_file_name_that_is_not_utf8_is_searched_as_any_other(tmp_path):
    """A Latin-1 name (as zips made on Windows hold): the stage-1 cache's digest of the file names
    could not encode it, and the search stopped without naming a file."""
    from test_cli_train import folder_dataset
    root = folder_dataset(tmp_path / "data", images=16)
    for folder in ("images", "labels"):
        os.rename(os.fsencode(root / folder / "im3.png"), os.fsencode(root / folder) + b"/caf\xe9 3.png")
    assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 1, "--val-fraction",
                  0.25, "--out", tmp_path / "run", "--no-progress") == 0
    assert read_records(str(tmp_path / "run" / "candidates.jsonl"))[0]["status"] == "ok"


def test_an_undefined_reward_fails_the_candidate():
    from types import SimpleNamespace
    from nasfast.search.candidate import _score
    ctx = SimpleNamespace(num_classes=3, ignore_index=255, exclude=(0,), device=torch.device("cpu"))
    background_only = [(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))]
    with pytest.raises(CandidateFailed, match="reward nan: meta-val holds no labelled pixel of a scored class"):
        _score(lambda x: x, background_only, ctx)


@pytest.mark.parametrize("options", [(), ("--no-progress",)])
def test_progress_is_a_line_per_candidate_where_stderr_is_not_a_terminal(tmp_path, no_data, capsys, options):
    assert search("--out", tmp_path / "run", "--preset", "tiny", "--budget", 2, *options) == 0
    err = capsys.readouterr().err
    assert "[1/2] candidate 0: reward 0.5000, gate stop, 0.0 s; best 0.5000\n" in err
    assert "[2/2] candidate 1: reward 0.5000" in err and "\r" not in err


def test_no_progress_turns_the_bar_into_lines_on_a_terminal(tmp_path, no_data, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert search("--out", tmp_path / "run", "--preset", "tiny", "--budget", 2, "--no-progress") == 0
    err = capsys.readouterr().err
    assert "[2/2] candidate 1: reward 0.5000" in err and "\r" not in err


def test_tensorboard_without_its_package_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    assert search("--out", tmp_path / "run", "--budget", "1", "--tensorboard") == 2
    assert "--tensorboard needs the tensorboard package: pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_data_check_hint_names_where_the_data_are():
    from nasfast.cli import once_mended
    assert once_mended(ValueError("a.png: truncated"), "folder", "/data/my set") == \
        "a.png: truncated; once it is mended (python -m nasfast.data --dataset folder --data-root '/data/my set' " \
        "lists every file that cannot be used)"
    assert "(python -m nasfast.data --dataset camvid lists" in once_mended(ValueError("a.png"), "camvid", None)


def test_out_naming_the_dataset_or_a_folder_of_its_files_is_refused_before_anything_is_written(tmp_path, capsys):
    from test_cli_train import folder_dataset
    root = folder_dataset(tmp_path / "data", images=16)
    before = {folder: sorted(os.listdir(root / folder)) for folder in (".", "images")}
    assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 1, "--out", root,
                  "--no-progress") == 2
    assert f"{root} is the dataset's directory, not one for a run's files: choose another" in capsys.readouterr().err
    assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 1, "--out",
                  root / "images", "--no-progress") == 2
    assert f"{root / 'images'} holds the dataset's images or labels, not a run's files: choose another" in \
        capsys.readouterr().err
    assert {folder: sorted(os.listdir(root / folder)) for folder in before} == before


def test_a_missing_label_file_is_named_before_the_search_begins(tmp_path, capsys):
    from test_cli_train import folder_dataset
    root = folder_dataset(tmp_path / "data", images=16)
    (root / "labels" / "im3.png").unlink()
    assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 1, "--out",
                  tmp_path / "run", "--no-progress") == 2
    assert capsys.readouterr().err.endswith(f"error: {root / 'labels' / 'im3.png'}: label file is missing\n")
    assert not (tmp_path / "run").exists()


def test_the_closing_train_command_fits_a_small_dataset(tmp_path, capsys):
    """The training preset's batch (tiny: 8) exceeds these 7 images: the printed command says one
    that fits, and trains as printed."""
    from test_cli_train import folder_dataset, train_cli
    root = folder_dataset(tmp_path / "data", images=7)
    assert search("--dataset", "folder", "--data-root", root, "--preset", "tiny", "--budget", 1,
                  "--stage2-batch-size", 6, "--out", tmp_path / "run", "--no-progress") == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.startswith("train the best design: ") and " --batch-size 7 " in printed
    words = shlex.split(printed.split(": ", 1)[1].replace("DIR", str(tmp_path / "trained")))
    assert train_cli(*words[3:], "--no-progress") == 0
    assert (tmp_path / "trained" / "best.pt").exists()


def test_a_stage_1_cache_that_does_not_fit_on_the_disk_is_named_and_removed(tmp_path, camvid_root, capsys):
    """It was left behind (on a full disk, where it took the space), its file unnamed."""
    from conftest import file_size_limit
    with file_size_limit(64 * 1024):  # the lock and the first cache file's header fit
        assert search("--dataset", "camvid", "--preset", "tiny", "--budget", 1, "--memory-limit-gb", 0, "--out",
                      tmp_path / "run", "--no-progress") == 2
    level0 = tmp_path / "run" / "cache" / "stage1" / "level0.npy"
    assert capsys.readouterr().err.endswith(f"error: File too large: {level0}\n")
    assert not (tmp_path / "run").exists()
