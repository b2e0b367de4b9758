"""Capture and restore the state of simple vector envs, for an exact resume.

A checkpoint may not hold pickled objects (opening one must never run code), so
an env's state is captured as plain data: every numpy array, scalar, random
generator state and number queue found on the env, its wrappers and the vector
env around them. That is the whole state of environments whose dynamics live in
numpy arrays (Gymnasium's classic control). An env may also describe its own
state as plain data through ``snapshot_state()`` / ``restore_snapshot(state)``
(MinAtar does). Envs holding richer objects (ALE's
emulator, MiniGrid's grid objects) are not snapshotted: a resumed run then
resets them and says so.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

_SCALARS = (bool, int, float, str, type(None))
_SKIP = {"metadata", "spec", "render_mode", "observation_space", "action_space",
         "single_observation_space", "single_action_space", "_action_space", "_observation_space",
         "_metadata", "_cached_spec", "screen", "clock", "env_fns", "_env_fns"}


def _capture(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if hasattr(obj, "snapshot_state"):   # envs whose state lives in plain objects say what it is
        out["__custom__"] = obj.snapshot_state()
    for name, value in vars(obj).items():
        if name in _SKIP:
            continue
        if isinstance(value, np.random.Generator):
            out[name] = {"__generator__": value.bit_generator.state}
        elif isinstance(value, np.ndarray) and value.dtype != object:
            out[name] = {"__array__": value.copy()}
        elif isinstance(value, (np.bool_, np.integer, np.floating)):
            out[name] = {"__scalar__": value.item()}
        elif isinstance(value, _SCALARS):
            out[name] = value
        elif isinstance(value, deque) and all(isinstance(v, (int, float)) for v in value):
            out[name] = {"__deque__": list(value), "maxlen": value.maxlen}
        elif isinstance(value, (gym.Env, gym.vector.VectorEnv)):
            out[name] = {"__env__": _capture(value)}
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, gym.Env) for v in value):
            out[name] = {"__envs__": [_capture(v) for v in value]}
    return out


def _restore(obj: Any, state: dict[str, Any]) -> None:
    for name, value in state.items():
        if name == "__custom__":
            obj.restore_snapshot(value)
        elif isinstance(value, dict) and "__generator__" in value:
            getattr(obj, name).bit_generator.state = value["__generator__"]
        elif isinstance(value, dict) and "__array__" in value:
            current = getattr(obj, name, None)
            array = np.asarray(value["__array__"])
            if isinstance(current, np.ndarray) and current.shape == array.shape:
                current[...] = array
            else:
                setattr(obj, name, array.copy())
        elif isinstance(value, dict) and "__scalar__" in value:
            setattr(obj, name, value["__scalar__"])
        elif isinstance(value, dict) and "__deque__" in value:
            setattr(obj, name, deque(value["__deque__"], maxlen=value["maxlen"]))
        elif isinstance(value, dict) and "__env__" in value:
            _restore(getattr(obj, name), value["__env__"])
        elif isinstance(value, dict) and "__envs__" in value:
            for env, sub in zip(getattr(obj, name), value["__envs__"]):
                _restore(env, sub)
        else:
            setattr(obj, name, value)


def capture_env_state(env: Any) -> dict[str, Any]:
    """Plain-data state of ``env`` (vector env, its wrappers and sub-envs)."""
    return _capture(env)


def restore_env_state(env: Any, state: dict[str, Any]) -> None:
    """Put ``env`` back into a state captured by :func:`capture_env_state`."""
    _restore(env, state)
