"""python -m nasfast.data: every unusable file listed at once, the pixels of each class, warnings."""
import numpy as np
import pytest
from PIL import Image

from nasfast.cli import run
from nasfast.data import __main__ as data_tool
from test_cli_train import folder_dataset


def check(*argv) -> int:
    return run(data_tool.main, data_tool.PROG, [str(a) for a in argv] + ["--no-progress", "--workers", "0"])


def test_camvid_every_file_usable_and_the_pixels_of_each_class(camvid_root, capsys):
    assert check("--dataset", "camvid", "--workers", "2") == 0
    out = capsys.readouterr().out
    assert f"camvid data in {camvid_root}: 11 classes, 367 train images, 101 val images" in out
    assert "  road         31.66%   28.95%" in out and "  ignored       3.95%    1.70%" in out
    assert out.endswith("every file can be used\n")


def test_every_bad_file_is_listed_and_masks_of_0_and_255_are_explained(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", classes=2, images=6, lists={"train": [0, 1, 2, 3], "val": [3, 4, 5]})
    for i in range(6):  # binary masks saved as 0 and 255: the foreground is ignored
        label = np.asarray(Image.open(root / "labels" / f"im{i}.png"))
        Image.fromarray(np.where(label == 1, 255, 0).astype(np.uint8)).save(root / "labels" / f"im{i}.png")
    for i in (1, 4):
        Image.fromarray(np.full((64, 64), 7, np.uint8)).save(root / "labels" / f"im{i}.png")
    assert check("--dataset", "folder", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert "2 files cannot be used:" in err
    for i in (1, 4):
        assert f"im{i}.png: label values [7] are neither classes [0, 2) nor the ignore index 255" in err
    assert ("warning: no pixel of 1 class in the train labels: 'class1' (1); 255 is the ignore index: save a mask of "
            "0 and 255 as 0 and 1") in err
    assert f"warning: 1 of the 3 validation images are training images too, e.g. {root / 'images' / 'im3.png'}" in err


def test_no_split_files_is_a_note_and_a_bad_file_is_named_once(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", images=3)
    assert check("--dataset", "folder", "--data-root", root) == 0
    assert f"note: {root} has no train.txt or val.txt: every image is in every split" in capsys.readouterr().err
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(root / "labels" / "im1.png")
    assert check("--dataset", "folder", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert "1 file cannot be used:" in err and err.count("im1.png: label values [7]") == 1
    (root / "labels" / "im1.png").unlink()
    (root / "labels" / "im2.png").unlink()
    (root / "labels" / "im0.png").unlink()
    assert check("--dataset", "folder", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert "3 files cannot be used:" in err
    assert "warning: no pixel of 2 classes in the train labels: 'class0' (0), 'class1' (1); no label could be " \
           "read\n" in err


def only_classes_0_and_1(root, images: int) -> None:
    for i in range(images):
        label = np.asarray(Image.open(root / "labels" / f"im{i}.png"))
        Image.fromarray(np.minimum(label, 1)).save(root / "labels" / f"im{i}.png")


def test_training_warns_of_classes_without_a_validation_pixel(tmp_path, capsys):
    from nasfast import trainer
    from nasfast.data import FolderDataset
    root = folder_dataset(tmp_path / "data", classes=3, images=4)
    only_classes_0_and_1(root, 4)
    trainer.check_files(FolderDataset(root, split="val"), "validation", quiet=True)
    assert ("warning: no pixel of 1 class in the 4 validation labels: 'class2' (2) (wherever the model predicts "
            "them, they count as IoU 0 in the mIoU;") in capsys.readouterr().err


def test_the_search_warns_of_classes_without_a_stage1_pixel(tmp_path):
    from test_search import search
    root = folder_dataset(tmp_path / "data", classes=3, images=16)
    only_classes_0_and_1(root, 16)
    result = search("--dataset", "folder", "--data-root", str(root), "--budget", "1", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "warning: no pixel of 1 class in the 14 stage-1 labels: 'class2' (2) (stage 1 cannot learn them" in \
        result.stderr


def test_a_missing_labels_folder_is_one_problem_naming_the_folders_there(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", images=4, lists={"train": [0, 1, 2], "val": [3]})
    (root / "labels").rename(root / "masks")
    assert check("--dataset", "folder", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert f"{root / 'labels'}: no such folder (a folder dataset holds classes.txt, images/ and labels/: the " \
           f"README's Data section); {root} has images, masks" in err
    assert "is missing" not in err and err.count(str(root / "labels")) == 1  # not a line per image


def test_every_layout_problem_is_listed_at_once(tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", images=4, lists={"train": [0, 1, 2], "val": [3]})
    Image.open(root / "images" / "im0.png").save(root / "images" / "im0.jpg")  # two files named im0
    (root / "train.txt").write_text("im0\nim1\nim2\nnowhere\n")  # a name without an image
    for i in (1, 2):  # JPEG labels
        Image.open(root / "labels" / f"im{i}.png").save(root / "labels" / f"im{i}.jpg")
        (root / "labels" / f"im{i}.png").unlink()
    assert check("--dataset", "folder", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert f"folder data in {root}: the layout has 3 problems:\n" in err
    assert err.count("2 files named 'im0'") == 1  # said once, though both splits met it
    assert "no image for 1 name, e.g. ['nowhere']" in err
    assert "labels must be PNG (JPEG compression changes the class values), and 2 are JPEG (im1.jpg, im2.jpg)" in err
    from nasfast.data import FolderDataset
    from nasfast.data import DataError
    with pytest.raises(DataError, match=r"keep one of them \(and 2 more: python -m nasfast.data lists them\)$"):
        FolderDataset(root)  # elsewhere: the first, and how to see them all


def test_every_problem_of_the_split_files_is_listed_at_once(tmp_path, capsys):
    """The first one alone was said, and the layout's problems hid the files' until it was mended."""
    root = folder_dataset(tmp_path / "data", images=6, lists={"train": [0, 1, 2], "val": [3, 4]})
    (root / "train.txt").write_text("im0\nim1\nim1\nim404\n")
    (root / "val.txt").write_text("im3\nim3\nim4\n")
    assert check("--dataset", "folder", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert f"the layout has 3 problems:\n  {root / 'train.txt'}: 1 names listed more than once, e.g. ['im1']\n  " \
           f"{root / 'images'}: no image for 1 name, e.g. ['im404']\n  {root / 'val.txt'}: 1 names listed more " \
           f"than once, e.g. ['im3']\n(the files themselves are read once the layout is mended: run this again " \
           f"then)\n" in err


def test_files_in_no_split_are_named_with_why(tmp_path, capsys):
    """A .gif image, a broken link and a label of no image were left out without a word."""
    root = folder_dataset(tmp_path / "data", images=4)
    Image.open(root / "images" / "im3.png").save(root / "images" / "im3.gif")
    (root / "images" / "im3.png").unlink()
    (root / "labels" / "im2.png").rename(root / "labels" / "kept.png")
    (root / "images" / "im2.png").unlink()
    (root / "images" / "im2.png").symlink_to(root / "nowhere.png")
    (root / "labels" / "orphan.png").symlink_to(root / "labels" / "kept.png")
    assert check("--dataset", "folder", "--data-root", root) == 0
    err = capsys.readouterr().err
    assert (f"warning: 5 files in no split:\n  {root / 'images' / 'im2.png'}: a link to {root / 'nowhere.png'}, "
            f"which is not there\n"
            f"  {root / 'images' / 'im3.gif'}: not read (images are .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp)\n"
            f"  {root / 'labels' / 'im3.png'}: no image of that name in {root / 'images'}\n"
            f"  {root / 'labels' / 'kept.png'}: no image of that name in {root / 'images'}\n"
            f"  {root / 'labels' / 'orphan.png'}: no image of that name in {root / 'images'}\n") in err
