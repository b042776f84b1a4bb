import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nasfast.files import append_record

REPO = Path(__file__).resolve().parents[1]


def fake_run(path: Path, strategy: str, rewards):
    """A search log; a reward pair (stage 1, stage 2) of None, None is a failed candidate."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"strategy": strategy, "channels": 16, "sep_repeats": 1}))
    for i, (s1, s2) in enumerate(rewards):
        append_record(str(path / "candidates.jsonl"), dict(
            index=i, genotype=[[[0, 0], [0, 0], [0, 0]], [0, [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]],
            reward=s2 if s2 is not None else s1, stage1_reward=s1, stage2_reward=s2,
            gate=None if s1 is None else "stop" if s2 is None else "continue",
            status="failed" if s1 is None else "ok", error="CandidateFailed: nan" if s1 is None else None,
            params=10, madds=10, seconds=1))


def test_report_tables_and_plot(tmp_path):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None), (0.2, 0.5), (0.4, 0.6)])
    fake_run(tmp_path / "rs", "random", [(0.1, None), (0.1, 0.1)])
    out = subprocess.run([sys.executable, "-m", "nasfast.report", str(tmp_path / "ppo"), str(tmp_path / "rs"),
                          "--bins", "2"],
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, check=True).stdout
    assert "top 4 of 4 candidates" in out and "top 2 of 2 candidates" in out
    assert out.count("params and MAdds: the decoder as searched (16 channels, separable repeats 1") == 2
    rows = [line.rstrip() for line in out.splitlines()]
    # Per half of each run: stage-1 mean and max, stage-2 mean and max over those that continued.
    assert "    0-1           0.2000     0.3000      0.2000     0.2000    1/2" in rows
    assert "    2-3           0.3000     0.4000      0.5500     0.6000    2/2" in rows
    assert "    0-0           0.1000     0.1000           -          -    0/1" in rows
    png = tmp_path / "ppo" / "rewards-compared.png"  # not the first run's own plot, rewards.png
    if importlib.util.find_spec("matplotlib"):
        assert f"plot: {png}" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plots_parts_name_each_runs_candidates():
    from nasfast.report import bins, tick_labels
    records = lambda n: [{"index": i} for i in range(n)]  # noqa: E731
    assert tick_labels([bins(records(8), 2), bins(records(8), 2)]) == ["0-3", "4-7"]
    assert tick_labels([bins(records(8), 2), bins(records(3), 2)]) == ["0-3 / 0-1", "4-7 / 2-2"]
    assert tick_labels([bins(records(1), 2), bins(records(8), 2)]) == ["0-0 / 0-3", "4-7"]
    assert [len(part) for part in bins(records(5), 4)] == [2, 1, 1, 1]  # as many parts as asked (was 3)


@pytest.mark.parametrize("runs, parts", [((2000,), 100), ((2000,), 7), ((2000, 500), 4), ((8,), 4)])
def test_the_plots_part_labels_never_run_together(runs, parts):
    """Many parts, or the long labels of two runs, once gave labels printed over each other."""
    pytest.importorskip("matplotlib")
    from nasfast.report import figure
    fig = figure([{"name": f"run {n}", "records": [dict(index=i, status="ok", stage1_reward=i % 7 / 10,
                                                        stage2_reward=0.2) for i in range(n)]} for n in runs], parts)
    fig.canvas.draw()
    for ax in fig.axes:
        boxes = [label.get_window_extent() for label in ax.get_xticklabels() if label.get_text()]
        assert 4 <= len(boxes) <= 12
        assert not any(left.overlaps(right) for left, right in zip(boxes, boxes[1:]))
        assert all(0 <= box.x0 and box.x1 <= fig.bbox.width for box in boxes)


def test_report_rejects_a_directory_without_a_search(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nasfast.report", str(tmp_path)], capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "not a search run" in result.stderr and "training" not in result.stderr
    (tmp_path / "best.pt").write_bytes(b"a training's checkpoint")
    trained = subprocess.run([sys.executable, "-m", "nasfast.report", str(tmp_path)], capture_output=True, text=True,
                             env={"PYTHONPATH": str(REPO)})
    assert f"it holds a training run: python -m nasfast.evaluate --checkpoint {tmp_path / 'best.pt'}" in trained.stderr
    typo = subprocess.run([sys.executable, "-m", "nasfast.report", str(tmp_path / "typo")], capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO)})
    assert typo.returncode == 2 and f"{tmp_path / 'typo'}: no such search run or log" in typo.stderr


def test_a_run_without_a_finished_candidate_is_reported_and_left_out_of_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fake_run(tmp_path / "failed", "random", [(None, None)] * 3)
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (None, None), (0.3, None)])
    assert report(tmp_path / "failed", tmp_path / "ppo", "--plot", tmp_path / "both.png") == 0
    out = capsys.readouterr().out
    assert f"random ({tmp_path / 'failed'}): mean / max reward per stage over the search: no candidate finished" in out
    assert "    2-2           0.3000" in out
    assert f"plot: {tmp_path / 'both.png'}" in out
    assert report(tmp_path / "failed") == 0
    assert "(no plot: no candidate finished)" in capsys.readouterr().err
    assert not (tmp_path / "failed" / "rewards.png").exists()


def report(*argv) -> int:
    from nasfast.cli import run
    from nasfast.report import PROG, main
    try:
        return run(main, PROG, [str(a) for a in argv])
    except SystemExit as stop:  # argparse's errors
        return stop.code


def test_report_refuses_bad_numbers(tmp_path, capsys):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2)])
    for option, value in (("--bins", "0"), ("--top", "-2")):
        assert report(tmp_path / "ppo", option, value) == 2
        assert f"argument {option}: must be at least 1" in capsys.readouterr().err


def test_report_names_each_run_and_shows_madds_in_m(tmp_path, capsys, monkeypatch):
    import nasfast.report
    monkeypatch.setattr(nasfast.report, "has_matplotlib", lambda: False)
    monkeypatch.setattr(nasfast.report, "plot", lambda *args: False)
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None)])
    fake_run(tmp_path / "rs", "random", [(0.1, None)])
    assert report(tmp_path / "ppo", tmp_path / "rs", "--top", "1") == 0
    out, err = capsys.readouterr()
    assert f"ppo ({tmp_path / 'ppo'}): best designs\ntop 1 of 2 candidates" in out
    assert f"random ({tmp_path / 'rs'}): best designs\ntop 1 of 1 candidates" in out
    assert "0.00M" in out and "install matplotlib" in err
    assert report(tmp_path / "ppo", "--plot", tmp_path / "x.png") == 2  # asked for, and impossible
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_report_names_a_damaged_config(tmp_path, capsys):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2)])
    (tmp_path / "ppo" / "config.json").write_text("{")
    assert report(tmp_path / "ppo") == 2
    assert "config.json is damaged" in capsys.readouterr().err


@pytest.mark.parametrize("line, problem", [("{}", "line 2 lacks index, genotype, status"),
                                           ("[1, 2]", "line 2 is not a JSON object"),
                                           ('{"epoch": 0}', "line 2 lacks index")])
def test_report_names_a_log_line_that_is_not_a_candidate(tmp_path, capsys, line, problem):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None)])
    log = tmp_path / "ppo" / "candidates.jsonl"
    log.write_text(log.read_text().splitlines()[0] + "\n" + line + "\n")
    assert report(tmp_path / "ppo") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{log}: not the candidates.jsonl of a search ({problem}" in err


def test_report_takes_a_search_log_file_for_its_run_and_a_plot_only_as_png(tmp_path, capsys):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2)])
    (tmp_path / "ppo" / "candidates.jsonl").rename(tmp_path / "ppo" / "old.jsonl")
    assert report(tmp_path / "ppo" / "old.jsonl", "--top", "1") == 0
    assert f"ppo ({tmp_path / 'ppo' / 'old.jsonl'}): best designs" in capsys.readouterr().out  # the log, as given
    assert report(tmp_path / "ppo", "--plot", tmp_path / "plot.txt") == 2
    assert "give a file name ending in .png" in capsys.readouterr().err and not (tmp_path / "plot.txt").exists()


def test_report_names_what_it_cannot_take_before_its_tables(tmp_path, capsys):
    """A run's config.json given for its log was "damaged: line 1 is not valid JSON"; a --plot in a
    missing folder failed after the tables, naming the file; an empty log showed a bare header."""
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2)])
    assert report(tmp_path / "ppo" / "config.json") == 2
    assert f"{tmp_path / 'ppo' / 'config.json'}: not a search's log (candidates.jsonl); give the search's " \
           f"directory" in capsys.readouterr().err
    assert report(tmp_path / "ppo", "--plot", tmp_path / "none" / "plot.png") == 2
    captured = capsys.readouterr()
    assert f"no such folder {tmp_path / 'none'}" in captured.err and not captured.out
    (tmp_path / "ppo" / "candidates.jsonl").write_text("")
    assert report(tmp_path / "ppo") == 0
    assert "best designs\nno candidate logged yet\n" in capsys.readouterr().out


def test_report_says_how_to_go_on_with_a_search_stopped_before_its_budget(tmp_path, capsys):
    """A search killed part-way was reported as if it had finished."""
    import torch
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None)])
    state = {"next_index": 2, "elapsed": 10.0, "budget": 5, "time_budget": None, "strategy": {}, "gate": {}}
    torch.save(state, tmp_path / "ppo" / "state.pt")
    assert report(tmp_path / "ppo") == 0
    assert (f"(stopped after 2 of 5 candidates, its budget not spent: continue with python -m nasfast.search "
            f"--resume {tmp_path / 'ppo'})") in capsys.readouterr().out
    for spent in ({"budget": 2}, {"budget": None, "time_budget": 10.0}):
        torch.save({**state, **spent}, tmp_path / "ppo" / "state.pt")
        assert report(tmp_path / "ppo") == 0 and "stopped after" not in capsys.readouterr().out


def test_report_says_when_the_search_is_still_running(tmp_path, capsys):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None)])
    assert report(tmp_path / "ppo") == 0
    assert "still running" not in capsys.readouterr().out
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from nasfast.files import lock_directory; "
                               f"lock = lock_directory({str(tmp_path / 'ppo')!r}); print('locked', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert report(tmp_path / "ppo") == 0
        assert "(the search is still running: 2 candidates so far)" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()


def test_a_run_directory_without_write_access_gets_no_default_plot(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import errno
    import nasfast.report
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None)])

    def read_only(runs, path, count):
        raise OSError(errno.EROFS, "Read-only file system", path)
    monkeypatch.setattr(nasfast.report, "plot", read_only)
    assert report(tmp_path / "ppo") == 0
    captured = capsys.readouterr()
    assert "top 2 of 2 candidates" in captured.out and "plot:" not in captured.out
    assert (f"(no plot: {tmp_path / 'ppo' / 'rewards.png'} cannot be written: Read-only file system; give --plot "
            f"FILE.png)") in captured.err
    assert report(tmp_path / "ppo", "--plot", tmp_path / "x.png") == 2  # asked for: an error
    assert "Read-only file system" in capsys.readouterr().err


def test_a_plot_replaces_an_earlier_plot_and_nothing_else(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2)])
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(photo)
    assert report(tmp_path / "ppo", "--plot", photo) == 2
    err = capsys.readouterr().err
    assert f"--plot {photo}: the file exists and is not a plot of python -m nasfast.report" in err
    assert Image.open(photo).size == (4, 4)
    plot = tmp_path / "plot.png"
    assert report(tmp_path / "ppo", "--plot", plot) == 0 and report(tmp_path / "ppo", "--plot", plot) == 0
    assert f"plot: {plot}" in capsys.readouterr().out
    shutil.copy(photo, tmp_path / "ppo" / "rewards.png")  # the default path: it was replaced without a word
    assert report(tmp_path / "ppo") == 0 and Image.open(tmp_path / "ppo" / "rewards.png").size == (4, 4)
    assert (f"(no plot: {tmp_path / 'ppo' / 'rewards.png'} exists and is not a plot of python -m nasfast.report; "
            f"give --plot FILE.png)") in capsys.readouterr().err


def test_parts_follow_the_candidates_order_and_count_those_failed_in_stage_2(tmp_path, capsys):
    """A torchrun search logs candidates as they finish, and a candidate that failed in stage 2
    (out of memory, say) keeps its stage-1 reward and the gate's decision: both were misreported."""
    fake_run(tmp_path / "ppo", "ppo", [(0.1, None), (0.3, None), (0.2, None), (0.4, None)])
    log = tmp_path / "ppo" / "candidates.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[3].update(gate="continue", reward=None, status="failed", error="RuntimeError: CUDA out of memory")
    log.write_text("".join(json.dumps(r) + "\n" for r in (records[1], records[0], records[3], records[2])))
    assert report(tmp_path / "ppo", "--bins", "2") == 0
    rows = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    assert "    0-1           0.2000     0.3000           -          -    0/2" in rows
    assert "    2-3           0.3000     0.4000           -          -    1/2" in rows


def test_settings_that_are_not_a_json_object_are_one_line(tmp_path, capsys):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2)])
    (tmp_path / "ppo" / "config.json").write_text("[1, 2]")
    assert report(tmp_path / "ppo") == 2
    assert capsys.readouterr().err.endswith(f"error: {tmp_path / 'ppo' / 'config.json'} is damaged: not the settings "
                                            f"of a search (a JSON object)\n")
