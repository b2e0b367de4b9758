"""MiniGrid environments with observations an agent can learn from.

``obs: image`` (default) gives the agent's 7x7 egocentric view as a channels-first
uint8 array (3 x 7 x 7: object, colour, state codes); ``fully_observed: true``
swaps in the whole grid (3 x W x H, the agent drawn in with its direction, as
MiniGrid's ``FullyObsWrapper`` encodes it). ``obs: dict`` keeps the view and the
facing direction as a dict of arrays. The mission string is dropped: the suite's
grid tasks have one mission each.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np


class MiniGridObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MiniGrid's dict observation -> channels-first image (or image + direction dict)."""

    def __init__(self, env: gym.Env, fully_observed: bool = False, obs: str = "image"):
        gym.utils.RecordConstructorArgs.__init__(self, fully_observed=fully_observed, obs=obs)
        gym.ObservationWrapper.__init__(self, env)
        if obs not in ("image", "dict"):
            raise ValueError(f"obs must be 'image' or 'dict', got {obs!r}")
        self.fully_observed, self.mode = fully_observed, obs
        base = env.unwrapped
        h, w, c = (base.width, base.height, 3) if fully_observed else env.observation_space["image"].shape
        image = gym.spaces.Box(0, 255, shape=(c, h, w), dtype=np.uint8)
        if obs == "image":
            self.observation_space = image
        else:
            self.observation_space = gym.spaces.Dict(
                {"image": image, "direction": gym.spaces.Box(0, 3, shape=(1,), dtype=np.int64)})

    def observation(self, observation):
        if self.fully_observed:
            from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

            base = self.env.unwrapped
            grid = base.grid.encode()
            grid[base.agent_pos[0]][base.agent_pos[1]] = np.array(
                [OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"], base.agent_dir])
            image = grid
        else:
            image = observation["image"]
        image = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.uint8)
        if self.mode == "image":
            return image
        return {"image": image, "direction": np.array([observation["direction"]], dtype=np.int64)}


def minigrid_env_fn(env_id: str, fully_observed: bool, obs: str, render_mode: str | None):
    """A zero-argument constructor of one wrapped MiniGrid env (for Gymnasium's vector envs)."""
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    def thunk() -> gym.Env:
        return MiniGridObservation(gym.make(env_id, render_mode=render_mode), fully_observed, obs)

    return thunk


def minigrid_ids() -> list[str]:
    """Every registered MiniGrid environment id."""
    import minigrid  # noqa: F401

    return sorted(k for k in gym.envs.registry if k.startswith("MiniGrid-"))
