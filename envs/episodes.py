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

With ``stack_restart_on_life_loss`` (Atari 100k, as Dopamine's agents play it) the
frame stack restarts after a lost life, in training and evaluation alike: the
frames from before the loss are zeroed until new ones replace them, the padding a
new game starts with.
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

    def __init__(self, env: VectorEnv, life_loss_terminal: bool = False, queue_size: int = 100,
                 stack_restart_on_life_loss: bool = False):
        super().__init__(env)
        self.life_loss_terminal = life_loss_terminal
        self.stack_restart_on_life_loss = stack_restart_on_life_loss
        shape = env.single_observation_space.shape or ()
        self._stack = shape[0] if stack_restart_on_life_loss else 0
        self._frames_since_loss = np.full(self.num_envs, self._stack, dtype=np.int64)  # < stack: mask the rest
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
        self._frames_since_loss[:] = self._stack
        if "lives" in info:
            self.lives = np.asarray(info["lives"], dtype=np.int64).copy()
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        info = dict(info)
        game_over = done.copy()
        if "lives" in info:
            # A life is lost when the count dropped; at a real game over the env has already
            # reset and reports the new game's (full) lives.
            lives = np.asarray(info["lives"], dtype=np.int64)
            life_lost = lives < self.lives
            if self.life_loss_terminal:
                game_over = done & ~(terminated & life_lost)
            if self._stack:
                obs = self._restart_stacks(obs, life_lost, done & ~life_lost)
            self.lives = lives
        info["next_obs"] = _dense_final(obs, info.get("final_obs"), done)
        self.episode_returns += np.asarray(reward, dtype=np.float64)
        self.episode_lengths += 1
        for i in np.flatnonzero(game_over):
            self.return_queue.append(float(self.episode_returns[i]))
            self.length_queue.append(int(self.episode_lengths[i]))
        self.episodes_finished += int(game_over.sum())
        self.episode_returns[game_over] = 0.0
        self.episode_lengths[game_over] = 0
        info["game_over"] = game_over
        return obs, reward, terminated, truncated, info

    def _restart_stacks(self, obs: np.ndarray, lost: np.ndarray, new_game: np.ndarray) -> np.ndarray:
        """Zero the frames of ``obs`` older than each env's last lost life (``lost``: lost on this step;
        ``new_game``: reset on this step, whose stack the env has already padded)."""
        k = self._stack
        since = np.minimum(self._frames_since_loss + 1, k)
        since[new_game] = k
        since[lost] = 1
        self._frames_since_loss = since
        masked = np.flatnonzero(since < k)
        if masked.size:
            obs = np.array(obs, copy=True)
            for i in masked:
                obs[i, :k - since[i]] = 0
        return obs

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the games finished since the last call, then forgets them."""
        returns, lengths = list(self.return_queue), list(self.length_queue)
        self.return_queue.clear()
        self.length_queue.clear()
        return returns, lengths
