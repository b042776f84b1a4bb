"""The controller (SPEC section 4): a 2-layer LSTM emitting 19 decisions, trained with PPO."""
import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..genotype import Genotype
from .base import Proposal, Strategy


class Controller(nn.Module):
    """Each decision has its own linear head and its own token embedding; the embedding of the
    sampled token is the next LSTM input (SPEC's improvement over the authors' release)."""

    def __init__(self, sizes: List[int], hidden: int = 100, layers: int = 2):
        super().__init__()
        self.sizes = sizes
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def run(self, decisions: Optional[List[int]] = None, generator: Optional[torch.Generator] = None
            ) -> Tuple[List[int], Tensor, Tensor]:
        """Samples decisions (or scores the given ones); returns them, their total log-probability
        and the total entropy of the distributions met on the way."""
        x, state = self.start, None
        chosen, log_prob, entropy = [], self.start.new_zeros(()), self.start.new_zeros(())
        for k, (head, embedding) in enumerate(zip(self.heads, self.embeddings)):
            out, state = self.lstm(x[:, None], state)
            logits = head(out[0])[0]
            probs = logits.softmax(-1)
            token = int(torch.multinomial(probs.detach(), 1, generator=generator)) if decisions is None else decisions[k]
            log_probs = logits.log_softmax(-1)
            log_prob = log_prob + log_probs[token]
            entropy = entropy - (probs * log_probs).sum()
            chosen.append(token)
            x = embedding.weight[token][None]
        return chosen, log_prob, entropy


class PPOController(Strategy):
    """PPO with a clipped probability ratio; advantage = reward - moving-average baseline.
    The baseline starts at the first reward seen (ours: the paper leaves it open)."""

    def __init__(self, seed: int = 0, lr: float = 1e-4, clip: float = 0.1, ppo_epochs: int = 4,
                 baseline_decay: float = 0.95, entropy_weight: float = 0.0, hidden: int = 100):
        torch.manual_seed(seed)  # the U(-0.1, 0.1) initialisation
        self.controller = Controller(Genotype.decision_sizes(), hidden)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.clip, self.ppo_epochs = clip, ppo_epochs
        self.baseline_decay, self.entropy_weight = baseline_decay, entropy_weight
        self.baseline: Optional[float] = None
        self.updates = 0

    def sample(self) -> Proposal:
        with torch.no_grad():
            decisions, log_prob, _ = self.controller.run(generator=self.generator)
        return Proposal(Genotype.from_decisions(decisions), decisions, float(log_prob))

    def update(self, proposals: List[Proposal], rewards: List[float]) -> Dict[str, float]:
        advantages = []
        for reward in rewards:
            self.baseline = reward if self.baseline is None else (
                self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward)
            advantages.append(reward - self.baseline)
        for _ in range(self.ppo_epochs):
            loss = torch.zeros(())
            for proposal, advantage in zip(proposals, advantages):
                _, log_prob, entropy = self.controller.run(proposal.decisions)
                ratio = torch.exp(log_prob - proposal.log_prob)
                clipped = ratio.clamp(1 - self.clip, 1 + self.clip)
                loss = loss - torch.min(ratio * advantage, clipped * advantage) - self.entropy_weight * entropy
            loss = loss / len(proposals)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.updates += 1
        return {"loss": loss.item(), "baseline": float(self.baseline), "advantage": float(advantages[-1])}

    def state_dict(self) -> Dict[str, Any]:
        return copy.deepcopy({"controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "generator": self.generator.get_state(), "baseline": self.baseline,
                              "updates": self.updates})

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline, self.updates = state["baseline"], state["updates"]
