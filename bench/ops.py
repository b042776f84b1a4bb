"""Native ops against their pure-PyTorch references at the decoder's real shapes: forward and
forward+backward, agreement checked before timing, ratios printed.

    python bench/ops.py [--device cpu|cuda] [--quick]
"""
import argparse
import statistics
import sys
import time

import torch

import nasfast.ops as ops


def timeit(fn, device, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def upsample_add_cases(quick: bool):
    batches, channels = ((8,), (48,)) if quick else ((8, 64), (48, 64))
    for n in batches:
        for c in channels:
            for high, low in ((32, 16), (64, 32), (128, 64), (128, 16)):
                yield n, c, high, low


def bench_upsample_add(device, repeats, quick):
    print(f"{'upsample_add N,C,high<-low':<30} {'ref fwd':>8} {'fused fwd':>9} {'ratio':>6} "
          f"{'ref f+b':>8} {'fused f+b':>9} {'ratio':>6}   (ms, median)")
    for n, c, hs, ls in upsample_add_cases(quick):
        high = torch.randn(n, c, hs, hs, device=device)
        low = torch.randn(n, c, ls, ls, device=device)
        fused, reference = torch.ops.nasfast.upsample_add, ops.upsample_add_reference
        torch.testing.assert_close(fused(high, low), reference(high, low))
        row = []
        for f in (reference, fused):
            row.append(timeit(lambda: f(high, low), device, repeats))
        h, l = high.clone().requires_grad_(), low.clone().requires_grad_()
        grad = torch.randn_like(high)
        for f in (reference, fused):
            row.append(timeit(lambda: f(h, l).backward(grad), device, repeats))
        print(f"{f'{n},{c},{hs}<-{ls}':<30} {row[0]:>8.3f} {row[1]:>9.3f} {row[0] / row[1]:>5.2f}x "
              f"{row[2]:>8.3f} {row[3]:>9.3f} {row[2] / row[3]:>5.2f}x", flush=True)


def bench_reward(device, repeats, quick):
    """21-class logits at stride 4 of a 512x512 label map, as the search scores a candidate."""
    print(f"\n{'reward N x 21 x 128^2 -> 512^2':<30} {'reference':>9} {'fused':>9} {'ratio':>6}   (ms, median)")
    for n in ((2,) if quick else (2, 8)):
        logits = torch.randn(n, 21, 128, 128, device=device)
        target = torch.randint(0, 21, (n, 512, 512), device=device)
        target[:, :16] = 255
        matrices = [torch.zeros(21, 21, dtype=torch.long, device=device) for _ in range(2)]
        functions = (ops.confusion_matrix_update_reference, torch.ops.nasfast.confusion_matrix_update_)
        for f, m in zip(functions, matrices):
            f(m, logits, target, 255)
        assert (matrices[0] - matrices[1]).abs().sum() <= 4  # float32 near-ties may flip
        times = [timeit(lambda: f(m, logits, target, 255), device, repeats) for f, m in zip(functions, matrices)]
        print(f"{f'N={n}':<30} {times[0]:>9.2f} {times[1]:>9.2f} {times[0] / times[1]:>5.2f}x", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    args = parser.parse_args(argv)
    if not ops.available():
        print("the nasfast ops library is not built: nothing to compare", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    print(f"device: {args.device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    bench_upsample_add(device, 5 if args.quick else 30, args.quick)
    bench_reward(device, 3 if args.quick else 10, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
