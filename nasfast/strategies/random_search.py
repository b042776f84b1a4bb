"""Random search: every decision uniform, the baseline of the paper's Fig. 2."""
import math
from typing import Any, Dict, List

import torch

from ..genotype import Genotype
from .base import Proposal, Strategy, check_scored, check_state


class RandomSearch(Strategy):
    """Samples uniformly with its own generator; learns nothing. Accepts (and ignores) the
    options of the other strategies, so that one configuration serves both."""

    LOG_PROB = -sum(math.log(n) for n in Genotype.decision_sizes())

    def __init__(self, seed: int = 0, **ignored_options):
        self.generator = torch.Generator().manual_seed(seed)
        self.samples = 0

    def sample(self) -> Proposal:
        genotype = Genotype.random(self.generator)
        self.samples += 1
        return Proposal(genotype, self.LOG_PROB)

    def update(self, proposals: List[Proposal], rewards: List[float]) -> Dict[str, float]:
        check_scored(proposals, rewards)
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {"strategy": "random", "generator": self.generator.get_state(), "samples": self.samples}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        check_state(state, "random", ["generator", "samples"])
        self.generator.set_state(state["generator"])
        self.samples = state["samples"]
