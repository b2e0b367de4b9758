"""MinAtar (Young and Tian 2019): five Atari games on a 10 x 10 grid, the CPU-scale Atari.

``env=minatar env.game=breakout`` (asterix, breakout, freeway, seaquest,
space_invaders). Observations are channels-first ``uint8`` arrays of 0/1
(``C x 10 x 10``; C = 4 for Breakout, 7 Asterix, 7 Freeway, 10 Seaquest, 6
Space Invaders), so the suite's replay stores them compactly and the grid CNN
reads them directly. The settings are MinAtar's own defaults, as in the paper's
DQN baselines:

- ``sticky_action_prob: 0.1``: with probability 0.1 the previous action repeats;
- ``difficulty_ramping: true``: games speed up as they go on;
- ``minimal_actions: false``: all six actions (no-op, left, up, right, down, fire);
  ``true`` keeps only the game's meaningful ones (Breakout: no-op, left, right);
- ``max_episode_steps: 10000``: a truncation cap the original does not have, so
  that a policy which never loses still ends its episodes (truncation, not
  termination: agents bootstrap through it).

Seeding ``reset(seed=...)`` seeds MinAtar's random stream, so runs repeat exactly.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")

# One colour per channel (drawn in channel order; later channels on top), black background.
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]],
                    dtype=np.uint8)


class MinAtarEnv(gym.Env):
    """One MinAtar game as a Gymnasium env with ``uint8`` channels-first observations."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, game: str = "breakout", sticky_action_prob: float = 0.1, difficulty_ramping: bool = True,
                 minimal_actions: bool = False, render_mode: str | None = None):
        try:
            from minatar import Environment
        except ModuleNotFoundError as err:   # pragma: no cover - minatar is a dependency
            raise ModuleNotFoundError("MinAtar environments need the minatar package: pip install minatar") from err
        if game not in GAMES:
            raise ValueError(f"unknown MinAtar game {game!r}; choose from {', '.join(GAMES)}")
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must lie in [0, 1], got {sticky_action_prob}")
        self.game_name = game
        self.game = Environment(game, sticky_action_prob=float(sticky_action_prob),
                                difficulty_ramping=bool(difficulty_ramping))
        self.action_set = list(self.game.minimal_action_set()) if minimal_actions else list(range(6))
        h, w, c = self.game.state_shape()
        self.action_space = gym.spaces.Discrete(len(self.action_set))
        self.observation_space = gym.spaces.Box(0, 1, shape=(c, h, w), dtype=np.uint8)
        self.render_mode = render_mode

    def _obs(self) -> np.ndarray:
        return np.ascontiguousarray(self.game.state().transpose(2, 0, 1), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.game.seed(int(seed))
        elif not hasattr(self, "_seeded"):
            self.game.seed(int(self.np_random.integers(2**31 - 1)))
        self._seeded = True
        self.game.reset()
        return self._obs(), {}

    def step(self, action):
        reward, done = self.game.act(self.action_set[int(action)])
        return self._obs(), float(reward), bool(done), False, {}

    # ------------------------------------------------------------ exact resume
    _NOT_STATE = ("random", "channels", "action_map")

    def snapshot_state(self) -> dict:
        """The game's whole state as plain data (ints, lists, arrays, the random stream)."""
        fields = {k: _plain(v) for k, v in vars(self.game.env).items() if k not in self._NOT_STATE}
        name, keys, pos, has_gauss, gauss = self.game.random.get_state()
        return {"fields": fields, "last_action": int(self.game.last_action),
                "rng": {"keys": np.array(keys), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}

    def restore_snapshot(self, state: dict) -> None:
        """Put the game back into a state from :meth:`snapshot_state`."""
        for key, value in state["fields"].items():
            setattr(self.game.env, key, np.array(value) if isinstance(value, np.ndarray) else _copy(value))
        rng = state["rng"]
        self.game.random.set_state(("MT19937", np.asarray(rng["keys"], dtype=np.uint32), rng["pos"],
                                    rng["has_gauss"], rng["gauss"]))
        self.game.last_action = int(state["last_action"])
        self._seeded = True

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        state = self.game.state()
        frame = np.zeros(state.shape[:2] + (3,), dtype=np.uint8)
        for channel in range(state.shape[2]):
            frame[state[..., channel]] = _PALETTE[channel % len(_PALETTE)]
        return np.repeat(np.repeat(frame, 16, axis=0), 16, axis=1)   # 160 x 160 for videos


def _plain(value):
    """Numpy scalars to Python numbers, lists copied element by element, arrays copied."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _copy(value):
    return [_copy(v) for v in value] if isinstance(value, list) else value


def minatar_env_fn(game: str, sticky_action_prob: float, difficulty_ramping: bool, minimal_actions: bool,
                   max_episode_steps: int | None, render_mode: str | None):
    """A constructor of one configured MinAtar env (for the vector env)."""

    def make() -> gym.Env:
        env: gym.Env = MinAtarEnv(game, sticky_action_prob, difficulty_ramping, minimal_actions, render_mode)
        if max_episode_steps:
            env = gym.wrappers.TimeLimit(env, max_episode_steps=int(max_episode_steps))
        return env

    return make
