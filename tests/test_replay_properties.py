"""Property-based tests: the vectorised buffers against a deliberately naive reference.

The reference keeps every env's stream as a Python list of rows holding whole
observations (full stacks as the env produced them) and computes n-step
targets, sampleable sets and priorities with plain loops. Only the capacity
accounting (one row per observation, ``k`` rows for a stacked reset
observation) is shared with the real buffer, because it *defines* which
transitions are still stored.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay import SequenceReplay, TransitionReplay

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class NaiveReplay:
    """Plain-Python model of the buffer: lists of rows, loops everywhere."""

    def __init__(self, rows: int, num_envs: int, frame_stack: int, n_step: int, gamma: float, lookahead: int):
        self.rows, self.k, self.n, self.gamma = rows, max(1, frame_stack), n_step, gamma
        self.lookahead = lookahead
        self.streams: list[list[dict | None]] = [[] for _ in range(num_envs)]
        self.awaiting = [True] * num_envs
        self.where: dict[int, tuple[int, int]] = {}
        self.priority: dict[int, float] = {}

    def add(self, ids, obs, action, reward, next_obs, terminated, truncated, extras=None):
        for e in range(len(self.streams)):
            stream = self.streams[e]
            if self.awaiting[e]:
                stream.extend([None] * self.k)
                self.awaiting[e] = False
            row = len(stream) - 1
            stream[row] = {"obs": np.array(obs[e]), "action": action[e], "reward": float(reward[e]),
                               "next_obs": np.array(next_obs[e]), "terminated": bool(terminated[e]),
                               "truncated": bool(truncated[e]), "id": int(ids[e]),
                               "extras": {k: np.array(v[e]) for k, v in (extras or {}).items()}}
            stream.append(None)
            if terminated[e] or truncated[e]:
                self.awaiting[e] = True
            self.where[int(ids[e])] = (e, row)

    def alive(self, e: int, row: int) -> bool:
        return row >= len(self.streams[e]) - self.rows

    def sampleable(self) -> set[int]:
        out = set()
        for e, stream in enumerate(self.streams):
            for row, item in enumerate(stream):
                if item is None or not self.alive(e, row - (self.k - 1)):
                    continue
                complete = True
                for j in range(self.lookahead):
                    step = stream[row + j] if row + j < len(stream) else None
                    if step is None:
                        complete = False
                        break
                    if step["terminated"] or step["truncated"]:
                        break
                if complete:
                    out.add(item["id"])
        return out

    def stored(self) -> list[int]:
        return [item["id"] for e, s in enumerate(self.streams) for r, item in enumerate(s)
                if item is not None and self.alive(e, r)]

    def target(self, tid: int):
        e, row = self.where[tid]
        stream = self.streams[e]
        ret, discount = 0.0, 1.0
        for j in range(self.n):
            step = stream[row + j]
            ret += discount * step["reward"]
            discount *= self.gamma
            if step["terminated"]:
                return stream[row]["obs"], ret, step["next_obs"], 0.0
            if step["truncated"]:
                break
        return stream[row]["obs"], ret, step["next_obs"], discount


def make_stepper(num_envs: int, frame_stack: int, seed: int, p_term: float, p_trunc: float):
    """Synthetic vector env whose frames are unique ids ([counter, env]), stacked like FrameStack.

    Reset stacks are padded with random frames, so a buffer that invents its own
    padding (or mixes episodes) is caught.
    """
    rng = np.random.default_rng(seed)
    counter = [1000]

    def frame(n):
        out = np.stack([np.arange(counter[0], counter[0] + n), np.full(n, seed)], axis=1).astype(np.int32)
        counter[0] += n
        return out

    def reset_obs(n):
        if not frame_stack:
            return frame(n)
        pad = rng.integers(-50, 0, size=(n, frame_stack - 1, 2)).astype(np.int32)
        return np.concatenate([pad, frame(n)[:, None]], axis=1)

    obs = reset_obs(num_envs)

    def step():
        nonlocal obs
        new = frame(num_envs)
        next_obs = np.concatenate([obs[:, 1:], new[:, None]], axis=1) if frame_stack else new
        terminated = rng.random(num_envs) < p_term
        truncated = (rng.random(num_envs) < p_trunc) & ~terminated
        action = rng.integers(0, 3, size=num_envs)
        reward = rng.normal(size=num_envs).astype(np.float32)
        data = (obs, action, reward, next_obs, terminated, truncated)
        following = next_obs.copy()
        done = terminated | truncated
        if done.any():
            following[done] = reset_obs(int(done.sum()))
        obs = following
        return data

    return step


def obs_space(frame_stack: int) -> gym.Space:
    shape = (frame_stack, 2) if frame_stack else (2,)
    return gym.spaces.Box(-1_000_000, 1_000_000, shape, np.int32)


params = st.fixed_dictionaries({
    "num_envs": st.integers(1, 3),
    "frame_stack": st.sampled_from([0, 1, 2, 4]),
    "n_step": st.integers(1, 4),
    "extra_rows": st.integers(2, 12),
    "steps": st.integers(1, 45),
    "p_term": st.sampled_from([0.0, 0.1, 0.3]),
    "p_trunc": st.sampled_from([0.0, 0.1, 0.3]),
    "seed": st.integers(0, 2**16),
})


@SETTINGS
@given(params)
def test_transitions_match_naive_reference(p):
    k = max(1, p["frame_stack"])
    rows = k + p["n_step"] + p["extra_rows"]
    buf = TransitionReplay(rows * p["num_envs"], obs_space(p["frame_stack"]), gym.spaces.Discrete(3), p["num_envs"],
                           n_step=p["n_step"], gamma=0.9, frame_stack=p["frame_stack"], seed=p["seed"])
    ref = NaiveReplay(rows, p["num_envs"], p["frame_stack"], p["n_step"], 0.9, p["n_step"])
    step = make_stepper(p["num_envs"], p["frame_stack"], p["seed"], p["p_term"], p["p_trunc"])
    for _ in range(p["steps"]):
        data = step()
        ids = buf.add(*data)
        ref.add(ids, *data)
    # Stored count, sampleable set (wrap-around, stack eviction, open n-step windows).
    assert len(buf) == len(ref.stored())
    expected = ref.sampleable()
    assert set(buf.sampleable_indices().tolist()) == expected
    if not expected:
        with pytest.raises(ValueError):
            buf.sample(4)
        return
    batch = buf.sample(64)
    for b, tid in enumerate(batch.indices.tolist()):
        assert tid in expected
        obs, ret, next_obs, discount = ref.target(tid)
        np.testing.assert_array_equal(batch.obs[b].numpy(), obs)  # stacks never mix episodes
        np.testing.assert_array_equal(batch.next_obs[b].numpy(), next_obs)
        assert batch.reward[b].item() == pytest.approx(ret, rel=1e-5, abs=1e-5)
        assert batch.discount[b].item() == pytest.approx(discount, rel=1e-6)
        e, row = ref.where[tid]
        assert batch.action[b].item() == ref.streams[e][row]["action"]
    assert np.all(batch.weights.numpy() == 1.0)


@SETTINGS
@given(params, st.lists(st.floats(0.0, 10.0), min_size=1, max_size=20), st.floats(0.0, 1.0))
def test_priorities_match_naive_reference(p, new_priorities, alpha):
    k = max(1, p["frame_stack"])
    rows = k + p["n_step"] + p["extra_rows"]
    buf = TransitionReplay(rows * p["num_envs"], obs_space(p["frame_stack"]), gym.spaces.Discrete(3), p["num_envs"],
                           n_step=p["n_step"], frame_stack=p["frame_stack"], seed=p["seed"], prioritized=True,
                           alpha=alpha, beta=0.5, eps=1e-3)
    ref = NaiveReplay(rows, p["num_envs"], p["frame_stack"], p["n_step"], 0.99, p["n_step"])
    step = make_stepper(p["num_envs"], p["frame_stack"], p["seed"], p["p_term"], p["p_trunc"])
    max_priority = 1.0
    half = p["steps"] // 2
    for t in range(p["steps"]):
        data = step()
        ids = buf.add(*data)
        ref.add(ids, *data)
        for tid in ids.tolist():
            ref.priority[tid] = max_priority
        if t == half:
            stored = ref.stored()
            chosen = [stored[i % len(stored)] for i in range(len(new_priorities))]
            buf.update_priorities(np.array(chosen), np.array(new_priorities))
            for tid, pr in zip(chosen, new_priorities):  # later duplicates win
                ref.priority[tid] = pr + 1e-3
            # Duplicated ids with different values: either value is acceptable, re-set them consistently.
            last = {tid: pr for tid, pr in zip(chosen, new_priorities)}
            buf.update_priorities(np.array(list(last)), np.array(list(last.values())))
            max_priority = max([max_priority] + [v + 1e-3 for v in new_priorities])
    stored = ref.stored()
    got = buf.priorities(np.array(stored))
    want = np.array([ref.priority[t] ** alpha for t in stored])
    np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(buf._tree.total, want.sum(), rtol=1e-9)
    expected = ref.sampleable()
    if not expected:
        return
    batch = buf.sample(32)
    assert set(batch.indices.tolist()) <= expected
    prob = np.array([ref.priority[t] ** alpha for t in batch.indices.tolist()]) / want.sum()
    weights = (len(stored) * prob) ** -0.5
    np.testing.assert_allclose(batch.weights.numpy(), weights / weights.max(), rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(params, st.integers(1, 4))
def test_sequences_match_naive_reference(p, unroll):
    k = max(1, p["frame_stack"])
    lookahead = unroll + p["n_step"] + 1
    rows = k + lookahead + p["extra_rows"]
    extras = {"root_value": ((), np.float32), "policy": ((3,), np.float32)}
    buf = SequenceReplay(rows * p["num_envs"], obs_space(p["frame_stack"]), gym.spaces.Discrete(3), p["num_envs"],
                         unroll_steps=unroll, n_step=p["n_step"], frame_stack=p["frame_stack"], seed=p["seed"],
                         extras=extras)
    ref = NaiveReplay(rows, p["num_envs"], p["frame_stack"], p["n_step"], 0.99, lookahead)
    step = make_stepper(p["num_envs"], p["frame_stack"], p["seed"], p["p_term"], p["p_trunc"])
    value_rng = np.random.default_rng(p["seed"])
    for _ in range(p["steps"]):
        data = step()
        ex = {"root_value": value_rng.normal(size=p["num_envs"]).astype(np.float32),
              "policy": value_rng.dirichlet(np.ones(3), size=p["num_envs"]).astype(np.float32)}
        ids = buf.add(*data, extras=ex)
        ref.add(ids, *data, extras=ex)
    expected = ref.sampleable()
    assert set(buf.sampleable_indices().tolist()) == expected
    if not expected:
        return
    batch = buf.sample(16, window_obs=True)
    width = lookahead
    assert batch.mask.shape == (16, width)
    for b, tid in enumerate(batch.indices.tolist()):
        e, row = ref.where[tid]
        stream = ref.streams[e]
        np.testing.assert_array_equal(batch.obs[b].numpy(), stream[row]["obs"])
        ended = False
        last_next = None
        for j in range(width):
            item = None if ended else stream[row + j]
            if item is None:
                assert not batch.mask[b, j]
                assert batch.reward[b, j].item() == 0.0
                np.testing.assert_array_equal(batch.window_obs[b, j + 1].numpy(), last_next)
                continue
            assert batch.mask[b, j]
            assert batch.action[b, j].item() == item["action"]
            assert batch.reward[b, j].item() == pytest.approx(item["reward"])
            assert batch.extras["root_value"][b, j].item() == pytest.approx(float(item["extras"]["root_value"]))
            np.testing.assert_allclose(batch.extras["policy"][b, j].numpy(), item["extras"]["policy"])
            assert bool(batch.terminated[b, j]) == item["terminated"]
            assert batch.positions[b, j] == item["id"]
            np.testing.assert_array_equal(batch.window_obs[b, j].numpy(), item["obs"])
            np.testing.assert_array_equal(batch.window_obs[b, j + 1].numpy(), item["next_obs"])
            last_next = item["next_obs"]
            ended = item["terminated"] or item["truncated"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([0, 1, 3]), st.integers(1, 3), st.integers(8, 30), st.booleans())
def test_add_episode_equals_stepwise_adds(seed, frame_stack, n_step, rows, prioritized):
    """Writing whole episodes (offline datasets, self-play games) leaves exactly the state of step-by-step adds."""
    rng = np.random.default_rng(seed)
    k = max(1, frame_stack)
    kwargs = {"n_step": n_step, "frame_stack": frame_stack, "seed": seed, "prioritized": prioritized}
    stepwise = TransitionReplay(rows, obs_space(frame_stack), gym.spaces.Discrete(3), 1, **kwargs)
    whole = TransitionReplay(rows, obs_space(frame_stack), gym.spaces.Discrete(3), 1, **kwargs)
    for episode in range(int(rng.integers(1, 6))):
        length = int(rng.integers(1, rows - k + 1))
        frames = rng.integers(0, 1000, size=(length + k, 2)).astype(np.int32)
        if frame_stack:
            obs = np.stack([frames[t : t + k] for t in range(length + 1)])
        else:
            obs = frames[: length + 1]
        actions = rng.integers(0, 3, size=length)
        rewards = rng.normal(size=length).astype(np.float32)
        terminal = bool(rng.random() < 0.5)
        terms = np.zeros(length, bool)
        truncs = np.zeros(length, bool)
        (terms if terminal else truncs)[-1] = True
        ids_step = [stepwise.add(obs[t : t + 1], actions[t : t + 1], rewards[t : t + 1], obs[t + 1 : t + 2],
                                 terms[t : t + 1], truncs[t : t + 1])[0] for t in range(length)]
        ids_whole = whole.add_episode(0, obs, actions, rewards, terms, truncs)
        np.testing.assert_array_equal(ids_whole, ids_step)
    a, b = stepwise.state_dict(), whole.state_dict()
    assert len(stepwise) == len(whole)
    for name in a["arrays"]:
        if name.startswith(("storage.obs", "storage.action", "storage.reward")):
            # rows that never held data of a live transition may differ only where they were never written
            live = a["arrays"]["storage.sampleable"].numpy() | (a["arrays"]["storage.flags"].numpy() > 0)
            assert np.array_equal(a["arrays"][name].numpy()[live], b["arrays"][name].numpy()[live]), name
        else:
            assert torch.equal(a["arrays"][name], b["arrays"][name]), name
