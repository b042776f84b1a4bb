"""The early-stop gate between the two stages (SPEC section 5)."""
from typing import Dict


class Gate:
    """Continues a candidate whose stage-1 reward beats the running mean of the stage-1 rewards
    seen so far; otherwise continues with probability p, annealed linearly from `p_start` to
    `p_end` over `anneal` decisions (a candidate that fails in stage 1 makes none). The coin is a
    number in [0, 1) given by the caller, so that each decision can be replayed exactly."""

    def __init__(self, p_start: float = 0.9, p_end: float = 0.1, anneal: int = 1000):
        self.p_start, self.p_end, self.anneal = p_start, p_end, max(1, anneal)
        self.total = 0.0
        self.count = 0

    def p(self) -> float:
        t = min(1.0, self.count / self.anneal)
        return self.p_start + t * (self.p_end - self.p_start)

    def decide(self, reward: float, coin: float) -> bool:
        """True to continue to stage 2. Records the reward in the running mean."""
        above = self.count == 0 or reward > self.total / self.count
        go = above or coin < self.p()
        self.total += reward
        self.count += 1
        return go

    def state_dict(self) -> Dict[str, float]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])
