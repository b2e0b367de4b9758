"""The suite's vector-env wrapper: dense next observations and whole-game episode statistics.

Every vector env the suite makes runs Gymnasium's SAME_STEP autoreset: the
observation returned on the step an episode ends is already the next episode's
first one.  This wrapper puts the true last observation of every env into
``info["next_obs"]`` (dense, the same shape as ``obs``) so that a transition
``(obs, action, reward, next_obs, terminated, truncated)`` is valid for every
env on every step: truncation bootstraps from ``next_obs``, termination does not.

It also keeps the returns of finished *games*. With Atari's life-loss protocol a
life lost is a terminal for learning but not the end of the game: ``info["lives"]``
tells them apart, and the reported return is the whole game's.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv, VectorWrapper


def _dense_final(obs: Any, final_obs: Any, done: np.ndarray) -> Any:
    """Return ``obs`` with the rows of finished envs replaced by their final observations."""
    if final_obs is None or not done.any():
        return obs
    if isinstance(obs, dict):
        out = {key: value.copy() for key, value in obs.items()}
        for i in np.flatnonzero(done):
            for key in out:
                out[key][i] = final_obs[i][key]
        return out
    if final_obs.dtype == object:  # Gymnasium's vector envs: object array, None where not done
        out = obs.copy()
        for i in np.flatnonzero(done):
            out[i] = final_obs[i]
        return out
    return np.where(done.reshape((-1,) + (1,) * (obs.ndim - 1)), final_obs, obs)


SEED_RANGE = 2**31 - 1   # ALE takes seeds as C ints; larger ones (a resume's derived seed) are folded below it


class SuiteVectorEnv(VectorWrapper):
    """Adds ``info['next_obs']`` and whole-game return/length queues to a SAME_STEP vector env."""

    def __init__(self, env: VectorEnv, life_loss_terminal: bool = False, queue_size: int = 100):
        super().__init__(env)
        self.life_loss_terminal = life_loss_terminal
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.return_queue: deque[float] = deque(maxlen=queue_size)
        self.length_queue: deque[int] = deque(maxlen=queue_size)
        self.episodes_finished = 0
        self.lives = np.full(self.num_envs, -1, dtype=np.int64)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """Reset every env; an int ``seed`` seeds env i with ``seed + i``, folded into ALE's 32-bit range."""
        if isinstance(seed, (int, np.integer)):
            seed = int(seed) % (SEED_RANGE - self.num_envs)
        obs, info = self.env.reset(seed=seed, options=options)
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0
        if "lives" in info:
            self.lives = np.asarray(info["lives"], dtype=np.int64).copy()
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        info = dict(info)
        info["next_obs"] = _dense_final(obs, info.get("final_obs"), done)
        self.episode_returns += np.asarray(reward, dtype=np.float64)
        self.episode_lengths += 1
        game_over = done.copy()
        if self.life_loss_terminal and "lives" in info:
            # A terminal is a lost life when the life count dropped; at a real game over the env
            # has already reset and reports the new game's (full) lives.
            lives = np.asarray(info["lives"], dtype=np.int64)
            life_lost = terminated & (lives < self.lives)
            game_over = done & ~life_lost
            self.lives = lives
        for i in np.flatnonzero(game_over):
            self.return_queue.append(float(self.episode_returns[i]))
            self.length_queue.append(int(self.episode_lengths[i]))
        self.episodes_finished += int(game_over.sum())
        self.episode_returns[game_over] = 0.0
        self.episode_lengths[game_over] = 0
        info["game_over"] = game_over
        return obs, reward, terminated, truncated, info

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the games finished since the last call, then forgets them."""
        returns, lengths = list(self.return_queue), list(self.length_queue)
        self.return_queue.clear()
        self.length_queue.clear()
        return returns, lengths
