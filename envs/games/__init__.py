"""Turn-based two-player board games behind one batched simulator protocol.

* :class:`BatchedGame` (``base.py``): the protocol every game implements.
* :class:`TicTacToe`, :class:`ConnectFour`: the suite's own vectorised bitboard games.
* :class:`OpenSpielGame`: any two-player, deterministic, perfect-information OpenSpiel
  game through the same protocol (needs ``pip install open-spiel``).
* Players (``players.py``): random, perfect tic-tac-toe, OpenSpiel MCTS, human.
* :func:`play_match`: batched matches with confidence intervals.
* :class:`BoardGameEnv`: Gymnasium wrapper, registered as ``Arbor/TicTacToe-v0``,
  ``Arbor/ConnectFour-v0`` and ``Arbor/OpenSpiel-v0`` when this package is imported.

See docs/games.md.
"""

from __future__ import annotations

from typing import Any

from .base import (NO_ACTION, BatchedGame, FinishedGameError, GameError, GameState,
                   IllegalActionError)
from .connect_four import ConnectFour
from .match import MatchResult, play_match, wilson_interval
from .players import (HumanPlayer, HumanQuit, MCTSBotPlayer, PerfectTicTacToePlayer,
                      Player, RandomPlayer, make_player, sample_legal)
from .tictactoe import TicTacToe

GAME_NAMES = ("tic_tac_toe", "connect_four", "openspiel:<game>")
_ALIASES = {"tic_tac_toe": TicTacToe, "tictactoe": TicTacToe, "ttt": TicTacToe,
            "connect_four": ConnectFour, "connectfour": ConnectFour,
            "connect4": ConnectFour, "c4": ConnectFour}


def make_game(name: str, batch_size: int = 1, **kwargs: Any) -> BatchedGame:
    """Build a game by name: ``tic_tac_toe``, ``connect_four``, ``openspiel:<game>``
    or ``openspiel`` with ``game=<game>`` (extra keyword arguments are OpenSpiel game
    parameters)."""
    key = name.strip().lower()
    if key in _ALIASES:
        if kwargs:
            raise ValueError(f"{name} takes no parameters, got {sorted(kwargs)}")
        return _ALIASES[key](batch_size=batch_size)
    if key == "openspiel" or key.startswith("openspiel:"):
        from .openspiel_adapter import OpenSpielGame

        game = key.partition(":")[2] or kwargs.pop("game", None)
        if not game:
            raise ValueError("name the OpenSpiel game: 'openspiel:othello' or "
                             "make_game('openspiel', game='othello')")
        return OpenSpielGame(game, batch_size=batch_size, **kwargs)
    raise ValueError(f"unknown game {name!r}; choose one of {', '.join(GAME_NAMES)}")


def _register() -> None:
    """Register the Gymnasium ids once (importing this package twice is harmless)."""
    import gymnasium

    entry = "envs.games.gym_env:BoardGameEnv"
    for env_id, game in (("Arbor/TicTacToe-v0", "tic_tac_toe"),
                         ("Arbor/ConnectFour-v0", "connect_four"),
                         ("Arbor/OpenSpiel-v0", "openspiel:tic_tac_toe")):
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=entry, kwargs={"game": game})


_register()

from .gym_env import BoardGameEnv  # noqa: E402  (after registration, which it does not need)

__all__ = ["NO_ACTION", "BatchedGame", "BoardGameEnv", "ConnectFour", "FinishedGameError",
           "GameError", "GameState", "HumanPlayer", "HumanQuit", "IllegalActionError",
           "MCTSBotPlayer", "MatchResult", "PerfectTicTacToePlayer", "Player",
           "RandomPlayer", "TicTacToe", "make_game", "make_player", "play_match",
           "sample_legal", "wilson_interval", "GAME_NAMES"]
