"""Gymnasium wrapper of the board games."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs.games  # noqa: F401  (registers the Arbor/* ids)
from envs.games import (BoardGameEnv, FinishedGameError, IllegalActionError,
                        PerfectTicTacToePlayer)


@pytest.mark.parametrize("env_id,kwargs", [
    ("Arbor/TicTacToe-v0", {}),
    ("Arbor/ConnectFour-v0", {}),
    ("Arbor/ConnectFour-v0", {"agent_player": 1, "opponent": "mcts:10"}),
    ("Arbor/OpenSpiel-v0", {"game": "openspiel:tic_tac_toe"}),
    ("Arbor/OpenSpiel-v0", {"game": "openspiel:othello", "opponent": "random"}),
])
def test_check_env_passes(env_id, kwargs):
    if "OpenSpiel" in env_id or "mcts" in str(kwargs):
        pytest.importorskip("pyspiel")
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped)    # includes determinism under seeding and render modes
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["action_mask"].dtype == np.int8
    assert info["action_mask"].shape == (env.action_space.n,)


def _play_episode(env, rng, seed):
    obs, info = env.reset(seed=seed)
    total, steps = 0.0, 0
    for _ in range(100):   # bounded: a game that never ends is a bug
        legal = np.flatnonzero(info["action_mask"])
        obs, reward, terminated, truncated, info = env.step(int(rng.choice(legal)))
        assert not truncated and not info["illegal_action"]
        total += reward
        steps += 1
        if terminated:
            return obs, total, steps
    raise AssertionError("episode did not end")


def test_episodes_follow_the_mask_and_score_the_result():
    env = BoardGameEnv("tic_tac_toe", opponent="random")
    rng = np.random.default_rng(0)
    rewards, colours = [], set()
    for seed in range(40):
        obs, total, _ = _play_episode(env, rng, seed)
        rewards.append(total)
        colours.add(env.agent_player)
        # the final observation is still the agent's view (colour plane)
        assert (obs[2] == (1.0 if env.agent_player == 0 else 0.0)).all()
        expected = env.game.outcome()[0] * (1 if env.agent_player == 0 else -1)
        assert total == expected
    assert colours == {0, 1}                       # the opponent moves first sometimes
    assert set(rewards) == {-1.0, 0.0, 1.0}


def test_random_agent_never_beats_the_perfect_opponent():
    env = BoardGameEnv("tic_tac_toe", opponent=PerfectTicTacToePlayer())
    rng = np.random.default_rng(1)
    totals = [_play_episode(env, rng, seed)[1] for seed in range(30)]
    assert max(totals) <= 0 and min(totals) == -1


def test_agent_colour_option():
    env = BoardGameEnv("connect_four", agent_player=1)
    _, info = env.reset(seed=3)
    assert env.game.num_moves()[0] == 1 and info["agent_player"] == 1
    _, info = env.reset(seed=3, options={"agent_player": 0})
    assert env.game.num_moves()[0] == 0 and info["action_mask"].all()


def test_illegal_moves_lose_or_raise():
    env = BoardGameEnv("tic_tac_toe", agent_player=0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(4)
    taken = int(np.flatnonzero(info["action_mask"] == 0)[0])
    obs, reward, terminated, truncated, info = env.step(taken)
    assert (reward, terminated, truncated, info["illegal_action"]) == (-1.0, True, False, True)
    with pytest.raises(FinishedGameError, match="reset"):
        env.step(0)
    strict = BoardGameEnv("tic_tac_toe", agent_player=0, illegal_action="raise")
    strict.reset(seed=0)
    strict.step(4)
    with pytest.raises(IllegalActionError):
        strict.step(4)
    with pytest.raises(ValueError, match="not in Discrete"):
        strict.step(9)
    with pytest.raises(ValueError, match="illegal_action"):
        BoardGameEnv("tic_tac_toe", illegal_action="ignore")


def test_same_seed_same_episode():
    def trajectory(seed):
        env = BoardGameEnv("connect_four", opponent="random")
        obs, info = env.reset(seed=seed)
        frames = [obs]
        for a in [3, 3, 2, 4, 1, 5, 0, 6]:
            if info["action_mask"][a]:
                obs, _, done, _, info = env.step(a)
                frames.append(obs)
                if done:
                    break
        return np.stack(frames)

    np.testing.assert_array_equal(trajectory(7), trajectory(7))
    assert not np.array_equal(trajectory(7), trajectory(8))


def test_an_opponent_that_does_not_move_is_reported():
    class Idle:
        def act(self, game):
            return np.full(game.batch_size, -1)

    env = BoardGameEnv("tic_tac_toe", opponent=Idle(), agent_player=1)
    with pytest.raises(IllegalActionError, match="opponent Idle"):
        env.reset(seed=0)


def test_render_ansi():
    env = BoardGameEnv("tic_tac_toe", render_mode="ansi", agent_player=0)
    env.reset(seed=0)
    env.step(0)
    assert "X" in env.render() and "O" in env.render()
