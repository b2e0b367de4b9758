"""Tic-tac-toe on bitboards, batched. Actions 0..8 are cells in row-major order
(0 top-left, 8 bottom-right), the same numbering as OpenSpiel's ``tic_tac_toe``."""

from __future__ import annotations

import numpy as np

from ._bitboard import STONES, BitboardGame

#: the eight winning lines as 9-bit masks.
LINES = np.array([0b000000111, 0b000111000, 0b111000000,   # rows
                  0b001001001, 0b010010010, 0b100100100,   # columns
                  0b100010001, 0b001010100], np.int64)     # diagonals


def dihedral(x: np.ndarray, symmetry: int) -> np.ndarray:
    """Symmetry ``0..7`` of the square on the last two axes: rotate ``symmetry % 4``
    quarter turns, then mirror left-right if ``symmetry >= 4``."""
    if not 0 <= symmetry < 8:
        raise IndexError(f"dihedral symmetry must be in 0..7, got {symmetry}")
    y = np.rot90(x, symmetry % 4, axes=(-2, -1))
    if symmetry >= 4:
        y = np.flip(y, axis=-1)
    return np.ascontiguousarray(y)


def dihedral_action_permutations(height: int, width: int, extra: int = 0) -> np.ndarray:
    """``perm[s, a]`` for cell actions ``r * width + c`` (plus ``extra`` fixed actions,
    such as a pass, after the cells); needs a square board."""
    if height != width:
        raise ValueError("dihedral symmetries need a square board")
    grid = np.arange(height * width).reshape(height, width)
    perms = []
    for s in range(8):
        source = dihedral(grid, s).ravel()        # new cell j holds old cell source[j]
        perm = np.argsort(source)                 # old cell a goes to new cell perm[a]
        perms.append(np.concatenate([perm, height * width + np.arange(extra)]))
    return np.stack(perms).astype(np.int64)




class TicTacToe(BitboardGame):
    """Batched tic-tac-toe. Player 0 is X and moves first. Symmetries: the 8 of the
    square (:func:`dihedral`). Observation ``[3, 3, 3]``: mover's stones, opponent's
    stones, ones if the mover is X."""

    name = "tic_tac_toe"
    openspiel_name = "tic_tac_toe"
    num_actions = 9
    observation_shape = (3, 3, 3)
    max_game_length = 9
    cell_bits = np.arange(9, dtype=np.int64).reshape(3, 3)
    _perms = dihedral_action_permutations(3, 3)

    def _is_legal(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        occupied = self._boards[rows, 0] | self._boards[rows, 1]
        return ((occupied >> actions) & 1) == 0

    def _place(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return np.left_shift(1, actions, dtype=np.int64)

    def _wins(self, board: np.ndarray) -> np.ndarray:
        return ((board[:, None] & LINES) == LINES).any(axis=1)

    def legal_mask(self) -> np.ndarray:
        occupied = self._boards[:, 0] | self._boards[:, 1]
        empty = ((occupied[:, None] >> np.arange(9)) & 1) == 0
        return empty & ~self._done[:, None]

    def action_permutations(self) -> np.ndarray:
        return self._perms.copy()

    def transform_observation(self, obs: np.ndarray, symmetry: int) -> np.ndarray:
        return dihedral(obs, symmetry)

    def render(self, index: int = 0) -> str:
        """Board with X/O, empty cells shown by their action number."""
        cells = self.stones()[index].ravel()
        marks = [STONES[c - 1] if c else str(i) for i, c in enumerate(cells)]
        rows = [" " + " | ".join(marks[r * 3:r * 3 + 3]) for r in range(3)]
        return "\n---+---+---\n".join(rows) + f"\n{self._status(index)}"
