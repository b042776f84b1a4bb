"""Search strategies behind one interface: the PPO-trained LSTM controller and random search.
They propose genotypes and learn from rewards; they know nothing of the networks built."""
import inspect

from .base import Proposal, Strategy
from .ppo import Controller, PPOController
from .random_search import RandomSearch

STRATEGIES = {"ppo": PPOController, "random": RandomSearch}
OPTIONS = sorted(set(inspect.signature(PPOController).parameters) - {"seed"})


def make_strategy(name: str, seed: int = 0, **options) -> Strategy:
    """A strategy by name. Options are PPOController's (lr, clip, ppo_epochs, baseline_decay,
    entropy_weight, hidden, replay); random search ignores them."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown strategy options {unknown}; known: {OPTIONS}")
    return STRATEGIES[name](seed=seed, **options)


__all__ = ["Proposal", "Strategy", "PPOController", "RandomSearch", "Controller", "make_strategy",
           "STRATEGIES"]
