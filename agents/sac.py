"""Soft actor-critic (Haarnoja et al. 2018) from pixels or states, with DrQ's augmentation (Kostrikov et al. 2020).

Config -> networks -> acting -> learning. The original DrQ is this agent: an
image encoder ``f`` shared by the critic and the actor (the actor's gradient stops
at the encoder), twin critics ``Q_1, Q_2`` with a Polyak-averaged target copy,
a tanh-squashed Gaussian policy ``pi`` and a learned temperature ``alpha``. With
``aug`` the random shift of ``agents/_augment.py``, K views of the next
observation and M of the current one (drawn independently):

    y   = r + gamma * (1/K) sum_k [ min_i Q'_i(aug_k(s'), a'_k) - alpha log pi(a'_k | aug_k(s')) ],
          a'_k ~ pi(. | aug_k(s'))
    L_Q = (1/M) sum_m sum_i (Q_i(aug_m(s), a) - y)^2
    L_pi = E[ alpha log pi(a~ | aug_1(s)) - min_i Q_i(aug_1(s), a~) ],  a~ ~ pi(. | aug_1(s))
    L_alpha = -alpha * E[ log pi(a~ | aug_1(s)) + target_entropy ]

Vector observations use an MLP torso and no augmentation (plain SAC). Terminal
transitions do not bootstrap; truncated ones bootstrap from the final observation
(the replay's ``discount``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import envs.pixels  # noqa: F401  (registers Arbor/PixelPendulum-v0 for env=gym)
from agents._augment import Augmentation
from agents.base import AgentConfig, ReplayAgent, register
from agents.dqn import augmented_copies
from agents.networks import VectorTorso, mlp, to_tensor
from replay import TransitionReplay
from runtime.errors import UserError


@dataclasses.dataclass
class SACConfig(AgentConfig):
    """Hyperparameters; defaults are DrQ's (Kostrikov et al. 2020, Table 1) where CPU budgets allow."""

    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    batch_size: int = 128
    buffer_size: int = 100_000
    learning_starts: int = 1000
    gamma: float = 0.99
    n_step: int = 1
    collect_steps: int = 1
    gradient_steps: int = 1
    critic_tau: float = 0.01
    encoder_tau: float = 0.05
    actor_update_interval: int = 2
    target_update_interval: int = 2
    init_temperature: float = 0.1
    target_entropy: float | None = None     # null: -dim(A)
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    feature_dim: int = 50
    conv_channels: int = 32
    conv_strides: list[int] = dataclasses.field(default_factory=lambda: [2, 1, 1, 1])   # one 3x3 conv each
    augmentation: str = "shift"
    image_pad: int = 4
    intensity_scale: float = 0.05
    target_augmentations: int = 1           # K
    q_augmentations: int = 1                # M

    def validate(self) -> None:
        self.check_choices({"augmentation": Augmentation.KINDS})
        checks = {
            "actor_lr": self.actor_lr > 0, "critic_lr": self.critic_lr > 0, "alpha_lr": self.alpha_lr >= 0,
            "batch_size": self.batch_size > 0, "buffer_size": self.buffer_size > 0,
            "learning_starts": self.learning_starts >= 0, "gamma": 0 <= self.gamma <= 1, "n_step": self.n_step >= 1,
            "collect_steps": self.collect_steps >= 1, "gradient_steps": self.gradient_steps >= 0,
            "critic_tau": 0 < self.critic_tau <= 1, "encoder_tau": 0 < self.encoder_tau <= 1,
            "actor_update_interval": self.actor_update_interval >= 1,
            "target_update_interval": self.target_update_interval >= 1,
            "init_temperature": self.init_temperature > 0, "log_std_min": self.log_std_min < self.log_std_max,
            "feature_dim": self.feature_dim >= 1, "conv_channels": self.conv_channels >= 1,
            "conv_strides": len(self.conv_strides) >= 1 and all(x >= 1 for x in self.conv_strides), "image_pad": self.image_pad >= 0,
            "intensity_scale": self.intensity_scale >= 0, "target_augmentations": self.target_augmentations >= 1,
            "q_augmentations": self.q_augmentations >= 1, "hidden": len(self.hidden) >= 1,
        }
        self.check_ranges(checks)


# ------------------------------------------------------------------ networks
class PixelEncoder(nn.Module):
    """DrQ's encoder: 3x3 convolutions (DrQ: strides 2, 1, 1, 1), a linear layer, LayerNorm, tanh."""

    def __init__(self, shape: tuple[int, ...], channels: int, strides: list[int], feature_dim: int):
        super().__init__()
        convs: list[nn.Module] = []
        for i, stride in enumerate(strides):
            convs += [nn.Conv2d(shape[0] if i == 0 else channels, channels, 3, stride=stride), nn.ReLU()]
        self.conv = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *shape)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())
        self.out_features = feature_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(obs.float() / 255.0))


def make_encoder(space: gym.Space, cfg: SACConfig) -> nn.Module:
    """Pixel encoder for image stacks, an MLP for vectors."""
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 3:
        return PixelEncoder(space.shape, cfg.conv_channels, cfg.conv_strides, cfg.feature_dim)
    return VectorTorso(int(np.prod(space.shape)), cfg.hidden[:1])


class Critic(nn.Module):
    """Encoder plus twin Q heads on ``[features, action]``."""

    def __init__(self, space: gym.Space, action_dim: int, cfg: SACConfig):
        super().__init__()
        self.encoder = make_encoder(space, cfg)
        sizes = [self.encoder.out_features + action_dim, *cfg.hidden, 1]
        self.q1, self.q2 = mlp(sizes), mlp(sizes)

    def forward(self, obs: Any, action: torch.Tensor, detach_encoder: bool = False):
        features = self.encoder(obs)
        if detach_encoder:
            features = features.detach()
        x = torch.cat([features, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on the critic's (detached) encoder features."""

    def __init__(self, feature_dim: int, action_dim: int, cfg: SACConfig):
        super().__init__()
        self.net = mlp([feature_dim, *cfg.hidden, 2 * action_dim])
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, features: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None):
        """(action in [-1, 1], its log-probability); the noise comes from ``generator``."""
        mean, log_std = self.net(features).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        if deterministic:
            return torch.tanh(mean), None
        std = log_std.exp()
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        pre_tanh = mean + std * noise
        action = torch.tanh(pre_tanh)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return action, log_prob


@register("sac")
class SAC(ReplayAgent):
    """SAC / DrQ over a vector env with a continuous (Box) action space."""

    Config = SACConfig

    def __init__(self, cfg: SACConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        if not isinstance(spec.action_space, gym.spaces.Box):
            raise UserError(f"sac needs a continuous (Box) action space; {spec.name} has {spec.action_space}",
                            key="agent")
        if cfg.augmentation != "none" and not spec.is_image:
            raise UserError(f"augmentation {cfg.augmentation!r} needs image observations; {spec.name} has "
                            f"{spec.observation_space} (use agent.augmentation=none)", key="agent.augmentation")
        torch.manual_seed(seed)
        action_dim = int(np.prod(spec.action_space.shape))
        self.action_low = torch.as_tensor(spec.action_space.low, dtype=torch.float32, device=device)
        self.action_high = torch.as_tensor(spec.action_space.high, dtype=torch.float32, device=device)
        self.critic = Critic(spec.observation_space, action_dim, cfg).to(device)
        self.critic_target = Critic(spec.observation_space, action_dim, cfg).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.actor = Actor(self.critic.encoder.out_features, action_dim, cfg).to(device)
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=device, requires_grad=True)
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.augment = Augmentation(cfg.augmentation, cfg.image_pad, cfg.intensity_scale, seed=seed * 1_000_003 + 29)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator()       # the policy's sampling noise
        self.generator.manual_seed(seed * 1_000_003 + 31)
        self.replay = TransitionReplay(
            capacity=cfg.buffer_size, observation_space=spec.observation_space, action_space=spec.action_space,
            num_envs=spec.num_envs, n_step=cfg.n_step, gamma=cfg.gamma, frame_stack=spec.frame_stack, seed=seed,
            device=device)
        self.env_steps = 0
        self.grad_steps = 0
        self.obs = None if env is None else env.reset(seed=seed)[0]

    # ----------------------------------------------------------------- acting
    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def scale(self, action: torch.Tensor) -> torch.Tensor:
        """Map ``[-1, 1]`` to the action space's bounds."""
        return self.action_low + 0.5 * (action + 1.0) * (self.action_high - self.action_low)

    @torch.no_grad()
    def act(self, obs: Any, explore: bool = False) -> np.ndarray:
        """The policy's mean action, or a sample from it when ``explore``."""
        features = self.critic.encoder(to_tensor(obs, self.device))
        action, _ = self.actor(features, deterministic=not explore, generator=self.generator)
        return self.scale(action).cpu().numpy()

    def collect(self) -> None:
        """Step the vector env ``collect_steps`` times (uniform random actions before ``learning_starts``)."""
        for _ in range(self.cfg.collect_steps):
            if self.env_steps < self.cfg.learning_starts:
                unit = self.rng.uniform(-1.0, 1.0, (self.spec.num_envs, *self.spec.action_space.shape))
                actions = self.scale(torch.as_tensor(unit, dtype=torch.float32)).numpy()
            else:
                actions = self.act(self.obs, explore=True)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            self.replay.add(self.obs, actions, reward, info["next_obs"], terminated, truncated)
            self.obs = next_obs
            self.env_steps += self.spec.num_envs

    # --------------------------------------------------------------- learning
    def unit_action(self, action: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale`: stored env actions back to ``[-1, 1]``."""
        return 2.0 * (action.float() - self.action_low) / (self.action_high - self.action_low) - 1.0

    def critic_target_value(self, next_obs: Any, reward: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
        """``y``: the soft target averaged over K augmented views of the next observation."""
        k = self.cfg.target_augmentations
        with torch.no_grad():
            views = augmented_copies(next_obs, self.augment, k)
            next_action, next_log_prob = self.actor(self.critic.encoder(views), generator=self.generator)
            q1, q2 = self.critic_target(views, next_action)
            soft = torch.min(q1, q2) - self.alpha.detach() * next_log_prob
            return reward + discount * soft.view(k, -1).mean(dim=0)

    def learn(self) -> dict[str, float]:
        cfg = self.cfg
        metrics: dict[str, list[float]] = {"critic_loss": [], "actor_loss": [], "alpha": [], "entropy": []}
        for _ in range(cfg.gradient_steps):
            batch = self.replay.sample(cfg.batch_size)
            action = self.unit_action(batch.action).view(cfg.batch_size, -1)
            target = self.critic_target_value(batch.next_obs, batch.reward, batch.discount)
            m = cfg.q_augmentations
            views = augmented_copies(batch.obs, self.augment, m)
            q1, q2 = self.critic(views, action.repeat(m, 1))
            expanded = target.repeat(m)
            critic_loss = (F.mse_loss(q1, expanded) + F.mse_loss(q2, expanded))
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_optimizer.step()
            metrics["critic_loss"].append(critic_loss.item())
            self.grad_steps += 1
            if self.grad_steps % cfg.actor_update_interval == 0:
                first = views[: cfg.batch_size] if not isinstance(views, dict) else \
                    {key: value[: cfg.batch_size] for key, value in views.items()}
                self.update_actor_and_alpha(first, metrics)
            if self.grad_steps % cfg.target_update_interval == 0:
                self.sync_target()
        return {key: float(np.mean(values)) for key, values in metrics.items() if values}

    def update_actor_and_alpha(self, obs: Any, metrics: dict[str, list[float]]) -> None:
        """Policy step on detached encoder features, then the temperature step."""
        with torch.no_grad():
            features = self.critic.encoder(obs)
        action, log_prob = self.actor(features, generator=self.generator)
        x = torch.cat([features, action], dim=-1)
        q = torch.min(self.critic.q1(x), self.critic.q2(x)).squeeze(-1)
        actor_loss = (self.alpha.detach() * log_prob - q).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        alpha_loss = -(self.alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()
        metrics["actor_loss"].append(actor_loss.item())
        metrics["alpha"].append(self.alpha.item())
        metrics["entropy"].append(-log_prob.mean().item())

    @torch.no_grad()
    def sync_target(self) -> None:
        """Polyak averaging: Q heads with ``critic_tau``, the encoder with ``encoder_tau``."""
        for name, target in self.critic_target.named_parameters():
            online = self.critic.get_parameter(name)
            target.lerp_(online, self.cfg.encoder_tau if name.startswith("encoder.") else self.cfg.critic_tau)

    def parameters_finite(self) -> bool:
        return super().parameters_finite() and bool(torch.isfinite(self.log_alpha))

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        state = {
            "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
            "actor": self.actor.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(), "augment": self.augment.state_dict(),
            "generator": self.generator.get_state(), **self.loop_state(include_replay),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor.load_state_dict(state["actor"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.augment.load_state_dict(state["augment"])
        self.generator.set_state(state["generator"])
        self.load_loop_state(state)
