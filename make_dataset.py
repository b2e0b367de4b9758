"""Build, import, inspect and export offline datasets.

``python make_dataset.py checkpoint=<run dir or .pt> preset=expert|medium|mixed size=N out=<file>``

- ``expert``: the saved policy's greedy actions (``epsilon=0``);
- ``medium``: the same policy epsilon-mixed (a uniform random action with
  probability ``epsilon`` per step), or give a mid-training checkpoint
  (``checkpoint=<run>/checkpoints/step_0000010000.pt``), or a list of checkpoints
  (one drawn per episode);
- ``mixed``: the whole replay buffer of a training run (its ``latest.pt`` must
  hold the replay: train with ``checkpoint.include_replay=true``, the default).

The behaviour policy's own evaluation (seeded episodes, ``eval_episodes``) and
the mean return of the stored episodes go into the dataset's metadata.
``minari=<dir>`` imports a local Minari dataset; ``show=<file>`` prints a
dataset's metadata; ``export_minari=<root>`` and ``export_npz=<file>`` export
the dataset just built or shown. See ``docs/datasets.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from runtime.cli import run_hydra, user_errors


def load_policy(path: str, seed: int) -> tuple[Any, dict[str, Any]]:
    """The agent saved in checkpoint ``path`` (rebuilt for acting only) and its env config."""
    from runtime import checkpoint as ckpt
    from runtime.config import validate
    from runtime.errors import UserError

    data = ckpt.load(path)
    stored = OmegaConf.create(data["config"])
    stored.resume = None
    settings = validate(stored)
    env_cfg = OmegaConf.to_container(stored.env, resolve=True)
    if env_cfg.get("kind") == "game":
        raise UserError("datasets are built from single-player environments; this checkpoint plays a board game",
                        key="checkpoint")
    agent = ckpt.agent_for_acting(data, settings, env_cfg, seed)
    return agent, env_cfg


def _checkpoints(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def build(cfg: DictConfig):
    """Collect or convert according to ``cfg``; returns ``(buffer, info)``."""
    from replay.datasets import (
        PRESETS,
        MixedPolicy,
        collect,
        evaluate_policy,
        from_replay_state,
    )
    from runtime import checkpoint as ckpt
    from runtime.errors import UserError

    if cfg.preset not in PRESETS:
        raise UserError(f"unknown preset {cfg.preset!r}", choices=list(PRESETS), key="preset")
    paths = _checkpoints(cfg.checkpoint)
    if not paths:
        raise UserError("nothing to build from: give checkpoint=<run dir or .pt> (or minari=<dir>, or show=<file>)",
                        key="checkpoint")
    if cfg.preset == "mixed":
        if len(paths) != 1:
            raise UserError("preset=mixed takes one training run's checkpoint (its whole replay)", key="checkpoint")
        data = ckpt.load(paths[0])
        state = data["agent"].get("replay")
        if state is None:
            raise UserError(f"checkpoint {data['path']!r} holds no replay buffer: preset=mixed needs the latest.pt "
                            "of a run trained with checkpoint.include_replay=true", key="checkpoint")
        try:
            buf = from_replay_state(state)
        except ValueError as err:
            raise UserError(f"checkpoint {data['path']!r}: {err}; preset=mixed needs an agent with a transition "
                            "replay (dqn)", key="checkpoint") from None
        env_cfg = data["config"]["env"]
        info = {"preset": "mixed", "env": env_cfg, "source": [data["path"]], "epsilon": None,
                "behaviour": f"replay of {data['config']['agent']['name']} training "
                             f"({data['progress']['steps']} {data['progress'].get('unit', 'env_steps')})"}
        return buf, info
    if cfg.size <= 0:
        raise UserError(f"must be > 0, got {cfg.size}", key="size")
    epsilon = cfg.epsilon if cfg.epsilon is not None else (0.0 if cfg.preset == "expert" else 0.5)
    if not 0.0 <= float(epsilon) <= 1.0:
        raise UserError(f"must be in [0, 1], got {epsilon}", key="epsilon")
    agents, env_cfg = [], None
    for path in paths:
        agent, agent_env = load_policy(path, int(cfg.seed))
        if env_cfg is not None and agent_env != env_cfg:
            raise UserError("the checkpoints of a mixture must share one environment config", key="checkpoint")
        agents.append(agent)
        env_cfg = agent_env
    policies = [lambda obs, a=a: a.act(obs, explore=False) for a in agents]
    from envs import make_spec

    spec = make_spec(env_cfg)
    behaviour = MixedPolicy(policies, spec.action_space, float(epsilon), int(cfg.num_envs), int(cfg.seed))
    storage_path = cfg.storage_path
    if cfg.storage == "mmap" and storage_path is None:
        raise UserError("storage=mmap needs storage_path=<directory for the memory maps>", key="storage_path")
    buf, _ = collect(behaviour, env_cfg, int(cfg.size), int(cfg.num_envs), int(cfg.seed), storage=str(cfg.storage),
                     storage_path=path_or_none(storage_path))
    info = {"preset": str(cfg.preset), "env": env_cfg, "source": [str(ckpt.resolve(p)) for p in paths],
            "epsilon": float(epsilon), "behaviour": "greedy" if len(paths) == 1 else f"mixture of {len(paths)}"}
    if cfg.eval_episodes > 0:
        info.update(evaluate_policy(behaviour, env_cfg, int(cfg.eval_episodes), int(cfg.num_envs),
                                    int(cfg.seed) + 10_000))
    return buf, info


def path_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def import_minari(cfg: DictConfig):
    """A buffer from a local Minari dataset directory."""
    from replay import from_minari
    from runtime.errors import UserError

    try:
        buf = from_minari(str(Path(str(cfg.minari)).resolve()), n_step=1, seed=int(cfg.seed))
    except ImportError as err:
        raise UserError(f"{err}", key="minari") from None
    except ValueError as err:
        raise UserError(str(err), key="minari") from None
    return buf, {"preset": "minari", "env": None, "source": [str(Path(str(cfg.minari)).resolve())], "epsilon": None,
                 "behaviour": "imported from Minari"}


def export(cfg: DictConfig, buf, info: dict[str, Any]) -> None:
    """Minari and npz exports asked for on the command line."""
    from replay import to_minari
    from replay.datasets import export_npz
    from runtime.errors import UserError

    if cfg.export_minari is not None:
        env_name = (info.get("env") or {}).get("id") or "dataset"
        dataset_id = str(cfg.minari_id or f"arbor/{env_name.lower().replace('-', '_')}-{info.get('preset')}-v0")
        try:
            dataset = to_minari(buf, dataset_id, str(Path(str(cfg.export_minari)).resolve()),
                                description=json.dumps({k: v for k, v in info.items() if k != "env"}))
        except ImportError as err:
            raise UserError(str(err), key="export_minari") from None
        except ValueError as err:
            raise UserError(str(err), key="export_minari") from None
        print(f"wrote Minari dataset {dataset_id} under {cfg.export_minari} "
              f"({dataset.total_episodes} episodes, {dataset.total_steps} steps)")
    if cfg.export_npz is not None:
        try:
            counts = export_npz(buf, str(cfg.export_npz))
        except (TypeError, ValueError) as err:
            raise UserError(str(err), key="export_npz") from None
        print(f"wrote {cfg.export_npz} ({counts['episodes']} episodes, {counts['steps']} steps)")


def summary_line(info: dict[str, Any]) -> str:
    parts = [f"preset {info.get('preset')}", f"{info.get('transitions')} transitions",
             f"{info.get('episodes')} complete episodes"]
    if info.get("episode_return_mean") is not None:
        parts.append(f"episode return {info['episode_return_mean']:.2f}")
    if info.get("policy_return_mean") is not None:
        parts.append(f"behaviour policy return {info['policy_return_mean']:.2f} +- {info['policy_return_std']:.2f} "
                     f"({info['policy_episodes']} episodes)")
    return ", ".join(parts)


@hydra.main(config_path="conf", config_name="dataset", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    import torch

    from replay.datasets import load_dataset, save_dataset
    from runtime.errors import UserError

    if cfg.torch_threads > 0:
        torch.set_num_threads(int(cfg.torch_threads))
    if cfg.storage not in ("memory", "mmap"):
        raise UserError(f"unknown storage {cfg.storage!r}", choices=["memory", "mmap"], key="storage")
    if cfg.show is not None:
        try:
            buf, info = load_dataset(str(cfg.show), storage=str(cfg.storage), storage_path=path_or_none(cfg.storage_path))
        except ValueError as err:
            raise UserError(f"cannot read dataset: {err}", key="show") from None
        print(json.dumps(info, indent=2, default=str))
        export(cfg, buf, info)
        return
    if cfg.out is None:
        raise UserError("where should the dataset go? give out=<file>", key="out")
    start = time.perf_counter()
    buf, info = import_minari(cfg) if cfg.minari is not None else build(cfg)
    full = save_dataset(buf, str(cfg.out), info)
    print(f"wrote {cfg.out}: {summary_line(full)} ({full['file_bytes'] / 1e6:.1f} MB, "
          f"{time.perf_counter() - start:.1f} s)")
    export(cfg, buf, full)


if __name__ == "__main__":
    run_hydra(main, "dataset")
