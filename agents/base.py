"""The Agent contract and the registry of agents.

The trainer only ever calls what is defined here: construction, ``train_iteration``,
``act``, ``state_dict`` and ``load_state_dict``. How an agent collects data is its
own business, built from the shared pieces in ``envs/``, ``replay/`` and ``planners/``.

To add an agent, write ``agents/<name>.py`` with a subclass decorated by
``@register("<name>")`` and a ``Config`` dataclass of its hyperparameters, and
``conf/agent/<name>.yaml`` with ``name: <name>`` and those hyperparameters.
An agent living outside this package names its module in the yaml (``module:``).
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, ClassVar, Iterable

import numpy as np
import torch

from envs.spec import EnvSpec
from runtime.errors import UserError

_REGISTRY: dict[str, type["Agent"]] = {}


@dataclasses.dataclass
class AgentConfig:
    """Fields every agent config has; agents subclass this with their hyperparameters."""

    name: str = ""
    module: str | None = None

    def validate(self) -> None:
        """Raise ``runtime.errors.UserError`` naming the key for any value out of range.

        Subclasses list their checks and hand them to ``check_choices`` and ``check_ranges``::

            def validate(self):
                self.check_choices({"loss": ("huber", "mse")})
                self.check_ranges({"learning_rate": self.learning_rate > 0, "gamma": 0 <= self.gamma <= 1})
        """

    def check_choices(self, options: dict[str, Iterable[Any]]) -> None:
        """UserError naming ``agent.<key>`` and its choices for the first field not among its options."""
        for key, allowed in options.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"unknown {key} {getattr(self, key)!r}", choices=list(allowed), key=f"agent.{key}")

    def check_ranges(self, checks: dict[str, bool]) -> None:
        """UserError naming ``agent.<key>`` and its value for the first failed check."""
        for key, ok in checks.items():
            if not ok:
                raise UserError(f"value {getattr(self, key)!r} is out of range", key=f"agent.{key}")


class Agent(abc.ABC):
    """One algorithm. Subclasses read top to bottom as the algorithm itself."""

    Config: ClassVar[type[AgentConfig]] = AgentConfig
    offline: ClassVar[bool] = False   # offline agents count gradient steps, not env steps

    def __init__(self, cfg: AgentConfig, spec: EnvSpec, device: torch.device,
                 env: Any | None = None, total_steps: int = 0, seed: int = 0):
        self.cfg = cfg
        self.spec = spec
        self.device = device
        self.env = env
        self.total_steps = int(total_steps)
        self.seed = int(seed)

    @abc.abstractmethod
    def train_iteration(self) -> dict[str, Any]:
        """One unit of work; returns metrics plus ``env_steps`` (and ``grad_steps``) consumed."""

    @abc.abstractmethod
    def act(self, obs: Any, explore: bool = False) -> np.ndarray:
        """Actions for a batch of observations (deterministic unless ``explore``)."""

    @abc.abstractmethod
    def state_dict(self, include_replay: bool = True) -> dict[str, Any]:
        """Everything an exact resume needs: networks, optimizers, schedules, RNG, replay."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def restart_episodes(self, obs: Any) -> None:
        """Continue from freshly reset envs (after a resume whose envs could not be restored)."""
        self.obs = obs

    def parameters_finite(self) -> bool:
        """False when any network parameter is NaN or infinite."""
        for module in vars(self).values():
            if isinstance(module, torch.nn.Module):
                for p in module.parameters():
                    if not torch.isfinite(p).all():
                        return False
        return True


class ReplayAgent(Agent):
    """An agent that steps its envs into ``self.replay`` and learns from it.

    Subclasses define ``collect()`` (one round of env steps; returns metrics or None)
    and ``learn()`` (the updates; returns metrics), and keep the counters
    ``env_steps`` / ``grad_steps``, the current observations ``obs`` and a numpy
    ``rng``. This class runs the loop and holds the bookkeeping their checkpoints share.
    """

    def learning_ready(self) -> bool:
        """Whether updates start this iteration (default: ``learning_starts`` reached, a batch stored)."""
        return self.env_steps >= self.cfg.learning_starts and len(self.replay) >= self.cfg.batch_size

    def train_iteration(self) -> dict[str, Any]:
        before = self.env_steps
        metrics = dict(self.collect() or {})
        if self.learning_ready():
            metrics.update(self.learn())
        metrics["env_steps"] = self.env_steps - before
        metrics["grad_steps_total"] = self.grad_steps
        return metrics

    def restart_episodes(self, obs: Any) -> None:
        """Continue from freshly reset envs: the replay closes the interrupted episodes."""
        self.obs = obs
        self.replay.abandon_episodes()

    def loop_state(self, include_replay: bool) -> dict[str, Any]:
        """Counters, random streams, current observations and (on request) the replay."""
        state = {"rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "env_steps": self.env_steps, "grad_steps": self.grad_steps, "obs": self.obs}
        if include_replay:
            state["replay"] = self.replay.state_dict()
        return state

    def load_loop_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`loop_state`; ``obs`` and ``replay`` may be absent (acting-only rebuilds)."""
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.env_steps = int(state["env_steps"])
        self.grad_steps = int(state["grad_steps"])
        if state.get("obs") is not None:
            self.obs = state["obs"]
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])


def linear_epsilon(start: float, end: float, env_steps: int, total_steps: int, fraction: float,
                   decay_steps: int = 0, learning_starts: int = 0) -> float:
    """Epsilon-greedy's rate, linear from ``start`` to ``end``.

    ``decay_steps > 0``: ``start`` until ``learning_starts``, then over ``decay_steps`` env
    steps (Dopamine's and MinAtar's schedule, independent of the run's length); otherwise
    over the first ``fraction`` of the run's ``total_steps``.
    """
    if decay_steps > 0:
        frac = min(1.0, max(0.0, (env_steps - learning_starts) / decay_steps))
    else:
        frac = min(1.0, env_steps / max(1.0, fraction * total_steps))
    return start + frac * (end - start)


def register(name: str):
    """Class decorator: make an Agent subclass available as ``agent=<name>``."""

    def wrap(cls: type[Agent]) -> type[Agent]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"agent name {name!r} is already registered by {_REGISTRY[name].__module__}")
        _REGISTRY[name] = cls
        cls.registered_name = name
        return cls

    return wrap


def available() -> list[str]:
    """Names of the agents shipped in ``agents/`` (each has a module of that name)."""
    import pkgutil

    import agents

    skip = {"base", "networks"}
    found = {m.name for m in pkgutil.iter_modules(agents.__path__) if m.name not in skip and not m.name.startswith("_")}
    return sorted(found | set(_REGISTRY))


def get(name: str, module: str | None = None) -> type[Agent]:
    """The agent class registered as ``name``, importing ``agents.<name>`` (or ``module``) first."""
    if name not in _REGISTRY:
        target = module or f"agents.{name}"
        try:
            importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name not in (target, target.rsplit(".", 1)[0]) and not target.startswith(str(err.name)):
                raise
            raise UserError(f"unknown agent {name!r} (no module {target})", choices=available(), key="agent") from None
    if name not in _REGISTRY:
        raise UserError(f"module for agent {name!r} imported but registers no agent of that name",
                        choices=available(), key="agent")
    return _REGISTRY[name]
