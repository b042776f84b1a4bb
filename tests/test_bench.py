import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nasfast.ops as ops
from nasfast.data import make_dataset
from nasfast.encoder import WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[1]
OLD_TORCH_PYTHONS = os.environ.get("NASFAST_OLD_TORCH_PYTHONS", "").split()


def bench_script(name: str):
    """bench/NAME.py imported as a module (its imports of its neighbours, as timing, found in bench/)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


def latency(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "latency.py"), *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)


@pytest.mark.parametrize("max_seconds, passes", [("600", ""), ("1e-9", "  (2 passes: --max-seconds)")])
def test_latency_table_on_cpu(max_seconds, passes):
    result = latency("--device", "cpu", "--arch", "arch1", "--size", "96", "--runs", "3", "--warmup", "2",
                     "--no-compile", "--max-seconds", max_seconds)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("arch1")]
    assert len(rows) >= 2 and all("2,809,045" in row and "±" in row and row.endswith("x" + passes) for row in rows)


def test_latency_rows_have_no_ratio_to_an_eager_variant_that_failed(monkeypatch, capsys):
    bench = bench_script("latency")
    timed, calls = bench.timed, []

    def eager_fails(model, *args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no eager here")
        return timed(model, *args)
    monkeypatch.setattr(bench, "timed", eager_fails)
    assert bench.main(["--device", "cpu", "--arch", "arch1", "--size", "64", "--runs", "2", "--warmup", "2",
                       "--no-compile"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("arch1")]
    assert "eager" in rows[0] and rows[0].endswith("failed: RuntimeError")
    assert len(rows) >= 2 and all(row.endswith(" -") for row in rows[1:])


def test_latency_ratios_are_eager_over_the_variant_by_medians_and_a_variant_that_disagrees_is_not_timed(
        monkeypatch, capsys):
    """A few slow passes moved the mean-based ratios; a variant computing something else was timed
    all the same."""
    bench = bench_script("latency")
    eager = torch.nn.Conv2d(3, 2, 1)
    wrong = torch.nn.Conv2d(3, 2, 1)
    monkeypatch.setattr(bench, "variants", lambda *args: iter([("eager", eager), ("fast", eager), ("wrong", wrong)]))
    medians = iter([10.0, 4.0])
    timing = bench_script("timing")
    monkeypatch.setattr(bench, "timed", lambda *args: timing.Timing(mean=30.0, std=1.0, median=next(medians), passes=2))
    assert bench.main(["--device", "cpu", "--arch", "arch1", "--size", "8", "--runs", "2", "--warmup", "2",
                       "--no-compile"]) == 0
    rows = {line.split()[3]: line for line in capsys.readouterr().out.splitlines() if line.startswith("arch1")}
    assert rows["eager"].endswith("30.00 ±   1.00   10.00    1.00x")
    assert rows["fast"].endswith("30.00 ±   1.00    4.00    2.50x")  # 10 / 4, not 30 / 30
    assert re.search(r"wrong +differs from eager by [0-9.e-]+: not timed$", rows["wrong"])


def test_a_gpu_benchmarks_header_states_the_cudnn_settings_that_change_its_times(monkeypatch):
    timing = bench_script("timing")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert timing.device_note(torch.device("cuda")) == "Some GPU; cudnn.benchmark on, TF32 convolutions off"
    monkeypatch.setattr(timing, "jetson_state", lambda: "power mode: MAXN; clocks: fixed")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert timing.device_note(torch.device("cuda"), jetson=True) == \
        "power mode: MAXN; clocks: fixed; cudnn.benchmark off, TF32 convolutions off"


@pytest.mark.skipif(os.path.exists("/etc/nv_tegra_release"), reason="this machine is a Jetson")
def test_jetson_elsewhere_measures_nothing_and_says_why():
    result = latency("--device", "jetson")
    assert result.returncode != 0 and "not a Jetson" in result.stderr and result.stdout == ""


@pytest.fixture(scope="module")
def export_for_torch_1_10(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.pt"
    subprocess.run([sys.executable, "-m", "nasfast.export", "--genotype", "arch1", "--num-classes", "11",
                    "--for-torch-1.10", "--out", str(path)], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    return path


def latency_of_export(*args, python=sys.executable):
    """bench/latency_export.py run where nasfast cannot be imported, as on a Jetson TX2."""
    script = REPO / "bench" / "latency_export.py"
    runner = ("import runpy, sys; sys.modules['nasfast'] = None; sys.path.insert(0, sys.argv[1]); "
              "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([python, "-c", runner, str(script.parent), str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_latency_of_an_export_with_torch_alone(export_for_torch_1_10):
    result = latency_of_export(export_for_torch_1_10, "--size", "64", "--runs", "3", "--warmup", "2")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.startswith("device: cpu (") and "input 1x3x64x64; 3 passes after 2 warm-up" in header
    assert re.fullmatch(f"{re.escape(str(export_for_torch_1_10))}: 11 classes, native ops none: "
                        r"\d+\.\d\d ± \d+\.\d\d ms \(median \d+\.\d\d\)", row)
    for argv, message in ((["--device", "jetson"], "not a Jetson (no /etc/nv_tegra_release); nothing measured"),
                          (["--runs", "1"], "argument --runs: must be at least 2, got 1")):
        result = latency_of_export(export_for_torch_1_10, *argv)
        assert result.returncode == 2 and message in result.stderr and result.stdout == ""
    result = latency_of_export(export_for_torch_1_10.parent / "missing.pt")
    assert result.returncode == 2 and result.stderr.startswith("latency_export.py: error: ") and \
        result.stderr.endswith("missing.pt: no such file\n") and result.stderr.count("\n") == 1


def test_latency_of_an_export_stopped_says_so_in_one_line(export_for_torch_1_10):
    """As nasfast's tools: SIGTERM (a scheduler's, timeout's) or Ctrl-C, one line and status 130
    (it was killed silently, status 143, or a traceback)."""
    script = REPO / "bench" / "latency_export.py"
    process = subprocess.Popen([sys.executable, str(script), str(export_for_torch_1_10), "--size", "64", "--runs",
                                "100000", "--max-seconds", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
    assert process.stdout.readline().startswith("device: cpu")  # timing now
    process.terminate()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == "\nlatency_export.py: interrupted\n", err


@pytest.mark.skipif(not OLD_TORCH_PYTHONS, reason="set NASFAST_OLD_TORCH_PYTHONS to Pythons with older torch releases")
@pytest.mark.parametrize("python", OLD_TORCH_PYTHONS)
def test_latency_of_an_export_in_older_torch(export_for_torch_1_10, python):
    result = latency_of_export(export_for_torch_1_10, "--size", "64", "--runs", "2", "--warmup", "2", python=python)
    assert result.returncode == 0 and " ms" in result.stdout, result.stderr


def test_search_data_table(camvid_root):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "search_data.py"), "--preset", "tiny",
                             "--candidates", "2"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "MB kept" in lines[0] and " 0 MB kept" not in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "2"] and all(row[3].endswith("x") for row in rows)


def test_search_data_reads_the_files_once_untimed_before_its_first_row(camvid_root, monkeypatch, capsys):
    bench, seeds = bench_script("search_data"), []
    monkeypatch.setattr(bench, "candidate_seconds", lambda ctx, seed: seeds.append(seed) or 1.0)
    assert bench.main(["--preset", "tiny", "--candidates", "2"]) == 0
    assert seeds == [2, 0, 1, 0, 1]  # decoded each time, after an untimed candidate; then kept
    assert "1.00x" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "foo"], "invalid choice: 'foo'"),
    (["--data-root", "/nonexistent"], "--data-root /nonexistent: no such directory"),
    (["--candidates", "0"], "--candidates: must be at least 1"),
])
def test_search_data_refuses_bad_options_in_one_line(argv, message):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "search_data.py"), *argv], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def ops_bench(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "ops.py"), "--threads", "2", *args],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)


@pytest.mark.skipif(not ops.available(), reason="native ops library not built")
def test_ops_profile_shows_where_a_separable_training_step_and_the_reward_go():
    result = ops_bench("--profile")
    assert result.returncode == 0, result.stderr
    titles = [line for line in result.stdout.splitlines() if line.endswith(", 10 steps")]
    assert titles == [f"{name} N=8 C=64 128x128 forward+backward, {side}, 10 steps"
                      for name in ("sep3x3", "sep5x5") for side in ("reference", "fused")] + [
                          f"reward N=8 {labels} 21x128^2->512^2, fused, 10 steps" for labels in ("random", "regions")]
    assert result.stdout.count("nasfast::sep_conv_backward") == 2 and "aten::convolution_backward" in result.stdout
    assert result.stdout.count("nasfast::confusion_matrix_update_") == 2


@pytest.mark.skipif(not ops.available(), reason="native ops library not built")
def test_ops_reward_table_on_cpu_with_random_labels_and_labels_in_regions():
    result = ops_bench("--quick", "--only", "reward")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("N=2 ")]
    assert [row[1] for row in rows] == ["random", "regions"] and all(row[-2].endswith("x") for row in rows)


@pytest.mark.skipif(not ops.available(), reason="native ops library not built")
@pytest.mark.parametrize("wrong, said", [
    (lambda real: lambda high, low: real(high, low) + 1, "upsample_add: fused and reference disagree"),
    (lambda real: lambda high, low: real(2 * high, low) - high.detach(),  # the same values, other gradients
     "upsample_add gradients: fused and reference disagree"),
])
def test_ops_times_nothing_whose_sides_disagree(wrong, said, monkeypatch):
    """A check removed passed every test, and the gradients of upsample_add were not compared."""
    bench = bench_script("ops")
    monkeypatch.setattr(ops, "upsample_add_reference", wrong(ops.upsample_add_reference))
    with pytest.raises(SystemExit, match=said):
        bench.main(["--quick", "--only", "upsample"])


def test_ops_ratios_are_reference_over_fused():
    bench = bench_script("ops")
    assert bench.row("case", [4.0, 4.0, 4.0], [1.0, 2.0, 2.0]).split()[1:4] == ["4.000", "2.000", "2.00x"]


def test_the_rewards_floor_is_its_inputs_bytes_at_the_measured_bandwidth(monkeypatch):
    """A plain sum of the inputs, launched and synchronised as the reward is, is not a bandwidth floor
    on a GPU: they fit its L2 cache and the call's fixed costs dominate."""
    bench = bench_script("ops")
    monkeypatch.setattr(bench, "memory_bandwidth", lambda device, nbytes, repeats: 2e12)  # 2 TB/s
    logits, target = torch.zeros(2, 21, 128, 128), torch.zeros(2, 512, 512, dtype=torch.long)
    line = bench.read_once(logits, target, 0.1, torch.device("cpu"), 3)
    floor_ms = 1000 * logits.nbytes / 2e12  # 0.0014 ms
    assert f"(2.00 TB/s over 1 GiB): logits {floor_ms:.4f} ms" in line
    assert f"fused / logits {0.1 / floor_ms:.1f}x" in line and "a plain sum of both, one call: " in line
    assert bench.memory_bandwidth(torch.device("cpu"), 2 ** 20, 3) > 1e8  # 1 MiB summed: at least 0.1 GB/s


@pytest.mark.skipif(not ops.available(), reason="native ops library not built")
def test_ops_loss_table_on_cpu():
    result = ops_bench("--quick", "--only", "loss")
    assert result.returncode == 0, result.stderr
    assert "freed memory kept up to" in result.stdout.splitlines()[0]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("N=64 34x45->270x360")]
    assert len(rows) == 2 and all(row[-2].endswith("x") and float(row[-2][:-1]) > 0 for row in rows)


def gpu_run(*args, **env):
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_run.sh"), *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable, **env), timeout=600)


def test_gpu_run_explains_its_steps_and_refuses_unknown_ones():
    help_text = gpu_run("--help").stdout
    steps = ("pack DIR", "build", "tests", "ops", "sanitize", "latency", "train_step", "throughput", "train",
             "unpack DIR")
    assert all(f"\n  {step} " in help_text for step in steps)
    result = gpu_run("bild")
    assert result.returncode == 2 and "unknown step bild" in result.stderr


def test_gpu_run_sanitize_says_where_compute_sanitizer_is_missing(tmp_path):
    result = gpu_run("sanitize", OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"), PATH="/usr/bin:/bin",
                     CUDA_HOME=str(tmp_path / "no-cuda"))
    assert result.returncode == 1 and "sanitize: no compute-sanitizer (it comes with the CUDA toolkit)" in result.stderr
    assert "== sanitize: " in result.stdout and "(failed so far: sanitize)" in result.stdout
    stub = tmp_path / "bin" / "compute-sanitizer"  # records how it is called, and finds nothing
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "$@" >>"$CALLS"\n')
    stub.chmod(0o755)
    result = gpu_run("sanitize", OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"),
                     PATH=f"{stub.parent}:/usr/bin:/bin", CALLS=str(tmp_path / "calls"))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [call.split()[1] for call in calls] == ["memcheck", "racecheck", "synccheck"]
    assert all("--kernel-name kns=nasfast --error-exitcode 1" in call and "-m pytest" in call and "-m cuda" in call
               for call in calls)


@pytest.mark.parametrize("val_as_jpeg", ["0", "1"])
def test_gpu_run_packs_camvid_to_send(camvid_root, tmp_path, val_as_jpeg):
    """The packed copy is the same dataset: every pair listed, labels and validation images unchanged
    (with VAL_AS_JPEG=1, within JPEG's error too), training images within JPEG's error; and the
    weights where TORCH_HOME will find them."""
    result = gpu_run("pack", str(tmp_path), OUT=str(tmp_path / "out"), NASFAST_DATA=str(camvid_root.parent),
                     VAL_AS_JPEG=val_as_jpeg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== pack:" in result.stdout and (tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE).is_file()
    packed = {split: make_dataset("camvid", str(tmp_path / "camvid"), split=split) for split in ("train", "val")}
    source = {split: make_dataset("camvid", str(camvid_root), split=split) for split in ("train", "val")}
    assert [len(packed[s]) for s in packed] == [len(source[s]) for s in source] == [367, 101]
    for split, index in (("train", 0), ("train", 366), ("val", 50)):
        (image, label), (source_image, source_label) = packed[split].load(index), source[split].load(index)
        assert np.array_equal(label, source_label)
        difference = np.abs(image.astype(int) - source_image)
        assert difference.max() == 0 if split == "val" and val_as_jpeg == "0" else 0 < difference.mean() < 3
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file() and "out" not in f.parts)
    assert size < 62 * 2 ** 20  # with the repository, under a 64 MiB transfer
    if val_as_jpeg == "1":  # room beside a training's last.pt (30 MB), carried to resume it in another lease
        assert sum(f.stat().st_size for f in (tmp_path / "camvid").rglob("*") if f.is_file()) < 30 * 2 ** 20


def test_gpu_run_sends_a_training_run_back_in_parts_and_rebuilds_it(camvid_root, tmp_path):
    """What a lease's `train` writes (checkpoints in parts of 15 MiB, as files come back) is the run
    again after `unpack`, which a training resumes."""
    out, runs, rebuilt = tmp_path / "out", tmp_path / "runs", tmp_path / "rebuilt"
    result = gpu_run("train", OUT=str(out), RUNS=str(runs), NASFAST_DATA=str(camvid_root.parent),
                     TRAIN_ARGS="--preset tiny")
    assert result.returncode == 0, result.stdout + result.stderr
    parts = sorted(p.name for p in out.iterdir() if ".part" in p.name)
    assert parts == ["best.pt.part00", "best.pt.part01", "last.pt.part00", "last.pt.part01"]
    assert all((out / p).stat().st_size <= 15 * 2 ** 20 for p in parts) and len(list(out.iterdir())) <= 8
    result = gpu_run("unpack", str(out), RUNS=str(rebuilt))
    assert result.returncode == 0 and "2 epochs of its training" in result.stdout, result.stdout + result.stderr
    for name in ("last.pt", "best.pt", "log.jsonl", "config.json"):
        assert (rebuilt / "arch0" / name).read_bytes() == (runs / "arch0" / name).read_bytes(), name
    resumed = subprocess.run([sys.executable, "-m", "nasfast.train", "--resume", str(rebuilt / "arch0"),
                              "--no-progress"], capture_output=True, text=True, cwd=REPO,
                             env=dict(os.environ, NASFAST_DATA=str(camvid_root.parent)), timeout=600)
    assert resumed.returncode == 0 and "has finished its 2 epochs" in resumed.stderr, resumed.stderr
    # A later lease that made no best.pt (resumed from the carried last.pt alone): the earlier best.pt stays.
    (runs / "arch0" / "best.pt").unlink()
    result = gpu_run("train", OUT=str(tmp_path / "out2"), RUNS=str(runs), NASFAST_DATA=str(camvid_root.parent))
    assert result.returncode == 0 and "no best.pt here" in result.stdout, result.stdout + result.stderr
    best = (rebuilt / "arch0" / "best.pt").read_bytes()
    assert gpu_run("unpack", str(tmp_path / "out2"), RUNS=str(rebuilt)).returncode == 0
    assert (rebuilt / "arch0" / "best.pt").read_bytes() == best


def train_step(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "train_step.py"), "--device", "cpu", "--batch", "2",
                           "--crop", "64", "--threads", "2", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)


def test_train_step_variants_on_cpu():
    result = train_step("--variants", "float32", "channels-last", "bfloat16", "--steps", "2", "--rounds", "2",
                        "--warmup", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("arch0, batch 2, 64x64 crops, 11 classes")
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert list(rows) == ["float32", "channels-last", "bfloat16"], result.stdout
    assert rows["float32"][1] == "1.00x" and all(float(ms) > 0 and ratio.endswith("x") for ms, ratio, _ in
                                                 rows.values())


def test_train_step_counts_the_classes_of_what_it_is_given_and_takes_the_other_tools_names(tmp_path):
    """An export of 5 classes was timed with an 11-class head; --arch, --batch-size and --crop-size
    are the names latency.py and train take."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "nasfast.export", "--genotype", "arch1", "--num-classes", "5", "--out",
                    str(tmp_path / "five.pt")], check=True, capture_output=True, env=env)
    result = subprocess.run([sys.executable, str(REPO / "bench" / "train_step.py"), "--arch", str(tmp_path / "five.pt"),
                             "--batch-size", "2", "--crop-size", "64", "--threads", "2", "--variants", "float32",
                             "--steps", "1", "--rounds", "1", "--warmup", "1"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("five.pt, batch 2, 64x64 crops, 5 classes")


def test_train_step_profile_on_cpu():
    result = train_step("--profile", "--steps", "1")
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("\n-")[2]  # the rows, between the header's rule and the closing one
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    assert len(rows) == 15 and "aten::convolution_backward" in rows  # the optimizers' rows: outside the top 15 at times


def test_train_steps_read_each_loss_before_the_next_step_is_queued_as_training_does(monkeypatch):
    import nasfast.steps
    bench = bench_script("train_step")
    events = []
    monkeypatch.setattr(nasfast.steps, "check_loss", lambda loss, stage, step: events.append(f"read {step}"))

    def step():
        events.append(f"step {sum(e.startswith('step') for e in events)}")
        return torch.tensor(1.0)
    bench.run_steps(step, 3)
    assert events == ["step 0", "read 0", "step 1", "read 1", "step 2", "read 2"]


def test_a_train_step_variant_that_fails_is_named_and_the_others_timed(monkeypatch, capsys):
    bench = bench_script("train_step")
    made = bench.training_step

    def training_step(variant, *args):
        if variant == "bfloat16":
            raise RuntimeError("no bfloat16 here\nsecond line")
        return made(variant, *args)

    monkeypatch.setattr(bench, "training_step", training_step)
    assert bench.main(["--batch", "2", "--crop", "32", "--variants", "float32", "bfloat16", "channels-last",
                       "--steps", "1", "--rounds", "1", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == "bfloat16         failed: RuntimeError: no bfloat16 here"
    assert lines[2].startswith("float32") and lines[4].startswith("channels-last") and lines[4].split()[2][-1] == "x"
    assert bench.main(["--batch", "2", "--crop", "32", "--variants", "bfloat16", "float32", "--steps", "1",
                       "--rounds", "1", "--warmup", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]  # the baseline failed: no ratios (the next one became it)
    assert rows[0].startswith("bfloat16 ") and rows[1].split()[:1] + rows[1].split()[2:3] == ["float32", "-"]
