"""SAC / DrQ on pixels: the pixel pendulum, the K-averaged soft target, state round trip, a train.py run."""
from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_jsonl, run_cli
from gymnasium.utils.env_checker import check_env

import envs
from agents._augment import shift
from agents.sac import SAC, SACConfig
from envs.pixels import ENV_ID, PixelPendulum
from runtime.errors import UserError


def test_pixel_pendulum_passes_check_env_and_draws_the_angle():
    env = PixelPendulum(image_size=32, frame_stack=3)
    check_env(env, skip_render_check=True)
    up, down = env.draw(0.0), env.draw(np.pi)
    centre = 16
    assert up[:centre - 2].sum() > 0 and up[centre + 2:].sum() == 0     # rod above the pivot
    assert down[centre + 2:].sum() > 0 and down[:centre - 2].sum() == 0
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 32, 32) and obs.dtype == np.uint8
    assert np.array_equal(obs[0], obs[2])                              # reset: the first frame repeated
    theta = env.state[0]
    assert np.array_equal(obs[-1], env.draw(theta))
    for _ in range(5):
        obs, *_ = env.step(np.array([2.0], dtype=np.float32))
    assert np.array_equal(obs[-1], env.draw(env.state[0]))   # newest frame last
    vec, spec = envs.make({"kind": "gym", "id": ENV_ID, "kwargs": {"image_size": 32}}, 2, seed=0)
    assert spec.observation_space.shape == (3, 32, 32) and spec.max_episode_steps == 200
    vec.close()


def pixel_spec(size=24):
    obs = gym.spaces.Box(0, 255, (3, size, size), np.uint8)
    return envs.EnvSpec(name="pix", observation_space=obs, action_space=gym.spaces.Box(-2, 2, (1,), np.float32),
                        num_envs=2)


def tiny_config(**changes):
    values = {"name": "sac", "batch_size": 8, "buffer_size": 400, "learning_starts": 0, "hidden": [16],
              "feature_dim": 8, "conv_channels": 4, "conv_strides": [2, 1], "target_augmentations": 2,
              "q_augmentations": 2}
    return SACConfig(**{**values, **changes})


def test_soft_target_averages_k_views_by_hand():
    agent = SAC(tiny_config(alpha_lr=0.0, init_temperature=0.5), pixel_spec(), torch.device("cpu"))

    class FixedShifts:
        def __init__(self):
            self.dxs, self.calls = [1, -1], 0

        def __call__(self, obs):
            dx = self.dxs[self.calls % 2]
            self.calls += 1
            return shift(obs, torch.tensor([[0, dx]] * obs.shape[0]))

    class FixedActor(torch.nn.Module):     # a fixed action with log-probability -1
        def forward(self, features, deterministic=False, generator=None):
            return torch.zeros(features.shape[0], 1), -torch.ones(features.shape[0])

    class RowCritic(torch.nn.Module):      # Q1 = pixel (0, 0, 0), Q2 = 2 * pixel (0, 0, 1) of each view
        def forward(self, obs, action, detach_encoder=False):
            return obs[:, 0, 0, 0].float(), 2 * obs[:, 0, 0, 1].float()

    agent.augment, agent.actor, agent.critic_target = FixedShifts(), FixedActor(), RowCritic()
    next_obs = torch.zeros(1, 3, 24, 24, dtype=torch.uint8)
    next_obs[0, 0, 0, :3] = torch.tensor([10, 3, 8], dtype=torch.uint8)
    # dx=+1 -> first row reads [3, 8, ...]: min(3, 16) = 3; dx=-1 -> [10, 10, ...]: min(10, 20) = 10
    # soft value = min - alpha * log_prob = min + 0.5; averaged: (3.5 + 10.5) / 2 = 7
    y = agent.critic_target_value(next_obs, torch.tensor([1.0]), torch.tensor([0.5]))
    assert y.tolist() == [pytest.approx(1.0 + 0.5 * 7.0)]


def fill(agent, steps=30, seed=0):
    """Random frames; the reward is the action taken (a function the critic can learn)."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (2, 3, 24, 24), dtype=np.uint8)
    for t in range(steps):
        nxt = rng.integers(0, 256, (2, 3, 24, 24), dtype=np.uint8)
        action = rng.uniform(-2, 2, (2, 1))
        agent.replay.add(obs, action, action[:, 0], nxt, np.array([t % 9 == 8, False]), np.zeros(2, bool))
        obs = nxt


def test_state_round_trip_continues_learning_exactly():
    a = SAC(tiny_config(gradient_steps=3), pixel_spec(), torch.device("cpu"), seed=2)
    fill(a)
    a.learn()
    b = SAC(tiny_config(gradient_steps=3), pixel_spec(), torch.device("cpu"), seed=50)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    ma, mb = a.learn(), b.learn()
    assert ma == mb
    for net in ("critic", "critic_target", "actor"):
        for pa, pb in zip(getattr(a, net).parameters(), getattr(b, net).parameters()):
            assert torch.equal(pa, pb)
    assert torch.equal(a.log_alpha, b.log_alpha)


def test_learning_moves_the_critic_toward_its_targets():
    """With gamma = 0 the critic regresses the reward (= the action): its loss falls."""
    agent = SAC(tiny_config(gamma=0.0, critic_lr=3e-3, gradient_steps=20), pixel_spec(), torch.device("cpu"), seed=0)
    fill(agent, steps=60)
    first = agent.learn()["critic_loss"]
    for _ in range(4):
        later = agent.learn()["critic_loss"]
    assert later < 0.5 * first


def test_config_and_space_errors_name_the_key():
    with pytest.raises(UserError) as err:
        SACConfig(critic_tau=0.0).validate()
    assert err.value.key == "agent.critic_tau"
    discrete = envs.EnvSpec(name="d", observation_space=gym.spaces.Box(-1, 1, (3,)),
                            action_space=gym.spaces.Discrete(2), num_envs=1)
    with pytest.raises(UserError, match="continuous"):
        SAC(SACConfig(augmentation="none"), discrete, torch.device("cpu"))
    vector = envs.EnvSpec(name="v", observation_space=gym.spaces.Box(-1, 1, (3,)),
                          action_space=gym.spaces.Box(-1, 1, (1,)), num_envs=1)
    with pytest.raises(UserError, match="agent.augmentation=none"):
        SAC(SACConfig(), vector, torch.device("cpu"))


def test_train_smoke_run_on_the_pixel_pendulum(tmp_path):
    args = ["agent=sac", "env=pixel_pendulum", "env.num_envs=2",
            "logger=none", "total_env_steps=300", "agent.learning_starts=200", "agent.batch_size=16",
            "agent.hidden=[32]", "eval.episodes=2", "eval.num_envs=2", "eval.interval=1000", "logger.interval=100",
            "checkpoint.interval=1000", f"runs_root={tmp_path}"]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path)
    records = read_jsonl(run / "metrics.jsonl")
    assert records[-1]["final"] is True and -2000 < records[-1]["eval/return_mean"] < 0
    assert any("train/critic_loss" in r for r in records)
    assert (run / "checkpoints" / "latest.pt").is_file()
    evaluated = run_cli("eval.py", f"checkpoint={run}", "episodes=2", "num_envs=2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
