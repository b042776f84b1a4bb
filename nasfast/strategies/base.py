"""The interface every search strategy has: propose designs, learn from their rewards."""
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List

from ..genotype import Genotype


@dataclass(frozen=True)
class Proposal:
    """A sampled design and what its strategy needs to learn from its reward later, possibly
    after other designs were sampled or scored (rewards may come back out of order)."""
    genotype: Genotype
    log_prob: float        # of its decisions (genotype.decisions()), under the policy at sampling time


class Strategy(ABC):
    @abstractmethod
    def sample(self) -> Proposal:
        """The next design to evaluate."""

    @abstractmethod
    def update(self, proposals: List[Proposal], rewards: List[float]) -> Dict[str, float]:
        """Learns from scored proposals; returns statistics for the log (plain floats)."""

    @abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """A copy of everything needed to continue exactly (torch.save-able)."""

    @abstractmethod
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continues from a state_dict() of the same kind of strategy."""


def check_state(state: Dict[str, Any], strategy: str, keys: List[str]) -> None:
    if not isinstance(state, dict) or state.get("strategy") != strategy:
        found = state.get("strategy") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"expected the state of a {strategy!r} strategy, got one of {found!r}")
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"{strategy!r} strategy state lacks {missing}")


def check_scored(proposals: List[Proposal], rewards: List[float]) -> None:
    if len(proposals) != len(rewards):
        raise ValueError(f"got {len(proposals)} proposals but {len(rewards)} rewards")
    for reward in rewards:
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(reward):
            raise ValueError(f"rewards must be finite numbers, got {reward!r}")
