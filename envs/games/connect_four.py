"""Connect Four (6 rows x 7 columns) on bitboards, batched. Action ``c`` drops a stone
in column ``c`` (0 leftmost), the same numbering as OpenSpiel's ``connect_four``.

Bit ``7 * column + row`` (row 0 at the bottom) holds a cell; row 6 of every column is
an always-empty sentinel, so the shift-and-mask four-in-a-row test never wraps.
"""

from __future__ import annotations

import numpy as np

from ._bitboard import STONES, BitboardGame

ROWS, COLUMNS = 6, 7
_STRIDE = ROWS + 1
_DIRECTIONS = (1, _STRIDE, _STRIDE - 1, _STRIDE + 1)  # vertical, horizontal, 2 diagonals


class ConnectFour(BitboardGame):
    """Batched Connect Four. Player 0 is X and moves first. Observation ``[3, 6, 7]``
    (row 0 is the **top** row, as drawn): mover's stones, opponent's stones, ones if
    the mover is X. Symmetries: identity and the left-right mirror."""

    name = "connect_four"
    openspiel_name = "connect_four"
    num_actions = COLUMNS
    observation_shape = (3, ROWS, COLUMNS)
    max_game_length = ROWS * COLUMNS
    cell_bits = (np.arange(COLUMNS)[None, :] * _STRIDE
                 + (ROWS - 1 - np.arange(ROWS))[:, None]).astype(np.int64)
    extra_arrays = {"heights": (COLUMNS,)}

    def _is_legal(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return self._extra["heights"][rows, actions] < ROWS

    def _place(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        heights = self._extra["heights"]
        h = heights[rows, actions].astype(np.int64)
        heights[rows, actions] = h + 1
        return np.left_shift(1, actions * _STRIDE + h, dtype=np.int64)

    def _wins(self, board: np.ndarray) -> np.ndarray:
        win = np.zeros(board.shape, bool)
        for d in _DIRECTIONS:
            pairs = board & (board >> d)
            win |= (pairs & (pairs >> (2 * d))) != 0
        return win

    def legal_mask(self) -> np.ndarray:
        return (self._extra["heights"] < ROWS) & ~self._done[:, None]

    def action_permutations(self) -> np.ndarray:
        return np.stack([np.arange(COLUMNS), np.arange(COLUMNS)[::-1]]).astype(np.int64)

    def transform_observation(self, obs: np.ndarray, symmetry: int) -> np.ndarray:
        if symmetry == 0:
            return obs
        if symmetry == 1:
            return np.ascontiguousarray(np.flip(obs, axis=-1))
        raise IndexError(f"connect_four symmetry must be 0 or 1, got {symmetry}")

    def render(self, index: int = 0) -> str:
        """Board drawn top row first, with column numbers underneath."""
        stones = self.stones()[index]
        lines = [" ".join("." if c == 0 else STONES[c - 1] for c in row) for row in stones]
        lines.append(" ".join(str(c) for c in range(COLUMNS)))
        return "\n".join(lines) + f"\n{self._status(index)}"
