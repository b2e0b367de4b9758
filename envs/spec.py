"""The environment spec: what an agent needs to know about an environment before it sees one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvSpec:
    """Spaces and protocol facts of one (single, unbatched) environment.

    Agents build their networks and replay from this, never from a live env, so
    that evaluation and resumption can rebuild them without stepping anything.
    """

    name: str
    observation_space: gym.Space
    action_space: gym.Space
    num_envs: int
    num_players: int = 1
    frame_stack: int = 0          # >0: observations stack this many frames on axis 0
    frame_skip: int = 1
    max_episode_steps: int | None = None
    reward_clip: float | None = None   # agents clip learning rewards to [-c, c] when set
    protocol: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        """True when observations are images (3-D boxes, channels first)."""
        space = self.observation_space
        if isinstance(space, gym.spaces.Dict):
            space = space.spaces.get("image", space)
        return isinstance(space, gym.spaces.Box) and len(space.shape) == 3

    @property
    def num_actions(self) -> int:
        """Number of discrete actions (error for continuous action spaces)."""
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise TypeError(f"{self.name} has a continuous action space {self.action_space}")
        return int(self.action_space.n)
