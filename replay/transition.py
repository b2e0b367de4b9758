"""Transition replay (DQN, DrQ, curiosity, offline CRR): n-step targets, frame de-duplication, PER."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .core import TERMINATED, TRUNCATED, ReplayBase

Obs = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class TransitionBatch:
    """A sampled batch, as torch tensors on the buffer's device.

    ``reward`` is the n-step discounted return (cut at the episode end),
    ``next_obs`` the observation the target bootstraps from, and ``discount``
    the factor for that bootstrap: ``gamma ** k`` after ``k <= n`` steps, or 0
    when the episode terminated within the window (truncation bootstraps).
    ``indices`` are ids for :meth:`TransitionReplay.update_priorities`.
    """

    obs: Obs
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: Obs
    discount: torch.Tensor
    weights: torch.Tensor
    indices: np.ndarray


class TransitionReplay(ReplayBase):
    """Circular transition buffer fed by a vector env; see ``docs/replay.md``.

    ``add`` takes one vector-env step (leading dim ``num_envs``); ``next_obs`` is
    the true next observation (the final one on the step an episode ends) and
    the next ``add`` for that slot starts the new episode with its reset
    observation. Transitions whose n-step window is still open (the last
    ``n_step - 1`` steps of an ongoing episode, and the latest step) are not
    sampled until it closes.
    """

    _kind = "TransitionReplay"

    def __init__(
        self,
        capacity: int,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_envs: int,
        n_step: int = 1,
        gamma: float = 0.99,
        frame_stack: int = 0,
        prioritized: bool = False,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_final: float = 1.0,
        beta_steps: int = 0,
        eps: float = 1e-6,
        seed: int = 0,
        device: str | torch.device = "cpu",
        storage: str = "memory",
        path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(capacity, observation_space, action_space, num_envs, n_step=n_step, gamma=gamma,
                         frame_stack=frame_stack, prioritized=prioritized, alpha=alpha, beta=beta,
                         beta_final=beta_final, beta_steps=beta_steps, eps=eps, seed=seed, device=device,
                         storage=storage, path=path, lookahead=n_step)
        self._gamma_pow32 = (self.gamma ** np.arange(self.n_step + 1)).astype(np.float32)

    def add(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, truncated: Any) -> np.ndarray:
        """Store one step of every env; returns the new transitions' ids (shape ``(num_envs,)``)."""
        return self._add_rows(obs, action, reward, next_obs, terminated, truncated)

    def add_episode(self, env: int, observations: Any, actions: Any, rewards: Any, terminations: Any,
                    truncations: Any) -> np.ndarray:
        """Write a whole finished episode (``T + 1`` observations, ``T`` steps) into env slot ``env``."""
        return self._add_episode(env, observations, actions, rewards, terminations, truncations)

    def sample(self, batch_size: int) -> TransitionBatch:
        """Sample ``batch_size`` transitions (uniform, or proportional to priority) with n-step targets.

        ``obs`` and ``next_obs`` are gathered by one call of the compiled window
        gather and may be (non-contiguous) views of the same tensor: treat them
        as read-only.
        """
        slot, row, base = self._draw(batch_size)
        n, rows, k = self.n_step, self.rows, self._stack
        steps: int | np.ndarray = n
        if n == 1:
            flags = self._flags[slot]
            reward = self._flat["reward"][slot]
            discount = np.where(flags & TERMINATED, np.float32(0.0), np.float32(self.gamma))
        else:
            window = (row[:, None] + self._nstep_offsets) % rows + base[:, None]
            flags = self._flags[window]
            done = (flags & (TERMINATED | TRUNCATED)) != 0
            if not done.any():  # fast path: every window runs the full n steps
                reward = self._flat["reward"][window] @ self._gamma_pow32[:n]
                discount = np.full(batch_size, self._gamma_pow32[n], dtype=np.float32)
            else:
                any_done = done.any(axis=1)
                steps = np.where(any_done, done.argmax(axis=1) + 1, n)
                live = self._nstep_offsets < steps[:, None]
                reward = (self._flat["reward"][window] * live) @ self._gamma_pow32[:n]
                last_terminated = (flags[np.arange(batch_size), steps - 1] & TERMINATED) != 0
                discount = np.where(last_terminated, np.float32(0.0), self._gamma_pow32[steps])
        if self.frame_stack and isinstance(steps, int) and n < k:
            # One window of k + n rows holds both stacks (they overlap by k - n frames).
            frames = self._gather_windows(base, row + (1 - k), k + n)
            obs, next_obs = self._to_tensors(frames, slice(0, k), slice(n, n + k))
        else:
            # Two windows of k rows: the stack ending at the row and the one ending `steps` rows later.
            first = row + (1 - k)
            frames = self._gather_windows(base, np.stack([first, first + steps], axis=1), k)
            parts = (slice(0, k), slice(k, 2 * k)) if self.frame_stack else (0, 1)
            obs, next_obs = self._to_tensors(frames, *parts)
        action = self._flat["action"][slot]
        if self._discrete_action:
            action = action.astype(np.int64)
        action, reward, discount = torch.from_numpy(action), torch.from_numpy(reward), torch.from_numpy(discount)
        if not self._on_cpu:
            action, reward, discount = (x.to(self.device, non_blocking=True) for x in (action, reward, discount))
        return TransitionBatch(obs=obs, action=action, reward=reward, next_obs=next_obs, discount=discount,
                               weights=self._importance_weights(slot), indices=self._row_id[slot])
