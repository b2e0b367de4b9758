"""Validation of the composed Hydra config against typed schemas.

Hydra already refuses command-line keys that are not in the config tree. This
module catches what gets past it: keys added by presets or ``+key=...``, values
of the wrong type and values out of range, each reported with the key's full
name and the valid alternatives.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from runtime.errors import UserError


@dataclasses.dataclass
class EvalConfig:
    """When and how the trainer evaluates during training."""

    interval: int = 10_000        # env steps (gradient steps for offline agents) between evaluations
    episodes: int = 10
    num_envs: int = 5
    explore: bool = False

    def validate(self) -> None:
        _positive(self, "eval", ["interval", "episodes", "num_envs"])


@dataclasses.dataclass
class CheckpointConfig:
    """When checkpoints are written and what they hold."""

    interval: int = 50_000        # env steps between periodic checkpoints (latest.pt is refreshed every log)
    keep: int = 5                 # periodic checkpoints kept (latest.pt always)
    include_replay: bool = True   # needed for an exact resume

    def validate(self) -> None:
        _positive(self, "checkpoint", ["interval"])
        if self.keep < 0:
            raise UserError("must be >= 0", key="checkpoint.keep")


@dataclasses.dataclass
class LoggerConfig:
    """Where metrics go besides metrics.jsonl."""

    kind: str = "wandb"
    project: str = "arbor"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    mode: str = "auto"            # wandb: auto (online with an API key, else offline), online, offline, disabled
    log_videos: bool = False
    log_checkpoint: bool = False
    interval: int = 1000          # env steps between log lines

    def validate(self) -> None:
        if self.kind not in ("wandb", "tensorboard", "none"):
            raise UserError(f"unknown logger {self.kind!r}", choices=["wandb", "tensorboard", "none"], key="logger")
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise UserError(f"unknown mode {self.mode!r}", choices=["auto", "online", "offline", "disabled"],
                            key="logger.mode")
        _positive(self, "logger", ["interval"])


@dataclasses.dataclass
class EnvConfig:
    """Environment selection; kind-specific keys are checked by ``envs.make``."""

    name: str = ""
    kind: str = "gym"
    id: str | None = None
    game: str | None = None          # Atari ROM name, or a board game (kind: game)
    protocol: str | None = None
    num_envs: int = 1
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # MiniGrid
    fully_observed: bool = False
    obs: str = "image"
    # Atari protocol overrides (null: the protocol's value)
    frame_skip: int | None = None
    sticky_actions: float | None = None
    noop_max: int | None = None
    fire_reset: bool | None = None
    life_loss_terminal: bool | None = None
    life_loss_stack_restart: bool | None = None
    max_episode_frames: int | None = None
    full_action_space: bool | None = None
    frame_stack: int | None = None
    image_size: int | None = None
    reward_clip: float | None = None
    # MinAtar
    sticky_action_prob: float = 0.1
    difficulty_ramping: bool = True
    minimal_actions: bool = False
    max_episode_steps: int | None = None

    def validate(self) -> None:
        _positive(self, "env", ["num_envs"])


@dataclasses.dataclass
class RunConfig:
    """The top level of ``conf/config.yaml``."""

    seed: int = 0
    device: str = "cpu"
    total_env_steps: int = 100_000
    resume: str | None = None
    debug: bool = False
    runs_root: str = "runs"
    torch_threads: int = 0       # 0: leave torch's default
    keep_freed_memory: bool = True   # runtime/allocator.py: reuse freed blocks instead of page-faulting anew
    preset: str | None = None    # set by +experiment=<preset>

    def apply_to_process(self) -> None:
        """The run's process-wide settings: torch's thread count and the allocator (runtime/allocator.py)."""
        import torch

        from runtime import allocator

        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        if self.keep_freed_memory:
            allocator.keep_freed_memory()

    def validate(self) -> None:
        if self.total_env_steps <= 0:
            raise UserError("must be > 0", key="total_env_steps")
        if self.seed < 0:
            raise UserError("must be >= 0", key="seed")
        if self.torch_threads < 0:
            raise UserError("must be >= 0 (0 keeps torch's default)", key="torch_threads")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "auto"):
            raise UserError(f"unknown device {self.device!r}", choices=["cpu", "cuda", "cuda:N", "auto"], key="device")


def _positive(obj: Any, prefix: str, names: list[str]) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise UserError(f"must be > 0, got {getattr(obj, name)!r}", key=f"{prefix}.{name}")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def build(schema: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``schema`` from ``values``; unknown keys and wrong types are UserErrors."""
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {' or '.join(prefix + '.' + c if prefix else c for c in close)}?)" if close else ""
            raise UserError(f"unknown key {(prefix + '.' if prefix else '') + key!r}{hint}",
                            choices=[(prefix + '.' if prefix else '') + n for n in names])
        if not _type_ok(value, hints[key]):
            full = (prefix + "." if prefix else "") + key
            raise UserError(f"{full} must be of type {getattr(hints[key], '__name__', hints[key])}, got {value!r}",
                            key=full)
        if hints[key] is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    obj = schema(**kwargs)
    obj.validate()
    return obj


@dataclasses.dataclass
class Settings:
    """The validated config, split by room."""

    run: RunConfig
    env: EnvConfig
    agent: Any
    logger: LoggerConfig
    eval: EvalConfig
    checkpoint: CheckpointConfig
    raw: DictConfig


SECTIONS = ("env", "agent", "logger", "eval", "checkpoint")


def validate(cfg: DictConfig) -> Settings:
    """Check the whole composed config; returns typed settings or raises UserError."""
    from agents import base

    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    top = {k: v for k, v in data.items() if k not in SECTIONS and k != "hydra"}
    run = build(RunConfig, top, "")
    env = build(EnvConfig, data.get("env", {}), "env")
    agent_values = dict(data.get("agent", {}))
    agent_cls = base.get(str(agent_values.get("name", "")), agent_values.get("module"))
    agent = build(agent_cls.Config, agent_values, "agent")
    logger = build(LoggerConfig, data.get("logger", {}), "logger")
    eval_cfg = build(EvalConfig, data.get("eval", {}), "eval")
    ckpt = build(CheckpointConfig, data.get("checkpoint", {}), "checkpoint")
    return Settings(run=run, env=env, agent=agent, logger=logger, eval=eval_cfg, checkpoint=ckpt, raw=cfg)
