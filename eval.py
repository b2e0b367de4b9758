"""Evaluate a saved policy: ``python eval.py checkpoint=<file or run dir> [episodes=N] [video=true]``.

For two-player games ``episodes`` is the number of games per opponent and
``opponent=random|perfect|mcts:N|human|<checkpoint>`` (a list ``[a,b]`` plays each);
``elo_games=N`` ranks the run's checkpoints in an Elo ladder.

Rebuilds env and agent from the config stored in the checkpoint (command-line
``env.*`` / ``agent.*`` overrides win), plays seeded episodes, prints a summary
table and writes ``eval.json`` next to the checkpoint. ``compare=[dirs...]``
draws learning curves of several runs with 95% bootstrap bands into a PNG.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from runtime.cli import run_hydra, user_errors


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Load, rebuild, play, summarise; returns what eval.json holds."""
    import torch

    from runtime import checkpoint as ckpt
    from runtime.config import validate
    from runtime.errors import UserError
    from runtime.evaluation import record_video, run_episodes, summarize

    data = ckpt.load(cfg.checkpoint)
    stored = OmegaConf.create(data["config"])
    overrides = OmegaConf.create({"env": OmegaConf.to_container(cfg.env), "agent": OmegaConf.to_container(cfg.agent)})
    merged = OmegaConf.merge(stored, overrides)
    merged.resume = None
    if cfg.torch_threads is not None:   # e.g. one thread beside a training that holds the other core
        merged.torch_threads = cfg.torch_threads
    settings = validate(merged)
    settings.run.apply_to_process()
    env_cfg = OmegaConf.to_container(merged.env, resolve=True)
    if env_cfg.get("kind") == "game":
        return evaluate_game(cfg, data, merged, env_cfg)
    if cfg.opponent is not None:
        raise UserError(f"opponent={cfg.opponent!r} needs a two-player game; {settings.env.name} is single-player",
                        key="opponent")
    agent = ckpt.agent_for_acting(data, settings, env_cfg, int(cfg.seed))   # one env, acting only
    returns = run_episodes(agent, env_cfg, int(cfg.episodes), int(cfg.num_envs), int(cfg.seed), bool(cfg.explore),
                           progress=True)
    stats = summarize(returns, seed=int(cfg.seed))
    out_dir = Path(data["path"]).parent
    result = {"checkpoint": data["path"], "agent": settings.agent.name, "env": settings.env.name,
              "trained_steps": data["progress"]["steps"], "seed": int(cfg.seed), "explore": bool(cfg.explore),
              "torch_threads": torch.get_num_threads(), "returns": returns.tolist(), **stats}
    if cfg.video:
        video = record_video(agent, env_cfg, out_dir / "eval.mp4", seed=int(cfg.seed))
        result["video"] = str(video)
    write_eval_json(out_dir, result)
    return result


def write_eval_json(out_dir: Path, result: dict) -> None:
    """Write eval.json atomically, keeping an Elo ladder an earlier evaluation stored there."""
    from runtime.atomic import atomic_write

    path = out_dir / "eval.json"
    if path.is_file() and "elo_ladder" not in result:
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if "elo_ladder" in old:
            result["elo_ladder"] = old["elo_ladder"]
    with atomic_write(path) as f:
        f.write(json.dumps(result, indent=2).encode())


def evaluate_game(cfg: DictConfig, data: dict, merged: DictConfig, env_cfg: dict) -> dict:
    """Two-player games: matches against ``opponent`` (random, perfect, mcts:N, human, checkpoints)."""
    from runtime.match_eval import evaluate_game_checkpoint

    opponents = cfg.opponent if cfg.opponent is None or isinstance(cfg.opponent, str) else list(cfg.opponent)
    result = evaluate_game_checkpoint(data, OmegaConf.to_container(merged.agent, resolve=True), env_cfg,
                                      opponents, int(cfg.episodes), int(cfg.seed),
                                      ladder_games=int(cfg.elo_games))
    write_eval_json(Path(data["path"]).parent, result)
    return result


def print_summary(result: dict) -> None:
    """The summary table on stdout."""
    if "matches" in result:
        from runtime.match_eval import match_table

        print(match_table(result))
        print(f"wrote {Path(str(result['checkpoint'])).parent / 'eval.json'}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['agent']} on {result['env']}: {result['episodes']} episodes "
                        f"after {result['trained_steps']:,} training steps")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for name in ("mean", "median", "iqm"):
        low, high = result[f"{name}_ci"]
        table.add_row(name, f"{result[name]:.2f}", f"[{low:.2f}, {high:.2f}]")
    table.add_row("std", f"{result['std']:.2f}", "")
    table.add_row("min / max", f"{result['min']:.2f} / {result['max']:.2f}", "")
    Console(width=100).print(table)
    extra = f"; video {result['video']}" if "video" in result else ""
    print(f"wrote {Path(result['checkpoint']).parent / 'eval.json'}{extra}")


@hydra.main(config_path="conf", config_name="eval", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    from runtime.errors import UserError

    if cfg.compare is not None:
        from runtime.compare import group_curves, plot

        paths = list(cfg.compare) if not isinstance(cfg.compare, str) else [cfg.compare]
        groups = group_curves([str(p) for p in paths], str(cfg.metric))
        output = plot(groups, str(cfg.metric), Path(str(cfg.output or "compare.png")))
        for name, g in groups.items():
            print(f"{name:40s} runs={len(g['runs'])}  final {cfg.metric} = {g['final_mean']:.2f} "
                  f"[{g['low'][-1]:.2f}, {g['high'][-1]:.2f}]")
        print(f"wrote {output}")
        from runtime.compare import (atari_aggregate_table, atari_final_scores, format_atari_table,
                                     plot_performance_profile)

        atari = atari_final_scores([str(p) for p in paths])
        if atari:   # Atari runs: human-normalised aggregates (IQM, median, mean) and a performance profile
            table = atari_aggregate_table(atari)
            print(format_atari_table(table))
            print(f"wrote {plot_performance_profile(table, output.with_name(output.stem + '_profile.png'))}")
        return
    if cfg.checkpoint is None:
        raise UserError("nothing to evaluate: give checkpoint=<file or run dir> or compare=[run dirs]",
                        key="checkpoint")
    print_summary(evaluate_checkpoint(cfg))


def _plus_nested_overrides(argv: list[str]) -> list[str]:
    """Let ``env.x=y`` and ``agent.x=y`` add keys to the (empty) override sections."""
    out = []
    for arg in argv:
        if arg.split("=", 1)[0].startswith(("env.", "agent.")) and "=" in arg:
            arg = "+" + arg
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + _plus_nested_overrides(sys.argv[1:])
    run_hydra(main, "eval")
