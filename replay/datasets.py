"""Offline datasets: transition buffers on disk with a description of how they were made.

A dataset is a :class:`~replay.TransitionReplay` saved in the one on-disk format
(``replay/fileformat.py``: versioned, every array checksummed, memory-mappable)
whose JSON ``meta`` carries one more entry, ``"dataset"``: the preset, the
environment config, the behaviour policy and the behaviour policy's own return::

    {"format": "arbor-dataset", "version": 1, "preset": "medium", "env": {...},
     "source": [".../latest.pt"], "epsilon": 0.3, "transitions": 50000, "episodes": 212,
     "episode_return_mean": 187.2,        # mean return of the complete episodes stored
     "policy_return_mean": 190.4, "policy_return_std": 80.1, "policy_episodes": 20}

``episode_return_mean`` is the return of the data itself (for ``mixed``, the only
behaviour figure: the behaviour is every policy of a training run);
``policy_return_*`` is a separate seeded evaluation of the (epsilon-mixed)
behaviour policy. Datasets are stored with 1-step transitions (``n_step = 1``):
an agent may change ``gamma`` when it loads one, the transitions stay the same.

Building (``collect``), converting a training run's replay (``from_replay_state``),
saving, loading (in RAM or through the memory-mapped backend, for datasets larger
than RAM), and exporting to an ``.npz`` of flat episode-ordered arrays (the layout
d3rlpy's ``MDPDataset`` takes) live here; Minari conversion is ``replay.minari_io``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import fileformat
from .minari_io import episodes
from .transition import TransitionReplay

FORMAT = "arbor-dataset"
VERSION = 1
PRESETS = ("expert", "medium", "mixed")

Policy = Callable[[Any], np.ndarray]


# ------------------------------------------------------------------- building
def _random_actions(action_space, count: int, rng: np.random.Generator) -> np.ndarray:
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return rng.integers(0, int(action_space.n), count) + int(action_space.start)
    low, high = np.asarray(action_space.low), np.asarray(action_space.high)
    return rng.uniform(low, high, (count, *low.shape)).astype(action_space.dtype)


class MixedPolicy:
    """A behaviour policy: one of ``policies`` per episode (drawn uniformly), epsilon-mixed per step.

    With probability ``epsilon`` an env's action is uniform over the action
    space, otherwise the action of the policy drawn for its current episode.
    ``episode_done(mask)`` redraws the policy of the envs whose episode ended.
    """

    def __init__(self, policies: Sequence[Policy], action_space, epsilon: float, num_envs: int, seed: int):
        if not policies:
            raise ValueError("a behaviour policy needs at least one policy")
        self.policies = list(policies)
        self.action_space = action_space
        self.epsilon = float(epsilon)
        self.rng = np.random.default_rng(seed)
        self.assignment = self.rng.integers(0, len(self.policies), num_envs)

    def episode_done(self, done: np.ndarray) -> None:
        done = np.asarray(done, dtype=bool)
        if done.any() and len(self.policies) > 1:
            self.assignment[done] = self.rng.integers(0, len(self.policies), int(done.sum()))

    def __call__(self, obs: Any) -> np.ndarray:
        batch = len(self.assignment)
        actions = None
        for index in np.unique(self.assignment):
            chosen = np.asarray(self.policies[index](obs))
            if actions is None:
                actions = chosen.copy()
            else:
                rows = self.assignment == index
                actions[rows] = chosen[rows]
        if self.epsilon > 0:
            mask = self.rng.random(batch) < self.epsilon
            if mask.any():
                actions[mask] = _random_actions(self.action_space, int(mask.sum()), self.rng)
        return actions


def collect(policy: MixedPolicy, env_cfg: Mapping[str, Any], size: int, num_envs: int, seed: int,
            storage: str = "memory", storage_path: str | os.PathLike | None = None) -> tuple[TransitionReplay, list[float]]:
    """Run ``policy`` in ``num_envs`` envs until ``size`` transitions are stored.

    Returns the buffer (1-step transitions; the last episode of each env may be
    unfinished) and the returns of the episodes completed while collecting.
    """
    import envs

    env, spec = envs.make(env_cfg, num_envs=num_envs, seed=seed, mode="train")
    k = max(1, spec.frame_stack)
    capacity = int(size * 1.25) + num_envs * (k + 4)   # room for one final-observation row per episode
    buf = TransitionReplay(capacity, spec.observation_space, spec.action_space, num_envs, n_step=1,
                           frame_stack=spec.frame_stack, seed=seed, storage=storage, path=storage_path)
    obs, _ = env.reset(seed=seed)
    returns: list[float] = []
    added = 0
    while len(buf) < size and added < size:
        actions = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(actions)
        buf.add(obs, actions, reward, info["next_obs"], terminated, truncated)
        policy.episode_done(np.asarray(info["game_over"]))
        obs = next_obs
        added += num_envs
        returns.extend(env.pop_episodes()[0])
    env.close()
    return buf, returns


def evaluate_policy(policy: MixedPolicy, env_cfg: Mapping[str, Any], episodes_count: int, num_envs: int,
                    seed: int) -> dict[str, float]:
    """Seeded returns of the behaviour policy (the same mixing it collected with)."""
    from runtime.evaluation import run_episodes

    num_envs = max(1, min(num_envs, episodes_count))
    evaluated = MixedPolicy(policy.policies, policy.action_space, policy.epsilon, num_envs, seed)

    class _Agent:
        def act(self, obs: Any, explore: bool = False) -> np.ndarray:
            return evaluated(obs)

    returns = run_episodes(_Agent(), env_cfg, episodes_count, num_envs, seed)
    return {"policy_return_mean": float(returns.mean()), "policy_return_std": float(returns.std()),
            "policy_episodes": int(returns.size)}


def from_replay_state(state: Mapping[str, Any]) -> TransitionReplay:
    """A 1-step, uniformly sampled copy of a training run's transition replay (``state_dict`` form).

    The stored rows (observations, actions, rewards, episode flags) are kept as
    they are; n-step and prioritization settings of the run are dropped (a
    transition sampleable with n steps is sampleable with one).
    """
    if state.get("format") != "arbor-replay" or state.get("kind") != TransitionReplay._kind:
        raise ValueError(f"not a transition replay (kind {state.get('kind')!r})")
    config = json.loads(state["config"]) if isinstance(state["config"], str) else dict(state["config"])
    config.update(n_step=1, prioritized=False)
    arrays = {name: value for name, value in state["arrays"].items() if not name.startswith("priority.")}
    buf = TransitionReplay._from_config(config)
    buf.load_state_dict({**state, "config": json.dumps(config, sort_keys=True), "arrays": arrays,
                         "max_priority": 1.0})
    return buf


# ------------------------------------------------------------ saving / loading
def episode_returns(buf: TransitionReplay) -> np.ndarray:
    """Undiscounted returns of the complete episodes stored in ``buf``."""
    return np.asarray([float(ep["rewards"].sum()) for ep in episodes(buf)], dtype=np.float64)


def save_dataset(buf: TransitionReplay, path: str | os.PathLike, info: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``buf`` with dataset metadata ``info`` (JSON-able) to ``path``; returns the full metadata."""
    if buf.n_step != 1:
        raise ValueError("datasets hold 1-step transitions; build the buffer with n_step=1")
    returns = episode_returns(buf)
    meta_info = {"format": FORMAT, "version": VERSION, **dict(info), "transitions": len(buf),
                 "episodes": int(returns.size),
                 "episode_return_mean": float(returns.mean()) if returns.size else None,
                 "episode_return_std": float(returns.std()) if returns.size else None}
    state = buf.state_dict()
    meta = {key: value for key, value in state.items() if key != "arrays"}
    meta["dataset"] = meta_info
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    meta_info["file_bytes"] = fileformat.write(path, meta, buf._state_arrays())
    return meta_info


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset metadata of ``path`` (header only; checks magic, version and the header CRC)."""
    header = fileformat.read_header(path)
    meta = header["meta"]
    if meta.get("kind") != TransitionReplay._kind:
        raise ValueError(f"{os.fspath(path)!r} holds a {meta.get('kind')!r} buffer, not transitions")
    return dict(meta.get("dataset") or {"format": "arbor-replay (no dataset metadata)"})


def load_dataset(path: str | os.PathLike, *, gamma: float | None = None, seed: int | None = None,
                 storage: str = "memory", storage_path: str | os.PathLike | None = None,
                 device: str = "cpu") -> tuple[TransitionReplay, dict[str, Any]]:
    """Load a dataset (or any saved ``TransitionReplay``) for offline learning; checksums are verified.

    ``gamma`` sets the discount of sampled transitions, ``seed`` reseeds the
    sampler (the file's generator state otherwise), ``storage="mmap"`` reads the
    arrays into memory maps under ``storage_path`` instead of RAM. Prioritization
    saved with the buffer is dropped (offline sampling is uniform). Raises
    ``ValueError`` for a missing, truncated, corrupt or foreign file.
    """
    header = fileformat.read_header(path)
    meta = header["meta"]
    if meta.get("format") != "arbor-replay" or meta.get("kind") != TransitionReplay._kind:
        raise ValueError(f"{os.fspath(path)!r} holds a {meta.get('kind')!r} buffer, not transitions")
    try:
        config = json.loads(meta["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} has an unusable config: {exc}") from None
    if gamma is not None:
        config["gamma"] = float(gamma)
    config["prioritized"] = False
    buf = TransitionReplay._from_config(config, device=device, storage=storage, path=storage_path)
    into = {"storage." + name: arr for name, arr in buf._arrays.items()}
    meta, arrays = fileformat.read(path, into=into, header=header)
    arrays = {name: value for name, value in arrays.items() if not name.startswith("priority.")}
    buf.load_state_dict({**meta, "config": json.dumps(config, sort_keys=True), "arrays": arrays,
                         "max_priority": 1.0})
    if seed is not None:
        buf._rng = np.random.default_rng(seed)
    info = dict(meta.get("dataset") or {})
    return buf, info


def export_npz(buf: TransitionReplay, path: str | os.PathLike) -> dict[str, int]:
    """Complete episodes as flat arrays: ``observations, actions, rewards, terminals, timeouts``.

    One row per step, episodes one after another (the final observation of an
    episode is not stored, as in d3rlpy's ``MDPDataset`` and D4RL); an episode
    ends on the row whose ``terminals`` or ``timeouts`` is 1.
    """
    eps = list(episodes(buf))
    if not eps:
        raise ValueError("the dataset holds no complete episode to export")
    if isinstance(eps[0]["observations"], dict):
        raise TypeError("npz export supports array observations only (not dict observations)")
    arrays = {
        "observations": np.concatenate([ep["observations"][:-1] for ep in eps]),
        "actions": np.concatenate([ep["actions"] for ep in eps]),
        "rewards": np.concatenate([ep["rewards"] for ep in eps]).astype(np.float32),
        "terminals": np.concatenate([ep["terminations"] for ep in eps]).astype(np.float32),
        "timeouts": np.concatenate([ep["truncations"] | (~ep["terminations"] & (np.arange(len(ep["rewards"]))
                                                                                  == len(ep["rewards"]) - 1))
                                    for ep in eps]).astype(np.float32),
    }
    tmp = os.fspath(path) + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, os.fspath(path))
    return {"episodes": len(eps), "steps": int(arrays["rewards"].size)}
