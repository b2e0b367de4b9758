"""Learning curves of several runs with confidence bands (``eval.py compare=...``)."""
from __future__ import annotations

import json
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
    """The run directories at or under ``path`` (any folder holding a metrics.jsonl)."""
    if (path / "metrics.jsonl").is_file():
        return [path]
    return sorted(p.parent for p in path.rglob("metrics.jsonl"))


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
