"""Environment factory: every environment the suite trains or evaluates on.

``envs.make(env_cfg, num_envs, seed, mode)`` returns a :class:`SuiteVectorEnv`
(Gymnasium vector env, SAME_STEP autoreset, ``info['next_obs']`` dense) and the
:class:`EnvSpec` agents build themselves from. Kinds:

- ``gym``: any registered Gymnasium id (classic control: ``CartPole-v1``, ``Acrobot-v1`` ...);
- ``atari``: ale-py's native vector env under a named protocol (see :mod:`envs.atari`);
- ``minigrid``: MiniGrid ids, partial or full view (see :mod:`envs.minigrid`);
- ``minatar``: the five MinAtar games, 10 x 10 channels-first grids (see :mod:`envs.minatar`);
- ``game``: two-player board games (``envs.games``): the batched simulator itself,
  not a vector env, for agents that search with the real rules (``make_game_env``).
"""
from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from envs import pixels as _pixels  # noqa: F401  (registers the Gymnasium id Arbor/PixelPendulum-v0)
from envs.episodes import SuiteVectorEnv
from envs.spec import EnvSpec

KINDS = ("gym", "atari", "minigrid", "minatar", "game")
SNAPSHOT_KINDS = ("gym", "minatar")   # kinds whose state envs.snapshot captures whole (exact resume)

__all__ = ["make", "make_spec", "EnvSpec", "SuiteVectorEnv", "KINDS"]


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    return cfg[key] if key in cfg and cfg[key] is not None else default


def _gym_vector(env_fn, num_envs: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([env_fn] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)


def make(env_cfg: Mapping[str, Any], num_envs: int, seed: int, mode: str = "train",
         render: bool = False) -> tuple[SuiteVectorEnv, EnvSpec]:
    """Build ``num_envs`` copies of the configured env, reset with ``seed``.

    ``mode='eval'`` applies the evaluation protocol (Atari: whole games, no
    life-loss terminals). ``render=True`` asks for RGB frames (videos).
    """
    from runtime.errors import UserError

    kind = env_cfg["kind"]
    if kind not in KINDS:
        raise UserError(f"unknown environment kind {kind!r}", choices=list(KINDS), key="env.kind")
    if kind == "game":
        return make_game_env(env_cfg, num_envs, seed)
    name = str(env_cfg.get("name", kind))
    render_mode = "rgb_array" if render else None
    life_loss = stack_restart = False
    frame_stack, frame_skip, reward_clip, protocol, max_steps = 0, 1, None, None, None
    if kind == "gym":
        env_id = env_cfg["id"]
        if env_id not in gym.envs.registry:
            import difflib

            close = difflib.get_close_matches(env_id, list(gym.envs.registry), n=5)
            raise UserError(f"there is no Gymnasium environment {env_id!r}"
                            + (f" (did you mean {', '.join(close)}?)" if close else ""), key="env.id")
        kwargs = dict(_get(env_cfg, "kwargs", {}))
        vec = _gym_vector(lambda: gym.make(env_id, render_mode=render_mode, **kwargs), num_envs)
        max_steps = gym.envs.registry[env_id].max_episode_steps
    elif kind == "atari":
        from envs.atari import make_atari, resolve_protocol

        protocol = str(_get(env_cfg, "protocol", "machado2018"))
        proto = resolve_protocol(protocol, dict(env_cfg))
        vec, life_loss = make_atari(str(env_cfg["game"]), num_envs, proto, eval_mode=(mode == "eval"))
        frame_stack, frame_skip, reward_clip = proto.frame_stack, proto.frame_skip, proto.reward_clip
        stack_restart = bool(proto.life_loss_stack_restart)
        max_steps = proto.max_episode_frames // proto.frame_skip
    elif kind == "minatar":
        from envs.minatar import GAMES, minatar_env_fn

        game = str(env_cfg.get("game"))
        if game not in GAMES:
            raise UserError(f"there is no MinAtar game {game!r}", choices=list(GAMES), key="env.game")
        prob = float(_get(env_cfg, "sticky_action_prob", 0.1))
        if not 0.0 <= prob <= 1.0:
            raise UserError(f"env.sticky_action_prob must lie in [0, 1], got {prob}", key="env.sticky_action_prob")
        max_steps = _get(env_cfg, "max_episode_steps", None)
        fn = minatar_env_fn(game, prob, bool(_get(env_cfg, "difficulty_ramping", True)),
                            bool(_get(env_cfg, "minimal_actions", False)), max_steps, render_mode)
        vec = _gym_vector(fn, num_envs)
    else:
        from envs.minigrid import minigrid_env_fn, minigrid_ids

        env_id = env_cfg["id"]
        ids = minigrid_ids()
        if env_id not in ids:
            raise UserError(f"there is no MiniGrid environment {env_id!r}", choices=ids, key="env.id")
        obs_mode = str(_get(env_cfg, "obs", "image"))
        if obs_mode not in ("image", "dict"):
            raise UserError(f"env.obs must be 'image' or 'dict', got {obs_mode!r}", key="env.obs")
        fn = minigrid_env_fn(env_id, bool(_get(env_cfg, "fully_observed", False)), obs_mode, render_mode)
        vec = _gym_vector(fn, num_envs)
        max_steps = gym.envs.registry[env_id].max_episode_steps
    env = SuiteVectorEnv(vec, life_loss_terminal=life_loss, stack_restart_on_life_loss=stack_restart)
    env.reset(seed=int(seed))
    if kind != "atari":
        env.action_space.seed(int(seed))
    spec = EnvSpec(
        name=name, observation_space=env.single_observation_space, action_space=env.single_action_space,
        num_envs=num_envs, frame_stack=frame_stack, frame_skip=frame_skip, max_episode_steps=max_steps,
        reward_clip=reward_clip, protocol=protocol, extras={"kind": kind, "snapshot": kind in SNAPSHOT_KINDS})
    return env, spec


def make_game_env(env_cfg: Mapping[str, Any], num_envs: int, seed: int):
    """A batch of ``num_envs`` two-player games (``env.game``) and its spec (``num_players=2``)."""
    from envs.games import GAME_NAMES, make_game
    from runtime.errors import UserError

    name = str(env_cfg.get("game") or "")
    kwargs = dict(_get(env_cfg, "kwargs", {}))
    try:
        game = make_game(name, batch_size=num_envs, **kwargs)
    except ModuleNotFoundError as err:
        raise UserError(f"env.game={name!r} needs OpenSpiel ({err}); pip install open-spiel", key="env.game") from None
    except ValueError as err:
        raise UserError(str(err), choices=list(GAME_NAMES), key="env.game") from None
    low, high = getattr(game, "observation_bounds", (-1.0, 1.0))
    obs_space = gym.spaces.Box(low, high, shape=tuple(game.observation_shape), dtype=np.float32)
    spec = EnvSpec(name=str(env_cfg.get("name", name)), observation_space=obs_space,
                   action_space=gym.spaces.Discrete(int(game.num_actions)), num_envs=num_envs, num_players=2,
                   max_episode_steps=int(game.max_game_length),
                   extras={"kind": "game", "snapshot": False, "game": name, "game_kwargs": kwargs})
    return game, spec


def make_spec(env_cfg: Mapping[str, Any]) -> EnvSpec:
    """The spec of the configured env, from one throwaway copy."""
    env, spec = make(env_cfg, num_envs=1, seed=0)
    if hasattr(env, "close"):   # board games hold no resources
        env.close()
    return spec


def render_frames(env: SuiteVectorEnv, obs: Any, kind: str) -> np.ndarray | None:
    """An RGB frame of env 0 for videos: the env's own render, or the newest Atari frame."""
    if kind == "atari":
        from envs.atari import render_frame

        return render_frame(np.asarray(obs)[0])
    frames = env.render()
    if frames is None:
        return None
    return np.asarray(frames[0] if isinstance(frames, (list, tuple)) else frames)
