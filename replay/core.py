"""Shared storage and samplers behind :class:`TransitionReplay` and :class:`SequenceReplay`.

Storage model ("observation streams")
-------------------------------------
Each env slot owns a circular stream of ``rows = ceil(capacity / num_envs)``
rows; all fields are preallocated arrays of shape ``(num_envs, rows, ...)``.
A row holds one observation (or, with ``frame_stack=k``, only its newest frame)
and, if an action was taken from it, that step's action, reward and flags.
The next observation of row ``g`` is always row ``g + 1`` of the same stream:

* an ``add`` writes the step's data into the current row and the next
  observation into the following row (one new row per env per step);
* when an episode ends, that following row is the *final* observation (kept,
  it is what truncation bootstraps from) and the next episode starts on a new
  row;
* with frame stacking the first observation of an episode is written as ``k``
  rows (its ``k`` frames), so the stack of any row is simply the ``k`` rows
  ending at it: stacks never mix episodes and reproduce exactly the padding the
  env used at reset, whatever it was.

Rows are addressed by a per-env global counter ``g`` (physical row ``g %
rows``); indices handed to users are ``g * num_envs + env`` so that a stale
priority update or write-back (its row overwritten since sampling) is detected
and ignored.

Episode boundaries cost one extra row per episode (``k`` with frame
stacking), so ``capacity`` counts stored rows: the number of transitions kept is
slightly lower (``len(buf)`` reports it exactly).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from . import fileformat
from .spaces import leaf_spaces, space_from_json, space_to_json, storage_layout
from .sumtree import SumTree

try:  # the compiled replay kernels (csrc/replay.cpp); the numpy code below does the same, slower, without them
    from planners._core import add_step as _add_step_kernel  # type: ignore[attr-defined]
    from planners._core import gather_windows as _gather_windows_kernel  # type: ignore[attr-defined]
except (ImportError, AttributeError):  # pragma: no cover - the package build always compiles them
    _gather_windows_kernel = _add_step_kernel = None

HAS_TRANSITION = np.uint8(1)
TERMINATED = np.uint8(2)
TRUNCATED = np.uint8(4)
STATE_VERSION = 2  # 2: storage arrays hold only the rows written so far (version 1 held all; both load)

ArrayLike = Any  # numpy array, torch tensor or nested sequence


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` is ``b``'s very memory (same start, shape and strides)."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape \
        and a.strides == b.strides and a.dtype == b.dtype


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to an array: {exc}") from None


# Source dtype kinds accepted for each storage kind (ints never take floats).
_ACCEPTED_KINDS = {"b": "biu", "u": "biu", "i": "biu", "f": "biuf", "c": "biufc"}


def _check_array(x: ArrayLike, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Return ``x`` as an array of ``shape`` castable to ``dtype``, or raise a clear error."""
    arr = _to_numpy(x, name)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if arr.dtype != dtype and arr.dtype.kind not in _ACCEPTED_KINDS.get(dtype.kind, dtype.kind):
        raise TypeError(f"{name}: dtype {arr.dtype} cannot be stored as {dtype} (expected kind "
                        f"{_ACCEPTED_KINDS.get(dtype.kind, dtype.kind)!r}, e.g. floats are never silently truncated to ints)")
    return arr


class ReplayBase:
    """Storage, validity rules, uniform/prioritized index sampling, persistence."""

    _kind = "base"

    def __init__(
        self,
        capacity: int,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_envs: int,
        *,
        n_step: int = 1,
        gamma: float = 0.99,
        frame_stack: int = 0,
        prioritized: bool = False,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_final: float = 1.0,
        beta_steps: int = 0,
        eps: float = 1e-6,
        seed: int = 0,
        device: str | torch.device = "cpu",
        storage: str = "memory",
        path: str | os.PathLike | None = None,
        extras: Mapping[str, tuple[tuple[int, ...], Any]] | None = None,
        lookahead: int = 1,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        if frame_stack < 0:
            raise ValueError(f"frame_stack must be >= 0, got {frame_stack}")
        if alpha < 0 or eps <= 0 or beta < 0 or beta_final < 0 or beta_steps < 0:
            raise ValueError("prioritized replay needs alpha >= 0, beta >= 0, beta_final >= 0, beta_steps >= 0, eps > 0")
        if storage not in ("memory", "mmap"):
            raise ValueError(f"storage must be 'memory' or 'mmap', got {storage!r}")
        if storage == "mmap" and path is None:
            raise ValueError("storage='mmap' needs path= (a directory for the memory-mapped arrays)")
        self.capacity = int(capacity)
        self.num_envs = int(num_envs)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.frame_stack = int(frame_stack)
        self.prioritized = bool(prioritized)
        self.alpha, self.beta, self.beta_final = float(alpha), float(beta), float(beta_final)
        self.beta_steps, self.eps = int(beta_steps), float(eps)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.storage = storage
        self.path = None if path is None else os.fspath(path)
        self.observation_space = observation_space
        self.action_space = action_space
        self._lookahead = int(lookahead)
        self._stack = max(1, self.frame_stack)
        self.rows = math.ceil(self.capacity / self.num_envs)
        if self.rows < self._stack + self._lookahead + 2:
            raise ValueError(
                f"capacity {capacity} gives {self.rows} rows per env; need at least "
                f"{self._stack + self._lookahead + 2} for frame_stack={frame_stack} and a lookahead of {self._lookahead}")

        # Observation fields.
        self._obs_leaves = leaf_spaces(observation_space)
        self._obs_item_shape: dict[str, tuple[int, ...]] = {}
        self._obs_row_shape: dict[str, tuple[int, ...]] = {}
        self._obs_dtype: dict[str, np.dtype] = {}
        for key, space in self._obs_leaves.items():
            shape, dtype = storage_layout(space)
            self._obs_item_shape[key] = shape
            self._obs_dtype[key] = dtype
            if self.frame_stack:
                if not isinstance(observation_space, gym.spaces.Box) or not shape or shape[0] != self.frame_stack:
                    raise ValueError(f"frame_stack={frame_stack} needs a Box observation space whose first axis is "
                                     f"the stack of {frame_stack} frames; got {observation_space}")
                self._obs_row_shape[key] = shape[1:]
            else:
                self._obs_row_shape[key] = shape
        self._action_shape, self._action_dtype = storage_layout(action_space)
        self._discrete_action = isinstance(action_space, gym.spaces.Discrete)
        self._single_obs = not isinstance(observation_space, gym.spaces.Dict)
        self._obs_full_shape = {k: (self.num_envs,) + s for k, s in self._obs_item_shape.items()}
        self._action_full_shape = (self.num_envs,) + self._action_shape
        self._action_low = self._action_high = 0
        if self._discrete_action:
            self._action_low = int(action_space.start)
            self._action_high = int(action_space.start) + int(action_space.n) - 1
        # Arguments of the compiled add for the action form not in use.
        self._no_action_bytes = np.empty((0, int(np.prod(self._action_shape, dtype=np.int64)) * self._action_dtype.itemsize),
                                         dtype=np.uint8)
        self._no_action_index = np.empty(0, dtype=np.int64)
        self._extras_spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            str(k): (tuple(int(d) for d in shape), np.dtype(dtype)) for k, (shape, dtype) in (extras or {}).items()}

        # Preallocated storage, env-major: (num_envs, rows, ...) so that the consecutive
        # rows of one stack / n-step window are contiguous in memory.
        self._arrays: dict[str, np.ndarray] = {}
        lead = (self.num_envs, self.rows)
        for key in self._obs_leaves:
            name = self._obs_name(key)
            self._arrays[name] = self._allocate(name, lead + self._obs_row_shape[key], self._obs_dtype[key])
        self._arrays["action"] = self._allocate("action", lead + self._action_shape, self._action_dtype)
        self._arrays["reward"] = self._allocate("reward", lead, np.dtype(np.float32))
        self._arrays["flags"] = self._allocate("flags", lead, np.dtype(np.uint8))
        self._arrays["sampleable"] = self._allocate("sampleable", lead, np.dtype(np.bool_))
        self._arrays["row_id"] = self._allocate("row_id", lead, np.dtype(np.int64))
        for name, (shape, dtype) in self._extras_spec.items():
            self._arrays["extra." + name] = self._allocate("extra." + name, lead + shape, dtype)
        self._bind_views()

        # Per-env stream pointers (global row counters).
        self._written = np.zeros(self.num_envs, dtype=np.int64)  # rows ever written
        self._head = np.full(self.num_envs, -1, dtype=np.int64)  # current obs row, -1: awaiting reset obs
        self._ep_start = np.zeros(self.num_envs, dtype=np.int64)  # first row of the current episode
        self._num_transitions = 0
        self._max_written = 0  # python int mirror of written.max()
        self._env_ids = np.arange(self.num_envs, dtype=np.int64)
        self._env_base = self._env_ids * self.rows
        self._stack_offsets = np.arange(1 - self._stack, 1)
        self._nstep_offsets = np.arange(self.n_step)
        self._lookahead_offsets = np.arange(self._lookahead)
        self._rng = np.random.default_rng(self.seed)
        self._sample_calls = 0
        self._max_priority = 1.0
        self._tree = SumTree(self.rows * self.num_envs) if self.prioritized else None

    # ------------------------------------------------------------------ storage
    @staticmethod
    def _obs_name(key: str) -> str:
        return "obs" if key == "" else "obs." + key

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if self.storage == "memory":
            return np.zeros(shape, dtype=dtype)
        os.makedirs(self.path, exist_ok=True)
        return np.lib.format.open_memmap(os.path.join(self.path, name + ".npy"), mode="w+", dtype=dtype, shape=shape)

    def _bind_views(self) -> None:
        """Flat ``(num_envs * rows, ...)`` views (slot = env * rows + row) and torch aliases for gathers."""
        n = self.rows * self.num_envs
        self._flat = {name: arr.reshape((n,) + arr.shape[2:]) for name, arr in self._arrays.items()}
        self._torch_flat = {name: torch.from_numpy(flat) for name, flat in self._flat.items()
                            if name.startswith("obs")}
        self._np_flat = {name: np.asarray(flat) for name, flat in self._flat.items()}
        # Observation and action rows as opaque bytes (slots x row bytes) for the compiled kernels.
        self._byte_rows = {name: flat.reshape(n, -1).view(np.uint8) for name, flat in self._np_flat.items()
                           if name.startswith("obs") or name == "action"}
        self._row_nbytes = {key: int(np.prod(self._obs_row_shape[key], dtype=np.int64)) * self._obs_dtype[key].itemsize
                            for key in self._obs_leaves}
        self._on_cpu = self.device.type == "cpu"
        self._flags = self._flat["flags"]
        self._sampleable = self._flat["sampleable"]
        self._row_id = self._flat["row_id"]

    def __len__(self) -> int:
        """Number of transitions stored (sampleable or still waiting for their n-step window)."""
        return int(self._num_transitions)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated storage (plus the priority tree)."""
        total = sum(int(a.nbytes) for a in self._arrays.values())
        if self._tree is not None:
            total += self._tree.nbytes
        return total

    # ---------------------------------------------------------------------- add
    def _check_obs(self, obs: Any, name: str) -> dict[str, np.ndarray]:
        if self._single_obs:
            key = ""
            if type(obs) is np.ndarray and obs.shape == self._obs_full_shape[key] and obs.dtype == self._obs_dtype[key]:
                return {key: obs}  # fast path: already the right array
            return {key: _check_array(obs, name, self._obs_full_shape[key], self._obs_dtype[key])}
        if not isinstance(obs, Mapping):
            raise TypeError(f"{name}: expected a dict with keys {list(self._obs_leaves)}, got {type(obs).__name__}")
        missing = set(self._obs_leaves) - set(obs)
        if missing:
            raise KeyError(f"{name}: missing keys {sorted(missing)}")
        return {k: _check_array(obs[k], f"{name}[{k!r}]", self._obs_full_shape[k], self._obs_dtype[k])
                for k in self._obs_leaves}

    def _add_rows(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, truncated: Any,
                  extras: Mapping[str, Any] | None = None) -> np.ndarray:
        """Write one vector-env step for every env slot; returns the transitions' ids.

        Every input is validated before anything is written, so a bad call leaves
        the buffer unchanged.
        """
        compiled = _add_step_kernel is not None and self._single_obs  # dict observations take the numpy path
        if compiled and extras is None:
            ids = self._add_fast(obs, action, reward, next_obs, terminated, truncated)
            if ids is not None:
                return ids
        n_env, rows, k = self.num_envs, self.rows, self._stack
        obs_d = self._check_obs(obs, "obs")
        next_d = self._check_obs(next_obs, "next_obs")
        action = _check_array(action, "action", self._action_full_shape, self._action_dtype)
        if self._discrete_action and (action.min() < self._action_low or action.max() > self._action_high):
            raise ValueError(f"action: values must lie in [{self._action_low}, {self._action_high}]")
        reward = _check_array(reward, "reward", (n_env,), np.dtype(np.float32))
        terminated = _check_array(terminated, "terminated", (n_env,), np.dtype(np.bool_)).astype(np.uint8)
        truncated = _check_array(truncated, "truncated", (n_env,), np.dtype(np.bool_)).astype(np.uint8)
        extra_d = self._check_extras(extras)

        flags, sampleable = self._flags, self._sampleable
        env_base = self._env_base
        starting = self._head < 0
        any_start = bool(starting.any())
        if any_start:
            self._start_episodes(np.flatnonzero(starting), obs_d)
        if compiled:
            return self._add_compiled(next_d[""], action, reward, terminated, truncated, extra_d)  # type: ignore[return-value]

        head = self._head
        head_slot = env_base + head % rows
        self._flat["action"][head_slot] = action
        self._flat["reward"][head_slot] = reward
        flags[head_slot] = HAS_TRANSITION | (terminated << 1) | (truncated << 2)

        written = self._written
        next_slot = env_base + written % rows
        if self._max_written >= rows:  # ring has wrapped somewhere: count overwritten transitions
            self._num_transitions -= int(np.count_nonzero(flags[next_slot] & HAS_TRANSITION))
        for key, values in next_d.items():
            self._flat[self._obs_name(key)][next_slot] = values[:, -1] if self.frame_stack else values
        flags[next_slot] = 0
        self._row_id[next_slot] = written * n_env + self._env_ids
        new_written = written + 1
        self._written = new_written
        self._max_written = int(new_written.max())
        self._num_transitions += n_env
        ids = head * n_env + self._env_ids

        # Sampleable mask. (1) the row that just fell below the stack bound (its oldest
        # frame was overwritten) -- rows further below were cleared by earlier adds.
        oldest_needed = new_written - rows + k - 1  # rows below this have lost a stack frame
        lost = oldest_needed - 1
        if self._max_written - rows + k - 2 >= 0:
            lost_slot = env_base + lost % rows
            sampleable[lost_slot[lost >= 0]] = False
        # (2) rows whose n-step / unroll window just closed.
        done = (terminated | truncated).astype(bool)
        closed = head + 1 - self._lookahead
        ep_first = self._ep_start + (k - 1)
        ok = (closed >= ep_first) & (closed >= oldest_needed)
        sampleable[(env_base + closed % rows)[ok]] = True
        if done.any():
            d_env = np.flatnonzero(done)
            tail = head[d_env, None] - self._lookahead_offsets  # the last `lookahead` rows of the episode
            ok = (tail >= ep_first[d_env, None]) & (tail >= oldest_needed[d_env, None])
            sampleable[(env_base[d_env, None] + tail % rows)[ok]] = True
            self._ep_start[d_env] = new_written[d_env]
            head = head.copy()
            head[d_env] = -1
            head[~done] = written[~done]
            self._head = head
        else:
            self._head = written.copy()
        self._write_extras_and_priorities(head_slot, next_slot, extra_d)
        return ids

    def _add_fast(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any,
                  truncated: Any) -> np.ndarray | None:
        """The usual step (numpy arrays of the stored shapes and dtypes, or any numeric reward and integer
        discrete actions; every env mid-episode) in one compiled call; ``None`` when anything differs, and the
        general path then validates and writes."""
        full, dtype, n_env = self._obs_full_shape[""], self._obs_dtype[""], self.num_envs
        if not (type(obs) is np.ndarray and type(next_obs) is np.ndarray and type(action) is np.ndarray
                and type(reward) is np.ndarray and type(terminated) is np.ndarray and type(truncated) is np.ndarray):
            return None
        if (obs.shape != full or next_obs.shape != full or obs.dtype != dtype or next_obs.dtype != dtype
                or reward.dtype.kind not in "fiub" or reward.shape != (n_env,)
                or terminated.dtype != np.bool_ or truncated.dtype != np.bool_
                or terminated.shape != (n_env,) or truncated.shape != (n_env,)):
            return None
        if self._discrete_action:
            if action.dtype.kind not in "iu" or action.shape != (n_env,):
                return None
        elif action.dtype != self._action_dtype or action.shape != self._action_full_shape:
            return None
        return self._add_compiled(next_obs, action, reward, terminated.view(np.uint8), truncated.view(np.uint8), {})

    def _add_compiled(self, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                      truncated: np.ndarray, extra_d: dict[str, np.ndarray]) -> np.ndarray | None:
        """The rest of ``_add_rows`` in one call of the compiled ``add_step`` (csrc/replay.cpp), same result;
        ``None`` (nothing written) if some env still needs its episode started."""
        n_env, rows = self.num_envs, self.rows
        keep_slots = self._tree is not None or bool(self._extras_spec)
        if keep_slots:
            head_slot = self._env_base + self._head % rows
            next_slot = self._env_base + self._written % rows
        next_bytes = np.ascontiguousarray(next_obs, dtype=self._obs_dtype[""]).reshape(n_env, -1).view(np.uint8)
        if self._discrete_action:
            action_bytes, action_index = self._no_action_bytes, np.ascontiguousarray(action, dtype=np.int64)
        else:
            action_bytes = np.ascontiguousarray(action, dtype=self._action_dtype).reshape(n_env, -1).view(np.uint8)
            action_index = self._no_action_index
        ids = np.empty(n_env, dtype=np.int64)
        removed, max_written = _add_step_kernel(
            self._byte_rows["obs"], next_bytes, next_bytes.shape[1] - self._row_nbytes[""], self._byte_rows["action"],
            action_bytes, action_index, self._action_low, self._action_high, self._flat["reward"],
            np.ascontiguousarray(reward, dtype=np.float32), terminated, truncated, self._flags, self._sampleable,
            self._row_id, self._written, self._head, self._ep_start, ids, rows, self._stack, self._lookahead,
            self._max_written)
        if removed < 0:
            return None
        self._max_written = max_written
        self._num_transitions += n_env - removed
        if keep_slots:
            self._write_extras_and_priorities(head_slot, next_slot, extra_d)
        return ids

    def _write_extras_and_priorities(self, head_slot: np.ndarray, next_slot: np.ndarray,
                                     extra_d: dict[str, np.ndarray]) -> None:
        """The step's extras at its rows (zeros where not given) and priorities: max for the new
        transitions, zero for the rows holding the next observations."""
        for name in self._extras_spec:  # extras not given this step are stored as zeros, not stale data
            self._flat["extra." + name][head_slot] = extra_d.get(name, 0)
        if self._tree is not None:
            n_env = self.num_envs
            new_priority = np.full(n_env, self._max_priority ** self.alpha)
            self._tree.update(np.concatenate([next_slot, head_slot]), np.concatenate([np.zeros(n_env), new_priority]))

    def _check_extras(self, extras: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        if not self._extras_spec:
            if extras:
                raise KeyError(f"this buffer declares no extras, got {sorted(extras)}")
            return {}
        extras = extras or {}
        unknown = set(extras) - set(self._extras_spec)
        if unknown:
            raise KeyError(f"unknown extras {sorted(unknown)}; declared: {sorted(self._extras_spec)}")
        return {name: _check_array(extras[name], f"extras[{name!r}]", (self.num_envs,) + shape, dtype)
                for name, (shape, dtype) in self._extras_spec.items() if name in extras}

    def _start_episodes(self, envs: np.ndarray, obs_d: dict[str, np.ndarray]) -> None:
        """Write the first observation of a new episode (its ``k`` frames) for ``envs``."""
        k, rows = self._stack, self.rows
        base = self._written[envs]
        g = base[:, None] + np.arange(k)  # (s, k) global rows
        slots = self._env_base[envs, None] + g % rows
        if base.max() + k > rows:
            self._num_transitions -= int(np.count_nonzero(self._flags[slots] & HAS_TRANSITION))
        for key, values in obs_d.items():
            target = self._flat[self._obs_name(key)]
            if self.frame_stack:
                target[slots] = values[envs]
            else:
                target[slots[:, 0]] = values[envs]
        self._flags[slots] = 0
        self._sampleable[slots] = False
        self._row_id[slots] = g * self.num_envs + envs[:, None]
        # These k rows push the stack bound k rows further: clear the rows that fell below it.
        below = (base - rows + k - 1)[:, None] + np.arange(k)  # old stack bound .. new bound - 1
        self._sampleable[(self._env_base[envs, None] + below % rows)[below >= 0]] = False
        if self._tree is not None:
            self._tree.update(slots.reshape(-1), 0.0)
        self._ep_start[envs] = base
        self._head[envs] = base + k - 1
        self._written[envs] = base + k
        self._max_written = max(self._max_written, int(self._written.max()))

    def _add_episode(self, env: int, observations: Any, actions: Any, rewards: Any, terminations: Any,
                     truncations: Any, extras: Mapping[str, Any] | None = None) -> np.ndarray:
        """Write one finished episode (``T`` steps, ``T + 1`` observations) into env slot ``env`` at once.

        Used for offline datasets and whole self-play games. The slot must be
        between episodes. If neither flag is set on the last step the episode is
        stored as truncated there (it bootstraps). Returns the steps' ids.
        """
        if not 0 <= env < self.num_envs:
            raise ValueError(f"env slot must lie in [0, {self.num_envs}), got {env}")
        if self._head[env] >= 0:
            raise ValueError(f"env slot {env} is in the middle of an episode; finish it with add() first")
        rewards_np = _to_numpy(rewards, "rewards")
        steps = int(rewards_np.shape[0]) if rewards_np.ndim == 1 else -1
        if steps < 1:
            raise ValueError(f"rewards: expected shape (T,) with T >= 1, got {rewards_np.shape}")
        k, rows = self._stack, self.rows
        if k + steps > rows:
            raise ValueError(f"episode of {steps} steps needs {k + steps} rows but env slot {env} holds {rows}")
        obs_d = self._check_episode_obs(observations, steps + 1)
        action = _check_array(actions, "actions", (steps,) + self._action_shape, self._action_dtype)
        if self._discrete_action and (action.min() < self._action_low or action.max() > self._action_high):
            raise ValueError(f"actions: values must lie in [{self._action_low}, {self._action_high}]")
        reward = _check_array(rewards_np, "rewards", (steps,), np.dtype(np.float32))
        term = _check_array(terminations, "terminations", (steps,), np.dtype(np.bool_)).astype(bool)
        trunc = _check_array(truncations, "truncations", (steps,), np.dtype(np.bool_)).astype(bool)
        if (term[:-1] | trunc[:-1]).any():
            raise ValueError("terminations/truncations: only the last step of an episode may end it")
        trunc = trunc.copy()
        trunc[-1] |= ~term[-1]
        extra_d = {}
        if self._extras_spec or extras:
            extras = extras or {}
            unknown = set(extras) - set(self._extras_spec)
            if unknown:
                raise KeyError(f"unknown extras {sorted(unknown)}; declared: {sorted(self._extras_spec)}")
            extra_d = {name: _check_array(extras[name], f"extras[{name!r}]", (steps,) + shape, dtype)
                       for name, (shape, dtype) in self._extras_spec.items() if name in extras}

        start = int(self._written[env])
        g = start + np.arange(k + steps)  # k rows for the first observation, then one per step
        slots = env * rows + g % rows
        if start + k + steps > rows:
            self._num_transitions -= int(np.count_nonzero(self._flags[slots] & HAS_TRANSITION))
        for key, values in obs_d.items():
            target = self._flat[self._obs_name(key)]
            if self.frame_stack:
                target[slots[:k]] = values[0]
                target[slots[k:]] = values[1:, -1]
            else:
                target[slots] = values
        heads = slots[k - 1 : k - 1 + steps]
        self._flags[slots] = 0
        self._flags[heads] = HAS_TRANSITION | (term.astype(np.uint8) << 1) | (trunc.astype(np.uint8) << 2)
        self._flat["action"][heads] = action
        self._flat["reward"][heads] = reward
        for name in self._extras_spec:
            self._flat["extra." + name][heads] = extra_d.get(name, 0)
        self._row_id[slots] = g * self.num_envs + env
        new_written = start + k + steps
        # Sampleable: clear rows that fell under the stack bound, then mark this episode's steps.
        bound_old, bound_new = start - rows + k - 1, new_written - rows + k - 1
        lost = np.arange(max(bound_old, 0), max(bound_new, 0))
        self._sampleable[slots] = False
        self._sampleable[env * rows + lost % rows] = False
        self._sampleable[heads] = True
        if self._tree is not None:
            self._tree.update(slots, 0.0)
            self._tree.update(heads, self._max_priority ** self.alpha)
        self._written[env] = new_written
        self._max_written = max(self._max_written, new_written)
        self._ep_start[env] = new_written
        self._num_transitions += steps
        return g[k - 1 : k - 1 + steps] * self.num_envs + env

    def _check_episode_obs(self, observations: Any, length: int) -> dict[str, np.ndarray]:
        if self._single_obs:
            return {"": _check_array(observations, "observations", (length,) + self._obs_item_shape[""],
                                     self._obs_dtype[""])}
        if not isinstance(observations, Mapping):
            raise TypeError(f"observations: expected a dict with keys {list(self._obs_leaves)}")
        return {k: _check_array(observations[k], f"observations[{k!r}]", (length,) + self._obs_item_shape[k],
                                self._obs_dtype[k]) for k in self._obs_leaves}

    # ----------------------------------------------------------------- sampling
    def abandon_episodes(self) -> None:
        """Close every open episode without a final step: the next ``add`` starts new ones.

        Used when envs are reset from outside (a resume whose envs could not be
        restored); transitions whose n-step window never closed stay unsampleable.
        """
        self._head[:] = -1

    def sampleable_indices(self) -> np.ndarray:
        """Ids of every transition ``sample`` may currently return (O(capacity); for tests and export)."""
        return np.sort(self._row_id[np.flatnonzero(self._sampleable)])

    def current_beta(self) -> float:
        """Importance-sampling exponent for the next ``sample`` call.

        Annealed linearly from ``beta`` to ``beta_final`` over ``beta_steps`` calls to
        ``sample`` (constant ``beta`` when ``beta_steps == 0``).
        """
        if self.beta_steps <= 0:
            return self.beta
        frac = min(1.0, self._sample_calls / self.beta_steps)
        return self.beta + (self.beta_final - self.beta) * frac

    def _draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``batch_size`` sampleable slots (uniform or proportional); returns (slot, row, env_base).

        Proposals come from the filled region (or the sum tree); the few that are
        not sampleable (open n-step windows, evicted stack frames, episode boundary
        rows) are redrawn, which keeps the distribution exactly uniform
        (proportional) over sampleable transitions.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._num_transitions == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        rows = self.rows
        filled = min(self._max_written, rows)
        rng, tree, sampleable = self._rng, self._tree, self._sampleable
        total_slots = self.num_envs * filled

        def propose(n: int) -> np.ndarray:
            if tree is not None:
                return tree.find(rng.random(n) * tree.total)
            pick = (rng.random(n) * total_slots).astype(np.int64)  # faster than rng.integers for small n
            if filled == rows:
                return pick
            env, row = np.divmod(pick, filled)
            return env * rows + row

        def valid(slot: np.ndarray) -> np.ndarray:
            ok = sampleable[slot]
            return ok & (tree.levels[0][slot] > 0) if tree is not None else ok

        # Over-propose a little and keep the first valid draws: i.i.d. proposals
        # filtered by validity are i.i.d. over the valid set, and one round
        # almost always suffices.
        slot = propose(batch_size + 4 + batch_size // 8)
        slot = slot[valid(slot)][:batch_size]
        if slot.size < batch_size:
            parts = [slot]
            have = slot.size
            for _ in range(16):
                fresh = propose(2 * (batch_size - have) + 4)
                fresh = fresh[valid(fresh)][: batch_size - have]
                parts.append(fresh)
                have += fresh.size
                if have == batch_size:
                    break
            slot = np.concatenate(parts)
            if have < batch_size:  # rare (tiny or mostly-pending buffers): draw from the explicit valid set
                candidates = np.flatnonzero(sampleable)
                if tree is not None:
                    candidates = candidates[tree.get(candidates) > 0]
                if candidates.size == 0:
                    raise ValueError(
                        f"no transition can be sampled yet: {len(self)} stored but none has a complete "
                        f"{self._lookahead}-step window (add more steps before sampling)")
                if tree is not None:
                    prob = tree.get(candidates)
                    extra = rng.choice(candidates, size=batch_size - have, p=prob / prob.sum())
                else:
                    extra = candidates[rng.integers(0, candidates.size, size=batch_size - have)]
                slot = np.concatenate([slot, extra])
        row = slot % rows
        return slot, row, slot - row

    def _importance_weights(self, slot: np.ndarray) -> torch.Tensor:
        beta = self.current_beta()
        self._sample_calls += 1
        if self._tree is None:
            return torch.ones(slot.size, dtype=torch.float32, device=self.device)
        prob = self._tree.get(slot) / self._tree.total
        weights = (len(self) * prob) ** (-beta)
        weights /= weights.max()
        return torch.from_numpy(weights.astype(np.float32)).to(self.device)

    def _gather_rows(self, slots: np.ndarray) -> torch.Tensor | dict[str, torch.Tensor]:
        """Observation rows at ``slots`` (any shape) as tensors of shape ``slots.shape + row_shape``.

        Large gathers use ``torch.index_select`` (multi-threaded), small ones
        ``numpy.take`` (lower call overhead); both copy each row exactly once.
        """
        out = {}
        index = None
        for key in self._obs_leaves:
            name = self._obs_name(key)
            if slots.size * self._row_nbytes[key] >= (1 << 20):
                if index is None:
                    index = torch.from_numpy(slots.reshape(-1))
                src = self._torch_flat[name]
                gathered = torch.index_select(src, 0, index).view(slots.shape + tuple(src.shape[1:]))
            else:
                gathered = torch.from_numpy(np.take(self._np_flat[name], slots, axis=0))
            out[key] = gathered if self._on_cpu else gathered.to(self.device, non_blocking=True)
        return out[""] if self._single_obs else out

    def _gather_windows(self, base: np.ndarray, start: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """Windows of ``length`` consecutive stream rows, per observation leaf, as arrays ``(B, W * length) + row_shape``.

        ``base`` (env base slots) has shape ``(B,)`` and ``start`` (first stream
        row, any integer: taken modulo ``rows``) shape ``(B,)`` or ``(B, W)``;
        window ``w`` of item ``b`` fills positions ``w * length ... (w + 1) *
        length - 1``. The compiled kernel copies each window as at most two
        ``memcpy`` runs (a stream is contiguous except where it wraps around),
        over ``torch.get_num_threads()`` threads for large gathers.
        """
        start = np.ascontiguousarray(start % self.rows, dtype=np.int64)
        base = np.ascontiguousarray(base, dtype=np.int64)
        batch = base.shape[0]
        per_item = (start.size // batch) * length
        threads = torch.get_num_threads()
        out = {}
        for key in self._obs_leaves:
            name = self._obs_name(key)
            arr = np.empty((batch, per_item) + self._obs_row_shape[key], dtype=self._obs_dtype[key])
            if _gather_windows_kernel is not None:
                _gather_windows_kernel(self._byte_rows[name], base, start.reshape(-1), length, self.rows,
                                       arr.reshape(start.size * length, -1).view(np.uint8), threads)
            else:  # without the compiled core (tests cover it by switching the kernel off)
                slots = (start.reshape(batch, -1, 1) + np.arange(length)) % self.rows + base.reshape(-1, 1, 1)
                np.take(self._np_flat[name], slots.reshape(batch, per_item), axis=0, out=arr)
            out[key] = arr
        return out

    def _to_tensors(self, arrays: dict[str, np.ndarray], *parts: slice | int) -> list[torch.Tensor | dict[str, torch.Tensor]]:
        """``arrays[key][:, part]`` for each part as tensors (views of one buffer on the CPU; moved once otherwise)."""
        results: list[dict[str, torch.Tensor]] = [{} for _ in parts]
        for key, arr in arrays.items():
            if self._on_cpu:
                for res, part in zip(results, parts):
                    res[key] = torch.from_numpy(arr[:, part])
            else:
                whole = torch.from_numpy(arr).to(self.device, non_blocking=True)
                for res, part in zip(results, parts):
                    res[key] = whole[:, part]
        return [res[""] if self._single_obs else res for res in results]

    def _gather_obs(self, row: np.ndarray, base: np.ndarray) -> torch.Tensor | dict[str, torch.Tensor]:
        """Observations (stacks rebuilt) at stream rows ``row`` (any shape) of the envs at ``base``."""
        if self.frame_stack:
            return self._gather_rows((row[..., None] + self._stack_offsets) % self.rows + base[..., None])
        return self._gather_rows(row % self.rows + base)

    # -------------------------------------------------------------- priorities
    def _resolve_ids(self, indices: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Map ids (``global_row * num_envs + env``) to slots; second value marks ids still stored."""
        ids = _to_numpy(indices, "indices").astype(np.int64, copy=False).reshape(-1)
        g, env = np.divmod(ids, self.num_envs)
        slot = env * self.rows + g % self.rows
        alive = (self._row_id[slot] == ids) & (g >= 0) & (g < self._written[env])
        alive &= (self._flags[slot] & HAS_TRANSITION) != 0
        return slot, alive

    def update_priorities(self, indices: ArrayLike, priorities: ArrayLike) -> None:
        """Set priorities ``(|p| + eps) ** alpha`` for sampled ``indices`` (stale ids are ignored)."""
        if self._tree is None:
            raise RuntimeError("update_priorities needs a buffer built with prioritized=True")
        pr = _to_numpy(priorities, "priorities").astype(np.float64, copy=False).reshape(-1)
        flat, alive = self._resolve_ids(indices)
        if pr.shape != flat.shape:
            raise ValueError(f"priorities: expected {flat.size} values, got shape {pr.shape}")
        if not np.all(np.isfinite(pr)):
            raise ValueError("priorities must be finite (got NaN or inf)")
        pr = np.abs(pr) + self.eps
        if pr.size:
            self._max_priority = max(self._max_priority, float(pr.max()))
        self._tree.update(flat[alive], pr[alive] ** self.alpha)

    def priorities(self, indices: ArrayLike) -> np.ndarray:
        """Current sum-tree values ``p ** alpha`` of ``indices`` (0 for stale ids)."""
        if self._tree is None:
            raise RuntimeError("priorities need a buffer built with prioritized=True")
        flat, alive = self._resolve_ids(indices)
        return np.where(alive, self._tree.get(flat), 0.0)

    # ------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (spaces as JSON), enough to rebuild an empty twin."""
        return {
            "capacity": self.capacity, "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space), "num_envs": self.num_envs,
            "n_step": self.n_step, "gamma": self.gamma, "frame_stack": self.frame_stack,
            "prioritized": self.prioritized, "alpha": self.alpha, "beta": self.beta,
            "beta_final": self.beta_final, "beta_steps": self.beta_steps, "eps": self.eps, "seed": self.seed,
            **self._extra_config(),
        }

    def _extra_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_config(cls, config: Mapping[str, Any], **overrides: Any) -> ReplayBase:
        kwargs = dict(config)
        kwargs["observation_space"] = space_from_json(kwargs["observation_space"])
        kwargs["action_space"] = space_from_json(kwargs["action_space"])
        kwargs.update(overrides)
        return cls(**kwargs)

    def _scalars(self) -> dict[str, Any]:
        return {"num_transitions": int(self._num_transitions), "sample_calls": int(self._sample_calls),
                "max_priority": float(self._max_priority), "rng": json.dumps(self._rng.bit_generator.state)}

    def _saved_rows(self) -> int:
        """Rows per env a saved state holds. Rows from ``max(written)`` on were never
        written: while they are at least half of each stream they are left out (a
        100k-row Atari buffer 300 steps into a run saves 2 MB, not 700 MB of zeros),
        at the cost of a copy of the rows kept (they are not contiguous in memory).
        Past half, every row is saved as it lies, without a copy."""
        n = min(self._max_written, self.rows)
        return n if 2 * n <= self.rows else self.rows

    def _state_arrays(self, rows: int | None = None) -> dict[str, np.ndarray]:
        """The saved arrays; storage trimmed to ``rows`` per env (default: :meth:`_saved_rows`;
        ``self.rows`` gives the storage itself, no copy)."""
        n = self._saved_rows() if rows is None else rows
        arrays = {"storage." + name: (arr if n == self.rows else np.ascontiguousarray(arr[:, :n]))
                  for name, arr in self._arrays.items()}
        arrays["pointer.written"] = self._written
        arrays["pointer.head"] = self._head
        arrays["pointer.ep_start"] = self._ep_start
        if self._tree is not None:
            arrays["priority.leaves"] = self._tree.leaves
        return arrays

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume (storage, pointers, priorities, RNG).

        Arrays are returned as CPU torch tensors sharing memory with the buffer
        (so ``torch.save`` writes them and ``torch.load(weights_only=True)`` reads
        them back); scalars are Python values, the config a JSON string.
        """
        return {
            "format": "arbor-replay", "version": STATE_VERSION, "kind": self._kind,
            "config": json.dumps(self.config(), sort_keys=True), **self._scalars(),
            "arrays": {name: torch.from_numpy(np.asarray(arr)) for name, arr in self._state_arrays().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; everything is validated before anything changes."""
        if state.get("format") != "arbor-replay" or state.get("kind") != self._kind:
            raise ValueError(f"not a {self._kind} state (format={state.get('format')!r}, kind={state.get('kind')!r})")
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"replay state version {state.get('version')!r} is not supported (expected {STATE_VERSION})")
        config = state["config"]
        config = json.loads(config) if isinstance(config, str) else dict(config)
        mine = self.config()
        layout_keys = [k for k in mine if k not in ("seed", "beta", "beta_final", "beta_steps", "eps", "alpha")]
        diff = [k for k in layout_keys if json.dumps(config.get(k), sort_keys=True) != json.dumps(mine[k], sort_keys=True)]
        if diff:
            raise ValueError(f"replay state does not match this buffer's configuration: {diff} differ")
        arrays = {name: _to_numpy(value, name) for name, value in state["arrays"].items()}
        expected = self._state_arrays(rows=self.rows)  # names, dtypes and full shapes, without a copy
        if set(arrays) != set(expected):
            raise ValueError(f"replay state arrays {sorted(arrays)} do not match {sorted(expected)}")
        written = arrays["pointer.written"]
        if written.shape != self._written.shape or written.dtype != self._written.dtype or np.any(written < 0):
            raise ValueError(f"replay state array 'pointer.written' has shape {written.shape} dtype {written.dtype}; "
                             f"expected {self._written.shape} {self._written.dtype}, no negative entries")
        # Storage holds each env's first rows, at least those written so far (version 1: every row).
        n = arrays["storage.flags"].shape[1] if arrays["storage.flags"].ndim == 2 else -1
        if not min(int(written.max()), self.rows) <= n <= self.rows:
            n = self.rows
        for name, target in expected.items():
            shape = target.shape[:1] + (n,) + target.shape[2:] if name.startswith("storage.") else target.shape
            if arrays[name].shape != shape or arrays[name].dtype != target.dtype:
                raise ValueError(f"replay state array {name!r} has shape {arrays[name].shape} dtype "
                                 f"{arrays[name].dtype}; expected {shape} {target.dtype}")
        if self._tree is not None:
            leaves = arrays["priority.leaves"]
            if np.any(leaves < 0) or not np.all(np.isfinite(leaves)):
                raise ValueError("replay state has invalid priorities")
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(state["rng"])
        # Validated: now mutate. Rows past the saved ones were never written: a buffer
        # that held data clears them, a new one is zeros there already.
        used = self._max_written > 0
        for name, arr in self._arrays.items():
            saved, kept = arrays["storage." + name], arr[:, :n]
            if not _same_memory(saved, kept):  # load() reads full-size arrays straight into the storage
                kept[...] = saved
            if used and n < self.rows:
                arr[:, n:] = 0
        self._written = arrays["pointer.written"].astype(np.int64, copy=True)
        self._max_written = int(self._written.max())
        self._head = arrays["pointer.head"].astype(np.int64, copy=True)
        self._ep_start = arrays["pointer.ep_start"].astype(np.int64, copy=True)
        if self._tree is not None:
            self._tree.set_all(arrays["priority.leaves"])
        self._num_transitions = int(state["num_transitions"])
        self._sample_calls = int(state["sample_calls"])
        self._max_priority = float(state["max_priority"])
        self._rng = rng
        for key in ("alpha", "beta", "beta_final", "beta_steps", "eps"):
            if key in config:
                setattr(self, key, type(getattr(self, key))(config[key]))

    def save(self, path: str | os.PathLike) -> int:
        """Write the whole buffer to ``path`` in the Arbor replay format; returns bytes written."""
        state = self.state_dict()
        meta = {k: v for k, v in state.items() if k != "arrays"}
        return fileformat.write(path, meta, self._state_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu", storage: str = "memory",
             storage_path: str | os.PathLike | None = None) -> ReplayBase:
        """Rebuild a buffer saved with :meth:`save` (verifies version and checksums first)."""
        header = fileformat.read_header(path)
        meta = header["meta"]
        if meta.get("format") != "arbor-replay" or meta.get("kind") != cls._kind:
            raise ValueError(f"{os.fspath(path)!r} holds a {meta.get('kind')!r} buffer, not a {cls._kind!r}")
        try:
            buf = cls._from_config(json.loads(meta["config"]), device=device, storage=storage, path=storage_path)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{os.fspath(path)!r} has an unusable config: {exc}") from None
        # Storage arrays that hold every row are read (and checksummed) straight into the
        # new buffer: one pass, no second copy, and with the mmap backend no full copy in
        # RAM either. A buffer saved less than half full is read, then copied in.
        into = {"storage." + name: arr for name, arr in buf._arrays.items()}
        meta, arrays = fileformat.read(path, into=into, header=header)
        buf.load_state_dict({**meta, "arrays": arrays})
        return buf
