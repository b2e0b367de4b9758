"""Evaluate a two-player agent against opponents, and rank a run's checkpoints on an Elo ladder.

``evaluate_against(agent, env_cfg, opponent, games, seed)`` plays ``games`` games with
colours alternating (the agent moves first in even-numbered games) through
:func:`envs.games.play_match` and returns wins / draws / losses from the agent's view
with Wilson 95% intervals, the points (win 1, draw 0.5, per game) with a bootstrap
interval and the split by colour. Opponents:

* ``random``: uniform over legal moves;
* ``perfect``: exhaustive minimax (tic-tac-toe only);
* ``mcts`` / ``mcts:N``: OpenSpiel's MCTS bot with random rollouts and N simulations;
* ``human``: the terminal (board drawn as text, illegal moves re-asked);
* a checkpoint file or run directory: that agent, rebuilt from its stored config.

``elo_ladder(run_dir, ...)`` plays every pair of the run's checkpoints (numbered
``step_*.pt`` and ``latest.pt``, optionally with ``random`` as a fixed anchor), fits
Elo ratings by maximum a posteriori Bradley-Terry and writes them under
``"elo_ladder"`` in ``<run_dir>/checkpoints/eval.json`` (where ``eval.py`` writes its
report; atomic write, other keys kept).
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)   # Elo points per natural-log odds unit


def make_game_for(env_cfg: Mapping[str, Any] | Any):
    """A one-game :class:`BatchedGame` from an env config dict, a game name or a game object."""
    from envs.games import make_game
    from envs.games.base import BatchedGame

    if isinstance(env_cfg, BatchedGame):
        return env_cfg.spawn()
    if isinstance(env_cfg, str):
        return make_game(env_cfg, batch_size=1)
    name = env_cfg.get("game")
    if not name:
        raise ValueError(f"env config {dict(env_cfg)!r} names no game (needs kind: game and game: <name>)")
    return make_game(str(name), batch_size=1, **dict(env_cfg.get("kwargs") or {}))


def is_checkpoint(opponent: str) -> bool:
    """True when ``opponent`` names a checkpoint file or a run directory rather than a built-in player."""
    path = Path(opponent).expanduser()
    return opponent.endswith(".pt") or path.is_dir() or path.is_file()


def agent_from_checkpoint_data(data: Mapping[str, Any], agent_values: Mapping[str, Any] | None = None,
                               env_cfg: Mapping[str, Any] | None = None, device: str = "cpu", seed: int = 0):
    """Rebuild a board-game agent from loaded checkpoint ``data`` for play (no replay, no self-play games).

    ``agent_values`` / ``env_cfg`` default to the stored config (pass merged ones to apply
    command-line overrides such as ``agent.eval_simulations=400``).
    """
    import torch

    import envs
    from agents import base
    from runtime.config import build
    from runtime.errors import UserError

    config = data["config"]
    env_cfg = dict(env_cfg if env_cfg is not None else config["env"])
    if env_cfg.get("kind") != "game":
        raise UserError(f"checkpoint {data.get('path')!r} was trained on {env_cfg.get('name')!r}, not a board game",
                        key="opponent")
    agent_values = dict(agent_values if agent_values is not None else config["agent"])
    agent_cls = base.get(str(agent_values.get("name")), agent_values.get("module"))
    agent_cfg = build(agent_cls.Config, agent_values, "agent")
    _, spec = envs.make_game_env(env_cfg, 1, 0)
    agent = agent_cls(agent_cfg, spec, torch.device(device), env=None, seed=int(seed))
    state = {k: v for k, v in data["agent"].items() if k not in ("replay", "games", "trajectories", "optimizer")}
    try:
        agent.load_state_dict(state)
    except (KeyError, RuntimeError) as err:
        raise UserError(f"checkpoint {data.get('path')!r} does not fit agent {agent_values.get('name')!r} with this "
                        f"config ({str(err).splitlines()[0][:200]})", key="checkpoint") from None
    agent.checkpoint_path = data.get("path")
    agent.trained_steps = int(data.get("progress", {}).get("steps", 0))
    return agent


def load_agent(checkpoint: str | Path, device: str = "cpu"):
    """Rebuild the agent stored in ``checkpoint`` (file or run directory) with its weights, for play."""
    from runtime import checkpoint as ckpt

    data = ckpt.load(checkpoint)
    return agent_from_checkpoint_data(data, device=device, seed=int(data["config"].get("seed", 0)))


def as_player(agent_or_player: Any, simulations: int | None = None, explore: bool = False):
    """A player for ``play_match``: agents with ``player()`` are wrapped (so they can be reseeded)."""
    if hasattr(agent_or_player, "player") and callable(agent_or_player.player):
        return agent_or_player.player(simulations=simulations, explore=explore)
    return agent_or_player


def make_opponent(opponent: str, seed: int | None = None, simulations: int | None = None,
                  input_fn: Callable[[str], str] | None = None, output_fn: Callable[[str], None] | None = None,
                  game_name: str | None = None):
    """The player named by ``opponent`` (built-in name or checkpoint path).

    ``input_fn`` / ``output_fn`` replace the terminal for ``human`` (default: input / print).
    """
    from envs.games.players import HumanPlayer, make_player

    if opponent.strip().lower() == "human":
        return HumanPlayer(input_fn=input_fn or input, output_fn=output_fn or print)
    if opponent.strip().lower() == "perfect" and game_name not in (None, "tic_tac_toe"):
        from runtime.errors import UserError

        raise UserError(f"the perfect player exists for tic-tac-toe only, not {game_name}",
                        choices=["random", "mcts:<simulations>", "human", "<checkpoint file or run directory>"],
                        key="opponent")
    if is_checkpoint(opponent) and not opponent.startswith(("mcts", "random", "perfect", "human")):
        return as_player(load_agent(opponent), simulations)
    try:
        return make_player(opponent, seed=seed)
    except ValueError as err:
        from runtime.errors import UserError

        raise UserError(f"{err}", choices=["random", "perfect", "mcts", "mcts:<simulations>", "human",
                                           "<checkpoint file or run directory>"], key="opponent") from None


def evaluate_against(agent: Any, env_cfg: Mapping[str, Any] | Any, opponent: str | Any, games: int, seed: int,
                     simulations: int | None = None, input_fn: Callable[[str], str] | None = None,
                     output_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Play ``games`` games (colours alternating) of ``agent`` against ``opponent``; results from the agent's view.

    Returns ``wins, draws, losses, games, points`` (score per game, win 1 / draw 0.5),
    ``win_rate, draw_rate, loss_rate``, their 95% intervals (``*_ci_low``/``*_ci_high``)
    and the colour split (``first_*``: the agent moved first). ``simulations`` overrides the
    agent's evaluation search size; ``input_fn``/``output_fn`` drive the ``human`` opponent.
    """
    from envs.games import play_match

    if games < 1:
        raise ValueError(f"games must be >= 1, got {games}")
    game = make_game_for(env_cfg)
    opponent_player = (make_opponent(opponent, seed, None, input_fn, output_fn, game_name=game.name)
                       if isinstance(opponent, str) else opponent)
    result = play_match(as_player(agent, simulations), opponent_player, game, int(games), alternate_colours=True,
                        seed=int(seed))
    out: dict[str, Any] = {
        "opponent": opponent if isinstance(opponent, str) else type(opponent).__name__,
        "games": result.num_games, "wins": result.wins, "draws": result.draws, "losses": result.losses,
        "points": result.score, "points_ci_low": result.score_ci[0], "points_ci_high": result.score_ci[1],
        "win_rate": result.win_rate, "draw_rate": result.draw_rate, "loss_rate": result.loss_rate,
    }
    for name, ci in (("win", result.win_ci), ("draw", result.draw_ci), ("loss", result.loss_ci)):
        out[f"{name}_rate_ci_low"], out[f"{name}_rate_ci_high"] = ci
    for colour, key in (("a_first", "first"), ("a_second", "second")):
        for outcome, count in result.by_colour.get(colour, {}).items():
            out[f"{key}_{outcome}"] = count
    return out


def default_opponents(env_cfg: Mapping[str, Any] | Any) -> list[str]:
    """``random``, plus ``perfect`` on tic-tac-toe."""
    return ["random"] + (["perfect"] if make_game_for(env_cfg).name == "tic_tac_toe" else [])


def evaluate_game_checkpoint(data: Mapping[str, Any], agent_values: Mapping[str, Any], env_cfg: Mapping[str, Any],
                             opponents: Sequence[str] | str | None, games: int, seed: int,
                             ladder_games: int = 0) -> dict[str, Any]:
    """What ``eval.py`` reports for a board-game checkpoint: one match per opponent (and an Elo ladder).

    ``opponents``: a name, a comma-separated list, a list, or None for :func:`default_opponents`.
    With ``ladder_games > 0`` the run's checkpoints are ranked too (written to the run's eval.json).
    """
    agent = agent_from_checkpoint_data(data, agent_values, env_cfg, seed=seed)
    if opponents is None:
        names = default_opponents(env_cfg)
    elif isinstance(opponents, str):
        names = [o.strip() for o in opponents.split(",") if o.strip()]
    else:
        names = [str(o) for o in opponents]
    result: dict[str, Any] = {"checkpoint": data.get("path"), "agent": agent_values.get("name"),
                              "env": env_cfg.get("name"), "trained_steps": agent.trained_steps, "seed": seed,
                              "games": games, "matches": {}}
    for opponent in names:
        result["matches"][opponent] = evaluate_against(agent, env_cfg, opponent, games, seed)
    if ladder_games > 0 and data.get("path"):
        run_dir = Path(str(data["path"])).parent.parent
        result["elo_ladder"] = elo_ladder(run_dir, games_per_pair=ladder_games, seed=seed)
    return result


def match_table(result: Mapping[str, Any]) -> str:
    """A text table of :func:`evaluate_game_checkpoint`'s matches (and Elo ratings)."""
    lines = [(f"{result.get('agent')} on {result.get('env')} after {result.get('trained_steps', 0):,} steps, "
             f"{result.get('games')} games per opponent (colours alternating)"),
             f"{'opponent':28s} {'W':>5s} {'D':>5s} {'L':>5s}  {'points':>7s}  95% CI"]
    for opponent, m in result.get("matches", {}).items():
        lines.append(f"{opponent[-28:]:28s} {m['wins']:5d} {m['draws']:5d} {m['losses']:5d}  {m['points']:7.3f}  "
                     f"[{m['points_ci_low']:.3f}, {m['points_ci_high']:.3f}]")
    ladder = result.get("elo_ladder")
    if ladder:
        lines.append("Elo ladder (random = 0): " + ", ".join(f"{k} {v:+.0f}" for k, v in ladder["ratings"].items()))
    return "\n".join(lines)


def fit_elo(names: Sequence[str], results: Sequence[tuple[int, int, float, int]], anchor: str | None = None,
            prior_elo: float = 1000.0) -> dict[str, float]:
    """Elo ratings from pairwise results ``(i, j, points_of_i, games)`` by MAP Bradley-Terry.

    ``P(i beats j) = 1 / (1 + 10^((r_j - r_i) / 400))``; draws count half a win. A
    Gaussian prior ``N(0, prior_elo^2)`` on every rating keeps clean sweeps finite.
    The ``anchor`` (default: the first name) is shifted to 0.
    """
    n = len(names)
    rating = np.zeros(n)   # natural-log odds units
    pairs = np.array([(i, j) for i, j, _, _ in results], np.int64).reshape(-1, 2)
    points = np.array([p for _, _, p, _ in results], np.float64)
    count = np.array([g for _, _, _, g in results], np.float64)
    prior_precision = (ELO_SCALE / prior_elo) ** 2
    for _ in range(200):   # Newton's method on the concave log posterior
        diff = rating[pairs[:, 0]] - rating[pairs[:, 1]] if len(pairs) else np.zeros(0)
        expected = 1.0 / (1.0 + np.exp(-diff))
        residual = points - count * expected
        grad = -prior_precision * rating
        hess = -prior_precision * np.eye(n)
        curvature = count * expected * (1 - expected)
        for k, (i, j) in enumerate(pairs):
            grad[i] += residual[k]
            grad[j] -= residual[k]
            hess[i, i] -= curvature[k]
            hess[j, j] -= curvature[k]
            hess[i, j] += curvature[k]
            hess[j, i] += curvature[k]
        step = np.linalg.solve(hess, -grad)
        rating += step
        if np.abs(step).max() < 1e-10:
            break
    base = names.index(anchor) if anchor is not None else 0
    return {name: float((rating[k] - rating[base]) * ELO_SCALE) for k, name in enumerate(names)}


def elo_ladder(run_dir: str | Path, games_per_pair: int = 20, seed: int = 0, include_random: bool = True,
               simulations: int | None = None, max_checkpoints: int | None = None,
               explore: bool = True) -> dict[str, Any]:
    """Round robin between the run's checkpoints (plus ``random``), Elo fit, written to ``checkpoints/eval.json``.

    With ``explore`` (default) the checkpoints play their self-play acting rule (root
    noise, sampled opening moves): two deterministic players would replay the same two
    games over and over. ``max_checkpoints`` keeps that many, evenly spaced (latest
    included). Ratings are anchored at ``random`` = 0 when it takes part (else the
    earliest checkpoint). Returns ``{"ratings": {name: elo}, "games": [...], ...}``.
    """
    from runtime.errors import UserError

    run_dir = Path(run_dir).expanduser()
    folder = run_dir / "checkpoints"
    paths = sorted(folder.glob("step_*.pt"))
    if (folder / "latest.pt").is_file():
        paths.append(folder / "latest.pt")
    if max_checkpoints is not None and len(paths) > max_checkpoints:
        keep = np.unique(np.linspace(0, len(paths) - 1, max_checkpoints).round().astype(int))
        paths = [paths[k] for k in keep]
    if not paths:
        raise UserError(f"no checkpoints in {str(folder)!r} (expected step_*.pt or latest.pt)", key="checkpoint")
    agents = [load_agent(p) for p in paths]
    names = [p.stem for p in paths]
    players: list[Any] = [as_player(a, simulations, explore) for a in agents]
    if include_random:
        from envs.games.players import RandomPlayer

        names.insert(0, "random")
        players.insert(0, RandomPlayer(seed))
    env_cfg = agents[0]._template
    results, table = [], []
    for (i, a), (j, b) in itertools.combinations(enumerate(players), 2):
        match = evaluate_against(a, env_cfg, b, games_per_pair, seed + 7919 * len(results))
        points = match["wins"] + 0.5 * match["draws"]
        results.append((i, j, points, match["games"]))
        table.append({"a": names[i], "b": names[j], "wins": match["wins"], "draws": match["draws"],
                      "losses": match["losses"]})
    ratings = fit_elo(names, results, anchor="random" if include_random else names[0])
    ladder = {"ratings": ratings, "games": table, "games_per_pair": games_per_pair, "explore": explore,
              "steps": {name: getattr(agent, "trained_steps", None) for name, agent
                        in zip(names[1:] if include_random else names, agents)}}
    target = folder / "eval.json"             # where eval.py writes: next to the checkpoints
    existing = json.loads(target.read_text()) if target.is_file() else {}
    existing["elo_ladder"] = ladder
    tmp = folder / ".eval.json.tmp"
    tmp.write_text(json.dumps(existing, indent=2))
    tmp.replace(target)
    return ladder


__all__ = ["agent_from_checkpoint_data", "as_player", "default_opponents", "elo_ladder", "evaluate_against",
           "evaluate_game_checkpoint", "fit_elo", "is_checkpoint", "load_agent", "make_game_for", "make_opponent",
           "match_table"]
