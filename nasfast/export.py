"""python -m nasfast.export: TorchScript of the deployed model (encoder + decoder, eval mode, no
auxiliary heads), using the native ops when they are built. Load it in C++ with torch::jit::load
after loading the ops library it names."""
import argparse
import json
import re
import sys

import torch

from . import ops
from .checkpoint import load_checkpoint, model_from_checkpoint
from .model import create_model


def native_ops(scripted: torch.jit.ScriptModule) -> list:
    """The nasfast:: ops a scripted model calls (they need the ops library)."""
    graphs = [scripted.inlined_graph] if hasattr(scripted, "inlined_graph") else [scripted.graph]
    return sorted({m for g in graphs for m in re.findall(r"nasfast::\w+", str(g))})


def export(model: torch.nn.Module, path: str) -> dict:
    scripted = torch.jit.script(model.eval())
    needs = native_ops(scripted)
    info = {"native_ops": needs, "ops_library": ops.library_path() if needs else None}
    scripted.save(path, _extra_files={"nasfast.json": json.dumps(info)})
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasfast.export", description=__doc__.split(":", 1)[1].strip())
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint of python -m nasfast.train")
    source.add_argument("--arch", help="a genotype (zoo name or JSON), with random weights")
    parser.add_argument("--num-classes", type=int, default=21, help="with --arch [21]")
    parser.add_argument("--pretrained", action="store_true", help="with --arch: ImageNet encoder weights")
    parser.add_argument("--reference-ops", action="store_true", help="do not use the native ops")
    parser.add_argument("--out", required=True, help="the TorchScript file to write (model.pt)")
    args = parser.parse_args(argv)
    fused = False if args.reference_ops else None
    if args.checkpoint:
        model = model_from_checkpoint(load_checkpoint(args.checkpoint), fused=fused)
    else:
        model = create_model(args.arch, args.num_classes, pretrained=args.pretrained, fused=fused)
    info = export(model, args.out)
    print(f"wrote {args.out}")
    if info["native_ops"]:
        print(f"needs the nasfast ops library ({', '.join(info['native_ops'])}): {info['ops_library']}")
    else:
        print("needs no native ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
