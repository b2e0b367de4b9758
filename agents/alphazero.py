"""Belief-gradient AlphaZero: self-play with a batched tree search over the real game rules.

AlphaZero's policy head is read as a *belief* ``B(a|s)``: the probability that
``a`` is the optimal action in ``s``. A search tree ``T(s)`` gives a better
informed belief ``B(a|s, T(s))``; the network learns to predict it from ``s``
alone by following the belief gradient

    grad E_{(s, B) ~ replay, a ~ B} [ ln B_phi(a|s) ]  =  -grad CrossEntropy(B, B_phi(.|s)),

and its value head learns the game outcome ``z`` (from the mover's view). The
loss is ``CE(B, B_phi) + value_loss_weight * (v_phi(s) - z)^2 + weight decay``
(``weight_decay / 2 * ||phi||^2`` through the optimizer's coupled L2 term).

Believing is not choosing. Three **belief targets** (``belief_target``) turn a
root's search statistics into the stored ``B(a)``; an independent **acting
rule** (``act``) picks the move that is played:

* ``visits``   ``B(a) = N(a) / sum_b N(b)``: the root visit distribution (AlphaZero).
* ``gumbel``   ``B(a) = softmax(logits(a) + sigma(q(a)))`` over legal actions, with
  ``sigma(q) = (maxvisit_init + max_b N(b)) * value_scale * q`` and ``q`` the completed
  Q-values (unvisited actions take the mixed value) min-max rescaled to [0, 1] over the
  legal actions (Gumbel AlphaZero, Danihelka et al. 2022; equals the core's
  ``improved_policy``). Meant for ``algorithm: gumbel`` but defined for either.
* ``optimal``  ``B(a) = P(a = argmax_b V_b)``: the probability that ``a`` is the best action
  under independent Gaussian posteriors over each child's value ``V_a``. Estimator:
  every simulation through root child ``a`` backs up one return ``R`` (from the root
  mover's view); the tree arrays give each return exactly (node value, edge rewards and
  sign flips along its path, weighted by the node's own visits). With ``n_a`` returns of
  mean ``q_a`` and sum of squared deviations ``S_a``, the noise variance is the shrunk
  ``sigma_a^2 = (S_a + k * s0^2) / (n_a + k)`` (``k = 1``, ``s0 = optimal_noise_std``), the
  prior is ``V_a ~ N(v_root, tau^2)`` (``v_root`` the searched root value, ``tau =
  optimal_prior_std``), so the posterior has precision ``1/tau^2 + n_a / sigma_a^2`` and
  mean ``(v_root / tau^2 + n_a q_a / sigma_a^2) / precision``. Then
  ``P(a best) = E_{x ~ N(mu_a, sd_a)} prod_{b != a} Phi((x - mu_b) / sd_b)`` by
  Gauss-Hermite quadrature (``optimal_quadrature`` nodes), over the actions the search
  tried (``n_a > 0``; untried actions have no evidence and get 0, as with ``visits``).

Acting rules (``act``): ``argmax`` of the belief; ``sample`` from it; ``temperature``:
sample from ``B^(1/act_temperature)`` for the first ``temperature_moves`` moves of a game,
argmax afterwards. Evaluation always plays the deterministic rule (argmax of the belief of
a noise-free search, ties broken by Q).

Config -> networks -> acting (search, beliefs, self-play, the player interface) ->
learning (replay, augmentation, loss) -> checkpoints -> evaluation.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.base import Agent, AgentConfig, register
from agents.networks import ResidualBlock
from replay import SequenceReplay
from runtime.errors import UserError

BELIEF_TARGETS = ("visits", "gumbel", "optimal")
ACTING_RULES = ("argmax", "sample", "temperature")


# =============================================================================== config
@dataclasses.dataclass
class AlphaZeroConfig(AgentConfig):
    """Hyperparameters (conf/agent/alphazero.yaml; tuned per game in conf/tuned/)."""

    # network
    blocks: int = 2                     # residual blocks
    channels: int = 32                  # convolution channels
    value_hidden: int = 64              # hidden units of the value head
    # search
    algorithm: str = "puct"             # puct | gumbel
    num_simulations: int = 32           # per move in self-play
    eval_simulations: int | None = None # per move when evaluating (None: num_simulations)
    pb_c_init: float = 1.25
    pb_c_base: float = 19652.0
    dirichlet_alpha: float = 0.3
    dirichlet_fraction: float = 0.25    # root noise in self-play (never in evaluation)
    max_num_considered_actions: int = 16
    gumbel_scale: float = 1.0
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    leaves_per_step: int = 1
    search_threads: int = 1
    # belief and acting
    belief_target: str = "visits"       # visits | gumbel | optimal (formulas in the module docstring)
    optimal_prior_std: float = 0.5      # tau: prior spread of a child's value
    optimal_noise_std: float = 0.5      # s0: prior guess of the spread of one backed-up return
    optimal_quadrature: int = 32        # Gauss-Hermite nodes for P(a is best)
    act: str = "temperature"            # argmax | sample | temperature
    temperature_moves: int = 4          # 'temperature': sample during a game's first moves
    act_temperature: float = 1.0
    # self-play and learning
    moves_per_iteration: int = 4        # plies of all num_envs games per train_iteration
    buffer_size: int = 50_000           # positions kept
    learning_starts: int = 1_000        # positions before the first update
    batch_size: int = 256
    train_ratio: float = 2.0            # replayed samples per new self-play position
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    value_loss_weight: float = 1.0
    max_grad_norm: float = 5.0
    augment: bool = True                # a random board symmetry per replayed position

    def validate(self) -> None:
        choices = {"algorithm": ("puct", "gumbel"), "belief_target": BELIEF_TARGETS, "act": ACTING_RULES}
        self.check_choices(choices)
        checks = {
            "blocks": self.blocks >= 0, "channels": self.channels >= 1, "value_hidden": self.value_hidden >= 1,
            "num_simulations": self.num_simulations >= 1,
            "eval_simulations": self.eval_simulations is None or self.eval_simulations >= 1,
            "dirichlet_alpha": self.dirichlet_alpha > 0, "dirichlet_fraction": 0 <= self.dirichlet_fraction <= 1,
            "max_num_considered_actions": self.max_num_considered_actions >= 1,
            "leaves_per_step": self.leaves_per_step >= 1, "search_threads": self.search_threads >= 1,
            "optimal_prior_std": self.optimal_prior_std > 0, "optimal_noise_std": self.optimal_noise_std > 0,
            "optimal_quadrature": self.optimal_quadrature >= 2, "temperature_moves": self.temperature_moves >= 0,
            "act_temperature": self.act_temperature > 0, "moves_per_iteration": self.moves_per_iteration >= 1,
            "buffer_size": self.buffer_size >= 1, "learning_starts": self.learning_starts >= 0,
            "batch_size": self.batch_size >= 1, "train_ratio": self.train_ratio >= 0,
            "learning_rate": self.learning_rate > 0, "weight_decay": self.weight_decay >= 0,
            "value_loss_weight": self.value_loss_weight >= 0, "max_grad_norm": self.max_grad_norm > 0,
        }
        self.check_ranges(checks)


# ============================================================================= networks
class BeliefValueNet(nn.Module):
    """Residual torso over the board planes; belief logits ``[N, A]`` and value ``tanh`` ``[N]``."""

    def __init__(self, observation_shape: tuple[int, int, int], num_actions: int, blocks: int, channels: int,
                 value_hidden: int):
        super().__init__()
        c, h, w = observation_shape
        self.stem = nn.Sequential(nn.Conv2d(c, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.torso = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.belief_head = nn.Sequential(nn.Conv2d(channels, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                                         nn.Flatten(), nn.Linear(2 * h * w, num_actions))
        self.value_head = nn.Sequential(nn.Conv2d(channels, 1, 1, bias=False), nn.BatchNorm2d(1), nn.ReLU(),
                                        nn.Flatten(), nn.Linear(h * w, value_hidden), nn.ReLU(),
                                        nn.Linear(value_hidden, 1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.torso(self.stem(obs))
        return self.belief_head(x), torch.tanh(self.value_head(x)).squeeze(-1)


# ================================================================== beliefs from search
def visits_belief(visit_counts: np.ndarray) -> np.ndarray:
    """``visits``: ``N(a) / sum_b N(b)`` per row (uniform over legal actions is not needed: N > 0)."""
    counts = np.asarray(visit_counts, np.float64)
    return counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1e-12)


def gumbel_belief(prior_logits: np.ndarray, completed_q: np.ndarray, visit_counts: np.ndarray,
                  legal_mask: np.ndarray, value_scale: float, maxvisit_init: float,
                  epsilon: float = 1e-8) -> np.ndarray:
    """``gumbel``: ``softmax(logits + (maxvisit_init + max N) * value_scale * rescaled completedQ)`` over legal actions.

    ``completed_q`` holds Q for visited actions and the mixed value for the others
    (the search result's ``completed_q_values``); it is min-max rescaled to [0, 1] over the
    legal actions first, as mctx's ``qtransform_completed_by_mix_value`` does, so this
    equals the core's ``improved_policy`` (tested).
    """
    q = np.asarray(completed_q, np.float64)
    low = np.where(legal_mask, q, np.inf).min(axis=-1, keepdims=True)
    high = np.where(legal_mask, q, -np.inf).max(axis=-1, keepdims=True)
    rescaled = (q - low) / np.maximum(high - low, epsilon)
    sigma = (maxvisit_init + np.asarray(visit_counts).max(axis=-1, keepdims=True)) * value_scale
    scores = np.where(legal_mask, np.asarray(prior_logits, np.float64) + sigma * rescaled, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def gaussian_posterior(q: np.ndarray, visits: np.ndarray, sum_sq_dev: np.ndarray, prior_mean: np.ndarray,
                       prior_std: float, noise_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std of each child's value (see ``optimal`` in the module docstring)."""
    n = np.asarray(visits, np.float64)
    noise_var = (np.asarray(sum_sq_dev, np.float64) + noise_std**2) / (n + 1.0)
    precision = 1.0 / prior_std**2 + n / noise_var
    mean = (np.asarray(prior_mean, np.float64)[..., None] / prior_std**2 + n * q / noise_var) / precision
    return mean, 1.0 / np.sqrt(precision)


def probability_best(mean: np.ndarray, std: np.ndarray, legal_mask: np.ndarray, nodes: int = 32) -> np.ndarray:
    """``P(a = argmax_b V_b)`` for independent ``V_b ~ N(mean_b, std_b)`` over legal actions.

    ``E_{x ~ N(mu_a, sd_a)} prod_{b != a, legal} Phi((x - mu_b) / sd_b)`` by Gauss-Hermite
    quadrature, vectorised over ``[..., A]``; rows are renormalised (quadrature error).
    """
    from scipy.special import ndtr  # scipy ships with the suite's dependencies

    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2.0 * math.pi)
    mean = np.asarray(mean, np.float64)
    std = np.maximum(np.asarray(std, np.float64), 1e-9)
    x = mean[..., :, None] + std[..., :, None] * t                         # [..., A, G]: where V_a sits
    z = (x[..., :, None, :] - mean[..., None, :, None]) / std[..., None, :, None]   # [..., A, A, G]
    log_cdf = np.log(np.maximum(ndtr(z), 1e-300))
    others = legal_mask[..., None, :, None] & ~np.eye(mean.shape[-1], dtype=bool)[:, :, None]
    log_prod = np.where(others, log_cdf, 0.0).sum(axis=-2)                  # [..., A, G]
    p = (np.exp(log_prod) * w).sum(axis=-1)
    p = np.where(legal_mask, p, 0.0)
    total = p.sum(axis=-1, keepdims=True)
    uniform = legal_mask / np.maximum(legal_mask.sum(axis=-1, keepdims=True), 1)
    return np.where(total > 0, p / np.maximum(total, 1e-300), uniform)


def root_child_returns(tree: dict[str, np.ndarray], num_actions: int) -> tuple[np.ndarray, np.ndarray,
                                                                                np.ndarray]:
    """Per root action: number of backed-up returns, their mean and sum of squared deviations.

    Every simulation through root child ``a`` backs up one return; the simulation that
    created node ``n`` returned ``R_n = acc_n + sign_n * value_n`` at the root, where
    ``acc`` sums the edge rewards with alternating signs along the path and
    ``sign = (-1)^depth`` (two-player sign flips, discount 1). Terminal nodes are
    revisited without creating nodes, so each node's weight is its own visits (its
    visits minus its children's). Vectorised over trees; one pass over node ids
    (parents are created before children).
    """
    visits = np.asarray(tree["visits"], np.float64)
    parent, action = np.asarray(tree["parent"]), np.asarray(tree["action"])
    reward, value = np.asarray(tree["reward"], np.float64), np.asarray(tree["raw_value"], np.float64)
    children = np.asarray(tree["children"])
    num_nodes = np.asarray(tree["num_nodes"])
    B, N = visits.shape
    rows = np.arange(B)
    top = np.full((B, N), -1, np.int64)
    acc = np.zeros((B, N))
    sign = np.zeros((B, N))
    for n in range(1, int(num_nodes.max(initial=1))):
        live = n < num_nodes
        p = np.where(live, parent[:, n], 0)
        at_root = p == 0
        top[:, n] = np.where(live, np.where(at_root, action[:, n], top[rows, p]), -1)
        acc[:, n] = np.where(at_root, reward[:, n], acc[rows, p] + sign[rows, p] * reward[:, n])
        sign[:, n] = np.where(at_root, -1.0, -sign[rows, p])
    child_visits = np.where(children >= 0, np.take_along_axis(visits, np.maximum(children, 0).reshape(B, -1),
                                                              axis=1).reshape(children.shape), 0.0).sum(axis=-1)
    weight = np.where(top >= 0, visits - child_visits, 0.0)
    returns = acc + sign * value
    onehot = (top[:, :, None] == np.arange(num_actions)) * weight[:, :, None]      # [B, N, A]
    count = onehot.sum(axis=1)
    mean = np.einsum("bna,bn->ba", onehot, returns) / np.maximum(count, 1e-12)
    dev = returns[:, :, None] - mean[:, None, :]
    sum_sq = np.einsum("bna,bna->ba", onehot, dev * dev)
    return count, mean, sum_sq


# ============================================================================ the agent
@register("alphazero")
class AlphaZero(Agent):
    """Belief-gradient AlphaZero over a batched two-player game (``env.kind: game``).

    ``env`` is the :class:`~envs.games.base.BatchedGame` of ``num_envs`` self-play games.
    Without ``env`` (evaluation from a checkpoint) the agent can still act: as a player
    (``act(game)``) it searches on copies of the games it is handed.
    """

    Config = AlphaZeroConfig

    def __init__(self, cfg: AlphaZeroConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        super().__init__(cfg, spec, device, env, total_steps, seed)
        if getattr(spec, "num_players", 1) != 2 or len(spec.observation_space.shape) != 3:
            raise UserError(f"alphazero needs a two-player board game (env.kind: game); {spec.name!r} is not one",
                            key="env")
        torch.manual_seed(seed)
        self.num_actions = int(spec.num_actions if hasattr(spec, "num_actions") else spec.action_space.n)
        self.obs_shape = tuple(int(d) for d in spec.observation_space.shape)
        self.net = BeliefValueNet(self.obs_shape, self.num_actions, cfg.blocks, cfg.channels,
                                  cfg.value_hidden).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self._inference: BeliefValueNet | None = None
        self.rng = np.random.default_rng(seed)                  # self-play acting and augmentation
        self.play_rng = np.random.default_rng(seed + 1)         # exploring play outside self-play
        self.replay = SequenceReplay(
            capacity=cfg.buffer_size, observation_space=spec.observation_space, action_space=spec.action_space,
            num_envs=spec.num_envs, unroll_steps=0, n_step=1, gamma=1.0,
            extras={"belief": ((self.num_actions,), np.float32), "outcome": ((), np.float32)},
            seed=seed, device=device)
        self.env_steps = 0
        self.grad_steps = 0
        self.games_played = 0
        self.game = env
        template = env if env is not None else self._new_game(1)
        self._template = template.spawn()
        self._symmetry_maps(template)
        from planners.mcts import ForestPool

        self._forests = ForestPool()   # (batch, purpose) -> Forest
        if env is not None:
            env.reset()
            B, L = env.batch_size, int(env.max_game_length)
            self.traj_obs = np.zeros((B, L + 1) + self.obs_shape, np.float32)
            self.traj_belief = np.zeros((B, L, self.num_actions), np.float32)
            self.traj_player = np.zeros((B, L), np.int8)
            self.traj_action = np.zeros((B, L), np.int64)

    def _new_game(self, batch_size: int):
        from envs.games import make_game

        name = self.spec.extras.get("game") if self.spec.extras else None
        if not name:
            raise UserError("the environment spec names no game; alphazero needs env.kind: game", key="env")
        return make_game(name, batch_size=batch_size, **dict(self.spec.extras.get("game_kwargs", {})))

    # ======================================================================== acting
    def search_config(self, evaluation: bool, simulations: int | None = None):
        """The planners.mcts configuration: self-play adds root noise; evaluation is noise-free."""
        from planners.mcts import SearchConfig

        cfg = self.cfg
        default = (cfg.eval_simulations or cfg.num_simulations) if evaluation else cfg.num_simulations
        sims = simulations if simulations else default
        return SearchConfig(
            algorithm=cfg.algorithm, mode="alphazero", num_simulations=int(sims), discount=1.0,
            pb_c_init=cfg.pb_c_init, pb_c_base=cfg.pb_c_base, dirichlet_alpha=cfg.dirichlet_alpha,
            # Gumbel search explores through its own Gumbel draws and refuses Dirichlet noise
            dirichlet_fraction=0.0 if evaluation or cfg.algorithm == "gumbel" else cfg.dirichlet_fraction,
            known_bounds=(-1.0, 1.0),
            max_num_considered_actions=min(cfg.max_num_considered_actions, self.num_actions),
            gumbel_scale=0.0 if evaluation else cfg.gumbel_scale, value_scale=cfg.value_scale,
            maxvisit_init=cfg.maxvisit_init, leaves_per_step=cfg.leaves_per_step, num_threads=cfg.search_threads)

    def _forest(self, batch_size: int, evaluation: bool, simulations: int | None = None):
        """A cached Forest per (batch, purpose): storage is allocated once."""
        return self._forests.get_forest(batch_size, self.num_actions, self.search_config(evaluation, simulations),
                                        evaluation, self.seed * 1_000_003 + batch_size * 2 + int(evaluation))

    def inference_net(self) -> BeliefValueNet:
        """A copy of the network for acting with batch norm folded into the convolutions.

        Same outputs as ``net`` in eval mode, fewer kernels per call (search calls the
        network once per simulation step). Rebuilt lazily after the weights change.
        """
        if self._inference is None:
            from torch.nn.utils.fusion import fuse_conv_bn_eval

            self.net.eval()
            fused = copy.deepcopy(self.net)
            for block in fused.torso:
                block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
                block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
            for sequence in (fused.stem, fused.belief_head, fused.value_head):   # conv, batch norm, ...
                sequence[0], sequence[1] = fuse_conv_bn_eval(sequence[0], sequence[1]), nn.Identity()
            fused.eval().requires_grad_(False)
            self._inference = fused
        return self._inference

    @torch.inference_mode()
    def evaluate_network(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Belief logits ``[N, A]`` and values ``[N]`` (numpy float32) from the inference copy."""
        logits, value = self.inference_net()(torch.from_numpy(np.ascontiguousarray(obs, np.float32)).to(self.device))
        return logits.cpu().numpy(), value.cpu().numpy()

    def run_search(self, game, evaluation: bool, simulations: int | None = None) -> dict[str, np.ndarray]:
        """Search every game of ``game`` (unfinished) in one batched forest; returns root statistics.

        The simulator keeps one saved state per tree node in a preallocated pool
        (slot ``tree * max_nodes + node``): each simulation step gathers the parents of
        the leaves, steps them with the leaves' actions in one vectorised call, scatters
        the children into the pool and evaluates them with the network (terminal children
        get their exact outcome as the edge reward instead).
        """
        from planners.mcts import ModelOutput

        B = game.batch_size
        forest = self._forest(B, evaluation, simulations)
        N = forest.max_nodes
        obs, legal = game.observation(), game.legal_mask()
        logits, value = self.evaluate_network(obs)
        pool = game.clone(np.zeros(B * N, np.int64))
        pool.put(np.arange(B) * N, game.clone())
        sim = game.spawn()

        def simulator(leaves):
            need = leaves.needs_eval
            parents = leaves.tree_index.astype(np.int64) * N + leaves.parent_node
            sim.restore(pool.take(parents))
            sim.step(np.where(need, leaves.action, -1).astype(np.int64))
            rows = np.flatnonzero(need)
            pool.put(leaves.tree_index[rows].astype(np.int64) * N + leaves.node[rows], sim.clone(rows))
            terminal = sim.terminal() & need
            # the mover wins or draws on the edge into a terminal node; nothing is left to play there
            reward = np.where(terminal, -sim.outcome_for_to_play(), 0.0)
            leaf_logits, leaf_value = self.evaluate_network(sim.observation())
            leaf_legal = sim.legal_mask()
            leaf_legal[~need] = True
            return ModelOutput(reward=reward, value=np.where(terminal, 0.0, leaf_value),
                               prior_logits=leaf_logits, legal_mask=leaf_legal, terminal=terminal)

        forest.set_roots(logits, value, legal)
        forest.run(simulator)
        result = forest.results(temperature=1.0)
        out = {"legal": legal, "logits": logits, "value": value, "visits": result.visit_counts,
               "q": result.q_values, "completed_q": result.completed_q_values, "improved_policy": result.improved_policy, "root_value": result.root_value,
               "selected": result.selected_action}
        out["belief"] = self.belief(out, forest)
        return out

    def belief(self, stats: dict[str, np.ndarray], forest=None) -> np.ndarray:
        """The search belief ``B(a | s, T(s))`` named by ``belief_target`` (float64 ``[B, A]``)."""
        target, legal = self.cfg.belief_target, stats["legal"]
        if target == "visits":
            return visits_belief(stats["visits"])
        if target == "gumbel":
            return gumbel_belief(stats["logits"], stats["completed_q"], stats["visits"], legal,
                                 self.cfg.value_scale, self.cfg.maxvisit_init)
        count, mean, sum_sq = root_child_returns(forest.tree_arrays(), self.num_actions)
        post_mean, post_std = gaussian_posterior(mean, count, sum_sq, stats["root_value"],
                                                 self.cfg.optimal_prior_std, self.cfg.optimal_noise_std)
        # Only actions the search tried compete: an untried action has no evidence, and a
        # prior centred on the root value would hand it about even odds against the best one.
        tried = legal & (count > 0)
        tried = np.where(tried.any(axis=1, keepdims=True), tried, legal)
        return probability_best(post_mean, post_std, tried, self.cfg.optimal_quadrature)

    def choose(self, belief: np.ndarray, legal: np.ndarray, q: np.ndarray, move_number: np.ndarray,
               explore: bool, rng: np.random.Generator | None = None) -> np.ndarray:
        """The acting rule: argmax (ties broken by Q), sampling, or a temperature schedule.

        Sampling draws from ``rng`` (default: the self-play generator).
        """
        greedy = np.where(legal, belief + 1e-6 * (q + 1.0), -np.inf).argmax(axis=1)
        if not explore or self.cfg.act == "argmax":
            return greedy
        weights = np.where(legal, np.maximum(belief, 0.0), 0.0)
        if self.cfg.act == "temperature":
            weights = weights ** (1.0 / self.cfg.act_temperature)
        weights = np.where(weights.sum(axis=1, keepdims=True) > 0, weights, legal.astype(np.float64))
        cumulative = np.cumsum(weights, axis=1)
        draws = (rng or self.rng).random(len(weights))[:, None] * cumulative[:, -1:]
        sampled = np.minimum((cumulative <= draws).sum(axis=1), self.num_actions - 1)
        sampled = np.where(legal[np.arange(len(sampled)), sampled], sampled, greedy)
        if self.cfg.act == "temperature":
            return np.where(move_number < self.cfg.temperature_moves, sampled, greedy)
        return sampled

    def act(self, obs: Any, explore: bool = False, legal_mask: np.ndarray | None = None) -> np.ndarray:
        """Actions for a batch.

        * ``act(game)`` (the player protocol of ``envs.games``): searches the games handed
          over (on copies) and plays the deterministic rule unless ``explore``.
        * ``act(obs)``: observations only give no simulator, so the raw network belief's
          argmax (over ``legal_mask`` when given) is played, or a sample when ``explore``.
        """
        from envs.games.base import BatchedGame

        if isinstance(obs, BatchedGame):
            return self.play(obs, explore)
        logits, _ = self.evaluate_network(np.asarray(obs, np.float32))
        legal = np.ones_like(logits, bool) if legal_mask is None else np.asarray(legal_mask, bool)
        logits = np.where(legal, logits, -np.inf)
        if explore:
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            return self.choose(p / p.sum(axis=1, keepdims=True), legal, np.zeros_like(p), np.zeros(len(p)), True,
                               self.play_rng)
        return logits.argmax(axis=1)

    def play(self, game, explore: bool = False, simulations: int | None = None) -> np.ndarray:
        """One searched move in every unfinished game of ``game`` (which is not stepped).

        ``simulations=0`` plays the raw network belief (no search), as ``act(obs)`` does.
        """
        actions = np.full(game.batch_size, -1, np.int64)
        rows = np.flatnonzero(~game.terminal())
        if rows.size == 0:
            return actions
        sub = game.take(rows)
        if simulations == 0:
            actions[rows] = self.act(sub.observation(), explore, legal_mask=sub.legal_mask())
            return actions
        stats = self.run_search(sub, evaluation=not explore, simulations=simulations)
        actions[rows] = self.choose(stats["belief"], stats["legal"], stats["q"], sub.num_moves(), explore,
                                    self.play_rng)
        return actions

    def player(self, simulations: int | None = None, explore: bool = False) -> AlphaZeroPlayer:
        """This agent as an ``envs.games`` player (``act(game)`` and ``seed(seed)``) for ``play_match``."""
        return AlphaZeroPlayer(self, simulations, explore)

    def seed_player(self, seed: int | None) -> None:
        """Reseed play outside self-play (called by ``play_match`` through the player's ``seed``).

        Evaluation searches are noise-free and play the argmax, so this only matters for
        exploring players; the self-play generator is never touched (training does not
        depend on when it is evaluated).
        """
        self.play_rng = np.random.default_rng(seed)
        for (batch, evaluation), forest in self._forests.items():
            if evaluation:
                forest.seed(int(seed or 0) * 1_000_003 + batch)

    def self_play(self, plies: int) -> dict[str, float]:
        """``plies`` moves in every self-play game, one batched search per move.

        Finished games go to the replay whole (observations, search beliefs, the outcome
        ``z`` from each position's mover's view) and are restarted in place.
        """
        game = self.game
        B = game.batch_size
        rows = np.arange(B)
        finished_lengths, root_values = [], []
        for _ in range(plies):
            stats = self.run_search(game, evaluation=False)
            move = game.num_moves().astype(np.int64)
            actions = self.choose(stats["belief"], stats["legal"], stats["q"], move, explore=True)
            self.traj_obs[rows, move] = game.observation()
            self.traj_belief[rows, move] = stats["belief"]
            self.traj_player[rows, move] = game.to_play()
            self.traj_action[rows, move] = actions
            root_values.append(float(np.mean(stats["root_value"])))
            game.step(actions)
            self.env_steps += B
            done = np.flatnonzero(game.terminal())
            if done.size:
                final_obs = game.observation()
                outcome0 = game.outcome()
                for b in done:
                    T = int(move[b]) + 1
                    self.traj_obs[b, T] = final_obs[b]
                    z = np.where(self.traj_player[b, :T] == 0, outcome0[b], -outcome0[b]).astype(np.float32)
                    rewards = np.zeros(T, np.float32)
                    rewards[-1] = 1.0 if outcome0[b] != 0 else 0.0
                    ends = np.zeros(T, bool)
                    ends[-1] = True
                    self.replay.add_episode(int(b), self.traj_obs[b, :T + 1], self.traj_action[b, :T], rewards, ends,
                                            np.zeros(T, bool),
                                            extras={"belief": self.traj_belief[b, :T], "outcome": z})
                    finished_lengths.append(T)
                self.games_played += done.size
                game.reset_games(done)
        metrics = {"root_value": float(np.mean(root_values)), "games": float(len(finished_lengths))}
        if finished_lengths:
            metrics["game_length"] = float(np.mean(finished_lengths))
        return metrics

    # ====================================================================== learning
    def _symmetry_maps(self, game) -> None:
        """Gather indices that apply each board symmetry to observations and beliefs at once."""
        c, h, w = self.obs_shape
        perms = np.asarray(game.action_permutations(), np.int64)            # perm[s, a]: where a goes
        grid = np.broadcast_to(np.arange(h * w, dtype=np.float64).reshape(1, h, w), (c, h, w))
        cells = [np.asarray(game.transform_observation(grid.copy(), s))[0].reshape(-1) for s in range(len(perms))]
        self.obs_source = torch.as_tensor(np.stack(cells).astype(np.int64))     # new cell j <- old cell src[s, j]
        self.belief_source = torch.as_tensor(np.argsort(perms, axis=1))         # new a' <- old src[s, a']

    def augment(self, obs: torch.Tensor, belief: torch.Tensor, symmetry: np.ndarray) -> tuple[torch.Tensor,
                                                                                           torch.Tensor]:
        """Apply symmetry ``symmetry[i]`` to observation and belief ``i`` (vectorised gathers)."""
        s = torch.as_tensor(symmetry, dtype=torch.long)
        n, c = obs.shape[:2]
        flat = obs.reshape(n, c, -1)
        cell_index = self.obs_source[s][:, None, :].expand(n, c, flat.shape[-1]).to(obs.device)
        moved = torch.gather(flat, 2, cell_index).reshape(obs.shape)
        return moved, torch.gather(belief, 1, self.belief_source[s].to(belief.device))

    def loss(self, obs: torch.Tensor, belief: torch.Tensor, outcome: torch.Tensor) -> tuple[torch.Tensor,
                                                                                        dict[str, float]]:
        """Belief cross-entropy (minus the belief gradient's objective) plus the value loss."""
        logits, value = self.net(obs)
        belief_loss = -(belief * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
        value_loss = F.mse_loss(value, outcome)
        total = belief_loss + self.cfg.value_loss_weight * value_loss
        return total, {"belief_loss": belief_loss.item(), "value_loss": value_loss.item()}

    def learn(self, steps: int) -> dict[str, float]:
        """``steps`` gradient steps on replayed positions (with random symmetries)."""
        self.net.train()
        sums: dict[str, float] = {}
        for _ in range(steps):
            batch = self.replay.sample(self.cfg.batch_size)
            obs = batch.obs.float()
            belief = batch.extras["belief"][:, 0].float()
            belief = belief / belief.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            outcome = batch.extras["outcome"][:, 0].float()
            if self.cfg.augment and len(self.belief_source) > 1:
                obs, belief = self.augment(obs, belief, self.rng.integers(0, len(self.belief_source), len(obs)))
            loss, parts = self.loss(obs, belief, outcome)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self._inference = None
            self.grad_steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def train_iteration(self) -> dict[str, Any]:
        """Self-play ``moves_per_iteration`` plies of all games, then ``train_ratio`` samples per new position."""
        if self.game is None:
            raise RuntimeError("train_iteration needs the self-play game (env) the agent was built with")
        before = self.env_steps
        metrics = self.self_play(self.cfg.moves_per_iteration)
        new = self.env_steps - before
        if len(self.replay) >= max(self.cfg.learning_starts, 1):
            steps = max(1, round(new * self.cfg.train_ratio / self.cfg.batch_size))
            metrics.update(self.learn(steps))
        metrics.update(env_steps=new, grad_steps_total=self.grad_steps, games_total=self.games_played)
        return metrics

    # =================================================================== checkpoints
    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        state: dict[str, Any] = {
            "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "env_steps": self.env_steps, "grad_steps": self.grad_steps, "games_played": self.games_played,
            "search_rng": {str(b): f.rng_state.astype(np.int64) for (b, e), f in self._forests.items() if not e},
        }
        if self.game is not None:
            arrays = self.game.clone().arrays
            if all(a.dtype != object for a in arrays.values()):   # the OpenSpiel adapter's states are objects
                state["games"] = {k: np.asarray(v) for k, v in arrays.items()}
                state["trajectories"] = {"obs": self.traj_obs, "belief": self.traj_belief,
                                         "player": self.traj_player, "action": self.traj_action}
        if include_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from envs.games.base import GameState

        self.net.load_state_dict(state["net"])
        self._inference = None
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.env_steps = int(state.get("env_steps", 0))
        self.grad_steps = int(state.get("grad_steps", 0))
        self.games_played = int(state.get("games_played", 0))
        for batch, rng_state in state.get("search_rng", {}).items():      # the self-play searches' streams
            self._forest(int(batch), False).rng_state = np.asarray(rng_state).astype(np.uint64)
        if self.game is not None and "games" in state:
            arrays = {k: np.array(v) for k, v in state["games"].items()}
            self.game.restore(GameState(arrays, kind=self.game.name))
            for name, value in state["trajectories"].items():
                getattr(self, f"traj_{name}")[...] = np.asarray(value)
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])

    # ==================================================================== evaluation
    def evaluate(self, episodes: int, seed: int) -> dict[str, float]:
        """Games against uniform random play (and perfect play on tic-tac-toe), colours alternating."""
        from runtime.match_eval import evaluate_against

        games = max(2, episodes + episodes % 2)
        opponents = ["random"] + (["perfect"] if self._template.name == "tic_tac_toe" else [])
        out: dict[str, float] = {}
        for opponent in opponents:
            result = evaluate_against(self, self._template, opponent, games, seed)
            out.update({f"eval/vs_{opponent}_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        return out


class AlphaZeroPlayer:
    """An :class:`AlphaZero` agent behind the player protocol of ``envs.games`` (reseedable).

    The agent's own ``seed`` attribute is its construction seed (the Agent contract), so
    ``play_match`` cannot reseed the agent directly; this wrapper gives it ``seed()``.
    """

    def __init__(self, agent: AlphaZero, simulations: int | None = None, explore: bool = False):
        self.agent, self.simulations, self.explore = agent, simulations, explore

    def seed(self, seed: int | None) -> None:
        self.agent.seed_player(seed)

    def act(self, game) -> np.ndarray:
        return self.agent.play(game, self.explore, self.simulations)
