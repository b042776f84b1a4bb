"""Latency of the deployed models (the paper's protocol: eval mode, warm-up, device
synchronisation, 100 timed forward passes, mean ± std; beside it the median, from which the ratios to
eager are taken), for each implementation variant, each checked against eager's logits first.

    python bench/latency.py --device cpu --genotype all --size 512
    python bench/latency.py --device cuda --genotype arch0 --size 512
    python bench/latency.py --device jetson        # on a Jetson only: its GPU, power mode, clocks

--genotype (or its old name --arch) takes what python -m nasfast.train takes (a zoo name, a
genotype's JSON, a file holding it, a training checkpoint's or an export's design, a search's best
design) or `all` (the zoo), with random weights.

What is timed is the deployed model: encoder, decoder, and its logits upsampled to the input's size
(SPEC.md's table gives the decoder's output, 128x128 or 64x64 for 512x512 input). The MAdds count
its convolutions: 2^26 below SPEC.md's table for every design, while the parameters match it
exactly (the authors' MobileNet-v2 keeps a 1x1 convolution that torchvision's layout, ours, lacks).
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Tuple

import torch

import nasfast
import nasfast.ops
from nasfast import count_madds, count_params, create_model
from nasfast.cli import UsageError, at_least_two, positive_float, positive_int, resolve_device, run
from nasfast.export import NUM_CLASSES_DEFAULT, script_for_deployment
from nasfast.designs import genotype_from_option, recorded_classes
from nasfast.files import SEARCH_LOG
from nasfast.genotype import ZOO
from nasfast.search.summary import madds_text
from timing import NOT_A_JETSON, device_note, is_jetson, timed

PROG = Path(__file__).name


def variants(genotype, num_classes, device, with_compile: bool):
    """(name, model) pairs; all share the same weights. The TorchScript one is what
    `python -m nasfast.export` writes."""
    reference = create_model(genotype, num_classes, fused=False).eval().to(device)
    yield "eager", reference
    if nasfast.ops.available():
        fused = create_model(genotype, num_classes, fused=True).eval().to(device)
        fused.load_state_dict(reference.state_dict())
        yield "fused ops", fused
        yield "TorchScript (fused)", script_for_deployment(fused)
    else:
        yield "TorchScript", script_for_deployment(reference)
    if with_compile:
        yield "torch.compile", torch.compile(reference)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu",
                        help="where to time: cpu, cuda, cuda:N, auto (a GPU when there is one) or jetson (a "
                             "Jetson's GPU, with its power mode and clocks in the header) [cpu]")
    parser.add_argument("--genotype", "--arch", dest="genotype", default="all",
                        help="arch0|arch1|arch2|all, a genotype's JSON, a file holding it, a checkpoint's or an "
                             "export's design (model.pt), or a search's RUN_DIR (its best design) [all]")
    parser.add_argument("--size", type=positive_int, default=512, help="square input side [512]")
    parser.add_argument("--num-classes", type=positive_int,
                        help="output classes [those of the search, checkpoint or export --genotype names; else 21, "
                             "PASCAL VOC as in the paper; CamVid has 11]")
    parser.add_argument("--runs", type=at_least_two, default=100, help="timed passes, at least 2 [100]")
    parser.add_argument("--warmup", type=at_least_two, default=10,
                        help="untimed passes before timing, at least 2 (TorchScript optimises the model during its "
                             "first two) [10]")
    parser.add_argument("--max-seconds", type=positive_float, default=60,
                        help="time limit of each variant's timed passes: fewer (at least 2) where --runs would take "
                             "longer, the count shown in its row; the warm-up stops at half of it [60]")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (torch.set_num_threads) [torch's choice]")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    return parser


def short_name(text: str) -> str:
    """What the table's 8-character first column shows: a zoo name, a file's or a search's name cut
    short, or 'custom' for JSON."""
    if text.strip() in ZOO:
        return text.strip()
    path = Path(text.rstrip("/"))
    if path.name == SEARCH_LOG:  # a search's log: the search's name
        path = path.resolve().parent
    return path.stem[:8] if os.path.exists(text) else "custom"


def designs(text: str) -> List[Tuple[str, nasfast.Genotype]]:
    """(name in the table, genotype) of each design to time."""
    if text == "all":
        return [(name, ZOO[name]) for name in sorted(ZOO)]
    return [(short_name(text), genotype_from_option(text))]


def device_and_note(name: str) -> Tuple[torch.device, str]:
    """The device to time on, and what the header says about it."""
    if name == "jetson" and not is_jetson():
        raise UsageError(f"{NOT_A_JETSON}. Use --device cuda or --device cpu here.")
    device = resolve_device("cuda" if name == "jetson" else name)
    return device, device_note(device, jetson=name == "jetson")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # before the header reports the count
    to_time = designs(args.genotype)
    args.num_classes = args.num_classes or recorded_classes(args.genotype) or NUM_CLASSES_DEFAULT
    device, note = device_and_note(args.device)
    with_compile = not args.no_compile

    shown = args.device if args.device == "jetson" else device
    print(f"device: {shown} ({note}); torch {torch.__version__}; input 1x3x{args.size}x{args.size}; "
          f"{args.runs} passes after {args.warmup} warm-up (timed passes: at most {args.max_seconds:g} s a variant); "
          f"ops library: {nasfast.ops.library_path()}")
    print(f"{'arch':<8} {'params':>10} {'MAdds':>7} {'variant':<22} {'ms (mean ± std)':>18} {'median':>7} "
          f"{'vs eager':>8}")
    x = torch.randn(1, 3, args.size, args.size, device=device)
    for name, genotype in to_time:
        probe = create_model(genotype, args.num_classes)
        first = f"{name:<8} {count_params(probe):>10,} {madds_text(count_madds(probe, (3, args.size, args.size))):>7}"
        eager = None  # (its output, its median ms)
        for variant, model in variants(genotype, args.num_classes, device, with_compile):
            try:
                disagreement = differs_from(model, x, eager)
                timing = None if disagreement else timed(model, x, device, args.runs, args.warmup, args.max_seconds)
            except Exception as error:  # e.g. torch.compile without a working compiler
                disagreement = "failed: " + type(error).__name__
            if disagreement:
                print(f"{first} {variant:<22} {disagreement}")
                continue
            if variant == "eager":
                eager = model_output(model, x), timing.median
            ratio = f"{eager[1] / timing.median:>7.2f}x" if eager else f"{'-':>8}"  # none where eager failed
            fewer = f"  ({timing.passes} passes: --max-seconds)" if timing.passes < args.runs else ""
            print(f"{first} {variant:<22} {timing.mean:>9.2f} ± {timing.std:>6.2f} {timing.median:>7.2f} "
                  f"{ratio}{fewer}", flush=True)
    return 0


def model_output(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def differs_from(model, x: torch.Tensor, eager) -> str:
    """Why `model` is not timed: its logits differ from eager's (`eager`: (logits, ms), None
    before eager's row), else ""."""
    if eager is None:
        return ""
    difference = (model_output(model, x) - eager[0]).abs().max().item()
    scale = eager[0].abs().max().item()
    return "" if difference <= 1e-3 * max(scale, 1.0) else f"differs from eager by {difference:.2g}: not timed"


if __name__ == "__main__":
    sys.exit(run(main, PROG))
