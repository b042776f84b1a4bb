"""One training step of a design as python -m nasfast.train runs it (encoder, decoder with its
auxiliary cells, the losses, SGD for the encoder and Adam for the decoder), timed in variants, to
see how a device trains fastest. Ratios are to the first variant, the way training runs now.

    python bench/train_step.py --device cuda --genotype arch0 --batch 16 --crop 360
    python bench/train_step.py --device cuda --profile   # the float32 step: its ops, and how busy the device is

Variants: float32 (as training runs), channels-last (model and images), bfloat16 (autocast around
the forward pass and the losses), compile (torch.compile of the forward pass; its compilation is
part of the warm-up, not of the times). Each has its own model, from the same random weights; a
step's time is the mean over a round of --steps steps, the median of --rounds rounds. As in
training, each step reads the loss of the one before it before it is queued (the check that the
loss stays finite), on a GPU cuDNN picks its algorithms by timing them (cudnn.benchmark), and on
a CPU freed memory is kept for reuse (nasfast.ops.cpu_memory_cache).
"""
import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch

from nasfast import create_model
from nasfast.cli import positive_int, resolve_device, run
from nasfast.designs import genotype_from_option, recorded_classes
from nasfast.ops import cpu_memory_cache
from nasfast.steps import LateLossCheck, descend, segmentation_loss
from nasfast.trainer import TrainConfig, make_optimizers
from timing import device_note

PROG = Path(__file__).name
VARIANTS = ("float32", "channels-last", "bfloat16", "compile")


def training_step(variant: str, genotype, num_classes: int, batch: int, crop: int,
                  device) -> Callable[[], torch.Tensor]:
    """One step of `variant` on a model of its own (random weights, seed 0) and a random batch."""
    torch.manual_seed(0)
    model = create_model(genotype, num_classes, aux="cell").to(device).train()
    optimizers = make_optimizers(model, TrainConfig())
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch, crop, crop), generator=g).to(device)
    if variant == "channels-last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model.forward_with_aux) if variant == "compile" else model.forward_with_aux

    def step() -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16) if variant == "bfloat16" else contextlib.nullcontext():
            logits, aux = forward(images)
            loss = segmentation_loss(logits, aux, labels, 255, TrainConfig().aux_weights[0])
        descend(loss, *optimizers)
        return loss.detach()
    return step


def run_steps(step: Callable[[], torch.Tensor], count: int) -> None:
    """`count` steps as training runs them: each reads the previous step's loss first (LateLossCheck)."""
    check = LateLossCheck(0)
    for i in range(count):
        check()
        check.defer(step(), i)
    check()


def step_times(step: Callable[[], torch.Tensor], steps: int, rounds: int, warmup: int) -> List[float]:
    """Milliseconds per step of each round."""
    run_steps(step, warmup)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run_steps(step, steps)  # its last loss read: the device is done
        times.append((time.perf_counter() - start) * 1000 / steps)
    return times


def profile_step(step: Callable[[], torch.Tensor], device, steps: int) -> None:
    """The step's ops and kernels by self time (torch.profiler), and on a GPU the share of the
    steps' time in which a kernel ran: low, the step waits for the CPU to queue its work."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    run_steps(step, 1)  # unprofiled; reading its loss waits for the device
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as profiler:
        start = time.perf_counter()
        run_steps(step, steps)
        wall_us = (time.perf_counter() - start) * 1e6
    events = profiler.key_averages()
    print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=15))
    if cuda:
        kernels_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"kernels ran {kernels_us / steps / 1000:.1f} of the {wall_us / steps / 1000:.1f} ms of a step "
              f"({100 * kernels_us / wall_us:.0f}%; the profiler's own cost included)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto [cpu]")
    parser.add_argument("--genotype", "--arch", dest="genotype", default="arch0",
                        help="what python -m nasfast.train --genotype takes [arch0]")
    parser.add_argument("--num-classes", type=positive_int,
                        help="output classes [those recorded with what --genotype names, else 11, CamVid's]")
    parser.add_argument("--batch", "--batch-size", dest="batch", type=positive_int, default=16,
                        help="images a step [16, the trainer's default]")
    parser.add_argument("--crop", "--crop-size", dest="crop", type=positive_int, default=360,
                        help="square crop side [360, the trainer's default]")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which to time, the first as the baseline [all]")
    parser.add_argument("--steps", type=positive_int, default=5, help="steps a round [5]")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds, the median shown [3]")
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed steps first [3]")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (torch.set_num_threads) [torch's choice]")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: the first variant's ops and kernels over --steps steps")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    genotype = genotype_from_option(args.genotype)
    args.num_classes = args.num_classes or recorded_classes(args.genotype) or 11
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as python -m nasfast.train sets it
    print(f"device: {device_note(device)}; torch {torch.__version__}; {args.genotype}, batch {args.batch}, "
          f"{args.crop}x{args.crop} crops, {args.num_classes} classes")
    if args.profile:
        profile_step(training_step(args.variants[0], genotype, args.num_classes, args.batch, args.crop, device),
                     device, args.steps)
        return 0
    print(f"{'variant':<16} {'ms/step':>9} {'ratio':>7} {'spread':>7}")
    baseline = None  # the first variant's ms; no ratios where it failed
    for index, variant in enumerate(args.variants):
        try:
            step = training_step(variant, genotype, args.num_classes, args.batch, args.crop, device)
            with cpu_memory_cache(device):  # as python -m nasfast.train runs its epochs
                times = step_times(step, args.steps, args.rounds, args.warmup)
        except Exception as error:  # a variant this device or torch cannot run: the others still count
            print(f"{variant:<16} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            continue
        ms = statistics.median(times)
        baseline = ms if index == 0 else baseline
        ratio = f"{baseline / ms:>6.2f}x" if baseline else f"{'-':>7}"
        print(f"{variant:<16} {ms:>9.1f} {ratio} {100 * (max(times) - min(times)) / ms:>6.0f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
