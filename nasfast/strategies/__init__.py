"""Search strategies: the PPO-trained LSTM controller and random search, behind one interface."""
from .base import Proposal, Strategy
from .ppo import Controller, PPOController
from .random_search import RandomSearch

STRATEGIES = {"ppo": PPOController, "random": RandomSearch}


def make_strategy(name: str, seed: int = 0, **options) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](seed=seed, **options)


__all__ = ["Proposal", "Strategy", "PPOController", "RandomSearch", "Controller", "make_strategy", "STRATEGIES"]
