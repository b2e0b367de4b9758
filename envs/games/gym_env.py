"""Gymnasium wrapper: one agent plays a board game against a fixed opponent.

Observation: the game's float32 ``(C, H, W)`` planes from the agent's point of view.
Action: ``Discrete(num_actions)``; ``info["action_mask"]`` (int8 ``[A]``) marks legal
moves. Reward: at the end of the game +1 win, 0 draw, -1 loss (0 on all other steps).
Illegal moves: with ``illegal_action="lose"`` (default) the episode terminates with
reward -1 and ``info["illegal_action"] = True``; with ``"raise"`` an
:class:`~envs.games.base.IllegalActionError` is raised. An action outside the action
space always raises ``ValueError``. Games end by their rules: there is no truncation.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from .base import BatchedGame, FinishedGameError, IllegalActionError
from .players import Player, make_player


class BoardGameEnv(gym.Env):
    """Single-agent view of a two-player game; the opponent moves inside ``step``.

    ``agent_player`` fixes the agent's colour (0 moves first); ``None`` draws it at
    random each episode, so the opponent moves first half the time. ``reset`` also
    accepts ``options={"agent_player": 0 or 1}``.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 2}

    def __init__(self, game: str | BatchedGame | Callable[[], BatchedGame] = "tic_tac_toe",
                 opponent: str | Player = "random", agent_player: int | None = None,
                 illegal_action: str = "lose", render_mode: str | None = None) -> None:
        from . import make_game

        if illegal_action not in ("lose", "raise"):
            raise ValueError(f"illegal_action must be 'lose' or 'raise', got "
                             f"{illegal_action!r}")
        if agent_player not in (None, 0, 1):
            raise ValueError(f"agent_player must be None, 0 or 1, got {agent_player!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        if isinstance(game, str):
            self.game = make_game(game)
        elif isinstance(game, BatchedGame):
            self.game = game.spawn()
        else:
            self.game = game()
        self.game.reset(1)
        self.opponent = make_player(opponent)
        self.agent_player_option = agent_player
        self.illegal_action = illegal_action
        self.render_mode = render_mode
        low, high = self.game.observation_bounds
        self.observation_space = gym.spaces.Box(low, high, self.game.observation_shape,
                                                np.float32)
        self.action_space = gym.spaces.Discrete(self.game.num_actions)
        self.agent_player = 0
        self._finished = False

    # -------------------------------------------------------------------- helpers
    def _observe(self) -> np.ndarray:
        return self.game.observation(np.array([self.agent_player]))[0]

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"action_mask": self.game.legal_mask()[0].astype(np.int8),
                "agent_player": self.agent_player, **extra}

    def _agent_result(self) -> float:
        return float(self.game.outcome()[0]) * (1.0 if self.agent_player == 0 else -1.0)

    def _opponent_moves(self) -> None:
        while not self.game.terminal()[0] and self.game.to_play()[0] != self.agent_player:
            action = np.asarray(self.opponent.act(self.game.take([0]))).reshape(-1)
            legal = self.game.legal_mask()[0]
            if (action.shape != (1,) or not np.issubdtype(action.dtype, np.integer)
                    or not 0 <= action[0] < legal.size or not legal[action[0]]):
                raise IllegalActionError(
                    f"opponent {type(self.opponent).__name__} answered {action!r}, not a "
                    f"legal move in\n{self.game.render(0)}")
            self.game.step(action)

    # -------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        colour = options.get("agent_player", self.agent_player_option)
        if colour not in (None, 0, 1):
            raise ValueError(f"agent_player must be None, 0 or 1, got {colour!r}")
        self.agent_player = int(self.np_random.integers(2)) if colour is None else colour
        if hasattr(self.opponent, "seed") and callable(self.opponent.seed):
            self.opponent.seed(int(self.np_random.integers(2**31)))
        self.game.reset(1)
        self._finished = False
        self._opponent_moves()
        if self.render_mode == "human":
            self.render()
        return self._observe(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._finished:
            raise FinishedGameError("the game has ended; call reset() before step()")
        if not self.action_space.contains(action):
            a = np.asarray(action)
            if not (a.shape == () and np.issubdtype(a.dtype, np.integer)
                    and 0 <= int(a) < self.game.num_actions):
                raise ValueError(f"action {action!r} is not in {self.action_space}")
        action = int(action)
        if not self.game.legal_mask()[0, action]:
            if self.illegal_action == "raise":
                raise IllegalActionError(
                    f"{self.game.name}: illegal action {action}\n{self.game.render(0)}")
            self._finished = True
            return self._observe(), -1.0, True, False, self._info(illegal_action=True)
        self.game.step(np.array([action]))
        self._opponent_moves()
        terminated = bool(self.game.terminal()[0])
        self._finished = terminated
        reward = self._agent_result() if terminated else 0.0
        if self.render_mode == "human":
            self.render()
        return self._observe(), reward, terminated, False, self._info(illegal_action=False)

    def render(self) -> str | None:
        text = self.game.render(0)
        if self.render_mode == "human":
            print(text + "\n")
            return None
        return text
