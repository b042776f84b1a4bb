"""Latency of the deployed models (the paper's protocol: eval mode, warm-up, device
synchronisation, 100 timed forward passes, mean ± std), for each implementation variant.

    python bench/latency.py --device cpu --arch all --size 512
    python bench/latency.py --device cuda --arch arch0 --size 512
    python bench/latency.py --device jetson        # on a Jetson only: its GPU, power mode, clocks
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import torch

import nasfast
import nasfast.ops
from nasfast import count_madds, count_params, create_model
from nasfast.export import script_for_deployment
from nasfast.genotype import ZOO


def is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release")


def jetson_state() -> str:
    """The power mode and whether the clocks are fixed (jetson_clocks), as far as tools tell."""
    def ask(cmd):
        if shutil.which(cmd[0]) is None:
            return f"{cmd[0]} not found"
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"
    return f"power mode: {ask(['nvpmodel', '-q'])}; clocks: {ask(['jetson_clocks', '--show'])}"


def timed(model, x, device, runs: int, warmup: int):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.mean(times), statistics.stdev(times)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "jetson"], default="cpu")
    parser.add_argument("--arch", default="all", help="arch0|arch1|arch2|all or a genotype's JSON [all]")
    parser.add_argument("--size", type=int, default=512, help="square input side [512]")
    parser.add_argument("--num-classes", type=int, default=21, help="[21, as in the paper]")
    parser.add_argument("--runs", type=int, default=100, help="timed passes [100]")
    parser.add_argument("--warmup", type=int, default=10, help="[10]")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args(argv)

    if args.device == "jetson":
        if not is_jetson():
            print("--device jetson: this is not a Jetson (no /etc/nv_tegra_release); nothing measured. "
                  "Use --device cuda or --device cpu here.", file=sys.stderr)
            return 2
        note = jetson_state()
        device = torch.device("cuda")
    elif args.device == "cuda":
        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device available; nothing measured.", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        note = torch.cuda.get_device_name()
    else:
        device = torch.device("cpu")
        note = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if args.threads:
        torch.set_num_threads(args.threads)
    names = sorted(ZOO) if args.arch == "all" else [args.arch]
    with_compile = not args.no_compile and hasattr(torch, "compile")

    print(f"device: {args.device} ({note}); torch {torch.__version__}; input 1x3x{args.size}x{args.size}; "
          f"{args.runs} passes after {args.warmup} warm-up; ops library: {nasfast.ops.library_path()}")
    print(f"{'arch':<8} {'params':>10} {'MAdds':>7} {'variant':<22} {'ms (mean ± std)':>18} {'vs eager':>8}")
    x = torch.randn(1, 3, args.size, args.size, device=device)
    for name in names:
        genotype = nasfast.Genotype.parse(name)
        probe = create_model(genotype, args.num_classes)
        params, madds = count_params(probe), count_madds(probe, (3, args.size, args.size))
        eager_ms = None
        for variant, model in variants(genotype, args.num_classes, device, with_compile):
            try:
                mean, std = timed(model, x, device, args.runs, args.warmup)
            except Exception as error:  # e.g. torch.compile without a working compiler
                print(f"{name:<8} {params:>10,} {madds / 1e9:>6.2f}G {variant:<22} {'failed: ' + type(error).__name__:>18}")
                continue
            eager_ms = eager_ms or mean
            print(f"{name:<8} {params:>10,} {madds / 1e9:>6.2f}G {variant:<22} {mean:>9.2f} ± {std:>6.2f} "
                  f"{eager_ms / mean:>7.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
