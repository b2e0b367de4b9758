"""Vectorised sum tree (wide fan-out) for proportional prioritized replay.

Each node sums ``fanout`` children (32 by default), so a million leaves need
only five levels. ``update`` recomputes the touched parents level by level;
``find`` searches the running sum of the block sums, then inside one block.
Every step is one batch of numpy operations over all queries: no Python loop
over items, and far fewer numpy calls than a binary tree.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Sum tree over ``capacity`` non-negative leaf values."""

    def __init__(self, capacity: int, fanout: int = 32) -> None:
        if capacity < 1:
            raise ValueError(f"SumTree capacity must be >= 1, got {capacity}")
        if fanout < 2:
            raise ValueError(f"SumTree fanout must be >= 2, got {fanout}")
        self.capacity = int(capacity)
        self.fanout = int(fanout)
        # levels[0] are the leaves; levels[-1] has a single node, the root. Every level
        # below the root is padded to a multiple of the fan-out with zeros.
        self.levels: list[np.ndarray] = []
        size = self.capacity
        while True:
            padded = -(-size // self.fanout) * self.fanout
            self.levels.append(np.zeros(padded, dtype=np.float64))
            size = padded // self.fanout
            if size == 1:
                break
        self.levels.append(np.zeros(1, dtype=np.float64))
        self._blocks = [level.reshape(-1, self.fanout) for level in self.levels[:-1]]

    @property
    def nbytes(self) -> int:
        """Bytes held by the tree's levels."""
        return sum(int(level.nbytes) for level in self.levels)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self.levels[-1][0])

    @property
    def leaves(self) -> np.ndarray:
        """View of the leaf values (length ``capacity``)."""
        return self.levels[0][: self.capacity]

    def get(self, index: np.ndarray) -> np.ndarray:
        """Leaf values at ``index``."""
        return self.levels[0][index]

    def update(self, index: np.ndarray, value: np.ndarray | float) -> None:
        """Set leaves ``index`` to ``value`` and refresh their ancestors.

        Parents are recomputed from their children (not incremented), so the tree
        never drifts numerically. With duplicate indices one of the values wins.
        """
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size == 0:
            return
        value = np.asarray(value, dtype=np.float64)
        if value.ndim and value.shape != index.shape:
            raise ValueError(f"SumTree.update: {index.size} indices but values of shape {value.shape}")
        if value.size and (value.min() < 0 or not np.isfinite(value).all()):
            raise ValueError("SumTree values must be finite and non-negative")
        if index.min() < 0 or index.max() >= self.capacity:
            raise IndexError(f"SumTree index out of range [0, {self.capacity})")
        self.levels[0][index] = value
        node = index
        for blocks, parent_level in zip(self._blocks, self.levels[1:]):
            node = node // self.fanout
            parent_level[node] = blocks[node].sum(axis=1)

    def set_all(self, leaves: np.ndarray) -> None:
        """Replace every leaf and rebuild the whole tree."""
        leaves = np.array(leaves, dtype=np.float64)  # a copy: ``leaves`` may be a view of this tree's own leaves
        if leaves.shape != (self.capacity,):
            raise ValueError(f"expected {self.capacity} leaves, got shape {leaves.shape}")
        if leaves.size and (leaves.min() < 0 or not np.isfinite(leaves).all()):
            raise ValueError("SumTree values must be finite and non-negative")
        self.levels[0][:] = 0.0
        self.levels[0][: self.capacity] = leaves
        for blocks, parent_level in zip(self._blocks, self.levels[1:]):
            parent_level[: blocks.shape[0]] = blocks.sum(axis=1)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index whose cumulative-sum interval contains each ``mass`` (in ``[0, total)``).

        Two steps, each one batch of numpy calls: a ``searchsorted`` over the
        running sum of the block (parent) sums picks each query's block, then a
        row-wise cumulative sum inside the ``fanout`` leaves of that block picks
        the leaf. Rounding can only ever land on a zero leaf at the very end of
        the range; callers treat zero-priority leaves as invalid draws.
        """
        mass = np.array(mass, dtype=np.float64, copy=True).reshape(-1)
        block_sums = self.levels[1][: self._blocks[0].shape[0]]
        running = np.cumsum(block_sums)
        block = np.minimum(np.searchsorted(running, mass, side="right"), block_sums.size - 1)
        mass -= running[block] - block_sums[block]
        children = self._blocks[0][block]  # (B, fanout)
        cumulative = np.cumsum(children, axis=1)
        child = np.minimum((cumulative <= mass[:, None]).sum(axis=1), self.fanout - 1)
        return np.minimum(block * self.fanout + child, self.capacity - 1)
