"""The command lines of python -m nasfast.export and of the benchmark scripts: bad input is refused
in one line (exit 2), options that do not apply are refused, and --help tells the whole story."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nasfast.ops as ops
from nasfast import export
from nasfast.cli import run
from nasfast.genotype import ZOO
from nasfast.model import create_model

REPO = Path(__file__).resolve().parents[1]
CUSTOM_GENOTYPE = "[[[0, 1], [1, 2], [2, 3]], [0, [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]]]"


def bench_script(name: str):
    """bench/NAME.py as a module, finding its neighbours (bench/timing.py) as when it runs as a script."""
    if str(REPO / "bench") not in sys.path:
        sys.path.append(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(main, argv, capsys):
    """(exit status, stdout, stderr) of main(argv) run as its command line runs it."""
    try:
        status = run(main, "prog", argv)
    except SystemExit as exit:  # argparse's errors and --help
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_refused(status, err, *words):
    """Exit 2 and the reason on the last line of stderr, with no traceback."""
    assert status == 2 and "Traceback" not in err
    assert all(word in err.strip().splitlines()[-1] for word in words), err


# python -m nasfast.export

@pytest.mark.parametrize("options, words", [
    (["--num-classes", "5"], ["--num-classes applies only with --genotype"]),
    (["--pretrained"], ["--pretrained applies only with --genotype"]),
    (["--num-classes", "5", "--pretrained"], ["--num-classes and --pretrained apply"]),
])
def test_export_refuses_options_that_do_not_apply_with_a_checkpoint(options, words, tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not read")
    status, out, err = call(export.main, ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.pt"),
                                          *options], capsys)
    assert_refused(status, err, *words)
    assert err.count("\n") == 1 and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("options, words", [
    (["--genotype", "arch0", "--num-classes", "0"], ["--num-classes", "at least 1"]),
    (["--genotype", "arch9"], ["arch9", "neither a zoo name"]),
    (["--checkpoint", "nope.pt"], ["nope.pt", "not found"]),
    (["--checkpoint", "corrupt.pt"], ["corrupt.pt", "not a checkpoint"]),
    (["--genotype", "arch0", "--out", "corrupt.pt/m.pt"], ["corrupt.pt is a file"]),
    (["--genotype", "arch0", "--out", "."], ["is a directory"]),
    (["--genotype", "arch0", "--out", "pipe"], ["--out pipe is not a regular file"]),  # was replaced by a file
    (["--genotype", "arch0", "--out", "corrupt.pt"], ["corrupt.pt", "not an earlier export"]),
    (["--genotype", "arch0", "--out", "/proc/m.pt"], ["--out /proc/m.pt cannot be written (No such file"]),
])
def test_export_refuses_bad_input_in_one_line(options, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage")
    os.mkfifo(tmp_path / "pipe")
    out = [] if "--out" in options else ["--out", "m.pt"]
    status, _, err = call(export.main, options + out, capsys)
    assert_refused(status, err, *words)
    assert (tmp_path / "pipe").is_fifo()


def test_export_onto_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    status, _, err = call(export.main, ["--genotype", "arch0", "--out", str(tmp_path / "m.pt")], capsys)
    assert_refused(status, err, f"--out {tmp_path / 'm.pt'} cannot be written (No space left on device)")
    assert os.listdir(tmp_path) == []


def test_export_genotype_its_old_name_and_the_default_classes(tmp_path, capsys):
    path = tmp_path / "exports" / "arch0" / "m.pt"  # directories made, as search and train make theirs
    x = torch.randn(1, 3, 32, 32)
    assert call(export.main, ["--genotype", "arch0", "--num-classes", "3", "--out", str(path)], capsys)[0] == 0
    extra = {"nasfast.json": ""}
    assert torch.jit.load(str(path), _extra_files=extra)(x).shape[1] == 3
    info = json.loads(extra["nasfast.json"])
    assert (info["genotype"], info["num_classes"]) == (ZOO["arch0"].to_list(), 3)
    assert len(info["mean"]) == len(info["std"]) == 3
    assert "scale" not in info  # the scale of its images is a trained model's
    status, out, _ = call(export.main, ["--arch", "arch0", "--out", str(path)], capsys)
    assert status == 0 and out.startswith(f"wrote {path} (replaced")
    assert "\nuntrained: a random decoder and a random encoder, for timing and trying a deployment; a trained " \
           "model is exported with --checkpoint DIR/best.pt (python -m nasfast.train --out DIR)\n" in out
    assert torch.jit.load(str(path))(x).shape[1] == 21
    assert "21, PASCAL VOC as in the paper; CamVid has 11" in " ".join(export.build_parser().format_help().split())


def test_export_with_reference_ops_needs_no_native_op_and_computes_the_same(tmp_path, capsys):
    model = create_model("arch0", 3, channels=8, sep_repeats=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # batch norms that are not the identity, so that the folds are tested
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    torch.save({"model": model.state_dict(), "genotype": ZOO["arch0"].to_list(), "num_classes": 3, "channels": 8,
                "sep_repeats": 1}, tmp_path / "best.pt")
    modules, infos, outs = {}, {}, {}
    for name, options in (("native", []), ("reference", ["--reference-ops"])):
        path = tmp_path / f"{name}.pt"
        status, outs[name], err = call(export.main, ["--checkpoint", str(tmp_path / "best.pt"), "--out", str(path),
                                                     *options], capsys)
        assert status == 0, err
        extra = {"nasfast.json": ""}
        modules[name] = torch.jit.load(str(path), _extra_files=extra)
        infos[name] = json.loads(extra["nasfast.json"])
    assert "nasfast::" not in str(modules["reference"].inlined_graph)
    assert infos["reference"]["native_ops"] == [] and infos["reference"]["ops_library"] is None
    assert "needs no native ops" in outs["reference"]
    if ops.available():  # else both are the reference: only the graph and nasfast.json above say anything
        assert "nasfast::" in str(modules["native"].inlined_graph) and infos["native"]["native_ops"]
    x = torch.randn(2, 3, 64, 48, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(modules["reference"](x), modules["native"](x), rtol=1e-4, atol=1e-5)


# bench/latency.py

@pytest.fixture(scope="module")
def latency():
    return bench_script("latency")


@pytest.mark.parametrize("options, words", [
    (["--runs", "1"], ["--runs", "at least 2"]),
    (["--runs", "0"], ["--runs", "at least 2"]),
    (["--threads", "-1"], ["--threads", "at least 1"]),
    (["--size", "0"], ["--size", "at least 1"]),
    (["--num-classes", "0"], ["--num-classes", "at least 1"]),
    (["--warmup", "1"], ["--warmup", "at least 2"]),
    (["--genotype", "arch9"], ["arch9", "neither a zoo name"]),
    (["--arch", "arch9"], ["arch9"]),
    (["--device", "tpu"], ["unknown device 'tpu': expected auto, cpu, cuda or cuda:N"]),
])
def test_latency_refuses_bad_input_before_measuring(latency, options, words, capsys):
    status, out, err = call(latency.main, options, capsys)
    assert_refused(status, err, *words)
    assert out == ""


def test_latency_and_ops_take_the_devices_the_other_tools_take(latency, capsys):
    """auto and cuda:N as in search, train and evaluate (they were refused as invalid choices)."""
    status, out, err = call(latency.main, ["--device", "auto", "--genotype", "arch1", "--size", "32", "--runs", "2",
                                           "--warmup", "2", "--no-compile"], capsys)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert status == 0 and out.startswith(f"device: {expected}"), err
    if not torch.cuda.is_available():
        for main in (latency.main, bench_script("ops").main):
            status, out, err = call(main, ["--device", "cuda:1"], capsys)
            assert_refused(status, err, "device cuda:1: CUDA is not available on this machine")


def test_latency_header_counts_the_threads_asked_for_and_json_keeps_the_table_aligned(latency, capsys):
    threads = torch.get_num_threads()
    try:
        status, out, err = call(latency.main, ["--threads", "1", "--genotype", CUSTOM_GENOTYPE, "--size", "32",
                                               "--runs", "2", "--warmup", "2", "--no-compile"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert status == 0, err
    header, columns, *rows = out.splitlines()
    assert ", 1 threads)" in header
    assert rows and all(row.startswith("custom ") and row.index("±") == rows[0].index("±") for row in rows)


def test_latency_names_a_genotype_file_by_its_name(latency, tmp_path):
    path = tmp_path / "my_design_v2.json"
    path.write_text(CUSTOM_GENOTYPE)
    assert latency.short_name(str(path)) == "my_desig" and latency.short_name("arch1") == "arch1"
    assert len(latency.designs(str(path))) == 1 and [name for name, _ in latency.designs("all")] == [
        "arch0", "arch1", "arch2"]


def test_latency_and_export_of_a_search_count_the_classes_it_searched_for(latency, tmp_path, monkeypatch,
                                                                          capsys):
    record = {"index": 0, "genotype": ZOO["arch1"].to_list(), "reward": 0.5, "status": "ok", "stage1_reward": 0.5,
              "stage2_reward": None, "gate": "stop", "params": 1, "madds": 1, "seconds": 1.0}
    (tmp_path / "candidates.jsonl").write_text(json.dumps(record) + "\n")
    torch.save({"data": {"classes": ["sky", "road", "car", "person", "other"]}}, tmp_path / "state.pt")
    assert latency.recorded_classes(str(tmp_path)) == 5
    assert latency.recorded_classes(str(tmp_path / "candidates.jsonl")) == 5
    monkeypatch.chdir(tmp_path)
    assert latency.recorded_classes("candidates.jsonl") == 5  # the log of the current directory
    assert latency.recorded_classes("arch1") is None and latency.designs(str(tmp_path))[0][1] == ZOO["arch1"]
    assert latency.short_name("candidates.jsonl") == tmp_path.name[:8]  # the search's name, not "candidat"
    (tmp_path / "design.json").write_text(json.dumps(ZOO["arch1"].to_list()))
    assert latency.recorded_classes(str(tmp_path / "design.json")) is None  # a file beside a search: not its
    assert call(export.main, ["--genotype", str(tmp_path), "--out", str(tmp_path / "m.pt")], capsys)[0] == 0
    extra = {"nasfast.json": ""}
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["nasfast.json"])["num_classes"] == 5  # export takes the search's classes too
    torch.save({"genotype": ZOO["arch1"].to_list(), "num_classes": 7}, tmp_path / "best.pt")  # and a checkpoint's
    assert call(export.main, ["--genotype", str(tmp_path / "best.pt"), "--out", str(tmp_path / "m.pt")], capsys)[0] == 0
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["nasfast.json"])["num_classes"] == 7
    exported = str(tmp_path / "m.pt")  # an export names its design and classes too
    assert latency.recorded_classes(exported) == 7 and latency.designs(exported)[0][1] == ZOO["arch1"]
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match=f"^TorchScript file {tmp_path / 'other.pt'} has no nasfast.json: not "
                                         f"written by python -m nasfast.export$"):
        latency.designs(str(tmp_path / "other.pt"))


# --help of the benchmark scripts

@pytest.mark.parametrize("script, expected", [
    ("latency", ["--genotype GENOTYPE, --arch GENOTYPE", "on a Jetson only", "python bench/latency.py --device cuda",
                 "untimed passes before timing, at least 2", "where to time", "CamVid has 11"]),
    ("ops", ["nasfast.ops.cpu_memory_cache()", "python bench/ops.py --quick",
             "where to time the ops: cpu, cuda, cuda:N or auto [cpu]",
             "time with torch's own allocator instead"]),
    ("search_throughput", ["Options after `--` go to `python -m nasfast.search`", "--workers-per-gpu 1 2 4",
                           "{fast,paper,tiny}", "{camvid,folder,voc}", "[tiny on cpu, fast on cuda]"]),
])
def test_bench_help_shows_the_whole_docstring_and_the_defaults(script, expected, capsys):
    status, out, _ = call(bench_script(script).main, ["--help"], capsys)
    words = " ".join(out.split())  # as argparse wraps the options' help
    assert status == 0 and all(text in words for text in expected), out


@pytest.mark.parametrize("command, words", [
    (["-m", "nasfast.search", "--resume", "nothing", "--budget", "1"], ["python -m nasfast.search: error:", "nothing"]),
    (["-m", "nasfast.train", "--genotype", "arch9", "--out", "t"], ["python -m nasfast.train: error:", "arch9"]),
    (["-m", "nasfast.evaluate", "--checkpoint", "nope.pt"], ["python -m nasfast.evaluate: error:", "nope.pt"]),
    (["-m", "nasfast.report", "nothing"], ["python -m nasfast.report: error:", "nothing"]),
    (["-m", "nasfast.export", "--genotype", "arch9", "--out", "m.pt"], ["python -m nasfast.export: error:", "arch9"]),
    (["bench/latency.py", "--genotype", "arch9"], ["latency.py: error:", "arch9"]),
    (["bench/ops.py", "--threads", "0"], ["ops.py: error:", "--threads"]),
    (["bench/search_throughput.py", "--", "--budjet", "2"], ["search_throughput.py: error:", "--budjet"]),
])
def test_entry_points_report_a_user_error_in_one_line(command, words, tmp_path):
    script = [str(REPO / command[0])] if command[0].endswith(".py") else command[:1]
    result = subprocess.run([sys.executable, *script, *command[1:]], capture_output=True, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert_refused(result.returncode, result.stderr, *words)
