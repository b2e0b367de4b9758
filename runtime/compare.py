"""Learning curves of several runs with confidence bands (``eval.py compare=...``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError


def read_metrics(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``metric`` from a run's metrics.jsonl."""
    steps, values = [], []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if metric in record and isinstance(record[metric], (int, float)):
            steps.append(record.get("env_steps", record.get("grad_steps", 0)))
            values.append(record[metric])
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def find_runs(path: Path) -> list[Path]:
    """The run directories at or under ``path`` (any folder holding a metrics.jsonl).

    Symbolic links to folders are followed (a folder of links to runs kept elsewhere is
    a group), each real folder once, so a link cycle ends the walk instead of looping."""
    if (path / "metrics.jsonl").is_file():
        return [path]
    runs, seen = [], set()
    for root, dirs, files in os.walk(path, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if "metrics.jsonl" in files:
            runs.append(Path(root))
    return sorted(runs)


def group_curves(paths: list[str], metric: str, points: int = 100, reps: int = 1000,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per group (one per argument): step grid, mean over runs and a 95% bootstrap band."""
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[str, Any]] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"compare: {raw!r} does not exist", key="compare")
        runs = find_runs(path)
        curves = [read_metrics(r, metric) for r in runs]
        curves = [c for c in curves if c[0].size > 0]
        if not curves:
            raise UserError(f"compare: no run under {raw!r} logged {metric!r}", key="metric")
        end = min(c[0].max() for c in curves)
        start = max(c[0].min() for c in curves)
        grid = np.linspace(start, end, points) if end > start else np.array([end])
        matrix = np.stack([np.interp(grid, s, v) for s, v in curves])
        mean = matrix.mean(axis=0)
        if len(curves) > 1:
            idx = rng.integers(0, len(curves), size=(reps, len(curves)))
            boot = matrix[idx].mean(axis=1)
            low, high = np.percentile(boot, [2.5, 97.5], axis=0)
        else:
            low = high = mean
        groups[path.name or raw] = {"steps": grid, "mean": mean, "low": low, "high": high,
                                    "runs": [str(r) for r in runs], "final_mean": float(mean[-1])}
    return groups


def plot(groups: dict[str, dict[str, Any]], metric: str, output: Path) -> Path:
    """Draw the curves with shaded bands into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, g in groups.items():
        line, = ax.plot(g["steps"], g["mean"], label=f"{name} (n={len(g['runs'])})")
        ax.fill_between(g["steps"], g["low"], g["high"], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("mean over runs, 95% bootstrap band")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


# ------------------------------------------------------------ Atari aggregates
def final_score(run: Path) -> tuple[float | None, str]:
    """A finished run's score and where it comes from: ``"eval.py"`` (the mean return in
    ``checkpoints/eval.json``, e.g. 100 episodes after training) when there is one, else
    ``"in_training"`` (the last in-training evaluation in ``summary.json``); ``(None, "")``
    for a run with neither."""
    eval_json = run / "checkpoints" / "eval.json"
    if eval_json.is_file():
        score = json.loads(eval_json.read_text()).get("mean")
        return (None, "") if score is None else (float(score), "eval.py")
    if (run / "summary.json").is_file():
        score = json.loads((run / "summary.json").read_text()).get("eval/return_mean")
        return (None, "") if score is None else (float(score), "in_training")
    return None, ""


def finished_atari_runs(path: Path):
    """``(run, config, score, source)`` of each Atari run at or under ``path`` that has a
    final score (:func:`final_score`); ``config`` is the run's stored ``config.yaml``."""
    import yaml

    for run in find_runs(path):
        config = (yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}) or {}
        if config.get("env", {}).get("kind") != "atari":
            continue
        score, source = final_score(run)
        if score is not None:
            yield run, config, score, source


def atari_final_scores(paths: list[str], protocol: str = "atari100k",
                       departures: dict[str, list[str]] | None = None,
                       in_training: list[str] | None = None,
                       agents: dict[str, str] | None = None) -> dict[str, dict[str, list[float]]]:
    """``{group: {game: [final score per run]}}`` for the Atari runs at or under each path.

    A run's score is the mean return of its ``eval.json`` (written by ``eval.py``,
    e.g. 100 episodes as in the DrQ(epsilon) protocol) when there is one, else its
    final in-training evaluation (``summary.json``). A path whose runs come from
    several agents gives one group per agent, named ``<path> [<agent>]``, and
    ``agents`` (when given) maps each group to its agent. Runs that did not play
    ``protocol`` exactly (``envs.atari.protocol_departures``) never share a group
    with runs that did: they form their own, named after the path and the
    settings that differ, and ``departures`` (when given) maps each such group to
    those settings. ``in_training`` (when given) collects the runs scored from their
    in-training evaluation (few episodes) for want of an ``eval.json``.
    """
    from envs.atari import protocol_departures

    out: dict[str, dict[str, list[float]]] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"compare: {raw!r} does not exist", key="compare")
        found = []   # (agent, settings that differ, game, score, source, run)
        for run, config, score, source in finished_atari_runs(path):
            env = config["env"]
            agent = str((config.get("agent") or {}).get("name") or "unknown agent")
            found.append((agent, protocol_departures(env, protocol), str(env["game"]), score, source, run))
        several = len({agent for agent, *_ in found}) > 1
        for agent, differ, game, score, source, run in found:
            if source == "in_training" and in_training is not None:
                in_training.append(str(run))
            name = path.name or raw
            if several:
                name = f"{name} [{agent}]"
            if differ:
                name = f"{name} (not {protocol}: {', '.join(differ)})"
                if departures is not None:
                    departures[name] = differ
            if agents is not None:
                agents[name] = agent
            out.setdefault(name, {}).setdefault(game, []).append(float(score))
    return out


def atari_aggregate_table(groups: dict[str, dict[str, list[float]]], reps: int = 2000,
                          seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per group: human-normalised per-game means and IQM / median / mean with stratified bootstrap CIs.

    Games with fewer runs than the group's most-run game are resampled down to a
    common count (the first runs), since rliable needs a ``runs x games`` matrix;
    the per-game means (``games``) use every run, and ``runs`` counts them.
    """
    from runtime.atari_scores import aggregate, human_normalized, normalized_matrix

    table: dict[str, dict[str, Any]] = {}
    for name, games in groups.items():
        runs = min(len(v) for v in games.values())
        trimmed = {g: v[:runs] for g, v in games.items()}
        game_names, matrix = normalized_matrix(trimmed)
        entry: dict[str, Any] = {"runs_per_game": runs, "games": {}, "matrix": matrix}
        for game, scores in zip(game_names, games.values()):
            entry["games"][game] = {"runs": len(scores), "score_mean": float(np.mean(scores)),
                                    "hns_mean": float(np.mean(human_normalized(game, np.asarray(scores, float))))}
        if runs >= 1:
            entry["aggregate"] = aggregate(matrix, reps=reps, seed=seed) if matrix.size > 1 else {
                key: {"value": float(matrix.mean()), "ci_low": float(matrix.mean()), "ci_high": float(matrix.mean())}
                for key in ("iqm", "median", "mean")}
        table[name] = entry
    return table


def format_atari_table(table: dict[str, dict[str, Any]]) -> str:
    """The aggregate table as text: one line per group, then per-game means."""
    lines = [f"{'group':30s} {'runs':>4s} {'IQM [95% CI]':>24s} {'median [95% CI]':>24s} {'mean [95% CI]':>24s}"]
    for name, entry in table.items():
        agg = entry["aggregate"]
        cells = [f"{agg[k]['value']:.3f} [{agg[k]['ci_low']:.3f}, {agg[k]['ci_high']:.3f}]"
                 for k in ("iqm", "median", "mean")]
        lines.append(f"{name:30s} {entry['runs_per_game']:>4d} " + " ".join(f"{c:>24s}" for c in cells))
        for game, g in entry["games"].items():
            lines.append(f"    {game:26s} score {g['score_mean']:10.1f}   human-normalised {g['hns_mean']:7.3f}"
                         f"   ({g['runs']} run{'s' if g['runs'] != 1 else ''})")
        if any(g["runs"] != entry["runs_per_game"] for g in entry["games"].values()):
            lines.append(f"    (the aggregate uses the first {entry['runs_per_game']} run(s) of each game: "
                         "rliable's bootstrap needs as many runs of every game)")
    return "\n".join(lines)


def plot_performance_profile(table: dict[str, dict[str, Any]], output: Path, reps: int = 2000,
                             seed: int = 0) -> Path:
    """rliable's score-distribution performance profile (fraction of runs above tau) with 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly

    np.random.seed(seed)
    taus = np.linspace(0.0, 2.0, 81)
    matrices = {name: entry["matrix"] for name, entry in table.items()}
    profiles, cis = rly.create_performance_profile(matrices, taus, reps=reps)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in matrices:
        line, = ax.plot(taus, profiles[name], label=name)
        ax.fill_between(taus, cis[name][0], cis[name][1], color=line.get_color(), alpha=0.2)
    ax.set_xlabel(r"human-normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs with score $> \tau$")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output
