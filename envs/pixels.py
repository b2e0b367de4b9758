"""Pixel observations of a control task: Pendulum-v1 seen as a stack of rendered grayscale frames.

``Arbor/PixelPendulum-v0`` is Gymnasium's ``Pendulum-v1`` (its ``PendulumEnv``: same
dynamics, reward, 200-step limit and action space ``[-2, 2]``) whose observation is the last
``frame_stack`` frames, each an ``image_size x image_size`` grayscale picture of
the pendulum: a bright rod of length ``0.4 * image_size`` from the centre, at the
pole's angle (up is ``theta = 0``), and the pivot. The angular velocity is not in
any single frame; the agent infers it from the stack, as in DrQ's pixel-based
control tasks (Kostrikov et al. 2020 use 84 x 84 and stacks of 3).

The picture is drawn directly in numpy (a distance-to-segment test per pixel, a
fraction of a millisecond) instead of through Pendulum's pygame renderer, which
takes about 14 ms per 500 x 500 frame. ``render_mode='rgb_array'`` returns the
newest frame as RGB for videos.

Observation: ``uint8`` array ``(frame_stack, image_size, image_size)``, newest
frame last (the layout Atari stacks use here). After ``reset`` the stack is the
first frame repeated.
"""
from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

ENV_ID = "Arbor/PixelPendulum-v0"


class PixelPendulum(gym.Env):
    """Pendulum-v1 with stacked grayscale frames instead of ``(cos, sin, theta_dot)``."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, image_size: int = 84, frame_stack: int = 3, render_mode: str | None = None,
                 rod_width: float | None = None):
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        from gymnasium.envs.classic_control.pendulum import PendulumEnv

        self.pendulum = PendulumEnv()          # the dynamics; the 200-step limit comes with the registration
        self.action_space = self.pendulum.action_space
        self.image_size = int(image_size)
        self.frame_stack = int(frame_stack)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (self.frame_stack, self.image_size, self.image_size),
                                                np.uint8)
        centre = (self.image_size - 1) / 2.0
        coords = np.arange(self.image_size, dtype=np.float32) - centre
        self._py, self._px = np.meshgrid(-coords, coords, indexing="ij")   # y axis up
        self._length = 0.4 * self.image_size
        self._width = float(rod_width) if rod_width is not None else max(1.0, self.image_size / 28.0)
        self._pivot = (self._py ** 2 + self._px ** 2) <= (1.2 * self._width) ** 2
        self._frames = np.zeros(self.observation_space.shape, dtype=np.uint8)

    def draw(self, theta: float) -> np.ndarray:
        """One ``image_size x image_size`` uint8 frame of the pendulum at angle ``theta``."""
        tip_x, tip_y = self._length * np.sin(theta), self._length * np.cos(theta)
        # Distance from every pixel centre to the rod segment pivot -> tip.
        t = np.clip((self._px * tip_x + self._py * tip_y) / (self._length ** 2), 0.0, 1.0)
        dist2 = (self._px - t * tip_x) ** 2 + (self._py - t * tip_y) ** 2
        frame = np.where(dist2 <= self._width ** 2, np.uint8(200), np.uint8(0))
        frame[self._pivot] = 255
        return frame

    def _frame(self) -> np.ndarray:
        theta = float(self.pendulum.state[0])
        return self.draw(theta)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        _, info = self.pendulum.reset(seed=seed, options=options)
        self._frames[:] = self._frame()
        return self._frames.copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        _, reward, terminated, truncated, info = self.pendulum.step(action)
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = self._frame()
        return self._frames.copy(), reward, terminated, truncated, info

    @property
    def state(self) -> np.ndarray:
        """The pendulum's ``(theta, theta_dot)``."""
        return self.pendulum.state

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return np.repeat(self._frames[-1][..., None], 3, axis=-1)


def register() -> None:
    """Register ``Arbor/PixelPendulum-v0`` with Gymnasium (idempotent)."""
    if ENV_ID not in gym.envs.registry:
        gym.register(id=ENV_ID, entry_point=PixelPendulum, max_episode_steps=200,
                     kwargs={"image_size": 84, "frame_stack": 3})


register()
