"""Behaviour of the public search API (planners.mcts): algorithms, protocol, determinism, reuse."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from planners import mcts
from planners.reference import RandomModel, root_inputs


def toy_model(A: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def model_fn(leaves: mcts.LeafBatch) -> mcts.ModelOutput:
        M = leaves.action.shape[0]
        return mcts.ModelOutput(reward=np.zeros(M), value=rng.uniform(-1, 1, M), prior_logits=rng.normal(size=(M, A)))

    return model_fn


def test_readme_gumbel_example() -> None:
    B, A = 4, 9
    result = mcts.search(np.zeros((B, A)), np.zeros(B), toy_model(A),
                         mcts.SearchConfig(algorithm="gumbel", num_simulations=16), seed=0)
    assert result.visit_counts.shape == (B, A) and (result.visit_counts.sum(1) == 16).all()
    assert np.allclose(result.improved_policy.sum(1), 1.0)
    assert result.selected_action.dtype == np.int32 and ((0 <= result.selected_action) & (result.selected_action < A)).all()


# ---------------------------------------------------------------- AlphaZero with a real simulator
class Nim:
    """Heap of stones; a move takes 1..3; whoever takes the last stone wins. Losing heaps: multiples of 4."""

    A = 3

    @staticmethod
    def legal(heap: np.ndarray) -> np.ndarray:
        return np.arange(1, 4)[None, :] <= heap[:, None]


def nim_search(heap0: int, config: mcts.SearchConfig, B: int = 2) -> mcts.SearchResult:
    heaps = np.zeros((B, config.num_simulations + 1), np.int64)  # simulator state per node: stones left
    heaps[:, 0] = heap0

    def simulator(leaves: mcts.LeafBatch) -> mcts.ModelOutput:
        t, p, a, n = leaves.tree_index, leaves.parent_node, leaves.action, leaves.node
        child = heaps[t, p] - (a + 1)
        heaps[t, n] = np.where(leaves.needs_eval, child, heaps[t, n])
        done = child == 0
        M = len(child)
        # The mover took the last stone: reward +1 for them, the terminal node is worth 0.
        return mcts.ModelOutput(reward=done.astype(np.float64), value=np.zeros(M), prior_logits=np.zeros((M, Nim.A)),
                                legal_mask=Nim.legal(np.maximum(child, 1)), terminal=done)

    legal = Nim.legal(np.full(B, heap0))
    return mcts.search(np.zeros((B, Nim.A)), np.zeros(B), simulator, config, legal_mask=legal, seed=1)


@pytest.mark.parametrize("algorithm", ["puct", "gumbel"])
@pytest.mark.parametrize("heap,winning_take", [(5, 1), (6, 2), (7, 3), (3, 3)])
def test_alphazero_mode_finds_the_winning_nim_move(algorithm: str, heap: int, winning_take: int) -> None:
    cfg = mcts.SearchConfig(algorithm=algorithm, mode="alphazero", num_simulations=300, discount=1.0,
                            known_bounds=(-1.0, 1.0), temperature=0.0)
    result = nim_search(heap, cfg)
    assert (result.selected_action == winning_take - 1).all(), result.visit_counts
    # the winning move's Q (an average over the search, from the mover's view) is clearly positive and the best
    q = result.q_values[0]
    assert q[winning_take - 1] > 0.5 and q[winning_take - 1] == q.max()


def test_alphazero_sign_matters() -> None:
    """Treating Nim as single-agent (no sign flip) must not find the same move: the test above checks the flip."""
    cfg = mcts.SearchConfig(mode="muzero", num_simulations=300, discount=1.0, known_bounds=(-1.0, 1.0), temperature=0.0)
    result = nim_search(5, cfg)
    # single-agent view: every line ends with +1 for "someone", so the winning take 1 is not singled out
    assert not (result.q_values[0, 0] > 0.9 and result.q_values[0, 1:].max() < 0.5)


def test_terminal_nodes_are_not_expanded_and_back_up_exact_outcomes() -> None:
    cfg = mcts.SearchConfig(mode="alphazero", num_simulations=50, discount=1.0, temperature=0.0)
    result = nim_search(1, cfg, B=1)  # only move: take 1 and win
    assert result.visit_counts[0, 0] == 50 and result.q_values[0, 0] == 1.0


# ---------------------------------------------------------------- MuZero semantics
def test_muzero_rewards_discount_and_q_values() -> None:
    """One-step check: Q(root, a) = r + discount * V(child) exactly; root value averages the backups."""
    A, discount = 3, 0.9
    rewards = np.array([0.5, -1.0, 2.0])
    values = np.array([1.0, 0.25, -3.0])

    def model_fn(leaves):
        a = leaves.action
        return mcts.ModelOutput(rewards[a], values[a], np.zeros((len(a), A)))

    cfg = mcts.SearchConfig(num_simulations=3, discount=discount, pb_c_init=1e6)  # huge c1: visit each action once
    result = mcts.search(np.zeros((1, A)), np.array([0.7]), model_fn, cfg)
    assert (result.visit_counts == 1).all()
    assert np.array_equal(result.q_values[0], rewards + discount * values)
    assert result.root_value[0] == pytest.approx((0.7 + (rewards + discount * values).sum()) / 4)


def test_puct_prefers_the_rewarding_action() -> None:
    A = 4

    def model_fn(leaves):
        M = leaves.action.shape[0]
        return mcts.ModelOutput((leaves.action == 2).astype(np.float32), np.zeros(M, np.float32),
                                np.zeros((M, A), np.float32))

    result = mcts.search(np.zeros((8, A)), np.zeros(8), model_fn, mcts.SearchConfig(num_simulations=100))
    assert (result.visit_counts.argmax(1) == 2).all() and (result.visit_counts[:, 2] > 60).all()


def test_legal_masks_are_respected() -> None:
    B, A = 5, 6
    logits, value, legal = root_inputs(B, A, 3, p_illegal=0.5)
    model = RandomModel(A, 5, p_illegal=0.5)
    for algorithm in ("puct", "gumbel"):
        cfg = mcts.SearchConfig(algorithm=algorithm, num_simulations=40, dirichlet_fraction=0.0)
        forest = mcts.Forest(B, A, cfg)
        result = mcts.search(logits, value, model.core, cfg, legal_mask=legal, forest=forest)
        assert (result.visit_counts[~legal] == 0).all() and (result.improved_policy[~legal] == 0).all()
        assert legal[np.arange(B), result.selected_action].all()
        arrays = forest.tree_arrays()
        # no interior node has a child on an action its mask called illegal
        for b in range(B):
            for n in range(arrays["num_nodes"][b]):
                kids = arrays["children"][b, n]
                assert (arrays["probs"][b, n][kids >= 0] > 0).all()


# ---------------------------------------------------------------- determinism and threads
@pytest.mark.parametrize("algorithm", ["puct", "gumbel"])
def test_results_do_not_depend_on_thread_count(algorithm: str) -> None:
    B, A = 40, 7
    logits, value, legal = root_inputs(B, A, 8, p_illegal=0.3)
    results = []
    # 6 threads (5 parts of 8 trees) on a smaller machine: workers often wake after the
    # caller has claimed their part, which must then run exactly once.
    for threads in (1, 2, 3, 6):
        cfg = mcts.SearchConfig(algorithm=algorithm, num_simulations=30, num_threads=threads, leaves_per_step=2,
                                dirichlet_fraction=0.25 if algorithm == "puct" else 0.0)
        model = RandomModel(A, 9, p_illegal=0.3, p_terminal=0.05)
        results.append(mcts.search(logits, value, model.core, cfg, legal_mask=legal, seed=5))
    for other in results[1:]:
        for key in ("visit_counts", "q_values", "improved_policy", "selected_action"):
            assert np.array_equal(getattr(results[0], key), getattr(other, key))


def test_same_seed_same_search_and_rng_state_roundtrip() -> None:
    B, A = 6, 5
    logits, value, _ = root_inputs(B, A, 1)
    cfg = mcts.SearchConfig(num_simulations=20, dirichlet_fraction=0.25)
    forest = mcts.Forest(B, A, cfg)
    model = RandomModel(A, 2)
    forest.seed(11)
    state = forest.rng_state
    first = mcts.search(logits, value, model.core, forest=forest)
    second = mcts.search(logits, value, model.core, forest=forest)  # stream moved on: new noise
    forest.rng_state = state
    third = mcts.search(logits, value, model.core, forest=forest)
    assert np.array_equal(first.visit_counts, third.visit_counts)
    assert np.array_equal(first.selected_action, third.selected_action)
    assert not np.array_equal(first.visit_counts, second.visit_counts)


def test_visit_policy_temperature() -> None:
    B, A = 3, 5
    logits, value, _ = root_inputs(B, A, 4)
    model = RandomModel(A, 4)
    forest = mcts.Forest(B, A, mcts.SearchConfig(num_simulations=30))
    mcts.search(logits, value, model.core, forest=forest)
    hot = forest.results(temperature=1.0)
    cold = forest.results(temperature=0.0)
    assert np.allclose(hot.visit_policy, hot.visit_counts / 30)
    assert (cold.visit_policy.argmax(1) == cold.visit_counts.argmax(1)).all() and (cold.visit_policy.max(1) == 1).all()
    assert (cold.selected_action == cold.visit_counts.argmax(1)).all()


# ---------------------------------------------------------------- leaf batching
def test_leaf_batching_in_one_tree() -> None:
    A, S, K = 9, 200, 8
    calls = []

    def model_fn(leaves):
        calls.append(int(leaves.needs_eval.sum()))
        M = leaves.action.shape[0]
        return mcts.ModelOutput(np.zeros(M), np.sin(leaves.node.astype(float)), np.zeros((M, A)))

    forest = mcts.Forest(1, A, mcts.SearchConfig(num_simulations=S, leaves_per_step=K), max_nodes=S + 1)
    result = mcts.search(np.zeros((1, A)), np.zeros(1), model_fn, forest=forest)
    assert len(calls) == S // K and max(calls) == K
    assert sum(calls) == forest.tree_arrays()["num_nodes"][0] - 1
    assert result.visit_counts.sum() == S
    assert not forest.tree_arrays()["inflight"].any()
    # virtual loss spreads the first batch over distinct root actions
    assert calls[0] == K


# ---------------------------------------------------------------- subtree reuse
def test_subtree_reuse_keeps_statistics_and_maps_nodes() -> None:
    B, A, S = 3, 4, 40
    logits, value, _ = root_inputs(B, A, 2)
    model = RandomModel(A, 3)
    cfg = mcts.SearchConfig(num_simulations=S, temperature=0.0)
    forest = mcts.Forest(B, A, cfg, max_nodes=3 * S)
    first = mcts.search(logits, value, model.core, forest=forest)
    before = {k: np.array(v) for k, v in forest.tree_arrays().items() if k in ("visits", "value_sum")}
    chosen = first.selected_action
    child = np.array([forest.tree_arrays()["children"][b, 0, chosen[b]] for b in range(B)])
    kept, node_map = forest.advance(chosen)
    assert kept.all() and (node_map[:, 0] == child).all()
    after = forest.tree_arrays()
    for b in range(B):
        n = after["num_nodes"][b]
        assert np.array_equal(after["visits"][b, :n], before["visits"][b, node_map[b, :n]])
        assert np.array_equal(after["value_sum"][b, :n], before["value_sum"][b, node_map[b, :n]])
        assert after["visits"][b, 0] == first.visit_counts[b, chosen[b]]
    kept_root_visits = after["visits"][:, 0].copy()  # tree_arrays() are live views
    second = mcts.search(logits, value, model.core, forest=forest, reuse=True)
    assert (second.visit_counts.sum(1) == kept_root_visits - 1 + S).all()


def test_reuse_of_an_unexpanded_child_needs_a_fresh_root() -> None:
    forest = mcts.Forest(2, 3, mcts.SearchConfig(num_simulations=1, pb_c_init=1e6), max_nodes=10)
    mcts.search(np.array([[5.0, 0, 0], [5.0, 0, 0]]), np.zeros(2), toy_model(3), forest=forest)
    kept, _ = forest.advance(np.array([0, 2], np.int32))  # tree 1's action 2 was never expanded
    assert kept.tolist() == [True, False]
    with pytest.raises(ValueError, match="no root"):
        forest.begin()
    forest.set_roots(np.zeros((2, 3)), np.zeros(2), only_missing=True)
    forest.run(toy_model(3))


# ---------------------------------------------------------------- array interop
def test_torch_tensors_and_strided_arrays_cross_without_copies() -> None:
    torch = pytest.importorskip("torch")
    B, A = 4, 6
    logits, value, legal = root_inputs(B, A, 6, p_illegal=0.3)
    model = RandomModel(A, 6, p_illegal=0.3)
    cfg = mcts.SearchConfig(algorithm="gumbel", num_simulations=12)
    expected = mcts.search(logits, value, model.core, cfg, legal_mask=legal, seed=2)

    def torch_model(leaves):
        out = model.core(leaves)
        # float32 would change the numbers: keep float64, but hand over torch tensors and a transposed view
        return (torch.from_numpy(out[0]).requires_grad_(True), torch.from_numpy(out[1]),
                torch.from_numpy(np.asfortranarray(out[2])), torch.from_numpy(out[3]), None)

    got = mcts.search(torch.from_numpy(np.asfortranarray(logits)), torch.from_numpy(value), torch_model, cfg,
                      legal_mask=torch.from_numpy(legal), seed=2)
    assert np.array_equal(expected.visit_counts, got.visit_counts)
    assert np.array_equal(expected.improved_policy, got.improved_policy)
    leaves = mcts.Forest(2, 3).leaves
    assert leaves.action.dtype == np.int32 and leaves.needs_eval.dtype == bool


def test_scribbling_on_the_leaf_arrays_cannot_corrupt_the_trees() -> None:
    B, A = 3, 5
    logits, value, _ = root_inputs(B, A, 7)
    model = RandomModel(A, 7)
    clean = mcts.search(logits, value, model.core, mcts.SearchConfig(num_simulations=20), seed=1)

    def vandal(leaves):
        out = model.core(leaves)
        for array in leaves:
            array[...] = 10**6 if array.dtype != bool else True
        return out

    dirty = mcts.search(logits, value, vandal, mcts.SearchConfig(num_simulations=20), seed=1)
    assert np.array_equal(clean.visit_counts, dirty.visit_counts)
    assert np.array_equal(clean.q_values, dirty.q_values)


# ---------------------------------------------------------------- build freshness
def test_stale_extension_is_detected(tmp_path: Path) -> None:
    from planners import _core
    src = Path(mcts.__file__).resolve().parent.parent / "csrc"
    assert _core.source_fingerprint() == mcts.source_fingerprint(src)
    copy = tmp_path / "csrc"
    shutil.copytree(src, copy)
    mcts.check_extension(_core.source_fingerprint(), copy)  # unchanged copy: fine
    (copy / "arbor_tree.h").write_text((copy / "arbor_tree.h").read_text() + "\n// edited\n")
    with pytest.raises(ImportError, match="pip install -e"):
        mcts.check_extension(_core.source_fingerprint(), copy)


# ---------------------------------------------------------------- fast paths of the core
def manual_search(forest: mcts.Forest, logits, value, legal, model_fn) -> mcts.SearchResult:
    """The step API driven by hand (select / expand_and_backup with plain tuples)."""
    forest.set_roots(logits, value, legal)
    forest.begin()
    while forest.simulations_left > 0:
        count = forest.select()
        forest.expand_and_backup(tuple(model_fn(forest.leaves)) if count else None)
    return forest.results()


@pytest.mark.parametrize("algorithm", ["puct", "gumbel"])
@pytest.mark.parametrize("leaves_per_step", [1, 3])
def test_run_fast_path_matches_the_step_api(algorithm: str, leaves_per_step: int) -> None:
    B, A, S = 5, 7, 30
    logits, value, legal = root_inputs(B, A, 11, p_illegal=0.3)
    cfg = mcts.SearchConfig(algorithm=algorithm, num_simulations=S, leaves_per_step=leaves_per_step,
                            mode="alphazero", dirichlet_fraction=0.25 if algorithm == "puct" else 0.0)

    def odd_dtypes(model):  # same values, other layouts: Fortran-order logits, uint8 mask
        def fn(leaves):
            r, v, lg, mk, tm = model.core(leaves)
            return mcts.ModelOutput(r, v, np.asfortranarray(lg), mk.astype(np.uint8), tm)
        return fn

    results = []
    for driver in ("run", "manual", "run_tuple", "run_odd"):
        model = RandomModel(A, 12, p_illegal=0.3, p_terminal=0.1)
        forest = mcts.Forest(B, A, cfg)
        forest.seed(4)
        if driver == "run":  # ModelOutput of numpy arrays: one core call per step
            result = mcts.search(logits, value, lambda leaves, m=model: mcts.ModelOutput(*m.core(leaves)),
                                 legal_mask=legal, forest=forest)
        elif driver == "run_tuple":  # plain tuples: the general path of Forest.run
            result = mcts.search(logits, value, model.core, legal_mask=legal, forest=forest)
        elif driver == "manual":
            result = manual_search(forest, logits, value, legal, model.core)
        else:
            result = mcts.search(logits, value, odd_dtypes(model), legal_mask=legal, forest=forest)
        arrays = forest.tree_arrays()
        results.append((result, {k: np.array(arrays[k]) for k in ("visits", "value_sum", "children", "probs")}))
    for result, arrays in results[1:]:
        for key in ("visit_counts", "q_values", "improved_policy", "selected_action"):
            assert np.array_equal(getattr(results[0][0], key), getattr(result, key)), key
        for key, value_ in arrays.items():
            assert np.array_equal(results[0][1][key], value_), key


def test_lazy_priors_are_the_softmax_of_the_model_logits() -> None:
    # pUCT applies a node's softmax on the first selection through it; tree_arrays() shows
    # probabilities for every node either way.
    B, A = 3, 5
    logits, value, legal = root_inputs(B, A, 21, p_illegal=0.4)
    seen: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    model = RandomModel(A, 22, p_illegal=0.4)

    def model_fn(leaves):
        out = model.core(leaves)
        for m in np.flatnonzero(leaves.needs_eval):
            seen[(int(leaves.tree_index[m]), int(leaves.node[m]))] = (out[2][m].copy(), out[3][m].copy())
        return mcts.ModelOutput(*out)

    forest = mcts.Forest(B, A, mcts.SearchConfig(num_simulations=25))
    mcts.search(logits, value, model_fn, legal_mask=legal, forest=forest)
    probs = forest.tree_arrays()["probs"]
    terminal = forest.tree_arrays()["terminal"]
    for (b, n), (lg, mk) in seen.items():
        if terminal[b, n]:
            continue
        z = np.where(mk, lg - lg[mk].max(), -np.inf)
        expected = np.where(mk, np.exp(z) / np.exp(z[mk]).sum(), 0.0)
        np.testing.assert_allclose(probs[b, n], expected, rtol=1e-12, atol=0)


def test_read_only_and_wrong_outputs_still_raise_the_same_errors() -> None:
    forest = mcts.Forest(2, 3, mcts.SearchConfig(num_simulations=4))
    forest.set_roots(np.zeros((2, 3)), np.zeros(2))
    frozen = np.zeros(2)
    frozen.setflags(write=False)
    bad = [
        ((frozen, np.zeros(2), np.zeros((2, 3))), TypeError, "reward must be a numpy array"),
        ((np.zeros(2, np.float16), np.zeros(2), np.zeros((2, 3))), TypeError, "reward has an unsupported dtype"),
        ((np.zeros(2), np.zeros(3), np.zeros((2, 3))), ValueError, r"value has shape \(3,\), expected \(2,\)"),
        ((np.zeros(2), np.zeros(2), np.zeros((2, 3)).astype(">f8")), TypeError, "prior_logits must be a numpy array"),
        ((np.zeros(2), np.zeros(2), np.zeros((2, 3)), np.ones((2, 3), np.int32)), TypeError,
         "legal_mask has an unsupported dtype"),
        ((np.zeros(2), np.array([0.0, np.nan]), np.zeros((2, 3))), ValueError, "reward/value is not finite"),
    ]
    for outputs, error, message in bad:
        def model_fn(leaves, outputs=outputs):
            return mcts.ModelOutput(*outputs)

        forest.set_roots(np.zeros((2, 3)), np.zeros(2))
        with pytest.raises(error, match=message):
            forest.run(model_fn)
        assert forest.tree_arrays()["num_nodes"].tolist() == [1, 1]  # the failed step was cancelled
