"""Plain-Python search: the test oracle of the compiled core (planners._core).

:class:`ReferenceForest` implements exactly the algorithms of
``csrc/arbor_tree.h`` (pUCT with min-max normalisation, AlphaZero sign flips
and terminal nodes, Gumbel search with sequential halving, leaf batching with
virtual loss, subtree reuse, the per-tree random streams) with Python floats
and the ``math`` module, one tree and one node at a time. Floating-point
operations happen in the same order as in C++, so a correct core agrees with
it bit for bit on visit counts, Q-values and policies. It is slow (pure
Python); use it for tests and for reading, not for play.

The step API mirrors :class:`planners.mcts.Forest`: ``set_roots``, ``begin``,
``select`` (returns a list of leaves), ``expand_and_backup`` (model outputs
with one row per leaf slot), ``results``, ``advance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

MASK64 = 0xFFFFFFFFFFFFFFFF
LEAF_NONE, LEAF_EXPAND, LEAF_TERMINAL, LEAF_DUPLICATE = 0, 1, 2, 3
TINY = 2.2250738585072014e-308
LOWEST = -1.7976931348623157e308  # a legal action's pUCT score is never below it (csrc: lowest())


# ---------------------------------------------------------------- random streams
def mix64(z: int) -> int:
    """splitmix64 finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def tree_seed(seed: int, b: int) -> int:
    return mix64((mix64(seed & MASK64) + b) & MASK64)


class Stream:
    """One tree's splitmix64 random stream (same numbers as the core)."""

    def __init__(self, state: int) -> None:
        self.state = state & MASK64

    def u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        return mix64(self.state)

    def uniform(self) -> float:
        return (float(self.u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0)

    def gumbel(self) -> float:
        return -math.log(-math.log(self.uniform()))

    def normal(self) -> float:
        u1 = self.uniform()
        u2 = self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2)

    def gamma(self, shape: float) -> float:
        boost = 1.0
        if shape < 1.0:
            boost = math.pow(self.uniform(), 1.0 / shape)
            shape = shape + 1.0
        d = shape - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = 1.0 + c * x
            if v <= 0.0:
                continue
            v = v * v * v
            u = self.uniform()
            if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
                return d * v * boost


def considered_visit_sequence(max_considered: int, num_simulations: int) -> list[int]:
    """mctx seq_halving.get_sequence_of_considered_visits."""
    if max_considered <= 1:
        return list(range(num_simulations))
    log2max = int(math.ceil(math.log2(max_considered)))
    sequence: list[int] = []
    visits = [0] * max_considered
    num_considered = max_considered
    while len(sequence) < num_simulations:
        num_extra_visits = max(1, int(num_simulations / (log2max * num_considered)))
        for _ in range(num_extra_visits):
            sequence.extend(visits[:num_considered])
            for i in range(num_considered):
                visits[i] += 1
        num_considered = max(2, num_considered // 2)
    return sequence[:num_simulations]


# ---------------------------------------------------------------- trees
@dataclass
class Node:
    parent: int
    action: int
    reward: float = 0.0
    raw_value: float = 0.0
    value_sum: float = 0.0
    visits: int = 0
    inflight: int = 0
    expanded: bool = False
    terminal: bool = False
    children: list[int] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    legal: list[bool] = field(default_factory=list)


@dataclass
class Leaf:
    tree: int
    kind: int = LEAF_NONE
    node: int = -1
    parent: int = -1
    action: int = -1

    @property
    def needs_eval(self) -> bool:
        return self.kind == LEAF_EXPAND


class ReferenceForest:
    """B trees searched in plain Python; same semantics as planners.mcts.Forest."""

    def __init__(
        self,
        batch_size: int,
        num_actions: int,
        max_nodes: int,
        *,
        leaves_per_step: int = 1,
        algorithm: str = "puct",
        two_player: bool = False,
        discount: float = 1.0,
        pb_c_init: float = 1.25,
        pb_c_base: float = 19652.0,
        dirichlet_alpha: float = 0.3,
        dirichlet_fraction: float = 0.0,
        known_bounds: Optional[tuple[float, float]] = None,
        max_num_considered_actions: int = 16,
        gumbel_scale: float = 1.0,
        value_scale: float = 0.1,
        maxvisit_init: float = 50.0,
        rescale_epsilon: float = 1e-8,
        unvisited_value: str = "zero",
        **_ignored: Any,
    ) -> None:
        self.B, self.A, self.N, self.K = batch_size, num_actions, max_nodes, leaves_per_step
        self.gumbel_alg = algorithm == "gumbel"
        self.sign = -discount if two_player else discount
        self.c1, self.c2 = pb_c_init, pb_c_base
        self.alpha, self.frac = dirichlet_alpha, dirichlet_fraction
        self.known_bounds = known_bounds
        self.max_considered = max_num_considered_actions
        self.gumbel_scale, self.value_scale = gumbel_scale, value_scale
        self.maxvisit_init, self.eps = maxvisit_init, rescale_epsilon
        self.unvisited_parent = unvisited_value == "parent"
        self.trees: list[list[Node]] = [[] for _ in range(batch_size)]
        self.streams = [Stream(tree_seed(0, b)) for b in range(batch_size)]
        self.root_probs = [[0.0] * num_actions for _ in range(batch_size)]
        self.gumbel = [[0.0] * num_actions for _ in range(batch_size)]
        self.num_considered = [0] * batch_size
        self.lo = [math.inf] * batch_size
        self.hi = [-math.inf] * batch_size
        self.sims_left = [0] * batch_size
        self.table: list[list[int]] = [[0]]
        self.pending: list[Leaf] = []

    # ------------------------------------------------------------ helpers
    def seed(self, seed: int) -> None:
        self.streams = [Stream(tree_seed(seed, b)) for b in range(self.B)]

    def _init_node(self, node: Node, reward: float, value: float, terminal: bool, logits: Sequence[float], legal: Sequence[bool]) -> None:
        A = self.A
        node.reward, node.raw_value, node.terminal, node.expanded = float(reward), float(value), bool(terminal), True
        node.children = [-1] * A
        if terminal:
            node.logits, node.probs, node.legal = [-math.inf] * A, [0.0] * A, [False] * A
            return
        m = -math.inf
        for a in range(A):
            if legal[a] and logits[a] > m:
                m = float(logits[a])
        node.logits, node.probs, node.legal = [-math.inf] * A, [0.0] * A, [bool(x) for x in legal]
        total = 0.0
        for a in range(A):
            if legal[a]:
                node.logits[a] = float(logits[a]) - m
                node.probs[a] = math.exp(node.logits[a])
                total += node.probs[a]
        for a in range(A):
            if legal[a]:
                node.probs[a] = node.probs[a] / total

    def _q(self, node: Node) -> float:
        return node.reward + self.sign * (node.value_sum / float(node.visits))

    def _update(self, b: int, q: float) -> None:
        if q < self.lo[b]:
            self.lo[b] = q
        if q > self.hi[b]:
            self.hi[b] = q

    def _child_visits(self, tree: list[Node], c: int, inflight: bool) -> int:
        if c < 0:
            return 0
        return tree[c].visits + (tree[c].inflight if inflight else 0)

    def _completed_q(self, tree: list[Node], n: int) -> tuple[list[float], list[float]]:
        node = tree[n]
        A = self.A
        sum_visits, max_visits, sum_probs = 0, 0, 0.0
        for a in range(A):
            v = self._child_visits(tree, node.children[a], False)
            if v > 0:
                sum_probs += node.probs[a] if node.probs[a] > TINY else TINY
                sum_visits += v
                max_visits = max(max_visits, v)
        weighted_q = 0.0
        for a in range(A):
            c = node.children[a]
            if self._child_visits(tree, c, False) > 0:
                pr = node.probs[a] if node.probs[a] > TINY else TINY
                weighted_q += pr * self._q(tree[c]) / sum_probs
        mixed = (node.raw_value + float(sum_visits) * weighted_q) / (float(sum_visits) + 1.0)
        cq = []
        for a in range(A):
            c = node.children[a]
            cq.append(self._q(tree[c]) if self._child_visits(tree, c, False) > 0 else mixed)
        lo, hi = min(cq), max(cq)
        span = hi - lo
        if span < self.eps:
            span = self.eps
        scale = (self.maxvisit_init + float(max_visits)) * self.value_scale
        sigma = [scale * ((q - lo) / span) for q in cq]
        return cq, sigma

    def _improved(self, node: Node, sigma: list[float]) -> list[float]:
        A = self.A
        z = [0.0] * A
        m = -math.inf
        for a in range(A):
            if node.legal[a]:
                z[a] = node.logits[a] + sigma[a]
                m = max(m, z[a]) if m != -math.inf else z[a]
        total = 0.0
        for a in range(A):
            if node.legal[a]:
                z[a] = math.exp(z[a] - m)
                total += z[a]
            else:
                z[a] = 0.0
        return [z[a] / total if node.legal[a] else 0.0 for a in range(A)]

    def _gumbel_root_argmax(self, b: int, cv: int, sigma: list[float], inflight: bool) -> int:
        tree = self.trees[b]
        root = tree[0]
        best, best_score = -1, -math.inf
        for a in range(self.A):
            if not root.legal[a]:
                continue
            v = self._child_visits(tree, root.children[a], inflight)
            s = (self.gumbel[b][a] + root.logits[a]) + sigma[a]
            if s < -1e9:
                s = -1e9
            if v != cv:
                s = -math.inf
            if best < 0 or s > best_score:
                best, best_score = a, s
        return best

    def _select_action(self, b: int, n: int) -> int:
        tree = self.trees[b]
        node = tree[n]
        A = self.A
        if self.gumbel_alg:
            _, sigma = self._completed_q(tree, n)
            if n == 0:
                sim_index = sum(self._child_visits(tree, c, True) for c in node.children)
                sim_index = min(sim_index, len(self.table[0]) - 1)
                cv = self.table[self.num_considered[b]][sim_index]
                return self._gumbel_root_argmax(b, cv, sigma, True)
            pol = self._improved(node, sigma)
            total = sum(self._child_visits(tree, c, True) for c in node.children)
            best, best_score = -1, 0.0
            for a in range(A):
                if not node.legal[a]:
                    continue
                s = pol[a] - float(self._child_visits(tree, node.children[a], True)) / (1.0 + float(total))
                if best < 0 or s > best_score:
                    best, best_score = a, s
            return best
        parent_visits = float(node.visits + node.inflight)
        pb_c = math.log((parent_visits + self.c2 + 1.0) / self.c2) + self.c1
        pb_sqrt = pb_c * math.sqrt(parent_visits)
        prior = self.root_probs[b] if n == 0 else node.probs
        lo, hi = self.lo[b], self.hi[b]
        scaled = hi > lo
        inv_span = 1.0 / (hi - lo) if scaled else 1.0
        unvisited = 0.0
        if self.unvisited_parent:  # the node's own value, normalised and clipped to [0, 1]
            unvisited = node.value_sum / float(node.visits)
            if scaled:
                unvisited = (unvisited - lo) * inv_span
                unvisited = 0.0 if unvisited < 0.0 else (1.0 if unvisited > 1.0 else unvisited)
        best, best_score = -1, -math.inf
        for a in range(A):
            if not node.legal[a]:
                continue
            c = node.children[a]
            cv = tree[c].visits if c >= 0 else 0
            ci = tree[c].inflight if c >= 0 else 0
            value_score = unvisited
            if cv > 0:
                q = self._q(tree[c])
                value_score = (q - lo) * inv_span if scaled else q
            if ci > 0:
                value_score = value_score * float(cv) / (float(cv) + float(ci))
            s = pb_sqrt * prior[a] * (1.0 / (float(cv + ci) + 1.0)) + value_score
            if not s > LOWEST:  # NaN or -inf (extreme inputs only): the lowest finite score
                s = LOWEST
            if best < 0 or s > best_score:
                best, best_score = a, s
        return best

    # ------------------------------------------------------------ step API
    def set_roots(self, prior_logits: Any, value: Any, legal_mask: Any = None, only_missing: bool = False) -> None:
        logits = np.asarray(prior_logits, dtype=np.float64)
        values = np.asarray(value, dtype=np.float64)
        mask = np.ones((self.B, self.A), bool) if legal_mask is None else np.asarray(legal_mask, bool)
        for b in range(self.B):
            if only_missing and self.trees[b]:
                continue
            root = Node(parent=-1, action=-1, visits=1, value_sum=float(values[b]))
            self._init_node(root, 0.0, float(values[b]), False, [float(x) for x in logits[b]], [bool(x) for x in mask[b]])
            self.trees[b] = [root]

    def begin(self, num_simulations: int) -> None:
        if self.gumbel_alg:
            self.table = [considered_visit_sequence(m, num_simulations) or [0] for m in range(self.max_considered + 1)]
        for b in range(self.B):
            tree = self.trees[b]
            self.sims_left[b] = num_simulations
            self.lo[b] = self.known_bounds[0] if self.known_bounds else math.inf
            self.hi[b] = self.known_bounds[1] if self.known_bounds else -math.inf
            for node in tree[1:]:
                if node.visits > 0:
                    self._update(b, self._q(node))
            root = tree[0]
            rp = list(root.probs)
            num_legal = sum(root.legal)
            s = self.streams[b]
            if not self.gumbel_alg and self.frac > 0.0:
                noise = [0.0] * self.A
                total = 0.0
                for a in range(self.A):
                    if root.legal[a]:
                        noise[a] = s.gamma(self.alpha)
                        total += noise[a]
                for a in range(self.A):
                    if root.legal[a]:
                        eta = noise[a] / total if total > 0.0 else 1.0 / float(num_legal)
                        rp[a] = rp[a] * (1.0 - self.frac) + eta * self.frac
            self.root_probs[b] = rp
            if self.gumbel_alg:
                self.gumbel[b] = [self.gumbel_scale * s.gumbel() for _ in range(self.A)]
                self.num_considered[b] = min(num_legal, self.max_considered)

    def select(self) -> list[Leaf]:
        """Leaves of this step, K slots per tree, tree-major (row m = b*K + k)."""
        self.pending = []
        for b in range(self.B):
            tree = self.trees[b]
            count = min(self.K, self.sims_left[b])
            leaves = [Leaf(tree=b) for _ in range(self.K)]
            for k in range(count):
                n = 0
                while True:
                    node = tree[n]
                    if node.terminal:
                        leaf = Leaf(b, LEAF_TERMINAL, n, node.parent, node.action)
                        break
                    a = self._select_action(b, n)
                    c = node.children[a]
                    if c < 0:
                        if len(tree) >= self.N:
                            raise RuntimeError(f"tree {b} needs more than max_nodes={self.N} nodes")
                        tree.append(Node(parent=n, action=a))
                        node.children[a] = len(tree) - 1
                        leaf = Leaf(b, LEAF_EXPAND, len(tree) - 1, n, a)
                        break
                    if not tree[c].expanded:
                        leaf = Leaf(b, LEAF_DUPLICATE, c, n, a)
                        break
                    n = c
                x = leaf.node
                while x >= 0:
                    tree[x].inflight += 1
                    x = tree[x].parent
                leaves[k] = leaf
                self.sims_left[b] -= 1
            self.pending.extend(leaves)
        return self.pending

    def expand_and_backup(self, reward: Any, value: Any, prior_logits: Any, legal_mask: Any = None, terminal: Any = None) -> None:
        M = len(self.pending)
        if reward is None:
            reward = value = np.zeros(M)
            prior_logits = np.zeros((M, self.A))
        reward = np.asarray(reward, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        prior_logits = np.asarray(prior_logits, dtype=np.float64)
        mask = np.ones((M, self.A), bool) if legal_mask is None else np.asarray(legal_mask, bool)
        term = np.zeros(M, bool) if terminal is None else np.asarray(terminal, bool)
        for m, leaf in enumerate(self.pending):
            if leaf.kind == LEAF_NONE:
                continue
            tree = self.trees[leaf.tree]
            if leaf.kind == LEAF_EXPAND:
                self._init_node(tree[leaf.node], float(reward[m]), float(value[m]), bool(term[m]),
                                [float(x) for x in prior_logits[m]], [bool(x) for x in mask[m]])
            self._backup(leaf)
        self.pending = []

    def _backup(self, leaf: Leaf) -> None:
        b, tree = leaf.tree, self.trees[leaf.tree]
        n = leaf.node
        g = tree[n].raw_value
        tree[n].visits += 1
        tree[n].value_sum += g
        tree[n].inflight -= 1
        while n != 0:
            node = tree[n]
            self._update(b, node.reward + self.sign * (node.value_sum / float(node.visits)))
            g = node.reward + self.sign * g
            n = node.parent
            tree[n].visits += 1
            tree[n].value_sum += g
            tree[n].inflight -= 1

    def run(self, model_fn: Any, num_simulations: int) -> None:
        """model_fn(list[Leaf]) -> (reward, value, prior_logits[, legal_mask[, terminal]]) with one row per slot."""
        self.begin(num_simulations)
        while max(self.sims_left) > 0:
            leaves = self.select()
            self.expand_and_backup(*model_fn(leaves))

    def results(self, temperature: float = 1.0) -> dict[str, np.ndarray]:
        B, A = self.B, self.A
        out = {k: np.zeros((B, A)) for k in ("q_values", "completed_q_values", "improved_policy", "visit_policy")}
        out["visit_counts"] = np.zeros((B, A), np.int32)
        out["root_value"] = np.zeros(B)
        out["selected_action"] = np.zeros(B, np.int32)
        for b in range(B):
            tree = self.trees[b]
            root = tree[0]
            visits = [self._child_visits(tree, c, False) for c in root.children]
            qs = [self._q(tree[c]) if v > 0 else 0.0 for c, v in zip(root.children, visits)]
            total, max_visits = sum(visits), max(visits)
            cq, sigma = self._completed_q(tree, 0)
            first_best = -1
            for a in range(A):
                if root.legal[a] and (first_best < 0 or visits[a] > visits[first_best]):
                    first_best = a
            if total == 0:
                vp = list(self.root_probs[b])
            elif temperature <= 0.0:
                vp = [1.0 if a == first_best else 0.0 for a in range(A)]
            else:
                vp = [math.pow(float(v) / float(max_visits), 1.0 / temperature) for v in visits]
                z = 0.0
                for x in vp:
                    z += x
                vp = [x / z for x in vp]
            if self.gumbel_alg:
                improved = self._improved(root, sigma)
                selected = self._gumbel_root_argmax(b, max_visits, sigma, False)
            else:
                improved = [float(v) / float(total) if total > 0 else self.root_probs[b][a] for a, v in enumerate(visits)]
                if temperature <= 0.0 or total == 0:
                    selected = first_best
                else:
                    u = self.streams[b].uniform()
                    acc, selected = 0.0, -1
                    for a in range(A):
                        if not root.legal[a] or vp[a] <= 0.0:
                            continue
                        acc += vp[a]
                        selected = a
                        if u < acc:
                            break
            out["visit_counts"][b] = visits
            out["q_values"][b] = qs
            out["completed_q_values"][b] = cq
            out["improved_policy"][b] = improved
            out["visit_policy"][b] = vp
            out["root_value"][b] = root.value_sum / float(root.visits)
            out["selected_action"][b] = selected
        return out

    def advance(self, actions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Subtree reuse; returns (kept[B], node_map[B, N]) like the core."""
        kept = np.zeros(self.B, bool)
        node_map = np.full((self.B, self.N), -1, np.int32)
        for b in range(self.B):
            tree = self.trees[b]
            a = int(actions[b])
            c = tree[0].children[a] if tree else -1
            if c < 0 or not tree[c].expanded or tree[c].terminal:
                self.trees[b] = []
                continue
            remap = {}
            for n in range(c, len(tree)):
                if n == c or (tree[n].parent in remap):
                    remap[n] = len(remap)
            new_tree = []
            for old, new in sorted(remap.items(), key=lambda kv: kv[1]):
                node = tree[old]
                node_map[b, new] = old
                node.parent = -1 if new == 0 else remap[node.parent]
                if new == 0:
                    node.action, node.reward = -1, 0.0
                node.inflight = 0
                node.children = [remap[ch] if ch >= 0 else -1 for ch in node.children]
                new_tree.append(node)
            self.trees[b] = new_tree
            kept[b] = True
        return kept, node_map


# ---------------------------------------------------------------- testing helpers
def row_rng(seed: int, tree: int, parent: int, action: int, node: int) -> np.random.Generator:
    return np.random.default_rng([seed, tree, parent + 1, action + 1, node])


class RandomModel:
    """Outputs are a fixed function of (tree, parent, action, node): both searches see the same model."""

    def __init__(self, num_actions: int, seed: int, p_illegal: float = 0.0, p_terminal: float = 0.0,
                 dtype=np.float64, reward_scale: float = 1.0) -> None:
        self.A, self.seed, self.p_illegal, self.p_terminal = num_actions, seed, p_illegal, p_terminal
        self.dtype, self.reward_scale = dtype, reward_scale
        self.calls = 0

    def rows(self, trees, parents, actions, nodes, needs):
        M, A = len(trees), self.A
        reward = np.zeros(M, self.dtype)
        value = np.zeros(M, self.dtype)
        logits = np.zeros((M, A), self.dtype)
        legal = np.ones((M, A), bool)
        terminal = np.zeros(M, bool)
        for m in range(M):
            if not needs[m]:
                continue
            r = row_rng(self.seed, int(trees[m]), int(parents[m]), int(actions[m]), int(nodes[m]))
            reward[m] = r.normal() * self.reward_scale
            value[m] = r.uniform(-1, 1)
            logits[m] = r.normal(size=A) * 2
            if self.p_illegal:
                legal[m] = r.uniform(size=A) > self.p_illegal
                legal[m, r.integers(A)] = True
                logits[m, ~legal[m]] = -np.inf
            terminal[m] = r.uniform() < self.p_terminal
        return reward, value, logits, legal, terminal

    def core(self, leaves: Any):
        self.calls += 1
        return tuple(self.rows(leaves.tree_index, leaves.parent_node, leaves.action, leaves.node,
                                           leaves.needs_eval))

    def oracle(self, leaves):
        return self.rows([l.tree for l in leaves], [l.parent for l in leaves], [l.action for l in leaves],
                         [l.node for l in leaves], [l.needs_eval for l in leaves])


def root_inputs(B: int, A: int, seed: int, p_illegal: float = 0.0):
    r = np.random.default_rng(seed)
    logits = r.normal(size=(B, A)) * 2
    value = r.uniform(-1, 1, B)
    legal = np.ones((B, A), bool)
    if p_illegal:
        legal = r.uniform(size=(B, A)) > p_illegal
        legal[np.arange(B), r.integers(A, size=B)] = True
    return logits, value, legal


RESULT_KEYS = ("visit_counts", "q_values", "completed_q_values", "improved_policy", "visit_policy",
               "root_value", "selected_action")


def assert_same(core_result: Any, oracle_result: dict, context: str = "") -> None:
    for key in RESULT_KEYS:
        a, b = getattr(core_result, key), oracle_result[key]
        assert np.array_equal(a, b), f"{key} differs {context}\ncore={a}\noracle={b}"


def assert_same_trees(forest: Any, ref: "ReferenceForest", context: str = "") -> None:
    arrays = forest.tree_arrays()
    for b, tree in enumerate(ref.trees):
        n = len(tree)
        assert arrays["num_nodes"][b] == n, context
        if n == 0:
            continue
        assert np.array_equal(arrays["visits"][b, :n], [x.visits for x in tree]), context
        assert np.array_equal(arrays["value_sum"][b, :n], [x.value_sum for x in tree]), context
        assert np.array_equal(arrays["parent"][b, :n], [x.parent for x in tree]), context
        assert np.array_equal(arrays["children"][b, :n], [x.children for x in tree]), context
        assert np.array_equal(arrays["root_probs"][b], ref.root_probs[b]), context
        assert not arrays["inflight"][b, :n].any(), context
