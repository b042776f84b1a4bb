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
from .checkpoint import export_info, is_torchscript, load_checkpoint, model_from_checkpoint
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
    (subfolders too, hidden files and anything under `out` left out): OUT/<name>.png for a file,
    OUT/<its path under the folder>.png for a folder's."""
    found = []
    for text in inputs:
        given = Path(text)
        if given.is_dir():
            if os.path.abspath(given) == os.path.abspath(out):
                raise UsageError(f"--out {out} is the folder of images {text}: choose another (one inside it will do)")
            files = [path for path in sorted(given.rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES
                     and path.is_file() and not _hidden(path.relative_to(given)) and not _under(path, out)]
            if not files:
                raise UsageError(f"{text}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            found += [(path, out / path.relative_to(given).with_suffix(".png")) for path in files]
        elif given.is_file():
            found.append((given, out / given.with_suffix(".png").name))
        else:
            raise UsageError(f"{text}: no such file or folder")
    targets = {}
    for image, target in found:
        if target in targets:
            raise UsageError(f"{targets[target]} and {image} would both write {target}: give them to separate runs "
                             f"(each with its own --out)")
        targets[target] = image
    return found


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _under(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(folder)) in Path(os.path.abspath(path)).parents


def load_model(path: str, device: torch.device) -> Tuple[torch.nn.Module, float]:
    """The deployed model of a checkpoint of python -m nasfast.train or of its export, and the
    scale its images were resized by in training."""
    if not is_torchscript(path):
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, source=path).eval().to(device)
        return model, checkpoint.get("scale", 1.0)
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
    skipped = 0
    bar = progress_bar(loader, desc="predict", unit="image", disable=args.no_progress)
    with cpu_memory_cache(device), torch.no_grad(), bar:
        for (x, size, problem), (_, target) in zip(bar, images):
            if problem:
                bar.write(f"{PROG}: skipped {problem}", file=sys.stderr)
                skipped += 1
                continue
            write_prediction(model(x[None].to(device))[0], target, size)
    note = f"; {counted(skipped, 'image')} skipped, unreadable (above)" if skipped else ""
    print(f"{counted(len(images) - skipped, 'prediction')} in {out}{note}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
