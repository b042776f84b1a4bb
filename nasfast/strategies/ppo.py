"""The controller (SPEC section 4): a 2-layer LSTM emitting the 19 decisions, trained with PPO."""
import copy
import numbers
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..genotype import Genotype
from .base import Proposal, Strategy, check_scored, check_state


class Controller(nn.Module):
    """An autoregressive policy over decisions of the given vocabulary sizes.

    Step k: the LSTM reads the embedding of the token chosen at step k - 1 (each decision has its
    own embedding table; step 0 reads a learned start vector) and head k turns its output into the
    logits of decision k. Feeding the chosen token back makes every decision depend on the earlier
    ones (SPEC's improvement: the authors' release fed the LSTM output back instead).
    """

    def __init__(self, sizes: List[int], hidden: int = 100, layers: int = 2):
        super().__init__()
        self.sizes = list(sizes)
        self.start = nn.Parameter(torch.empty(hidden))
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes[:-1])  # the last is never fed

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        for parameter in self.parameters():  # all weights U(-0.1, 0.1), biases included
            nn.init.uniform_(parameter, -0.1, 0.1, generator=generator)

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> Tuple[List[int], float]:
        """Draws one decision sequence; returns it with its log-probability."""
        x, state = self.start.view(1, 1, -1), None
        tokens, log_probs = [], []
        for k, head in enumerate(self.heads):
            out, state = self.lstm(x, state)
            step = head(out.view(-1)).log_softmax(-1)
            token = int(torch.multinomial(step.exp(), 1, generator=generator))
            tokens.append(token)
            log_probs.append(step[token])
            if k < len(self.embeddings):
                x = self.embeddings[k].weight[token].view(1, 1, -1)
        return tokens, float(torch.stack(log_probs).sum())

    def step_log_probs(self, decisions: Tensor) -> List[Tensor]:
        """For a batch of decision sequences (B, D): per decision k, the log-probabilities of all
        its choices given the decisions before k, a (B, sizes[k]) tensor (teacher forcing)."""
        inputs = [self.start.expand(len(decisions), -1)]
        inputs += [embedding(decisions[:, k]) for k, embedding in enumerate(self.embeddings)]
        out, _ = self.lstm(torch.stack(inputs))
        return [head(out[k]).log_softmax(-1) for k, head in enumerate(self.heads)]

    def evaluate(self, decisions: Tensor) -> Tuple[Tensor, Tensor]:
        """Log-probability of each sequence in the batch, and the entropy of the policy along it
        (the sum over decisions of each step's entropy)."""
        steps = self.step_log_probs(decisions)
        log_prob = sum(step.gather(1, decisions[:, k, None])[:, 0] for k, step in enumerate(steps))
        entropy = sum(-(step.exp() * step).sum(1) for step in steps)
        return log_prob, entropy


class PPOController(Strategy):
    """The LSTM controller trained with PPO (SPEC section 4).

    Each update: every reward moves the baseline, an exponential moving average (decay
    `baseline_decay`) that the first reward ever seen initialises, as in the authors' release;
    advantage = reward - baseline after this update's rewards (so the very first advantage is 0).
    Then `ppo_epochs` Adam steps (ours: 4; the release made 1 pass over a buffer of 100) on the
    batch's mean clipped surrogate, min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A), where
    ratio = p_now(decisions) / p(decisions) as recorded in each Proposal when it was sampled,
    plus `entropy_weight` times the policy's entropy (0 by default, as in the release).
    `replay` > 0 also re-uses that many of the most recent earlier scored proposals, with their
    recorded log-probabilities and advantages against the current baseline (the release: a
    buffer of 100, i.e. replay=99); 0 (default) learns from each update's proposals only.

    Sampling draws from the strategy's own generator (seeded; it also initialises the weights);
    the global torch generator is left untouched. state_dict() has all that is needed to continue
    bitwise identically.
    """

    def __init__(self, seed: int = 0, lr: float = 1e-4, clip: float = 0.1, ppo_epochs: int = 4,
                 baseline_decay: float = 0.95, entropy_weight: float = 0.0, hidden: int = 100,
                 replay: int = 0):
        _check_options(lr=lr, clip=clip, ppo_epochs=ppo_epochs, baseline_decay=baseline_decay,
                       entropy_weight=entropy_weight, hidden=hidden, replay=replay)
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # module constructors draw from the global generator
            self.controller = Controller(Genotype.decision_sizes(), hidden)
        self.controller.reset_parameters(self.generator)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.clip, self.ppo_epochs, self.replay = clip, ppo_epochs, replay
        self.baseline_decay, self.entropy_weight = baseline_decay, entropy_weight
        self.baseline: Optional[float] = None
        self.memory: List[Tuple[List[int], float, float]] = []  # (decisions, log_prob, reward)
        self.samples = self.updates = 0

    def sample(self) -> Proposal:
        decisions, log_prob = self.controller.sample(self.generator)
        self.samples += 1
        return Proposal(Genotype.from_decisions(decisions), log_prob)

    def update(self, proposals: List[Proposal], rewards: List[float]) -> Dict[str, float]:
        check_scored(proposals, rewards)
        if not proposals:
            return {}
        scored = [(p.genotype.decisions(), float(p.log_prob), float(r))
                  for p, r in zip(proposals, rewards)]
        for _, _, reward in scored:
            self.baseline = reward if self.baseline is None else (
                self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward)
        batch = self.memory + scored
        self.memory = batch[-self.replay:] if self.replay else []
        decisions = torch.tensor([d for d, _, _ in batch])
        recorded = torch.tensor([log_prob for _, log_prob, _ in batch])
        advantage = torch.tensor([reward - self.baseline for _, _, reward in batch])
        stats = {}
        for epoch in range(self.ppo_epochs):
            log_prob, entropy = self.controller.evaluate(decisions)
            ratio = torch.exp(log_prob - recorded)
            surrogate = torch.min(ratio * advantage, ratio.clamp(1 - self.clip, 1 + self.clip) * advantage)
            loss = -(surrogate + self.entropy_weight * entropy).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            if epoch == 0:  # measured under the policy before this update
                stats = {"loss": loss.item(), "entropy": entropy.mean().item()}
        self.updates += 1
        new_advantages = advantage[len(batch) - len(scored):]
        return {**stats, "baseline": self.baseline, "advantage": new_advantages.mean().item()}

    def state_dict(self) -> Dict[str, Any]:
        return copy.deepcopy({
            "strategy": "ppo", "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "baseline": self.baseline, "memory": self.memory,
            "samples": self.samples, "updates": self.updates})

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        check_state(state, "ppo", ["controller", "optimizer", "generator", "baseline", "memory",
                                   "samples", "updates"])
        state = copy.deepcopy(state)
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline, self.memory = state["baseline"], state["memory"]
        self.samples, self.updates = state["samples"], state["updates"]


def _check_options(lr, clip, ppo_epochs, baseline_decay, entropy_weight, hidden, replay) -> None:
    _check_option("lr", lr, "a number > 0", lambda v: v > 0)
    _check_option("clip", clip, "a number in (0, 1)", lambda v: 0 < v < 1)
    _check_option("baseline_decay", baseline_decay, "a number in [0, 1)", lambda v: 0 <= v < 1)
    _check_option("entropy_weight", entropy_weight, "a number >= 0", lambda v: v >= 0)
    _check_option("ppo_epochs", ppo_epochs, "an integer >= 1", lambda v: v >= 1, integer=True)
    _check_option("hidden", hidden, "an integer >= 1", lambda v: v >= 1, integer=True)
    _check_option("replay", replay, "an integer >= 0", lambda v: v >= 0, integer=True)


def _check_option(name: str, value: Any, expected: str, valid, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not valid(value):
        raise ValueError(f"PPO option {name} must be {expected}, got {value!r}")
