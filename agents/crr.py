"""Critic Regularized Regression (Wang et al. 2020, "Critic Regularized Regression", NeurIPS).

Offline: learns from a fixed dataset D of transitions (s, a, r, s') only.

Critic (TD, with target networks Q', pi' copied every ``target_update_interval`` steps)::

    y = r + gamma * E_{a' ~ pi'(.|s')} Q'(s', a')              L_Q = (Q(s, a) - y)^2

The expectation is exact for discrete actions (sum_a' pi'(a'|s') Q'(s', a')) and a
mean over ``num_action_samples`` samples for continuous ones. With
``distributional: true`` the critic is categorical (C51, Bellemare et al. 2017):
``num_atoms`` probabilities on a fixed support [v_min, v_max]; the target is the
mixture over a' of the shifted distributions r + gamma z, projected on the support,
and the loss their cross-entropy; Q is the distribution's mean.

Policy: behaviour cloning filtered by the critic::

    L_pi = -E_{(s, a) ~ D} [ f(A(s, a)) log pi(a|s) ],    A(s, a) = Q(s, a) - V(s)

    f = 1[A > 0]                    (filter: binary)
    f = min(exp(A / beta), 20)      (filter: exp; beta = 1 and the clip at 20 as in the paper)

    V(s) = sum_a pi(a|s) Q(s, a)                      (advantage_baseline: exact, discrete only)
    V(s) = mean_j Q(s, a_j)  or  max_j Q(s, a_j),     a_j ~ pi(.|s), j = 1..m   (sampled: mean | max)

f is computed without gradient, so the policy gradient is a per-sample weighted
log-likelihood gradient: weight f(A) on each dataset pair. Discrete actions use a
categorical policy and a Q(s, .) head; continuous ones (Pendulum-v1) a Gaussian
policy and a critic Q(s, a) on the concatenated action. Acting is the policy's
mode (discrete) or mean (continuous); ``explore`` samples.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents._offline import (
    OfflineAgent,
    OfflineConfig,
    flat_actions,
    make_policy,
    policy_act,
)
from agents.base import register
from agents.networks import QHead, make_torso, mlp
from runtime.errors import UserError

FILTERS = ("binary", "exp")
BASELINES = ("exact", "sampled")
REDUCTIONS = ("mean", "max")


@dataclasses.dataclass
class CRRConfig(OfflineConfig):
    """Hyperparameters; paper values cited in conf/agent/crr.yaml."""

    filter: str = "exp"                   # binary | exp
    beta: float = 1.0                     # temperature of the exp filter
    max_weight: float = 20.0              # clip of exp(A / beta)
    advantage_baseline: str = "exact"     # exact (discrete only) | sampled
    advantage_reduce: str = "mean"        # sampled baseline: mean | max over the m samples
    num_action_samples: int = 4           # m
    policy_learning_rate: float = 3e-4
    critic_learning_rate: float = 3e-4
    target_update_interval: int = 100     # gradient steps between target copies (tau = 1)
    tau: float = 1.0                      # < 1: Polyak averaging of the targets every step instead
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    distributional: bool = False
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    max_grad_norm: float = 10.0

    def validate(self) -> None:
        super().validate()
        self.check_choices({"filter": FILTERS, "advantage_baseline": BASELINES, "advantage_reduce": REDUCTIONS})
        self.check_ranges({
            "beta": self.beta > 0, "max_weight": self.max_weight > 0, "num_action_samples": self.num_action_samples >= 1,
            "policy_learning_rate": self.policy_learning_rate > 0, "critic_learning_rate": self.critic_learning_rate > 0,
            "target_update_interval": self.target_update_interval >= 1, "tau": 0.0 < self.tau <= 1.0,
            "num_atoms": self.num_atoms >= 2,
            "v_max": self.v_max > self.v_min, "max_grad_norm": self.max_grad_norm > 0})


# ------------------------------------------------------------------ filters
def filter_weights(advantage: torch.Tensor, kind: str, beta: float = 1.0, max_weight: float = 20.0) -> torch.Tensor:
    """f(A): ``binary`` 1[A > 0]; ``exp`` min(exp(A / beta), max_weight)."""
    if kind == "binary":
        return (advantage > 0).to(advantage.dtype)
    if kind == "exp":
        return torch.exp(advantage / beta).clamp(max=max_weight)
    raise ValueError(f"unknown filter {kind!r}")


def crr_policy_loss(log_prob: torch.Tensor, advantage: torch.Tensor, kind: str, beta: float = 1.0,
                    max_weight: float = 20.0) -> torch.Tensor:
    """-mean(f(A) log pi(a|s)) with f(A) held constant (no gradient through the critic)."""
    return -(filter_weights(advantage.detach(), kind, beta, max_weight) * log_prob).mean()


def project_distribution(values: torch.Tensor, probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Project point masses ``probs`` (B, K) at ``values`` (B, K) onto the fixed ``support`` (N,).

    Each mass is split between the two nearest atoms (C51's projection); values
    outside the support go to its ends. Returns (B, N), rows summing to the mass.
    """
    v_min, v_max, n = support[0], support[-1], support.shape[0]
    delta = (v_max - v_min) / (n - 1)
    position = (values.clamp(v_min, v_max) - v_min) / delta
    lower = position.floor().long().clamp(0, n - 1)
    upper = position.ceil().long().clamp(0, n - 1)
    upper_weight = position - lower.to(position.dtype)
    lower_weight = 1.0 - upper_weight
    out = torch.zeros(values.shape[0], n, dtype=probs.dtype, device=probs.device)
    out.scatter_add_(1, lower, probs * lower_weight)
    out.scatter_add_(1, upper, probs * upper_weight)
    return out


# ------------------------------------------------------------------ critics
class DiscreteCritic(nn.Module):
    """Q(s, .) for every action: (B, A, atoms) logits (atoms = 1: plain values)."""

    def __init__(self, spec, hidden: list[int], atoms: int):
        super().__init__()
        self.atoms = atoms
        self.num_actions = spec.num_actions
        self.torso = make_torso(spec.observation_space, hidden)
        self.head = QHead(self.torso.out_features, spec.num_actions * atoms)

    def forward(self, obs: Any) -> torch.Tensor:
        return self.head(self.torso(obs)).view(-1, self.num_actions, self.atoms)


class ContinuousCritic(nn.Module):
    """Q(s, a) for M actions per state: obs (B, ...), actions (B, M, dim) -> (B, M, atoms)."""

    def __init__(self, spec, hidden: list[int], atoms: int):
        super().__init__()
        self.atoms = atoms
        self.torso = make_torso(spec.observation_space, hidden[:1] or [256])
        dim = int(torch.tensor(spec.action_space.shape).prod())
        self.head = mlp([self.torso.out_features + dim, *hidden[1:], atoms])

    def forward(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        features = self.torso(obs)
        m = actions.shape[1]
        features = features.unsqueeze(1).expand(-1, m, -1)
        return self.head(torch.cat([features, actions.float()], dim=-1))


@register("crr")
class CRR(OfflineAgent):
    """CRR on a dataset: TD critic (scalar or categorical), critic-filtered regression policy."""

    Config = CRRConfig

    def __init__(self, cfg: CRRConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        self.policy = make_policy(spec, cfg.hidden).to(device)
        self.discrete = self.policy.discrete
        if not self.discrete and cfg.advantage_baseline == "exact":
            raise UserError("the exact advantage baseline needs discrete actions; use advantage_baseline=sampled "
                            "for continuous ones", key="agent.advantage_baseline")
        atoms = cfg.num_atoms if cfg.distributional else 1
        critic_cls = DiscreteCritic if self.discrete else ContinuousCritic
        self.critic = critic_cls(spec, cfg.hidden, atoms).to(device)
        self.critic_target = critic_cls(spec, cfg.hidden, atoms).to(device)
        self.policy_target = make_policy(spec, cfg.hidden).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.policy_target.load_state_dict(self.policy.state_dict())
        self.critic_target.requires_grad_(False)
        self.policy_target.requires_grad_(False)
        self.support = torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms, device=device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.policy_learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_learning_rate)

    # ----------------------------------------------------------------- acting
    def act(self, obs: Any, explore: bool = False) -> np.ndarray:
        return policy_act(self.policy, obs, self.device, explore)

    # ------------------------------------------------------------ the critic
    def q_values(self, out: torch.Tensor) -> torch.Tensor:
        """Mean action values from critic outputs (..., atoms)."""
        if not self.cfg.distributional:
            return out.squeeze(-1)
        return (out.softmax(dim=-1) * self.support).sum(dim=-1)

    def sample_actions(self, policy: nn.Module, obs: Any, m: int) -> torch.Tensor:
        """m actions per state from ``policy``: (B, m) ints or (B, m, dim) floats."""
        dist = policy(obs)
        actions = dist.sample((m,))                     # (m, B) or (m, B, dim)
        return actions.transpose(0, 1)

    def state_action_values(self, critic: nn.Module, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        """Critic outputs (B, M, atoms) of M given actions per state."""
        if self.discrete:
            out = critic(obs)
            return out.gather(1, actions.long().unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        return critic(obs, actions)

    @torch.no_grad()
    def target(self, batch) -> torch.Tensor:
        """Scalar TD targets (B,) or projected target distributions (B, atoms)."""
        cfg = self.cfg
        if self.discrete:
            weights = self.policy_target(batch.next_obs).probs            # (B, A): exact expectation over a'
            out = self.critic_target(batch.next_obs)                       # (B, A, atoms)
        else:
            next_actions = self.sample_actions(self.policy_target, batch.next_obs, cfg.num_action_samples)
            out = self.critic_target(batch.next_obs, next_actions)          # (B, m, atoms)
            weights = torch.full(out.shape[:2], 1.0 / cfg.num_action_samples, device=out.device)
        reward, discount = batch.reward.float(), batch.discount.float()
        if not cfg.distributional:
            next_value = (weights * out.squeeze(-1)).sum(dim=1)
            return reward + discount * next_value
        probs = out.softmax(dim=-1) * weights.unsqueeze(-1)                # mixture over a'
        values = reward[:, None, None] + discount[:, None, None] * self.support
        values = values.expand_as(probs)
        return project_distribution(values.reshape(len(reward), -1), probs.reshape(len(reward), -1), self.support)

    def critic_loss(self, batch, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TD loss and Q(s, a) of the dataset actions."""
        target = self.target(batch)
        out = self.state_action_values(self.critic, batch.obs, actions.unsqueeze(1)).squeeze(1)   # (B, atoms)
        if not self.cfg.distributional:
            q = out.squeeze(-1)
            return F.mse_loss(q, target), q.detach()
        log_probs = out.log_softmax(dim=-1)
        loss = -(target * log_probs).sum(dim=-1).mean()
        return loss, (log_probs.exp() * self.support).sum(dim=-1).detach()

    # ----------------------------------------------------------- the policy
    @torch.no_grad()
    def advantage(self, obs: Any, actions: torch.Tensor, dist) -> torch.Tensor:
        """A(s, a) = Q(s, a) - V(s), V from the exact expectation or m samples of pi."""
        cfg = self.cfg
        q_sa = self.q_values(self.state_action_values(self.critic, obs, actions.unsqueeze(1))).squeeze(1)
        if cfg.advantage_baseline == "exact":
            q_all = self.q_values(self.critic(obs))                         # (B, A)
            baseline = (dist.probs * q_all).sum(dim=-1)
        else:
            sampled = dist.sample((cfg.num_action_samples,)).transpose(0, 1)
            q_sampled = self.q_values(self.state_action_values(self.critic, obs, sampled))   # (B, m)
            baseline = q_sampled.mean(dim=1) if cfg.advantage_reduce == "mean" else q_sampled.max(dim=1).values
        return q_sa - baseline

    def update(self, batch) -> dict[str, Any]:
        cfg = self.cfg
        actions = flat_actions(self.policy, batch.action)
        critic_loss, q = self.critic_loss(batch, actions)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
        self.critic_optimizer.step()

        dist = self.policy(batch.obs)
        advantage = self.advantage(batch.obs, actions, dist)
        weights = filter_weights(advantage, cfg.filter, cfg.beta, cfg.max_weight)
        policy_loss = crr_policy_loss(dist.log_prob(actions), advantage, cfg.filter, cfg.beta, cfg.max_weight)
        self.policy_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.policy_optimizer.step()

        if cfg.tau < 1.0 or (self.grad_steps + 1) % cfg.target_update_interval == 0:
            self.sync_targets()
        return {"critic_loss": critic_loss.detach(), "policy_loss": policy_loss.detach(), "q_mean": q.mean(),
                "advantage_mean": advantage.mean(), "filter_mean": weights.mean(),
                "entropy": dist.entropy().mean().detach()}

    @torch.no_grad()
    def sync_targets(self) -> None:
        """Copy (tau = 1) or Polyak-average the critic and policy into their targets."""
        for target, online in ((self.critic_target, self.critic), (self.policy_target, self.policy)):
            for t, o in zip(target.parameters(), online.parameters()):
                t.lerp_(o, self.cfg.tau)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "policy_target": self.policy_target.state_dict(), "critic_target": self.critic_target.state_dict(),
                "policy_optimizer": self.policy_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), **self.offline_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.policy_target.load_state_dict(state["policy_target"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.load_offline_state(state)
