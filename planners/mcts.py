"""Batched Monte Carlo tree search over the compiled core (``planners._core``).

One :class:`Forest` holds ``B`` independent search trees in flat, preallocated
arrays inside C++. A search alternates two calls per simulation step, each
serving all ``B`` trees at once:

1. ``select()`` descends every tree (pUCT or Gumbel rules) and names, for each
   tree, the leaf edge ``(parent_node, action)`` to evaluate and the node id
   the new node will get;
2. the caller's **model function** evaluates those edges in one batch;
3. ``expand_and_backup(outputs)`` creates the nodes and backs the values up.

The high-level :func:`search` runs that loop for you::

    import numpy as np
    from planners.mcts import SearchConfig, ModelOutput, search

    B, A = 4, 9
    rng = np.random.default_rng(0)

    def model_fn(leaves):                      # a toy model: random outputs
        M = leaves.action.shape[0]
        return ModelOutput(reward=np.zeros(M), value=rng.uniform(-1, 1, M),
                           prior_logits=rng.normal(size=(M, A)))

    result = search(np.zeros((B, A)), np.zeros(B), model_fn,
                    SearchConfig(algorithm="gumbel", num_simulations=16), seed=0)
    result.selected_action      # int32[B]  action to play
    result.improved_policy      # float64[B, A]  policy-learning target

The model-function protocol
---------------------------
``model_fn(leaves: LeafBatch) -> ModelOutput`` is called once per simulation
step with ``M = B * leaves_per_step`` rows; row ``m`` belongs to tree
``leaves.tree_index[m]`` and asks for the outcome of taking
``leaves.action[m]`` in node ``leaves.parent_node[m]``; the resulting node gets
id ``leaves.node[m]`` (the root is node 0). Rows with
``leaves.needs_eval[m] == False`` (a simulation that ended on a terminal node, a
second leaf on an edge already being evaluated, or an unused leaf slot) may
hold anything; their outputs are ignored.

* **Learned model (MuZero):** keep latent states in your own tensor
  ``latent[B, max_nodes, ...]``; read ``latent[tree_index, parent_node]``, run
  dynamics + prediction on ``action``, write the new latent to
  ``latent[tree_index, node]``.
* **Real simulator (AlphaZero):** keep simulator states indexed the same way;
  clone ``state[tree_index, parent_node]``, step it with ``action``, store it
  at ``[tree_index, node]``, and return ``terminal=True`` with the exact
  outcome for finished games.

``ModelOutput`` holds ``reward [M]`` (reward of the edge, from the point of
view of the player who moved), ``value [M]`` (value of the new node, from the
point of view of the player to move there), ``prior_logits [M, A]`` and,
optionally, ``legal_mask [M, A]`` (bool, default all legal) and
``terminal [M]`` (bool). Arrays may be numpy arrays or CPU torch tensors,
float32 or float64, any strides: the core reads them in place, without copies.
Entries of illegal actions (and every prior of a terminal node) are ignored.

Conventions
-----------
* Every node counts its own network value as its first visit (as mctx does),
  so a fresh root has one visit and ``Q(s, a) = r(s, a) + g * V(child)`` with
  ``g = discount`` in ``mode='muzero'`` and ``g = -discount`` in
  ``mode='alphazero'`` (two-player alternating games, values from the mover's
  point of view, sign flips along every edge).
* pUCT follows the MuZero pseudocode: ``c1 = pb_c_init``, ``c2 = pb_c_base``,
  tree-wide min-max normalised Q (``known_bounds`` seeds the range),
  unvisited children score 0 for value, Dirichlet noise over legal root
  actions, ties go to the lowest action index.
* Gumbel search follows mctx's ``gumbel_muzero_policy`` (Danihelka et al.,
  2022): Gumbel-top-k at the root with sequential halving, completed Q-values
  by the mixed value, the improved policy ``softmax(logits + sigma(q))``,
  deterministic non-root selection.
* Terminal nodes are never expanded; a simulation that reaches one backs up
  the value stored for it again (its exact outcome).
* Each tree has its own random stream (Dirichlet, Gumbel, action sampling)
  seeded from Python: the same seed gives the same search for any thread count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional, Protocol, Sequence, Union

import numpy as np

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_REBUILD = "rebuild it from the repository root with `pip install -e . --no-build-isolation` (or `pip install -e .`)"


def source_fingerprint(csrc: Path = _CSRC) -> str:
    """SHA-256 over csrc/*.cpp, *.h, *.cu as CMakeLists.txt computes it."""
    files = sorted(p for p in csrc.iterdir() if p.suffix in (".cpp", ".h", ".cu"))
    digests = "".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in files)
    return hashlib.sha256(digests.encode()).hexdigest()


def check_extension(compiled_fingerprint: str, csrc: Path = _CSRC) -> None:
    """Raise ImportError if the sources in ``csrc`` differ from those compiled in."""
    if csrc.is_dir() and any(csrc.glob("*.cpp")) and compiled_fingerprint != source_fingerprint(csrc):
        raise ImportError(f"The compiled search core planners._core is stale: {csrc} changed since it was built; {_REBUILD}.")


try:
    from planners import _core  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"The compiled search core planners._core is missing or broken ({exc}); {_REBUILD}.") from exc
check_extension(_core.source_fingerprint())

NodeBudgetExceeded = _core.NodeBudgetExceeded
"""Raised (a RuntimeError) when a tree needs more nodes than ``max_nodes``."""

ArrayLike = Any  # numpy.ndarray or a CPU torch.Tensor


@dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of a search. Defaults follow MuZero / mctx."""

    algorithm: Literal["puct", "gumbel"] = "puct"
    mode: Literal["muzero", "alphazero"] = "muzero"
    num_simulations: int = 50
    discount: float = 0.997
    # pUCT (MuZero pseudocode)
    pb_c_init: float = 1.25
    pb_c_base: float = 19652.0
    dirichlet_alpha: float = 0.3
    dirichlet_fraction: float = 0.0  # 0 disables root noise (use 0.25 for self-play)
    known_bounds: Optional[tuple[float, float]] = None
    # pUCT value of an unvisited child: "zero" (MuZero pseudocode: the bottom of the
    # min-max range) or "parent" (the node's own value, normalised and clipped to
    # [0, 1], as EfficientZero's and LightZero's trees do)
    unvisited_value: Literal["zero", "parent"] = "zero"
    # Gumbel (mctx gumbel_muzero_policy / qtransform_completed_by_mix_value)
    max_num_considered_actions: int = 16
    gumbel_scale: float = 1.0
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    rescale_epsilon: float = 1e-8
    # execution
    leaves_per_step: int = 1  # >1: leaf batching inside each tree with virtual loss
    num_threads: int = 1  # threads over trees; results do not depend on it
    temperature: float = 1.0  # visit-count policy temperature (0 = argmax)

    def __post_init__(self) -> None:
        if self.algorithm not in ("puct", "gumbel"):
            raise ValueError(f"algorithm must be 'puct' or 'gumbel', got {self.algorithm!r}")
        if self.unvisited_value not in ("zero", "parent"):
            raise ValueError(f"unvisited_value must be 'zero' or 'parent', got {self.unvisited_value!r}")
        if self.mode not in ("muzero", "alphazero"):
            raise ValueError(f"mode must be 'muzero' or 'alphazero', got {self.mode!r}")
        if int(self.num_simulations) != self.num_simulations or self.num_simulations < 0:
            raise ValueError(f"num_simulations must be a non-negative integer, got {self.num_simulations!r}")
        if self.leaves_per_step < 1 or self.num_threads < 1:
            raise ValueError("leaves_per_step and num_threads must be >= 1")
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")

    def core_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``_core.Forest`` for this configuration."""
        return dict(
            algorithm=self.algorithm,
            two_player=self.mode == "alphazero",
            discount=float(self.discount),
            pb_c_init=float(self.pb_c_init),
            pb_c_base=float(self.pb_c_base),
            dirichlet_alpha=float(self.dirichlet_alpha),
            dirichlet_fraction=float(self.dirichlet_fraction),
            known_bounds=None if self.known_bounds is None else (float(self.known_bounds[0]), float(self.known_bounds[1])),
            max_num_considered_actions=int(self.max_num_considered_actions),
            gumbel_scale=float(self.gumbel_scale),
            value_scale=float(self.value_scale),
            maxvisit_init=float(self.maxvisit_init),
            rescale_epsilon=float(self.rescale_epsilon),
            unvisited_value=self.unvisited_value,
        )


class LeafBatch(NamedTuple):
    """Leaves to evaluate this step: numpy views refreshed in place by every select().

    Row ``m`` (``M = B * leaves_per_step`` rows, tree-major) asks the model for
    the edge ``(parent_node[m], action[m])`` of tree ``tree_index[m]``; the
    new node gets id ``node[m]``. Rows with ``needs_eval[m] == False`` are
    ignored. Wrap with ``torch.from_numpy`` for torch callers (no copy). The
    arrays are the caller's copies of the core's leaf records: writing into
    them cannot corrupt the trees.
    """

    tree_index: np.ndarray  # int32[M]
    parent_node: np.ndarray  # int32[M]
    action: np.ndarray  # int32[M]
    node: np.ndarray  # int32[M]
    needs_eval: np.ndarray  # bool[M]


class ModelOutput(NamedTuple):
    """What a model function returns for a LeafBatch (arrays with M rows)."""

    reward: ArrayLike  # float[M], reward of the edge for the player who moved
    value: ArrayLike  # float[M], value of the new node for the player to move there
    prior_logits: ArrayLike  # float[M, A]
    legal_mask: Optional[ArrayLike] = None  # bool[M, A]; None = all legal
    terminal: Optional[ArrayLike] = None  # bool[M]; None = no terminal nodes


class ModelFn(Protocol):
    """Batched model: evaluates every leaf of a step in one call."""

    def __call__(self, leaves: LeafBatch) -> Union[ModelOutput, Sequence[ArrayLike]]: ...


@dataclass
class SearchResult:
    """Root statistics of B searches (numpy arrays owned by the caller)."""

    visit_counts: np.ndarray  # int32[B, A] visits of each root action
    q_values: np.ndarray  # float64[B, A] Q(root, a) = r + g * V(child); 0 where unvisited
    completed_q_values: np.ndarray  # float64[B, A] Q with unvisited actions completed by the mixed value
    improved_policy: np.ndarray  # float64[B, A] gumbel: softmax(logits + sigma(q)); puct: visit fractions
    visit_policy: np.ndarray  # float64[B, A] visits ** (1 / temperature), normalised
    root_value: np.ndarray  # float64[B] mean value at the root after search
    selected_action: np.ndarray  # int32[B] gumbel: argmax of the final halving; puct: sampled from visit_policy


def _detach(x: Any) -> Any:
    """Drop autograd tracking from torch tensors so they can cross without copies."""
    if getattr(x, "requires_grad", False):
        return x.detach()
    return x


class Forest:
    """B search trees in preallocated storage: the step-level search API.

    ``max_nodes`` bounds the nodes per tree (root included); a search needs
    ``num_simulations + 1`` plus whatever subtree reuse keeps. Use one Forest
    per stream of searches: storage is allocated once.
    """

    def __init__(
        self,
        batch_size: int,
        num_actions: int,
        config: SearchConfig = SearchConfig(),
        max_nodes: Optional[int] = None,
    ) -> None:
        self.config = config
        if max_nodes is None:
            max_nodes = config.num_simulations + 1
        self._core = _core.Forest(
            int(batch_size),
            int(num_actions),
            int(max(max_nodes, 2)),
            leaves_per_step=int(config.leaves_per_step),
            num_threads=int(config.num_threads),
            **config.core_kwargs(),
        )
        self._leaves = LeafBatch(*self._core.leaf_arrays()[:5])

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        return self._core.batch_size

    @property
    def num_actions(self) -> int:
        return self._core.num_actions

    @property
    def max_nodes(self) -> int:
        return self._core.max_nodes

    @property
    def leaves(self) -> LeafBatch:
        """The current step's leaves (views refreshed in place by select())."""
        return self._leaves

    @property
    def simulations_left(self) -> int:
        """Simulations still to run in the current search (max over trees)."""
        return self._core.simulations_left

    @property
    def rng_state(self) -> np.ndarray:
        """Per-tree random stream states (uint64[B]); assign to restore."""
        return self._core.get_rng_state()

    @rng_state.setter
    def rng_state(self, state: np.ndarray) -> None:
        self._core.set_rng_state(np.ascontiguousarray(state, dtype=np.uint64))

    # ------------------------------------------------------------------ steps
    def seed(self, seed: int) -> None:
        """Seed tree b's random stream from (seed, b)."""
        self._core.seed(int(seed) & 0xFFFFFFFFFFFFFFFF)

    def set_roots(
        self,
        prior_logits: ArrayLike,
        value: ArrayLike,
        legal_mask: Optional[ArrayLike] = None,
        only_missing: bool = False,
    ) -> None:
        """Start every tree (or, with only_missing, those advance() emptied) from root outputs."""
        self._core.set_roots(_detach(prior_logits), _detach(value), _detach(legal_mask), only_missing)

    def begin(self, num_simulations: Optional[int] = None) -> None:
        """Prepare a search: root noise, Gumbel draws, min-max statistics."""
        n = self.config.num_simulations if num_simulations is None else num_simulations
        self._core.begin(int(n))

    def select(self) -> int:
        """Choose the leaves of this step (see :attr:`leaves`); returns how many need evaluation."""
        return self._core.select()

    def expand_and_backup(self, output: Union[ModelOutput, Sequence[ArrayLike], None]) -> None:
        """Create the evaluated nodes and back values up (None if no leaf needs evaluation)."""
        if output is None:
            self._core.expand_and_backup(None, None, None, None, None)
            return
        out = tuple(output)
        if not 3 <= len(out) <= 5:
            raise ValueError("model output must be (reward, value, prior_logits[, legal_mask[, terminal]])")
        out = out + (None,) * (5 - len(out))
        self._core.expand_and_backup(*(_detach(x) for x in out))

    def cancel(self) -> None:
        """Abandon the pending step (after a failed model call): the trees return to their state before select()."""
        self._core.cancel()

    def run(self, model_fn: ModelFn, num_simulations: Optional[int] = None) -> None:
        """Run a whole search on roots already set: begin + select/model/expand until done."""
        self.begin(num_simulations)
        leaves = self._leaves
        core = self._core
        # One core call per step: expand_and_select backs the step up and selects
        # the next leaves (-1 when the search is done).
        step = core.expand_and_select
        try:
            count = core.select() if core.simulations_left > 0 else -1
            while count >= 0:
                if count == 0:
                    count = step(None, None, None, None, None)
                    continue
                output = model_fn(leaves)
                if type(output) is ModelOutput:
                    try:
                        count = step(*output)  # fast path: no per-step Python work
                        continue
                    except TypeError:
                        pass  # e.g. tensors that require grad: the outputs were rejected before any change
                self.expand_and_backup(output)
                count = core.select() if core.simulations_left > 0 else -1
        except BaseException:
            core.cancel()  # a failed model call or rejected outputs leave the trees as before select()
            raise

    def results(self, temperature: Optional[float] = None) -> SearchResult:
        """Root statistics of the last search (fresh arrays)."""
        t = self.config.temperature if temperature is None else temperature
        return SearchResult(**self._core.results(float(t)))

    def advance(self, actions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Subtree reuse: make the child reached by ``actions[b]`` each tree's new root.

        Returns ``(kept bool[B], node_map int32[B, max_nodes])`` where
        ``node_map[b, new] = old`` node id (-1 beyond the kept nodes), so the
        caller can move its per-node states: ``states[b, :k] = states[b, node_map[b, :k]]``.
        Trees whose child was never expanded (or is terminal) are emptied;
        give them fresh roots with ``set_roots(..., only_missing=True)``.
        """
        kept = self._core.advance(_detach(actions))
        return kept, np.array(self._core.tree_arrays()["node_map"])

    def clear(self) -> None:
        """Empty every tree."""
        self._core.clear()

    def tree_arrays(self) -> dict[str, Any]:
        """Read-only views of the node arrays (for inspection and tests)."""
        return self._core.tree_arrays()


class ForestPool(dict):
    """Forests kept per ``(batch_size, purpose)`` key, for agents that search repeatedly
    (self-play, evaluation, reanalyse): storage is allocated once per key and rebuilt
    only when the search config changes. A mapping of key -> Forest."""

    def get_forest(self, batch_size: int, num_actions: int, config: SearchConfig, purpose: Any,
                   seed: int) -> Forest:
        """The forest for ``(batch_size, purpose)``; a new one is seeded with ``seed``."""
        key = (batch_size, purpose)
        forest = self.get(key)
        if forest is None or forest.config != config:
            forest = Forest(batch_size, num_actions, config)
            forest.seed(seed)
            self[key] = forest
        return forest


def search(
    prior_logits: ArrayLike,
    value: ArrayLike,
    model_fn: ModelFn,
    config: Optional[SearchConfig] = None,
    *,
    legal_mask: Optional[ArrayLike] = None,
    seed: Optional[int] = None,
    forest: Optional[Forest] = None,
    reuse: bool = False,
    temperature: Optional[float] = None,
) -> SearchResult:
    """Run ``config.num_simulations`` simulations on B trees and return root statistics.

    ``prior_logits [B, A]`` and ``value [B]`` are the network outputs at the
    roots (root node id 0), ``legal_mask [B, A]`` the legal root actions.
    ``config`` defaults to ``SearchConfig()`` (or the forest's config).
    Pass a ``forest`` to reuse its storage (and, with ``reuse=True``, the
    subtrees kept by ``forest.advance``); ``seed`` reseeds the per-tree
    random streams (None keeps the forest's streams running).
    """
    if forest is None:
        shape = getattr(prior_logits, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(f"prior_logits must be a [B, A] array, got {type(prior_logits).__name__} of shape {shape}")
        config = config if config is not None else SearchConfig()
        forest = Forest(int(shape[0]), int(shape[1]), config)
    elif config is None:
        config = forest.config
    elif config != forest.config:
        raise ValueError("config differs from the forest's config; build a new Forest for a new configuration")
    if seed is not None:
        forest.seed(seed)
    forest.set_roots(prior_logits, value, legal_mask, only_missing=reuse)
    forest.run(model_fn, config.num_simulations)
    return forest.results(temperature)


__all__ = [
    "Forest",
    "ForestPool",
    "LeafBatch",
    "ModelFn",
    "ModelOutput",
    "NodeBudgetExceeded",
    "SearchConfig",
    "SearchResult",
    "search",
    "source_fingerprint",
]
