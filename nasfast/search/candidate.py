"""Training and scoring one candidate design: stage 1, the gate, stage 2 (SPEC section 5)."""
import math
import time
from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from ..complexity import count_madds, count_params
from ..decoder import Decoder
from ..metrics import metrics_of
from ..model import Segmenter
from ..ops.memory import cpu_memory_cache
from ..progress import progress_bar
from ..steps import LateLossCheck, descend, has_labelled_pixel, segmentation_loss
from .cache import FeatureCache
from .context import SearchContext
from .polyak import Polyak


class CandidateFailed(RuntimeError):
    """A candidate whose reward is undefined: logged as failed, as any error of a candidate is."""


def candidate_seed(search_seed: int, index: int) -> int:
    """Every random choice for candidate `index` derives from this, so a resumed search replays it."""
    return (search_seed * 1_000_003 + index * 7919 + 17) % (2 ** 63)


def _score(forward: Callable[[Tensor], Tensor], batches, ctx: SearchContext) -> float:
    with cpu_memory_cache(ctx.device), torch.no_grad():
        reward = float(metrics_of(forward, batches, ctx.num_classes, ctx.ignore_index, ctx.exclude)["reward"])
    if not math.isfinite(reward):  # no scored pixel: build_context refuses such meta-val data
        raise CandidateFailed(f"reward {reward}: meta-val holds no labelled pixel of a scored class")
    return reward


def batch_bounds(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """[start, end) of the batches of n items; a last batch of one joins the one before, as the
    batch norm after global pooling cannot train on a single image."""
    bounds = [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _cached_batches(cache: FeatureCache, batch_size: int, device, generator=None, labelled: Optional[Tensor] = None):
    """The cache's images in batches (shuffled with a generator); with `labelled` (a flag per image),
    without the batches of images that hold no labelled pixel (see has_labelled_pixel)."""
    order = torch.randperm(len(cache), generator=generator) if generator is not None else torch.arange(len(cache))
    for start, end in batch_bounds(len(cache), batch_size):
        if labelled is not None and not labelled[order[start:end]].any():
            continue
        feats, labels, teacher = cache.batch(order[start:end])
        yield [f.to(device) for f in feats], labels.to(device), None if teacher is None else teacher.to(device)


def _train(batches: Iterable[tuple], loss_of: Callable[..., Tensor], optimizers, polyak: Polyak,
           stage: int, ctx: SearchContext, steps: Optional[int]) -> None:
    """The loop of both stages: a descent step on each batch, then the Polyak average's update;
    with ctx.step_bars, on a progress bar of the `steps` expected."""
    check = LateLossCheck(stage)
    bar = progress_bar(batches, total=steps, desc=f"stage {stage}", unit="step", leave=False, disable=not ctx.step_bars)
    with cpu_memory_cache(ctx.device), bar:  # each phase frees what it kept: the next allocates other sizes
        for step, batch in enumerate(bar):
            check()
            loss = loss_of(*batch)
            check.defer(loss, step)
            descend(loss, *optimizers)
            polyak.update()
    check()


def run_stage1(decoder: Decoder, ctx: SearchContext, generator: torch.Generator) -> float:
    """Trains `decoder` on the cached features, then applies its Polyak average to it (SPEC section 5,
    as the paper and the authors' release do: stage 2 goes on from the average); the reward is the
    average's."""
    cfg = ctx.config.stage1
    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.decoder_lr)
    polyak = Polyak(decoder, cfg.polyak_decay)
    decoder.train()
    batches = (batch for _ in range(cfg.epochs)
               for batch in _cached_batches(ctx.stage1, cfg.batch_size, ctx.device, generator, ctx.stage1_labelled))
    _train(batches, lambda feats, labels, teacher: segmentation_loss(
        *decoder.forward_with_aux(feats), labels, ctx.ignore_index, ctx.config.aux_weight, teacher, cfg.distillation),
        [optimizer], polyak, 1, ctx, cfg.epochs * len(batch_bounds(len(ctx.stage1), cfg.batch_size)))
    polyak.apply()
    batches = ((feats, labels) for feats, labels, _ in
               _cached_batches(ctx.stage1_val, cfg.batch_size, ctx.device))
    return _score(decoder.eval(), batches, ctx)


def run_stage2(decoder: Decoder, ctx: SearchContext, seed: int) -> float:
    cfg = ctx.config.stage2
    model = Segmenter(ctx.make_encoder(), decoder).to(ctx.device).train()
    optimizer_encoder = torch.optim.SGD(model.encoder.parameters(), lr=cfg.encoder_lr, momentum=0.9)
    optimizer_decoder = torch.optim.Adam(model.decoder.parameters(), lr=cfg.decoder_lr)
    polyak = Polyak(model, cfg.polyak_decay)
    batches = ((images.to(ctx.device), labels.to(ctx.device)) for epoch in range(cfg.epochs)
               for images, labels in ctx.stage2_batches(seed + epoch) if has_labelled_pixel(labels, ctx.ignore_index))
    _train(batches, lambda images, labels: segmentation_loss(
        *model.forward_with_aux(images), labels, ctx.ignore_index, ctx.config.aux_weight),
        [optimizer_encoder, optimizer_decoder], polyak, 2, ctx, ctx.stage2_steps and cfg.epochs * ctx.stage2_steps)
    polyak.apply()
    model.eval()
    batches = ((images.to(ctx.device), labels) for images, labels in ctx.val_batches())
    return _score(lambda x: model.decoder(model.encoder(x)), batches, ctx)


def evaluate_candidate(genotype, index: int, ctx: SearchContext, decide: Callable[[float, float], bool],
                       known: Optional[dict] = None) -> dict:
    """Trains and scores one design. `decide(stage1_reward, coin)` is the gate (Gate.decide, or a
    round trip to the process that owns the gate). Returns the fields of its log record (SPEC
    section 6); raises on failure (the caller records it as failed). `known` gets each field as soon
    as it is known, so that a failure in stage 2 still records the design's size, its stage-1
    reward and the gate's decision (which the gate has counted)."""
    start = time.time()
    fields = {} if known is None else known
    cfg = ctx.config
    seed = candidate_seed(cfg.seed, index)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    decoder = Decoder(genotype, in_channels=ctx.in_channels, num_classes=ctx.num_classes,
                      channels=cfg.channels, sep_repeats=cfg.sep_repeats, aux=cfg.aux,
                      in_strides=ctx.in_strides).to(ctx.device)
    feats, _, _ = ctx.stage1.batch(torch.tensor([0]))
    fields.update(params=count_params(decoder) - count_params(decoder.aux),
                  madds=count_madds(decoder, [tuple(f.shape[1:]) for f in feats]))

    stage1_start = time.time()
    stage1_reward = run_stage1(decoder, ctx, generator)
    fields.update(stage1_seconds=round(time.time() - stage1_start, 3))
    coin = torch.rand((), generator=generator).item()
    go = decide(stage1_reward, coin)
    fields.update(stage1_reward=stage1_reward, gate="continue" if go else "stop")
    stage2_start = time.time()
    stage2_reward = run_stage2(decoder, ctx, seed) if go else None
    fields.update(reward=stage2_reward if go else stage1_reward, stage2_reward=stage2_reward,
                  stage2_seconds=round(time.time() - stage2_start, 3) if go else None,
                  seconds=round(time.time() - start, 3))
    return fields
