"""Full training (tiny preset), evaluation, export, and the exported model run from C++."""
import copy
import gc
import json
import os
import shutil
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

import nasfast.ops
from conftest import file_size_limit, has_tensorboard, tensorboard_scalars
from nasfast import cli, evaluate, predict, train
from nasfast.checkpoint import load_checkpoint, model_from_checkpoint
from nasfast.data import CamVid, EvalTransform, make_dataset
from nasfast.evaluate import evaluate_model, evaluation_loader, evenly_spaced
from nasfast.data.transforms import to_tensors
from nasfast.export import fold_batch_norms, native_ops, script_for_deployment
from nasfast.files import Unwritable, read_records
from nasfast.genotype import ZOO
from nasfast.metrics import ConfusionMatrix
from nasfast.model import create_model

REPO = Path(__file__).resolve().parents[1]


def run(module, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, camvid_root):
    out = tmp_path_factory.mktemp("train") / "arch1"
    run("nasfast.train", "--genotype", "arch1", "--out", str(out), "--preset", "tiny", "--no-progress",
        *(["--tensorboard"] if has_tensorboard() else []))
    return out


@pytest.mark.skipif(not has_tensorboard(), reason="needs the optional tensorboard package")
def test_training_logs_the_same_for_tensorboard(trained):
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    scalars = tensorboard_scalars(trained / "tensorboard")
    assert scalars["val_miou"] == [(r["epoch"] + 1, pytest.approx(r["val_miou"])) for r in log]
    assert {"loss", "val_pixel_acc", "seconds", "val_seconds"} <= set(scalars)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_search_train_and_evaluate_on_the_gpu_as_a_user_runs_them(camvid_root, tmp_path):
    search_dir, train_dir = tmp_path / "search", tmp_path / "train"
    run("nasfast.search", "--dataset", "camvid", "--preset", "tiny", "--budget", "2", "--device", "cuda",
        "--no-progress", "--out", str(search_dir))
    records = read_records(str(search_dir / "candidates.jsonl"))
    assert [r["status"] for r in records] == ["ok", "ok"] and all(0 < r["reward"] <= 1 for r in records)
    run("nasfast.train", "--genotype", str(search_dir), "--preset", "tiny", "--epochs", "1", "--device", "cuda",
        "--no-progress", "--out", str(train_dir))
    best = str(train_dir / "best.pt")
    scores = {device: json.loads(run("nasfast.evaluate", "--checkpoint", best, "--limit", "8", "--device", device,
                                     "--json", "--no-progress").stdout)["miou"] for device in ("cuda", "cpu")}
    # the images the tiny preset validates on: the mIoU training logged, on either device
    assert scores["cuda"] == pytest.approx(load_checkpoint(best)["best_miou"], abs=1e-3)
    assert scores["cpu"] == pytest.approx(scores["cuda"], abs=1e-3)


def test_training_logs_val_miou_and_saves_checkpoints(trained):
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert all(0 < r["val_miou"] < 1 for r in log)
    best = load_checkpoint(str(trained / "best.pt"))
    assert best["best_miou"] == max(r["val_miou"] for r in log)
    assert best["epoch"] == max(log, key=lambda r: r["val_miou"])["epoch"]
    assert load_checkpoint(str(trained / "last.pt"))["epoch"] == 1


def test_resume_of_a_finished_run_says_so_and_accepts_options_that_do_not_change_it(trained, capsys, monkeypatch):
    log = (trained / "log.jsonl").read_text()
    assert cli.run(train.main, train.PROG, ["--out", str(trained), "--resume", "--genotype", "arch1", "--preset",
                                            "tiny", "--workers", "1", "--device", "cpu", "--no-progress"]) == 0
    best = load_checkpoint(str(trained / "best.pt"))["best_miou"]
    captured = capsys.readouterr()
    assert f"{trained} has finished its 2 epochs; best val mIoU {best:.4f}: {trained / 'best.pt'}" in captured.err
    assert json.loads(captured.out) == {"best_miou": best, "best_checkpoint": str(trained / "best.pt")}
    assert (trained / "log.jsonl").read_text() == log

    def read_only(directory):
        raise Unwritable(f"{directory} cannot be written (Read-only file system)")
    monkeypatch.setattr(train, "lock_directory", read_only)  # a finished run copied to read-only storage
    assert cli.run(train.main, train.PROG, ["--resume", str(trained)]) == 0
    assert f"{trained} has finished its 2 epochs; best val mIoU {best:.4f}" in capsys.readouterr().err


def test_evaluate_prints_the_table_5_numbers_at_the_checkpoint_s_dataset_and_scale(trained):
    assert load_checkpoint(str(trained / "best.pt"))["scale"] == 0.25  # the tiny preset's
    out = run("nasfast.evaluate", "--checkpoint", str(trained / "best.pt"), "--limit", "6").stdout
    assert out.startswith(f"{trained / 'best.pt'} on camvid val (") and ": 6 images at scale 0.25\n" in out
    assert "mIoU" in out and "fwIoU" in out and "pixel acc" in out and "pedestrian" in out
    metrics = json.loads(run("nasfast.evaluate", "--checkpoint", str(trained / "best.pt"), "--limit", "8",
                             "--json").stdout)
    assert 0 < metrics["miou"] < 1 and len(metrics["iou"]) == 11
    # the images the tiny preset validates on: the mIoU the training logged
    assert metrics["miou"] == pytest.approx(load_checkpoint(str(trained / "best.pt"))["best_miou"], abs=1e-6)


def test_evaluate_names_a_missing_split_in_one_line(trained, capsys):
    assert cli.run(evaluate.main, evaluate.PROG, ["--checkpoint", str(trained / "best.pt"), "--split", "foo"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"{evaluate.PROG}: error: ") and error.count("\n") == 1
    assert "CamVid split 'foo': no " in error and "(the splits there: train, val)" in error


def test_evaluate_refuses_a_scale_that_leaves_the_images_smaller_than_the_encoder_s_stride(trained, capsys):
    assert cli.run(evaluate.main, evaluate.PROG, ["--checkpoint", str(trained / "best.pt"), "--scale", "0.08"]) == 2
    assert capsys.readouterr().err == (f"{evaluate.PROG}: error: --scale 0.08 makes the images 38x29 pixels (from "
                                       f"480x360), less than the encoder's coarsest stride, 32, a side: give at "
                                       f"least 0.089\n")


def test_evaluate_writes_the_predictions_it_scored(trained, tmp_path, camvid_root):
    """At --scale 1 the images are scored at their labels' size, the size of the predictions: the
    files score what evaluate printed."""
    out = tmp_path / "predictions"
    metrics = json.loads(run("nasfast.evaluate", "--checkpoint", str(trained / "best.pt"), "--limit", "3", "--scale",
                             "1", "--json", "--predictions", str(out)).stdout)
    val = CamVid(camvid_root, "val")
    matrix = ConfusionMatrix(val.num_classes)
    for index in (0, len(val) // 3, 2 * len(val) // 3):  # --limit 3
        image, label = val.load(index)
        written = Image.open(out / val.pairs[index][0].relative_to(camvid_root).with_suffix(".png"))
        assert written.mode == "P" and written.getpalette()[3:6] == [128, 0, 0]  # class 1, VOC's dark red
        matrix.update(torch.from_numpy(np.asarray(written).astype(np.int64)), torch.from_numpy(label).long())
    assert len(list(out.rglob("*.png"))) == 3
    assert matrix.compute()["miou"] == pytest.approx(metrics["miou"], abs=1e-4)
    assert cli.run(evaluate.main, evaluate.PROG, ["--checkpoint", str(trained / "best.pt"), "--limit", "3",
                                                  "--predictions", str(out), "--no-progress"]) == 0  # replaced


@pytest.mark.parametrize("where, words", [
    (lambda root, tmp: root, "one of the dataset's images and labels: choose a folder outside them"),
    (lambda root, tmp: tmp / "file", "--predictions {directory} is a file: choose another folder"),
    (lambda root, tmp: tmp / "notes", "notes/val/0016E5_07959.png, which is not an earlier prediction"),
    (lambda root, tmp: tmp / "flat", "/flat/val, which is a file"),
])
def test_evaluate_writes_no_predictions_over_the_data_or_into_a_file(trained, tmp_path, camvid_root, capsys, where,
                                                                     words):
    (tmp_path / "file").write_text("")
    (tmp_path / "notes" / "val").mkdir(parents=True)
    (tmp_path / "notes" / "val" / "0016E5_07959.png").write_text("my notes")  # the first val image's name
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "val").write_text("")  # where the val images' predictions go
    directory = where(camvid_root, tmp_path)
    assert cli.run(evaluate.main, evaluate.PROG, ["--checkpoint", str(trained / "best.pt"), "--limit", "2",
                                                  "--predictions", str(directory), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"{evaluate.PROG}: error: --predictions {directory}")
    assert words.format(directory=directory) in error
    assert error.count("\n") == 1
    assert (tmp_path / "file").read_text() == "" and "my notes" in (tmp_path / "notes" / "val").joinpath(
        "0016E5_07959.png").read_text()


def test_load_trained_gives_the_model_that_scored_the_training_s_best_miou(trained, camvid_root):
    model = nasfast.load_trained(str(trained / "best.pt"))
    assert not model.training and len(model.decoder.aux) == 0
    checkpoint = load_checkpoint(str(trained / "best.pt"))
    val = make_dataset("camvid", str(camvid_root), split="val", transform=EvalTransform(checkpoint["scale"]))
    images = evenly_spaced(val, 8)  # the tiny preset's validation images
    metrics = evaluate_model(model, evaluation_loader(images, workers=0), 11, 255, torch.device("cpu"))
    assert metrics["miou"] == pytest.approx(checkpoint["best_miou"], abs=1e-4)


def test_evaluation_batches_images_of_one_size_with_the_same_metrics(trained, camvid_root, tmp_path):
    model = model_from_checkpoint(load_checkpoint(trained / "best.pt")).eval()
    val = make_dataset("camvid", str(camvid_root), split="val", transform=EvalTransform(0.25))
    val.pairs = val.pairs[:10]
    batched = evaluation_loader(val, workers=0)
    assert batched.batch_size == 8
    metrics = [evaluate_model(model, loader, 11, 255, torch.device("cpu"))
               for loader in (batched, DataLoader(val, batch_size=1))]
    assert metrics[0]["miou"] == pytest.approx(metrics[1]["miou"], abs=1e-4)
    assert metrics[0]["pixel_acc"] == pytest.approx(metrics[1]["pixel_acc"], abs=1e-4)
    first = Image.open(val.pairs[0][0])
    first.resize((first.width // 2, first.height // 2)).save(tmp_path / "small.png")
    val.pairs[1] = (tmp_path / "small.png", val.pairs[1][1])
    assert evaluation_loader(Subset(val, [0, 1, 2]), workers=0).batch_size == 1  # sizes differ
    assert evaluation_loader(Subset(val, [0, 2, 3]), workers=0).batch_size == 8


def camvid_image(camvid_root, size=(160, 120)) -> np.ndarray:
    return np.array(Image.open(camvid_root / "val" / "0016E5_07959.png").convert("RGB").resize(size))


def camvid_input(camvid_root) -> torch.Tensor:
    """camvid_image as a model takes it: a batch of one, normalised (as the C++ program does too)."""
    return to_tensors(camvid_image(camvid_root), np.zeros((120, 160), np.uint8))[0][None]


def logits_written(path) -> torch.Tensor:
    """The logits the C++ program wrote for camvid_image: 11 classes at 120 x 160."""
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(1, 11, 120, 160))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.pt"
    out = run("nasfast.export", "--checkpoint", str(trained / "best.pt"), "--out", str(path)).stdout
    return path, out


def test_export_equals_the_trained_model_and_names_its_ops(trained, exported, camvid_root):
    path, out = exported
    model = model_from_checkpoint(load_checkpoint(str(trained / "best.pt"))).eval()
    x = camvid_input(camvid_root)
    extra = {"nasfast.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    info = json.loads(extra["nasfast.json"])
    if nasfast.ops.available():
        assert "nasfast::upsample_add" in info["native_ops"] and "needs the nasfast ops library" in out
    assert "untrained" not in out
    assert not any(k.startswith("decoder.aux") for k in dict(scripted.named_parameters()))


def test_export_names_the_classes_and_says_how_to_scale_and_normalise_the_input(trained, exported, camvid_root):
    extra = {"nasfast.json": ""}
    torch.jit.load(str(exported[0]), _extra_files=extra)
    info = json.loads(extra["nasfast.json"])
    assert (info["num_classes"], info["class_names"], info["scale"]) == (11, list(CamVid.class_names), 0.25)
    assert info["genotype"] == ZOO["arch1"].to_list() and info["checkpoint"] == str(trained / "best.pt")
    image = camvid_image(camvid_root)
    channels_first = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    normalised = (channels_first - torch.tensor(info["mean"])[:, None, None]) / torch.tensor(info["std"])[:, None, None]
    torch.testing.assert_close(normalised, to_tensors(image, np.zeros((120, 160), np.uint8))[0])


def test_an_export_is_not_taken_for_a_checkpoint(exported, capsys):
    path, _ = exported
    assert cli.run(evaluate.main, evaluate.PROG, ["--checkpoint", str(path)]) == 2
    assert f"{path} is not a checkpoint of python -m nasfast.train (it is a TorchScript file" in capsys.readouterr().err


def test_predict_writes_what_evaluate_writes_from_a_checkpoint_or_its_export(trained, exported, camvid_root,
                                                                            tmp_path, capsys):
    """Images of one's own, no labels: the classes evaluate --predictions writes for the same images
    (the first three it evaluates with --limit 3), in a folder given or one by one."""
    evaluated = tmp_path / "evaluated"
    run("nasfast.evaluate", "--checkpoint", str(trained / "best.pt"), "--limit", "3", "--predictions", str(evaluated))
    val = CamVid(camvid_root, "val")
    images = [val.pairs[i][0] for i in (0, len(val) // 3, 2 * len(val) // 3)]
    (tmp_path / "mine" / "sub").mkdir(parents=True)
    for image, where in zip(images, ["mine", "mine", "mine/sub"]):
        shutil.copy(image, tmp_path / where / f"{image.stem}.png")
    (tmp_path / "mine" / "notes.txt").write_text("not an image")
    assert run("nasfast.predict", "--checkpoint", str(trained / "best.pt"), str(tmp_path / "mine"), "--out",
               str(tmp_path / "folder"), "--no-progress").stdout == f"3 predictions in {tmp_path / 'folder'}\n"
    assert cli.run(predict.main, predict.PROG, ["--checkpoint", str(exported[0]), "--out", str(tmp_path / "export"),
                                                "--no-progress", *map(str, images)]) == 0
    for image, where in zip(images, ["folder", "folder", "folder/sub"]):
        expected = np.asarray(Image.open(evaluated / image.relative_to(camvid_root).with_suffix(".png")))
        for written in (tmp_path / where / f"{image.stem}.png", tmp_path / "export" / f"{image.stem}.png"):
            assert Image.open(written).mode == "P" and (np.asarray(Image.open(written)) == expected).mean() > 0.999
    assert len(list((tmp_path / "folder").rglob("*"))) == 4  # 3 PNGs and sub/


def test_predict_skips_an_unreadable_image_and_says_so(trained, camvid_root, tmp_path, capsys):
    shutil.copy(camvid_root / "val" / "0016E5_07959.png", tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    assert cli.run(predict.main, predict.PROG, ["--checkpoint", str(trained / "best.pt"), "--out", str(out),
                                                "--no-progress", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{predict.PROG}: skipped {tmp_path / 'bad.jpg'}: unreadable or truncated image")
    assert captured.out == f"1 prediction in {out}; 1 image skipped, unreadable (above)\n"
    assert [p.name for p in out.iterdir()] == ["good.png"]


def test_predict_onto_a_full_disk_leaves_no_partial_file_and_runs_again(trained, camvid_root, tmp_path, capsys):
    """A PNG cut short was not taken for an earlier prediction: the same command was refused after."""
    out = tmp_path / "out"
    argv = ["--checkpoint", str(trained / "best.pt"), "--out", str(out), "--no-progress", "--workers", "0",
            str(camvid_root / "val" / "0016E5_07959.png")]
    with file_size_limit(100):
        assert cli.run(predict.main, predict.PROG, argv) == 2
    assert capsys.readouterr().err == f"{predict.PROG}: error: File too large: {out / '0016E5_07959.png'}\n"
    assert list(out.iterdir()) == []
    assert cli.run(predict.main, predict.PROG, argv) == 0


def test_predict_refuses_an_export_whose_bytes_changed_after_saving(exported, camvid_root, tmp_path, capsys):
    """torch.jit.load does not check the archive's CRC-32s: a bad copy predicted with a wrong weight."""
    from test_cli_train import flip_a_stored_byte
    damaged = tmp_path / "model.pt"
    shutil.copy(exported[0], damaged)
    member = flip_a_stored_byte(damaged)
    assert cli.run(predict.main, predict.PROG, ["--checkpoint", str(damaged), "--out", str(tmp_path / "out"),
                                                str(camvid_root / "val" / "0016E5_07959.png")]) == 2
    assert capsys.readouterr().err == (f"{predict.PROG}: error: {damaged} is damaged: its bytes differ from what was "
                                       f"saved (checksum of {member}); copy it again, or export it again\n")


@pytest.mark.skipif(not nasfast.ops.available(), reason="an export without the library has no native ops")
def test_predict_with_an_export_that_needs_the_ops_library_where_it_is_not_loaded_says_so(exported, camvid_root,
                                                                                        tmp_path):
    result = subprocess.run([sys.executable, "-m", "nasfast.predict", "--checkpoint", str(exported[0]), "--out",
                             str(tmp_path), str(camvid_root / "val" / "0016E5_07959.png")], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO), NASFAST_DISABLE_OPS="1"))
    assert result.returncode == 2 and result.stderr == (
        f"{predict.PROG}: error: {exported[0]} calls the native ops (nasfast::sep_conv_bn_relu, nasfast::upsample_add),"
        f" not loaded here: turned off (NASFAST_DISABLE_OPS=1); or export it again with --reference-ops\n")


@pytest.mark.parametrize("arguments, words", [
    (["{tmp}/missing.png"], "{tmp}/missing.png: no such file or folder"),
    (["{tmp}/empty"], "{tmp}/empty: a folder without images (.jpg, .jpeg, .png"),
    (["{tmp}/images", "--out", "{tmp}/images"], "--out {tmp}/images is the folder of images {tmp}/images: choose "
                                                "another (one inside it will do)"),
    (["{tmp}/images", "{tmp}/other/a.jpg"],
     "{tmp}/images/a.png and {tmp}/other/a.jpg would both write {tmp}/out/a.png: rename one, or give them to "
     "separate runs"),
    (["{tmp}/clash"], "{tmp}/clash/y.jpg would write {tmp}/out/y.png, a folder of other predictions"),
    (["{tmp}/images", "--out", "{tmp}/notes"], "--out {tmp}/notes would replace {tmp}/notes/a.png, which is not an "
                                               "earlier prediction"),
    (["{tmp}/images", "--out", "{tmp}/labels"], "--out {tmp}/labels would replace {tmp}/labels/a.png, which is not "
                                                "an earlier prediction"),  # a palette label of one's own
    (["{tmp}/images", "--checkpoint", "{tmp}/images/a.png"], "{tmp}/images/a.png is not a checkpoint"),
])
def test_predict_refuses_bad_input_in_one_line_before_writing(trained, camvid_root, tmp_path, capsys, arguments,
                                                              words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "images").mkdir()
    shutil.copy(camvid_root / "val" / "0016E5_07959.png", tmp_path / "images" / "a.png")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.png").write_text("my notes")
    (tmp_path / "labels").mkdir()
    shutil.copy(camvid_root / "valannot" / "0016E5_07959.png", tmp_path / "labels" / "a.png")
    Image.open(tmp_path / "labels" / "a.png").convert("P").save(tmp_path / "labels" / "a.png")
    (tmp_path / "other").mkdir()
    shutil.copy(camvid_root / "val" / "0016E5_07959.png", tmp_path / "other" / "a.jpg")  # a name, not a JPEG
    (tmp_path / "clash" / "y.png").mkdir(parents=True)
    for name in ("y.jpg", "y.png/z.jpg"):
        shutil.copy(camvid_root / "val" / "0016E5_07959.png", tmp_path / "clash" / name)
    argv = ["--checkpoint", str(trained / "best.pt"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.run(predict.main, predict.PROG, argv + [a.format(tmp=tmp_path) for a in arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"{predict.PROG}: error: ") and error.count("\n") == 1
    assert words.format(tmp=tmp_path) in error
    assert not (tmp_path / "out").exists() and (tmp_path / "notes" / "a.png").read_text() == "my notes"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "labels" / "a.png")),
                          np.asarray(Image.open(camvid_root / "valannot" / "0016E5_07959.png")))


def test_predict_takes_an_image_given_twice_once_and_linked_folders_and_leaves_its_predictions_out(
        trained, camvid_root, tmp_path, capsys):
    """A folder given through a link, --out inside it by its real path: the second run took the first's
    predictions for images (and refused to write over them)."""
    (tmp_path / "frames").mkdir()
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(camvid_root / "val" / "0016E5_07959.png", tmp_path / "frames" / "a.png")
    shutil.copy(camvid_root / "val" / "0016E5_07961.png", tmp_path / "elsewhere" / "b.png")
    (tmp_path / "frames" / "more").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "frames" / "loop").symlink_to(tmp_path / "frames")  # each real folder is walked once
    (tmp_path / "link").symlink_to(tmp_path / "frames")
    argv = ["--checkpoint", str(trained / "best.pt"), "--out", str(tmp_path / "frames" / "out"), "--no-progress",
            str(tmp_path / "link"), str(tmp_path / "link" / "a.png")]
    for _ in range(2):
        assert cli.run(predict.main, predict.PROG, argv) == 0
        assert capsys.readouterr().out == f"2 predictions in {tmp_path / 'frames' / 'out'}\n"
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "frames" / "out").rglob("*.png")) == \
        ["frames/out/a.png", "frames/out/more/b.png"]


def test_predict_interrupted_says_how_many_predictions_it_wrote(trained, camvid_root, tmp_path, capsys, monkeypatch):
    for name in ("a", "b", "c"):
        shutil.copy(camvid_root / "val" / "0016E5_07959.png", tmp_path / f"{name}.png")
    real_write, calls = predict.write_prediction, []

    def interrupted_at_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(*args)
    monkeypatch.setattr(predict, "write_prediction", interrupted_at_the_second)
    assert cli.run(predict.main, predict.PROG, ["--checkpoint", str(trained / "best.pt"), "--out",
                                                str(tmp_path / "out"), "--no-progress", str(tmp_path)]) == 130
    assert capsys.readouterr().err == f"\n{predict.PROG}: interrupted: 1 prediction of 3 in {tmp_path / 'out'}\n"


def test_an_export_resizes_with_the_aten_op_not_a_scripted_interpolate(exported):
    """Scripted, F.interpolate put its Python body, every mode with the newest torch's ops, into the
    archive: torch 1.12 and 1.13 then refused the export (aten::_upsample_lanczos2d_aa)."""
    with zipfile.ZipFile(exported[0]) as archive:
        code = "".join(archive.read(name).decode() for name in archive.namelist()
                       if "/code/" in name and name.endswith(".py"))
    assert "torch.upsample_bilinear2d(" in code
    assert "def interpolate(" not in code and "_aa(" not in code and "nearest_exact" not in code


@pytest.fixture(scope="module")
def exported_for_torch_1_10(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model110.pt"
    run("nasfast.export", "--checkpoint", str(trained / "best.pt"), "--out", str(path), "--for-torch-1.10")
    return path


def test_an_export_for_torch_1_10_lacks_what_it_refuses_and_gives_the_same_logits(trained, exported_for_torch_1_10,
                                                                                  camvid_root):
    """torch 1.10 (a Jetson TX2's) aborts on torch 2's debug information and refuses a raise's exception class."""
    with zipfile.ZipFile(exported_for_torch_1_10) as archive:
        names = archive.namelist()
        code = "".join(archive.read(name).decode() for name in names if "/code/" in name and name.endswith(".py"))
    assert not any(name.endswith(".debug_pkl") for name in names) and "ops.prim.RaiseException(" in code
    assert '"builtins.' not in code
    extra = {"nasfast.json": ""}
    scripted = torch.jit.load(str(exported_for_torch_1_10), _extra_files=extra)
    assert json.loads(extra["nasfast.json"])["native_ops"] == []
    model = model_from_checkpoint(load_checkpoint(str(trained / "best.pt"))).eval()
    x = camvid_input(camvid_root)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(torch.jit.Error, match="the encoder takes images N x 3 x H x W, got the shape"):
        scripted(x[:, :2])


OLD_TORCH_PYTHONS = os.environ.get("NASFAST_OLD_TORCH_PYTHONS", "").split()


@pytest.mark.skipif(not OLD_TORCH_PYTHONS, reason="set NASFAST_OLD_TORCH_PYTHONS to Pythons with older torch releases")
@pytest.mark.parametrize("python", OLD_TORCH_PYTHONS)
def test_an_export_for_torch_1_10_runs_in_older_torch(exported_for_torch_1_10, camvid_root, tmp_path, python):
    x = camvid_input(camvid_root)
    np.save(tmp_path / "x.npy", x.numpy())
    script = ("import sys, numpy, torch\n"
              "m, x = torch.jit.load(sys.argv[1]), torch.from_numpy(numpy.load(sys.argv[2]))\n"
              "with torch.no_grad(): numpy.save(sys.argv[3], m(x).numpy())")
    result = subprocess.run([python, "-c", script, str(exported_for_torch_1_10), str(tmp_path / "x.npy"),
                             str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = torch.jit.load(str(exported_for_torch_1_10))(x)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.skipif(
    not nasfast.ops.available(), reason="native ops library not built"))])
def test_export_folds_every_batch_norm_once(fused):
    model = create_model("arch0", 11, pretrained=False, fused=fused).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            for t, (low, high) in zip((bn.running_mean, bn.running_var, bn.weight, bn.bias),
                                      ((-1, 1), (0.5, 2), (0.5, 2), (-1, 1))):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (high - low) + low)
    scripted = script_for_deployment(model)
    assert not [m for m in fold_batch_norms(copy.deepcopy(model)).modules() if isinstance(m, nn.BatchNorm2d)]
    # folded when exported, not at each call: the separable blocks' fold (an rsqrt) is not in the graph
    assert "batch_norm" not in str(scripted.inlined_graph) and "rsqrt" not in str(scripted.inlined_graph)
    # inference ops only: the training branch (sep_conv, then the batch norm) is not exported
    assert native_ops(scripted) == (["nasfast::sep_conv_bn_relu", "nasfast::upsample_add"] if fused else [])
    x = torch.randn(2, 3, 64, 80, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_ops_torchscript_knows_stay_alive_when_replaced_or_their_library_is_destroyed():
    # Their ids stay in TorchScript's table of builtins (nasfast/torchscript.py): seen failing
    # torch.jit.script at random after torch.library.opcheck had imported torch._inductor, and
    # after a test's own library was destroyed.
    library = torch.library.Library("nasfast_probe", "DEF")
    library.define("f(Tensor x) -> Tensor")
    replaced = weakref.ref(torch.ops.nasfast_probe.f._op)
    library.define("f.twice(Tensor x, int n) -> Tensor")  # a new overload: the packet is refreshed
    current = weakref.ref(torch.ops.nasfast_probe.f._op)
    library._destroy()  # drops the packet
    del library
    gc.collect()
    assert replaced() is not None and current() is not None and current() is not replaced()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cpp_configure_explains_a_missing_ops_library(tmp_path):
    result = subprocess.run(["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(tmp_path),
                             f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", "-DNASFAST_OPS=None"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "prints None where nasfast has no built library" in " ".join(result.stderr.split())


needs_cpp_build = pytest.mark.skipif(shutil.which("cmake") is None or not nasfast.ops.available(),
                                     reason="needs cmake and the native ops library")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """examples/cpp built against this torch and ops library."""
    build = tmp_path_factory.mktemp("cpp-build")
    subprocess.run(["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build),
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                    f"-DNASFAST_OPS={nasfast.ops.library_path()}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    return build / "nasfast_segment"


@pytest.fixture(scope="module")
def ppm_image(camvid_root, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "image.ppm"
    path.write_bytes(b"P6\n# a comment, as image tools write\n160 120\n255\n" + camvid_image(camvid_root).tobytes())
    return path


def segment(program, *args, shell_setup=None):
    """The program's result, run without Python's environment; `shell_setup` (sh commands) runs
    before it in its process."""
    command = [str(program), *map(str, args)]
    if shell_setup:
        command = ["sh", "-c", f'{shell_setup}; exec "$0" "$@"', *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(command, capture_output=True, text=True, env=env)


@needs_cpp_build
def test_cpp_program_matches_python(program, exported, camvid_root, ppm_image, tmp_path):
    path, _ = exported
    result = segment(program, path, ppm_image, tmp_path / "logits.bin")
    assert result.returncode == 0, result.stderr
    note, size, histogram = result.stdout.splitlines()
    assert note == "note: the model was trained on images scaled by 0.25 (nasfast.json); the image is used at its size"
    assert size == "output size: [1, 11, 120, 160]"
    cpp = logits_written(tmp_path / "logits.bin")
    x = camvid_input(camvid_root)
    with torch.no_grad():
        python = torch.jit.load(str(path))(x)
    assert (cpp - python).abs().max() < 1e-4
    counts = torch.bincount(python.argmax(1).flatten(), minlength=11).tolist()
    assert histogram == "class histogram: " + " ".join(f"{c}:{n}" for c, n in enumerate(counts))
    if shutil.which("readelf"):  # copied beside the ops library, the program finds it there
        dynamic = subprocess.run(["readelf", "-d", str(program)], capture_output=True, text=True).stdout
        assert "Shared library: [_C.so]" in dynamic and "$ORIGIN" in dynamic


@needs_cpp_build
@pytest.mark.skipif(sys.platform != "linux" or not shutil.which("objdump"), reason="needs Linux and objdump")
def test_cpp_program_loads_torch_before_the_ops_library(program):
    """The loader looks for the ops library's own dependencies (c10_cuda and CUDA's runtime on a
    CUDA build) among the libraries loaded before it and in the system's paths: the program built on
    the GPU machine, which needed the ops library before libtorch_cuda, could not start
    (libc10_cuda.so not found)."""
    dynamic = subprocess.run(["objdump", "-p", str(program)], capture_output=True, text=True, check=True).stdout
    needed = [line.split()[1] for line in dynamic.splitlines() if line.strip().startswith("NEEDED")]
    torch_libraries = {"libtorch.so", "libc10.so", "libtorch_cpu.so"}
    if torch.version.cuda:
        torch_libraries |= {"libtorch_cuda.so", "libc10_cuda.so"}
    assert torch_libraries <= set(needed[:needed.index("_C.so")]), needed


def assert_bad_input(result, message):
    """One line `nasfast_segment: error: ...` holding `message`, exit status 2, nothing on stdout."""
    assert message in result.stderr and result.stdout == ""
    assert result.stderr.startswith("nasfast_segment: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.returncode == 2, result.stderr


@needs_cpp_build
def test_cpp_program_names_a_training_checkpoint_with_the_command_that_exports_it(program, trained, ppm_image):
    checkpoint = trained / "best.pt"
    assert_bad_input(segment(program, checkpoint, ppm_image),
                     f"{checkpoint}: a training checkpoint, not an export: "
                     f"python -m nasfast.export --checkpoint {checkpoint} --out model.pt makes one")


@needs_cpp_build
def test_cpp_program_reports_bad_input_in_one_line_with_status_2(program, exported, ppm_image, tmp_path):
    model, _ = exported
    (tmp_path / "cut.pt").write_bytes(model.read_bytes()[:1000])
    (tmp_path / "truncated.ppm").write_bytes(ppm_image.read_bytes()[:5000])
    (tmp_path / "16-bit.ppm").write_bytes(b"P6 2 2 65535\n" + bytes(24))
    (tmp_path / "huge.ppm").write_bytes(b"P6 100000 100000 255\n" + bytes(100))
    for args, message in (([model, tmp_path / "truncated.ppm"], "truncated pixel data"),
                          ([model, tmp_path / "huge.ppm"], "100000 x 100000 pixels need 30000000000 bytes"),
                          ([ppm_image, ppm_image], f"{ppm_image}: not a model file (python -m nasfast.export "
                                                   f"writes one)"),
                          ([tmp_path / "cut.pt", ppm_image], "not a model file"),
                          ([tmp_path / "missing.pt", ppm_image], f"cannot open {tmp_path / 'missing.pt'}: No such "
                                                                 f"file"),
                          ([tmp_path, ppm_image], f"cannot open {tmp_path}: Is a directory"),
                          ([model, tmp_path / "missing.ppm"], f"cannot open {tmp_path / 'missing.ppm'}: No such file"),
                          ([model, tmp_path / "16-bit.ppm"], "maximum value 65535; 8-bit channels")):
        assert_bad_input(segment(program, *args), message)
    usage = segment(program, model, ppm_image, "logits.bin", "extra")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: ")


HOW_TO_CONVERT = 'an RGB binary PPM (P6) is needed: PIL.Image.open(f).convert("RGB").save("x.ppm") writes one'


@needs_cpp_build
def test_cpp_program_names_an_image_of_another_format_with_how_to_convert_it(program, exported, ppm_image, tmp_path):
    model, _ = exported
    picture = Image.open(ppm_image)
    picture.save(tmp_path / "image.png")
    picture.convert("L").save(tmp_path / "grey.ppm")  # P5
    picture.convert("1").save(tmp_path / "black-and-white.ppm")  # P4
    (tmp_path / "ascii.ppm").write_text("P3\n1 1\n255\n0 0 0\n")
    for name, kind in (("image.png", "not a PPM image"), ("grey.ppm", "a grey PGM image (P5)"),
                       ("black-and-white.ppm", "a black and white PBM image (P4)"),
                       ("ascii.ppm", "an ASCII PPM image (P3)")):
        assert_bad_input(segment(program, model, tmp_path / name), f"{tmp_path / name}: {kind}; {HOW_TO_CONVERT}")


@needs_cpp_build
def test_cpp_program_logits_that_cannot_be_written_say_why_and_leave_no_partial_file(program, exported, ppm_image,
                                                                                    tmp_path):
    model, _ = exported
    (tmp_path / "file").write_text("")
    (tmp_path / "directory").mkdir()
    for out, reason in ((tmp_path / "file" / "logits.bin", "Not a directory"),
                        (tmp_path / "directory", "Is a directory")):
        assert_bad_input(segment(program, model, ppm_image, out), f"cannot write the logits to {out}: {reason}")
    assert sorted(os.listdir(tmp_path)) == ["directory", "file"] and os.listdir(tmp_path / "directory") == []
    # a full disk: files limited to 100 blocks, far less than the 11 x 120 x 160 float32 logits
    earlier = tmp_path / "earlier" / "logits.bin"
    earlier.parent.mkdir()
    earlier.write_bytes(b"the logits of an earlier run")
    full_disk = segment(program, model, ppm_image, earlier, shell_setup="trap '' XFSZ; ulimit -f 100")
    assert_bad_input(full_disk, f"cannot write the logits to {earlier}: File too large")
    assert os.listdir(earlier.parent) == ["logits.bin"]
    assert earlier.read_bytes() == b"the logits of an earlier run"


@needs_cpp_build
def test_cpp_program_never_writes_its_logits_over_the_model_an_image_or_a_device(program, exported, ppm_image,
                                                                                tmp_path):
    """A logits path given in the wrong place replaced the model or the image with logits."""
    model, _ = exported
    files = {name: tmp_path / name for name in ("model.pt", "image.ppm", "checkpoint.pt", "photo.png")}
    files["model.pt"].write_bytes(model.read_bytes())
    files["image.ppm"].write_bytes(ppm_image.read_bytes())
    torch.save({"model": {}}, files["checkpoint.pt"])
    Image.open(ppm_image).save(files["photo.png"])
    before = {name: path.read_bytes() for name, path in files.items()}
    for out, reason in ((files["model.pt"], "it is the model; give another path"),
                        (files["image.ppm"], "it is the image; give another path"),
                        (files["checkpoint.pt"], "it holds a model or a checkpoint, not logits; give another path"),
                        (files["photo.png"], "it holds an image, not logits; give another path"),
                        ("/dev/null", "not a regular file")):
        assert_bad_input(segment(program, files["model.pt"], files["image.ppm"], out),
                         f"will not write the logits over {out}: {reason}")
    assert {name: path.read_bytes() for name, path in files.items()} == before
    earlier = tmp_path / "logits.bin"
    earlier.write_bytes(bytes(16))  # an earlier run's logits: replaced
    assert segment(program, files["model.pt"], files["image.ppm"], earlier).returncode == 0
    assert earlier.stat().st_size == 11 * 120 * 160 * 4
    unknown = segment(program, files["model.pt"], files["image.ppm"], "--bogus")  # was taken for the logits' path
    assert unknown.returncode == 2 and "unknown option --bogus" in unknown.stderr
    assert not (Path.cwd() / "--bogus").exists()


@pytest.fixture(scope="module")
def program_without_ops(tmp_path_factory):
    """examples/cpp built without the ops library, as on a Jetson TX2 (whose torch the library does not build for)."""
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    build = tmp_path_factory.mktemp("cpp-build-without-ops")
    configure = subprocess.run(["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build),
                                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                               check=True, capture_output=True, text=True)
    assert "runs exports without native ops only (--reference-ops, --for-torch-1.10)" in configure.stdout
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    return build / "nasfast_segment"


def test_cpp_program_without_the_ops_library_runs_an_export_for_torch_1_10(program_without_ops, camvid_root,
                                                                           exported_for_torch_1_10, ppm_image,
                                                                           tmp_path):
    result = segment(program_without_ops, exported_for_torch_1_10, ppm_image, tmp_path / "logits.bin")
    assert result.returncode == 0, result.stderr
    cpp = logits_written(tmp_path / "logits.bin")
    x = camvid_input(camvid_root)
    with torch.no_grad():
        assert (cpp - torch.jit.load(str(exported_for_torch_1_10))(x)).abs().max() < 1e-4
    if shutil.which("readelf"):
        assert "_C.so" not in subprocess.run(["readelf", "-d", str(program_without_ops)], capture_output=True,
                                             text=True).stdout


@pytest.mark.skipif(not nasfast.ops.available(), reason="an export without the library has no native ops")
def test_cpp_program_without_the_ops_library_says_how_to_run_an_export_that_needs_it(program_without_ops, exported,
                                                                                     ppm_image):
    model, _ = exported
    assert_bad_input(segment(program_without_ops, model, ppm_image),
                     f"{model}: Unknown builtin op: nasfast::sep_conv_bn_relu. (it needs the nasfast ops library: "
                     f"build this program with -DNASFAST_OPS, or export with --reference-ops)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cpp_program_cuda_without_a_gpu_says_so(program_without_ops, exported_for_torch_1_10, ppm_image):
    assert_bad_input(segment(program_without_ops, exported_for_torch_1_10, ppm_image, "--cuda"),
                     "--cuda: this libtorch finds no CUDA GPU")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_cpp_build
def test_cpp_program_on_the_gpu_matches_python_on_the_cpu(program, exported, camvid_root, ppm_image, tmp_path):
    path, _ = exported
    result = segment(program, "--cuda", path, ppm_image, tmp_path / "logits.bin")
    assert result.returncode == 0, result.stderr
    cpp = logits_written(tmp_path / "logits.bin")
    x = camvid_input(camvid_root)
    with torch.no_grad():
        assert (cpp - torch.jit.load(str(path))(x)).abs().max() < 1e-2  # cuDNN computes in TF32
