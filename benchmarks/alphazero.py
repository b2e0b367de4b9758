"""Belief-gradient AlphaZero: the issue's targets, self-play throughput and an ablation.

    python benchmarks/alphazero.py                       # tic-tac-toe target + throughput (about 3 min)
    python benchmarks/alphazero.py --ablation-seconds 40 # + belief-target / acting ablation on tic-tac-toe
    python benchmarks/alphazero.py --sections ablation --ablation-game connect_four --ablation-seconds 300
    python benchmarks/alphazero.py --c4-minutes 60       # + the full Connect Four run, then vs mcts:1000
    python benchmarks/alphazero.py --c4-run <run dir> --sections c4   # evaluate an existing Connect Four run
    python benchmarks/alphazero.py --c4-minutes 60 --sections c4 --c4-override agent.belief_target=optimal
    python benchmarks/alphazero.py --json                # one JSON line last

Sections:

* ``ttt``: trains with the shipped tuned config (``conf/tuned/alphazero_tictactoe.yaml``,
  exactly what ``python train.py agent=alphazero env=tictactoe`` runs), pausing the clock
  every ``--ttt-check`` positions to play 200 games against perfect play (both colours).
  Reports the training seconds until the first evaluation with no losses, and the final
  result. Peer: OpenSpiel's MCTS bot (random rollouts, 1000 simulations) against the same
  perfect player.
* ``throughput``: self-play positions per second with the tuned tic-tac-toe and Connect Four
  settings (no learning), and the share of time in the network, the search core
  (select / expand / backup in C++) and the game logic (restore / step / clone / observation
  of the real simulator); "other" is the rest (beliefs, acting, bookkeeping).
* ``ablation``: equal wall-clock training (``--ablation-seconds`` each) on tic-tac-toe or
  Connect Four (``--ablation-game``) for ``visits`` / ``gumbel`` / ``optimal`` belief targets
  and argmax / sampled acting; scored by the raw network (no search: argmax of the belief
  head) and a 16-simulation search, against perfect and random play on tic-tac-toe, against
  ``--ablation-opponent`` (default OpenSpiel MCTS, 200 simulations) on Connect Four.
* ``c4``: Connect Four against OpenSpiel's MCTS bot (``--c4-opponent``, default mcts:1000),
  ``--c4-games`` games with colours alternating; trains first for ``--c4-minutes`` or
  evaluates ``--c4-run``'s latest checkpoint; optionally an Elo ladder of the run.
  ``--c4-override`` (repeatable) passes a setting to the training run, e.g. another belief.

Figures are measured on a shared machine: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))


def compose(overrides: list[str]):
    """The validated settings ``python train.py <overrides>`` would run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runtime.config import validate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return validate(cfg), cfg


def build_agent(overrides: list[str], seed: int = 0, agent_overrides: dict[str, Any] | None = None):
    """Env and agent as the trainer builds them (torch threads from the config)."""
    import dataclasses

    import torch
    from omegaconf import OmegaConf

    import envs
    from agents.alphazero import AlphaZero

    settings, cfg = compose(overrides + ["logger=none", f"seed={seed}"])
    if settings.run.torch_threads > 0:
        torch.set_num_threads(settings.run.torch_threads)
    agent_cfg = dataclasses.replace(settings.agent, **(agent_overrides or {}))
    agent_cfg.validate()
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    game, spec = envs.make(env_cfg, num_envs=settings.env.num_envs, seed=seed)
    torch.manual_seed(seed)
    agent = AlphaZero(agent_cfg, spec, torch.device("cpu"), env=game, total_steps=settings.run.total_env_steps,
                      seed=seed)
    return agent, settings, env_cfg


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------------ tic-tac-toe
def bench_ttt(check_every: int, seed: int) -> dict[str, Any]:
    from envs.games import MCTSBotPlayer, PerfectTicTacToePlayer, play_match

    agent, settings, _ = build_agent(["agent=alphazero", "env=tictactoe"], seed)
    budget = settings.run.total_env_steps
    train_seconds, first_clean, curve = 0.0, None, []
    next_check = check_every
    while agent.env_steps < budget:
        start = time.perf_counter()
        agent.train_iteration()
        train_seconds += time.perf_counter() - start
        if agent.env_steps >= next_check or agent.env_steps >= budget:
            next_check += check_every
            result = play_match(agent.player(), PerfectTicTacToePlayer(), "tic_tac_toe", 200, seed=seed + 1)
            curve.append((agent.env_steps, round(train_seconds, 1), result.losses, result.draws))
            print(f"  ttt: {agent.env_steps:>7,} positions  {train_seconds:6.1f} s training  vs perfect "
                  f"W/D/L {result.wins}/{result.draws}/{result.losses}   ({load()})", flush=True)
            if result.losses == 0 and first_clean is None:
                first_clean = (agent.env_steps, train_seconds)
    final = play_match(agent.player(), PerfectTicTacToePlayer(), "tic_tac_toe", 200, seed=seed + 2)
    raw = play_match(agent.player(simulations=0), PerfectTicTacToePlayer(), "tic_tac_toe", 200, seed=seed + 2)
    out: dict[str, Any] = {
        "ttt_train_seconds": train_seconds, "ttt_positions": agent.env_steps,
        "ttt_seconds_to_no_losses": first_clean[1] if first_clean else None,
        "ttt_positions_to_no_losses": first_clean[0] if first_clean else None,
        "ttt_final_vs_perfect_losses": final.losses, "ttt_final_vs_perfect_draws": final.draws,
        "ttt_final_vs_perfect_points": final.score, "ttt_raw_network_vs_perfect_losses": raw.losses,
        "ttt_curve": curve,
    }
    try:
        peer = play_match(MCTSBotPlayer(simulations=1000), PerfectTicTacToePlayer(), "tic_tac_toe", 200,
                          seed=seed + 2)
        out.update(peer_mcts1000_vs_perfect_losses=peer.losses, peer_mcts1000_vs_perfect_points=peer.score)
    except ModuleNotFoundError:
        pass
    return out


# -------------------------------------------------------------------------- throughput
class Timers:
    """Wraps functions to add their *exclusive* wall time (minus wrapped callees) to named buckets."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stack: list[float] = []          # time spent in wrapped callees of each open call
        self.patched: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, bucket: str) -> None:
        original = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            timers.stack.append(0.0)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = timers.stack.pop()
                timers.seconds[bucket] = timers.seconds.get(bucket, 0.0) + elapsed - inner
                if timers.stack:
                    timers.stack[-1] += elapsed

        setattr(owner, name, timed)
        self.patched.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self.patched):
            setattr(owner, name, original)


def bench_throughput(env: str, plies: int, seed: int) -> dict[str, float]:
    """Self-play positions/s and time shares: network, search (core + loop glue), game logic, beliefs, other."""
    from envs.games import base as game_base
    from planners import mcts

    agent, _, _ = build_agent(["agent=alphazero", f"env={env}"], seed)
    agent.self_play(2)                                     # warm-up (allocations, first search)
    timers = Timers()
    game_cls = type(agent.game)
    for name in ("restore", "step", "clone", "observation", "legal_mask", "terminal", "outcome_for_to_play",
                 "take", "spawn", "num_moves", "to_play", "outcome", "reset_games"):
        timers.wrap(game_cls, name, "game")
    for name in ("take", "put"):
        timers.wrap(game_base.GameState, name, "game")
    timers.wrap(agent, "evaluate_network", "network")
    timers.wrap(agent, "belief", "belief")
    timers.wrap(mcts.Forest, "run", "search")
    timers.wrap(mcts.Forest, "results", "search")
    timers.wrap(mcts.Forest, "set_roots", "search")
    start = time.perf_counter()
    before = agent.env_steps
    try:
        agent.self_play(plies)
    finally:
        timers.restore()
    total = time.perf_counter() - start
    positions = agent.env_steps - before
    shares = {k: v / total for k, v in timers.seconds.items()}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return {f"{env}_selfplay_positions_per_s": positions / total,
            **{f"{env}_share_{k}": v for k, v in shares.items()}}


# ---------------------------------------------------------------------------- ablation
def bench_ablation(seconds: float, seed: int, game: str = "tictactoe", opponent: str = "mcts:200",
                   games: int = 40) -> list[dict[str, Any]]:
    """Equal wall-clock training of each belief target / acting rule, then matches.

    Tic-tac-toe: 200 games against perfect play and against random play. Connect Four:
    ``games`` games (colours alternating) against ``opponent``. Each agent plays with its
    raw network (no search) and with a 16-simulation search.
    """
    from envs.games import PerfectTicTacToePlayer, RandomPlayer, play_match
    from runtime.match_eval import evaluate_against

    variants = [("visits", "puct", "temperature"), ("gumbel", "gumbel", "temperature"),
                ("optimal", "puct", "temperature"), ("visits", "puct", "argmax"), ("visits", "puct", "sample")]
    rows = []
    for belief, algorithm, act in variants:
        agent, _, env_cfg = build_agent(["agent=alphazero", f"env={game}"], seed,
                                        {"belief_target": belief, "algorithm": algorithm, "act": act})
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            agent.train_iteration()
        row = {"game": game, "belief_target": belief, "algorithm": algorithm, "act": act,
               "positions": agent.env_steps, "train_seconds": time.perf_counter() - start}
        for sims in (0, 16):
            if game == "tictactoe":
                perfect = play_match(agent.player(simulations=sims), PerfectTicTacToePlayer(), "tic_tac_toe", 200,
                                     seed=seed + 3)
                rnd = play_match(agent.player(simulations=sims), RandomPlayer(), "tic_tac_toe", 200, seed=seed + 3)
                row[f"sims{sims}_vs_perfect_losses"] = perfect.losses
                row[f"sims{sims}_vs_random_points"] = rnd.score
            else:
                result = evaluate_against(agent, env_cfg, opponent, games, seed + 3, simulations=sims)
                row[f"sims{sims}_points"] = result["points"]
                row[f"sims{sims}_points_ci"] = [result["points_ci_low"], result["points_ci_high"]]
        if game == "tictactoe":
            score = (f"raw net: L {row['sims0_vs_perfect_losses']:3d}/200 vs perfect, "
                     f"{row['sims0_vs_random_points']:.3f} vs random | 16 sims: L {row['sims16_vs_perfect_losses']:3d}, "
                     f"{row['sims16_vs_random_points']:.3f}")
        else:
            score = f"points vs {opponent}: raw net {row['sims0_points']:.3f} | 16 sims {row['sims16_points']:.3f}"
        print(f"  ablation {belief:8s} {algorithm:6s} {act:11s} {agent.env_steps:>9,} positions  {score}   ({load()})",
              flush=True)
        rows.append(row)
    return rows


# -------------------------------------------------------------------------- Connect Four
def bench_c4(minutes: float | None, run_dir: str | None, opponent: str, games: int, ladder: int,
             seed: int, ladder_simulations: int | None = None, simulations: int | None = None,
             overrides: list[str] | None = None) -> dict[str, Any]:
    from runtime.match_eval import elo_ladder, evaluate_against, load_agent

    out: dict[str, Any] = {}
    if run_dir is None:
        import subprocess

        runs_root = Path(os.environ.get("TMPDIR", "/tmp")) / "arbor-bench-alphazero"
        cmd = [sys.executable, str(ROOT / "train.py"), "agent=alphazero", "env=connect_four", "logger=none",
               f"runs_root={runs_root}", f"seed={seed}", *(overrides or [])]
        print("  c4: training for", minutes, "minutes:", " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT)
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(2)                            # SIGINT: the trainer saves latest.pt and stops
            proc.wait()
        run_dir = str(max((runs_root / "alphazero-connect_four").iterdir(), key=lambda p: p.stat().st_mtime))
        out["c4_train_minutes"] = minutes
        out["c4_overrides"] = list(overrides or [])
    agent = load_agent(run_dir)
    out["c4_positions"] = agent.trained_steps
    start = time.perf_counter()
    result = evaluate_against(agent, "connect_four", opponent, games, seed, simulations=simulations)
    out.update({"c4_opponent": opponent, "c4_games": games,
                "c4_simulations": simulations or agent.cfg.eval_simulations or agent.cfg.num_simulations,
                "c4_points": result["points"],
                "c4_points_ci": [result["points_ci_low"], result["points_ci_high"]], "c4_wins": result["wins"],
                "c4_draws": result["draws"], "c4_losses": result["losses"],
                "c4_eval_seconds": time.perf_counter() - start})
    random_result = evaluate_against(agent, "connect_four", "random", 100, seed)
    out["c4_vs_random_points"] = random_result["points"]
    if ladder:
        out["c4_elo_ladder"] = elo_ladder(run_dir, games_per_pair=ladder, seed=seed, max_checkpoints=6,
                                          simulations=ladder_simulations)["ratings"]
    return out


# -------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--sections", default="ttt,throughput", help="comma list of ttt,throughput,ablation,c4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ttt-check", type=int, default=10_000, help="positions between checks vs perfect play")
    parser.add_argument("--ablation-seconds", type=float, default=None, help="adds the ablation section")
    parser.add_argument("--ablation-game", default="tictactoe", choices=("tictactoe", "connect_four"))
    parser.add_argument("--ablation-opponent", default="mcts:200", help="Connect Four ablation: the opponent")
    parser.add_argument("--ablation-games", type=int, default=40, help="Connect Four ablation: games per match")
    parser.add_argument("--c4-minutes", type=float, default=None, help="train Connect Four this long (adds c4)")
    parser.add_argument("--c4-run", default=None, help="evaluate this Connect Four run instead of training")
    parser.add_argument("--c4-opponent", default="mcts:1000")
    parser.add_argument("--c4-games", type=int, default=100)
    parser.add_argument("--c4-sims", type=int, default=None,
                        help="our search size per move in the match (default: the run's agent.eval_simulations)")
    parser.add_argument("--c4-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra train.py override for the Connect Four run (repeatable), "
                             "e.g. agent.belief_target=gumbel")
    parser.add_argument("--c4-ladder", type=int, default=0, help="games per pair for an Elo ladder (0: none)")
    parser.add_argument("--c4-ladder-sims", type=int, default=None, help="search size in the ladder (default: eval)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if args.ablation_seconds:
        sections.add("ablation")
    if args.c4_minutes or args.c4_run:
        sections.add("c4")
    print(f"alphazero benchmark on {os.cpu_count()} cores, {load()}", flush=True)
    figures: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    ratios: dict[str, float] = {}
    if "ttt" in sections:
        figures.update(bench_ttt(args.ttt_check, args.seed))
        if figures.get("peer_mcts1000_vs_perfect_points"):
            ratios["ttt_points_vs_perfect ours/mcts1000"] = (figures["ttt_final_vs_perfect_points"]
                                                             / figures["peer_mcts1000_vs_perfect_points"])
        if figures.get("ttt_seconds_to_no_losses"):
            ratios["ttt_time_budget 300s/ours"] = 300.0 / figures["ttt_seconds_to_no_losses"]
    if "throughput" in sections:
        figures.update(bench_throughput("tictactoe", 20, args.seed))
        figures.update(bench_throughput("connect_four", 6, args.seed))
    if "ablation" in sections:
        figures["ablation"] = bench_ablation(args.ablation_seconds or 40.0, args.seed, args.ablation_game,
                                             args.ablation_opponent, args.ablation_games)
    if "c4" in sections:
        figures.update(bench_c4(args.c4_minutes, args.c4_run, args.c4_opponent, args.c4_games, args.c4_ladder,
                                args.seed, args.c4_ladder_sims, args.c4_sims, args.c4_override))
        ratios["c4_points ours/target0.95"] = figures["c4_points"] / 0.95
    figures["load_average_end"] = os.getloadavg()[0]

    print(f"\n{'figure':48s} value")
    for key, value in figures.items():
        if key in ("ablation", "ttt_curve", "c4_elo_ladder"):
            continue
        print(f"{key:48s} {value:.4g}" if isinstance(value, float) else f"{key:48s} {value}")
    if "ttt_curve" in figures:
        print("\ntic-tac-toe: positions, training seconds, losses / draws in 200 games vs perfect")
        for row in figures["ttt_curve"]:
            print("  ", *row)
    if "ablation" in figures and args.ablation_game == "tictactoe":
        print("\n| belief target | search | acting | positions | raw net: losses vs perfect | raw net: points vs random "
              "| 16 sims: losses vs perfect | 16 sims: points vs random |")
        print("|---|---|---|---|---|---|---|---|")
        for r in figures["ablation"]:
            print(f"| {r['belief_target']} | {r['algorithm']} | {r['act']} | {r['positions']:,} | "
                  f"{r['sims0_vs_perfect_losses']}/200 | {r['sims0_vs_random_points']:.3f} | "
                  f"{r['sims16_vs_perfect_losses']}/200 | {r['sims16_vs_random_points']:.3f} |")
    elif "ablation" in figures:
        print(f"\n| belief target | search | acting | positions | raw net: points vs {args.ablation_opponent} "
              f"| 16 sims: points vs {args.ablation_opponent} |")
        print("|---|---|---|---|---|---|")
        for r in figures["ablation"]:
            ci0, ci16 = r["sims0_points_ci"], r["sims16_points_ci"]
            print(f"| {r['belief_target']} | {r['algorithm']} | {r['act']} | {r['positions']:,} | "
                  f"{r['sims0_points']:.3f} [{ci0[0]:.2f}, {ci0[1]:.2f}] | "
                  f"{r['sims16_points']:.3f} [{ci16[0]:.2f}, {ci16[1]:.2f}] |")
    if "c4_elo_ladder" in figures:
        print("\nConnect Four Elo ladder (random = 0):", json.dumps(figures["c4_elo_ladder"]))
    if ratios:
        print()
        for key, value in ratios.items():
            print(f"{key:48s} {value:.3f}")
    if args.json:
        print(json.dumps({"benchmark": "alphazero", "figures": figures, "ratios": ratios}, default=float))


if __name__ == "__main__":
    main()
