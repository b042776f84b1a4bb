"""Native ops against their pure-PyTorch references at the decoder's real shapes.

Each case checks agreement with the reference first, then times both in one process, the two
interleaved repetition by repetition (so that a load spike on a shared machine hits both), and
prints median times (ms), the ratio reference / fused (> 1: fused is faster) and the spread
(interquartile range over median, in %) of the fused time.

    python bench/ops.py [--device cpu|cuda|cuda:N] [--quick] [--threads N] [--only sep|upsample|reward|loss]
    python bench/ops.py --quick --only reward        # a check in a few seconds
    python bench/ops.py --device cuda --profile       # where a separable training step's and the reward's time goes

On the CPU, both sides run inside nasfast.ops.cpu_memory_cache(), as the search and training run
them: torch's own allocator (glibc's malloc) hands blocks of 32 MiB and more back to the system
when they are freed and faults their pages in again at the next use, which costs more than the
kernels themselves at the larger shapes (seen here: a 1 ms convolution taking 8 ms) and penalises
whichever side allocates more. --system-malloc times them with torch's own allocator instead.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

import nasfast.ops as ops
from nasfast.cli import positive_int, resolve_device, run
from nasfast.ops import SeparableConvBNReLU, cpu_memory_cache
from nasfast.ops.memory import default_capacity
from nasfast.ops.separable import separable_conv_reference
from timing import synchronizer

SEPARABLE_OPS = [(3, 1, "sep3x3"), (5, 1, "sep5x5"), (3, 3, "sep3x3_d3"), (5, 6, "sep5x5_d6")]
# (batch, channels, map side): batch 8 and 64, decoder widths 48 (search) and 64 (final), 32..128 px
SEPARABLE_SHAPES = [(8, 48, 32), (8, 48, 64), (8, 48, 128), (8, 64, 64), (8, 64, 128), (64, 48, 32), (64, 64, 32),
                    (64, 48, 64)]
SEPARABLE_SHAPES_QUICK = [(8, 48, 64), (64, 48, 32)]
UPSAMPLE_SIZES = [(32, 16), (64, 32), (128, 64), (128, 32), (60, 23)]  # (high, low) sides
REWARD_BATCHES = (2, 8)
# Labels and predictions drawn pixel by pixel (the worst case for counting them: neighbours differ), or
# in regions of 16 x 16 pixels, as segmentation maps come, with logits that mostly agree (a trained model's)
REWARD_LABELS = ("random", "regions")
# (batch, logits side, labels side): CamVid's 11 classes in the search's stage 1, presets tiny (labels
# 90x120), fast (270x360, logits at stride 4 or 8) and paper (360x480)
LOSS_SHAPES = [(8, (23, 30), (90, 120)), (64, (34, 45), (270, 360)), (64, (68, 90), (270, 360)),
               (64, (90, 120), (360, 480))]
PROG = Path(__file__).name


def interleaved(functions: Sequence[Callable[[], object]], device: torch.device, repeats: int) -> List[List[float]]:
    """Milliseconds of each function, run alternately, after a warm-up."""
    sync = synchronizer(device)
    for f in functions:
        for _ in range(2):
            f()
    sync()
    times: List[List[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for f, t in zip(functions, times):
            start = time.perf_counter()
            f()
            sync()
            t.append((time.perf_counter() - start) * 1000)
    return times


def spread(times: List[float]) -> float:
    q = statistics.quantiles(times, n=4)
    return 100 * (q[2] - q[0]) / statistics.median(times)


def row(name: str, reference: List[float], fused: List[float]) -> str:
    r, f = statistics.median(reference), statistics.median(fused)
    return f"{name:<34} {r:>9.3f} {f:>9.3f} {r / f:>6.2f}x {spread(fused):>6.0f}%"


def header(title: str) -> None:
    print(f"\n{title:<34} {'reference':>9} {'fused':>9} {'ratio':>7} {'spread':>7}   (ms, median)", flush=True)


def check(actual, expected, what: str, rtol=1e-4, atol=1e-4) -> None:
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as error:
        raise SystemExit(f"{what}: fused and reference disagree, not timing it\n{error}")


def bench_separable(device, repeats, quick):
    shapes = SEPARABLE_SHAPES_QUICK if quick else SEPARABLE_SHAPES
    kinds = SEPARABLE_OPS[::3] if quick else SEPARABLE_OPS
    for mode in ("forward (training op)", "forward+backward", "eval block (BN folded, ReLU)"):
        header(f"sep_conv {mode}")
        for n, c, side in shapes:
            for k, d, name in kinds:
                case = f"{name} N={n} C={c} {side}x{side}"
                print(row(case, *time_separable(mode, n, c, side, k, d, device, repeats)), flush=True)


def separable_inputs(n, c, side, k, device):
    """A case's input, depthwise and pointwise weights, and the generator that drew them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, side, side, generator=g).to(device)
    dw = torch.randn(c, 1, k, k, generator=g).to(device)
    pw = (torch.randn(c, c, 1, 1, generator=g) / c ** 0.5).to(device)
    return x, dw, pw, g


def time_separable(mode, n, c, side, k, d, device, repeats):
    x, dw, pw, g = separable_inputs(n, c, side, k, device)
    if mode.startswith("eval"):
        fused = SeparableConvBNReLU(c, k, d, fused=True).to(device).eval()
        with torch.no_grad():
            fused.bn.running_mean.normal_(generator=None)
            fused.bn.running_var.uniform_(0.5, 1.5)
        reference = SeparableConvBNReLU(c, k, d, fused=False).to(device).eval()
        reference.load_state_dict(fused.state_dict())
        folded = fused.folded()  # its batch norm folded once, as the export runs it
        with torch.no_grad():
            check(folded(x), reference(x), f"eval block {k}x{k} d{d}")
            return interleaved([lambda: reference(x), lambda: folded(x)], device, repeats)
    if mode.startswith("forward ("):
        fused_op = lambda: torch.ops.nasfast.sep_conv(x, dw, pw, d)  # noqa: E731
        reference_op = lambda: separable_conv_reference(x, dw, pw, d)  # noqa: E731
        check(fused_op(), reference_op(), f"sep_conv {k}x{k} d{d}")
        with torch.no_grad():
            return interleaved([reference_op, fused_op], device, repeats)
    return interleaved(forward_backward_steps(x, dw, pw, d, g), device, max(3, repeats // 2))


def forward_backward_steps(x, dw, pw, d, g) -> List[Callable[[], None]]:
    """A training step's forward and backward of the reference, then of the fused op, each
    setting the gradients of (x, dw, pw); checked to agree."""
    fused_op = lambda a, b, p: torch.ops.nasfast.sep_conv(a, b, p, d)  # noqa: E731
    reference_op = lambda a, b, p: separable_conv_reference(a, b, p, d)  # noqa: E731
    leaves = [t.clone().requires_grad_() for t in (x, dw, pw)]
    grad = torch.randn(x.shape, generator=g).to(x.device)

    def forward_backward(op):
        def run():
            for t in leaves:
                t.grad = None
            op(*leaves).backward(grad)
        return run
    steps = [forward_backward(reference_op), forward_backward(fused_op)]
    check_gradients(steps, leaves, f"sep_conv {dw.size(2)}x{dw.size(2)} d{d}", atol=1e-2)
    return steps


def profile_ops(device) -> None:
    """Where the time goes, op by op and kernel by kernel (torch.profiler): a separable training
    step at the decoder's largest shape, reference and fused, then the fused reward."""
    n, c, side = 8, 64, 128
    for k, d, name in SEPARABLE_OPS[:2]:
        x, dw, pw, g = separable_inputs(n, c, side, k, device)
        for side_name, step in zip(("reference", "fused"), forward_backward_steps(x, dw, pw, d, g)):
            profiled(f"{name} N={n} C={c} {side}x{side} forward+backward, {side_name}", step, device)
    for labels in REWARD_LABELS:
        matrix, logits, target = reward_inputs(8, labels, device)
        profiled(f"reward N=8 {labels} 21x128^2->512^2, fused", lambda: torch.ops.nasfast.confusion_matrix_update_(
            matrix, logits, target, 255), device)


def profiled(title: str, step: Callable[[], object], device) -> None:
    """Prints the ops and kernels of 10 calls of `step` (after one unprofiled call), by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = synchronizer(device)
    step()
    sync()
    with profile(activities=activities) as profiler:
        for _ in range(10):
            step()
        sync()
    print(f"\n{title}, 10 steps", flush=True)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=12), flush=True)


def bench_upsample_add(device, repeats, quick):
    for backward in (False, True):
        header("upsample_add " + ("forward+backward" if backward else "forward"))
        for n in ((8,) if quick else (8, 64)):
            for c in ((48,) if quick else (48, 64)):
                for high, low in (UPSAMPLE_SIZES[1:2] + UPSAMPLE_SIZES[-1:] if quick else UPSAMPLE_SIZES):
                    print(row(f"N={n} C={c} {high}<-{low}", *time_upsample_add(n, c, high, low, backward, device,
                                                                              repeats)), flush=True)


def time_upsample_add(n, c, high_side, low_side, backward, device, repeats):
    g = torch.Generator().manual_seed(0)
    high = torch.randn(n, c, high_side, high_side, generator=g).to(device)
    low = torch.randn(n, c, low_side, low_side, generator=g).to(device)
    fused, reference = torch.ops.nasfast.upsample_add, ops.upsample_add_reference
    check(fused(high, low), reference(high, low), "upsample_add")
    if not backward:
        return interleaved([lambda: reference(high, low), lambda: fused(high, low)], device, repeats)
    h, l = high.clone().requires_grad_(), low.clone().requires_grad_()
    grad = torch.randn_like(high)

    def run(f):
        def step():
            h.grad = l.grad = None
            f(h, l).backward(grad)
        return step
    steps = [run(reference), run(fused)]
    check_gradients(steps, [h, l], "upsample_add")
    return interleaved(steps, device, repeats)


def check_gradients(steps: Sequence[Callable[[], None]], leaves: Sequence[torch.Tensor], what: str,
                    atol: float = 1e-3) -> None:
    """Runs the reference's step and the fused one, each setting the gradients of `leaves`, and
    checks that they agree."""
    grads = []
    for step in steps:
        step()
        grads.append([t.grad.clone() for t in leaves])
    for reference, fused in zip(*grads):
        check(fused, reference, f"{what} gradients", rtol=1e-3, atol=atol)


def bench_reward(device, repeats, quick):
    """21-class logits at stride 4 of a 512x512 label map, as the search scores a candidate."""
    header("reward: N x 21 x 128^2 -> 512^2")
    batches = REWARD_BATCHES[:1] if quick else REWARD_BATCHES
    for n, labels in ((n, labels) for n in batches for labels in REWARD_LABELS):
        matrix, logits, target = reward_inputs(n, labels, device)
        matrices = [matrix, torch.zeros_like(matrix)]
        functions = (ops.confusion_matrix_update_reference, torch.ops.nasfast.confusion_matrix_update_)
        for f, m in zip(functions, matrices):
            f(m, logits, target, 255)
        if (matrices[0] - matrices[1]).abs().sum() > 1e-5 * target.numel():  # float32 near-ties may flip
            raise SystemExit("reward: fused and reference confusion matrices disagree, not timing it")
        times = interleaved([lambda f=f, m=m: f(m, logits, target, 255) for f, m in zip(functions, matrices)],
                            device, repeats)
        print(row(f"N={n} {labels}", *times), flush=True)
        if device.type == "cuda":
            print(read_once(logits, target, statistics.median(times[1]), device, repeats), flush=True)


def reward_inputs(n: int, labels: str, device):
    """A zero 21 x 21 matrix, N x 21 x 128^2 logits and N x 512^2 labels (REWARD_LABELS), 16 rows ignored."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 21, 128, 128, generator=g)
    if labels == "random":
        target = torch.randint(0, 21, (n, 512, 512), generator=g)
    else:
        target = torch.randint(0, 21, (n, 32, 32), generator=g).repeat_interleave(16, 1).repeat_interleave(16, 2)
        logits += 4 * F.one_hot(target[:, ::4, ::4], 21).permute(0, 3, 1, 2)
    target[:, :16] = 255
    return torch.zeros(21, 21, dtype=torch.long, device=device), logits.to(device), target.to(device)


def bench_loss(device, repeats, quick):
    """The cross-entropy of upsampled logits, as a candidate's losses (the native op is the CPU's)."""
    if device.type != "cpu":  # there the op is ATen's loss itself, with its labels checked
        print("\nupsample_cross_entropy: a native kernel on the CPU only; nothing to compare here", flush=True)
        return
    for backward in (False, True):
        header("upsample_cross_entropy " + ("forward+backward" if backward else "forward"))
        for n, low, size in (LOSS_SHAPES[1:2] if quick else LOSS_SHAPES):
            g = torch.Generator().manual_seed(0)
            logits = torch.randn(n, 11, *low, generator=g).to(device).requires_grad_(backward)
            target = torch.randint(0, 11, (n, *size), generator=g).to(device)
            target[:, :16] = 255
            functions = (ops.upsample_cross_entropy_reference, torch.ops.nasfast.upsample_cross_entropy)
            check(functions[1](logits, target, 255), functions[0](logits, target, 255), "upsample_cross_entropy")

            def step(f):
                def loss_step():
                    logits.grad = None
                    loss = f(logits, target, 255)
                    if backward:
                        loss.backward()
                return loss_step
            steps = [step(f) for f in functions]
            if backward:
                check_gradients(steps, [logits], "upsample_cross_entropy")
            case = f"N={n} {low[0]}x{low[1]}->{size[0]}x{size[1]}"
            print(row(case, *interleaved(steps, device, repeats)), flush=True)


def read_once(logits, target, fused_ms: float, device, repeats, bandwidth_bytes: int = 2 ** 30) -> str:
    """The floor a streaming reward can reach: its inputs' bytes read once at the device's memory
    bandwidth, measured by summing `bandwidth_bytes` (1 GiB: far beyond a GPU's L2 cache, which
    the inputs fit in). Beside it, a plain sum of the inputs, launched and synchronised as the
    reward is: what the per-call costs leave of that floor."""
    bandwidth = memory_bandwidth(device, bandwidth_bytes, repeats)
    logits_ms, both_ms = (1000 * n / bandwidth for n in (logits.nbytes, logits.nbytes + target.nbytes))
    sums_ms = statistics.median(interleaved([lambda: (logits.sum(), target.sum())], device, repeats)[0])
    return (f"  read once at full bandwidth ({bandwidth / 1e12:.2f} TB/s over {bandwidth_bytes / 2 ** 30:g} GiB): "
            f"logits {logits_ms:.4f} ms, logits+labels {both_ms:.4f} ms; fused / logits {fused_ms / logits_ms:.1f}x, "
            f"fused / both {fused_ms / both_ms:.1f}x; a plain sum of both, one call: {sums_ms:.3f} ms "
            f"(fused / that {fused_ms / sums_ms:.2f}x)")


def memory_bandwidth(device, nbytes: int, repeats: int) -> float:
    """Bytes a second that a sum reads from `nbytes` of float32, the median of `repeats` passes."""
    big = torch.ones(nbytes // 4, device=device)
    return nbytes / (statistics.median(interleaved([big.sum], device, repeats)[0]) / 1000)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where to time the ops: cpu, cuda, cuda:N or auto [cpu]")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads (CPU) [torch's choice]")
    parser.add_argument("--only", choices=["sep", "upsample", "reward", "loss"], help="one family of ops")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: the ops and kernels (torch.profiler) of the separable training "
                             "step, reference and fused, at N=8 C=64 128x128, and of the fused reward")
    parser.add_argument("--system-malloc", action="store_true",
                        help="CPU: time with torch's own allocator instead of keeping freed memory (see above)")
    args = parser.parse_args(argv)
    if args.profile and (args.only or args.quick):
        parser.error("--profile times nothing: --only and --quick do not apply")
    device = resolve_device(args.device)
    if not ops.available():
        print(f"the nasfast ops library is {ops.why_unavailable()}: nothing to compare", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    # The kernels compute in float32; cuDNN's TF32 default (Ampere and newer) would compare
    # rounded-mantissa convolutions against them. Its autotuning is on, as in training (the
    # warm-up calls of `interleaved` pay for it).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    capacity = 0 if args.system_malloc or device.type != "cpu" else default_capacity()
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)}; float32 (no TF32, cudnn.benchmark on)"
    else:
        memory = f"freed memory kept up to {capacity / 2 ** 30:.1f} GB" if capacity else "torch's own allocator"
        name = f"CPU, {torch.get_num_threads()} threads, {memory}; float32"
    print(f"device: {name}; torch {torch.__version__}; ops library {ops.library_path()}")
    with cpu_memory_cache(device, capacity):
        if args.profile:
            profile_ops(device)
        else:
            run_families(args.only, device, args.quick)
    return 0


def run_families(only: Optional[str], device: torch.device, quick: bool) -> None:
    """Times each family of ops (all, or `only` one) against its reference."""
    repeats = 5 if quick else 20
    if only in (None, "sep"):
        bench_separable(device, repeats, quick)
    if only in (None, "upsample"):
        bench_upsample_add(device, repeats, quick)
    if only in (None, "reward"):
        bench_reward(device, 3 if quick else 10, quick)
    if only in (None, "loss"):
        bench_loss(device, 3 if quick else 10, quick)


if __name__ == "__main__":
    sys.exit(run(main, PROG))
