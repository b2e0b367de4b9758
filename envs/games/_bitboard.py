"""Shared machinery of the suite's native games: one int64 bitboard per player and game.

State of ``B`` games (all numpy, leading axis ``B``):
``boards`` int64 ``[B, 2]`` (bit set = stone of that player), ``to_play`` int8,
``done`` bool, ``result`` int8 (player 0's view), ``moves`` int16, ``hist`` int16
``[B, max_game_length]`` and per-game extras (Connect Four keeps column heights).
``step`` updates all games that move with a handful of vectorised array operations.
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from .base import NO_ACTION, BatchedGame, GameState

STONES = ("X", "O")


def _viewer(players: np.ndarray, batch_size: int) -> np.ndarray:
    """Validate a per-game player array for ``observation(players)``."""
    p = np.asarray(players)
    if p.ndim == 0:
        p = np.full(batch_size, p)
    if p.shape != (batch_size,) or not np.isin(p, (0, 1)).all():
        raise ValueError(f"players must be 0/1 of shape ({batch_size},), got {p!r}")
    return p.astype(np.int64)


class BitboardGame(BatchedGame):
    """Base of :class:`TicTacToe` and :class:`ConnectFour`; subclasses give the geometry."""

    #: int64 ``[H, W]``: bit index of each board cell, in observation layout.
    cell_bits: np.ndarray
    #: names of extra per-game int8 arrays and their trailing shapes.
    extra_arrays: dict[str, tuple[int, ...]] = {}

    def __init__(self, batch_size: int = 1) -> None:
        self._h, self._w = self.cell_bits.shape
        self.reset(batch_size)

    # ------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _is_legal(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """bool per row: may ``actions`` be played in games ``rows``."""

    @abc.abstractmethod
    def _place(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """int64 bit of the stone each action places (updating extras such as heights)."""

    @abc.abstractmethod
    def _wins(self, board: np.ndarray) -> np.ndarray:
        """bool per board: does this player's bitboard hold a winning line."""

    # ------------------------------------------------------------ protocol
    def reset(self, batch_size: int | None = None) -> None:
        b = self.batch_size if batch_size is None else int(batch_size)
        if b < 0:
            raise ValueError(f"batch_size must be >= 0, got {b}")
        self._boards = np.zeros((b, 2), np.int64)
        self._to_play = np.zeros(b, np.int8)
        self._done = np.zeros(b, bool)
        self._result = np.zeros(b, np.int8)
        self._moves = np.zeros(b, np.int16)
        self._hist = np.full((b, self.max_game_length), NO_ACTION, np.int16)
        self._extra = {k: np.zeros((b, *shape), np.int8)
                       for k, shape in self.extra_arrays.items()}

    def reset_games(self, indices: Sequence[int] | np.ndarray) -> None:
        rows = np.asarray(indices, dtype=np.int64)
        self._boards[rows] = 0
        self._to_play[rows] = 0
        self._done[rows] = False
        self._result[rows] = 0
        self._moves[rows] = 0
        self._hist[rows] = NO_ACTION
        for v in self._extra.values():
            v[rows] = 0

    @property
    def batch_size(self) -> int:
        return int(self._done.shape[0]) if hasattr(self, "_done") else 0

    def step(self, actions: Sequence[int] | np.ndarray) -> None:
        a = self._check_actions(actions)
        rows = np.flatnonzero(a != NO_ACTION)
        if rows.size == 0:
            return
        act = a[rows]
        legal = self._is_legal(rows, act)
        if not legal.all():
            self._raise_illegal(self.name, rows[~legal], act[~legal])
        player = self._to_play[rows].astype(np.int64)
        board = self._boards[rows, player] | self._place(rows, act)
        self._boards[rows, player] = board
        moves = self._moves[rows]
        self._hist[rows, moves] = act
        moves = moves + 1
        self._moves[rows] = moves
        win = self._wins(board)
        self._done[rows] = win | (moves >= self.max_game_length)
        self._result[rows] = np.where(win, 1 - 2 * player, 0)
        self._to_play[rows] = 1 - player

    def to_play(self) -> np.ndarray:
        return self._to_play.copy()

    def terminal(self) -> np.ndarray:
        return self._done.copy()

    def outcome(self) -> np.ndarray:
        return self._result.astype(np.float32)

    def num_moves(self) -> np.ndarray:
        return self._moves.copy()

    def history(self) -> np.ndarray:
        return self._hist.copy()

    def observation(self, players: np.ndarray | None = None) -> np.ndarray:
        """Planes: stones of the viewer (default: the mover), stones of the opponent,
        all-ones if the viewer is player 0 (first player) else zeros."""
        b = self.batch_size
        rows = np.arange(b)
        viewer = self._to_play if players is None else _viewer(players, b)
        mover = self._boards[rows, viewer]
        other = self._boards[rows, 1 - viewer]
        obs = np.empty((b, 3, self._h, self._w), np.float32)
        obs[:, 0] = (mover[:, None, None] >> self.cell_bits) & 1
        obs[:, 1] = (other[:, None, None] >> self.cell_bits) & 1
        obs[:, 2] = (viewer == 0)[:, None, None]
        return obs

    def stones(self) -> np.ndarray:
        """int8 ``[B, H, W]``: 0 empty, 1 player 0's stone, 2 player 1's (absolute view)."""
        planes = (self._boards[:, :, None, None] >> self.cell_bits) & 1
        return (planes[:, 0] + 2 * planes[:, 1]).astype(np.int8)

    def clone(self, indices: Sequence[int] | np.ndarray | None = None) -> GameState:
        arrays = {"boards": self._boards, "to_play": self._to_play, "done": self._done,
                  "result": self._result, "moves": self._moves, "hist": self._hist,
                  **self._extra}
        if indices is None:
            copied = {k: v.copy() for k, v in arrays.items()}
        else:
            rows = np.asarray(indices, dtype=np.int64)
            copied = {k: v[rows] for k, v in arrays.items()}
        return GameState(copied, kind=self.name)

    def restore(self, state: GameState,
                indices: Sequence[int] | np.ndarray | None = None) -> None:
        if state.kind != self.name:
            raise ValueError(f"cannot restore a {state.kind!r} state into {self.name}")
        s = state.arrays
        if indices is None:
            self._boards = s["boards"].copy()
            self._to_play = s["to_play"].copy()
            self._done = s["done"].copy()
            self._result = s["result"].copy()
            self._moves = s["moves"].copy()
            self._hist = s["hist"].copy()
            self._extra = {k: s[k].copy() for k in self.extra_arrays}
            return
        rows = np.asarray(indices, dtype=np.int64)
        if rows.shape != (state.batch_size,):
            raise ValueError(f"restore: {rows.size} indices for {state.batch_size} games")
        self._boards[rows] = s["boards"]
        self._to_play[rows] = s["to_play"]
        self._done[rows] = s["done"]
        self._result[rows] = s["result"]
        self._moves[rows] = s["moves"]
        self._hist[rows] = s["hist"]
        for k in self.extra_arrays:
            self._extra[k][rows] = s[k]

    def spawn(self) -> "BitboardGame":
        return type(self)(batch_size=0)

    def _status(self, index: int) -> str:
        if self._done[index]:
            r = int(self._result[index])
            return "draw" if r == 0 else f"{STONES[0 if r > 0 else 1]} wins"
        return f"{STONES[int(self._to_play[index])]} to play"
