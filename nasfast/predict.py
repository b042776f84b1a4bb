"""python -m nasfast.predict: a trained model's classes for images of your own, no labels needed:
one palette PNG per image, at its size, whose pixel values are the class indices (as evaluate
--predictions writes them), from a training's checkpoint or its export."""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import ops
from .checkpoint import export_info, is_torchscript, load_checkpoint, model_from_checkpoint, refuse_damaged
from .cli import UsageError, counted, loader_workers, non_negative_int, path_text, positive_float, resolve_device, run
from .data.decode import DataError, decode, to_rgb
from .data.folder import IMAGE_SUFFIXES
from .data.transforms import normalised, resized
from .ops.memory import cpu_memory_cache
from .predictions import make_folders, refuse_to_replace, write_prediction
from .progress import progress_bar

PROG = "python -m nasfast.predict"


def images_to_predict(inputs: Sequence[str], out: Path) -> List[Tuple[Path, Path]]:
    """(image, its prediction's path) for each image file given and each one in a folder given
    (subfolders and linked folders too, hidden files and anything under `out` left out):
    OUT/<name>.png for a file, OUT/<its path under the folder>.png for a folder's. An image given
    twice is taken once; UsageError where two would write one file."""
    found = {}
    for text in inputs:
        given = Path(text)
        if given.is_dir():
            if os.path.realpath(given) == os.path.realpath(out):
                raise UsageError(f"--out {out} is the folder of images {text}: choose another (one inside it will do)")
            files = _image_files(given, out)
            if not files:
                raise UsageError(f"{text}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            pairs = [(path, out / path.relative_to(given).with_suffix(".png")) for path in files]
        elif given.is_file():
            pairs = [(given, out / given.with_suffix(".png").name)]
        else:
            raise UsageError(f"{text}: no such file or folder")
        for image, target in pairs:
            found.setdefault((os.path.realpath(image), target), (image, target))
    images = list(found.values())
    _refuse_clashes(images)
    return images


def _image_files(folder: Path, out: Path) -> List[Path]:
    """The image files under `folder`, sorted, through linked folders (each real folder once), less
    hidden ones and, where `out` is inside it, those under `out` (earlier predictions)."""
    files, seen, skip = [], set(), os.path.realpath(out)
    if not skip.startswith(os.path.join(os.path.realpath(folder), "")):
        skip = None
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or skip and (real == skip or real.startswith(skip + os.sep)):
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        files += [Path(root) / name for name in names if not name.startswith(".")
                  and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and os.path.isfile(os.path.join(root, name))]
    return sorted(files)


def _refuse_clashes(pairs: Sequence[Tuple[Path, Path]]) -> None:
    """UsageError where two images would write one file, or one where another needs a folder."""
    writer = {}
    for image, target in pairs:
        if target in writer:
            raise UsageError(f"{writer[target]} and {image} would both write {target}: rename one, or give them to "
                             f"separate runs, each with its own --out")
        writer[target] = image
    folders = {folder for target in writer for folder in target.parents}
    clash = next((target for target in writer if target in folders), None)
    if clash is not None:
        raise UsageError(f"{writer[clash]} would write {clash}, a folder of other predictions: rename it, or give it "
                         f"to a separate run with its own --out")


def load_model(path: str, device: torch.device) -> Tuple[torch.nn.Module, float]:
    """The deployed model of a checkpoint of python -m nasfast.train or of its export, and the
    scale its images were resized by in training."""
    if not is_torchscript(path):
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, source=path).eval().to(device)
        return model, checkpoint.get("scale", 1.0)
    refuse_damaged(path, "copy it again, or export it again")
    info = export_info(path)
    if info.get("native_ops") and not ops.available():
        raise UsageError(f"{path} calls the native ops ({', '.join(info['native_ops'])}), not loaded here: "
                         f"{ops.why_unavailable()}; or export it again with --reference-ops")
    return torch.jit.load(path, map_location=device).eval(), info.get("scale", 1.0)


class _Images(Dataset):
    """Image i as the model takes it, resized by `scale`, with its size before (width, height), or
    None and why it cannot be read."""

    def __init__(self, paths: Sequence[Path], scale: float):
        self.paths, self.scale = paths, scale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = to_rgb(decode(self.paths[index], "image"))
        except DataError as error:
            return None, None, str(error)
        return normalised(resized(image, self.scale, Image.BILINEAR)), image.shape[1::-1], ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("images", nargs="+", metavar="IMAGE", type=path_text,
                        help=f"image files ({', '.join(IMAGE_SUFFIXES)}) and folders of them (subfolders too)")
    parser.add_argument("--checkpoint", required=True, type=path_text,
                        help="best.pt or last.pt of python -m nasfast.train, or a model.pt of python -m nasfast.export")
    parser.add_argument("--out", required=True, type=path_text,
                        help="folder of the predictions: OUT/<image name>.png for a file given, OUT/<its path under "
                             "the folder>.png for a folder's; earlier predictions there are replaced, other files "
                             "refused")
    parser.add_argument("--scale", type=positive_float,
                        help="resize the images by this factor before the model sees them (the predictions keep the "
                             "images' own size) [the training's, stored in the checkpoint]")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N [auto]")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="image-reading processes [2]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    images = images_to_predict(args.images, out)
    refuse_to_replace(out, [target for _, target in images], [image for image, _ in images], option="--out",
                      data="the images given")
    device = resolve_device(args.device)
    model, scale = load_model(args.checkpoint, device)
    loader = DataLoader(_Images([image for image, _ in images], args.scale or scale), batch_size=None,
                        num_workers=loader_workers(args.workers))
    make_folders([target for _, target in images])
    written = skipped = 0
    bar = progress_bar(loader, desc="predict", unit="image", disable=args.no_progress)
    try:
        with cpu_memory_cache(device), torch.no_grad(), bar:
            for (x, size, problem), (_, target) in zip(bar, images):
                if problem:
                    bar.write(f"{PROG}: skipped {problem}", file=sys.stderr)
                    skipped += 1
                    continue
                write_prediction(model(x[None].to(device))[0], target, size)
                written += 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted: {counted(written, 'prediction')} of {len(images)} in {out}", file=sys.stderr)
        return 130
    note = f"; {counted(skipped, 'image')} skipped, unreadable (above)" if skipped else ""
    print(f"{counted(written, 'prediction')} in {out}{note}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
