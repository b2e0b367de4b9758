"""Simulator protocol for batched two-player, alternating, perfect-information games.

A :class:`BatchedGame` holds the states of ``B`` independent games in numpy arrays and
advances all of them in one vectorised :meth:`BatchedGame.step` call. Search code clones
and restores states (:meth:`BatchedGame.clone` / :meth:`BatchedGame.restore`), optionally
for a subset of the games, since each tree in a batched search expands its own leaf.

Conventions (shared by every game of the suite and by the OpenSpiel adapter):

* Players are ``0`` (moves first) and ``1``.
* ``to_play()`` is the player to move; for a finished game it is the player who would
  have moved next, so "the mover's point of view" stays defined at terminal states.
* ``outcome()`` is the final result from **player 0's** point of view (+1 win, 0 draw,
  -1 loss; 0 while the game is running). ``outcome_for_to_play()`` gives it from the
  point of view of ``to_play()``: at a terminal state reached by a winning move this is
  -1, the value a search backs up with sign flips.
* ``observation()`` is float32 ``[B, C, H, W]`` from the point of view of ``to_play()``
  (``observation(players)`` from the view of ``players[i]`` instead).
* Action ``-1`` (:data:`NO_ACTION`) in ``step`` leaves that game untouched; it is the only
  action accepted for a finished game. Any other illegal action raises
  :class:`IllegalActionError`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import NoReturn, Sequence

import numpy as np

NO_ACTION: int = -1
"""Action value meaning "do not move this game in this ``step`` call"."""


class GameError(ValueError):
    """A game was asked to do something its rules or state do not allow."""


class IllegalActionError(GameError):
    """An action is not legal in the position it was played in."""


class FinishedGameError(GameError):
    """A move was played in a game that has already ended."""


@dataclass
class GameState:
    """Saved states of a batch of games: named arrays that share the leading batch axis.

    A value object: the game copies arrays in :meth:`BatchedGame.restore` and out in
    :meth:`BatchedGame.clone`, so a saved state is never changed by stepping the game.
    ``take`` gathers a subset, ``put`` scatters another state into a subset (in place),
    ``concatenate`` joins states; this is what a batched tree search needs to keep the
    states of many nodes of many trees. Preallocate a node pool of ``n`` slots with
    ``game.clone(np.zeros(n, int))``.
    """

    arrays: dict[str, np.ndarray]
    kind: str = ""

    @property
    def batch_size(self) -> int:
        """Number of games in this state."""
        return int(next(iter(self.arrays.values())).shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def take(self, indices: Sequence[int] | np.ndarray) -> "GameState":
        """Gather the games at ``indices`` (a new state; numeric arrays are copied)."""
        index = np.asarray(indices, dtype=np.int64)
        return GameState({k: v[index] for k, v in self.arrays.items()}, self.kind)

    def put(self, indices: Sequence[int] | np.ndarray, other: "GameState") -> None:
        """Overwrite the games at ``indices`` with the games of ``other`` (in place)."""
        _check_same_kind(self, other)
        index = np.asarray(indices, dtype=np.int64)
        if index.shape != (other.batch_size,):
            raise ValueError(
                f"put: {index.size} indices for a state of {other.batch_size} games")
        for k, v in self.arrays.items():
            v[index] = other.arrays[k]

    @staticmethod
    def concatenate(states: Sequence["GameState"]) -> "GameState":
        """Join several states along the batch axis."""
        if not states:
            raise ValueError("concatenate needs at least one state")
        for s in states[1:]:
            _check_same_kind(states[0], s)
        keys = states[0].arrays.keys()
        return GameState({k: np.concatenate([s.arrays[k] for s in states]) for k in keys},
                         states[0].kind)


def _check_same_kind(a: GameState, b: GameState) -> None:
    if a.kind != b.kind or a.arrays.keys() != b.arrays.keys():
        raise ValueError(f"game states of different games: {a.kind!r} vs {b.kind!r}")


class BatchedGame(abc.ABC):
    """A batch of ``B`` two-player alternating games behind one vectorised interface.

    Subclasses implement the abstract methods; the concrete helpers here (validation,
    subset gather, outcome for the mover, text rendering of a batch) are shared.
    """

    #: short name, e.g. ``"tic_tac_toe"``; also the OpenSpiel game name when one exists.
    name: str = ""
    #: number of distinct actions ``A``.
    num_actions: int = 0
    #: observation shape ``(C, H, W)`` of one game.
    observation_shape: tuple[int, int, int] = (0, 0, 0)
    #: (low, high) of observation values, for Gymnasium's ``Box``.
    observation_bounds: tuple[float, float] = (0.0, 1.0)
    #: longest possible game in moves (the width of :meth:`history`).
    max_game_length: int = 0
    #: OpenSpiel ``load_game`` string with the same rules and action numbering, if any.
    openspiel_name: str | None = None
    num_players: int = 2

    # ----------------------------------------------------------------- core protocol
    @abc.abstractmethod
    def reset(self, batch_size: int | None = None) -> None:
        """Start ``batch_size`` fresh games (default: keep the current batch size)."""

    @abc.abstractmethod
    def reset_games(self, indices: Sequence[int] | np.ndarray) -> None:
        """Put the games at ``indices`` back to the initial position (self-play refill)."""

    @abc.abstractmethod
    def step(self, actions: Sequence[int] | np.ndarray) -> None:
        """Play ``actions[i]`` in game ``i`` for every ``i`` (``-1``: leave game ``i``)."""

    @abc.abstractmethod
    def legal_mask(self) -> np.ndarray:
        """bool ``[B, A]``: legal actions; all ``False`` for finished games."""

    @abc.abstractmethod
    def to_play(self) -> np.ndarray:
        """int8 ``[B]``: player to move (for finished games: who would move next)."""

    @abc.abstractmethod
    def terminal(self) -> np.ndarray:
        """bool ``[B]``: whether each game has ended."""

    @abc.abstractmethod
    def outcome(self) -> np.ndarray:
        """float32 ``[B]``: result from player 0's view (+1/0/-1; 0 while running)."""

    @abc.abstractmethod
    def observation(self, players: np.ndarray | None = None) -> np.ndarray:
        """float32 ``[B, C, H, W]``: the position seen by ``to_play()`` (or, if given,
        by ``players[i]`` in game ``i`` -- e.g. the agent's view after its final move)."""

    @abc.abstractmethod
    def num_moves(self) -> np.ndarray:
        """int ``[B]``: moves played so far in each game."""

    @abc.abstractmethod
    def history(self) -> np.ndarray:
        """int16 ``[B, max_game_length]``: actions played so far, padded with ``-1``."""

    @abc.abstractmethod
    def clone(self, indices: Sequence[int] | np.ndarray | None = None) -> GameState:
        """Copy out the state of all games, or of the games at ``indices`` (a gather)."""

    @abc.abstractmethod
    def restore(self, state: GameState,
                indices: Sequence[int] | np.ndarray | None = None) -> None:
        """Load ``state``: the whole batch (batch size becomes ``len(state)``), or only
        the games at ``indices`` (a scatter; ``len(indices) == len(state)``)."""

    @abc.abstractmethod
    def spawn(self) -> "BatchedGame":
        """A new, independent game object of the same kind and configuration."""

    @abc.abstractmethod
    def render(self, index: int = 0) -> str:
        """Text picture of game ``index`` (for logs and the human opponent)."""

    # ----------------------------------------------------------------- symmetries
    def action_permutations(self) -> np.ndarray:
        """int ``[S, A]``: ``perm[s, a]`` is the image of action ``a`` under symmetry ``s``.

        Symmetry 0 is the identity. The default is the identity only.
        """
        return np.arange(self.num_actions, dtype=np.int64)[None]

    def transform_observation(self, obs: np.ndarray, symmetry: int) -> np.ndarray:
        """Apply symmetry ``symmetry`` to observations ``[..., C, H, W]``."""
        if symmetry != 0:
            raise IndexError(f"{self.name} has only the identity symmetry")
        return obs

    def symmetries(self, obs: np.ndarray,
                   policy: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """All symmetric images of ``(obs [N,C,H,W], policy [N,A])``, identity first.

        Unbatched ``(obs [C,H,W], policy [A])`` also works. Policies move with the board:
        the probability of action ``a`` goes to ``action_permutations()[s, a]``.
        """
        obs = np.asarray(obs)
        policy = np.asarray(policy)
        if obs.shape[-3:] != tuple(self.observation_shape):
            raise ValueError(f"observation shape {obs.shape} does not end with "
                             f"{self.observation_shape}")
        if policy.shape[-1] != self.num_actions:
            raise ValueError(f"policy has {policy.shape[-1]} actions, expected "
                             f"{self.num_actions}")
        out = []
        for s, perm in enumerate(self.action_permutations()):
            new_policy = np.empty_like(policy)
            new_policy[..., perm] = policy
            out.append((self.transform_observation(obs, s), new_policy))
        return out

    # ----------------------------------------------------------------- shared helpers
    @property
    def batch_size(self) -> int:
        """Number of games ``B`` held."""
        return int(self.terminal().shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def outcome_for_to_play(self) -> np.ndarray:
        """float32 ``[B]``: ``outcome()`` from the view of ``to_play()``."""
        sign = 1.0 - 2.0 * self.to_play().astype(np.float32)
        return (self.outcome() * sign).astype(np.float32)

    def take(self, indices: Sequence[int] | np.ndarray) -> "BatchedGame":
        """A new game object holding copies of the games at ``indices`` (in that order)."""
        sub = self.spawn()
        sub.restore(self.clone(indices))
        return sub

    def action_to_string(self, action: int) -> str:
        """Human-readable name of ``action`` (used by the terminal opponent)."""
        return str(int(action))

    def parse_action(self, text: str) -> int:
        """Inverse of :meth:`action_to_string`; raises ``ValueError`` on bad text."""
        return int(text.strip())

    def to_openspiel_state(self, index: int):
        """The ``pyspiel.State`` of game ``index``, rebuilt by replaying its history.

        Lets OpenSpiel bots (e.g. MCTS) play our native games. Needs ``open_spiel``.
        """
        if self.openspiel_name is None:
            raise GameError(f"{self.name} has no OpenSpiel counterpart")
        import pyspiel  # optional dependency, imported only here

        state = pyspiel.load_game(self.openspiel_name).new_initial_state()
        n = int(self.num_moves()[index])
        for action in self.history()[index, :n]:
            state.apply_action(int(action))
        return state

    def _check_actions(self, actions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Validate shape/dtype/range of ``actions`` and reject moves in finished games."""
        a = np.asarray(actions)
        if a.ndim == 0 and self.batch_size == 1:
            a = a.reshape(1)
        if a.shape != (self.batch_size,):
            raise ValueError(f"{self.name}.step expects actions of shape "
                             f"({self.batch_size},), got {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{self.name}.step expects integer actions, got {a.dtype}")
        a = a.astype(np.int64, copy=False)
        bad = (a < NO_ACTION) | (a >= self.num_actions)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IllegalActionError(
                f"{self.name}: action {int(a[i])} in game {i} is outside "
                f"[0, {self.num_actions}) (use {NO_ACTION} to skip a game)")
        finished = (a != NO_ACTION) & self.terminal()
        if finished.any():
            games = np.flatnonzero(finished)
            raise FinishedGameError(
                f"{self.name}: games {games[:8].tolist()} have ended; pass {NO_ACTION} "
                "for finished games or reset them with reset_games()")
        return a

    @staticmethod
    def _raise_illegal(name: str, games: np.ndarray, actions: np.ndarray) -> NoReturn:
        pairs = ", ".join(f"game {int(g)}: action {int(a)}"
                          for g, a in zip(games[:8], actions[:8]))
        raise IllegalActionError(f"{name}: illegal action ({pairs})")
