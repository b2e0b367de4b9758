"""Behaviour cloning: maximum likelihood of the dataset's actions (the CRR policy with f = 1).

    L_pi = -E_{(s, a) ~ D} [ log pi(a|s) ]

The same policy network as CRR (``agents/_offline.py``: categorical for discrete
actions, Gaussian for continuous ones), no critic. It is the baseline CRR must beat
on mixed-quality data: it imitates good and bad actions alike, so it returns about
the behaviour policy's average.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from agents._offline import (
    OfflineAgent,
    OfflineConfig,
    flat_actions,
    make_policy,
    policy_act,
)
from agents.base import register


@dataclasses.dataclass
class BCConfig(OfflineConfig):
    """Hyperparameters (the CRR policy's, conf/agent/bc.yaml)."""

    learning_rate: float = 3e-4
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    max_grad_norm: float = 10.0

    def validate(self) -> None:
        super().validate()
        self.check_ranges({"learning_rate": self.learning_rate > 0, "max_grad_norm": self.max_grad_norm > 0})


@register("bc")
class BC(OfflineAgent):
    """Behaviour cloning on a dataset."""

    Config = BCConfig

    def __init__(self, cfg: BCConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        self.policy = make_policy(spec, cfg.hidden).to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate)

    def act(self, obs: Any, explore: bool = False) -> np.ndarray:
        return policy_act(self.policy, obs, self.device, explore)

    def update(self, batch) -> dict[str, Any]:
        dist = self.policy(batch.obs)
        loss = -dist.log_prob(flat_actions(self.policy, batch.action)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        return {"policy_loss": loss.detach(), "entropy": dist.entropy().mean().detach()}

    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), **self.offline_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_offline_state(state)
