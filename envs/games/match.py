"""Play two players against each other on many games at once and report the score.

All ``num_games`` games are stepped together; at every ply each player is handed the
sub-batch of games where it is to move (``game.take``), so batched players (random,
minimax, a network with batched search) act once per ply for all their games.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .base import NO_ACTION, BatchedGame, GameError, IllegalActionError
from .players import Player

Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (good at 0 and 1 and small n)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class MatchResult:
    """Wins/draws/losses from player A's view, with 95% confidence intervals.

    ``*_ci`` are Wilson intervals of each rate; ``score`` counts a win 1 and a draw 0.5
    per game, with a percentile-bootstrap interval ``score_ci`` (10,000 resamples).
    ``by_colour`` splits the counts by whether A moved first or second.
    """

    wins: int
    draws: int
    losses: int
    num_games: int
    win_ci: tuple[float, float]
    draw_ci: tuple[float, float]
    loss_ci: tuple[float, float]
    score: float
    score_ci: tuple[float, float]
    by_colour: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def win_rate(self) -> float:
        return self.wins / max(1, self.num_games)

    @property
    def draw_rate(self) -> float:
        return self.draws / max(1, self.num_games)

    @property
    def loss_rate(self) -> float:
        return self.losses / max(1, self.num_games)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for ``eval.json``)."""
        d = asdict(self)
        d.update(win_rate=self.win_rate, draw_rate=self.draw_rate, loss_rate=self.loss_rate)
        return d

    def summary(self) -> str:
        """One line: counts, rates with intervals, score."""
        def pct(rate: float, ci: tuple[float, float]) -> str:
            return f"{100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
        return (f"{self.num_games} games: W {self.wins} / D {self.draws} / L {self.losses}"
                f" | win {pct(self.win_rate, self.win_ci)}"
                f" draw {pct(self.draw_rate, self.draw_ci)}"
                f" loss {pct(self.loss_rate, self.loss_ci)}"
                f" | score {pct(self.score, self.score_ci)}")


def _new_game(game: str | BatchedGame | Callable[[], BatchedGame]) -> BatchedGame:
    if isinstance(game, str):
        from . import make_game
        return make_game(game)
    if isinstance(game, BatchedGame):
        return game.spawn()
    return game()


def _ask(player: Player, label: str, game: BatchedGame, rows: np.ndarray,
         legal: np.ndarray) -> np.ndarray:
    actions = np.asarray(player.act(game.take(rows)))
    if actions.shape != (rows.size,) or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(f"player {label} ({type(player).__name__}) returned actions of "
                         f"shape {actions.shape} and dtype {actions.dtype}; expected "
                         f"integers of shape ({rows.size},)")
    ok = (actions >= 0) & (actions < game.num_actions)
    ok[ok] = legal[rows[ok], actions[ok]]
    if not ok.all():
        j = int(np.flatnonzero(~ok)[0])
        raise IllegalActionError(f"player {label} ({type(player).__name__}) chose illegal "
                                 f"action {int(actions[j])} in game {int(rows[j])}:\n"
                                 f"{game.render(int(rows[j]))}")
    return actions


def play_match(player_a: Player, player_b: Player,
               game: str | BatchedGame | Callable[[], BatchedGame],
               num_games: int, alternate_colours: bool = True, seed: int | None = 0,
               a_moves_first: bool = True) -> MatchResult:
    """Play ``num_games`` games of ``game`` between A and B; results from A's view.

    ``game`` is a name for :func:`envs.games.make_game`, a game object (only its kind
    is used) or a factory. With ``alternate_colours`` A moves first in even-numbered
    games and second in odd ones (``num_games`` even gives equal shares); otherwise
    ``a_moves_first`` decides. Players with a ``seed`` method are reseeded from
    ``seed`` so that a match is reproducible.
    """
    if num_games < 1:
        raise ValueError(f"num_games must be >= 1, got {num_games}")
    seeds = np.random.SeedSequence(seed).generate_state(3)
    for player, s in ((player_a, seeds[0]), (player_b, seeds[1])):
        if hasattr(player, "seed") and callable(player.seed):
            player.seed(int(s))
    g = _new_game(game)
    g.reset(num_games)
    if alternate_colours:
        a_colour = (np.arange(num_games) % 2).astype(np.int8)
    else:
        a_colour = np.full(num_games, 0 if a_moves_first else 1, np.int8)

    for _ in range(g.max_game_length + 1):   # every ply moves every unfinished game
        done = g.terminal()
        if done.all():
            break
        to_play = g.to_play()
        legal = g.legal_mask()
        actions = np.full(num_games, NO_ACTION, np.int64)
        for player, label, mine in ((player_a, "A", to_play == a_colour),
                                    (player_b, "B", to_play != a_colour)):
            rows = np.flatnonzero(~done & mine)
            if rows.size:
                actions[rows] = _ask(player, label, g, rows, legal)
        g.step(actions)
    else:
        raise GameError(f"{g.name}: games still running after max_game_length="
                        f"{g.max_game_length} plies; the game's terminal() is wrong")

    result_a = g.outcome() * np.where(a_colour == 0, 1.0, -1.0)
    wins, draws, losses = (int((result_a > 0).sum()), int((result_a == 0).sum()),
                           int((result_a < 0).sum()))
    by_colour = {}
    for colour, key in ((0, "a_first"), (1, "a_second")):
        r = result_a[a_colour == colour]
        by_colour[key] = {"wins": int((r > 0).sum()), "draws": int((r == 0).sum()),
                          "losses": int((r < 0).sum())}
    n = num_games
    boot = np.random.default_rng(seeds[2]).multinomial(
        n, [wins / n, draws / n, losses / n], size=10_000)
    scores = (boot[:, 0] + 0.5 * boot[:, 1]) / n
    score_ci = (float(np.quantile(scores, 0.025)), float(np.quantile(scores, 0.975)))
    return MatchResult(wins, draws, losses, n, wilson_interval(wins, n),
                       wilson_interval(draws, n), wilson_interval(losses, n),
                       (wins + 0.5 * draws) / n, score_ci, by_colour)
