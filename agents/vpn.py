"""Value Prediction Network (Oh, Singh and Lee 2017, "Value Prediction Network", NeurIPS; arXiv 1707.03497).

A VPN learns an abstract-state model trained only to predict rewards, discounts and
values, never observations, and acts by planning in it.

Modules (Section 3.1 of the paper), all on a latent vector ``s``:

* encoding    ``s = f_enc(x)``                     (the suite's torso for the observation space)
* value       ``V(s) = f_value(s)``                (a scalar)
* outcome     ``r, gamma = f_out(s, o)``           (a scalar reward and a scalar discount per action)
* transition  ``s' = f_trans(s, o)``               (gated residual update, as the paper's transition)

``f_core(s, o) = (r, gamma, V(s'), s')`` chains them: one step of the learned model.

**Planning** (Algorithm 1, "Q-value from d-step planning"). ``Q^1(s, o) = r + gamma V(s')`` and,
for ``d > 1``, ``Q^d(s, o) = r + gamma V^d(s')`` with the value averaging backup

    V^d(s) = V(s)                                                      if d = 1
    V^d(s) = (1/d) V(s) + ((d-1)/d) max_{o in A_b(s)} Q^{d-1}(s, o)   otherwise,

where ``A_b(s)`` are the ``b`` actions with the largest one-step ``Q^1(s, o)``. Only those are
expanded, at every depth (the root included, as in the public code: root actions outside the
``b`` best get ``Q = -inf``). :func:`plan` does this for a whole batch at once: depth ``i`` is
one call of the core on ``N * b^i * A`` (state, action) pairs, and the backup runs over tensors
of shape ``(N * b^i, b)``; there is no Python loop over environments or nodes.

**Acting**: epsilon-greedy over the planned ``Q^d(s, .)`` of the root.

**Learning** (Section 3.3, "k-step prediction" with n-step Q-learning targets). From a stored
window ``x_t, o_t, r_t, gamma_t, ..., o_{t+k+n-1}`` the model is unrolled along the actions
actually taken: ``s^0 = f_enc(x_t)``, ``s^l = f_trans(s^{l-1}, o_{t+l-1})``, with predictions
``v^l = V(s^l)`` and ``r^l, gamma^l = f_out(s^{l-1}, o_{t+l-1})``. The loss over ``l = 1..k`` is

    L_t = sum_{l=1..k} (R_{t+l} - v^l)^2 + (r_{t+l-1} - r^l)^2 + loss_gamma(gamma_{t+l-1}, gamma^l)

with the Q-learning target ``R_u = sum_{i<m} gamma^i r_{u+i} + gamma^m max_o Q^d_{theta-}(s_{u+m}, o)``,
``m = n`` unless the episode ends first (termination: no bootstrap, the value of a terminal
state is 0; truncation: bootstrap from the final observation). ``Q^d_{theta-}`` is the d-step
planned Q-value of a target network (hard copies every ``target_update_interval`` updates, or
Polyak averaging with ``tau < 1``). Losses are Huber (the public code) or squared (the paper's
text), summed over ``l`` and averaged over the batch.

Departures from the paper, all for one-step actions on a single machine:

* the paper trains on-policy n-step rollouts from 16 asynchronous actors; here windows of
  ``k + n + 1`` steps are replayed from the shared sequence replay (``replay.SequenceReplay``),
  and every target is a full n-step return (the paper's rollouts shorten it near their end);
* with primitive actions the discount is ``gamma_t = gamma`` or ``0`` at termination. The paper
  regresses ``log_gamma gamma_t`` (the option's duration), which is infinite at termination;
  here the outcome module predicts ``gamma * P(continue)`` and the continuation is learned
  with binary cross-entropy.

Differences from MuZero (``agents/muzero.py``):

* no Monte Carlo tree search: a fixed-shape d-step expansion of the ``b`` best actions per node,
  backed up by value averaging (above) instead of visit counts and pUCT;
* no policy head and no search-policy targets: acting is epsilon-greedy over planned Q-values;
* scalar reward, discount and value heads (MuZero uses categorical supports with an invertible
  transform and has no discount head: episode ends are absorbing states);
* a learned discount, so the model itself knows where episodes end;
* value targets are Q-learning style: n-step returns bootstrapped from the target network's
  planned ``max_o Q^d`` (MuZero bootstraps from stored or reanalysed search values of the
  behaviour policy).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.base import AgentConfig, ReplayAgent, linear_epsilon, register
from agents.networks import make_torso, mlp, to_tensor
from replay import SequenceReplay
from runtime.errors import UserError


@dataclasses.dataclass
class VPNConfig(AgentConfig):
    """Hyperparameters; defaults are the public code's (junhyukoh/value-prediction-network, train.py)."""

    learning_rate: float = 1e-4
    learning_rate_final: float | None = None   # anneal linearly to this over the run (None: constant)
    adam_eps: float = 1e-8
    batch_size: int = 32
    buffer_size: int = 100_000
    learning_starts: int = 1000         # env steps before the first update
    gamma: float = 0.98
    n_step: int = 10                    # n: steps of real reward in a value target
    prediction_steps: int = 3           # k: unrolled model steps trained per window
    plan_depth: int = 3                 # d: planning depth for acting and targets
    branching: int = 4                  # b: actions expanded per node
    collect_steps: int = 1              # vector-env steps per iteration
    gradient_steps: int = 1             # updates per iteration
    target_update_interval: int = 10000 # updates between target syncs
    tau: float = 1.0                    # 1 = hard copy
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.1           # share of the run over which epsilon decays
    eval_eps: float = 0.0
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256])   # encoder torso (vectors)
    model_hidden: int = 256             # width of the value, outcome and transition modules
    max_grad_norm: float = 40.0
    loss: str = "huber"
    reward_loss_weight: float = 1.0
    discount_loss_weight: float = 1.0

    def validate(self) -> None:
        self.check_choices({"loss": ("huber", "mse")})
        self.check_ranges({
            "learning_rate": self.learning_rate > 0,
            "learning_rate_final": self.learning_rate_final is None or self.learning_rate_final >= 0,
            "adam_eps": self.adam_eps > 0, "batch_size": self.batch_size > 0, "buffer_size": self.buffer_size > 0,
            "learning_starts": self.learning_starts >= 0, "gamma": 0.0 <= self.gamma <= 1.0,
            "n_step": self.n_step >= 1, "prediction_steps": self.prediction_steps >= 1,
            "plan_depth": self.plan_depth >= 1, "branching": self.branching >= 1,
            "collect_steps": self.collect_steps >= 1, "gradient_steps": self.gradient_steps >= 0,
            "target_update_interval": self.target_update_interval >= 1, "tau": 0.0 < self.tau <= 1.0,
            "eps_start": 0.0 <= self.eps_start <= 1.0, "eps_end": 0.0 <= self.eps_end <= 1.0,
            "eps_fraction": 0.0 <= self.eps_fraction <= 1.0, "eval_eps": 0.0 <= self.eval_eps <= 1.0,
            "hidden": all(h > 0 for h in self.hidden), "model_hidden": self.model_hidden > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "reward_loss_weight": self.reward_loss_weight >= 0, "discount_loss_weight": self.discount_loss_weight >= 0,
        })


# ---------------------------------------------------------------------------------- networks
class ValuePredictionNetwork(nn.Module):
    """Encoding, value, outcome and transition modules over a flat latent state."""

    def __init__(self, spec, cfg: VPNConfig):
        super().__init__()
        self.num_actions = spec.num_actions
        self.gamma = cfg.gamma
        self.encoder = make_torso(spec.observation_space, cfg.hidden)
        latent, width, actions = self.encoder.out_features, cfg.model_hidden, spec.num_actions
        self.latent_dim = latent
        self.value_head = mlp([latent, width, 1])
        # The outcome and transition modules read the same (state, action) pair: their first layers
        # are one matrix, and the action's one-hot part of it is a per-action bias column.
        self.pair_state = nn.Linear(latent, 2 * width)
        self.pair_action = nn.Parameter(torch.empty(actions, 2 * width))
        nn.init.uniform_(self.pair_action, -1 / (latent + actions) ** 0.5, 1 / (latent + actions) ** 0.5)
        self.outcome_out = nn.Linear(width, 2)                     # reward, continuation logit
        self.trans_out = nn.Linear(width, 2 * latent)              # update, gate
        self.width = width

    def encode(self, obs: Any) -> torch.Tensor:
        return self.encoder(obs)

    def value(self, latent: torch.Tensor) -> torch.Tensor:
        return self.value_head(latent).squeeze(-1)

    def step(self, latent: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One model step: (reward, continuation logit, next latent) for each (state, action) row."""
        hidden = F.relu(self.pair_state(latent) + self.pair_action[action.long()])
        return self._heads(latent, hidden)

    def expand(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``f_core`` for every action of every state: ``(N, A)`` reward, discount, next value and
        ``(N, A, L)`` next states; the state part of the first layer is computed once per state."""
        n, actions = latent.shape[0], self.num_actions
        hidden = F.relu(self.pair_state(latent)[:, None, :] + self.pair_action[None]).reshape(n * actions, -1)
        reward, cont_logit, next_latent = self._heads(latent.repeat_interleave(actions, dim=0), hidden)
        value = self.value(next_latent)
        discount = self.gamma * torch.sigmoid(cont_logit)
        return (reward.view(n, actions), discount.view(n, actions), value.view(n, actions),
                next_latent.view(n, actions, -1))

    def _heads(self, latent: torch.Tensor, hidden: torch.Tensor):
        reward, cont_logit = self.outcome_out(hidden[:, : self.width]).unbind(-1)
        update, gate = self.trans_out(hidden[:, self.width :]).chunk(2, dim=-1)
        next_latent = F.relu(latent + torch.sigmoid(gate) * update)
        return reward, cont_logit, next_latent

    def core(self, latent: torch.Tensor, action: torch.Tensor):
        """``f_core``: reward, discount ``gamma * P(continue)``, value of the next state, next state."""
        reward, cont_logit, next_latent = self.step(latent, action)
        return reward, self.gamma * torch.sigmoid(cont_logit), self.value(next_latent), next_latent


# ---------------------------------------------------------------------------------- planning
ExpandFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def expand_pairs(core: Callable, num_actions: int) -> ExpandFn:
    """An ``expand`` function for :func:`plan` from a one-pair model
    ``core(states (M, L), actions (M,)) -> (reward, discount, next_value, next_state)``."""

    def expand(states: torch.Tensor):
        n = states.shape[0]
        actions = torch.arange(num_actions, device=states.device).repeat(n)
        reward, discount, value, next_state = core(states.repeat_interleave(num_actions, dim=0), actions)
        return (reward.view(n, num_actions), discount.view(n, num_actions), value.view(n, num_actions),
                next_state.view(n, num_actions, -1))

    return expand


def plan(expand: ExpandFn, latent: torch.Tensor, depth: int, branching: int) -> torch.Tensor:
    """Planned ``Q^depth(s, o)`` for every root in ``latent`` (shape ``(N, L)``); returns ``(N, A)``.

    ``expand(states (M, L))`` applies the learned core to every action of every state and
    returns ``(M, A)`` rewards, discounts and next-state values and ``(M, A, L)`` next states.
    Each depth expands the ``b = min(branching, A)`` actions with the best one-step
    ``Q^1 = r + discount * V(s')`` of every node (one batched call over all nodes), and the
    backup is the paper's value averaging (module docstring). Root actions that are not
    expanded get ``-inf``.
    """
    n_roots = latent.shape[0]
    rewards, discounts, values = [], [], []   # per depth: (nodes, b) of the expanded children
    chosen_root = None
    states = latent
    b = 1
    for level in range(depth):
        nodes = states.shape[0]
        reward, discount, next_value, next_state = expand(states)
        num_actions = reward.shape[1]
        b = min(branching, num_actions)
        q1 = reward + discount * next_value
        best = q1.topk(b, dim=1).indices                                          # (nodes, b)
        rewards.append(reward.gather(1, best))
        discounts.append(discount.gather(1, best))
        values.append(next_value.gather(1, best))
        if level == 0:
            chosen_root = best
        if level + 1 < depth:
            rows = (torch.arange(nodes, device=latent.device)[:, None] * num_actions + best).reshape(-1)
            states = next_state.reshape(nodes * num_actions, -1).index_select(0, rows)   # (nodes * b, L)
    # Backup from the deepest level: a child at level i + 1 has d - i steps of budget left.
    planned_value = values[-1]                                                    # V^1 at the leaves
    q = rewards[-1] + discounts[-1] * planned_value
    for level in range(depth - 2, -1, -1):
        remaining = depth - level
        best_below = q.view(-1, b, b).amax(dim=-1).view(-1, b)                   # max_o Q^{m-1}(child, o)
        planned_value = values[level] / remaining + (remaining - 1) / remaining * best_below
        q = rewards[level] + discounts[level] * planned_value
    out = torch.full((n_roots, num_actions), float("-inf"), dtype=q.dtype, device=q.device)
    return out.scatter(1, chosen_root, q.view(n_roots, b))


# ------------------------------------------------------------------------------ value targets
def value_targets(reward: torch.Tensor, mask: torch.Tensor, terminated: torch.Tensor, gamma: float,
                  n_step: int, unroll_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The n-step parts of the targets ``R_{t+l}``, ``l = 1..unroll_steps``, of replayed windows.

    Inputs are a :class:`replay.SequenceBatch`'s ``reward``, ``mask`` and ``terminated``
    (``(B, W)``, zero past the episode end). For each ``l`` the target is
    ``sum_{i<m} gamma^i r_{l+i} + weight * max_o Q^d(x_{l+m}, o)`` with ``m = min(n, steps
    of the episode left from l)``; ``weight = gamma^m``, or 0 when the episode terminated
    within those steps (or before ``l``: the value of a terminal state is 0). A truncated
    episode bootstraps from its final observation, which is what the replay returns for offset
    ``l + m`` past the episode end (``SequenceReplay.observations_at``).
    Returns ``(partial_return (B, K), bootstrap_index (B, K) long, weight (B, K))``.
    """
    batch, width = reward.shape
    if width < unroll_steps + n_step:
        raise ValueError(f"windows of width {width} are too short for unroll_steps={unroll_steps}, n_step={n_step}")
    reward, valid = reward.double(), mask.double()
    steps_in_episode = mask.long().sum(dim=1, keepdim=True)                   # (B, 1): done step + 1, or W
    ended_by_termination = terminated.any(dim=1, keepdim=True)
    offsets = torch.arange(1, unroll_steps + 1, device=reward.device)[None, :]  # l
    m = (steps_in_episode - offsets).clamp(min=0, max=n_step)                  # (B, K)
    partial = torch.zeros(batch, unroll_steps, dtype=torch.float64, device=reward.device)
    for i in range(n_step):
        partial += gamma**i * reward[:, i + 1 : i + 1 + unroll_steps] * valid[:, i + 1 : i + 1 + unroll_steps]
    index = offsets + m
    episode_over = index >= steps_in_episode                                  # bootstrap state is the last one
    weight = torch.pow(torch.full_like(partial, gamma), m.double())
    weight = torch.where(episode_over & ended_by_termination, torch.zeros_like(weight), weight)
    return partial.float(), index, weight.float()


def _flatten_pairs(obs: Any) -> Any:
    """Merge the two leading dimensions of an observation batch (dict observations per key)."""
    if isinstance(obs, dict):
        return {key: _flatten_pairs(value) for key, value in obs.items()}
    return obs.reshape(-1, *obs.shape[2:])


# ------------------------------------------------------------------------------------ agent
@register("vpn")
class VPN(ReplayAgent):
    """Value Prediction Network over a vector env: plans to act, learns from replayed windows."""

    Config = VPNConfig

    def __init__(self, cfg: VPNConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        if not hasattr(spec.action_space, "n"):
            raise UserError(f"VPN needs discrete actions; {spec.name} has {spec.action_space}", key="env")
        if spec.num_players != 1:
            raise UserError(f"VPN is a single-agent method; {spec.name} has {spec.num_players} players", key="env")
        torch.manual_seed(seed)
        self.net = ValuePredictionNetwork(spec, cfg).to(device)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        self.rng = np.random.default_rng(seed)
        self.replay = SequenceReplay(
            capacity=cfg.buffer_size, observation_space=spec.observation_space, action_space=spec.action_space,
            num_envs=spec.num_envs, unroll_steps=cfg.prediction_steps, n_step=cfg.n_step, gamma=cfg.gamma,
            frame_stack=spec.frame_stack, seed=seed, device=device)
        # The first update waits until whole windows exist.
        self.learn_after = max(cfg.learning_starts, (self.replay.width + 1) * spec.num_envs, cfg.batch_size)
        self.env_steps = 0
        self.grad_steps = 0
        self.obs = None if env is None else env.reset(seed=seed)[0]

    # ----------------------------------------------------------------- acting
    @torch.no_grad()
    def planned_q(self, obs: Any, network: ValuePredictionNetwork | None = None) -> torch.Tensor:
        """``Q^d(s, .)`` of a batch of observations by d-step planning in ``network``'s model."""
        network = network or self.net
        latent = network.encode(to_tensor(obs, self.device))
        return plan(network.expand, latent, self.cfg.plan_depth, self.cfg.branching)

    def epsilon(self) -> float:
        """Exploration rate at the current env step, over the first ``eps_fraction`` of the run."""
        cfg = self.cfg
        return linear_epsilon(cfg.eps_start, cfg.eps_end, self.env_steps, self.total_steps, cfg.eps_fraction)

    def act(self, obs: Any, explore: bool = False, epsilon: float | None = None) -> np.ndarray:
        """Greedy actions over the planned Q, epsilon-greedy when ``explore`` (or ``eval_eps`` > 0)."""
        eps = (self.epsilon() if explore else self.cfg.eval_eps) if epsilon is None else epsilon
        if eps >= 1.0:
            batch = len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)
            return self.rng.integers(0, self.spec.num_actions, batch)
        actions = self.planned_q(obs).argmax(dim=-1).cpu().numpy()
        if eps > 0:
            batch = actions.shape[0]
            random_mask = self.rng.random(batch) < eps
            actions = np.where(random_mask, self.rng.integers(0, self.spec.num_actions, batch), actions)
        return actions

    def collect(self) -> dict[str, Any]:
        """Step the vector env ``collect_steps`` times and store the steps."""
        for _ in range(self.cfg.collect_steps):
            eps = 1.0 if self.env_steps < self.cfg.learning_starts else None
            actions = self.act(self.obs, explore=True, epsilon=eps)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            self.replay.add(self.obs, actions, reward, info["next_obs"], terminated, truncated)
            self.obs = next_obs
            self.env_steps += self.spec.num_envs
        return {"epsilon": self.epsilon()}

    # --------------------------------------------------------------- learning
    def learning_rate(self) -> float:
        if self.cfg.learning_rate_final is None:
            return self.cfg.learning_rate
        frac = min(1.0, self.env_steps / max(1, self.total_steps))
        return self.cfg.learning_rate + frac * (self.cfg.learning_rate_final - self.cfg.learning_rate)

    def _pointwise(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "huber":
            return F.smooth_l1_loss(prediction, target, reduction="none")
        return 0.5 * (prediction - target).pow(2)

    def targets(self, batch) -> torch.Tensor:
        """``R_{t+l}`` for ``l = 1..k``: n-step returns bootstrapped from the target's planned max Q."""
        cfg, k = self.cfg, self.cfg.prediction_steps
        reward = self._clip(batch.reward)
        partial, index, weight = value_targets(reward, batch.mask, batch.terminated, cfg.gamma, cfg.n_step, k)
        bootstrap_obs = _flatten_pairs(self.replay.observations_at(batch, index))   # x_{l+m}, (B * k, ...)
        with torch.no_grad():
            q_max = self.planned_q(bootstrap_obs, self.target).amax(dim=-1).view_as(partial)
        return partial + weight * torch.where(weight > 0, q_max, torch.zeros_like(q_max))

    def _clip(self, reward: torch.Tensor) -> torch.Tensor:
        clip = self.spec.reward_clip
        return reward if clip is None else reward.clamp(-clip, clip)

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The k-step prediction loss ``L_t`` (module docstring) of a batch of windows."""
        cfg, k = self.cfg, self.cfg.prediction_steps
        value_target = self.targets(batch)                                    # (B, k)
        reward_target = self._clip(batch.reward[:, :k])
        continue_target = 1.0 - batch.terminated[:, :k].float()
        valid = batch.mask[:, :k].float()
        latent = self.net.encode(batch.obs)
        rewards, cont_logits, values = [], [], []
        for step in range(k):
            reward, cont_logit, latent = self.net.step(latent, batch.action[:, step])
            rewards.append(reward)
            cont_logits.append(cont_logit)
            values.append(self.net.value(latent))
        reward_pred, cont_pred, value_pred = (torch.stack(t, dim=1) for t in (rewards, cont_logits, values))
        value_loss = self._pointwise(value_pred, value_target)
        reward_loss = self._pointwise(reward_pred, reward_target)
        discount_loss = F.binary_cross_entropy_with_logits(cont_pred, continue_target, reduction="none")
        per_step = value_loss + cfg.reward_loss_weight * reward_loss + cfg.discount_loss_weight * discount_loss
        total = (per_step * valid).sum(dim=1).mean()
        count = valid.sum().clamp(min=1.0)
        metrics = {"value_loss": ((value_loss * valid).sum() / count).item(),
                   "reward_loss": ((reward_loss * valid).sum() / count).item(),
                   "discount_loss": ((discount_loss * valid).sum() / count).item(),
                   "value_target_mean": ((value_target * valid).sum() / count).item()}
        return total, metrics

    def learn(self) -> dict[str, Any]:
        """``gradient_steps`` updates on replayed windows."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        totals: dict[str, float] = {}
        for _ in range(cfg.gradient_steps):
            batch = self.replay.sample(cfg.batch_size)
            loss, metrics = self.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.grad_steps += 1
            if cfg.tau < 1.0 or self.grad_steps % cfg.target_update_interval == 0:
                self.sync_target()
            metrics["loss"] = loss.item()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / max(1, cfg.gradient_steps)
        if totals:
            totals["learning_rate"] = self.learning_rate()
        return totals

    @torch.no_grad()
    def sync_target(self) -> None:
        """Polyak-average (or copy, tau = 1) the online weights into the target network."""
        for target, online in zip(self.target.parameters(), self.net.parameters()):
            target.lerp_(online, self.cfg.tau)

    def learning_ready(self) -> bool:
        return self.env_steps >= self.learn_after

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), **self.loop_state(include_replay)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_loop_state(state)
