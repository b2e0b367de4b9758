"""Shared pieces of the offline agents (CRR, behaviour cloning, offline DQN).

An offline agent never steps an environment while learning: ``train_iteration``
runs ``gradient_steps`` updates on batches drawn uniformly from a fixed dataset
(``agent.dataset=<file>``, built by ``make_dataset.py``; see ``docs/datasets.md``)
and reports them as ``grad_steps``, which the trainer counts instead of env
steps; the trainer still evaluates the policy in the environment on schedule.

The dataset is loaded on the first ``train_iteration`` (not at construction), so
``eval.py`` can rebuild a trained agent without the dataset. The sampler's
generator is part of ``state_dict``; the dataset itself is not (it is on disk).
"""
from __future__ import annotations

import abc

import dataclasses
import os
import tempfile
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.base import Agent, AgentConfig
from agents.networks import make_torso, to_tensor
from runtime.errors import UserError


@dataclasses.dataclass
class OfflineConfig(AgentConfig):
    """Keys every offline agent has: where the data is and how it is sampled."""

    dataset: str | None = None        # the dataset file (make_dataset.py out=...)
    dataset_storage: str = "memory"   # memory | mmap (datasets larger than RAM)
    dataset_cache: str | None = None  # directory for the memory maps (mmap; default: a temporary one)
    batch_size: int = 256
    gradient_steps: int = 100         # updates per train_iteration
    gamma: float = 0.99

    def validate(self) -> None:
        if self.dataset is None or not str(self.dataset).strip():
            raise UserError("an offline agent needs a dataset: agent.dataset=<file built by make_dataset.py>",
                            key="agent.dataset")
        self.check_choices({"dataset_storage": ("memory", "mmap")})
        checks = {"batch_size": self.batch_size > 0, "gradient_steps": self.gradient_steps >= 1,
                  "gamma": 0.0 <= self.gamma <= 1.0}
        self.check_ranges(checks)


def _space_summary(space: gym.Space) -> tuple:
    if isinstance(space, gym.spaces.Discrete):
        return ("Discrete", int(space.n))
    if isinstance(space, gym.spaces.Dict):
        return ("Dict", tuple((key, _space_summary(sub)) for key, sub in sorted(space.spaces.items())))
    return (type(space).__name__, tuple(space.shape))


class OfflineAgent(Agent):
    """Base of the offline agents: lazy dataset loading, batch sampling, grad-step counting."""

    offline = True

    def __init__(self, cfg: OfflineConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        torch.manual_seed(seed)
        self.dataset = None
        self.dataset_info: dict[str, Any] = {}
        self.grad_steps = 0
        self._pending_sampler_state: dict | None = None
        self._cache_dir: tempfile.TemporaryDirectory | None = None

    # ----------------------------------------------------------------- data
    def load_dataset(self) -> None:
        """Open ``cfg.dataset``; a missing, corrupt or mismatched file is a UserError naming agent.dataset."""
        from replay.datasets import load_dataset

        path = os.path.expanduser(str(self.cfg.dataset))
        if not os.path.isfile(path):
            raise UserError(f"dataset file {path!r} does not exist (build one with make_dataset.py)",
                            key="agent.dataset")
        storage_path = None
        if self.cfg.dataset_storage == "mmap":
            storage_path = self.cfg.dataset_cache
            if storage_path is None:
                self._cache_dir = tempfile.TemporaryDirectory(prefix="arbor-dataset-")
                storage_path = self._cache_dir.name
            os.makedirs(storage_path, exist_ok=True)
        try:
            buf, info = load_dataset(path, gamma=self.cfg.gamma, seed=self.seed, storage=self.cfg.dataset_storage,
                                     storage_path=storage_path, device=str(self.device))
        except ValueError as err:
            raise UserError(f"dataset {path!r} cannot be used: {err}", key="agent.dataset") from None
        for what, mine, theirs in (("observation", self.spec.observation_space, buf.observation_space),
                                   ("action", self.spec.action_space, buf.action_space)):
            if _space_summary(mine) != _space_summary(theirs):
                raise UserError(f"dataset {path!r} has {what} space {theirs}, but env {self.spec.name!r} has {mine}: "
                                "build the dataset on the same environment", key="agent.dataset")
        if len(buf) < self.cfg.batch_size:
            raise UserError(f"dataset {path!r} holds {len(buf)} transitions, fewer than one batch "
                            f"({self.cfg.batch_size})", key="agent.dataset")
        self.dataset, self.dataset_info = buf, info
        if self._pending_sampler_state is not None:
            self.dataset._rng.bit_generator.state = self._pending_sampler_state
            self._pending_sampler_state = None

    def sample(self):
        """One uniform batch of 1-step transitions from the dataset."""
        if self.dataset is None:
            self.load_dataset()
        return self.dataset.sample(self.cfg.batch_size)

    def train_iteration(self) -> dict[str, Any]:
        """``gradient_steps`` updates; the metrics are the means over them."""
        if self.dataset is None:
            self.load_dataset()
        sums: dict[str, float] = {}
        for _ in range(self.cfg.gradient_steps):
            for key, value in self.update(self.sample()).items():
                sums[key] = sums.get(key, 0.0) + float(value)
            self.grad_steps += 1
        metrics: dict[str, Any] = {key: value / self.cfg.gradient_steps for key, value in sums.items()}
        metrics["grad_steps"] = self.cfg.gradient_steps
        metrics["env_steps"] = 0
        return metrics

    @abc.abstractmethod
    def update(self, batch) -> dict[str, torch.Tensor | float]:
        """One gradient step on ``batch``; returns scalar metrics."""

    # ------------------------------------------------------------ checkpoints
    def offline_state(self) -> dict[str, Any]:
        """Counters and the dataset sampler's generator (the data stays on disk)."""
        sampler = self.dataset._rng.bit_generator.state if self.dataset is not None else self._pending_sampler_state
        return {"grad_steps": self.grad_steps, "torch_rng": torch.get_rng_state(),
                "sampler": sampler}

    def load_offline_state(self, state: dict[str, Any]) -> None:
        self.grad_steps = int(state["grad_steps"])
        torch.set_rng_state(state["torch_rng"])
        sampler = state.get("sampler")
        if sampler is not None:
            if self.dataset is not None:
                self.dataset._rng.bit_generator.state = sampler
            else:
                self._pending_sampler_state = sampler


# ------------------------------------------------------------------ policies
class CategoricalPolicy(nn.Module):
    """pi(a|s) = softmax(logits(s)) over discrete actions."""

    discrete = True

    def __init__(self, spec, hidden: list[int]):
        super().__init__()
        self.torso = make_torso(spec.observation_space, hidden)
        self.logits = nn.Linear(self.torso.out_features, spec.num_actions)

    def forward(self, obs: Any) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.logits(self.torso(obs)))

    @staticmethod
    def deterministic(dist: torch.distributions.Categorical) -> torch.Tensor:
        return dist.logits.argmax(dim=-1)


class GaussianPolicy(nn.Module):
    """pi(a|s) = N(mu(s), diag sigma(s)^2); mu = centre + half_range * tanh(.), log sigma clamped to [-5, 2].

    The mean stays inside the action bounds; samples are clipped to them when acting.
    """

    discrete = False

    def __init__(self, spec, hidden: list[int]):
        super().__init__()
        space = spec.action_space
        self.torso = make_torso(spec.observation_space, hidden)
        dim = int(np.prod(space.shape))
        self.head = nn.Linear(self.torso.out_features, 2 * dim)
        low, high = torch.as_tensor(space.low, dtype=torch.float32), torch.as_tensor(space.high, dtype=torch.float32)
        self.register_buffer("centre", ((high + low) / 2).reshape(-1))
        self.register_buffer("half_range", ((high - low) / 2).reshape(-1))
        self.register_buffer("low", low.reshape(-1))
        self.register_buffer("high", high.reshape(-1))
        self.action_shape = tuple(space.shape)

    def forward(self, obs: Any) -> torch.distributions.Independent:
        mean_raw, log_std = self.head(self.torso(obs)).chunk(2, dim=-1)
        mean = self.centre + self.half_range * torch.tanh(mean_raw)
        std = log_std.clamp(-5.0, 2.0).exp() * self.half_range
        return torch.distributions.Independent(torch.distributions.Normal(mean, std), 1)

    @staticmethod
    def deterministic(dist: torch.distributions.Independent) -> torch.Tensor:
        return dist.base_dist.loc

    def clip(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(actions, self.high), self.low)


def make_policy(spec, hidden: list[int]) -> nn.Module:
    """A categorical policy for Discrete actions, a Gaussian one for Box actions."""
    if isinstance(spec.action_space, gym.spaces.Discrete):
        return CategoricalPolicy(spec, hidden)
    if isinstance(spec.action_space, gym.spaces.Box):
        return GaussianPolicy(spec, hidden)
    raise UserError(f"action space {spec.action_space} is not supported (Discrete or Box)", key="env")


def flat_actions(policy: nn.Module, actions: torch.Tensor) -> torch.Tensor:
    """Dataset actions in the shape the policy's distribution scores: (B,) int or (B, dim) float."""
    if policy.discrete:
        return actions.long().reshape(-1)
    return actions.float().reshape(actions.shape[0], -1)


@torch.no_grad()
def policy_act(policy: nn.Module, obs: Any, device: torch.device, explore: bool) -> np.ndarray:
    """Deterministic (mode / mean) or sampled actions of ``policy`` for a batch of observations."""
    dist = policy(to_tensor(obs, device))
    actions = dist.sample() if explore else policy.deterministic(dist)
    if not policy.discrete:
        actions = policy.clip(actions).reshape(-1, *policy.action_shape)
    return actions.cpu().numpy()
