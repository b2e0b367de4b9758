"""Speed of batched random self-play: our vectorised games vs OpenSpiel's states.

``python -m envs.games.speed [--batch 256] [--seconds 2] [--json]``

Counts positions (moves played) per second when ``B`` games are stepped together with
uniformly random legal moves and finished games are refilled in place -- the game-logic
part of AlphaZero self-play. The peer is the same loop over ``pyspiel`` states (what the
OpenSpiel adapter does). Also times a ``clone`` + ``restore`` pair of the whole batch,
which the search pays per simulation when it expands with the real simulator.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from . import make_game
from .base import BatchedGame
from .players import sample_legal


def selfplay_rate(game: BatchedGame, seconds: float, seed: int = 0,
                  observe: bool = False) -> float:
    """Positions per second of random self-play on ``game``'s batch (refilled in place);
    with ``observe`` the network input ``observation()`` is also built every ply."""
    rng = np.random.default_rng(seed)
    game.reset()
    positions, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            done = game.terminal()
            if done.any():
                game.reset_games(np.flatnonzero(done))
            if observe:
                game.observation()
            game.step(sample_legal(game.legal_mask(), rng))
            positions += game.batch_size
    return positions / elapsed


def clone_restore_seconds(game: BatchedGame, repeats: int = 200) -> float:
    """Seconds for one ``clone()`` plus one ``restore()`` of the whole batch."""
    start = time.perf_counter()
    for _ in range(repeats):
        game.restore(game.clone())
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures, ratios = {}, {}
    print(f"random self-play, B={args.batch}")
    print(f"{'game':<14}{'ours pos/s':>14}{'+observation':>14}{'openspiel pos/s':>18}"
          f"{'ratio':>8}{'clone+restore':>16}")
    for name in ("tic_tac_toe", "connect_four"):
        ours = make_game(name, args.batch)
        rate = selfplay_rate(ours, args.seconds)
        rate_obs = selfplay_rate(ours, args.seconds, observe=True)
        copy_s = clone_restore_seconds(ours)
        try:
            peer = selfplay_rate(make_game(f"openspiel:{name}", args.batch), args.seconds)
        except ImportError:
            peer = float("nan")
        figures[name] = {"ours_positions_per_s": rate,
                         "ours_with_observation_positions_per_s": rate_obs,
                         "openspiel_positions_per_s": peer,
                         "clone_restore_us": copy_s * 1e6}
        ratios[f"{name}:ours/openspiel"] = rate / peer
        print(f"{name:<14}{rate:>14,.0f}{rate_obs:>14,.0f}{peer:>18,.0f}{rate / peer:>8.1f}"
              f"{copy_s * 1e6:>13.1f} us")
    if args.json:
        print(json.dumps({"benchmark": "games_selfplay", "figures": figures,
                          "ratios": ratios}))


if __name__ == "__main__":
    main()
