"""Atari through ale-py's native vector environment, with named evaluation protocols.

A protocol fixes everything that changes scores between papers. Two presets:

``machado2018`` (Machado et al. 2018, "Revisiting the ALE"; Gymnasium's ALE v5 defaults)
    frame skip 4 with max-pooling of the last two frames, sticky actions with
    probability 0.25, no no-op starts (sticky actions already randomise), no FIRE
    pressed at reset, no life-loss terminals, episodes capped at 108,000 frames (27,000 agent steps),
    minimal action set, 84x84 grayscale, stacks of 4.

``atari100k`` (Kaiser et al. 2020, as run by DER, DrQ and DrQ(epsilon) in Dopamine's
``MaxEpisodeEvalRunner`` and later ``DataEfficientAtariRunner``)
    frame skip 4, NO sticky actions, no FIRE pressed at reset, and no-op starts: a
    uniform 0-29 raw no-op frames at the start of every game, in training and
    evaluation (Dopamine's ``max_noops=30``; ale-py's ``noop_max=30`` draws the same).
    A lost life is a terminal for learning; the game goes on, and evaluation and
    reported returns count whole games. After a lost life the frame stack restarts
    from zero frames, in training and evaluation (Dopamine's runner begins a new agent
    episode there, which zeroes the agent's stack). Episodes capped at 108,000 frames,
    minimal action set, 84x84 grayscale, stacks of 4.

Rewards reach agents unclipped; ``EnvSpec.reward_clip`` = 1 tells agents to clip
their learning rewards, so logged returns are always game scores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
from gymnasium.vector import AutoresetMode

PROTOCOLS: dict[str, "AtariProtocol"] = {}


@dataclass(frozen=True)
class AtariProtocol:
    """Every setting that differs between Atari evaluation protocols."""

    frame_skip: int = 4
    sticky_actions: float = 0.25
    noop_max: int = 0              # games start after a uniform 0..noop_max-1 raw no-op frames
    fire_reset: bool = False       # press FIRE once at each reset (neither protocol does)
    life_loss_terminal: bool = False
    life_loss_stack_restart: bool = False   # frames from before a lost life are zeroed, as at a new game
    max_episode_frames: int = 108_000
    full_action_space: bool = False
    frame_stack: int = 4
    image_size: int = 84
    reward_clip: float | None = 1.0


PROTOCOLS["machado2018"] = AtariProtocol()
PROTOCOLS["atari100k"] = AtariProtocol(sticky_actions=0.0, noop_max=30, life_loss_terminal=True,
                                        life_loss_stack_restart=True)


def game_names() -> list[str]:
    """Every ROM name that ale-py ships."""
    from ale_py import roms

    return sorted(roms.get_all_rom_ids())


def resolve_protocol(name: str, overrides: dict) -> AtariProtocol:
    """The named protocol with any non-null overrides from the config applied."""
    from runtime.errors import UserError

    if name not in PROTOCOLS:
        raise UserError(f"unknown Atari protocol {name!r}", choices=sorted(PROTOCOLS), key="env.protocol")
    fields = set(asdict(PROTOCOLS[name]))
    given = {k: v for k, v in overrides.items() if k in fields and v is not None}
    return replace(PROTOCOLS[name], **given)


# Settings that act only when a life is lost: moot in a game without lives.
LIFE_SETTINGS = ("life_loss_terminal", "life_loss_stack_restart")


@lru_cache(maxsize=None)
def game_has_lives(game: str) -> bool:
    """Whether ``game`` counts lives: ALE reports a positive count at reset or within
    its first 64 frames (a few games, e.g. Demon Attack and Amidar, show theirs
    only once play starts). Boxing, Freeway, Pong and Private Eye have none. An
    unknown name, or a ROM ALE cannot load, counts as having lives."""
    if game not in game_names():
        return True
    try:
        import ale_py
        from ale_py import roms

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)   # before the banner
        ale = ale_py.ALEInterface()
        ale.loadROM(roms.get_rom_path(game))
    except Exception:
        return True
    ale.reset_game()
    for _ in range(64):
        if ale.lives() > 0:
            return True
        ale.act(0)
    return ale.lives() > 0


def protocol_departures(env_config: dict, reference: str = "atari100k") -> list[str]:
    """How a finished run, read from its stored ``env`` config, departs from protocol ``reference``.

    Each departure reads ``setting=value``; a setting the stored config does not
    hold at all (a run from before the setting existed, which played ale-py's
    default then: FIRE pressed at each reset, no stack restart) reads ``setting
    not recorded``. In a game without lives (``game_has_lives``) the life-loss
    settings never act, and are not departures. An empty list: the run played
    ``reference`` exactly.
    """
    name = env_config.get("protocol")
    if name not in PROTOCOLS:
        return [f"protocol={name}"]
    played = asdict(resolve_protocol(name, env_config))
    game = env_config.get("game")
    moot = LIFE_SETTINGS if game is not None and not game_has_lives(str(game)) else ()
    return [f"{setting} not recorded" if setting not in env_config else f"{setting}={played[setting]}"
            for setting, wanted in asdict(PROTOCOLS[reference]).items()
            if setting not in moot and (setting not in env_config or played[setting] != wanted)]


def make_atari(game: str, num_envs: int, protocol: AtariProtocol, eval_mode: bool):
    """An ale-py vector env for ``game`` under ``protocol`` (whole games when ``eval_mode``)."""
    from ale_py.vector_env import AtariVectorEnv

    from runtime.errors import UserError

    names = game_names()
    if game not in names:
        import difflib

        close = difflib.get_close_matches(game, names, n=5)
        raise UserError(
            f"there is no Atari game named {game!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""),
            choices=names, key="env.game")
    life_loss = protocol.life_loss_terminal and not eval_mode
    return AtariVectorEnv(
        game, num_envs,
        frameskip=protocol.frame_skip,
        repeat_action_probability=float(protocol.sticky_actions),
        noop_max=protocol.noop_max,
        use_fire_reset=bool(protocol.fire_reset),   # ale-py presses FIRE unless told not to
        episodic_life=False,
        life_loss_info=life_loss,   # terminal on a lost life, the game goes on (Dopamine's semantics)
        max_num_frames_per_episode=protocol.max_episode_frames,
        full_action_space=protocol.full_action_space,
        stack_num=protocol.frame_stack,
        img_height=protocol.image_size, img_width=protocol.image_size,
        reward_clipping=False,
        autoreset_mode=AutoresetMode.SAME_STEP,
        num_threads=max(1, min(num_envs, 2)),
    ), life_loss


def render_frame(obs: np.ndarray) -> np.ndarray:
    """An RGB frame for videos from a stacked grayscale observation (its newest frame)."""
    frame = obs[-1]
    return np.repeat(frame[..., None], 3, axis=-1)
