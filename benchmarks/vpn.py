"""Value Prediction Network on CartPole-v1: the issue's target, side by side with the suite's DQN.

    python benchmarks/vpn.py                          # VPN seed 0 and DQN seed 0, 30k env steps each
    python benchmarks/vpn.py --seeds 0 1 2            # more seeds
    python benchmarks/vpn.py --peer none              # VPN only
    python benchmarks/vpn.py --json                   # one JSON line last

Each run is ``python train.py agent=<vpn|dqn> env=cartpole seed=<s> total_env_steps=<steps>
logger=none eval.interval=<interval>`` with the shipped tuned presets (``conf/tuned/vpn_cartpole.yaml``,
``conf/tuned/dqn_cartpole.yaml``), one after the other in a subprocess. Reported per agent: the
final evaluation return (10 greedy episodes), the first evaluation at or above 475 (env steps),
and the training wall time and CPU time (user + system, evaluations included; the CPU time
depends less on what else the machine runs). Target (issue 6): VPN's final mean evaluation
return >= 475 within 30k env steps. The ratios are VPN over DQN at equal env steps (final return)
and DQN over VPN (wall time): larger is better for VPN. The load average is printed with the
figures: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 475.0


def train(agent: str, seed: int, steps: int, interval: int, root: Path) -> dict:
    """One training run through the command line; returns its figures."""
    runs_root = root / f"{agent}_s{seed}"
    args = [sys.executable, str(ROOT / "train.py"), f"agent={agent}", "env=cartpole", f"seed={seed}",
            f"total_env_steps={steps}", "logger=none", f"eval.interval={interval}", f"runs_root={runs_root}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    metrics = next(runs_root.rglob("metrics.jsonl"))
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    curve = [(r["env_steps"], r["eval/return_mean"]) for r in records if "eval/return_mean" in r]
    reached = next((step for step, value in curve if value >= TARGET), None)
    return {"agent": agent, "seed": seed, "final_return": curve[-1][1], "first_step_at_target": reached,
            "wall_s": wall, "cpu_s": cpu, "curve": curve, "load": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--eval-interval", type=int, default=5_000)
    parser.add_argument("--peer", choices=["dqn", "none"], default="dqn")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    agents = ["vpn"] + ([args.peer] if args.peer != "none" else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="vpn_bench_") as tmp:
        for seed in args.seeds:
            for agent in agents:
                results.append(train(agent, seed, args.steps, args.eval_interval, Path(tmp)))
                r = results[-1]
                print(f"{agent:4s} seed {seed}: final {r['final_return']:6.1f}  first >= {TARGET:.0f} at "
                      f"{r['first_step_at_target']}  wall {r['wall_s']:6.1f} s  cpu {r['cpu_s']:6.1f} s  load {r['load'][0]:.2f}  "
                      f"curve {[(s, round(v, 1)) for s, v in r['curve']]}", flush=True)

    def mean(agent: str, key: str) -> float:
        values = [r[key] for r in results if r["agent"] == agent]
        return sum(values) / len(values)

    figures = {f"{a}_{key}": mean(a, key) for a in agents for key in ("final_return", "wall_s", "cpu_s")}
    figures["vpn_runs_at_target"] = sum(r["final_return"] >= TARGET for r in results if r["agent"] == "vpn")
    figures["vpn_runs"] = len(args.seeds)
    figures["steps"] = args.steps
    figures["load_average_1min"] = os.getloadavg()[0]
    ratios = {}
    if args.peer != "none":
        ratios[f"vpn/{args.peer}_final_return"] = figures["vpn_final_return"] / max(figures[f"{args.peer}_final_return"], 1e-9)
        ratios[f"{args.peer}/vpn_wall_s"] = figures[f"{args.peer}_wall_s"] / figures["vpn_wall_s"]
        ratios[f"{args.peer}/vpn_cpu_s"] = figures[f"{args.peer}_cpu_s"] / figures["vpn_cpu_s"]
    print()
    print(f"| agent | mean final return ({args.steps} env steps) | mean wall s | mean CPU s |")
    print("| --- | --- | --- | --- |")
    for a in agents:
        print(f"| {a} | {figures[f'{a}_final_return']:.1f} | {figures[f'{a}_wall_s']:.1f} | {figures[f'{a}_cpu_s']:.1f} |")
    print(f"VPN target (final >= {TARGET:.0f}): {figures['vpn_runs_at_target']}/{len(args.seeds)} seeds; "
          f"ratios {ratios}; load average {os.getloadavg()}")
    if args.json:
        print(json.dumps({"benchmark": "vpn", "figures": figures, "ratios": ratios}))


if __name__ == "__main__":
    main()
