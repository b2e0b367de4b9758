"""MuZero: planning with a learned model (Schrittwieser et al. 2020).

Three functions learned end to end, none of them asked to predict observations:

    representation   s^0 = h_theta(o_t)                         (latent state, min-max scaled)
    dynamics         r^k, s^k = g_theta(s^{k-1}, a_{t+k-1})     (reward and next latent state)
    prediction       p^k, v^k = f_theta(s^k)                    (policy logits and value)

**Acting.** Every vector-env step searches all environments in one batched call of
``planners.mcts`` (pUCT as in the paper, or Gumbel search, ``algorithm``). The search's
model function is the learned model: latent states of tree ``b`` live in a tensor
``latent[b, node]``; each simulation step runs the dynamics and prediction on the
leaves' parents and actions. Q-values are ``r + discount * V`` with rewards on edges
and tree-wide min-max normalisation (the core's). The root gets Dirichlet noise in
self-play; the action is sampled from the visit counts ``N(a)^(1/T)`` with the paper's
schedule ``T = 1, 0.5, 0.25`` over the first half, third quarter and last quarter of
the run (Gumbel: the search's own selected action); on board games ``temperature_moves``
can limit sampling to each game's first plies, as AlphaZero does. Evaluation searches without noise
and plays the most visited action.

**Targets** for a sampled position ``t`` and unroll step ``k = 0..K``:

    policy   pi_{t+k}  (the search's visit distribution, or Gumbel's improved policy)
    reward   u_{t+k}   (for k >= 1: the reward of the edge a_{t+k-1})
    value    z_{t+k} = sum_{i<n'} gamma^i u_{t+k+i} + gamma^{n'} v_target(o_{t+k+n'})

with ``n' = n`` unless the episode ends first (then ``n'`` reaches the final
observation, whose value is 0 after a termination and ``v_target`` after a
truncation). With ``value_bootstrap: search``, ``v_target`` is the root value the search
computed when it acted there (the paper's targets); with ``network`` it is the value a
target network (copied every ``target_update_interval`` gradient steps) predicts from
the stored observation, as in MuZero Reanalyse (appendix H) and EfficientZero. The final
observation of a truncated episode always takes the target network's value (no search
ran there). Two-player games take every term from the
view of the player to move at ``t + k`` (a sign flip per ply of the other player).
Past the end of an episode that terminated, the reward and value targets are 0
(absorbing state) and the policy has no loss; past a truncation nothing is trained.
The unroll goes on past the end with uniformly random actions (EfficientZero's and
LightZero's buffers pad them so), so the model learns that every action from an
absorbing state stays in it. The search takes any action there: trained with the
replay's padding action alone, a tic-tac-toe model valued the states past the end
at 0.00-0.08 on that action's path and at 0.26-0.36 (mean |v|, target 0) on random
paths, and its play got worse with more simulations.

**Reanalyse.** A fraction ``reanalyse_fraction`` of each batch gets fresh policy
targets: its positions ``t..t+K`` are searched again with the latest network.

**Loss** (per sample, weighted by prioritized replay's importance weights ``w``):

    l = sum_{k=0}^{K} scale_k [ CE(pi_{t+k}, p^k) + value_loss_weight * CE(phi(z_{t+k}), v^k)
                                + 1[k>0] ( CE(phi(u_{t+k}), r^k) + lambda_c L_c^k ) - c_H H(p^k) ]

``phi`` is the two-hot categorical projection of ``h(x) = sign(x)(sqrt(|x|+1)-1) + eps x``
onto the integer support ``{-S..S}`` (``agents/_latent.py``); scalars are read back
with ``h^-1`` of the expectation. The gradient of the step losses ``k >= 1`` is scaled
by ``1/K`` and the gradient entering the dynamics' latent input by ``1/2``
(``scale(x, s) = s x + (1 - s) stopgrad(x)``; appendix G). Weight decay through the
optimizer. ``c_H = policy_entropy_weight`` (0 in the paper) adds an entropy bonus on
the predicted policy: with two actions and a self-produced target, a policy that has
become nearly deterministic otherwise has no gradient back (CartPole seed 2 collapsed so).
``L_c^k = -cos( P(G(s^k)), stopgrad(G(h(o_{t+k}))) )`` is EfficientZero's temporal
consistency loss (Ye et al. 2021), off unless ``consistency_weight = lambda_c > 0``
(EfficientZero: 2): the unrolled latent ``s^k``, through a projection ``G`` and a
predictor ``P``, should point where the representation of the real observation
``o_{t+k}`` points; masked past the episode's end.

**Value prefix** (EfficientZero, off unless ``value_prefix``): the reward output of
the dynamics becomes an LSTM over the unrolled steps, whose head predicts the sum of
the rewards since the last reset (``r^1 + ... + r^k``) instead of ``r^k`` alone; the
LSTM state and the sum restart every ``lstm_horizon`` steps. Its target replaces the
reward target in the loss (:func:`value_prefix_targets`). The search carries each
node's LSTM state, prefix and depth, and gives an edge the reward ``prefix(child) -
prefix(parent)`` (``prefix(child)`` where the parent starts a new prefix: the root and
every ``lstm_horizon``-th depth). Predicting a sum lets the model place a reward without
knowing its exact step, which EfficientZero found easier to learn. One-player tasks only.
New positions enter the replay with the maximum priority; after each update a sampled
start gets priority ``|v^0 - z_t|`` (``alpha``, ``beta`` from the paper).

**Board games** (``env.kind: game``, ``spec.num_players == 2``): the same agent with
the learned model in place of the simulator (``planners.mcts`` mode ``alphazero``:
rewards are the mover's, values the player to move's, signs flip along each edge);
only the root's legal moves are known to the search.

Config -> networks -> targets -> acting (search, self-play) -> learning -> checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents._latent import (
    MLPRepresentation,
    ResidualTorso,
    scalar_to_support,
    scale_latent,
    support_to_scalar,
)
from agents.base import Agent, AgentConfig, register
from agents.networks import ResidualBlock, mlp
from replay import SequenceReplay
from runtime.errors import UserError


# =============================================================================== config
@dataclasses.dataclass
class MuZeroConfig(AgentConfig):
    """Hyperparameters (conf/agent/muzero.yaml cites their sources; conf/tuned/ per environment)."""

    # network
    torso: str = "auto"                 # auto | mlp | conv   (auto: conv for images >= 8 pixels a side)
    hidden: list[int] = dataclasses.field(default_factory=lambda: [128])   # MLP layers of each function
    latent_dim: int = 64                # MLP latent size
    channels: int = 64                  # conv latent channels
    blocks: int = 1                     # residual blocks in representation, dynamics and prediction
    support_size: int = 300             # value support: atoms support_step * {-S..S} in h-space
    support_step: float = 1.0           # spacing of the value atoms (the paper's: 1)
    zero_init_heads: bool = False       # zero the last layer of the reward, value and policy heads
    reward_support_size: int = 300      # reward support
    # search
    algorithm: str = "puct"             # puct | gumbel
    num_simulations: int = 50
    eval_simulations: int | None = None
    pb_c_init: float = 1.25
    pb_c_base: float = 19652.0
    dirichlet_alpha: float = 0.25
    dirichlet_fraction: float = 0.25
    unvisited_value: str = "zero"       # pUCT value of unvisited children: zero (paper) | parent (EfficientZero)
    max_num_considered_actions: int = 16
    gumbel_scale: float = 1.0
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    temperature: float = 1.0            # visit temperature; x0.5 after half the run, x0.25 after 3/4
    temperature_decay: bool = True
    temperature_moves: int | None = None   # board games: sample only the first N plies of a game, then
                                           # play the most visited move (None: sample every ply)
    # targets
    discount: float = 0.997
    unroll_steps: int = 5               # K
    n_step: int = 10                    # n
    value_bootstrap: str = "search"     # search: stored root values (paper) | network: target network (Reanalyse)
    target_update_interval: int = 100   # gradient steps between target-network copies
    reanalyse_fraction: float = 0.0
    # replay and learning
    collect_steps: int = 1              # vector-env steps per train_iteration
    buffer_size: int = 100_000          # positions kept
    learning_starts: int = 1_000        # env steps before the first update
    batch_size: int = 256
    train_ratio: float = 1.0            # replayed windows per new env step
    optimizer: str = "adam"             # adam | sgd (momentum 0.9, the paper's)
    learning_rate: float = 1e-3
    learning_rate_final: float | None = None   # linear anneal over the run (None: constant)
    weight_decay: float = 1e-4
    value_loss_weight: float = 0.25
    consistency_weight: float = 0.0     # lambda_c: EfficientZero's self-supervised consistency loss (0: off)
    consistency_dim: int = 128          # projection width of that loss
    value_prefix: bool = False          # EfficientZero's value prefix: an LSTM over the unroll predicts summed rewards
    lstm_hidden: int = 64               # its LSTM width (EfficientZero Atari: 512)
    lstm_horizon: int = 5               # steps after which the prefix restarts from 0 (EfficientZero: 5)
    policy_entropy_weight: float = 0.0  # c_H: subtract c_H * H(p^k) (off in the paper; keeps small-action policies alive)
    max_grad_norm: float = 5.0
    prioritized: bool = True
    priority_alpha: float = 1.0
    priority_beta: float = 1.0

    def validate(self) -> None:
        choices = {"torso": ("auto", "mlp", "conv"), "algorithm": ("puct", "gumbel"), "optimizer": ("adam", "sgd"),
                   "value_bootstrap": ("search", "network"), "unvisited_value": ("zero", "parent")}
        self.check_choices(choices)
        checks = {
            "hidden": all(int(h) >= 1 for h in self.hidden), "latent_dim": self.latent_dim >= 1,
            "channels": self.channels >= 2, "blocks": self.blocks >= 0, "support_size": self.support_size >= 1,
            "support_step": self.support_step > 0,
            "reward_support_size": self.reward_support_size >= 1, "num_simulations": self.num_simulations >= 1,
            "eval_simulations": self.eval_simulations is None or self.eval_simulations >= 1,
            "pb_c_init": self.pb_c_init > 0, "pb_c_base": self.pb_c_base > 0,
            "dirichlet_alpha": self.dirichlet_alpha > 0, "dirichlet_fraction": 0 <= self.dirichlet_fraction <= 1,
            "max_num_considered_actions": self.max_num_considered_actions >= 1,
            "gumbel_scale": self.gumbel_scale >= 0, "value_scale": self.value_scale > 0,
            "maxvisit_init": self.maxvisit_init >= 0, "temperature": self.temperature > 0,
            "temperature_moves": self.temperature_moves is None or self.temperature_moves >= 0,
            "discount": 0 < self.discount <= 1, "unroll_steps": self.unroll_steps >= 1, "n_step": self.n_step >= 1,
            "target_update_interval": self.target_update_interval >= 1,
            "reanalyse_fraction": 0 <= self.reanalyse_fraction <= 1, "collect_steps": self.collect_steps >= 1,
            "buffer_size": self.buffer_size >= 1, "learning_starts": self.learning_starts >= 0,
            "batch_size": self.batch_size >= 1, "train_ratio": self.train_ratio >= 0,
            "learning_rate": self.learning_rate > 0,
            "learning_rate_final": self.learning_rate_final is None or self.learning_rate_final >= 0,
            "weight_decay": self.weight_decay >= 0, "value_loss_weight": self.value_loss_weight >= 0,
            "policy_entropy_weight": self.policy_entropy_weight >= 0,
            "consistency_weight": self.consistency_weight >= 0, "consistency_dim": self.consistency_dim >= 1,
            "lstm_hidden": self.lstm_hidden >= 1, "lstm_horizon": self.lstm_horizon >= 1,
            "max_grad_norm": self.max_grad_norm > 0, "priority_alpha": self.priority_alpha >= 0,
            "priority_beta": self.priority_beta >= 0,
        }
        self.check_ranges(checks)


# ============================================================================= networks
class _Model(nn.Module):
    """What the MLP and convolutional models share: the reward or value-prefix output of the dynamics.

    Subclasses define ``_dynamics_features(latent, action) -> (next_latent, features)``,
    ``reward_head`` and, with ``value_prefix``, ``prefix_lstm`` (else None).
    """

    prefix_lstm: nn.LSTMCell | None

    def dynamics(self, latent: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next latent state and reward logits (models without a value prefix)."""
        if self.prefix_lstm is not None:
            raise RuntimeError("this model predicts value prefixes: call dynamics_prefix with the LSTM state")
        next_latent, features = self._dynamics_features(latent, action)
        return next_latent, self.reward_head(features)

    def dynamics_prefix(self, latent: torch.Tensor, action: torch.Tensor,
                        hidden: tuple[torch.Tensor, torch.Tensor] | None
                        ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Next latent state, value-prefix logits and the LSTM state ``(h, c)`` after this step
        (``hidden=None``: the zero state, where a prefix starts)."""
        next_latent, features = self._dynamics_features(latent, action)
        h, c = self.prefix_lstm(features, hidden)
        return next_latent, self.reward_head(h), (h, c)


def _prefix_head(width: int, hidden: list[int], out: int) -> nn.Sequential:
    """LSTM output -> LayerNorm -> ReLU -> MLP -> support logits (EfficientZero's, LayerNorm
    for its BatchNorm so that training and evaluation modes agree)."""
    layers: list[nn.Module] = [nn.LayerNorm(width), nn.ReLU()]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out))


class MLPModel(_Model):
    """Representation, dynamics and prediction as MLPs over a latent vector (vectors, small boards)."""

    def __init__(self, obs_dim: int, num_actions: int, cfg: MuZeroConfig):
        super().__init__()
        L, hidden = cfg.latent_dim, list(cfg.hidden)
        self.num_actions = num_actions
        self.representation_net = MLPRepresentation(obs_dim, hidden, L)
        self.dynamics_trunk = nn.Sequential(mlp([L + num_actions, *hidden], norm=True), nn.LayerNorm(hidden[-1]),
                                            nn.ReLU())
        self.next_state = nn.Linear(hidden[-1], L)
        reward_atoms = 2 * cfg.reward_support_size + 1
        if cfg.value_prefix:
            self.prefix_lstm = nn.LSTMCell(hidden[-1], cfg.lstm_hidden)
            self.reward_head = _prefix_head(cfg.lstm_hidden, [], reward_atoms)
        else:
            self.prefix_lstm = None
            self.reward_head = nn.Linear(hidden[-1], reward_atoms)
        self.prediction_trunk = nn.Sequential(mlp([L, *hidden], norm=True), nn.LayerNorm(hidden[-1]), nn.ReLU())
        self.policy_head = nn.Linear(hidden[-1], num_actions)
        self.value_head = nn.Linear(hidden[-1], 2 * cfg.support_size + 1)
        self.latent_shape = (L,)

    def representation(self, obs: torch.Tensor) -> torch.Tensor:
        return self.representation_net(obs)

    def _dynamics_features(self, latent: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dynamics_trunk(torch.cat([latent, F.one_hot(action, self.num_actions).to(latent.dtype)], -1))
        return scale_latent(self.next_state(x)), x

    def prediction(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prediction_trunk(latent)
        return self.policy_head(x), self.value_head(x)


def _conv_reduce(channels: int, plane_shape: tuple[int, int]) -> tuple[nn.Sequential, int]:
    """1x1 convolution to at most 16 planes, flattened (the start of MuZero's heads, narrowed for
    CPU), and the number of features it puts out."""
    reduced = min(16, channels)
    return (nn.Sequential(nn.Conv2d(channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced), nn.ReLU(),
                          nn.Flatten()), reduced * plane_shape[0] * plane_shape[1])


def _conv_head(channels: int, plane_shape: tuple[int, int], hidden: int, out: int) -> nn.Sequential:
    """1x1 convolution to 16 planes, then an MLP (MuZero's heads, narrowed for CPU)."""
    reduce, features = _conv_reduce(channels, plane_shape)
    return nn.Sequential(*reduce, nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, out))


class ConvModel(_Model):
    """Residual convolutional model over latent planes (Atari with down-sampling, MinAtar without)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, cfg: MuZeroConfig, downsample: bool,
                 scale: float):
        super().__init__()
        C = cfg.channels
        self.num_actions = num_actions
        self.representation_net = ResidualTorso(obs_shape, C, cfg.blocks, downsample, scale)
        self.latent_shape = self.representation_net.latent_shape
        planes = tuple(self.latent_shape[1:])
        hidden = int(cfg.hidden[-1])
        self.dynamics_stem = nn.Sequential(nn.Conv2d(C + num_actions, C, 3, padding=1, bias=False),
                                           nn.BatchNorm2d(C), nn.ReLU())
        self.dynamics_tower = nn.Sequential(*[ResidualBlock(C) for _ in range(cfg.blocks)])
        reward_atoms = 2 * cfg.reward_support_size + 1
        if cfg.value_prefix:    # EfficientZero: reduced planes -> LSTM -> MLP
            self.reward_reduce, features = _conv_reduce(C, planes)
            self.prefix_lstm = nn.LSTMCell(features, cfg.lstm_hidden)
            self.reward_head = _prefix_head(cfg.lstm_hidden, [hidden], reward_atoms)
        else:
            self.reward_reduce = nn.Identity()
            self.prefix_lstm = None
            self.reward_head = _conv_head(C, planes, hidden, reward_atoms)
        self.prediction_tower = nn.Sequential(*[ResidualBlock(C) for _ in range(cfg.blocks)])
        self.policy_head = _conv_head(C, planes, hidden, num_actions)
        self.value_head = _conv_head(C, planes, hidden, 2 * cfg.support_size + 1)

    def representation(self, obs: torch.Tensor) -> torch.Tensor:
        return self.representation_net(obs)

    def _dynamics_features(self, latent: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, hh, ww = latent.shape
        planes = F.one_hot(action, self.num_actions).to(latent.dtype)[:, :, None, None].expand(n, -1, hh, ww)
        x = self.dynamics_tower(self.dynamics_stem(torch.cat([latent, planes], 1)))
        return scale_latent(x), self.reward_reduce(x)

    def prediction(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prediction_tower(latent)
        return self.policy_head(x), self.value_head(x)


class ConsistencyHeads(nn.Module):
    """EfficientZero's projection and prediction heads (SimSiam) over flattened latents.

    ``project``: Linear-LayerNorm-ReLU-Linear-LayerNorm to ``dim``; ``predict``: a
    bottleneck MLP ``dim -> dim/2 -> dim``. LayerNorm replaces EfficientZero's BatchNorm so
    that both branches behave the same in training and evaluation modes.
    """

    def __init__(self, latent_features: int, dim: int):
        super().__init__()
        self.projection = nn.Sequential(nn.Flatten(), nn.Linear(latent_features, dim), nn.LayerNorm(dim), nn.ReLU(),
                                        nn.Linear(dim, dim), nn.LayerNorm(dim))
        hidden = max(1, dim // 2)
        self.prediction = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                        nn.Linear(hidden, dim))

    def project(self, latent: torch.Tensor) -> torch.Tensor:
        return self.projection(latent)

    def predict(self, latent: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.projection(latent))


def make_model(spec, cfg: MuZeroConfig) -> nn.Module:
    """The model family that fits the observation space, with consistency heads when that loss is on."""
    model = _make_model(spec, cfg)
    if cfg.zero_init_heads:
        zero_last_layers(model.reward_head, model.value_head, model.policy_head)
    if cfg.consistency_weight > 0:
        model.consistency = ConsistencyHeads(int(np.prod(model.latent_shape)), cfg.consistency_dim)
    return model


def zero_last_layers(*heads: nn.Module) -> None:
    """Zero the weights and bias of each head's last linear layer, so that a fresh model
    predicts reward 0, value 0 and a uniform policy whatever its input (LightZero's
    ``last_linear_layer_init_zero``). With random last layers the expectation over a wide
    support starts anywhere: on 2S + 1 atoms its spread grows as sqrt(S), and the search
    then bootstraps from those made-up values until the targets wash them out."""
    for head in heads:
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]   # a Linear head is its own last
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()


def _make_model(spec, cfg: MuZeroConfig) -> nn.Module:
    """The model family that fits the observation space (``torso``)."""
    space = spec.observation_space
    if not isinstance(space, gym.spaces.Box):
        raise UserError(f"muzero needs array observations, got {space}", key="env")
    shape = tuple(space.shape)
    torso = cfg.torso
    if torso == "auto":
        torso = "conv" if len(shape) == 3 and min(shape[1:]) >= 8 else "mlp"
    if torso == "conv":
        if len(shape) != 3:
            raise UserError(f"agent.torso=conv needs image observations, got shape {shape}", key="agent.torso")
        downsample = min(shape[1:]) >= 36
        scale = 255.0 if space.dtype == np.uint8 else 1.0
        return ConvModel(shape, spec.num_actions, cfg, downsample, scale)
    return MLPModel(int(np.prod(shape)), spec.num_actions, cfg)


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``scale`` (MuZero appendix G)."""
    return x * scale + x.detach() * (1.0 - scale)


# ============================================================================= targets
def bootstrap_positions(mask: torch.Tensor, terminated: torch.Tensor, n_step: int,
                        unroll_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each position's n-step value target bootstraps, for windows of ``mask``/``terminated`` ``[B, W]``.

    Returns ``position [B, K+1]`` (``min(k + n, steps)``, ``steps`` = valid steps in the
    window), ``use [B, K+1]`` (False where that is the final observation of a terminated
    episode: value 0) and ``terminated_end [B]`` (the window's episode ended by termination).
    """
    steps = mask.long().sum(1)
    terminated_end = (terminated & mask).any(1)
    k = torch.arange(unroll_steps + 1, device=mask.device)
    position = torch.minimum(k[None, :] + n_step, steps[:, None])
    use = ~(terminated_end[:, None] & (position == steps[:, None]))
    return position, use, terminated_end


def unroll_targets(reward: torch.Tensor, mask: torch.Tensor, terminated: torch.Tensor,
                   bootstrap_value: torch.Tensor, gamma: float, n_step: int, unroll_steps: int,
                   to_play: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Value, reward targets and loss masks for unroll steps ``k = 0..K`` (module docstring formulas).

    ``reward, mask, terminated [B, W]`` are a :class:`SequenceBatch`'s; ``bootstrap_value
    [B, K+1]`` is the value of the observation at :func:`bootstrap_positions` from the view
    of the player to move there; ``to_play [B, W]`` (two-player games) flips the sign of
    quantities of the other player. Returns ``value [B, K+1]``, ``reward [B, K+1]``
    (column 0 unused), ``value_mask``, ``reward_mask``, ``policy_mask`` (bool ``[B, K+1]``).
    """
    K = unroll_steps
    B, W = reward.shape
    if W < K + n_step + 1:
        raise ValueError(f"windows of width {W} are too short for unroll_steps={K}, n_step={n_step}")
    reward = reward.double() * mask
    position, use, terminated_end = bootstrap_positions(mask, terminated, n_step, K)
    steps = mask.long().sum(1)
    player = to_play.long() if to_play is not None else None
    value = torch.zeros(B, K + 1, dtype=torch.float64, device=reward.device)
    rows = torch.arange(B, device=reward.device)
    for k in range(K + 1):
        end = position[:, k]
        total = torch.zeros(B, dtype=torch.float64, device=reward.device)
        for i in range(n_step):
            j = k + i
            inside = (j < end).double()
            sign = 1.0 if player is None else (player[:, j] == player[:, k]).double() * 2 - 1
            total += gamma**i * reward[:, j] * inside * sign
        sign_b = 1.0 if player is None else (player[rows, end.clamp(max=W - 1)] == player[:, k]).double() * 2 - 1
        boot = bootstrap_value[:, k].double() * use[:, k] * sign_b
        total += torch.pow(torch.full_like(total, gamma), (end - k).clamp(min=0).double()) * boot
        value[:, k] = torch.where(k < steps, total, torch.zeros_like(total))
    k = torch.arange(K + 1, device=reward.device)
    beyond = k[None, :] >= steps[:, None]
    value_mask = ~beyond | terminated_end[:, None]
    reward_target = torch.zeros(B, K + 1, dtype=torch.float64, device=reward.device)
    reward_target[:, 1:] = reward[:, :K]
    reward_mask = torch.zeros(B, K + 1, dtype=torch.bool, device=reward.device)
    reward_mask[:, 1:] = (k[None, 1:] - 1 < steps[:, None]) | terminated_end[:, None]
    return {"value": value.float(), "reward": reward_target.float(), "value_mask": value_mask,
            "reward_mask": reward_mask, "policy_mask": mask[:, :K + 1].clone()}


def value_prefix_targets(reward: torch.Tensor, horizon: int) -> torch.Tensor:
    """EfficientZero's value-prefix targets from the reward targets ``[B, K+1]`` (column 0 unused).

    Column ``k >= 1`` holds the sum of the rewards of unroll steps ``s+1..k``, where
    ``s`` is the last multiple of ``horizon`` below ``k``: the prefix (and the model's
    LSTM state) restarts every ``horizon`` steps. Rewards past an episode's end are 0,
    so the prefix stays where the episode left it.
    """
    prefix = torch.zeros_like(reward)
    for k in range(1, reward.shape[1]):
        prefix[:, k] = reward[:, k] + (prefix[:, k - 1] if (k - 1) % horizon else 0.0)
    return prefix


# ============================================================================== agent
@register("muzero")
class MuZero(Agent):
    """MuZero over a vector env (one player) or a batch of board games (two players)."""

    Config = MuZeroConfig

    def __init__(self, cfg: MuZeroConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        torch.manual_seed(seed)
        self.two_player = spec.num_players == 2
        self.num_actions = spec.num_actions
        if cfg.value_prefix and self.two_player:
            raise UserError("the value prefix sums one player's rewards along the unroll; two-player games "
                            "give each edge to a different player", key="agent.value_prefix")
        self.net = make_model(spec, cfg).to(device)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        params = self.net.parameters()
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9,
                                             weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(seed)
        extras: dict[str, tuple[tuple[int, ...], Any]] = {"policy": ((self.num_actions,), np.float32),
                                                          "root_value": ((), np.float32)}
        if self.two_player:
            extras.update(to_play=((), np.int8), legal=((self.num_actions,), np.bool_))
        self.replay = SequenceReplay(
            capacity=cfg.buffer_size, observation_space=spec.observation_space, action_space=spec.action_space,
            num_envs=spec.num_envs, unroll_steps=cfg.unroll_steps, n_step=cfg.n_step, gamma=cfg.discount,
            extras=extras, frame_stack=spec.frame_stack, prioritized=cfg.prioritized, alpha=cfg.priority_alpha,
            beta=cfg.priority_beta, seed=seed, device=device)
        self.env_steps = 0
        self.grad_steps = 0
        self.update_credit = 0.0
        from planners.mcts import ForestPool

        self._forests = ForestPool()   # (batch, purpose) -> Forest
        self.play_rng = np.random.default_rng(seed + 1)
        self.game = env if self.two_player else None
        self.obs = None
        if env is not None:
            if self.two_player:
                env.reset()
                self.obs = env.observation()
            else:
                self.obs = env.reset(seed=seed)[0]
        if self.two_player:
            self.evaluate = self._evaluate_games    # the trainer's hook for two-player protocols

    # ====================================================================== search
    def search_config(self, purpose: str, simulations: int | None = None):
        """``purpose``: ``play`` (self-play, root noise), ``eval`` (noise-free) or ``reanalyse``."""
        from planners.mcts import SearchConfig

        cfg = self.cfg
        evaluation = purpose != "play"
        sims = simulations or ((cfg.eval_simulations or cfg.num_simulations) if purpose == "eval"
                               else cfg.num_simulations)
        return SearchConfig(
            algorithm=cfg.algorithm, mode="alphazero" if self.two_player else "muzero",
            num_simulations=int(sims), discount=cfg.discount, pb_c_init=cfg.pb_c_init, pb_c_base=cfg.pb_c_base,
            dirichlet_alpha=cfg.dirichlet_alpha,
            dirichlet_fraction=0.0 if evaluation or cfg.algorithm == "gumbel" else cfg.dirichlet_fraction,
            known_bounds=(-1.0, 1.0) if self.two_player else None, unvisited_value=cfg.unvisited_value,
            max_num_considered_actions=min(cfg.max_num_considered_actions, self.num_actions),
            gumbel_scale=0.0 if evaluation else cfg.gumbel_scale, value_scale=cfg.value_scale,
            maxvisit_init=cfg.maxvisit_init)

    def _forest(self, batch_size: int, purpose: str, simulations: int | None = None):
        seed = self.seed * 1_000_003 + batch_size * 3 + ("play", "eval", "reanalyse").index(purpose)
        return self._forests.get_forest(batch_size, self.num_actions, self.search_config(purpose, simulations),
                                        purpose, seed)

    @torch.inference_mode()
    def search(self, obs: Any, purpose: str, legal: np.ndarray | None = None, temperature: float = 1.0,
               simulations: int | None = None):
        """One batched search from every observation in ``obs``; the learned model is the search's model."""
        from planners.mcts import ModelOutput

        net, R = self.net, self.cfg.reward_support_size
        net.eval()
        obs_t = torch.as_tensor(np.asarray(obs), device=self.device)
        B = obs_t.shape[0]
        forest = self._forest(B, purpose, simulations)
        latent = net.representation(obs_t)
        logits, value_logits = net.prediction(latent)
        store = torch.empty((B, forest.max_nodes) + tuple(latent.shape[1:]), dtype=latent.dtype, device=self.device)
        store[:, 0] = latent

        prefix = None
        if self.cfg.value_prefix:
            # per node: LSTM state (h, c), predicted prefix and depth; a node at a depth that
            # is a multiple of lstm_horizon (the root included) starts a new prefix from 0
            prefix = SimpleNamespace(
                state=torch.zeros((2, B, forest.max_nodes, self.cfg.lstm_hidden), device=self.device),
                value=torch.zeros((B, forest.max_nodes), dtype=torch.float64, device=self.device),
                depth=torch.zeros((B, forest.max_nodes), dtype=torch.long, device=self.device))

        def model_fn(leaves):
            tree = torch.from_numpy(leaves.tree_index.astype(np.int64))
            parent = torch.from_numpy(leaves.parent_node.astype(np.int64))
            action = torch.from_numpy(leaves.action.astype(np.int64)).clamp_(0, self.num_actions - 1)
            need = torch.from_numpy(leaves.needs_eval)
            node = torch.from_numpy(leaves.node.astype(np.int64))
            if prefix is None:
                next_latent, reward_logits = net.dynamics(store[tree, parent], action.to(self.device))
                reward = support_to_scalar(reward_logits, R).double()
            else:
                fresh = (prefix.depth[tree, parent] % self.cfg.lstm_horizon == 0)[:, None]
                h, c = (torch.where(fresh, 0.0, prefix.state[i, tree, parent]) for i in (0, 1))
                next_latent, prefix_logits, (h, c) = net.dynamics_prefix(store[tree, parent],
                                                                         action.to(self.device), (h, c))
                value_prefix = support_to_scalar(prefix_logits, R).double()
                reward = value_prefix - torch.where(fresh[:, 0], 0.0, prefix.value[tree, parent])
                t, n = tree[need], node[need]
                prefix.state[0, t, n], prefix.state[1, t, n] = h[need], c[need]
                prefix.value[t, n] = value_prefix[need]
                prefix.depth[t, n] = prefix.depth[t, parent[need]] + 1
            prior, value = net.prediction(next_latent)
            store[tree[need], node[need]] = next_latent[need]
            return ModelOutput(reward=reward.cpu().numpy(), value=self.value_of(value).double().cpu().numpy(),
                               prior_logits=prior.float().cpu().numpy())

        forest.set_roots(logits.float().cpu().numpy(), self.value_of(value_logits).double().cpu().numpy(),
                         None if legal is None else np.ascontiguousarray(legal, bool))
        forest.run(model_fn)
        return forest.results(temperature)

    def value_of(self, value_logits: torch.Tensor) -> torch.Tensor:
        """Scalar values of value-head logits (the value support: ``support_step * {-S..S}`` after ``h``)."""
        return support_to_scalar(value_logits, self.cfg.support_size, step=self.cfg.support_step)

    def policy_target(self, result) -> np.ndarray:
        """The stored policy: visit fractions (pUCT) or Gumbel's improved policy (both ``improved_policy``)."""
        return result.improved_policy.astype(np.float32)

    def visit_temperature(self) -> float:
        """The paper's schedule: T, T/2 after half the run, T/4 after three quarters."""
        if not self.cfg.temperature_decay or self.total_steps <= 0:
            return self.cfg.temperature
        frac = self.env_steps / self.total_steps
        return self.cfg.temperature * (1.0 if frac < 0.5 else 0.5 if frac < 0.75 else 0.25)

    def act(self, obs: Any, explore: bool = False) -> np.ndarray:
        """Searched actions for a batch of observations, or for the games of a ``BatchedGame``."""
        from envs.games.base import BatchedGame

        if isinstance(obs, BatchedGame):
            return self.play(obs, explore)
        if explore:
            return self.search(obs, "play", temperature=self.visit_temperature()).selected_action.astype(np.int64)
        result = self.search(obs, "eval", temperature=0.0)
        return self._greedy(result)

    def _greedy(self, result) -> np.ndarray:
        """Most visited action (ties to the higher Q); Gumbel: the search's selected action."""
        if self.cfg.algorithm == "gumbel":
            return result.selected_action.astype(np.int64)
        return (result.visit_counts + 1e-6 * np.tanh(result.q_values)).argmax(axis=1).astype(np.int64)

    def play(self, game, explore: bool = False, simulations: int | None = None) -> np.ndarray:
        """One searched move in every unfinished game of ``game`` (not stepped); the player protocol."""
        actions = np.full(game.batch_size, -1, np.int64)
        rows = np.flatnonzero(~game.terminal())
        if rows.size == 0:
            return actions
        sub = game.take(rows)
        legal = sub.legal_mask()
        if explore:
            result = self.search(sub.observation(), "play", legal, 1.0, simulations)
            chosen = result.selected_action.astype(np.int64)
        else:
            result = self.search(sub.observation(), "eval", legal, 0.0, simulations)
            chosen = self._greedy(result)
        actions[rows] = np.where(legal[np.arange(rows.size), chosen], chosen, legal.argmax(axis=1))
        return actions

    def player(self, simulations: int | None = None, explore: bool = False) -> MuZeroPlayer:
        """This agent as an ``envs.games`` player for ``play_match``."""
        return MuZeroPlayer(self, simulations, explore)

    def seed_player(self, seed: int | None) -> None:
        """Reseed evaluation searches (self-play streams are untouched)."""
        for (batch, purpose), forest in self._forests.items():
            if purpose == "eval":
                forest.seed(int(seed or 0) * 1_000_003 + batch)

    # ===================================================================== self-play
    def collect(self) -> dict[str, float]:
        """``collect_steps`` searched steps of every environment, stored with their search statistics."""
        root_values = []
        for _ in range(self.cfg.collect_steps):
            if self.two_player:
                root_values.append(self._game_step())
                continue
            result = self.search(self.obs, "play", temperature=self.visit_temperature())
            actions = result.selected_action.astype(np.int64)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            self.replay.add(self.obs, actions, np.asarray(reward, np.float32), info["next_obs"], terminated,
                            truncated, extras={"policy": self.policy_target(result),
                                               "root_value": result.root_value.astype(np.float32)})
            self.obs = next_obs
            self.env_steps += self.spec.num_envs
            root_values.append(float(result.root_value.mean()))
        return {"root_value": float(np.mean(root_values)), "visit_temperature": self.visit_temperature()}

    def _game_step(self) -> float:
        """One self-play ply of every board game; finished games restart in place."""
        game = self.game
        obs, legal, to_play = game.observation(), game.legal_mask(), game.to_play()
        result = self.search(obs, "play", legal, temperature=self.visit_temperature())
        actions = result.selected_action.astype(np.int64)
        if self.cfg.temperature_moves is not None:          # (Gumbel's greedy move is its selected action)
            late = game.num_moves() >= self.cfg.temperature_moves
            actions = np.where(late, self._greedy(result), actions)
        actions = np.where(legal[np.arange(len(actions)), actions], actions, legal.argmax(axis=1))
        game.step(actions)
        terminal = game.terminal()
        reward = np.where(terminal, -game.outcome_for_to_play(), 0.0).astype(np.float32)
        final_obs = game.observation()
        self.replay.add(obs, actions, reward, final_obs, terminal, np.zeros_like(terminal),
                        extras={"policy": self.policy_target(result), "root_value": result.root_value.astype(np.float32),
                                "to_play": to_play.astype(np.int8), "legal": legal})
        done = np.flatnonzero(terminal)
        if done.size:
            game.reset_games(done)
        self.obs = game.observation()
        self.env_steps += game.batch_size
        return float(result.root_value.mean())

    # ====================================================================== learning
    def learning_rate(self) -> float:
        if self.cfg.learning_rate_final is None:
            return self.cfg.learning_rate
        frac = min(1.0, self.env_steps / max(1, self.total_steps))
        return self.cfg.learning_rate + frac * (self.cfg.learning_rate_final - self.cfg.learning_rate)

    @torch.no_grad()
    def _flat_observations(self, batch, offsets: np.ndarray, rows: int | None = None) -> torch.Tensor:
        """Stored observations at ``offsets`` (``[B, J]`` into the windows) of the first ``rows``
        windows, as one batch ``[rows * J, ...]``."""
        obs = self.replay.observations_at(batch, offsets)[:rows]
        return obs.reshape((-1,) + tuple(obs.shape[2:]))

    def _network_values(self, batch, position: torch.Tensor) -> torch.Tensor:
        """Target-network values of the observations at ``position`` (``[rows, J]`` offsets into the windows)."""
        flat = self._flat_observations(batch, position.cpu().numpy())
        _, value_logits = self.target_net.prediction(self.target_net.representation(flat.to(self.device)))
        return self.value_of(value_logits).view(position.shape)

    def _bootstrap_values(self, batch, position: torch.Tensor) -> torch.Tensor:
        """Values ``[B, K+1]`` of the observations at the bootstrap positions (``value_bootstrap``).

        ``network``: the target network on the stored observations. ``search``: the root
        values stored by the search that chose the action there (the paper's targets); the
        final observation of a truncated episode has no search, so the target network
        values it.
        """
        if self.cfg.value_bootstrap == "network":
            return self._network_values(batch, position)
        stored = batch.extras["root_value"].float()
        values = stored.gather(1, position.clamp(max=stored.shape[1] - 1))
        steps = batch.mask.long().sum(1, keepdim=True)
        final = position == steps        # the final observation: terminated (unused) or truncated
        truncated = final & ~(batch.terminated & batch.mask).any(1, keepdim=True)
        rows = torch.nonzero(truncated.any(1)).flatten()
        if rows.numel():
            view = SimpleNamespace(indices=np.asarray(batch.indices)[rows.cpu().numpy()], mask=batch.mask[rows])
            fresh = self._network_values(view, position[rows])
            values[rows] = torch.where(truncated[rows], fresh, values[rows])
        return values

    def _reanalyse(self, batch, policy: torch.Tensor) -> torch.Tensor:
        """Fresh search policies for the first ``reanalyse_fraction`` of the batch (positions 0..K)."""
        K = self.cfg.unroll_steps
        count = round(self.cfg.reanalyse_fraction * policy.shape[0])
        if count == 0:
            return policy
        offsets = np.broadcast_to(np.arange(K + 1), (policy.shape[0], K + 1))
        flat = self._flat_observations(batch, offsets, count)
        legal = None
        if self.two_player:
            legal = batch.extras["legal"][:count, :K + 1].reshape(-1, self.num_actions).cpu().numpy()
            legal = np.where(legal.any(axis=1, keepdims=True), legal, True)
        result = self.search(flat.cpu().numpy(), "reanalyse", legal)
        fresh = torch.as_tensor(self.policy_target(result), device=policy.device).view(count, K + 1, -1)
        policy = policy.clone()
        policy[:count] = fresh
        return policy

    @torch.no_grad()
    def _consistency_targets(self, batch) -> torch.Tensor:
        """Projected representations ``[B, K, dim]`` of the observations at ``t+1..t+K``
        (the stop-gradient branch of EfficientZero's consistency loss)."""
        K = self.cfg.unroll_steps
        offsets = np.broadcast_to(np.arange(1, K + 1), (len(batch.indices), K))
        flat = self._flat_observations(batch, offsets).to(self.device)
        return self.net.consistency.project(self.net.representation(flat)).view(len(batch.indices), K, -1)

    def unroll_actions(self, batch) -> torch.Tensor:
        """The unroll's actions ``[B, K]``: the stored ones, uniformly random past the episode's end."""
        K = self.cfg.unroll_steps
        stored = batch.action[:, :K].long()
        random = torch.from_numpy(self.rng.integers(0, self.num_actions, size=tuple(stored.shape))).to(stored.device)
        return torch.where(batch.mask[:, :K], stored, random)

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The MuZero loss of a batch of windows; returns (loss, root priorities, metrics)."""
        cfg, net = self.cfg, self.net
        K, S, R = cfg.unroll_steps, cfg.support_size, cfg.reward_support_size
        reward = batch.reward
        if self.spec.reward_clip is not None:
            reward = reward.clamp(-self.spec.reward_clip, self.spec.reward_clip)
        position, _, _ = bootstrap_positions(batch.mask, batch.terminated, cfg.n_step, K)
        boot = self._bootstrap_values(batch, position)
        to_play = batch.extras["to_play"] if self.two_player else None
        targets = unroll_targets(reward, batch.mask, batch.terminated, boot, cfg.discount, cfg.n_step, K, to_play)
        policy = batch.extras["policy"][:, :K + 1].float()
        policy = self._reanalyse(batch, policy)
        policy = policy / policy.sum(-1, keepdim=True).clamp_min(1e-8)
        value_probs = scalar_to_support(targets["value"], S, step=cfg.support_step)
        if cfg.value_prefix:
            targets["reward"] = value_prefix_targets(targets["reward"], cfg.lstm_horizon)
        reward_probs = scalar_to_support(targets["reward"], R)
        actions = self.unroll_actions(batch)

        net.train()
        latent = net.representation(batch.obs.to(self.device))
        consistency_target = self._consistency_targets(batch) if cfg.consistency_weight > 0 else None
        per_sample = torch.zeros(latent.shape[0], device=self.device)
        parts = {"policy_loss": 0.0, "value_loss": 0.0, "reward_loss": 0.0}
        root_value = None
        hidden = None       # the value prefix's LSTM state (None: zero, where a prefix starts)
        for k in range(K + 1):
            if k > 0:
                if not cfg.value_prefix:
                    latent, reward_logits = net.dynamics(scale_gradient(latent, 0.5), actions[:, k - 1])
                else:
                    if (k - 1) % cfg.lstm_horizon == 0:
                        hidden = None
                    latent, reward_logits, hidden = net.dynamics_prefix(scale_gradient(latent, 0.5),
                                                                        actions[:, k - 1], hidden)
                reward_loss = -(reward_probs[:, k] * F.log_softmax(reward_logits, -1)).sum(-1)
                reward_loss = reward_loss * targets["reward_mask"][:, k]
            else:
                reward_loss = torch.zeros_like(per_sample)
            logits, value_logits = net.prediction(latent)
            if k == 0:
                root_value = self.value_of(value_logits.detach())
            value_loss = -(value_probs[:, k] * F.log_softmax(value_logits, -1)).sum(-1) * targets["value_mask"][:, k]
            log_p = F.log_softmax(logits, -1)
            policy_loss = -(policy[:, k] * log_p).sum(-1) * targets["policy_mask"][:, k]
            step = policy_loss + cfg.value_loss_weight * value_loss + reward_loss
            if consistency_target is not None and k > 0:
                similarity = F.cosine_similarity(net.consistency.predict(latent), consistency_target[:, k - 1], dim=-1)
                consistency = -similarity * batch.mask[:, k - 1].to(similarity.dtype)
                step = step + cfg.consistency_weight * consistency
                parts["consistency_loss"] = parts.get("consistency_loss", 0.0) + consistency.mean().item()
            if cfg.policy_entropy_weight > 0:
                entropy = -(log_p.exp() * log_p).sum(-1) * targets["policy_mask"][:, k]
                step = step - cfg.policy_entropy_weight * entropy
                parts["policy_entropy"] = parts.get("policy_entropy", 0.0) + entropy.mean().item()
            per_sample = per_sample + (step if k == 0 else scale_gradient(step, 1.0 / K))
            parts["policy_loss"] += policy_loss.mean().item()
            parts["value_loss"] += value_loss.mean().item()
            parts["reward_loss"] += reward_loss.mean().item()
        loss = (per_sample * batch.weights).mean()
        priority = (root_value - targets["value"][:, 0]).abs()
        parts = {k: v / (K + 1) for k, v in parts.items()}
        parts["value_target"] = targets["value"][:, 0].mean().item()
        return loss, priority, parts

    def learn(self, steps: int) -> dict[str, float]:
        """``steps`` gradient steps on prioritized windows."""
        sums: dict[str, float] = {}
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        for _ in range(steps):
            batch = self.replay.sample(self.cfg.batch_size)
            loss, priority, parts = self.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            if self.cfg.prioritized:
                self.replay.update_priorities(batch.indices, priority.cpu().numpy())
            self.grad_steps += 1
            if self.grad_steps % self.cfg.target_update_interval == 0:
                self.target_net.load_state_dict(self.net.state_dict())
            parts["loss"] = loss.item()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        return {key: value / max(steps, 1) for key, value in sums.items()}

    def train_iteration(self) -> dict[str, Any]:
        """Collect ``collect_steps`` vector steps, then ``train_ratio`` replayed windows per new step."""
        if self.env is None:
            raise RuntimeError("train_iteration needs the environment the agent was built with")
        before = self.env_steps
        metrics = self.collect()
        new = self.env_steps - before
        # every env must have filled one whole window (K + n + 1 steps) before sampling
        window = (self.cfg.unroll_steps + self.cfg.n_step + 1) * self.spec.num_envs
        if self.env_steps >= max(self.cfg.learning_starts, window, 1):
            self.update_credit += new * self.cfg.train_ratio / self.cfg.batch_size
            steps = int(self.update_credit)
            self.update_credit -= steps
            if steps:
                metrics.update(self.learn(steps))
                metrics["learning_rate"] = self.learning_rate()
        metrics.update(env_steps=new, grad_steps_total=self.grad_steps)
        return metrics

    def restart_episodes(self, obs: Any) -> None:
        """Continue from freshly reset envs: the replay closes the interrupted episodes."""
        self.obs = obs
        self.replay.abandon_episodes()

    # =================================================================== checkpoints
    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        state: dict[str, Any] = {
            "net": self.net.state_dict(), "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "env_steps": self.env_steps, "grad_steps": self.grad_steps,
            "update_credit": self.update_credit,
            "search_rng": {f"{b}/{p}": f.rng_state.astype(np.int64) for (b, p), f in self._forests.items()
                           if p != "eval"},
        }
        if self.game is not None:
            state["games"] = {k: np.asarray(v) for k, v in self.game.clone().arrays.items()}
        elif self.obs is not None:
            state["obs"] = self.obs
        if include_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.target_net.load_state_dict(state.get("target_net", state["net"]))
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.env_steps = int(state.get("env_steps", 0))
        self.grad_steps = int(state.get("grad_steps", 0))
        self.update_credit = float(state.get("update_credit", 0.0))
        for key, rng_state in state.get("search_rng", {}).items():
            batch, purpose = key.split("/")
            self._forest(int(batch), purpose).rng_state = np.asarray(rng_state).astype(np.uint64)
        if self.game is not None and "games" in state:
            from envs.games.base import GameState

            self.game.restore(GameState({k: np.array(v) for k, v in state["games"].items()}, kind=self.game.name))
            self.obs = self.game.observation()
        elif state.get("obs") is not None:
            self.obs = state["obs"]
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])

    # ==================================================================== evaluation
    def _evaluate_games(self, episodes: int, seed: int) -> dict[str, float]:
        """Games against uniform random play (and perfect play on tic-tac-toe), colours alternating."""
        from runtime.match_eval import default_opponents, evaluate_against

        games = max(2, episodes + episodes % 2)
        env_cfg = {"game": self.spec.extras["game"], "kwargs": self.spec.extras.get("game_kwargs", {})}
        out: dict[str, float] = {}
        for opponent in default_opponents(env_cfg):
            result = evaluate_against(self, env_cfg, opponent, games, seed)
            out.update({f"eval/vs_{opponent}_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        return out


class MuZeroPlayer:
    """A :class:`MuZero` agent behind the player protocol of ``envs.games`` (reseedable)."""

    def __init__(self, agent: MuZero, simulations: int | None = None, explore: bool = False):
        self.agent, self.simulations, self.explore = agent, simulations, explore

    def seed(self, seed: int | None) -> None:
        self.agent.seed_player(seed)

    def act(self, game) -> np.ndarray:
        return self.agent.play(game, self.explore, self.simulations)
