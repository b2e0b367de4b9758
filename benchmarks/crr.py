"""CRR against behaviour cloning, offline DQN, the behaviour policy and d3rlpy, on datasets the suite builds.

For each task (``--tasks``, default all three: CartPole-v1, Acrobot-v1, MinAtar
Breakout) the benchmark

1. trains a DQN with ``train.py`` (kept in ``--work`` and reused on later runs);
2. builds the datasets with ``make_dataset.py``: ``medium`` (the trained greedy
   policy, epsilon-mixed, ``--size`` transitions) and ``mixed`` (the DQN run's whole
   replay), each exported to ``.npz`` for the peer;
3. trains ``crr`` (binary and exp filters), ``bc`` and ``offline_dqn`` with
   ``train.py`` for the task's gradient steps (20k on classic control, 50k on
   Breakout, as in the tuned presets; ``--steps`` overrides) and ``--seeds`` seeds, and reads the
   final evaluation (``eval.episodes`` seeded episodes) from ``summary.json``;
4. trains d3rlpy's ``DiscreteCQL`` and ``DiscreteBC`` on the same ``.npz`` datasets,
   same network ([64, 64]), learning rate, target interval and number of gradient
   steps, batch 256 (ours: 128, from the tuned presets), in their own interpreter
   (``--d3rlpy-python``, a venv made with ``python3 -m venv /tmp/d3venv &&
   /tmp/d3venv/bin/pip install torch==2.13.0 d3rlpy minatar``; MinAtar grids are
   flattened for d3rlpy's vector encoder),
   evaluated on the same number of seeded episodes.

Prints a table (mean and standard deviation over seeds of the final evaluation
return) and, with ``--json``, one JSON object as the last line. Ratios compare
returns measured from the task's worst return (CartPole 0, Acrobot -500), so that
larger is better for us and negative returns compare sensibly.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TASKS = {
    "cartpole": {"env": ["env=cartpole"], "floor": 0.0, "gym_id": "CartPole-v1", "steps": 20000, "episodes": 20,
                 "dqn": []},
    "acrobot": {"env": ["env=gym", "env.id=Acrobot-v1"], "floor": -500.0, "gym_id": "Acrobot-v1", "steps": 20000,
                "episodes": 20,
                "dqn": ["total_env_steps=50000", "agent.learning_rate=1e-3", "agent.learning_rate_final=0.0",
                        "agent.adam_eps=1e-8", "agent.batch_size=64", "agent.learning_starts=1000", "agent.n_step=3",
                        "agent.collect_steps=64", "agent.gradient_steps=64", "agent.target_update_interval=1",
                        "agent.tau=0.01", "agent.eps_end=0.04", "agent.eps_fraction=0.16", "eval.interval=5000",
                        "checkpoint.interval=10000"]},
    "breakout": {"env": ["env=minatar", "env.game=breakout"], "floor": 0.0, "gym_id": None, "minatar": "breakout",
                 "steps": 50000, "episodes": 100,     # one episode's return has sd ~5 here: 20 are too few
                 "dqn": ["total_env_steps=200000", "agent.eps_decay_steps=0", "agent.eps_fraction=0.5"]},
}

OURS = {
    "crr_binary": ["agent=crr", "agent.filter=binary"],
    "crr_exp": ["agent=crr", "agent.filter=exp"],
    "bc": ["agent=bc"],
    "offline_dqn": ["agent=offline_dqn"],
}
PEERS = ("d3rlpy_DiscreteCQL", "d3rlpy_DiscreteBC")

D3RLPY_SCRIPT = r"""
import json, sys, time
import numpy as np, torch, gymnasium as gym, d3rlpy
args = json.loads(sys.argv[1])
torch.set_num_threads(1)
d3rlpy.seed(args["seed"])
data = np.load(args["npz"])
observations = data["observations"].astype(np.float32)
observations = observations.reshape(len(observations), -1)   # MinAtar grids: flattened for the MLP encoder
dataset = d3rlpy.dataset.MDPDataset(
    observations=observations, actions=data["actions"].astype(np.int64),
    rewards=data["rewards"], terminals=data["terminals"], timeouts=data["timeouts"],
    action_space=d3rlpy.ActionSpace.DISCRETE, action_size=int(args["num_actions"]))
encoder = d3rlpy.models.encoders.VectorEncoderFactory(hidden_units=args["hidden"])
if args["algo"] == "DiscreteCQL":
    algo = d3rlpy.algos.DiscreteCQLConfig(learning_rate=args["lr"], batch_size=args["batch"], gamma=args["gamma"],
        target_update_interval=args["target_interval"], encoder_factory=encoder).create(device="cpu:0")
else:
    algo = d3rlpy.algos.DiscreteBCConfig(learning_rate=args["lr"], batch_size=args["batch"],
        encoder_factory=encoder).create(device="cpu:0")
start = time.perf_counter()
algo.fit(dataset, n_steps=args["steps"], n_steps_per_epoch=args["steps"], show_progress=False,
         logger_adapter=d3rlpy.logging.NoopAdapterFactory(), save_interval=10**9)
train_s = time.perf_counter() - start
if args["minatar"]:
    from minatar import Environment

    class MinAtar:   # the suite's MinAtar protocol (envs/minatar.py): sticky 0.1, ramping, 6 actions, 10k cap

        def reset(self, seed):
            self.game = Environment(args["minatar"], sticky_action_prob=0.1, difficulty_ramping=True)
            self.game.seed(seed)
            self.game.reset()
            self.steps = 0
            return self.game.state().transpose(2, 0, 1), {}

        def step(self, action):
            reward, done = self.game.act(action)
            self.steps += 1
            return self.game.state().transpose(2, 0, 1), reward, done, self.steps >= 10_000, {}

    env = MinAtar()
else:
    env = gym.make(args["gym_id"])
returns = []
for episode in range(args["episodes"]):
    obs, _ = env.reset(seed=args["eval_seed"] + episode)
    total, done = 0.0, False
    while not done:
        action = int(algo.predict(np.asarray(obs, dtype=np.float32).reshape(1, -1))[0])
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    returns.append(total)
print(json.dumps({"return_mean": float(np.mean(returns)), "train_seconds": train_s}))
"""


def sh(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    """Run a command from the repository root; its output goes to ``log``; fail loudly."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(" ".join(cmd) + "\n\n" + result.stdout + "\n" + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return result


def train_behaviour(task: str, work: Path) -> Path:
    """The DQN run whose policy and replay make the datasets (trained once, then reused)."""
    root = work / task / "dqn"
    done = max(root.rglob("summary.json"), default=None)
    if done is not None:
        return done.parent
    spec = TASKS[task]
    sh([sys.executable, "train.py", "agent=dqn", *spec["env"], *spec["dqn"], "logger=none", "torch_threads=1",
        "checkpoint.include_replay=true", f"runs_root={root}"], work / "logs" / f"{task}-dqn.log")
    return max(root.rglob("summary.json")).parent


def build_datasets(task: str, run: Path, work: Path, size: int, presets: list[str]) -> dict[str, dict]:
    """Dataset files (and their npz exports) for each preset, with their metadata."""
    from replay.datasets import read_info

    out = {}
    for preset in presets:
        path = work / task / f"{preset}.arbor-replay"
        npz = work / task / f"{preset}.npz"
        if not (path.is_file() and npz.is_file()):
            extra = [f"size={size}"] if preset != "mixed" else []
            sh([sys.executable, "make_dataset.py", f"checkpoint={run}", f"preset={preset}", *extra, f"out={path}",
                f"export_npz={npz}", "eval_episodes=20"], work / "logs" / f"{task}-{preset}-dataset.log")
        info = read_info(path)
        behaviour = info.get("policy_return_mean")
        if behaviour is None:
            behaviour = info["episode_return_mean"]
        out[preset] = {"path": path, "npz": npz, "info": info, "behaviour": behaviour}
    return out


def task_steps(task: str, args) -> int:
    """Gradient steps of the task's offline runs: ``--steps``, else its preset's (conf/tuned/_offline_*.yaml)."""
    return args.steps or TASKS[task]["steps"]


def task_episodes(task: str, args) -> int:
    """Final evaluation episodes: ``--episodes``, else the task's default (20; MinAtar Breakout 100)."""
    return args.episodes or TASKS[task]["episodes"]


def run_key(task: str, preset: str, algo: str, seed: int, args) -> str:
    """Cache name of one run: a run is reused only with the same steps and evaluation episodes."""
    return f"{preset}-{algo}-{task_steps(task, args)}-e{task_episodes(task, args)}-s{seed}"


def run_ours(task: str, preset: str, dataset: Path, algo: str, seed: int, args, work: Path) -> float:
    steps, episodes = task_steps(task, args), task_episodes(task, args)
    root = work / task / "runs" / run_key(task, preset, algo, seed, args)
    summary = next(iter(sorted(root.rglob("summary.json"))), None)
    if summary is None and args.cached_only:
        return None
    if summary is None or args.fresh:
        sh([sys.executable, "train.py", *OURS[algo], *TASKS[task]["env"], f"agent.dataset={dataset}", f"seed={seed}",
            f"total_env_steps={steps}", f"eval.interval={steps}", f"eval.episodes={episodes}",
            "logger=none", "torch_threads=1", f"runs_root={root}", *args.override],
           work / "logs" / f"{task}-{preset}-{algo}-s{seed}.log")
        summary = max(root.rglob("summary.json"))
    return float(json.loads(summary.read_text())["eval/return_mean"])


def run_peer(task: str, preset: str, npz: Path, algo: str, seed: int, args, work: Path) -> float:
    import envs

    cache = work / task / "peers" / f"{run_key(task, preset, algo, seed, args)}.json"
    if cache.is_file() and not args.fresh:
        return float(json.loads(cache.read_text())["return_mean"])
    if args.cached_only:
        return None
    game = TASKS[task].get("minatar")
    env_cfg = {"kind": "minatar", "game": game} if game else {"kind": "gym", "id": TASKS[task]["gym_id"]}
    num_actions = envs.make_spec({**env_cfg, "name": task}).num_actions
    payload = {"npz": str(npz), "algo": algo.split("_", 1)[1], "seed": seed, "steps": task_steps(task, args),
               "batch": 256, "lr": 3e-4, "gamma": 0.99, "target_interval": 100, "hidden": [64, 64],
               "num_actions": num_actions, "gym_id": TASKS[task]["gym_id"], "minatar": TASKS[task].get("minatar"),
               "episodes": task_episodes(task, args),
               "eval_seed": 10_000 + seed}
    result = sh([args.d3rlpy_python, "-c", D3RLPY_SCRIPT, json.dumps(payload)],
                work / "logs" / f"{task}-{preset}-{algo}-s{seed}.log")
    line = [ln for ln in result.stdout.strip().splitlines() if ln.startswith("{")][-1]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(line)
    return float(json.loads(line)["return_mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="cartpole,acrobot,breakout")
    parser.add_argument("--presets", default="medium,mixed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None,
                        help="gradient steps per offline run (default: the task's preset, 20k; Breakout 50k)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="final evaluation episodes (default: 20; MinAtar Breakout 100)")
    parser.add_argument("--size", type=int, default=50_000, help="transitions in a medium dataset")
    parser.add_argument("--work", default="/tmp/arbor-crr-bench", help="runs, datasets and logs (reused)")
    parser.add_argument("--d3rlpy-python", default="/tmp/d3venv/bin/python")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument("--fresh", action="store_true", help="retrain offline runs even if results exist")
    parser.add_argument("--override", nargs="*", default=[], help="extra train.py overrides for our agents")
    parser.add_argument("--cached-only", action="store_true", help="report the runs already finished; train nothing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)
    tasks = [t for t in args.tasks.split(",") if t]
    presets = [p for p in args.presets.split(",") if p]
    peers = [] if args.no_peers or not Path(args.d3rlpy_python).exists() else list(PEERS)
    start = time.perf_counter()
    datasets = {}
    for task in tasks:
        run = train_behaviour(task, work)
        datasets[task] = build_datasets(task, run, work, args.size, presets)
    jobs = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for seed in range(args.seeds):     # seed-major: a cut-short run still covers every dataset
            for preset in presets:
                for task in tasks:
                    d = datasets[task][preset]
                    for algo in OURS:
                        jobs.append(((task, preset, algo, seed),
                                     pool.submit(run_ours, task, preset, d["path"], algo, seed, args, work)))
                    for algo in peers:
                        jobs.append(((task, preset, algo, seed),
                                     pool.submit(run_peer, task, preset, d["npz"], algo, seed, args, work)))
        results: dict[tuple[str, str, str], list[float]] = {}
        for (task, preset, algo, seed), future in jobs:
            value = future.result()
            if value is not None:
                results.setdefault((task, preset, algo), []).append(value)
                print(f"{task}-{preset} {algo} seed {seed}: {value:.1f} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
    report(tasks, presets, datasets, results, list(OURS) + peers, args, time.perf_counter() - start)


def report(tasks, presets, datasets, results, algos, args, seconds) -> None:
    import numpy as np

    header = ["dataset", "steps", "episodes", "behaviour"] + algos
    rows, figures, ratios, targets = [], {}, {}, {}
    for task in tasks:
        floor = TASKS[task]["floor"]
        for preset in presets:
            name = f"{task}-{preset}"
            behaviour = float(datasets[task][preset]["behaviour"])
            row = [name, str(task_steps(task, args)), str(task_episodes(task, args)), f"{behaviour:.1f}"]
            figures[f"{name}/behaviour"] = behaviour
            figures[f"{name}/steps"] = task_steps(task, args)
            figures[f"{name}/episodes"] = task_episodes(task, args)
            means = {}
            for algo in algos:
                values = results.get((task, preset, algo), [])
                if not values:
                    row.append("-")
                    continue
                means[algo] = float(np.mean(values))
                figures[f"{name}/{algo}"] = {"mean": means[algo], "std": float(np.std(values)), "seeds": values}
                row.append(f"{means[algo]:.1f} ± {np.std(values):.1f}")
            rows.append(row)
            for ours in ("crr_binary", "crr_exp"):
                for peer in ("bc", "offline_dqn", *PEERS):
                    if ours in means and peer in means:
                        ratios[f"{ours}/{peer}[{name}]"] = round((means[ours] - floor) / max(means[peer] - floor, 1e-9), 3)
                if ours in means:
                    ratios[f"{ours}/behaviour[{name}]"] = round((means[ours] - floor) / max(behaviour - floor, 1e-9), 3)
            if preset == "mixed":
                best = max(means.get("crr_binary", -1e9), means.get("crr_exp", -1e9))
                targets[name] = {"crr_best>=behaviour": best >= behaviour,
                                 "crr_best>=bc": best >= means.get("bc", float("inf"))}
            if "crr_binary" in means and "crr_exp" in means:
                targets[f"{name}/binary_vs_exp"] = "binary" if means["crr_binary"] > means["crr_exp"] else "exp"
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(f"\nFinal evaluation return ('episodes' seeded episodes after 'steps' gradient steps), mean ± std "
          f"over up to {args.seeds} seeds:\n")
    for r in [header] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    print("\ntargets:", json.dumps(targets))
    print(f"total {seconds:.0f} s")
    if args.json:
        print(json.dumps({"benchmark": "crr", "figures": {**figures, "targets": targets, "seconds": seconds},
                          "ratios": ratios}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
