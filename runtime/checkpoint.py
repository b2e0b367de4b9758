"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors for bad files.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings,
lists and dicts, so ``torch.load(weights_only=True)`` opens it without running
code. Numpy arrays are stored as tensors tagged ``{"__ndarray__": tensor}`` and
turned back on load. The file is written to a temporary name in the same folder
and renamed into place, so a run killed mid-write leaves the previous checkpoint
intact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.atomic import atomic_write
from runtime.errors import UserError

FORMAT = "arbor-checkpoint"
VERSION = 1


def to_safe(obj: Any) -> Any:
    """Convert numpy values inside ``obj`` to types ``weights_only`` loading accepts."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be checkpointed safely")
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        converted = [to_safe(v) for v in obj]
        return converted if isinstance(obj, list) else tuple(converted)
    return obj


def from_safe(obj: Any) -> Any:
    """Inverse of :func:`to_safe`."""
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_safe(v) for v in obj)
    return obj


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically to ``path``; returns the path."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **to_safe(payload)}
    with atomic_write(path) as f:
        torch.save(data, f)
    return path


def resolve(path: str | Path) -> Path:
    """A checkpoint file from a file path or a run directory (its ``checkpoints/latest.pt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "latest.pt", path / "latest.pt"):
            if candidate.is_file():
                return candidate
        raise UserError(f"no checkpoint in run directory {str(path)!r} (expected checkpoints/latest.pt)",
                        key="checkpoint")
    if not path.exists():
        raise UserError(f"checkpoint {str(path)!r} does not exist", key="checkpoint")
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; corrupt, truncated or foreign files raise UserError."""
    path = resolve(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - garbage reaches the unpickler's internals (IndexError, KeyError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {str(path)!r} is corrupt or not a checkpoint of this suite ({first[:200]})",
                        key="checkpoint") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a checkpoint of this suite", key="checkpoint")
    if data.get("version", 0) > VERSION:
        raise UserError(f"checkpoint {str(path)!r} has format version {data['version']}, newer than this "
                        f"suite reads ({VERSION}); upgrade the suite", key="checkpoint")
    for key in ("config", "agent", "progress"):
        if key not in data:
            raise UserError(f"checkpoint {str(path)!r} is incomplete (no {key!r})", key="checkpoint")
    data = from_safe(data)
    data["path"] = str(path)
    return data


def agent_for_acting(data: dict[str, Any], settings: Any, env_cfg: dict[str, Any], seed: int) -> Any:
    """The agent stored in checkpoint ``data`` rebuilt for acting only (no env, no replay).

    ``settings`` is the validated config to build it with (the stored one, perhaps with
    evaluation overrides); a checkpoint that does not fit it raises UserError.
    """
    from agents import base
    from envs import make_spec

    spec = make_spec(env_cfg)
    agent_cls = base.get(settings.agent.name, settings.agent.module)
    agent = agent_cls(settings.agent, spec, torch.device("cpu"), env=None,
                      total_steps=settings.run.total_env_steps, seed=int(seed))
    state = dict(data["agent"])
    state.pop("replay", None)
    state.pop("obs", None)
    try:
        agent.load_state_dict(state)
    except (KeyError, RuntimeError) as err:
        raise UserError(f"checkpoint {data['path']!r} does not fit agent {settings.agent.name!r} "
                        f"with this config ({str(err).splitlines()[0][:200]})", key="checkpoint") from None
    return agent
