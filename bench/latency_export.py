"""Latency of an exported model (python -m nasfast.export) with torch alone, no nasfast: for a
device where nasfast does not install, as a Jetson TX2 (JetPack 4.6: Python 3.6, torch 1.10; export
with --for-torch-1.10). The paper's protocol, as bench/latency.py's: eval mode, warm-up, device
synchronisation, 100 timed passes at batch 1, mean ± std.

    python bench/latency_export.py model.pt --device jetson --size 512
"""
import argparse
import json
import os
import signal
import sys

import torch

from timing import NOT_A_JETSON, device_note, is_jetson, timed

PROG = "latency_export.py"


def at_least(low, kind):
    def parse(text):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError("must be at least {}, got {}".format(low, text))
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a TorchScript file of python -m nasfast.export")
    parser.add_argument("--device", choices=["cpu", "cuda", "jetson"], default="cpu",
                        help="where to time; jetson: a Jetson's GPU, with its power mode and clocks [cpu]")
    parser.add_argument("--size", type=at_least(1, int), default=512, help="square input side [512]")
    parser.add_argument("--runs", type=at_least(2, int), default=100, help="timed passes, at least 2 [100]")
    parser.add_argument("--warmup", type=at_least(2, int), default=10, help="warm-up passes, at least 2 [10]")
    parser.add_argument("--max-seconds", type=at_least(0.001, float), default=60.0,
                        help="stop the timed passes after this long, at least 2 of them [60]")
    parser.add_argument("--threads", type=at_least(1, int), help="CPU threads [torch's default]")
    return parser


def fail(message: str):
    """A problem of the input in one line, exit status 2, as nasfast's tools report them."""
    print("{}: error: {}".format(PROG, message), file=sys.stderr)
    sys.exit(2)


def device_and_note(name: str) -> tuple:
    if name == "jetson" and not is_jetson():
        fail(NOT_A_JETSON)
    if name != "cpu" and not torch.cuda.is_available():
        fail("--device {}: this torch finds no CUDA GPU".format(name))
    device = torch.device("cpu" if name == "cpu" else "cuda")
    return device, device_note(device, jetson=name == "jetson")


def load(path: str):
    """The export and its nasfast.json."""
    if not os.path.isfile(path):
        fail("{}: no such file".format(path))
    extra = {"nasfast.json": ""}
    try:
        model = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as error:  # not TorchScript, an op of a library not loaded, a newer export
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = " (export with --for-torch-1.10 or --reference-ops)" if "nasfast::" in reason else ""
        fail("{}: cannot be loaded: {}{}".format(path, reason, hint))
    return model.eval(), json.loads(extra["nasfast.json"] or "{}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, note = device_and_note(args.device)
    model, info = load(args.model)
    model.to(device)
    print("device: {} ({}); torch {}; input 1x3x{}x{}; {} passes after {} warm-up (at most {:g} s)".format(
        args.device, note, torch.__version__, args.size, args.size, args.runs, args.warmup, args.max_seconds),
        flush=True)  # before the minutes of timing
    x = torch.randn(1, 3, args.size, args.size, device=device)
    timing = timed(model, x, device, args.runs, args.warmup, args.max_seconds)
    fewer = "  ({} passes: --max-seconds)".format(timing.passes) if timing.passes < args.runs else ""
    print("{}: {} classes, native ops {}: {:.2f} ± {:.2f} ms (median {:.2f}){}".format(
        args.model, info.get("num_classes", "?"), ", ".join(info.get("native_ops") or []) or "none", timing.mean,
        timing.std, timing.median, fewer))
    return 0


def run(main) -> int:
    """main(), with Ctrl-C or SIGTERM (a scheduler's, timeout's) said in one line, exit status 130."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return main()
    except KeyboardInterrupt:
        print("\n{}: interrupted".format(PROG), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run(main))
