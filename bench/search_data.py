"""A search candidate's data: the time to read one stage-2 epoch and one meta-validation pass,
with every image decoded each time (--image-cache-gb 0) against decoded once and kept (the
default), for a few candidates in a row, at a preset's sizes.

    python bench/search_data.py                     # CamVid, fast preset, 3 candidates
    python bench/search_data.py --preset paper --candidates 2

The first candidate with kept images pays the decoding; the later ones show the steady state.
One untimed candidate reads the files first, so that no row pays the disk's cold page cache.
The stage-1 cache is built from 8 images only: it is not what is timed.
"""
import argparse
import sys
import tempfile
import time

import torch

from nasfast.cli import path_text, positive_int, run as run_tool
from nasfast.data.datasets import DATASETS
from nasfast.search.config import PRESETS, preset
from nasfast.search.context import build_context

PROG = "bench/search_data.py"


def candidate_seconds(ctx, seed: int) -> float:
    started = time.perf_counter()
    for _ in ctx.stage2_batches(seed):
        pass
    for _ in ctx.val_batches():
        pass
    return time.perf_counter() - started


def run(args, image_cache_gb: float):
    config = preset(args.preset)
    config.dataset, config.stage1_images, config.image_cache_gb = args.dataset, 8, image_cache_gb
    with tempfile.TemporaryDirectory() as run_dir:
        ctx = build_context(config, run_dir, data_root=args.data_root, device="cpu")
        if not image_cache_gb:  # the first run: the files into the page cache (nothing kept by nasfast)
            candidate_seconds(ctx, args.candidates)
        times = [candidate_seconds(ctx, seed) for seed in range(args.candidates)]
        kept = ctx.stage2_batches(0).dataset.dataset.kept_bytes
    return times, kept, config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="camvid", choices=sorted(DATASETS), help="[camvid]")
    parser.add_argument("--data-root", type=path_text,
                        help="the dataset's directory [$NASFAST_DATA/<dataset>, else ~/.cache/nasfast/<dataset>]")
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS), help="[fast]")
    parser.add_argument("--candidates", type=positive_int, default=3, help="candidates in a row [3]")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads [torch's choice]")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    read, _, config = run(args, 0.0)
    kept, kept_bytes, _ = run(args, preset(args.preset).image_cache_gb)
    print(f"{args.dataset}, {args.preset} preset: stage 2 of {config.stage2_images or 'all'} images in "
          f"{config.crop_size}-pixel crops (batch {config.stage2.batch_size}), meta-val of "
          f"{config.val_images or 'all'} images, scale {config.scale}; {kept_bytes / 1e6:.0f} MB kept")
    print(f"{'candidate':>9} {'decoded each time (s)':>22} {'kept (s)':>9} {'ratio':>6}")
    for i, (a, b) in enumerate(zip(read, kept)):
        print(f"{i + 1:>9} {a:>22.2f} {b:>9.2f} {a / b:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, PROG))
