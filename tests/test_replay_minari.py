"""Minari round trip on local disk (skipped when minari/h5py are not installed)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("minari")
pytest.importorskip("h5py")

from replay import TransitionReplay, episodes, from_minari, to_minari


def test_minari_round_trip(tmp_path):
    space = gym.spaces.Box(0, 255, (2, 3, 3), np.uint8)
    buf = TransitionReplay(300, space, gym.spaces.Discrete(4), 2, n_step=2, frame_stack=2, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (2, 2, 3, 3), dtype=np.uint8)
    for t in range(60):
        nxt = np.concatenate([obs[:, 1:], rng.integers(0, 256, (2, 1, 3, 3), dtype=np.uint8)], axis=1)
        term = np.array([t % 13 == 12, t % 17 == 16])
        trunc = np.array([False, t % 29 == 28]) & ~term
        buf.add(obs, rng.integers(0, 4, 2), rng.normal(size=2), nxt, term, trunc)
        obs = nxt.copy()
        done = term | trunc
        obs[done] = rng.integers(0, 256, (int(done.sum()), 2, 3, 3), dtype=np.uint8)
    exported = list(episodes(buf))
    assert len(exported) == 4 + 5  # env 0 ends at t = 12, 25, 38, 51; env 1 at 16, 28, 33, 50, 57
    dataset = to_minari(buf, "arbor/toy-v0", tmp_path)
    assert dataset.total_episodes == len(exported)
    assert dataset.total_steps == sum(len(e["rewards"]) for e in exported)
    loaded = from_minari(tmp_path / "arbor" / "toy-v0", frame_stack=2, n_step=2)
    again = list(episodes(loaded))
    key = lambda e: e["observations"].tobytes()
    for a, b in zip(sorted(exported, key=key), sorted(again, key=key)):
        np.testing.assert_array_equal(a["observations"], b["observations"])
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_allclose(a["rewards"], b["rewards"], rtol=1e-6)
        np.testing.assert_array_equal(a["terminations"], b["terminations"])
        np.testing.assert_array_equal(a["truncations"], b["truncations"])
    assert len(loaded) == dataset.total_steps
    batch = loaded.sample(16)
    assert batch.obs.shape == (16, 2, 3, 3)


def test_from_minari_rejects_missing_dataset(tmp_path):
    with pytest.raises(ValueError, match="not a local Minari dataset"):
        from_minari(tmp_path / "nothing")
