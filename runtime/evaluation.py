"""Evaluation: seeded episodes of an agent, and the statistics reported about them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


def run_episodes(agent: Any, env_cfg: Mapping[str, Any], episodes: int, num_envs: int, seed: int,
                 explore: bool = False, max_steps: int | None = None, progress: bool = False) -> np.ndarray:
    """Returns of exactly ``episodes`` whole games, spread evenly over ``num_envs`` parallel envs.

    Each env i plays a fixed quota of games; extra games an env starts are
    ignored, so the sample never favours short episodes. ``progress``: a live line
    on stderr (episodes done, mean return so far, ETA), as training shows.
    """
    import envs
    from runtime.progress import ProgressLine

    num_envs = max(1, min(num_envs, episodes))
    env, spec = envs.make(env_cfg, num_envs=num_envs, seed=seed, mode="eval")
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    done_count = np.zeros(num_envs, dtype=np.int64)
    returns: list[float] = []
    running = np.zeros(num_envs)
    obs, _ = env.reset(seed=seed)
    limit = max_steps or (spec.max_episode_steps or 100_000) * (int(quota.max()) + 1)
    steps = 0
    line = ProgressLine(episodes, unit="episodes", rate_unit="episodes", window=300.0) if progress else None
    while (done_count < quota).any():
        actions = agent.act(obs, explore=explore)
        obs, reward, terminated, truncated, info = env.step(actions)
        running += np.asarray(reward, dtype=np.float64)
        game_over = info["game_over"]
        for i in np.flatnonzero(game_over):
            if done_count[i] < quota[i]:
                returns.append(float(running[i]))
            done_count[i] += 1
        running[game_over] = 0.0
        if line is not None and returns and np.any(game_over):   # the count and mean change only here
            line.update(len(returns), float(np.mean(returns)))
        steps += 1
        if steps > limit:
            raise RuntimeError(f"evaluation did not finish {episodes} episodes within {limit} steps")
    env.close()
    if line is not None:
        line.close()
    return np.asarray(returns, dtype=np.float64)


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (Agarwal et al. 2021)."""
    from scipy.stats import trim_mean

    return float(trim_mean(values, proportiontocut=0.25))


def summarize(returns: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean, median, IQM, std and 95% bootstrap intervals of per-episode returns (rliable)."""
    from rliable import library as rly

    returns = np.asarray(returns, dtype=np.float64)
    stats: dict[str, Any] = {
        "episodes": int(returns.size), "mean": float(returns.mean()), "median": float(np.median(returns)),
        "iqm": iqm(returns), "std": float(returns.std()), "min": float(returns.min()), "max": float(returns.max()),
    }
    if returns.size >= 2 and returns.std() > 0:
        np.random.seed(seed)
        scores = {"agent": returns.reshape(-1, 1)}
        func = lambda x: np.array([np.mean(x), np.median(x), iqm(x.ravel())])  # noqa: E731
        _, intervals = rly.get_interval_estimates(scores, func, reps=reps)
        low, high = intervals["agent"]
        for i, name in enumerate(("mean", "median", "iqm")):
            stats[f"{name}_ci"] = [float(low[i]), float(high[i])]
    else:
        for name in ("mean", "median", "iqm"):
            stats[f"{name}_ci"] = [stats[name], stats[name]]
    return stats


def record_video(agent: Any, env_cfg: Mapping[str, Any], path: Path, seed: int, fps: int = 30,
                 max_frames: int = 10_000) -> Path:
    """Play one episode with rendering and write it as an mp4."""
    import imageio.v2 as imageio

    import envs

    env, spec = envs.make(env_cfg, num_envs=1, seed=seed, mode="eval", render=True)
    obs, _ = env.reset(seed=seed)
    kind = spec.extras["kind"]
    frames = [envs.render_frames(env, obs, kind)]
    for _ in range(max_frames):
        obs, _, _, _, info = env.step(agent.act(obs, explore=False))
        if info["game_over"][0]:
            break
        frames.append(envs.render_frames(env, obs, kind))
    env.close()
    frames = [f for f in frames if f is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    return path
