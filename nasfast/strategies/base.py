"""The interface every search strategy has: sample designs, learn from their rewards."""
from dataclasses import dataclass
from typing import Any, Dict, List

from ..genotype import Genotype


@dataclass
class Proposal:
    """A sampled design and what the strategy needs to learn from its reward later, possibly
    after other designs were sampled and scored (out of order)."""
    genotype: Genotype
    decisions: List[int]
    log_prob: float      # of the decisions, under the policy that sampled them


class Strategy:
    def sample(self) -> Proposal:
        raise NotImplementedError

    def update(self, proposals: List[Proposal], rewards: List[float]) -> Dict[str, float]:
        """Learns from scored proposals; returns statistics for the log."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        raise NotImplementedError
