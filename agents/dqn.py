"""Double DQN with optional dueling head and n-step returns (Mnih et al. 2015; van Hasselt et al. 2016).

Config -> networks -> acting -> learning. One ``train_iteration`` steps every
vector env ``collect_steps`` times with an epsilon-greedy policy, adds the batch
of transitions to the shared replay, then runs ``gradient_steps`` updates of the
online network toward ``r + discount * Q_target(s', argmax_a Q_online(s', a))``.
The replay returns n-step rewards and the discount ``gamma**k`` (zero when the
episode terminated inside the window; truncation bootstraps).

The update is written once for DQN and DrQ (``agents/drq.py``): an augmentation
``aug`` (the identity here), ``M`` copies of the current observation and ``K`` of
the next one (both 1 here),

    y   = r + discount * (1/K) sum_k Q_target(aug_k(s'), argmax_a Q(aug_k(s'), a))
    L   = (1/M) sum_m loss(Q(aug_m(s), a) - y)

so DQN is exactly DrQ with augmentation off and ``K = M = 1``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents._augment import Augmentation
from agents.base import AgentConfig, ReplayAgent, linear_epsilon, register
from agents.networks import QHead, make_torso, to_tensor, xavier_uniform_
from replay import TransitionReplay


@dataclasses.dataclass
class DQNConfig(AgentConfig):
    """Hyperparameters; defaults are the Nature DQN's where they exist."""

    learning_rate: float = 1e-4
    learning_rate_final: float | None = None   # anneal linearly to this over the run (None: constant)
    adam_eps: float = 1.5e-4
    batch_size: int = 32
    buffer_size: int = 100_000
    learning_starts: int = 20_000      # env steps before the first update
    gamma: float = 0.99
    n_step: int = 1
    collect_steps: int = 1             # vector-env steps per iteration
    gradient_steps: int = 1            # updates per iteration
    target_update_interval: int = 2000 # gradient steps between target syncs
    tau: float = 1.0                   # 1 = hard copy
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_fraction: float = 0.1          # share of the run over which epsilon decays (when eps_decay_steps is 0)
    eps_decay_steps: int = 0           # >0: epsilon 1 until learning_starts, then linear over this many env steps
    eval_eps: float = 0.0
    double: bool = True
    dueling: bool = False
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    head_hidden: int = 0
    conv_padding: str = "valid"        # Nature CNN padding: valid (Mnih et al.) | same (Dopamine's flax torso)
    weight_init: str = "torch"         # torch (PyTorch's defaults) | xavier_uniform (Dopamine: zero biases)
    max_grad_norm: float | None = 10.0  # null: no gradient clipping
    loss: str = "huber"
    prioritized: bool = False
    priority_alpha: float = 0.6
    priority_beta: float = 0.4

    def validate(self) -> None:
        checks = {
            "learning_rate": self.learning_rate > 0,
            "learning_rate_final": self.learning_rate_final is None or self.learning_rate_final >= 0, "batch_size": self.batch_size > 0,
            "buffer_size": self.buffer_size > 0, "learning_starts": self.learning_starts >= 0,
            "gamma": 0.0 <= self.gamma <= 1.0, "n_step": self.n_step >= 1,
            "collect_steps": self.collect_steps >= 1, "gradient_steps": self.gradient_steps >= 0,
            "target_update_interval": self.target_update_interval >= 1, "tau": 0.0 < self.tau <= 1.0,
            "eps_start": 0.0 <= self.eps_start <= 1.0, "eps_end": 0.0 <= self.eps_end <= 1.0,
            "eps_fraction": 0.0 <= self.eps_fraction <= 1.0, "eps_decay_steps": self.eps_decay_steps >= 0,
            "eval_eps": 0.0 <= self.eval_eps <= 1.0,
            "max_grad_norm": self.max_grad_norm is None or self.max_grad_norm > 0,
        }
        self.check_ranges(checks)
        self.check_choices({"loss": ("huber", "mse"), "conv_padding": ("valid", "same"),
                            "weight_init": ("torch", "xavier_uniform")})


class QNetwork(nn.Module):
    """Torso chosen from the observation space, then a (dueling) Q head.

    Image torsos keep their convolution weights channels-last: oneDNN's CPU
    convolutions ran about 1.4x faster that way on 84 x 84 stacks here (numerically equivalent).
    """

    def __init__(self, spec, cfg: DQNConfig):
        super().__init__()
        # Configs without the two network choices (offline DQN's) get the Nature defaults.
        self.torso = make_torso(spec.observation_space, cfg.hidden, getattr(cfg, "conv_padding", "valid"))
        self.head = QHead(self.torso.out_features, spec.num_actions, cfg.dueling, cfg.head_hidden)
        if getattr(cfg, "weight_init", "torch") == "xavier_uniform":
            xavier_uniform_(self)
        if spec.is_image and not isinstance(spec.observation_space, gym.spaces.Dict):
            self.torso.use_channels_last()

    def forward(self, obs: Any) -> torch.Tensor:
        return self.head(self.torso(obs))


# ------------------------------------------------------------------ the update
def augmented_copies(obs: Any, augment: Callable[[Any], Any], copies: int) -> Any:
    """``copies`` independent augmentations of a batch, stacked along the batch axis (copy-major)."""
    if copies == 1:
        return augment(obs)
    views = [augment(obs) for _ in range(copies)]
    if isinstance(obs, dict):
        return {key: torch.cat([v[key] for v in views]) for key in obs}
    return torch.cat(views)


def bootstrap_values(q_online: nn.Module, q_target: nn.Module, next_obs: Any, augment: Callable[[Any], Any],
                     copies: int = 1, double: bool = True, shared_target: bool = False) -> torch.Tensor:
    """``(1/K) sum_k Q_target(aug_k(s'), a*_k)`` with ``a*_k`` the online (double) or target argmax.

    Each augmented copy ``aug_k(s')`` is seen by both networks, so the double-Q
    action and its value come from the same view. ``shared_target``: the target
    network equals the online one (synced after every update), one forward serves both.
    """
    views = augmented_copies(next_obs, augment, copies)
    if shared_target:
        next_q_target = next_q_online = q_online(views)
    else:
        next_q_target = q_target(views)
        next_q_online = q_online(views) if double else next_q_target
    next_action = next_q_online.argmax(dim=-1, keepdim=True)
    return next_q_target.gather(1, next_action).squeeze(1).view(copies, -1).mean(dim=0)


def chosen_q_values(q: nn.Module, obs: Any, action: torch.Tensor, augment: Callable[[Any], Any],
                    copies: int = 1) -> torch.Tensor:
    """``Q(aug_m(s), a)`` for ``m = 1..M`` independent augmentations: shape ``(M, B)``."""
    views = augmented_copies(obs, augment, copies)
    index = action.long().view(1, -1).expand(copies, -1).reshape(-1, 1)
    return q(views).gather(1, index).view(copies, -1)


def q_learning_loss(q_values: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, loss: str = "huber",
                    average: str = "loss") -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted TD loss of ``(M, B)`` estimates against ``(B,)`` targets, and the per-item ``|TD|``.

    ``average='loss'`` averages the M per-copy losses (DrQ's Algorithm 1);
    ``'q'`` first averages the M estimates into one Q value, then takes one loss.
    """
    if average == "q":
        q_values = q_values.mean(dim=0, keepdim=True)
    expanded = target.expand_as(q_values)
    if loss == "huber":
        per_item = F.smooth_l1_loss(q_values, expanded, reduction="none")
    else:
        per_item = (q_values - expanded).pow(2)
    td = (q_values - expanded).detach().abs().mean(dim=0)
    return (per_item.mean(dim=0) * weights).mean(), td


@register("dqn")
class DQN(ReplayAgent):
    """Double DQN agent over a vector env."""

    Config = DQNConfig

    def __init__(self, cfg: DQNConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        torch.manual_seed(seed)
        self.q = QNetwork(spec, cfg).to(device)
        self.q_target = QNetwork(spec, cfg).to(device)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        # Image networks: the fused CPU Adam kernel (one pass over all parameters) takes ~1 ms per step
        # for the Nature CNN where the per-tensor loop takes ~9 ms; vector networks keep the default.
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps,
                                          fused=True if spec.is_image else None)
        self.rng = np.random.default_rng(seed)
        self.replay = TransitionReplay(
            capacity=cfg.buffer_size, observation_space=spec.observation_space, action_space=spec.action_space,
            num_envs=spec.num_envs, n_step=cfg.n_step, gamma=cfg.gamma, frame_stack=spec.frame_stack,
            prioritized=cfg.prioritized, alpha=cfg.priority_alpha, beta=cfg.priority_beta,
            seed=seed, device=device)
        self.augment = self.make_augmentation()
        self.augment.channels_last = bool(getattr(self.q.torso, "channels_last", False))
        self.env_steps = 0
        self.grad_steps = 0
        self.obs = None if env is None else env.reset(seed=seed)[0]

    def make_augmentation(self) -> Augmentation:
        """The augmentation of sampled observations: none for DQN (DrQ overrides this)."""
        return Augmentation("none")

    # K, M and how the M copies are averaged; DrQ reads them from its config.
    @property
    def target_copies(self) -> int:
        return int(getattr(self.cfg, "target_augmentations", 1))

    @property
    def q_copies(self) -> int:
        return int(getattr(self.cfg, "q_augmentations", 1))

    @property
    def q_average(self) -> str:
        return str(getattr(self.cfg, "q_average", "loss"))

    @property
    def shares_target(self) -> bool:
        """A target synced (copied) after every update equals the online network at the next one:
        one forward pass serves both, and the copy is made only when a checkpoint reads the target."""
        cfg = self.cfg
        return cfg.double and cfg.tau == 1.0 and cfg.target_update_interval == 1

    # ----------------------------------------------------------------- acting
    def epsilon(self) -> float:
        """Exploration rate at the current env step (:func:`agents.base.linear_epsilon`)."""
        cfg = self.cfg
        return linear_epsilon(cfg.eps_start, cfg.eps_end, self.env_steps, self.total_steps, cfg.eps_fraction,
                              cfg.eps_decay_steps, cfg.learning_starts)

    @torch.no_grad()
    def greedy(self, obs: Any) -> np.ndarray:
        return self.q(to_tensor(obs, self.device)).argmax(dim=-1).cpu().numpy()

    def act(self, obs: Any, explore: bool = False, epsilon: float | None = None) -> np.ndarray:
        """Greedy actions, or epsilon-greedy ones when ``explore`` (training) or ``eval_eps`` > 0."""
        eps = (self.epsilon() if explore else self.cfg.eval_eps) if epsilon is None else epsilon
        if eps >= 1.0:   # all random (warm-up): the same draws as below, without a forward pass
            batch = len(next(iter(obs.values())) if isinstance(obs, dict) else obs)
            actions = np.zeros(batch, dtype=np.int64)
        else:
            actions = self.greedy(obs)
        if eps > 0:
            batch = actions.shape[0]
            random_mask = self.rng.random(batch) < eps
            actions = np.where(random_mask, self.rng.integers(0, self.spec.num_actions, batch), actions)
        return actions

    def collect(self) -> dict[str, Any]:
        """Step the vector env ``collect_steps`` times and store the transitions."""
        for _ in range(self.cfg.collect_steps):
            warming = self.env_steps < self.cfg.learning_starts
            eps = 1.0 if warming else None
            actions = self.act(self.obs, explore=True, epsilon=eps)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            if self.spec.reward_clip is not None:   # learning rewards: each step clipped (logged returns are not)
                reward = np.clip(reward, -self.spec.reward_clip, self.spec.reward_clip)
            self.replay.add(self.obs, actions, reward, info["next_obs"], terminated, truncated)
            self.obs = next_obs
            self.env_steps += self.spec.num_envs
        return {"epsilon": self.epsilon()}

    # --------------------------------------------------------------- learning
    def learning_rate(self) -> float:
        """The (optionally linearly annealed) learning rate at the current env step."""
        if self.cfg.learning_rate_final is None:
            return self.cfg.learning_rate
        frac = min(1.0, self.env_steps / max(1, self.total_steps))
        return self.cfg.learning_rate + frac * (self.cfg.learning_rate_final - self.cfg.learning_rate)

    def learn(self) -> dict[str, Any]:
        """``gradient_steps`` double-DQN updates from replayed n-step transitions."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        losses, q_means = [], []
        shared_target = self.shares_target
        for _ in range(cfg.gradient_steps):
            batch = self.replay.sample(cfg.batch_size)
            loss, q, td = self.gradient_step(batch, shared_target)
            if cfg.prioritized:
                self.replay.update_priorities(batch.indices, td.cpu().numpy())
            self.grad_steps += 1
            if not shared_target and (self.grad_steps % cfg.target_update_interval == 0 or cfg.tau < 1.0):
                self.sync_target()
            losses.append(loss.detach())
            q_means.append(q.detach().mean())
        if not losses:
            return {}
        return {"loss": torch.stack(losses).mean().item(), "q_mean": torch.stack(q_means).mean().item(),
                "learning_rate": self.learning_rate()}

    def gradient_step(self, batch: Any, shared_target: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One gradient step on a sampled batch: loss, the chosen Q-values ``(M, B)`` and ``|TD|``."""
        cfg = self.cfg
        with torch.no_grad():
            next_value = bootstrap_values(self.q, self.q_target, batch.next_obs, self.augment,
                                          self.target_copies, cfg.double, shared_target)
            target = batch.reward + batch.discount * next_value
        q = chosen_q_values(self.q, batch.obs, batch.action, self.augment, self.q_copies)
        loss, td = q_learning_loss(q, target, batch.weights, cfg.loss, self.q_average)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        return loss, q, td

    @torch.no_grad()
    def sync_target(self) -> None:
        """Polyak-average (or copy, tau = 1) the online weights into the target network."""
        torch._foreach_lerp_(list(self.q_target.parameters()), list(self.q.parameters()), self.cfg.tau)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        if self.shares_target:   # the copy skipped after each update, made now that the target is read
            self.sync_target()
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "augment": self.augment.state_dict(),
                **self.loop_state(include_replay)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "augment" in state:
            self.augment.load_state_dict(state["augment"])
        self.load_loop_state(state)
