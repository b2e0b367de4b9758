"""Opponents that need no trained agent, and the player protocol they share.

A *player* is any object with ``act(game) -> actions``:

* ``game`` is a :class:`~envs.games.base.BatchedGame` holding exactly the games in which
  this player is to move (``play_match`` and the Gymnasium wrapper gather them with
  ``game.take``); the player must not step it -- search on ``game.clone()`` /
  ``game.take(...)`` or ``game.spawn()`` instead.
* it returns an integer array ``[game.batch_size]`` of legal actions (``-1`` for any
  finished game it was given).
* optionally ``seed(seed: int | None)``: ``play_match`` and the Gymnasium wrapper call it
  (when present) so that matches and episodes are reproducible.

The AlphaZero agent implements the same protocol to be evaluated against these players.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from .base import NO_ACTION, BatchedGame, GameError
from .tictactoe import LINES


@runtime_checkable
class Player(Protocol):
    """Anything that picks one action per game of a batch (see the module docstring)."""

    def act(self, game: BatchedGame) -> np.ndarray:
        """int64 ``[game.batch_size]``: a legal action per game (``-1`` if finished)."""
        ...


def sample_legal(mask: np.ndarray, rng: np.random.Generator,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """One uniformly random legal action per row of ``mask`` (``-1`` for empty rows).

    Vectorised: the argmax of uniform keys restricted to legal entries is uniform over
    them. With ``weights`` (non-negative ``[B, A]``) it samples proportionally instead.
    """
    mask = np.asarray(mask, bool)
    if weights is None:
        keys = rng.random(mask.shape)
    else:  # exponential race: argmax of u ** (1 / w) is distributed like w / sum(w)
        with np.errstate(divide="ignore"):
            keys = np.log(rng.random(mask.shape)) / np.asarray(weights, np.float64)
    keys = np.where(mask, keys, -np.inf)
    actions = keys.argmax(axis=1)
    return np.where(mask.any(axis=1), actions, NO_ACTION).astype(np.int64)


class RandomPlayer:
    """Plays a uniformly random legal move in every game (vectorised)."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, game: BatchedGame) -> np.ndarray:
        return sample_legal(game.legal_mask(), self.rng)


# --------------------------------------------------------------------------- minimax
def _has_line(bits: int) -> bool:
    return any((bits & int(line)) == int(line) for line in LINES)


@functools.lru_cache(maxsize=1)
def _solve_tic_tac_toe() -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive memoised minimax over every reachable tic-tac-toe position.

    Returns ``(value, best)`` indexed by ``x_bits * 512 + o_bits``: ``value`` int8 is the
    game-theoretic value for the player to move (+1/0/-1), ``best`` uint16 is the bit mask
    of the moves that achieve it (0 at terminal positions). 5478 positions; ~0.1 s.
    """
    value = np.zeros(512 * 512, np.int8)
    best = np.zeros(512 * 512, np.uint16)
    memo: dict[tuple[int, int], int] = {}

    def solve(x: int, o: int) -> int:
        key = (x, o)
        if key in memo:
            return memo[key]
        x_to_move = bin(x).count("1") == bin(o).count("1")
        mover, other = (x, o) if x_to_move else (o, x)
        if _has_line(other):
            v, moves = -1, 0   # the previous move won
        elif (x | o) == 0x1FF:
            v, moves = 0, 0    # board full: draw
        else:
            v, moves = -2, 0
            for cell in range(9):
                bit = 1 << cell
                if (x | o) & bit:
                    continue
                child = solve(x | bit, o) if x_to_move else solve(x, o | bit)
                if -child > v:
                    v, moves = -child, bit
                elif -child == v:
                    moves |= bit
        memo[key] = v
        value[x * 512 + o] = v
        best[x * 512 + o] = moves
        return v

    solve(0, 0)
    value.setflags(write=False)
    best.setflags(write=False)
    return value, best


def _tic_tac_toe_keys(game: BatchedGame) -> np.ndarray:
    """Table index ``x_bits * 512 + o_bits`` of every game, rebuilt from its history."""
    if game.num_actions != 9 or game.name != "tic_tac_toe":
        raise GameError(f"the perfect player only knows tic-tac-toe, not {game.name!r}")
    hist = game.history().astype(np.int64)
    played = np.arange(hist.shape[1]) < game.num_moves()[:, None]
    bits = np.where(played, np.left_shift(1, np.maximum(hist, 0)), 0)
    x = bits[:, 0::2].sum(axis=1)   # X moves on even plies; cells never repeat
    o = bits[:, 1::2].sum(axis=1)
    return x * 512 + o


class PerfectTicTacToePlayer:
    """Perfect tic-tac-toe by exhaustive memoised minimax (works on :class:`TicTacToe`
    and on the OpenSpiel adapter's ``tic_tac_toe``). Among equally good moves it picks
    at random (``tie_break="random"``) or the lowest-numbered (``"first"``)."""

    def __init__(self, seed: int | None = None, tie_break: str = "random") -> None:
        if tie_break not in ("random", "first"):
            raise ValueError(f"tie_break must be 'random' or 'first', got {tie_break!r}")
        self.tie_break = tie_break
        self.rng = np.random.default_rng(seed)
        self._value, self._best = _solve_tic_tac_toe()

    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def optimal_mask(self, game: BatchedGame) -> np.ndarray:
        """bool ``[B, 9]``: the optimal moves of every game (all ``False`` if finished)."""
        best = self._best[_tic_tac_toe_keys(game)].astype(np.int64)
        return ((best[:, None] >> np.arange(9)) & 1).astype(bool) & ~game.terminal()[:, None]

    def optimal_moves(self, game: BatchedGame, index: int = 0) -> set[int]:
        """The set of optimal moves in game ``index``."""
        return set(np.flatnonzero(self.optimal_mask(game)[index]).tolist())

    def value(self, game: BatchedGame) -> np.ndarray:
        """int8 ``[B]``: game-theoretic value for the player to move (+1 win, 0 draw,
        -1 loss); for finished games the result seen by ``to_play()``."""
        return self._value[_tic_tac_toe_keys(game)].copy()

    def act(self, game: BatchedGame) -> np.ndarray:
        mask = self.optimal_mask(game)
        if self.tie_break == "first":
            return np.where(mask.any(1), mask.argmax(1), NO_ACTION).astype(np.int64)
        return sample_legal(mask, self.rng)


# --------------------------------------------------------------------------- MCTS bot
class MCTSBotPlayer:
    """OpenSpiel's ``MCTSBot`` (UCT with random-rollout evaluation) as a player.

    Works on any game with an OpenSpiel counterpart (``game.to_openspiel_state``):
    the native games are replayed into ``pyspiel`` states from their move history.
    Loops over the batch in Python; cost is about ``simulations`` rollouts per move.
    """

    def __init__(self, simulations: int = 1000, uct_c: float = 2.0, rollouts: int = 1,
                 solve: bool = True, seed: int | None = None) -> None:
        if simulations < 1:
            raise ValueError(f"simulations must be >= 1, got {simulations}")
        self.simulations = int(simulations)
        self.uct_c = float(uct_c)
        self.rollouts = int(rollouts)
        self.solve = bool(solve)
        self.seed(seed)
        self._bots: dict[str, Any] = {}

    def seed(self, seed: int | None) -> None:
        self._random_state = np.random.RandomState(
            None if seed is None else seed % 2**32)
        self._bots = {}

    def _bot(self, pyspiel_game):
        key = str(pyspiel_game)
        if key not in self._bots:
            from open_spiel.python.algorithms import mcts

            evaluator = mcts.RandomRolloutEvaluator(n_rollouts=self.rollouts,
                                                    random_state=self._random_state)
            self._bots[key] = mcts.MCTSBot(pyspiel_game, self.uct_c, self.simulations,
                                           evaluator, solve=self.solve,
                                           random_state=self._random_state)
        return self._bots[key]

    def act(self, game: BatchedGame) -> np.ndarray:
        actions = np.full(game.batch_size, NO_ACTION, np.int64)
        done = game.terminal()
        for i in np.flatnonzero(~done):
            state = game.to_openspiel_state(int(i))
            actions[i] = self._bot(state.get_game()).step(state)
        return actions


# --------------------------------------------------------------------------- human
class HumanQuit(Exception):
    """The human typed ``quit`` at the move prompt."""


class HumanPlayer:
    """A person at the terminal: the board is drawn as text and a move is read with
    ``input_fn`` (injectable, so tests drive it); malformed or illegal moves are
    reported with ``output_fn`` and asked again. Typing ``quit`` raises
    :class:`HumanQuit`."""

    def __init__(self, input_fn: Callable[[str], str] = input,
                 output_fn: Callable[[str], None] = print) -> None:
        self.input_fn = input_fn
        self.output_fn = output_fn

    def act(self, game: BatchedGame) -> np.ndarray:
        actions = np.full(game.batch_size, NO_ACTION, np.int64)
        mask = game.legal_mask()
        for i in np.flatnonzero(~game.terminal()):
            actions[i] = self._ask(game, int(i), mask[i])
        return actions

    def _ask(self, game: BatchedGame, index: int, legal: np.ndarray) -> int:
        names = [game.action_to_string(a) for a in np.flatnonzero(legal)]
        self.output_fn(game.render(index))
        self.output_fn("legal moves: " + " ".join(names))
        while True:
            text = self.input_fn("your move> ")
            if text.strip().lower() in ("q", "quit", "exit"):
                raise HumanQuit("the human player quit")
            try:
                action = game.parse_action(text)
            except ValueError:
                self.output_fn(f"could not read {text!r} as a move; "
                               f"type one of: {' '.join(names)}")
                continue
            if not 0 <= action < game.num_actions or not legal[action]:
                self.output_fn(f"{text.strip()!r} is not a legal move here; "
                               f"type one of: {' '.join(names)}")
                continue
            return action


# --------------------------------------------------------------------------- factory
PLAYER_NAMES = ("random", "perfect", "mcts[:simulations]", "human")


def make_player(spec: str | Player, seed: int | None = None) -> Player:
    """Build a player from a name: ``random``, ``perfect`` (tic-tac-toe minimax),
    ``mcts`` or ``mcts:<simulations>`` (default 1000), ``human``; players pass through."""
    if not isinstance(spec, str):
        if not isinstance(spec, Player):
            raise TypeError(f"{spec!r} is not a player (needs an act(game) method)")
        return spec
    name, _, arg = spec.strip().lower().partition(":")
    if name == "random":
        return RandomPlayer(seed)
    if name in ("perfect", "minimax"):
        return PerfectTicTacToePlayer(seed)
    if name == "mcts":
        try:
            sims = int(arg) if arg else 1000
        except ValueError:
            raise ValueError(f"bad simulation count in {spec!r}; use e.g. 'mcts:200'")
        return MCTSBotPlayer(simulations=sims, seed=seed)
    if name == "human":
        return HumanPlayer()
    raise ValueError(f"unknown opponent {spec!r}; choose one of {', '.join(PLAYER_NAMES)}")
