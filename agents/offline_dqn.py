"""Offline double DQN: the DQN update (agents/dqn.py) on a fixed dataset, no environment steps.

    y = r + gamma * Q'(s', argmax_a' Q(s', a'))   (0 after a termination; truncation bootstraps)
    L = huber(Q(s, a) - y)

With ``double: false`` the target is ``max_a' Q'(s', a')``. The same Q network as
DQN (torso + optionally dueling head), Polyak or hard target updates. Nothing
keeps it near the data, so on narrow datasets it can overestimate actions the
dataset never took; it is the baseline that shows what CRR's filter buys.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents._offline import OfflineAgent, OfflineConfig
from agents.base import register
from agents.dqn import QNetwork
from agents.networks import to_tensor


@dataclasses.dataclass
class OfflineDQNConfig(OfflineConfig):
    """Hyperparameters (conf/agent/offline_dqn.yaml)."""

    learning_rate: float = 3e-4
    adam_eps: float = 1.5e-4
    target_update_interval: int = 100   # gradient steps between target syncs (tau = 1), or every step (tau < 1)
    tau: float = 0.005                  # Polyak; 1: hard copies (diverged on CartPole, docs/crr.md)
    double: bool = True
    dueling: bool = False
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    head_hidden: int = 0
    max_grad_norm: float = 10.0
    loss: str = "huber"
    eval_eps: float = 0.0

    def validate(self) -> None:
        super().validate()
        self.check_ranges({"learning_rate": self.learning_rate > 0, "adam_eps": self.adam_eps > 0,
                            "target_update_interval": self.target_update_interval >= 1,
                            "tau": 0.0 < self.tau <= 1.0, "max_grad_norm": self.max_grad_norm > 0,
                            "loss": self.loss in ("huber", "mse"), "eval_eps": 0.0 <= self.eval_eps <= 1.0})


@register("offline_dqn")
class OfflineDQN(OfflineAgent):
    """Double DQN trained on a dataset only."""

    Config = OfflineDQNConfig

    def __init__(self, cfg: OfflineDQNConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        self.q = QNetwork(spec, cfg).to(device)
        self.q_target = QNetwork(spec, cfg).to(device)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def act(self, obs: Any, explore: bool = False) -> np.ndarray:
        actions = self.q(to_tensor(obs, self.device)).argmax(dim=-1).cpu().numpy()
        if self.cfg.eval_eps > 0:
            mask = self.rng.random(actions.shape[0]) < self.cfg.eval_eps
            actions = np.where(mask, self.rng.integers(0, self.spec.num_actions, actions.shape[0]), actions)
        return actions

    def update(self, batch) -> dict[str, Any]:
        cfg = self.cfg
        reward = batch.reward
        if self.spec.reward_clip is not None:
            reward = reward.clamp(-self.spec.reward_clip, self.spec.reward_clip)
        with torch.no_grad():
            next_q_target = self.q_target(batch.next_obs)
            source = self.q(batch.next_obs) if cfg.double else next_q_target
            next_action = source.argmax(dim=-1, keepdim=True)
            target = reward + batch.discount * next_q_target.gather(1, next_action).squeeze(1)
        q = self.q(batch.obs).gather(1, batch.action.long().view(-1, 1)).squeeze(1)
        loss = F.smooth_l1_loss(q, target) if cfg.loss == "huber" else F.mse_loss(q, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        if cfg.tau < 1.0 or (self.grad_steps + 1) % cfg.target_update_interval == 0:
            with torch.no_grad():
                for t, o in zip(self.q_target.parameters(), self.q.parameters()):
                    t.lerp_(o, cfg.tau)
        return {"loss": loss.detach(), "q_mean": q.detach().mean()}

    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state, **self.offline_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.load_offline_state(state)
