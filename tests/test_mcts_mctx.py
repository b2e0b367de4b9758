"""Gumbel search agrees with DeepMind's published implementation (mctx.gumbel_muzero_policy).

Skipped when jax/mctx are not installed (they are benchmark peers, not project dependencies).
Both searches run in float64 on the same deterministic model and the same Gumbel draws.
"""
from __future__ import annotations

import numpy as np
import pytest

from planners import mcts

jax = pytest.importorskip("jax")
mctx = pytest.importorskip("mctx")
import jax.numpy as jnp  # noqa: E402

P = 65521  # size of the model's lookup tables (node ids are path hashes modulo P)
B, A, S, DISCOUNT, CONSIDERED = 6, 5, 24, 0.95, 4


def test_gumbel_matches_mctx(monkeypatch: pytest.MonkeyPatch) -> None:
    r = np.random.default_rng(3)
    reward_t, value_t, logits_t = r.normal(size=P) * 0.5, r.uniform(-1, 1, P), r.normal(size=(P, A)) * 1.5
    x64 = jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64()
    with x64:
        tables = (jnp.asarray(reward_t), jnp.asarray(value_t), jnp.asarray(logits_t))
        injected = {}
        # mctx draws its Gumbel noise with jax.random.gumbel: hand it ours instead.
        monkeypatch.setattr(jax.random, "gumbel", lambda key, shape=(), dtype=None: injected["gumbel"])

        def recurrent_fn(sign, rng_key, action, embedding):
            child = (embedding * (A + 1) + action.astype(jnp.int64) + 1) % P
            out = mctx.RecurrentFnOutput(reward=tables[0][child], discount=jnp.full(child.shape, 1.0) * sign,
                                         prior_logits=tables[2][child], value=tables[1][child])
            return out, child

        @jax.jit
        def mctx_policy(sign, logits, value, invalid, gumbel):
            injected["gumbel"] = gumbel
            root = mctx.RootFnOutput(prior_logits=logits, value=value, embedding=jnp.arange(B, dtype=jnp.int64) + 1)
            out = mctx.gumbel_muzero_policy(params=sign, rng_key=jax.random.PRNGKey(0), root=root,
                                            recurrent_fn=recurrent_fn, num_simulations=S, invalid_actions=invalid,
                                            max_num_considered_actions=CONSIDERED)
            summary = out.search_tree.summary()
            return summary.visit_counts, summary.qvalues, summary.value, out.action_weights, out.action

        for mode, seed in [("muzero", 4), ("alphazero", 5), ("muzero", 6)]:
            sign = DISCOUNT if mode == "muzero" else -DISCOUNT
            r = np.random.default_rng(seed)
            root_logits = r.normal(size=(B, A)) * 1.5
            root_value = r.uniform(-1, 1, B)
            legal = r.uniform(size=(B, A)) > 0.3
            legal[:, 0] = True
            cfg = mcts.SearchConfig(algorithm="gumbel", mode=mode, num_simulations=S, discount=DISCOUNT,
                                    max_num_considered_actions=CONSIDERED)
            ids = np.zeros((B, S + 1), np.int64)
            ids[:, 0] = np.arange(B) + 1

            def model_fn(leaves: mcts.LeafBatch) -> mcts.ModelOutput:
                t, p, a, n = leaves.tree_index, leaves.parent_node, leaves.action, leaves.node
                child = (ids[t, p] * (A + 1) + a + 1) % P
                ids[t, n] = child
                return mcts.ModelOutput(reward_t[child], value_t[child], logits_t[child])

            forest = mcts.Forest(B, A, cfg)
            forest.seed(seed)
            ours = mcts.search(root_logits, root_value, model_fn, cfg, legal_mask=legal, forest=forest)
            gumbel = np.array(forest.tree_arrays()["gumbel"])
            visits, qvalues, value, weights, action = (np.asarray(x) for x in mctx_policy(
                jnp.float64(sign), jnp.asarray(root_logits), jnp.asarray(root_value), jnp.asarray(~legal),
                jnp.asarray(gumbel)))

            assert np.array_equal(ours.visit_counts, visits), mode
            np.testing.assert_allclose(ours.q_values, qvalues, rtol=0, atol=1e-12)
            np.testing.assert_allclose(ours.improved_policy, weights, rtol=0, atol=1e-12)
            np.testing.assert_allclose(ours.root_value, value, rtol=0, atol=1e-12)
            assert np.array_equal(ours.selected_action, action), mode
            # the searches are not trivial: several actions visited, halving concentrated visits
            assert (np.count_nonzero(visits, axis=1) >= 2).all() and (visits.max(1) > S // CONSIDERED).all()
