"""Gymnasium space helpers: storage layout of observations/actions and JSON (de)serialisation.

Saved buffers must rebuild their spaces without unpickling anything, so spaces
are written as plain JSON (Box bounds as nested lists, or a scalar when uniform).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """JSON-able description of a Box, Discrete, MultiBinary, MultiDiscrete or Dict space."""
    if isinstance(space, gym.spaces.Box):
        def bound(b: np.ndarray) -> Any:
            flat = b.reshape(-1)
            if flat.size and np.all(flat == flat[0]):
                return _scalar(flat[0])
            return b.tolist()

        return {"type": "Box", "shape": list(space.shape), "dtype": np.dtype(space.dtype).str,
                "low": bound(space.low), "high": bound(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": np.dtype(space.dtype).str}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": [[k, space_to_json(s)] for k, s in space.spaces.items()]}
    raise TypeError(f"unsupported space {space!r}: use Box, Discrete, MultiBinary, MultiDiscrete or Dict")


def space_from_json(desc: dict[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_json`."""
    kind = desc.get("type")
    if kind == "Box":
        dtype = np.dtype(desc["dtype"])
        shape = tuple(desc["shape"])
        low = np.broadcast_to(np.asarray(desc["low"], dtype=dtype), shape)
        high = np.broadcast_to(np.asarray(desc["high"], dtype=dtype), shape)
        return gym.spaces.Box(low=low.copy(), high=high.copy(), shape=shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(desc["n"], start=desc.get("start", 0))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(desc["n"])
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(desc["nvec"], dtype=np.dtype(desc["dtype"]))
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_json(s) for k, s in desc["spaces"]})
    raise ValueError(f"unknown space description {desc!r}")


def _scalar(x: Any) -> Any:
    if isinstance(x, (np.floating, float)):
        value = float(x)
        if np.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    return int(x)


def leaf_spaces(space: gym.Space) -> dict[str, gym.Space]:
    """Flat ``{key: leaf space}``; a non-Dict space is the single key ``""``."""
    if isinstance(space, gym.spaces.Dict):
        out: dict[str, gym.Space] = {}
        for key, sub in space.spaces.items():
            if isinstance(sub, gym.spaces.Dict):
                raise TypeError(f"nested Dict observation spaces are not supported (key {key!r})")
            out[key] = sub
        return out
    return {"": space}


def storage_layout(space: gym.Space) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype used to store one item of a leaf space."""
    if isinstance(space, gym.spaces.Discrete):
        top = int(space.start) + int(space.n)
        low = int(space.start)
        for dtype in (np.uint8, np.int16, np.int32, np.int64):
            info = np.iinfo(dtype)
            if info.min <= low and top - 1 <= info.max:
                return (), np.dtype(dtype)
        return (), np.dtype(np.int64)
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary, gym.spaces.MultiDiscrete)):
        return tuple(space.shape), np.dtype(space.dtype)
    raise TypeError(f"unsupported leaf space {space!r}")
