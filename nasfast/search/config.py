"""Every number of the search protocol (SPEC sections 4-6), with presets.

Defaults are the paper's values (`--preset paper`); "ours" marks the choices the paper leaves open.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from ..cli import (absolute_path, decay, fraction, images_per_batch, non_negative_float, non_negative_int,
                   positive_float, positive_int, probability)
from ..settings import check_low_high, check_settings, option


@dataclass
class StageConfig:
    epochs: int = option(5, "training epochs", positive_int)
    batch_size: int = option(64, "batch size (ours), at least 2", images_per_batch)
    decoder_lr: float = option(3e-3, "Adam learning rate of the decoder", positive_float)
    polyak_decay: float = option(0.9, "decay of the Polyak average of the weights", decay)
    encoder_lr: float = option(0.0, "SGD (momentum 0.9) learning rate of the encoder", non_negative_float)
    distillation: float = option(0.0, "weight of the MSE to the teacher's logits (with --teacher)",
                                 non_negative_float)


# Fixed by the method (SPEC section 5), so not options: stage 1 trains on cached outputs of the
# frozen encoder, and stage 2 has no distillation.
FIXED = ("stage1.encoder_lr", "stage2.distillation")


def _stage1() -> StageConfig:
    return StageConfig(epochs=5, batch_size=64, decoder_lr=3e-3, polyak_decay=0.9, distillation=0.3)


def _stage2() -> StageConfig:
    return StageConfig(epochs=1, batch_size=32, decoder_lr=3e-3, polyak_decay=0.99, encoder_lr=1e-3)


@dataclass
class SearchConfig:
    dataset: str = option("camvid", "dataset name: camvid, voc or folder", choices=("camvid", "voc", "folder"))
    preset: Optional[str] = option(None, "the preset these values started from (None: not recorded)",
                                   choices=("paper", "fast", "tiny"))
    strategy: str = option("ppo", "search strategy: ppo (the LSTM controller) or random",
                           choices=("ppo", "random"))
    seed: int = option(0, "seed of everything random in the search", non_negative_int)
    val_fraction: float = option(0.1, "share of the training split held out as meta-val", fraction)
    stage1_images: int = option(4000, "meta-train images whose encoder outputs are cached (all when fewer), "
                                      "at least 2", images_per_batch)
    val_images: int = option(0, "meta-val images scored (0: all)", non_negative_int)
    stage2_images: int = option(0, "meta-train images of a stage-2 epoch (0: all)", non_negative_int)
    scale: float = option(1.0, "images are resized by this factor first (ours; the rewards count the labels "
                                        "at their own size)", positive_float)
    crop_size: int = option(321, "side of the square stage-2 training crops (ours)", positive_int)
    scale_range: Tuple[float, float] = option((0.5, 2.0), "random scale range of stage-2 augmentation", positive_float,
                                              nargs=2)
    channels: int = option(48, "decoder width during search", positive_int)
    sep_repeats: int = option(1, "repeats of a separable block during search", positive_int)
    aux: Optional[str] = option("cell", "auxiliary heads: cell, classifier or none",
                                choices=("cell", "classifier", "none"))
    aux_weight: float = option(0.15, "weight of each auxiliary loss", non_negative_float)
    stage1: StageConfig = field(default_factory=_stage1)
    stage2: StageConfig = field(default_factory=_stage2)
    gate_p_start: float = option(0.9, "chance that the gate lets a below-mean candidate continue, at first",
                                 probability)
    gate_p_end: float = option(0.1, "... and at the end of the annealing (ours)", probability)
    gate_anneal: int = option(1000, "gate decisions (candidates that finished stage 1) over which that chance "
                                    "goes linearly from start to end (ours)", positive_int)
    ppo_epochs: int = option(4, "PPO passes over each batch of rewards (ours)", positive_int)
    ppo_clip: float = option(0.1, "PPO clipping of the probability ratio", fraction)
    controller_lr: float = option(1e-4, "Adam learning rate of the controller", positive_float)
    baseline_decay: float = option(0.95, "decay of the reward baseline (moving average)", decay)
    entropy_weight: float = option(0.0, "entropy bonus of the controller", non_negative_float)
    teacher: Optional[str] = option(None, "TorchScript file of a teacher network for distillation (off when not given)",
                                    absolute_path)  # a resume from another directory finds it
    workers: int = option(0, "DataLoader worker processes", non_negative_int)
    image_cache_gb: float = option(1.0, "GB of decoded images kept in memory, when workers is 0 (ours)",
                                   non_negative_float)
    memory_limit_gb: float = option(2.0, "a larger stage-1 cache is memory-mapped from RUN_DIR/cache",
                                    non_negative_float)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SearchConfig":
        """The config that to_dict gave (a config.json); keys it lacks take the values of its
        preset, or the paper's when it names none (missing_keys names them). ValueError names a
        value that its option would refuse; other keys or shapes raise TypeError, KeyError or
        AttributeError."""
        d = dict(d)
        default = preset(d["preset"]) if d.get("preset") in PRESETS else cls()
        for name in ("stage1", "stage2"):
            d[name] = dataclasses.replace(getattr(default, name), **d.get(name, {}))
        config = dataclasses.replace(default, **d)
        for settings, prefix in ((config, ""), (config.stage1, "stage1."), (config.stage2, "stage2.")):
            check_settings(settings, prefix)
        check_low_high("scale_range", config.scale_range)
        return config


def missing_keys(d: Dict[str, Any]) -> List[str]:
    """The options of a complete config.json (SearchConfig.to_dict) that `d` lacks, as stage1.epochs
    (not "preset": None says it was not recorded)."""
    def keys(tree: Dict[str, Any], prefix: str = "") -> Set[str]:
        return {k for name, v in tree.items()
                for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict) else {prefix + name})}
    return sorted(keys(SearchConfig().to_dict()) - keys(d) - {"preset"})


def _fast() -> SearchConfig:
    """A GPU-friendly shortening: fewer cached images, smaller images and crops."""
    c = SearchConfig(stage1_images=1000, val_images=300, stage2_images=1000, scale=0.75, crop_size=256,
                     gate_anneal=300)
    c.stage1.epochs = 3
    return c


def _tiny() -> SearchConfig:
    """A candidate in well under a minute on 2 CPU cores: for trying nasfast out and for tests."""
    c = SearchConfig(stage1_images=48, val_images=16, stage2_images=32, scale=0.25, crop_size=64, channels=16,
                     gate_anneal=40)
    c.stage1.epochs, c.stage1.batch_size = 2, 8
    c.stage2.batch_size = 8
    return c


PRESETS = {"paper": SearchConfig, "fast": _fast, "tiny": _tiny}
# How this machine runs the search, not what it finds: these may change when a search is resumed.
MACHINE_OPTIONS = ("workers", "image_cache_gb", "memory_limit_gb")
# Files the search reads, which may have moved by then: checked to be the same files (teacher.py).
MOVABLE = ("teacher",)


def preset(name: str) -> SearchConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]()
    config.preset = name
    return config
