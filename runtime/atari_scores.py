"""Reference scores of the 26 Atari 100k games and human-normalised scores.

    HNS(game, score) = (score - random[game]) / (human[game] - random[game])

Random and human scores are the standard ones of the DQN line of work (random
and human tester scores of Mnih et al. 2015 / van Hasselt et al. 2016, as used by
Kaiser et al. 2020 for Atari 100k), copied from the ``RANDOM_SCORES`` and
``HUMAN_SCORES`` tables of rliable's Atari 100k notebook (Agarwal et al. 2021,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice",
https://github.com/google-research/rliable, ``deep_rl_precipice_colab.ipynb``).

Game names are ale-py ROM ids (``breakout``, ``ms_pacman``, ``up_n_down`` ...), the
names ``env.game`` takes; :func:`canonical` also accepts the CamelCase names
(``MsPacman``) used by Dopamine and rliable.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

# ale-py ROM id -> (random score, human score)
SCORES: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7),
    "amidar": (5.8, 1719.5),
    "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3),
    "bank_heist": (14.2, 753.1),
    "battle_zone": (2360.0, 37187.5),
    "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5),
    "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4),
    "demon_attack": (152.1, 1971.0),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2412.5),
    "hero": (1027.0, 30826.4),
    "jamesbond": (29.0, 302.8),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3),
    "ms_pacman": (307.3, 6951.6),
    "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3),
    "qbert": (163.9, 13455.0),
    "road_runner": (11.5, 7845.0),
    "seaquest": (68.4, 42054.7),
    "up_n_down": (533.4, 11693.2),
}
ATARI_100K_GAMES: tuple[str, ...] = tuple(SCORES)
RANDOM_SCORES: dict[str, float] = {game: pair[0] for game, pair in SCORES.items()}
HUMAN_SCORES: dict[str, float] = {game: pair[1] for game, pair in SCORES.items()}

def canonical(game: str) -> str:
    """The ale-py id of ``game`` given as ``ms_pacman``, ``MsPacman`` or ``mspacman``."""
    from runtime.errors import UserError

    key = game.strip()
    if key in SCORES:
        return key
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()
    if snake in SCORES:
        return snake
    squashed = key.replace("_", "").lower()
    for name in SCORES:
        if name.replace("_", "") == squashed:
            return name
    raise UserError(f"{game!r} is not one of the 26 Atari 100k games", choices=list(SCORES), key="env.game")


def human_normalized(game: str, scores: float | np.ndarray) -> float | np.ndarray:
    """``(score - random) / (human - random)`` for one game (scalar or array of scores)."""
    low, high = SCORES[canonical(game)]
    values = (np.asarray(scores, dtype=np.float64) - low) / (high - low)
    return float(values) if values.ndim == 0 else values


def normalized_matrix(scores: Mapping[str, np.ndarray | list[float]]) -> tuple[list[str], np.ndarray]:
    """Games and the ``runs x games`` matrix of human-normalised scores (rliable's layout).

    Every game must have the same number of runs (seeds).
    """
    games = [canonical(g) for g in scores]
    columns = [np.asarray(human_normalized(g, np.asarray(v, dtype=np.float64))) for g, v in zip(games, scores.values())]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise ValueError(f"every game needs the same number of runs, got {dict(zip(games, map(len, columns)))}")
    return games, np.stack(columns, axis=1)


def aggregate(matrix: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """IQM, median and mean of a ``runs x games`` score matrix with 95% stratified bootstrap CIs (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)
    func = lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x),
                               metrics.aggregate_mean(x)])
    points, intervals = rly.get_interval_estimates({"agent": matrix}, func, reps=reps)
    out = {}
    for i, name in enumerate(("iqm", "median", "mean")):
        out[name] = {"value": float(points["agent"][i]), "ci_low": float(intervals["agent"][0, i]),
                     "ci_high": float(intervals["agent"][1, i])}
    return out


# Final scores of the 100 published DrQ(epsilon) runs per game (Atari 100k, each run's mean over
# 100 evaluation episodes after 100k agent steps): the score data released with Agarwal et al. 2021
# for rliable, the file ``DrQ(eps).json`` of that release, byte for byte (SHA-256 below).
PUBLISHED_RUNS: dict[str, tuple[str, str]] = {
    "drq_eps": ("drq_eps_atari100k_runs.json", "a86f9f4243b7eb3f994b6db4c9c87fb698742bfa08e7b06e414be41abf1f0574"),
}


def published_runs(agent: str = "drq_eps") -> dict[str, np.ndarray]:
    """``{ale id: final score of every published run}`` for ``agent`` (see ``PUBLISHED_RUNS``).

    The file is checked against its SHA-256, so an edited or truncated copy raises instead of
    comparing against the wrong numbers.
    """
    import hashlib
    import json
    from pathlib import Path

    from runtime.errors import UserError

    if agent not in PUBLISHED_RUNS:
        raise UserError(f"no published runs for {agent!r}", choices=list(PUBLISHED_RUNS))
    name, digest = PUBLISHED_RUNS[agent]
    path = Path(__file__).resolve().parent / "data" / name
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != digest:
        raise UserError(f"{path} is not the published file (SHA-256 differs from {digest})")
    return {canonical(game): np.asarray(scores, dtype=np.float64) for game, scores in json.loads(raw).items()}


def spread_check(scores: Mapping[str, list[float] | np.ndarray], agent: str = "drq_eps") -> dict[str, dict[str, float]]:
    """Our mean per game against the spread of the published runs of ``agent``.

    For each game: our run count and mean; the published runs' min, 5th percentile, median,
    mean, 95th percentile and max; ``rank``, the fraction of published runs scoring below our
    mean; and ``within``, whether our mean lies in [min, max] of the published runs.
    """
    published = published_runs(agent)
    out: dict[str, dict[str, float]] = {}
    for game, values in scores.items():
        game = canonical(game)
        ours = np.asarray(values, dtype=np.float64)
        runs = published[game]
        mean = float(ours.mean())
        out[game] = {
            "runs": int(ours.size), "mean": mean,
            "published_runs": int(runs.size), "published_min": float(runs.min()),
            "published_p5": float(np.percentile(runs, 5)), "published_median": float(np.median(runs)),
            "published_mean": float(runs.mean()), "published_p95": float(np.percentile(runs, 95)),
            "published_max": float(runs.max()), "rank": float((runs < mean).mean()),
            "within": bool(runs.min() <= mean <= runs.max()),
        }
    return out
