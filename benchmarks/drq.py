"""DrQ / DrQ(epsilon) benchmarks: training throughput against SB3's DQN, an ablation, run-time extrapolation.

Sections (``--sections throughput,ablation,games``):

``throughput``
    Env steps per second while learning, on the same Atari game, the same
    network (Nature CNN + linear Q head), batch size 32 and update ratio (one
    update per env step, target synced every update), ours vs Stable-Baselines3's
    ``DQN``, measured side by side in this process (alternating rounds, torch
    threads equal). Ours runs DrQ(epsilon)'s update (double Q, 10-step returns,
    augmentation) with the dueling head off so that the networks match; a second
    line times the full DrQ(epsilon) configuration (dueling on), from which the
    wall time of one 100k-step run is extrapolated (random warm-up steps + learning
    steps at the measured rates + the final 100-episode evaluation is not counted).

``ablation``
    Short runs of ``train.py agent=drq env=atari`` on one game: no augmentation,
    augmentation only (K = M = 1), + M = 2, + K = 2; final evaluation return and
    wall time of each. With ``--ablation-runs <dirs>`` it trains nothing and
    tabulates finished runs instead (e.g. full 100k-step runs of each variant,
    started with ``train.py`` and the variant's overrides, ``ablation_overrides``):
    each run's variant is read from its stored config, its score as the games
    section reads it, and the table gives each variant's runs, mean and
    human-normalised mean per game.

``games``
    Human-normalised per-game scores and IQM / median / mean with stratified
    bootstrap CIs of finished runs (``--runs <dirs>``) or of scores measured
    elsewhere (``--scores boxing=19.9,19.1,21.8 ...``), next to the published
    DrQ(epsilon) aggregates; then each game's mean against the spread of the
    100 published DrQ(epsilon) runs of that game (min, 5%, median, 95%, max, and
    the fraction of published runs below our mean). Runs whose stored config
    departs from the atari100k protocol (e.g. no no-op starts) are grouped apart,
    named with the settings that differ, and not counted toward the target; so are
    runs of other agents kept in the same folder (``<folder> [dqn]``).

``augment``
    The random shift of a replayed batch (32 stacks of 4 x 84 x 84 uint8 sliced
    from a larger gather, as replay samples are): the compiled kernel, the torch
    gather it replaces, and the channels-last kernel against the kernel followed
    by torch's layout conversion; then whole DrQ(epsilon) updates (``--threads``)
    with the compiled, channels-last path against the torch gather and float
    layout conversion inside the convolution, in alternating rounds (process time).

``breakdown``
    Milliseconds per learning step, ours (the same network as SB3's) and SB3's
    DQN: the loop's parts (acting and env step, replay sample, augmentation,
    update) and one update alone on a fixed batch, which is the networks'
    arithmetic (the same for both) plus the optimizer step.

``--json`` prints one JSON object as the last line. Examples:

    python benchmarks/drq.py --sections throughput --game pong --measure 1000 --json
    python benchmarks/drq.py --sections ablation --game boxing --ablation-steps 6000
    python benchmarks/drq.py --sections ablation --ablation-runs runs/drq-atari-boxing
    python benchmarks/drq.py --sections augment --rounds 8
    python benchmarks/drq.py --sections breakdown --game pong --threads 2 --measure 600
    python benchmarks/drq.py --sections games --scores boxing=19.9,19.1,21.8 krull=2607,4915,4503
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Published DrQ(epsilon) aggregates on the 26 games, 100k steps (human-normalised), as tabulated in
# Schwarzer et al. 2023 ("Bigger, Better, Faster", Table A.1) from Agarwal et al. 2021's runs.
PUBLISHED_DRQ_EPS = {"iqm": 0.280, "median": 0.313, "mean": 0.465}

CAMEL = {"pong": "Pong", "breakout": "Breakout", "boxing": "Boxing", "ms_pacman": "MsPacman", "qbert": "Qbert",
         "seaquest": "Seaquest", "alien": "Alien", "freeway": "Freeway", "kangaroo": "Kangaroo"}


def drq_eps_settings(**changes) -> dict:
    """conf/agent/drq.yaml with conf/tuned/drq_atari.yaml on top (the DrQ(epsilon) agent settings)."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(ROOT / "conf" / "agent" / "drq.yaml")
    tuned = OmegaConf.load(ROOT / "conf" / "tuned" / "drq_atari.yaml")
    merged = OmegaConf.to_container(OmegaConf.merge(base, tuned.agent), resolve=True)
    merged.update(changes)
    return merged


def drq_agent(game: str, seed: int, **changes):
    """Our DrQ(epsilon) agent (``changes`` on top of its settings) on one atari100k env of ``game``."""
    import torch

    import envs
    from agents.drq import DrQ, DrQConfig

    cfg = DrQConfig(**drq_eps_settings(**changes))
    cfg.validate()
    env_cfg = {"kind": "atari", "game": game, "protocol": "atari100k", "num_envs": 1}
    env, spec = envs.make(env_cfg, num_envs=1, seed=seed)
    return DrQ(cfg, spec, torch.device("cpu"), env=env, total_steps=100_000, seed=seed), env


def ours_rate(game: str, warmup: int, measure: int, seed: int, **changes) -> dict:
    """Env steps/s of our DrQ over ``measure`` learning steps after ``warmup`` random ones."""
    agent, env = drq_agent(game, seed, learning_starts=warmup, buffer_size=warmup + measure + 100, **changes)
    start = time.perf_counter()
    while agent.env_steps < warmup:
        agent.train_iteration()
    warm = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    while agent.env_steps < warmup + measure:
        agent.train_iteration()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    env.close()
    return {"steps_per_second": measure / elapsed, "steps_per_cpu_second": measure / cpu,
            "warmup_steps_per_second": warmup / warm, "grad_steps": agent.grad_steps}


def sb3_model(game: str, warmup: int, measure: int, seed: int):
    """SB3's DQN (CnnPolicy) with our network's shape, batch 32 and one update per env step, and its env."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = VecFrameStack(make_atari_env(f"{CAMEL.get(game, game.title())}NoFrameskip-v4", n_envs=1, seed=seed), 4)
    model = DQN("CnnPolicy", env, learning_rate=1e-4, buffer_size=warmup + measure + 100, learning_starts=warmup,
                batch_size=32, gamma=0.99, train_freq=1, gradient_steps=1, target_update_interval=1,
                exploration_fraction=0.05, exploration_final_eps=0.01, device="cpu", seed=seed,
                optimize_memory_usage=True, replay_buffer_kwargs={"handle_timeout_termination": False},
                policy_kwargs={"optimizer_kwargs": {"eps": 1.5e-4}}, verbose=0)
    return model, env


def sb3_rate(game: str, warmup: int, measure: int, seed: int) -> dict:
    """Env steps/s of SB3's DQN (CnnPolicy) with the same network, batch and update ratio."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Clock(BaseCallback):
        def __init__(self):
            super().__init__()
            self.marks: dict[str, float] = {}

        def _on_step(self) -> bool:
            if self.num_timesteps == 1:
                self.marks["start"] = time.perf_counter()
            if self.num_timesteps == warmup:
                self.marks["warm"], self.marks["warm_cpu"] = time.perf_counter(), time.process_time()
            if self.num_timesteps == warmup + measure:
                self.marks["end"], self.marks["end_cpu"] = time.perf_counter(), time.process_time()
            return True

    model, env = sb3_model(game, warmup, measure, seed)
    clock = Clock()
    model.learn(total_timesteps=warmup + measure, callback=clock)
    env.close()
    marks = clock.marks
    return {"steps_per_second": measure / (marks["end"] - marks["warm"]),
            "steps_per_cpu_second": measure / (marks["end_cpu"] - marks["warm_cpu"]),
            "warmup_steps_per_second": warmup / (marks["warm"] - marks["start"])}


def _time_calls(obj, name: str, totals: dict[str, float]) -> None:
    """Wrap ``obj.name`` so that each call adds its wall time to ``totals[name]``."""
    inner = getattr(obj, name)

    def timed(*a, **k):
        start = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(obj, name, timed)


def _step_row(step_ms: float, parts: dict[str, float], steps: int, alone_ms: float) -> dict[str, float]:
    """One contender's breakdown row: the whole step, each timed part per step, and one update alone (ms)."""
    return {"step_ms": step_ms, **{f"{k}_ms": 1e3 * v / steps for k, v in parts.items()}, "update_alone_ms": alone_ms}


def breakdown(args) -> dict:
    """Where a learning step's wall time goes, ours (same network) and SB3's: the loop's parts, then
    one update alone on a fixed batch (the network's arithmetic: both take the same FLOPs)."""
    import torch

    from runtime.allocator import keep_freed_memory

    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    figures: dict[str, dict[str, float]] = {}
    agent, env = drq_agent(args.game, args.seed, learning_starts=args.warmup,
                           buffer_size=args.warmup + args.measure + 100, dueling=False)
    while agent.env_steps < args.warmup:
        agent.train_iteration()
    parts: dict[str, float] = {}
    for obj, name in ((agent, "collect"), (agent, "learn"), (agent.replay, "sample"), (agent, "augment")):
        _time_calls(obj, name, parts)
    start = time.perf_counter()
    while agent.env_steps < args.warmup + args.measure:
        agent.train_iteration()
    step = 1e3 * (time.perf_counter() - start) / args.measure
    batch = agent.replay.sample(32)
    figures["ours"] = _step_row(step, parts, args.measure, timed_ms(
        lambda: agent.gradient_step(batch, agent.shares_target), 100, clock=time.perf_counter))
    env.close()

    model, env = sb3_model(args.game, args.warmup, args.measure, args.seed)
    model.learn(total_timesteps=args.warmup)
    parts = {}
    for obj, name in ((model, "collect_rollouts"), (model, "train"), (model.replay_buffer, "sample")):
        _time_calls(obj, name, parts)
    start = time.perf_counter()
    model.learn(total_timesteps=args.measure, reset_num_timesteps=False)
    step = 1e3 * (time.perf_counter() - start) / args.measure
    data = model.replay_buffer.sample(32)
    gamma = model.gamma

    def sb3_update() -> None:   # SB3 DQN.train's arithmetic on one fixed batch
        with torch.no_grad():
            next_q = model.q_net_target(data.next_observations).max(dim=1)[0].reshape(-1, 1)
            target = data.rewards + (1 - data.dones) * gamma * next_q
        q = torch.gather(model.q_net(data.observations), 1, data.actions.long())
        loss = torch.nn.functional.smooth_l1_loss(q, target)
        model.policy.optimizer.zero_grad()
        loss.backward()
        model.policy.optimizer.step()

    figures["sb3_dqn"] = _step_row(step, parts, args.measure, timed_ms(sb3_update, 100, clock=time.perf_counter))
    env.close()
    print(f"{args.game}, {args.measure} learning steps after {args.warmup} random ones, torch threads {args.threads}"
          f" (load {load_average()}); milliseconds per env step:")
    for name, row in figures.items():
        print(f"  {name:8s} " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in row.items()))
    need = figures["sb3_dqn"]["step_ms"] / 1.5
    print(f"1.5x SB3 needs a step of at most {need:.2f} ms; ours takes {figures['ours']['step_ms']:.2f}, "
          f"of which one update alone {figures['ours']['update_alone_ms']:.2f}")
    return {"figures": figures, "ratios": {"ours/sb3_dqn_step": figures["sb3_dqn"]["step_ms"] / figures["ours"]["step_ms"]}}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def throughput(args) -> dict:
    import torch

    from runtime.allocator import keep_freed_memory

    torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    rows: dict[str, list[dict]] = {"ours_same_network": [], "sb3_dqn": [], "ours_drq_eps": []}
    loads = [load_average()]
    runs = {"ours_same_network": lambda seed: ours_rate(args.game, args.warmup, args.measure, seed, dueling=False),
            "sb3_dqn": lambda seed: sb3_rate(args.game, args.warmup, args.measure, seed),
            "ours_drq_eps": lambda seed: ours_rate(args.game, args.warmup, args.measure, seed)}
    order = list(runs)
    for r in range(args.rounds):
        seed = args.seed + r
        # Rotate who goes first, so that any effect of the position within a round falls on each alike.
        for name in order[r % 3:] + order[:r % 3]:
            rows[name].append(runs[name](seed))
            loads.append(load_average())
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]['steps_per_second']:.1f} steps/s wall, "
                                         f"{v[-1]['steps_per_cpu_second']:.1f} per CPU second" for k, v in rows.items())
              + f" (load {loads[-1]})", flush=True)
    med = {k: float(np.median([x["steps_per_second"] for x in v])) for k, v in rows.items()}
    med_cpu = {k: float(np.median([x["steps_per_cpu_second"] for x in v])) for k, v in rows.items()}
    warm = float(np.median([x["warmup_steps_per_second"] for x in rows["ours_drq_eps"]]))
    learn_steps = 100_000 - 1600
    minutes = (1600 / warm + learn_steps / med["ours_drq_eps"]) / 60
    minutes_cpu = (1600 / warm + learn_steps / med_cpu["ours_drq_eps"]) / 60
    print(f"\n{args.game}, batch 32, 1 update per env step, {args.measure} learning steps after {args.warmup} "
          f"random ones, median of {args.rounds} round(s), torch threads {args.threads}, "
          f"freed memory kept: {kept}")
    print(f"{'':28s} {'env steps/s (wall)':>20s} {'env steps per CPU s':>20s}")
    for key, value in med.items():
        print(f"{key:28s} {value:20.1f} {med_cpu[key]:20.1f}")
    ratio = med["ours_same_network"] / med["sb3_dqn"]
    ratio_cpu = med_cpu["ours_same_network"] / med_cpu["sb3_dqn"]
    print(f"ours / SB3 DQN (same network): {ratio:.2f}x wall, {ratio_cpu:.2f}x per CPU second (target >= 1.5x)")
    print(f"one 100k-step DrQ(eps) run extrapolated: {minutes:.0f} min at the measured wall rate, "
          f"{minutes_cpu:.0f} min with a whole core (target <= 45 min); load averages {loads}")
    return {"figures": {"steps_per_second": med, "steps_per_cpu_second": med_cpu, "rounds": rows,
                        "extrapolated_100k_minutes": minutes, "extrapolated_100k_minutes_whole_core": minutes_cpu,
                        "load_averages": loads, "game": args.game, "keep_freed_memory": kept},
            "ratios": {"ours/sb3_dqn": ratio, "ours/sb3_dqn_cpu_time": ratio_cpu}}


def timed_ms(fn: Callable[[], object], reps: int, clock: Callable[[], float] = time.process_time) -> float:
    """Milliseconds per call of ``fn`` by ``clock`` (process time unless told) after one warm-up call."""
    fn()
    start = clock()
    for _ in range(reps):
        fn()
    return (clock() - start) / reps * 1e3


def augment(args) -> dict:
    import torch

    import agents._augment as aug

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    pairs = torch.randint(0, 256, (32, 8, 84, 84), dtype=torch.uint8, generator=gen)
    batch, offsets = pairs[:, 4:], aug.random_shift_offsets(32, 4, gen)
    kernel = aug._shift_kernel
    if kernel is None:
        raise SystemExit("the compiled shift kernel is missing: rebuild with `pip install -e .`")
    shift = {"kernel": lambda: aug.shift(batch, offsets),
             "kernel_channels_last": lambda: aug.shift(batch, offsets, channels_last=True),
             "kernel_then_torch_channels_last": lambda: aug.shift(batch, offsets).contiguous(
                 memory_format=torch.channels_last)}
    shift_ms = {name: [] for name in [*shift, "torch_gather"]}
    for _ in range(max(1, args.rounds)):
        for name, fn in shift.items():
            shift_ms[name].append(timed_ms(fn, 200))
        aug._shift_kernel = None
        try:
            shift_ms["torch_gather"].append(timed_ms(lambda: aug.shift(batch, offsets), 200))
        finally:
            aug._shift_kernel = kernel
    agent, env = drq_agent(args.game, args.seed, learning_starts=1000, buffer_size=5000)
    while agent.env_steps < 1100:
        agent.train_iteration()
    torsos = [agent.q.torso, agent.q_target.torso]

    def configure(compiled: bool) -> None:
        aug._shift_kernel = kernel if compiled else None
        agent.augment.channels_last = compiled
        for torso in torsos:
            torso.channels_last = compiled

    update_ms: dict[str, list[float]] = {"compiled_channels_last": [], "torch_gather": []}
    try:
        for _ in range(max(1, args.rounds)):
            for name, compiled in (("compiled_channels_last", True), ("torch_gather", False)):
                configure(compiled)
                update_ms[name].append(timed_ms(agent.learn, 40))
    finally:
        configure(True)
        env.close()
    shift_med = {name: float(np.median(v)) for name, v in shift_ms.items()}
    update_med = {name: float(np.median(v)) for name, v in update_ms.items()}
    print(f"random shift, 32 x 4 x 84 x 84 uint8, {args.threads} thread(s), median of {args.rounds} round(s), "
          "process-time ms per call")
    for name, value in shift_med.items():
        print(f"  {name:34s} {value:7.3f}")
    print(f"DrQ(epsilon) update on {args.game}, batch 32, ms per update")
    for name, value in update_med.items():
        print(f"  {name:34s} {value:7.2f}")
    ratios = {"shift_gather/kernel": shift_med["torch_gather"] / shift_med["kernel"],
              "update_gather/compiled": update_med["torch_gather"] / update_med["compiled_channels_last"]}
    print(f"update: {ratios['update_gather/compiled']:.3f}x faster with the compiled channels-last path")
    return {"figures": {"shift_ms": shift_med, "update_ms": update_med,
                        "rounds": {"shift": shift_ms, "update": update_ms}}, "ratios": ratios}


# The ablation's variants: (augmentation, M = q_augmentations, K = target_augmentations).
ABLATION = {
    "no_augmentation": ("none", 1, 1),
    "augmentation_only": ("shift_intensity", 1, 1),
    "plus_M2": ("shift_intensity", 2, 1),
    "plus_M2_K2": ("shift_intensity", 2, 2),
}


def ablation_overrides(name: str) -> list[str]:
    """``train.py`` overrides of one variant, e.g. for a full-budget run of it."""
    augmentation, m, k = ABLATION[name]
    return [f"agent.augmentation={augmentation}", f"agent.q_augmentations={m}", f"agent.target_augmentations={k}"]


def ablation_variant(agent: dict) -> str:
    """The ablation variant a run's stored ``agent`` config plays, or a name that says what it plays instead."""
    key = (str(agent.get("augmentation", "none")), int(agent.get("q_augmentations", 1)),
           int(agent.get("target_augmentations", 1)))
    name = next((n for n, v in ABLATION.items() if v == key), f"augmentation={key[0]}, M={key[1]}, K={key[2]}")
    if key[1] > 1 and agent.get("q_average", "loss") != "loss":
        name += f" (q_average={agent['q_average']})"
    return name


def ablation_from_runs(paths: list[str]) -> dict:
    """``{game: {variant: {"scores", "sources", "mean", "hns_mean"}}}`` of finished ``agent=drq`` Atari runs
    at or under ``paths``, each scored as the games section scores it (``eval.json`` first). Runs that
    did not play the atari100k protocol are named with the settings that differ."""
    from envs.atari import protocol_departures
    from runtime.atari_scores import human_normalized
    from runtime.compare import finished_atari_runs

    out: dict = {}
    seen: set[Path] = set()
    for raw in paths:
        for run, config, score, source in finished_atari_runs(Path(raw).expanduser()):
            if run.resolve() in seen:   # a run reached twice counts once
                continue
            seen.add(run.resolve())
            env, agent = config["env"], config.get("agent") or {}
            if agent.get("name") != "drq":
                continue
            variant = ablation_variant(agent)
            differ = protocol_departures(env)
            if differ:
                variant += f" (not atari100k: {', '.join(differ)})"
            entry = out.setdefault(str(env["game"]), {}).setdefault(variant, {"scores": [], "sources": [], "runs": []})
            entry["scores"].append(score)
            entry["sources"].append(source)
            entry["runs"].append(str(run))
    order = list(ABLATION)
    for game, variants in out.items():
        for entry in variants.values():
            entry["mean"] = float(np.mean(entry["scores"]))
            entry["hns_mean"] = float(np.mean(human_normalized(game, np.array(entry["scores"]))))
        # the four variants in the ablation's order, anything else after them
        out[game] = dict(sorted(variants.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order),
                                                                  kv[0])))
    return out


def ablation(args) -> dict:
    if args.ablation_runs:
        missing = [raw for raw in args.ablation_runs if not Path(raw).expanduser().exists()]
        if missing:
            raise SystemExit(f"--ablation-runs: {', '.join(missing)} does not exist")
        found = ablation_from_runs(args.ablation_runs)
        if not found:
            raise SystemExit(f"--ablation-runs: no finished agent=drq Atari runs under {args.ablation_runs}")
        for game, variants in found.items():
            print(f"\nAblation on {game} from finished runs (score: eval.py's evaluation, else the last in-training one)")
            print(f"{'variant':24s} {'runs':>4s} {'mean':>9s} {'human-norm.':>11s}  scores")
            for variant, entry in variants.items():
                marks = ", ".join(f"{v:.2f}" + ("*" if src == "in_training" else "")
                                  for v, src in zip(entry["scores"], entry["sources"]))
                print(f"{variant:24s} {len(entry['scores']):4d} {entry['mean']:9.2f} {entry['hns_mean']:11.3f}  {marks}")
        if any(src == "in_training" for vs in found.values() for e in vs.values() for src in e["sources"]):
            print("* scored from the run's last in-training evaluation (no eval.json): "
                  "`python eval.py checkpoint=<run dir> episodes=100` gives the protocol's")
        return {"figures": {"ablation_runs": found}, "ratios": {}}
    out_root = Path(args.out) / "ablation"
    results = {}
    for name in ABLATION:
        runs_root = out_root / name
        start = time.perf_counter()
        cmd = [sys.executable, str(ROOT / "train.py"), "agent=drq", "env=atari", f"env.game={args.game}",
               "logger=none", f"total_env_steps={args.ablation_steps}", f"eval.interval={args.ablation_steps}",
               f"eval.episodes={args.ablation_episodes}", f"seed={args.seed}", f"torch_threads={args.threads}",
               f"runs_root={runs_root}", *ablation_overrides(name)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                              env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(args.threads)})
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            results[name] = {"error": proc.returncode}
            continue
        summary = json.loads(next(runs_root.rglob("summary.json")).read_text())
        results[name] = {"return_mean": summary["eval/return_mean"], "ci": [summary["eval/return_ci_low"],
                                                                         summary["eval/return_ci_high"]],
                         "wall_minutes": wall / 60, "load": load_average()}
        print(f"{name:20s} return {summary['eval/return_mean']:8.2f} "
              f"[{summary['eval/return_ci_low']:.2f}, {summary['eval/return_ci_high']:.2f}]  "
              f"{wall / 60:5.1f} min  (load {load_average()})", flush=True)
    return {"figures": {"ablation": results, "game": args.game, "steps": args.ablation_steps}, "ratios": {}}


def games(args) -> dict:
    from runtime.atari_scores import spread_check
    from runtime.compare import (
        atari_aggregate_table,
        atari_final_scores,
        format_atari_table,
    )

    departures: dict[str, list[str]] = {}
    in_training: list[str] = []
    agents: dict[str, str] = {}
    groups = (atari_final_scores(args.runs, departures=departures, in_training=in_training, agents=agents)
              if args.runs else {})
    if args.scores:
        groups["--scores"] = parse_scores(args.scores)
    if not groups:
        print("no finished Atari runs under --runs and no --scores")
        return {"figures": {}, "ratios": {}}
    table = atari_aggregate_table(groups)
    print(format_atari_table(table))
    print("published DrQ(eps), 26 games: " + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED_DRQ_EPS.items()))
    figures = {name: {k: v for k, v in entry.items() if k != "matrix"} for name, entry in table.items()}
    print("\nOur mean per game against the 100 published DrQ(eps) runs (Agarwal et al. 2021's score data)")
    print(f"{'group':14s} {'game':16s} {'runs':>4s} {'ours':>9s} | {'min':>9s} {'5%':>9s} {'median':>9s} "
          f"{'95%':>9s} {'max':>9s} | {'rank':>5s} within")
    ratios = {}
    for name, games_of_group in groups.items():
        spread = spread_check(games_of_group)
        figures[name]["spread"] = spread
        for game, row in spread.items():
            print(f"{name[:14]:14s} {game:16s} {row['runs']:>4d} {row['mean']:9.1f} | {row['published_min']:9.1f} "
                  f"{row['published_p5']:9.1f} {row['published_median']:9.1f} {row['published_p95']:9.1f} "
                  f"{row['published_max']:9.1f} | {row['rank']:5.2f} {'yes' if row['within'] else 'NO'}")
        if name in departures:   # the published runs played atari100k: other settings are not comparable
            print(f"{name}: not counted toward the target (these runs did not play atari100k)")
            continue
        if agents.get(name, "drq") not in ("drq", "unknown agent"):   # e.g. DQN runs kept in the same folder
            print(f"{name}: not counted toward the target (agent {agents[name]}, not drq)")
            continue
        met = sorted(g for g, row in spread.items() if row["within"] and row["runs"] >= 3)
        ratios[f"{name}/games_within_spread_3_runs"] = len(met)
        print(f"{name}: {len(met)} game(s) with at least 3 runs and the mean within the published runs' range "
              f"(target: at least 3){': ' + ', '.join(met) if met else ''}")
    if in_training:   # the published runs are 100-episode evaluations after training
        print(f"\n{len(in_training)} run(s) scored from their in-training evaluation, not from "
              "`python eval.py checkpoint=<run> episodes=100` (the protocol's):")
        for run in in_training:
            print(f"  {run}")
    figures["in_training_scores"] = in_training
    return {"figures": figures, "ratios": ratios}


def parse_scores(items: list[str]) -> dict[str, list[float]]:
    """``["boxing=19.9,19.1,21.8", ...]`` -> ``{"boxing": [19.9, 19.1, 21.8], ...}`` (scores measured elsewhere)."""
    from runtime.atari_scores import canonical

    out: dict[str, list[float]] = {}
    for item in items:
        game, sep, values = item.partition("=")
        try:
            scores = [float(v) for v in values.split(",")] if sep else []
        except ValueError:
            scores = []
        if not scores:
            raise SystemExit(f"--scores {item!r}: expected GAME=SCORE[,SCORE...], e.g. boxing=19.9,19.1,21.8")
        out.setdefault(canonical(game), []).extend(scores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="throughput", help="throughput,ablation,games,augment,breakdown")
    parser.add_argument("--game", default="pong")
    parser.add_argument("--warmup", type=int, default=1600)
    parser.add_argument("--measure", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="tune glibc's malloc as train.py does (runtime/allocator.py); both contenders share it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablation-steps", type=int, default=6000)
    parser.add_argument("--ablation-episodes", type=int, default=10)
    parser.add_argument("--ablation-runs", nargs="*", default=[],
                        help="ablation section: tabulate finished runs (any length) instead of training short ones")
    parser.add_argument("--runs", nargs="*", default=[])
    parser.add_argument("--scores", nargs="*", default=[],
                        help="games section: final scores measured elsewhere, GAME=SCORE[,SCORE...] per game")
    parser.add_argument("--out", default="/tmp/arbor-drq-bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures, ratios = {}, {}
    for section in args.sections.split(","):
        print(f"== {section} ==", flush=True)
        result = {"throughput": throughput, "ablation": ablation, "games": games, "augment": augment,
                  "breakdown": breakdown}[section](args)
        figures[section] = result["figures"]
        ratios.update(result["ratios"])
    if args.json:
        print(json.dumps({"benchmark": "drq", "figures": figures, "ratios": ratios}, default=float))


if __name__ == "__main__":
    main()
