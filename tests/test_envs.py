"""The environment factory: spaces, SAME_STEP next observations, game returns, snapshots."""
from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from conftest import compose
from envs.snapshot import capture_env_state, restore_env_state

CARTPOLE = {"kind": "gym", "id": "CartPole-v1", "name": "cartpole"}


def test_cartpole_next_obs_is_final_observation_at_episode_end():
    env, spec = envs.make(CARTPOLE, num_envs=3, seed=0)
    assert spec.num_actions == 2 and spec.observation_space.shape == (4,)
    obs, _ = env.reset(seed=0)
    seen_end = False
    for _ in range(200):
        next_obs, reward, terminated, truncated, info = env.step(np.ones(3, dtype=np.int64))  # always push right
        done = terminated | truncated
        # running envs: next_obs is the observation returned; finished ones: the terminal state, out of bounds
        np.testing.assert_array_equal(info["next_obs"][~done], next_obs[~done])
        if done.any():
            seen_end = True
            final = info["next_obs"][done]
            assert (np.abs(final[:, 0]) > 2.4).any() or (np.abs(final[:, 2]) > 0.2094).any()
            assert not np.allclose(final, next_obs[done])   # the returned obs is the new episode's first
    assert seen_end
    returns, lengths = env.pop_episodes()
    assert len(returns) > 0 and returns == [float(n) for n in lengths]   # +1 per step in CartPole


def test_snapshot_restores_identical_future():
    env, _ = envs.make(CARTPOLE, num_envs=2, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        env.step(rng.integers(0, 2, 2))
    state = capture_env_state(env)
    actions = rng.integers(0, 2, size=(60, 2))
    first = [env.step(a)[0].copy() for a in actions]
    other, _ = envs.make(CARTPOLE, num_envs=2, seed=99)
    restore_env_state(other, state)
    second = [other.step(a)[0].copy() for a in actions]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))


def test_minigrid_image_and_dict_observations():
    env, spec = envs.make({"kind": "minigrid", "id": "MiniGrid-Empty-5x5-v0", "name": "mg"}, num_envs=2, seed=0)
    assert spec.observation_space.shape == (3, 7, 7) and spec.is_image
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 3, 7, 7) and obs.dtype == np.uint8
    full, spec_full = envs.make({"kind": "minigrid", "id": "MiniGrid-Empty-5x5-v0", "name": "mg",
                                 "fully_observed": True}, num_envs=1, seed=0)
    assert spec_full.observation_space.shape == (3, 5, 5)
    dict_env, spec_dict = envs.make({"kind": "minigrid", "id": "MiniGrid-Empty-5x5-v0", "name": "mg",
                                     "obs": "dict"}, num_envs=2, seed=0)
    obs, _ = dict_env.reset(seed=0)
    assert set(obs) == {"image", "direction"} and obs["image"].shape == (2, 3, 7, 7)


def test_minigrid_wrapper_passes_check_env():
    from envs.minigrid import minigrid_env_fn

    for fully_observed in (False, True):
        for mode in ("image", "dict"):
            check_env(minigrid_env_fn("MiniGrid-Empty-5x5-v0", fully_observed, mode, None)(),
                      skip_render_check=True)


@pytest.mark.parametrize("protocol,sticky,life_loss", [("machado2018", 0.25, False), ("atari100k", 0.0, True)])
def test_atari_protocols(protocol, sticky, life_loss):
    from envs.atari import resolve_protocol

    proto = resolve_protocol(protocol, {})
    assert proto.sticky_actions == sticky and proto.life_loss_terminal == life_loss
    assert proto.frame_skip == 4 and proto.max_episode_frames == 108_000
    env, spec = envs.make({"kind": "atari", "game": "breakout", "protocol": protocol, "name": "b"}, 2, seed=0)
    assert spec.observation_space.shape == (4, 84, 84) and spec.frame_stack == 4 and spec.reward_clip == 1.0
    assert spec.max_episode_steps == 27_000
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    env.close()


def test_atari_game_starts_follow_the_protocol():
    """atari100k starts each game after 0-29 raw no-op frames (Dopamine's MaxEpisodeEvalRunner); nothing presses FIRE."""
    from dataclasses import replace

    from envs.atari import PROTOCOLS, make_atari

    def start_frames(protocol):
        env, _ = make_atari("breakout", 8, protocol, eval_mode=False)
        _, info = env.reset(seed=3)
        env.close()
        return info["episode_frame_number"]

    frames = start_frames(PROTOCOLS["atari100k"])
    assert frames.min() >= 0 and frames.max() <= 29 and len(set(frames.tolist())) > 1
    assert (start_frames(PROTOCOLS["machado2018"]) == 0).all()          # no no-ops, no FIRE
    assert (start_frames(replace(PROTOCOLS["machado2018"], fire_reset=True)) == 1).all()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_atari100k_restarts_the_frame_stack_after_a_lost_life(mode):
    """Dopamine's runner begins a new agent episode at a lost life: the stack restarts from zero frames."""
    cfg = {"kind": "atari", "game": "breakout", "protocol": "atari100k", "name": "b"}
    env, _ = envs.make(cfg, num_envs=2, seed=1, mode=mode)
    rng = np.random.default_rng(0)
    lives = env.lives.copy()
    seen = 0
    for _ in range(3000):
        obs, _, terminated, truncated, info = env.step(rng.integers(0, 4, size=2))
        lost = np.flatnonzero(info["lives"] < lives)
        lives = info["lives"].copy()
        if lost.size:
            i = lost[0]
            assert terminated[i] == (mode == "train") and not truncated[i]
            assert (obs[i, :3] == 0).all() and obs[i, 3].any()
            for zeroed in (2, 1, 0):       # the pre-loss frames leave the stack one per step
                newest = obs[i, 3].copy()
                obs, *_, info = env.step(rng.integers(0, 4, size=2))
                assert (obs[i, :zeroed] == 0).all() and obs[i, zeroed:].any()
                assert np.array_equal(obs[i, 2], newest)
                lives = info["lives"].copy()
            seen += 1
            if seen == 2:
                break
    env.close()
    assert seen == 2


def test_drq_preset_keeps_the_atari100k_noop_starts():
    from envs.atari import resolve_protocol

    cfg = compose("agent=drq", "env=atari", "logger=none")
    overrides = {k: v for k, v in cfg.env.items() if k != "protocol"}
    proto = resolve_protocol(cfg.env.protocol, overrides)
    assert cfg.env.protocol == "atari100k" and proto.noop_max == 30 and proto.fire_reset is False


def test_atari_reset_takes_seeds_past_the_32_bit_range():
    """A resumed run reseeds with seed + 1_000_003 * (steps + 1), past 2**31 after ~2k steps; ALE takes C ints."""
    cfg = {"kind": "atari", "game": "breakout", "protocol": "atari100k", "name": "b"}
    env, _ = envs.make(cfg, num_envs=2, seed=0)
    big = 1 + 1_000_003 * 50_001
    first, _ = env.reset(seed=big)
    again, _ = env.reset(seed=big)
    np.testing.assert_array_equal(first, again)
    env.reset(seed=np.int64(2**63 - 1))
    env.close()


def test_atari_override_and_life_loss_game_returns():
    """Life loss ends a learning episode but the reported return is the whole game's."""
    cfg = {"kind": "atari", "game": "breakout", "protocol": "atari100k", "name": "b", "max_episode_frames": 4000}
    env, _ = envs.make(cfg, num_envs=1, seed=0)
    env.reset(seed=0)
    terminals, games = 0, 0
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(1000):
        _, reward, terminated, truncated, info = env.step(rng.integers(0, 4, 1))
        total += float(reward[0])
        terminals += int(terminated[0])
        games += int(info["game_over"][0])
        if games:
            break
    assert games == 1
    assert terminals == 5          # breakout: five lives, each loss a learning terminal, the last one the game's end
    returns, _ = env.pop_episodes()
    assert returns == [total]
    env.close()


MINATAR = {"kind": "minatar", "name": "minatar-breakout", "game": "breakout", "max_episode_steps": 10000}


def _rollout(env, steps, seed):
    rng = np.random.default_rng(seed)
    frames, rewards = [], []
    for _ in range(steps):
        obs, reward, *_ = env.step(rng.integers(0, 6, size=env.num_envs))
        frames.append(obs.copy())
        rewards.append(reward.copy())
    return np.stack(frames), np.stack(rewards)


def test_minatar_observations_and_seeded_repeatability():
    env_a, spec = envs.make(MINATAR, num_envs=3, seed=5)
    env_b, _ = envs.make(MINATAR, num_envs=3, seed=5)
    env_c, _ = envs.make(MINATAR, num_envs=3, seed=6)
    assert spec.observation_space.shape == (4, 10, 10) and spec.num_actions == 6
    frames_a, rewards_a = _rollout(env_a, 300, 0)
    frames_b, rewards_b = _rollout(env_b, 300, 0)
    frames_c, _ = _rollout(env_c, 300, 0)
    assert frames_a.dtype == np.uint8 and set(np.unique(frames_a)) <= {0, 1}
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    assert not np.array_equal(frames_a, frames_c)   # the seed reaches MinAtar's random stream
    assert rewards_a.sum() > 0                       # random play breaks some bricks
    returns, lengths = env_a.pop_episodes()
    assert returns and len(returns) == len(lengths)


def test_minatar_single_env_passes_check_env_and_minimal_actions():
    from envs.minatar import MinAtarEnv

    check_env(MinAtarEnv("space_invaders"), skip_render_check=True)
    env, spec = envs.make({**MINATAR, "minimal_actions": True}, num_envs=1, seed=0)
    assert spec.num_actions == 3   # Breakout: no-op, left, right
    frame = MinAtarEnv("breakout", render_mode="rgb_array")
    frame.reset(seed=0)
    assert frame.render().shape == (160, 160, 3)


def test_minatar_bad_settings_name_the_key():
    from runtime.errors import UserError

    with pytest.raises(UserError, match="env.game"):
        envs.make({**MINATAR, "game": "brekout"}, num_envs=1, seed=0)
    with pytest.raises(UserError, match="env.sticky_action_prob"):
        envs.make({**MINATAR, "sticky_action_prob": 1.5}, num_envs=1, seed=0)


@pytest.mark.parametrize("game", ["asterix", "breakout", "freeway", "seaquest", "space_invaders"])
def test_minatar_snapshot_restores_identical_future(game, tmp_path):
    """The snapshot survives a checkpoint file (plain data only) and replays the same future."""
    from runtime import checkpoint as ckpt

    env, _ = envs.make({**MINATAR, "game": game}, num_envs=2, seed=1)
    _rollout(env, 150, 1)
    ckpt.save(tmp_path / "env.pt", {"config": {}, "agent": {}, "progress": {}, "env": capture_env_state(env)})
    state = ckpt.load(tmp_path / "env.pt")["env"]
    future, rewards = _rollout(env, 200, 2)
    other, _ = envs.make({**MINATAR, "game": game}, num_envs=2, seed=99)
    restore_env_state(other, state)
    replay, replay_rewards = _rollout(other, 200, 2)
    np.testing.assert_array_equal(future, replay)
    np.testing.assert_array_equal(rewards, replay_rewards)
