"""The compiled core agrees bit for bit with the plain-Python oracle (planners.reference)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from planners import mcts
from planners.reference import (RandomModel, ReferenceForest, Stream, assert_same, assert_same_trees,
                                considered_visit_sequence, root_inputs, tree_seed)


def random_case(seed: int, algorithm: str, mode: str) -> dict:
    r = np.random.default_rng(seed)
    return dict(
        B=int(r.integers(1, 5)),
        A=int(r.integers(2, 8)),
        S=int(r.integers(1, 40)),
        K=int(r.choice([1, 1, 2, 3, 4])),
        threads=int(r.integers(1, 4)),
        p_illegal=float(r.choice([0.0, 0.4])),
        p_terminal=float(r.choice([0.0, 0.0, 0.15])),
        dtype=r.choice([np.float32, np.float64]),
        config=mcts.SearchConfig(
            algorithm=algorithm,
            mode=mode,
            num_simulations=0,  # set below
            discount=float(r.choice([1.0, 0.9, 0.997])),
            pb_c_init=float(r.choice([1.25, 0.5])),
            pb_c_base=float(r.choice([19652.0, 10.0])),
            dirichlet_fraction=float(r.choice([0.0, 0.25])) if algorithm == "puct" else 0.0,
            dirichlet_alpha=float(r.choice([0.03, 0.3, 2.0])),
            known_bounds=(-1.0, 1.0) if (algorithm == "puct" and r.uniform() < 0.3) else None,
            unvisited_value=str(r.choice(["zero", "parent"])),
            max_num_considered_actions=int(r.choice([2, 4, 16])),
            gumbel_scale=float(r.choice([1.0, 0.3])),
            temperature=float(r.choice([1.0, 0.5, 0.0])),
        ),
        seed=int(r.integers(0, 2**63)),
    )


def run_both(case: dict, model_seed: int, reuse_rounds: int = 0, model_class: type = RandomModel,
             root_value_scale: float = 1.0):
    B, A, S, K = case["B"], case["A"], case["S"], case["K"]
    cfg = replace(case["config"], num_simulations=S, leaves_per_step=K, num_threads=case["threads"])
    max_nodes = (reuse_rounds + 1) * S + 1
    forest = mcts.Forest(B, A, cfg, max_nodes=max_nodes)
    ref = ReferenceForest(B, A, max_nodes, leaves_per_step=K, **cfg.core_kwargs())
    model = model_class(A, model_seed, p_illegal=case["p_illegal"], p_terminal=case["p_terminal"], dtype=case["dtype"])
    logits, value, legal = root_inputs(B, A, model_seed, case["p_illegal"])
    value = value * root_value_scale
    forest.seed(case["seed"])
    ref.seed(case["seed"])
    reuse = False
    for round_ in range(reuse_rounds + 1):
        context = f"case={case} round={round_}"
        core_result = mcts.search(logits.astype(case["dtype"]), value, model.core, cfg, legal_mask=legal,
                                  forest=forest, reuse=reuse)
        ref.set_roots(logits.astype(case["dtype"]), value, legal, only_missing=reuse)
        ref.run(model.oracle, S)
        assert_same(core_result, ref.results(cfg.temperature), context)
        assert_same_trees(forest, ref, context)
        if round_ < reuse_rounds:
            kept, node_map = forest.advance(core_result.selected_action)
            ref_kept, ref_map = ref.advance(core_result.selected_action)
            assert np.array_equal(kept, ref_kept) and np.array_equal(node_map, ref_map), context
            assert_same_trees(forest, ref, context + " after advance")
            model.seed += 1  # a new position: the model keys rows by node id
            logits, value, legal = root_inputs(B, A, model.seed, case["p_illegal"])
            reuse = True
    return core_result


@pytest.mark.parametrize("variant,algorithm,mode", [(0, "puct", "muzero"), (1, "puct", "alphazero"),
                                                    (2, "gumbel", "muzero"), (3, "gumbel", "alphazero")])
def test_core_matches_oracle_on_random_trees(variant: int, algorithm: str, mode: str) -> None:
    for seed in range(60):
        case = random_case(1000 * seed + variant, algorithm, mode)
        result = run_both(case, model_seed=seed)
        if case["p_terminal"] == 0 and case["K"] == 1:
            # every simulation adds one visit to one root action
            assert (result.visit_counts.sum(1) == case["S"]).all()


@pytest.mark.parametrize("mode", ["muzero", "alphazero"])
def test_subtree_reuse_matches_oracle(mode: str) -> None:
    for seed in range(25):
        case = random_case(77 + seed, "puct", mode)
        run_both(case, model_seed=500 + seed, reuse_rounds=2)


@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("A", [9, 17, 18])
def test_core_matches_oracle_with_many_actions(A: int, K: int) -> None:
    """Atari-sized action sets (the compiled pUCT scores actions in pairs or fours, then
    the rest one by one), with and without virtual loss from leaf batching."""
    for seed in range(6):
        case = random_case(31 + seed, "puct", "muzero")
        case.update(A=A, S=60, K=K)
        run_both(case, model_seed=900 + seed)


SIMD_SCRIPT = """
import sys
import numpy as np
from planners import _core, mcts
from planners.reference import RandomModel, root_inputs
out = {"simd": np.array(_core.simd())}
for A, K, seed in [(18, 1, 0), (18, 4, 1), (9, 2, 2), (17, 1, 3), (6, 3, 4)]:
    cfg = mcts.SearchConfig(num_simulations=80, leaves_per_step=K, dirichlet_fraction=0.25, unvisited_value="parent")
    model = RandomModel(A, seed, p_illegal=0.3, p_terminal=0.05, dtype=np.float32)
    logits, value, legal = root_inputs(8, A, seed, 0.3)
    forest = mcts.Forest(8, A, cfg)
    forest.seed(seed)
    r = mcts.search(logits.astype(np.float32), value, model.core, cfg, legal_mask=legal, forest=forest)
    out[f"visits{seed}"], out[f"q{seed}"] = r.visit_counts, r.q_values
np.savez(sys.argv[1], **out)
"""


def test_vector_paths_give_the_same_search(tmp_path) -> None:
    """The AVX2 and the SSE2 scoring (ARBOR_SIMD=sse2 forces the latter) pick the same
    actions, so whole searches agree exactly. On a CPU without AVX2 both runs take SSE2."""
    import os
    import subprocess
    import sys

    script = tmp_path / "simd.py"
    script.write_text(SIMD_SCRIPT)
    results = {}
    for name, forced in [("default", None), ("sse2", "sse2")]:
        env = dict(os.environ)
        env.pop("ARBOR_SIMD", None)
        if forced:
            env["ARBOR_SIMD"] = forced
        subprocess.run([sys.executable, str(script), str(tmp_path / f"{name}.npz")], env=env, check=True)
        results[name] = dict(np.load(tmp_path / f"{name}.npz"))
    assert str(results["sse2"]["simd"]) == "sse2"
    assert str(results["default"]["simd"]) in ("avx2", "sse2")
    for key in results["sse2"]:
        if key != "simd":
            assert np.array_equal(results["default"][key], results["sse2"][key], equal_nan=True), key


class TinyValueModel(RandomModel):
    """Values and rewards of about 1e-309 (subnormal): the tree's min-max range is so
    small that 1 / (max - min) overflows, and pUCT scores come out inf or NaN."""

    def rows(self, *args):
        reward, value, logits, legal, terminal = super().rows(*args)
        return reward * 1e-309, value * 1e-309, logits, legal, terminal


def test_core_matches_oracle_when_scores_are_nan() -> None:
    for seed in range(8):
        case = random_case(5 + seed, "puct", "muzero")
        case.update(K=1, S=30, dtype=np.float64, p_terminal=0.0)
        case["config"] = replace(case["config"], known_bounds=None, dirichlet_fraction=0.0)
        run_both(case, model_seed=seed, model_class=TinyValueModel, root_value_scale=1e-309)


def test_random_streams_match_python() -> None:
    """Gumbel and Dirichlet draws come from the documented per-tree splitmix64 streams."""
    B, A = 3, 6
    cfg = mcts.SearchConfig(algorithm="gumbel", num_simulations=1, gumbel_scale=1.0)
    forest = mcts.Forest(B, A, cfg)
    forest.seed(12345)
    forest.set_roots(np.zeros((B, A)), np.zeros(B))
    forest.begin(1)
    gumbel = forest.tree_arrays()["gumbel"]
    for b in range(B):
        s = Stream(tree_seed(12345, b))
        assert np.array_equal(gumbel[b], [s.gumbel() for _ in range(A)])
    # the stream state advanced by exactly A draws
    s = Stream(tree_seed(12345, 0))
    for _ in range(A):
        s.u64()
    assert int(forest.rng_state[0]) == s.state


def test_dirichlet_noise_has_the_right_mean() -> None:
    """Noise ~ Dir(alpha) over legal actions: its average is uniform, illegal actions get none."""
    B, A = 400, 4
    cfg = mcts.SearchConfig(num_simulations=1, dirichlet_fraction=1.0, dirichlet_alpha=0.3)
    forest = mcts.Forest(B, A, cfg)
    legal = np.ones((B, A), bool)
    legal[:, 3] = False
    forest.seed(1)
    forest.set_roots(np.zeros((B, A)), np.zeros(B), legal)
    forest.begin(1)
    noise = np.array(forest.tree_arrays()["root_probs"])
    assert np.allclose(noise.sum(1), 1.0) and (noise[:, 3] == 0).all()
    assert np.allclose(noise[:, :3].mean(0), 1 / 3, atol=0.05)
    # alpha = 0.3 is spiky: the largest share is usually big
    assert np.median(noise.max(1)) > 0.6


def test_sequential_halving_table_matches_mctx_definition() -> None:
    # Worked example from the paper's schedule: 4 actions, 16 simulations, log2(4) = 2 phases.
    assert considered_visit_sequence(4, 16) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert considered_visit_sequence(1, 5) == [0, 1, 2, 3, 4]
    mctx = pytest.importorskip("mctx")
    for m in (1, 2, 3, 4, 16):
        for n in (1, 7, 16, 50):
            assert considered_visit_sequence(m, n) == list(mctx._src.seq_halving.get_sequence_of_considered_visits(m, n))
