import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from nasfast.data import (CamVid, DataError, EvalTransform, FolderDataset, TrainTransform, find_data_root,
                          make_dataset)


def test_camvid_real_data(camvid_root):
    train, val = make_dataset("camvid"), make_dataset("camvid", split="val")
    assert (len(train), len(val), train.num_classes) == (367, 101, 11)
    image, label = train[0]
    raw = np.array(Image.open(camvid_root / "trainannot" / "0001TP_006690.png"))
    assert image.shape == (3, 360, 480) and 0 <= image.min() and image.max() <= 1
    assert torch.equal(label == 255, torch.from_numpy(raw == 11))  # unlabelled -> ignore
    assert set(label.unique().tolist()) <= set(range(11)) | {255}


def small_copy(camvid_root, tmp_path, n=3):
    """A CamVid-layout copy of n real pairs that a test may corrupt."""
    root = tmp_path / "camvid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    lines = (camvid_root / "train.txt").read_text().splitlines()[:n]
    for line in lines:
        for rel in line.split():
            shutil.copy(camvid_root / rel, root / rel)
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root, [line.split() for line in lines]


def test_each_bad_file_is_named_with_its_problem(camvid_root, tmp_path):
    root, pairs = small_copy(camvid_root, tmp_path)
    label = np.array(Image.open(root / pairs[0][1]))
    label[0, 0] = 17
    Image.fromarray(label).save(root / pairs[0][1])
    Image.fromarray(label[:100]).save(root / pairs[1][1])
    data = (root / pairs[2][0]).read_bytes()
    (root / pairs[2][0]).write_bytes(data[:len(data) // 2])
    dataset = CamVid(root)
    for index, problem in [(0, r"values \[17\]"), (1, "differs from its image"), (2, "truncated")]:
        with pytest.raises(DataError, match=problem) as error:
            dataset[index]
        assert str(root / pairs[index][1 if index < 2 else 0]) in str(error.value)
    (root / pairs[0][0]).unlink()
    with pytest.raises(DataError, match="image file is missing"):
        dataset[0]


def test_augmentation_is_reproducible_and_seeded(camvid_root):
    dataset = make_dataset("camvid", transform=TrainTransform(96, seed=1))
    a, b = dataset[5], dataset[5]
    assert a[0].shape == (3, 96, 96) and a[1].shape == (96, 96)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    dataset.transform.set_epoch(1)
    assert not torch.equal(dataset[5][0], a[0])
    dataset.transform = TrainTransform(96, seed=2)
    assert not torch.equal(dataset[5][0], a[0])


def test_crops_larger_than_the_image_are_padded_with_ignore(camvid_root):
    dataset = make_dataset("camvid", transform=TrainTransform(400, scale_range=(0.5, 0.5), mirror=False))
    image, label = dataset[0]
    assert image.shape == (3, 400, 400) and (label == 255).float().mean() > 0.4


def test_eval_transform_resizes_and_pads(camvid_root):
    image, label = make_dataset("camvid", split="val", transform=EvalTransform(0.25, (100, 130)))[0]
    assert image.shape == (3, 100, 130) and (label[90:] == 255).all() and (label[:, 120:] == 255).all()


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFAST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as error:
        find_data_root("camvid")
    message = str(error.value)
    assert str(tmp_path / "data" / "camvid") in message and str(tmp_path / "home") in message
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        find_data_root("camvid", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="unknown dataset"):
        make_dataset("cityscapes")


def test_folder_dataset(tmp_path, camvid_root):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("background\nroad\n")
    Image.open(camvid_root / "train" / "0001TP_006690.png").save(root / "images" / "a.jpg")
    label = (np.array(Image.open(camvid_root / "trainannot" / "0001TP_006690.png")) == 3).astype(np.uint8)
    Image.fromarray(label).save(root / "labels" / "a.png")
    dataset = FolderDataset(root)
    assert dataset.num_classes == 2 and len(dataset) == 1
    assert torch.equal(dataset[0][1], torch.from_numpy(label).long())


def test_voc_layout(tmp_path, camvid_root):
    """The VOC loader on a VOC-shaped folder built from CamVid pairs (no VOC data here)."""
    from nasfast.data import VOC
    root = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for name in ("a", "b"):
        Image.open(camvid_root / "train" / "0001TP_006690.png").convert("RGB").save(root / "JPEGImages" / f"{name}.jpg")
        label = np.array(Image.open(camvid_root / "trainannot" / "0001TP_006690.png"))
        Image.fromarray(np.where(label == 11, 255, label).astype(np.uint8)).save(root / "SegmentationClassAug" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\nb\n")
    dataset = make_dataset("voc", str(root))
    assert isinstance(dataset, VOC) and len(dataset) == 2 and dataset.num_classes == 21 and dataset.exclude == (0,)
    assert dataset[1][1].shape == (360, 480)
