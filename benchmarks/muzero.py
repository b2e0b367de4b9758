"""MuZero's targets, measured through the command line (``train.py``) against named peers.

Sections (``--sections cartpole,tictactoe,atari,minatar``; default ``cartpole,tictactoe``):

* ``cartpole``  ``train.py agent=muzero env=cartpole`` (30k env steps, tuned preset) against
  ``agent=dqn`` at the same budget; figures: best and final evaluation return within the
  budget, the env steps at which 475 was first reached, wall time. Target: >= 475.
* ``tictactoe`` ``train.py agent=muzero env=tictactoe`` (learned model), then 200 games
  against perfect play (``eval.py``-equivalent ``evaluate_against``). Target: >= 95% draws.
* ``atari``     ``train.py agent=muzero env=atari env.game=pong`` for ``--atari-steps``: env
  steps per second on this CPU and the learning curve, against LightZero's published
  ~22 env steps/s for MuZero on Pong with a GPU (a quoted figure, not run here).
* ``minatar``   MuZero and DQN on MinAtar Breakout, ``--seeds`` seeds each, ``--minatar-steps``
  env steps; figure: mean final evaluation return of each. Target: MuZero >= DQN.

Every run writes under ``--runs-root``; each row reports the load average seen while it ran
(the development machines are shared). ``--json`` prints one JSON object last.

    python benchmarks/muzero.py --sections cartpole --seeds 0
    python benchmarks/muzero.py --sections atari --atari-steps 2000 --json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIGHTZERO_PONG_STEPS_PER_SECOND = 22.0   # LightZero's MuZero on Pong, GPU (quoted in the issue)


def load_average() -> float:
    return os.getloadavg()[0]


def train(args: list[str], runs_root: Path, log: Path) -> dict:
    """Run train.py with ``args``; returns its metrics records, wall time and load averages."""
    runs_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    loads = [load_average()]
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "logger=none",
                                 f"runs_root={runs_root}"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(5)
            loads.append(load_average())
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} failed; see {log}")
    metrics = max(runs_root.rglob("metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return {"records": records, "wall_s": wall, "load_min": min(loads), "load_max": max(loads),
            "run_dir": str(metrics.parent)}


def eval_curve(records: list[dict], key: str = "eval/return_mean") -> list[tuple[int, float]]:
    return [(int(r["env_steps"]), float(r[key])) for r in records if key in r]


def cartpole(seeds: list[int], root: Path) -> dict:
    figures = {}
    for agent in ("muzero", "dqn"):
        for seed in seeds:
            run = train([f"agent={agent}", "env=cartpole", f"seed={seed}", "total_env_steps=30000"],
                        root / f"cartpole_{agent}_s{seed}", root / f"cartpole_{agent}_s{seed}.log")
            curve = eval_curve(run["records"])
            solved = [s for s, r in curve if r >= 475]
            figures[f"cartpole/{agent}/s{seed}"] = {
                "final_return": curve[-1][1], "best_return": max(r for _, r in curve),
                "first_step_at_475": solved[0] if solved else None, "wall_s": round(run["wall_s"], 1),
                "load": [round(run["load_min"], 2), round(run["load_max"], 2)], "curve": curve,
                "run_dir": run["run_dir"]}
    return figures


def tictactoe(seeds: list[int], root: Path, games: int = 200) -> dict:
    import torch

    from runtime import checkpoint as ckpt
    from runtime.match_eval import agent_from_checkpoint_data, evaluate_against

    torch.set_num_threads(1)
    figures = {}
    for seed in seeds:
        run = train(["agent=muzero", "env=tictactoe", f"seed={seed}"], root / f"ttt_s{seed}", root / f"ttt_s{seed}.log")
        agent = agent_from_checkpoint_data(ckpt.load(run["run_dir"]), seed=seed)
        result = evaluate_against(agent, "tic_tac_toe", "perfect", games, seed=seed + 1)
        curve = eval_curve(run["records"], "eval/vs_perfect_draw_rate")
        figures[f"tictactoe/muzero/s{seed}"] = {
            "draw_rate_vs_perfect": result["draw_rate"], "losses_vs_perfect": result["losses"], "games": games,
            "wall_s": round(run["wall_s"], 1), "load": [round(run["load_min"], 2), round(run["load_max"], 2)],
            "draw_rate_curve": curve, "run_dir": run["run_dir"]}
    return figures


def atari(steps: int, root: Path) -> dict:
    # learning starts at 40% of the budget; the closing evaluation is one game with 4 simulations a move
    run = train(["agent=muzero", "env=atari", "env.game=pong", f"total_env_steps={steps}",
                 f"agent.learning_starts={int(0.4 * steps)}", f"eval.interval={10 * steps}", "eval.episodes=1",
                 "eval.num_envs=1", "agent.eval_simulations=4", f"logger.interval={max(1, steps // 10)}",
                 f"checkpoint.interval={10 * steps}"], root / "pong", root / "pong.log")
    speeds = [r["time/steps_per_second"] for r in run["records"] if "time/steps_per_second" in r]
    returns = [(int(r["env_steps"]), r["train/episode_return"]) for r in run["records"] if "train/episode_return" in r]
    losses = [(int(r["env_steps"]), round(r["train/loss"], 4)) for r in run["records"] if "train/loss" in r]
    return {"atari/pong": {"env_steps": steps, "env_steps_per_second": speeds[-1] if speeds else None,
                           "wall_s": round(run["wall_s"], 1), "load": [round(run["load_min"], 2),
                                                                      round(run["load_max"], 2)],
                           "train_return_curve": returns, "loss_curve": losses, "run_dir": run["run_dir"]}}


def minatar(seeds: list[int], steps: int, root: Path) -> dict:
    figures = {}
    for agent in ("muzero", "dqn"):
        finals = []
        for seed in seeds:
            run = train([f"agent={agent}", "env=minatar", "env.game=breakout", f"seed={seed}",
                         f"total_env_steps={steps}"], root / f"minatar_{agent}_s{seed}",
                        root / f"minatar_{agent}_s{seed}.log")
            curve = eval_curve(run["records"])
            finals.append(curve[-1][1])
            figures[f"minatar/{agent}/s{seed}"] = {"final_return": curve[-1][1], "curve": curve,
                                                   "wall_s": round(run["wall_s"], 1),
                                                   "load": [round(run["load_min"], 2), round(run["load_max"], 2)]}
        figures[f"minatar/{agent}/mean_final_return"] = sum(finals) / len(finals)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="cartpole,tictactoe")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--atari-steps", type=int, default=3000)
    parser.add_argument("--minatar-steps", type=int, default=200_000)
    parser.add_argument("--runs-root", default="/tmp/muzero_benchmark")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.runs_root)
    figures: dict = {}
    ratios: dict = {}
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if "cartpole" in sections:
        figures.update(cartpole(seeds, root))
        mz = [figures[f"cartpole/muzero/s{s}"]["best_return"] for s in seeds]
        dqn = [figures[f"cartpole/dqn/s{s}"]["best_return"] for s in seeds]
        ratios["muzero_best_return/dqn_best_return@30k"] = (sum(mz) / len(mz)) / max(sum(dqn) / len(dqn), 1e-9)
        ratios["muzero_best_return/475_target"] = (sum(mz) / len(mz)) / 475.0
    if "tictactoe" in sections:
        figures.update(tictactoe(seeds, root))
        draws = [figures[f"tictactoe/muzero/s{s}"]["draw_rate_vs_perfect"] for s in seeds]
        ratios["muzero_draw_rate/0.95_target"] = (sum(draws) / len(draws)) / 0.95
    if "atari" in sections:
        figures.update(atari(args.atari_steps, root))
        speed = figures["atari/pong"]["env_steps_per_second"] or 0.0
        ratios["muzero_cpu_steps_per_s/lightzero_gpu_steps_per_s"] = speed / LIGHTZERO_PONG_STEPS_PER_SECOND
    if "minatar" in sections:
        figures.update(minatar(seeds, args.minatar_steps, root))
        ratios["muzero_return/dqn_return@minatar_breakout"] = (
            figures["minatar/muzero/mean_final_return"] / max(figures["minatar/dqn/mean_final_return"], 1e-9))

    print(f"{'figure':<44} value")
    for key, value in figures.items():
        if isinstance(value, dict):
            shown = {k: v for k, v in value.items() if not k.endswith("curve") and k != "run_dir"}
            print(f"{key:<44} {shown}")
        else:
            print(f"{key:<44} {value}")
    for key, value in ratios.items():
        print(f"{key:<44} {value:.3f}")
    if args.json:
        print(json.dumps({"benchmark": "muzero", "figures": figures, "ratios": ratios}))


if __name__ == "__main__":
    main()
