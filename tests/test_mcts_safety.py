"""Bad inputs raise clear Python exceptions, never crash, and leave the forest usable.

The randomized test drives thousands of small searches with random (often invalid)
inputs. It was also run once against an AddressSanitizer build of the core (see
docs/search.md, "Safety").
"""
from __future__ import annotations

import numpy as np
import pytest

from planners import _core, mcts
from planners.reference import RandomModel, root_inputs

ALLOWED = (ValueError, TypeError, IndexError, RuntimeError)  # NodeBudgetExceeded is a RuntimeError


class FastModel:
    """Vectorised random outputs (cheap enough for thousands of searches)."""

    def __init__(self, A: int, seed: int) -> None:
        self.A, self.rng = A, np.random.default_rng(seed)

    def core(self, leaves: mcts.LeafBatch) -> tuple:
        M, A, r = leaves.action.shape[0], self.A, self.rng
        legal = r.uniform(size=(M, A)) > 0.3
        legal[np.arange(M), r.integers(A, size=M)] = True
        return (r.normal(size=M), r.uniform(-1, 1, M), r.normal(size=(M, A)), legal, r.uniform(size=M) < 0.1)


def valid_search_works(forest: mcts.Forest, seed: int) -> None:
    """After any error, a clean search on the same forest succeeds and is well formed."""
    B, A = forest.batch_size, forest.num_actions
    logits, value, legal = root_inputs(B, A, seed, p_illegal=0.3)
    S = min(forest.config.num_simulations, forest.max_nodes - 1)
    forest.set_roots(logits, value, legal)
    forest.run(FastModel(A, seed).core, S)
    check_result(forest.results(), legal, S)


def check_result(result: mcts.SearchResult, legal: np.ndarray, S: int) -> None:
    assert (result.visit_counts.sum(1) == S).all()
    assert (result.visit_counts[~legal] == 0).all()
    for key in ("q_values", "completed_q_values", "improved_policy", "visit_policy", "root_value"):
        assert np.isfinite(getattr(result, key)).all(), key
    assert np.allclose(result.improved_policy.sum(1), 1) and np.allclose(result.visit_policy.sum(1), 1)
    assert legal[np.arange(len(legal)), result.selected_action].all()


def corrupt(x: np.ndarray, r: np.random.Generator):
    kind = r.integers(8)
    if kind == 0:
        return x[:-1] if len(x) > 1 else x[:, None]  # wrong shape
    if kind == 1:
        return np.concatenate([x, x[:1]])  # wrong shape
    if kind == 2:
        return x.astype(np.complex64)  # unsupported dtype
    if kind == 3:
        return x.tolist()  # Python lists are refused
    if kind == 4:
        y = x.astype(np.float64) if x.dtype != bool else x.copy()
        if y.dtype != bool:
            y.flat[r.integers(y.size)] = np.nan
        return y
    if kind == 5:
        y = x.astype(np.float64)
        y.flat[r.integers(y.size)] = np.inf
        return y
    if kind == 6:
        return "not an array"
    with np.errstate(invalid="ignore"):
        return x.astype(np.int64)  # ints are not floats (and float masks are not bools)


def test_randomized_inputs_never_crash() -> None:
    r = np.random.default_rng(2024)
    outcomes = {"ok": 0, "error": 0}
    for trial in range(3000):
        B, A = int(r.integers(1, 6)), int(r.integers(1, 8))
        S, K = int(r.integers(0, 25)), int(r.integers(1, 4))
        algorithm = str(r.choice(["puct", "gumbel"]))
        try:
            cfg = mcts.SearchConfig(algorithm=algorithm, mode=str(r.choice(["muzero", "alphazero"])), num_simulations=S,
                                    leaves_per_step=K, num_threads=int(r.integers(1, 3)),
                                    discount=float(r.choice([0.9, 1.0, 0.997] * 6 + [1.5])),
                                    dirichlet_fraction=float(r.choice([0.0, 0.25])) if algorithm == "puct" else 0.0,
                                    known_bounds=([None] * 12 + [(-1.0, 1.0)] * 6 + [(1.0, -1.0)])[int(r.integers(19))])
            tight = r.uniform() < 0.15  # sometimes too few nodes for the search
            forest = mcts.Forest(B, A, cfg, max_nodes=int(r.integers(2, S + 2) if tight else S + 1 + r.integers(0, 5)))
        except ALLOWED as exc:
            assert str(exc)
            outcomes["error"] += 1
            continue
        logits, value, legal = root_inputs(B, A, trial, p_illegal=0.3)
        if r.uniform() < 0.05:
            legal[r.integers(B)] = False  # all-illegal root
        args = [logits, value, legal]
        if r.uniform() < 0.3:
            i = int(r.integers(3))
            args[i] = corrupt(args[i], r)
        model = FastModel(A, trial)
        p_bad = 0.015

        def model_fn(leaves: mcts.LeafBatch):
            out = list(model.core(leaves))
            if r.uniform() < p_bad:
                i = int(r.integers(5))
                if out[i] is not None:
                    out[i] = corrupt(np.asarray(out[i]), r)
                if i == 3 and r.uniform() < 0.5:  # a non-terminal node with no legal action
                    out[3] = np.zeros_like(model.core(leaves)[3])
                    out[4] = np.zeros(len(out[4]), bool)
            if r.uniform() < 0.01:
                raise KeyError("model failure")  # the caller's own error passes through unchanged
            return tuple(out)

        try:
            result = mcts.search(args[0], args[1], model_fn, cfg, legal_mask=args[2], forest=forest, seed=trial)
            check_result(result, legal, S)
            outcomes["ok"] += 1
            if r.uniform() < 0.3:
                bad = r.integers(-3, A + 3, size=B) if r.uniform() < 0.5 else r.integers(0, A, size=B)
                forest.advance(bad.astype(np.int64))
                forest.set_roots(logits, value, legal, only_missing=True)
        except (*ALLOWED, KeyError) as exc:
            assert str(exc)
            outcomes["error"] += 1
            valid_search_works(forest, trial)
    # both paths were exercised many times
    assert outcomes["ok"] > 500 and outcomes["error"] > 500, outcomes


def make_forest(B: int = 2, A: int = 3, S: int = 4, **kw) -> mcts.Forest:
    return mcts.Forest(B, A, mcts.SearchConfig(num_simulations=S, **kw))


@pytest.mark.parametrize("logits,value,mask,exc,match", [
    (np.zeros((2, 4)), np.zeros(2), None, ValueError, r"shape \(2, 4\), expected \(2, 3\)"),
    (np.zeros((2, 3), np.int64), np.zeros(2), None, TypeError, "unsupported dtype"),
    ([[0.0] * 3] * 2, np.zeros(2), None, TypeError, "numpy array or a torch tensor"),
    (np.zeros((2, 3)), np.array([0.0, np.nan]), None, ValueError, "root value of tree 1 is not finite"),
    (np.array([[0, np.inf, 0], [0, 0, 0]]), np.zeros(2), None, ValueError, "tree 0, action 1 is not finite"),
    (np.zeros((2, 3)), np.zeros(2), np.array([[1, 1, 1], [0, 0, 0]], bool), ValueError, "tree 1 has no legal action"),
    (np.zeros((2, 3)), np.zeros(2), np.ones((2, 3), np.float32), TypeError, "legal_mask has an unsupported dtype"),
])
def test_bad_root_inputs(logits, value, mask, exc, match) -> None:
    forest = make_forest()
    with pytest.raises(exc, match=match):
        forest.set_roots(logits, value, mask)


def test_illegal_entries_may_hold_minus_infinity() -> None:
    forest = make_forest()
    forest.set_roots(np.array([[0, -np.inf, 1], [np.nan, 0, 0]]), np.zeros(2), np.array([[1, 0, 1], [0, 1, 1]], bool))


def test_bad_model_outputs_are_rejected_and_the_step_undone() -> None:
    forest = make_forest(S=3)
    forest.set_roots(np.zeros((2, 3)), np.zeros(2))
    forest.begin()
    forest.select()
    before = np.array(forest.tree_arrays()["inflight"])
    with pytest.raises(ValueError, match=r"row 1 \(tree 1\): reward/value is not finite"):
        forest.expand_and_backup((np.zeros(2), np.array([0.0, np.nan]), np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"prior_logits has shape \(2, 4\)"):
        forest.expand_and_backup((np.zeros(2), np.zeros(2), np.zeros((2, 4))))
    with pytest.raises(ValueError, match="no legal action for a non-terminal node"):
        forest.expand_and_backup((np.zeros(2), np.zeros(2), np.zeros((2, 3)), np.zeros((2, 3), bool)))
    # terminal rows need no legal action
    assert np.array_equal(forest.tree_arrays()["inflight"], before)
    forest.expand_and_backup((np.zeros(2), np.zeros(2), np.zeros((2, 3)), np.zeros((2, 3), bool), np.ones(2, bool)))
    assert forest.tree_arrays()["terminal"][:, 1].all()


def test_protocol_misuse() -> None:
    forest = make_forest()
    with pytest.raises(ValueError, match="before begin"):
        forest.select()
    with pytest.raises(ValueError, match="no root"):
        forest.begin()
    with pytest.raises(ValueError, match="results called before any search"):
        forest.results()
    forest.set_roots(np.zeros((2, 3)), np.zeros(2))
    forest.begin()
    with pytest.raises(ValueError, match="without pending leaves"):
        forest.expand_and_backup((np.zeros(2), np.zeros(2), np.zeros((2, 3))))
    forest.select()
    with pytest.raises(ValueError, match="select called twice"):
        forest.select()
    forest.cancel()
    assert forest.simulations_left == 4 and not forest.tree_arrays()["inflight"].any()
    with pytest.raises(IndexError, match=r"actions\[1\] = 3 is out of range"):
        forest.advance(np.array([0, 3]))
    with pytest.raises(TypeError, match="actions has an unsupported dtype"):
        forest.advance(np.array([0.0, 1.0]))


def test_node_budget_exceeded_is_a_clear_error_and_recoverable() -> None:
    forest = mcts.Forest(3, 4, mcts.SearchConfig(num_simulations=10), max_nodes=6)
    model = RandomModel(4, 0)
    with pytest.raises(mcts.NodeBudgetExceeded, match="max_nodes=6"):
        mcts.search(np.zeros((3, 4)), np.zeros(3), model.core, forest=forest)
    assert not forest.tree_arrays()["inflight"].any()
    forest.set_roots(np.zeros((3, 4)), np.zeros(3))
    forest.run(model.core, 5)  # fits
    assert (forest.results().visit_counts.sum(1) == 5).all()


@pytest.mark.parametrize("kwargs", [dict(discount=1.5), dict(dirichlet_fraction=2.0), dict(pb_c_base=0.0),
                                    dict(known_bounds=(1.0, 0.0)), dict(max_num_considered_actions=0),
                                    dict(algorithm="gumbel", dirichlet_fraction=0.25)])
def test_bad_configuration(kwargs) -> None:
    with pytest.raises(ValueError):
        mcts.Forest(2, 3, mcts.SearchConfig(**kwargs))


def test_unknown_unvisited_value_is_refused_by_config_and_core() -> None:
    with pytest.raises(ValueError, match="unvisited_value must be 'zero' or 'parent'"):
        mcts.SearchConfig(unvisited_value="mean")
    with pytest.raises(ValueError, match="unvisited_value must be 'zero' or 'parent'"):
        _core.Forest(2, 3, 4, unvisited_value="mean")


def test_gumbel_refuses_reused_roots() -> None:
    forest = mcts.Forest(1, 3, mcts.SearchConfig(algorithm="gumbel", num_simulations=8), max_nodes=20)
    result = mcts.search(np.zeros((1, 3)), np.zeros(1), RandomModel(3, 1).core, forest=forest)
    forest.advance(result.selected_action)
    with pytest.raises(ValueError, match="fresh roots"):
        forest.begin()
