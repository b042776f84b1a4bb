import json
import subprocess
import sys
from pathlib import Path

from nasfast.search.records import append_record

REPO = Path(__file__).resolve().parents[1]


def fake_run(path: Path, strategy: str, rewards):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"strategy": strategy}))
    for i, (s1, s2) in enumerate(rewards):
        append_record(str(path / "candidates.jsonl"), dict(
            index=i, genotype=[[[0, 0], [0, 0], [0, 0]], [0, [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]],
            reward=s2 if s2 is not None else s1, stage1_reward=s1, stage2_reward=s2,
            gate="stop" if s2 is None else "continue", status="ok", error=None, params=10, madds=10, seconds=1))


def test_report_tables(tmp_path):
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None), (0.2, 0.5), (0.4, 0.6)])
    fake_run(tmp_path / "rs", "random", [(0.1, None), (0.1, 0.1)])
    out = subprocess.run([sys.executable, "-m", "nasfast.report", str(tmp_path / "ppo"), str(tmp_path / "rs"),
                          "--bins", "2", "--plot", str(tmp_path / "p.png")],
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, check=True).stdout
    assert "top 4 of 4 candidates" in out and "top 2 of 2 candidates" in out
    assert "0-1" in out and "0.2000" in out   # first half of the PPO run: stage-1 mean 0.2
    assert "2-3" in out and "0.5500" in out   # second half: stage-2 mean 0.55


def test_report_rejects_a_directory_without_a_search(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nasfast.report", str(tmp_path)], capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "not a search run" in result.stderr


def test_report_plots_with_matplotlib(tmp_path):
    import pytest
    pytest.importorskip("matplotlib")
    fake_run(tmp_path / "ppo", "ppo", [(0.1, 0.2), (0.3, None), (0.2, 0.5), (0.4, 0.6)])
    fake_run(tmp_path / "rs", "random", [(0.1, None), (0.1, 0.1)])
    out = subprocess.run([sys.executable, "-m", "nasfast.report", str(tmp_path / "ppo"), str(tmp_path / "rs"),
                          "--bins", "2"], capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, check=True)
    png = tmp_path / "ppo" / "rewards.png"
    assert f"plot: {png}" in out.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
