"""How far a learned tic-tac-toe model's values can be trusted inside the search tree.

For every reachable tic-tac-toe position that is not over (4,520), the model encodes
the position and is unrolled d = 0..9 moves along one of three kinds of paths:

* ``legal``: uniformly random legal moves while the game lasts, then uniformly random
  actions (what the search may try below a finished game);
* ``optimal``: moves of perfect play while the game lasts, then random actions;
* ``pad``: random legal moves, then action 0 (the replay's padding action past an
  episode's end).

At each depth it reports the mean absolute error of the predicted value against the
perfect-play value of the real position (value for the player to move) while the game
lasts, and the mean |v| once the game is over (the training target there is 0: the
absorbing state), plus the prior mass the model puts on illegal moves. The search
backs these values up, so large errors below the root show up as play that gets worse
with more simulations.

    python benchmarks/muzero_model_check.py --checkpoint runs/muzero-tictactoe/<timestamp>_s0
    python benchmarks/muzero_model_check.py --checkpoint <run> --paths legal,pad --json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.games.players import _solve_tic_tac_toe  # noqa: E402
from envs.games.tictactoe import LINES, TicTacToe  # noqa: E402
from runtime.match_eval import load_agent  # noqa: E402

PATHS = ("legal", "optimal", "pad")


def finished(x: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Whether the games with X's cells ``x`` and O's cells ``o`` (bit masks) are over."""
    lines = [(bits & int(line)) == int(line) for bits in (x, o) for line in LINES]
    return np.any(lines, axis=0) | ((x | o) == 0x1FF)


def positions() -> list[list[int]]:
    """One move history for every reachable position whose game is not over."""
    seen: dict[tuple[int, int], list[int]] = {}
    stack = [(0, 0, [])]
    while stack:
        x, o, history = stack.pop()
        if (x, o) in seen:
            continue
        seen[(x, o)] = history
        if finished(x, o):
            continue
        for cell in range(9):
            if not (x | o) >> cell & 1:
                bit = 1 << cell
                stack.append((x | bit, o, history + [cell]) if len(history) % 2 == 0 else (x, o | bit, history + [cell]))
    return [h for (x, o), h in seen.items() if not finished(x, o)]


def observations(histories: list[list[int]]) -> np.ndarray:
    """The game's observations of the positions reached by ``histories``."""
    out = np.zeros((len(histories),) + TicTacToe.observation_shape, np.float32)
    by_length: dict[int, list[int]] = {}
    for i, h in enumerate(histories):
        by_length.setdefault(len(h), []).append(i)
    for length, rows in by_length.items():
        game = TicTacToe(batch_size=len(rows))
        for ply in range(length):
            game.step(np.array([histories[i][ply] for i in rows]))
        out[rows] = game.observation()
    return out


@torch.no_grad()
def check(agent, path: str, depth: int = 9, seed: int = 0) -> list[dict]:
    """Per depth: value error while the game lasts, |v| once it is over, prior mass on illegal moves."""
    value_table, best_table = _solve_tic_tac_toe()
    rng = np.random.default_rng(seed)
    histories = positions()
    n = len(histories)
    x = np.array([sum(1 << c for c in h[0::2]) for h in histories], np.int64)
    o = np.array([sum(1 << c for c in h[1::2]) for h in histories], np.int64)
    x_to_move = np.array([len(h) % 2 == 0 for h in histories])
    over = np.zeros(n, bool)                      # the game ended before this depth
    net = agent.net.eval()
    latent = net.representation(torch.from_numpy(observations(histories)))
    rows = []
    for d in range(depth + 1):
        logits, value_logits = net.prediction(latent)
        value = agent.value_of(value_logits).numpy()
        prior = torch.softmax(logits, -1).numpy()
        occupied = ((x | o)[:, None] >> np.arange(9)) & 1 == 1
        ended = over | finished(x, o)
        live = ~ended
        truth = value_table[x * 512 + o].astype(np.float64)
        rows.append({"depth": d, "live": int(live.sum()), "over": int(ended.sum()),
                     "value_error_live": float(np.abs(value - truth)[live].mean()) if live.any() else None,
                     "abs_value_over": float(np.abs(value)[ended].mean()) if ended.any() else None,
                     "illegal_prior_live": float((prior * occupied).sum(1)[live].mean()) if live.any() else None})
        if d == depth:
            break
        actions = np.empty(n, np.int64)
        for i in range(n):
            if live[i]:
                choices = np.flatnonzero(~occupied[i])
                if path == "optimal":
                    best = int(best_table[x[i] * 512 + o[i]])
                    choices = np.array([c for c in range(9) if best >> c & 1])
            else:
                choices = np.array([0]) if path == "pad" else np.arange(9)
            actions[i] = rng.choice(choices)
        latent, _ = net.dynamics(latent, torch.from_numpy(actions))
        bit = np.left_shift(1, actions)
        x = np.where(live & x_to_move, x | bit, x)
        o = np.where(live & ~x_to_move, o | bit, o)
        x_to_move = np.where(live, ~x_to_move, x_to_move)
        over = ended
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a MuZero tic-tac-toe run directory or checkpoint file")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown path kind(s) {unknown}; choose from {', '.join(PATHS)}")
    agent = load_agent(args.checkpoint)
    if getattr(agent, "registered_name", "") != "muzero" or agent.spec.name != "tictactoe":
        parser.error(f"{args.checkpoint} is not a MuZero tic-tac-toe checkpoint")
    report = {}

    def fmt(v):
        return "    -" if v is None else f"{v:5.3f}"

    for path in paths:
        rows = check(agent, path, seed=args.seed)
        report[path] = rows
        print(f"{path}: depth | |v - v*| while the game lasts (positions) | |v| once it is over (positions) | "
              "prior on illegal moves")
        for r in rows:
            print(f"  {r['depth']} | {fmt(r['value_error_live'])} ({r['live']:4d}) | {fmt(r['abs_value_over'])} "
                  f"({r['over']:4d}) | {fmt(r['illegal_prior_live'])}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
