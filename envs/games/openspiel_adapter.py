"""Any two-player, sequential, deterministic, perfect-information OpenSpiel game behind
the :class:`~envs.games.base.BatchedGame` protocol.

The batch is a numpy object array of ``pyspiel.State``; ``step`` loops over the games
in Python (OpenSpiel has no batched API), so this adapter is for breadth, not speed --
use the native :class:`TicTacToe` / :class:`ConnectFour` for self-play at scale.
Requires ``pip install open-spiel``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._bitboard import _viewer
from .base import NO_ACTION, BatchedGame, GameError, GameState
from .tictactoe import dihedral, dihedral_action_permutations


def _import_pyspiel():
    try:
        import pyspiel
    except ImportError as e:
        raise ImportError("the OpenSpiel adapter needs `pip install open-spiel`") from e
    return pyspiel


def _load(game: Any, params: dict[str, Any]):
    pyspiel = _import_pyspiel()
    if isinstance(game, str):
        return pyspiel.load_game(game, params) if params else pyspiel.load_game(game)
    if params:
        raise ValueError("pass game parameters only together with a game name")
    return game


class OpenSpielGame(BatchedGame):
    """A batch of OpenSpiel games.

    Observation: OpenSpiel's ``observation_tensor(to_play)`` reshaped to ``(C, H, W)``
    (1-D tensors become ``(C, 1, 1)``) plus one extra plane, all ones when the mover is
    player 0, so the mover is known even for games whose tensor is absolute (e.g.
    tic-tac-toe). ``outcome()`` is ``returns()[0]`` (OpenSpiel's own utility).
    Symmetries are known for ``tic_tac_toe`` (8), ``connect_four`` (mirror) and
    ``othello`` (8, pass fixed) with default parameters; others get the identity only.
    """

    def __init__(self, game: Any = "tic_tac_toe", batch_size: int = 1,
                 **params: Any) -> None:
        pyspiel = _import_pyspiel()
        self._game = _load(game, params)
        gtype = self._game.get_type()
        short = gtype.short_name
        problems = []
        if self._game.num_players() != 2:
            problems.append(f"{self._game.num_players()} players (need 2)")
        if gtype.dynamics != pyspiel.GameType.Dynamics.SEQUENTIAL:
            problems.append("simultaneous moves")
        if gtype.chance_mode != pyspiel.GameType.ChanceMode.DETERMINISTIC:
            problems.append("chance nodes")
        if gtype.information != pyspiel.GameType.Information.PERFECT_INFORMATION:
            problems.append("imperfect information")
        if not gtype.provides_observation_tensor:
            problems.append("no observation tensor")
        if problems:
            raise GameError(f"OpenSpiel game {short!r} cannot be adapted: "
                            + ", ".join(problems))
        self.name = short
        self.openspiel_name = str(self._game)
        self.num_actions = int(self._game.num_distinct_actions())
        self.max_game_length = int(self._game.max_game_length())
        shape = tuple(self._game.observation_tensor_shape())
        if len(shape) == 1:
            shape = (shape[0], 1, 1)
        elif len(shape) == 2:
            shape = (1, *shape)
        elif len(shape) != 3:
            raise GameError(f"observation tensor of {short!r} has shape {shape}")
        self._tensor_shape = shape
        self.observation_shape = (shape[0] + 1, shape[1], shape[2])
        self._perms, self._transform = self._known_symmetries(params)
        # OpenSpiel promises no value range in general; the known board games are 0/1
        self.observation_bounds = (0.0, 1.0) if self._perms is not None else (-np.inf,
                                                                              np.inf)
        self.reset(batch_size)

    def _known_symmetries(self, params: dict[str, Any]):
        h, w = self._tensor_shape[1:]
        if params:
            return None, None
        if self.name == "tic_tac_toe":
            return dihedral_action_permutations(3, 3), dihedral
        if self.name == "othello":
            return dihedral_action_permutations(h, w, extra=1), dihedral
        if self.name == "connect_four":
            perms = np.stack([np.arange(w), np.arange(w)[::-1]]).astype(np.int64)
            return perms, lambda x, s: np.ascontiguousarray(np.flip(x, -1)) if s else x
        return None, None

    # ------------------------------------------------------------------ protocol
    def reset(self, batch_size: int | None = None) -> None:
        b = self.batch_size if batch_size is None else int(batch_size)
        self._states = np.empty(b, object)
        self._to_play = np.zeros(b, np.int8)
        self._done = np.zeros(b, bool)
        self._result = np.zeros(b, np.float32)
        self._moves = np.zeros(b, np.int32)
        self._hist = np.full((b, self.max_game_length), NO_ACTION, np.int16)
        self._legal = np.zeros((b, self.num_actions), bool)
        self.reset_games(np.arange(b))

    def reset_games(self, indices: Sequence[int] | np.ndarray) -> None:
        rows = np.asarray(indices, dtype=np.int64)
        for i in rows:
            self._states[i] = self._game.new_initial_state()
        self._moves[rows] = 0
        self._hist[rows] = NO_ACTION
        self._to_play[rows] = 0
        self._refresh(rows)

    def _refresh(self, rows: np.ndarray) -> None:
        """Re-read the cached per-game arrays from the pyspiel states at ``rows``."""
        for i in rows:
            s = self._states[i]
            self._legal[i] = False
            if s.is_terminal():
                self._done[i] = True
                self._result[i] = s.returns()[0]
            else:
                self._done[i] = False
                self._result[i] = 0.0
                self._to_play[i] = s.current_player()
                self._legal[i, s.legal_actions()] = True

    @property
    def batch_size(self) -> int:
        return int(self._done.shape[0]) if hasattr(self, "_done") else 0

    def step(self, actions: Sequence[int] | np.ndarray) -> None:
        a = self._check_actions(actions)
        rows = np.flatnonzero(a != NO_ACTION)
        legal = self._legal[rows, a[rows]]
        if not legal.all():
            self._raise_illegal(self.name, rows[~legal], a[rows][~legal])
        for i in rows:
            self._states[i].apply_action(int(a[i]))
            self._hist[i, self._moves[i]] = a[i]
            self._to_play[i] = 1 - self._to_play[i]  # kept if the game ends here
        self._moves[rows] += 1
        self._refresh(rows)

    def legal_mask(self) -> np.ndarray:
        return self._legal.copy()

    def to_play(self) -> np.ndarray:
        return self._to_play.copy()

    def terminal(self) -> np.ndarray:
        return self._done.copy()

    def outcome(self) -> np.ndarray:
        return self._result.copy()

    def num_moves(self) -> np.ndarray:
        return self._moves.copy()

    def history(self) -> np.ndarray:
        return self._hist.copy()

    def observation(self, players: np.ndarray | None = None) -> np.ndarray:
        b = self.batch_size
        viewer = self._to_play if players is None else _viewer(players, b)
        c = self._tensor_shape[0]
        obs = np.empty((b, *self.observation_shape), np.float32)
        for i in range(b):
            tensor = self._states[i].observation_tensor(int(viewer[i]))
            obs[i, :c] = np.asarray(tensor, np.float32).reshape(self._tensor_shape)
        obs[:, c] = (viewer == 0)[:, None, None]
        return obs

    def clone(self, indices: Sequence[int] | np.ndarray | None = None) -> GameState:
        rows = np.arange(self.batch_size) if indices is None else np.asarray(indices,
                                                                            np.int64)
        states = np.empty(rows.size, object)
        for j, i in enumerate(rows):
            states[j] = self._states[i].clone()
        arrays = {"states": states, "to_play": self._to_play[rows],
                  "done": self._done[rows], "result": self._result[rows],
                  "moves": self._moves[rows], "hist": self._hist[rows],
                  "legal": self._legal[rows]}
        return GameState(arrays, kind=f"openspiel:{self.openspiel_name}")

    def restore(self, state: GameState,
                indices: Sequence[int] | np.ndarray | None = None) -> None:
        kind = f"openspiel:{self.openspiel_name}"
        if state.kind != kind:
            raise ValueError(f"cannot restore a {state.kind!r} state into {kind!r}")
        s = state.arrays
        fresh = np.empty(state.batch_size, object)
        for j in range(state.batch_size):
            fresh[j] = s["states"][j].clone()  # the saved state must never be mutated
        if indices is None:
            self._states = fresh
            for k in ("to_play", "done", "result", "moves", "hist", "legal"):
                setattr(self, f"_{k}", s[k].copy())
            return
        rows = np.asarray(indices, dtype=np.int64)
        if rows.shape != (state.batch_size,):
            raise ValueError(f"restore: {rows.size} indices for {state.batch_size} games")
        self._states[rows] = fresh
        for k in ("to_play", "done", "result", "moves", "hist", "legal"):
            getattr(self, f"_{k}")[rows] = s[k]

    def spawn(self) -> "OpenSpielGame":
        return OpenSpielGame(self._game, batch_size=0)

    def render(self, index: int = 0) -> str:
        s = self._states[index]
        status = (f"result for player 0: {self._result[index]:+g}" if self._done[index]
                  else f"player {int(self._to_play[index])} to play")
        return f"{s}\n{status}"

    def action_to_string(self, action: int) -> str:
        """OpenSpiel's name of ``action`` as played by player 0 from the initial state."""
        return self._game.new_initial_state().action_to_string(0, int(action))

    def parse_action(self, text: str) -> int:
        """Accepts an action number or OpenSpiel's action name (e.g. ``d3``)."""
        text = text.strip()
        try:
            return int(text)
        except ValueError:
            pass
        for a in range(self.num_actions):
            if self.action_to_string(a).lower() == text.lower():
                return a
        raise ValueError(f"unknown action {text!r}")

    def to_openspiel_state(self, index: int):
        return self._states[index].clone()

    # ------------------------------------------------------------------ symmetries
    def action_permutations(self) -> np.ndarray:
        if self._perms is None:
            return super().action_permutations()
        return self._perms.copy()

    def transform_observation(self, obs: np.ndarray, symmetry: int) -> np.ndarray:
        if self._transform is None:
            return super().transform_observation(obs, symmetry)
        return self._transform(obs, symmetry)
