"""Random search: every decision uniform, the baseline of the paper's Fig. 2."""
import math
from typing import Any, Dict, List

import torch

from ..genotype import Genotype
from .base import Proposal, Strategy


class RandomSearch(Strategy):
    def __init__(self, seed: int = 0, **unused):
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> Proposal:
        genotype = Genotype.random(self.generator)
        log_prob = -sum(math.log(n) for n in Genotype.decision_sizes())
        return Proposal(genotype, genotype.decisions(), log_prob)

    def update(self, proposals: List[Proposal], rewards: List[float]) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
