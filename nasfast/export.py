"""python -m nasfast.export: TorchScript of the deployed model (encoder + decoder, eval mode, no
auxiliary heads, batch norms folded into the convolutions before them), using the native ops when
they are built. Load it in C++ with torch::jit::load after loading the ops library it names."""
import argparse
import copy
import io
import json
import os
import re
import sys
import zipfile
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import ops
from .checkpoint import is_torchscript, load_checkpoint, model_from_checkpoint
from .cli import UsageError, path_text, positive_int, run
from .designs import genotype_from_option, recorded_classes
from .encoder import IMAGENET_MEAN, IMAGENET_STD
from .files import why_unwritable, write_atomic
from .genotype import Genotype
from .model import create_model

PROG = "python -m nasfast.export"
NUM_CLASSES_DEFAULT = 21  # PASCAL VOC, as in the paper


def native_ops(scripted: torch.jit.ScriptModule) -> list:
    """The nasfast:: ops a scripted model calls (they need the ops library)."""
    graphs = [scripted.inlined_graph] if hasattr(scripted, "inlined_graph") else [scripted.graph]
    return sorted({m for g in graphs for m in re.findall(r"nasfast::\w+", str(g))})


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Folds, in place, each batch norm into the convolution before it (eval mode): a BatchNorm2d
    that follows a Conv2d in a Sequential into that convolution (6-8% of a 512x512 pass on the
    CPU), a separable block's into its pointwise weights (SeparableConvBNReLU.folded). torch.jit.freeze
    would fold them too, but it turns the weights into constants, and the export could no longer
    move between devices."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, ops.SeparableConvBNReLU) and child.bn.running_mean is not None:
                setattr(module, name, child.folded())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return model


def script_for_deployment(model: nn.Module) -> torch.jit.ScriptModule:
    """What the export writes: a scripted copy of model in eval mode, batch norms folded."""
    return torch.jit.script(fold_batch_norms(copy.deepcopy(model).eval()))


def model_info(genotype: Genotype, num_classes: int) -> dict:
    """What a deployment needs to feed any exported model. The model does not normalise: its input
    is RGB / 255, then (x - mean) / std per channel."""
    return {"genotype": genotype.to_list(), "num_classes": num_classes, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)}


def checkpoint_info(checkpoint: dict, path: str) -> dict:
    """model_info, and what a trained model adds: its classes' names and the scale of its images."""
    return {**model_info(Genotype.parse(checkpoint["genotype"]), checkpoint["num_classes"]),
            "class_names": checkpoint.get("class_names"), "scale": checkpoint.get("scale", 1.0),
            "checkpoint": os.path.abspath(path)}


def export(model: nn.Module, path: str, about: Optional[dict] = None, torch_1_10: bool = False) -> dict:
    """Writes the TorchScript of model to path, with nasfast.json: the native ops it needs and `about`;
    with torch_1_10, in the form that torch 1.10 reads too."""
    scripted = script_for_deployment(model)
    needs = native_ops(scripted)
    info = {"native_ops": needs, "ops_library": ops.library_path() if needs else None, **(about or {})}
    buffer = io.BytesIO()  # a failing file writer would abort the process (a full disk)
    torch.jit.save(scripted, buffer, _extra_files={"nasfast.json": json.dumps(info)})
    archive = for_torch_1_10(buffer.getvalue()) if torch_1_10 else buffer.getvalue()
    try:
        write_atomic(path, archive)
    except OSError as error:
        raise UsageError(f"--out {path} cannot be written ({error.strerror})") from None
    return info


RAISE_CLASS = re.compile(r', "builtins\.\w+"\)')  # the exception class that torch 2 adds to each raise


def for_torch_1_10(archive: bytes) -> bytes:
    """A TorchScript archive as torch 1.10 (a Jetson TX2's newest) reads it too: without the debug
    information that torch 2 writes beside the code (1.10 aborts the process reading it), and each
    `raise` in 1.10's form, the message alone (1.10 refuses the exception class)."""
    rewritten = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(rewritten, "w") as target:
        for item in source.infolist():
            if item.filename.endswith(".debug_pkl"):
                continue
            data = source.read(item)
            if "/code/" in item.filename and item.filename.endswith(".py"):
                data = RAISE_CLASS.sub(")", data.decode()).encode()
            target.writestr(item, data)
    return rewritten.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split(":", 1)[1].strip())
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=path_text,
                        help="a checkpoint of python -m nasfast.train (it holds the classes "
                             "and weights)")
    source.add_argument("--genotype", "--arch", dest="genotype",
                        help="arch0|arch1|arch2, the genotype's JSON, a file holding it, a checkpoint's or export's "
                             "design, or a search's RUN_DIR (its best design), with random weights")
    parser.add_argument("--num-classes", type=positive_int,
                        help=f"with --genotype [those of the search, checkpoint or export it names; else "
                             f"{NUM_CLASSES_DEFAULT}, PASCAL VOC as in the paper; CamVid has 11]")
    parser.add_argument("--pretrained", action="store_true", help="with --genotype: ImageNet encoder weights")
    parser.add_argument("--reference-ops", action="store_true", help="do not use the native ops")
    parser.add_argument("--for-torch-1.10", dest="torch_1_10", action="store_true",
                        help="a file that torch 1.10 loads too (JetPack 4.6 on a Jetson TX2), without the native ops "
                             "(their library builds against torch 2.4 or newer) or the debug information that "
                             "locates errors in the model's code")
    parser.add_argument("--out", required=True, type=path_text,
                        help="the TorchScript file to write (model.pt); an earlier export there is replaced, any "
                             "other file refused")
    return parser


def check_options(args) -> None:
    """Refuses what does not apply with --checkpoint, and an --out that cannot be written."""
    if args.checkpoint:
        ignored = [flag for flag, given in (("--num-classes", args.num_classes is not None),
                                            ("--pretrained", args.pretrained)) if given]
        if ignored:
            verb = "applies" if len(ignored) == 1 else "apply"
            raise UsageError(f"{' and '.join(ignored)} {verb} only with --genotype: the checkpoint sets the "
                             "model's classes and weights")
    if os.path.isdir(args.out):
        example = os.path.join(args.out, "model.pt")
        raise UsageError(f"--out {args.out} is a directory: give a file name, e.g. {example}")
    if os.path.exists(args.out) and not os.path.isfile(args.out):  # replaced, it would be gone for good
        raise UsageError(f"--out {args.out} is not a regular file (a device or a pipe, say): give a file name")
    if os.path.isfile(args.out) and not is_torchscript(args.out):
        raise UsageError(f"--out {args.out} exists and is not an earlier export (a checkpoint?): choose another file")
    unwritable = why_unwritable(os.path.dirname(os.path.abspath(args.out)))
    if unwritable:
        raise UsageError(f"--out {args.out}: {unwritable}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args)
    fused = False if args.reference_ops or args.torch_1_10 else None
    if args.checkpoint:
        checkpoint = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(checkpoint, fused=fused, source=args.checkpoint)
        about = checkpoint_info(checkpoint, args.checkpoint)
    else:
        genotype = genotype_from_option(args.genotype)
        num_classes = args.num_classes or recorded_classes(args.genotype) or NUM_CLASSES_DEFAULT
        model = create_model(genotype, num_classes, pretrained=args.pretrained, fused=fused)
        about = model_info(genotype, num_classes)
    replaced = os.path.exists(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    info = export(model, args.out, about, args.torch_1_10)
    print(f"wrote {args.out}" + (" (replaced the file that was there)" if replaced else ""))
    if not args.checkpoint:
        encoder = "an ImageNet encoder" if args.pretrained else "a random encoder"
        print(f"untrained: a random decoder and {encoder}, for timing and trying a deployment; a trained model "
              f"is exported with --checkpoint DIR/best.pt (python -m nasfast.train --out DIR)")
    if info["native_ops"]:
        print(f"needs the nasfast ops library ({', '.join(info['native_ops'])}): {info['ops_library']}")
    else:
        print("needs no native ops")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
