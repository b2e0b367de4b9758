"""Trajectory windows for MuZero / AlphaZero: unroll windows with masks, per-step search extras, reanalyse."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .core import TERMINATED, TRUNCATED, ReplayBase, _check_array, _to_numpy

Obs = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class SequenceBatch:
    """Windows of ``width = unroll_steps + n_step + 1`` consecutive steps starting at sampled positions.

    Position ``j`` of window ``b`` is the step taken from the ``j``-th observation
    after the start. ``mask[b, j]`` is False past the episode end (the step that
    ends the episode is still True); masked positions hold zeros. ``positions``
    are per-position ids (``-1`` where masked) for :meth:`SequenceReplay.write_back`
    and per-position ``update_priorities``; ``indices`` are the window starts.
    ``window_obs`` (only with ``window_obs=True``) has ``width + 1`` observations:
    the one before each step, then the one after the last; past the episode end
    it repeats the episode's final observation.
    """

    obs: Obs
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    mask: torch.Tensor
    extras: dict[str, torch.Tensor]
    weights: torch.Tensor
    indices: np.ndarray
    positions: np.ndarray
    window_obs: Obs | None = None


class SequenceReplay(ReplayBase):
    """Trajectory storage sampled as unroll windows; shares storage and samplers with TransitionReplay.

    ``extras`` declares per-step fields stored beside each step, e.g.
    ``{"policy": ((num_actions,), np.float32), "root_value": ((), np.float32),
    "to_play": ((), np.int8)}``; they are passed to ``add(..., extras=...)`` and
    can be rewritten later (reanalyse) with :meth:`write_back`. Window starts are
    sampled uniformly or proportionally to per-position priorities; a start is
    only sampled once its whole window is known (or its episode has ended).
    """

    _kind = "SequenceReplay"

    def __init__(
        self,
        capacity: int,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_envs: int,
        unroll_steps: int = 5,
        n_step: int = 10,
        gamma: float = 0.997,
        extras: Mapping[str, tuple[tuple[int, ...], Any]] | None = None,
        frame_stack: int = 0,
        prioritized: bool = False,
        alpha: float = 1.0,
        beta: float = 1.0,
        beta_final: float = 1.0,
        beta_steps: int = 0,
        eps: float = 1e-6,
        seed: int = 0,
        device: str | torch.device = "cpu",
        storage: str = "memory",
        path: str | os.PathLike | None = None,
    ) -> None:
        if unroll_steps < 0:
            raise ValueError(f"unroll_steps must be >= 0, got {unroll_steps}")
        self.unroll_steps = int(unroll_steps)
        self.width = self.unroll_steps + int(n_step) + 1
        super().__init__(capacity, observation_space, action_space, num_envs, n_step=n_step, gamma=gamma,
                         frame_stack=frame_stack, prioritized=prioritized, alpha=alpha, beta=beta,
                         beta_final=beta_final, beta_steps=beta_steps, eps=eps, seed=seed, device=device,
                         storage=storage, path=path, extras=extras, lookahead=self.width)

    def _extra_config(self) -> dict[str, Any]:
        return {"unroll_steps": self.unroll_steps,
                "extras": {k: [list(shape), dtype.str] for k, (shape, dtype) in self._extras_spec.items()}}

    def add(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, truncated: Any,
            extras: Mapping[str, Any] | None = None) -> np.ndarray:
        """Store one step of every env with its extras; returns the steps' ids (shape ``(num_envs,)``).

        Keep the ids of a game to write its outcome back at the end (AlphaZero).
        """
        return self._add_rows(obs, action, reward, next_obs, terminated, truncated, extras)

    def add_episode(self, env: int, observations: Any, actions: Any, rewards: Any, terminations: Any,
                    truncations: Any, extras: Mapping[str, Any] | None = None) -> np.ndarray:
        """Write a whole finished game/episode into env slot ``env`` (e.g. AlphaZero self-play)."""
        return self._add_episode(env, observations, actions, rewards, terminations, truncations, extras)

    def sample(self, batch_size: int, window_obs: bool = False) -> SequenceBatch:
        """Sample ``batch_size`` windows (see :class:`SequenceBatch`)."""
        slot, row, base = self._draw(batch_size)
        offsets = np.arange(self.width)
        window = (row[:, None] + offsets) % self.rows + base[:, None]
        flags = self._flags[window]
        done = (flags & (TERMINATED | TRUNCATED)) != 0
        mask = (np.cumsum(done, axis=1) - done) == 0  # up to and including the first done
        steps = np.where(done.any(axis=1), done.argmax(axis=1) + 1, self.width)

        def masked(name: str) -> np.ndarray:
            values = self._flat[name][window]
            return np.where(mask.reshape(mask.shape + (1,) * (values.ndim - 2)), values, np.zeros((), values.dtype))

        dev = self.device
        action = torch.from_numpy(masked("action"))
        if self._discrete_action:
            action = action.long()
        extras = {name: torch.from_numpy(masked("extra." + name)).to(dev) for name in self._extras_spec}
        win_obs = None
        if window_obs:
            clamped = np.minimum(np.arange(self.width + 1), steps[:, None])
            win_obs = self._gather_obs(row[:, None] + clamped, np.broadcast_to(base[:, None], clamped.shape))
        start_ids = self._row_id[slot]
        return SequenceBatch(
            obs=self._gather_obs(row, base), action=action.to(dev),
            reward=torch.from_numpy(np.where(mask, self._flat["reward"][window], np.float32(0.0))).to(dev),
            terminated=torch.from_numpy(mask & ((flags & TERMINATED) != 0)).to(dev),
            truncated=torch.from_numpy(mask & ((flags & TRUNCATED) != 0)).to(dev),
            mask=torch.from_numpy(mask).to(dev), extras=extras, weights=self._importance_weights(slot),
            indices=start_ids, positions=np.where(mask, start_ids[:, None] + offsets * self.num_envs, -1),
            window_obs=win_obs)

    def observations_at(self, batch: SequenceBatch, offsets: Any) -> Obs:
        """Observations ``offsets[b, j]`` steps after the start of window ``b`` of ``batch``.

        ``offsets`` (shape ``[batch, J]``, values in ``0..width``) past the episode end
        give the episode's final observation, as ``window_obs`` does; unlike
        ``window_obs`` only the requested positions are gathered (MuZero needs a few of
        the ``width + 1`` observations of each window: bootstrap states, reanalysed
        roots). Call it before further adds, while the windows are still stored.
        """
        offsets = _to_numpy(offsets, "offsets").astype(np.int64, copy=False)
        starts = np.asarray(batch.indices, np.int64)
        if offsets.ndim != 2 or offsets.shape[0] != starts.shape[0]:
            raise ValueError(f"offsets: expected shape ({starts.shape[0]}, J), got {offsets.shape}")
        if offsets.size and (offsets.min() < 0 or offsets.max() > self.width):
            raise ValueError(f"offsets must lie in [0, {self.width}]")
        g, env = np.divmod(starts, self.num_envs)
        steps = batch.mask.cpu().numpy().sum(axis=1)
        clamped = np.minimum(offsets, steps[:, None])
        base = np.broadcast_to((env * self.rows)[:, None], clamped.shape)
        return self._gather_obs((g % self.rows)[:, None] + clamped, base)

    def write_back(self, positions: Any, values: Mapping[str, Any]) -> int:
        """Overwrite stored extras at ``positions`` (e.g. reanalysed policy / root value).

        ``values[name]`` has shape ``positions.shape + extra_shape``. Ids equal to -1
        (masked positions) or whose step has been overwritten since sampling are
        skipped. Returns the number of positions written.
        """
        ids = _to_numpy(positions, "positions").astype(np.int64, copy=False)
        keep = ids.reshape(-1) >= 0
        flat, alive = self._resolve_ids(np.where(keep, ids.reshape(-1), 0))
        alive &= keep
        for name, value in values.items():
            if name not in self._extras_spec:
                raise KeyError(f"unknown extra {name!r}; declared: {sorted(self._extras_spec)}")
            shape, dtype = self._extras_spec[name]
            value = _check_array(value, f"values[{name!r}]", ids.shape + shape, dtype)
            self._flat["extra." + name][flat[alive]] = value.reshape((-1,) + shape)[alive]
        return int(alive.sum())


def nstep_value_targets(batch: SequenceBatch, value_key: str, gamma: float, n_step: int, unroll_steps: int,
                        to_play_key: str | None = None) -> torch.Tensor:
    """MuZero value targets ``z_t`` for positions ``0..unroll_steps`` of a :class:`SequenceBatch`.

    ``z_t = sum_{i<n} gamma^i r_{t+i} + gamma^n v_{t+n}`` with rewards and values
    taken from the perspective of the player to move at ``t`` when ``to_play_key``
    names a stored player id (two-player games flip the sign of the other
    player's quantities). Positions past the episode end contribute nothing, so
    episode ends are absorbing (truncated episodes are treated like terminated
    ones here; bootstrap from ``window_obs`` if that matters).
    """
    reward, mask = batch.reward.double(), batch.mask
    value = batch.extras[value_key].double()
    width = reward.shape[1]
    if width < unroll_steps + n_step + 1:
        raise ValueError(f"windows of width {width} are too short for unroll_steps={unroll_steps}, n_step={n_step}")
    span = unroll_steps + 1
    player = batch.extras[to_play_key] if to_play_key else None

    def sign(offset: int) -> torch.Tensor | float:
        if player is None:
            return 1.0
        return (player[:, offset : offset + span] == player[:, :span]).double() * 2 - 1

    target = torch.zeros(reward.shape[0], span, dtype=torch.float64, device=reward.device)
    for i in range(n_step):
        target += gamma**i * reward[:, i : i + span] * mask[:, i : i + span] * sign(i)
    target += gamma**n_step * value[:, n_step : n_step + span] * mask[:, n_step : n_step + span] * sign(n_step)
    return (target * mask[:, :span]).float()
