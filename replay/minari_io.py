"""Conversion between replay buffers and Minari datasets on local disk (never downloads).

Minari (``pip install minari h5py``) is imported lazily so the rest of the
replay package works without it. Limits: episodes only (no per-step ``infos``);
on export, only complete episodes whose first observation is still stored are
written (the ongoing episode of each env slot and episodes partly overwritten
by the ring are skipped); Box, Discrete and Dict-of-those spaces.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .core import HAS_TRANSITION, TERMINATED, TRUNCATED, ReplayBase
from .transition import TransitionReplay


def _minari():
    try:
        import minari
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Minari conversion needs `pip install minari h5py`") from exc
    return minari


@contextlib.contextmanager
def _datasets_root(root: str | os.PathLike) -> Iterator[None]:
    """Point Minari at ``root`` (it reads MINARI_DATASETS_PATH on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = os.fspath(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _open_dataset(source: Any):
    """A MinariDataset from an object, a dataset directory (with ``data/``) or its ``data`` directory."""
    minari = _minari()
    if isinstance(source, minari.MinariDataset):
        return source
    path = Path(source)
    if (path / "data" / "metadata.json").exists():
        path = path / "data"
    if not (path / "metadata.json").exists():
        raise ValueError(f"{os.fspath(source)!r} is not a local Minari dataset (no metadata.json found)")
    return minari.MinariDataset(path)


def from_minari(source: Any, *, capacity: int | None = None, num_envs: int = 1, frame_stack: int = 0,
                buffer_cls: type[ReplayBase] = TransitionReplay, **kwargs: Any) -> ReplayBase:
    """Build a buffer from a local Minari dataset (path or ``MinariDataset``).

    Episodes are written whole with ``add_episode``, spread round-robin over
    ``num_envs`` slots. ``capacity`` defaults to enough rows for every episode.
    Extra keyword arguments go to the buffer constructor (``n_step``, ``gamma``...).
    """
    dataset = _open_dataset(source)
    episodes = list(dataset.iterate_episodes())
    if not episodes:
        raise ValueError("the Minari dataset holds no episodes")
    k = max(1, frame_stack)
    if capacity is None:
        per_slot = [0] * num_envs
        for i, episode in enumerate(episodes):
            per_slot[i % num_envs] += len(episode.rewards) + k
        capacity = (max(per_slot) + 4 + k) * num_envs
    buf = buffer_cls(capacity, dataset.observation_space, dataset.action_space, num_envs, frame_stack=frame_stack,
                     **kwargs)
    for i, episode in enumerate(episodes):
        buf._add_episode(i % num_envs, episode.observations, episode.actions, episode.rewards,
                         episode.terminations, episode.truncations)
    return buf


def _episode_runs(buf: ReplayBase, env: int) -> list[tuple[int, int]]:
    """(first transition row, last transition row) of complete, fully stored episodes of ``env`` (global rows)."""
    rows, k = buf.rows, buf._stack
    written = int(buf._written[env])
    oldest = max(0, written - rows)
    g = np.arange(oldest, written)
    flags = buf._flags[env * rows + g % rows]
    has = (flags & HAS_TRANSITION) != 0
    done = has & ((flags & (TERMINATED | TRUNCATED)) != 0)
    starts = np.flatnonzero(has & ~np.concatenate([[False], has[:-1]]))
    ends = np.flatnonzero(done)
    runs = []
    for start in starts:
        later = ends[ends >= start]
        if later.size == 0:
            continue  # ongoing episode
        end = int(later[0])
        if not has[start:end + 1].all() or g[start] - (k - 1) < oldest or (start == 0 and oldest > 0):
            continue  # partly overwritten by the ring
        runs.append((int(g[start]), int(g[end])))
    return runs


def episodes(buf: ReplayBase) -> Iterator[dict[str, Any]]:
    """Yield complete stored episodes as dicts of numpy arrays (Minari's layout: ``T + 1`` observations)."""
    rows = buf.rows
    for env in range(buf.num_envs):
        base = np.array(env * rows)
        for first, last in _episode_runs(buf, env):
            g = np.arange(first, last + 2)  # transition rows plus the final observation row
            obs = buf._gather_obs(g % rows, np.broadcast_to(base, g.shape))
            obs = {k: v.numpy().copy() for k, v in obs.items()} if isinstance(obs, dict) else obs.numpy().copy()
            slots = env * rows + g[:-1] % rows
            flags = buf._flags[slots]
            yield {
                "observations": obs,
                "actions": buf._flat["action"][slots].astype(buf.action_space.dtype),
                "rewards": buf._flat["reward"][slots].astype(np.float64),
                "terminations": (flags & TERMINATED) != 0,
                "truncations": (flags & TRUNCATED) != 0,
            }


def to_minari(buf: ReplayBase, dataset_id: str, root: str | os.PathLike, **metadata: Any):
    """Write the buffer's complete episodes as Minari dataset ``dataset_id`` under directory ``root``.

    ``metadata`` goes to ``minari.create_dataset_from_buffers`` (``author``,
    ``description``, ``env`` ...). Returns the created ``MinariDataset``.
    """
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, **episode) for i, episode in enumerate(episodes(buf))]
    if not buffers:
        raise ValueError("the buffer holds no complete episode to export")
    metadata.setdefault("algorithm_name", "arbor-replay export")
    metadata.setdefault("data_format", "hdf5")
    with _datasets_root(root), _quiet_minari():
        return minari.create_dataset_from_buffers(dataset_id, buffers, observation_space=buf.observation_space,
                                                  action_space=buf.action_space, **metadata)


@contextlib.contextmanager
def _quiet_minari() -> Iterator[None]:
    """Minari warns about every missing optional metadata field; keep exports quiet."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="minari")
        yield
