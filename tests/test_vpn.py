"""Value Prediction Network: planning backup, k-step targets, exact state round trip, training."""
from __future__ import annotations

import io
import itertools
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import compose, only_run_dir, read_jsonl, run_cli

from agents.vpn import VPN, VPNConfig, expand_pairs, plan, value_targets
from envs.spec import EnvSpec
from runtime import checkpoint as ckpt
from runtime.trainer import Trainer

# A tiny VPN on CartPole through the command line.
TINY_VPN = ["agent=vpn", "env=cartpole", "logger=none", "torch_threads=1", "agent.hidden=[32]",
            "agent.model_hidden=32", "agent.batch_size=32", "agent.learning_starts=200",
            "agent.collect_steps=8", "agent.gradient_steps=4", "eval.episodes=2", "eval.num_envs=2",
            "logger.interval=200"]


# ------------------------------------------------------------------------------ planning
def linear_core(latent, action):
    """A deterministic toy model on a 1-D latent: s' = s + a, V(s) = s,
    rewards (0, -0.2, -0.9) and discounts (0.9, 0.9, 0.5) for actions 0, 1, 2."""
    s = latent[:, 0]
    reward = torch.tensor([0.0, -0.2, -0.9], dtype=latent.dtype)[action]
    discount = torch.tensor([0.9, 0.9, 0.5], dtype=latent.dtype)[action]
    next_latent = (s + action.to(latent.dtype))[:, None]
    return reward, discount, next_latent[:, 0], next_latent


def test_plan_matches_a_hand_computed_tree():
    # Root s = 0, depth 2, 2 of 3 actions expanded per node.
    #   Q^1(0, .) = (0, -0.2 + 0.9 * 1, -0.9 + 0.5 * 2) = (0, 0.7, 0.1): expand actions 1 and 2.
    #   s' = 1: Q^1(1, .) = (0.9, 1.6, 0.6) -> V^2(1) = 1/2 * 1 + 1/2 * 1.6 = 1.3
    #           Q^2(0, 1) = -0.2 + 0.9 * 1.3 = 0.97
    #   s' = 2: Q^1(2, .) = (1.8, 2.5, 1.1) -> V^2(2) = 1/2 * 2 + 1/2 * 2.5 = 2.25
    #           Q^2(0, 2) = -0.9 + 0.5 * 2.25 = 0.225
    #   action 0 is not expanded: -inf.
    q = plan(expand_pairs(linear_core, 3), torch.zeros(1, 1, dtype=torch.float64), depth=2, branching=2)
    assert q[0, 0] == float("-inf")
    torch.testing.assert_close(q[0, 1:], torch.tensor([0.97, 0.225], dtype=torch.float64))
    # depth 1 is the one-step Q of every action (all expanded when b >= A)
    q1 = plan(expand_pairs(linear_core, 3), torch.zeros(1, 1, dtype=torch.float64), depth=1, branching=3)
    torch.testing.assert_close(q1[0], torch.tensor([0.0, 0.7, 0.1], dtype=torch.float64))
    # depth 3, b = 3 (everything expanded), root action 1 (s' = 1), by hand:
    #   V^2(s) = s / 2 + max_o Q^1(s, o) / 2, e.g. V^2(3) = 1.5 + max(2.7, 3.4, 1.6) / 2 = 3.2
    #   V^3(1) = 1/3 * 1 + 2/3 * max_o Q^2(1, o); Q^2(1, 1) = -0.2 + 0.9 * V^2(2) = 1.825
    #   Q^2(1, 0) = 0.9 * V^2(1) = 1.17, Q^2(1, 2) = -0.9 + 0.5 * V^2(3) = 0.7
    #   V^3(1) = 1/3 + 2/3 * 1.825 = 1.55, Q^3(0, 1) = -0.2 + 0.9 * 1.55 = 1.195
    q3 = plan(expand_pairs(linear_core, 3), torch.zeros(1, 1, dtype=torch.float64), depth=3, branching=3)
    torch.testing.assert_close(q3[0, 1], torch.tensor(1.195, dtype=torch.float64))


def recursive_q(core, latent, action, depth, branching, num_actions):
    """Algorithm 1 of the paper, literally: one node at a time (the test oracle)."""
    reward, discount, next_value, next_latent = core(latent[None], torch.tensor([action]))
    if depth == 1:
        return float(reward + discount * next_value)
    q1 = [float(r + g * v) for r, g, v, _ in
          (core(next_latent, torch.tensor([o])) for o in range(num_actions))]
    best = sorted(range(num_actions), key=lambda o: -q1[o])[:branching]
    below = max(recursive_q(core, next_latent[0], o, depth - 1, branching, num_actions) for o in best)
    planned = next_value / depth + (depth - 1) / depth * below
    return float(reward + discount * planned)


@pytest.mark.parametrize("depth,branching", [(1, 2), (2, 2), (3, 2), (3, 4)])
def test_batched_plan_equals_the_recursive_algorithm(depth, branching):
    torch.manual_seed(depth * 10 + branching)
    num_actions, width = 4, 5
    spec = EnvSpec(name="toy", observation_space=gym.spaces.Box(-1, 1, (width,)),
                   action_space=gym.spaces.Discrete(num_actions), num_envs=1)
    cfg = VPNConfig(name="vpn", hidden=[width], model_hidden=8, gamma=0.9)
    agent = VPN(cfg, spec, torch.device("cpu"))
    net = agent.net
    with torch.no_grad():
        latent = net.encode(torch.randn(6, width))
        q = plan(net.expand, latent, depth, branching)   # the network's batched expansion
        for root in range(latent.shape[0]):
            q1 = [float(r + g * v) for r, g, v, _ in
                  (net.core(latent[root][None], torch.tensor([o])) for o in range(num_actions))]
            expanded = set(sorted(range(num_actions), key=lambda o: -q1[o])[:branching])
            for o in range(num_actions):
                if o in expanded:
                    expected = recursive_q(net.core, latent[root], o, depth, branching, num_actions)
                    assert q[root, o].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
                else:
                    assert q[root, o].item() == float("-inf")


# ------------------------------------------------------------------------- k-step targets
def toy_agent(**overrides) -> VPN:
    spec = EnvSpec(name="toy", observation_space=gym.spaces.Box(-100, 100, (1,)),
                   action_space=gym.spaces.Discrete(2), num_envs=1)
    cfg = VPNConfig(name="vpn", hidden=[4], model_hidden=4, **overrides)
    return VPN(cfg, spec, torch.device("cpu"))


def write_episode(agent: VPN, end: str) -> None:
    """Observations 1, 2, 3, 4 then the final 5; rewards 1, 2, 3, 4; the 4th step ends it."""
    for t in range(4):
        last = t == 3
        agent.replay.add(np.array([[t + 1.0]], np.float32), np.array([t % 2]), np.array([t + 1.0], np.float32),
                         np.array([[t + 2.0]], np.float32), np.array([last and end == "terminated"]),
                         np.array([last and end == "truncated"]))


@pytest.mark.parametrize("end", ["terminated", "truncated"])
def test_k_step_targets_match_hand_computed_ones(end):
    # k = 2 predictions, n = 2 reward steps, gamma = 0.5, and a target planner whose
    # max_o Q(x) = 10 x. R_u is the target for the state with observation u + 1 (u = 0..4):
    #   R_1 = r1 + .5 r2 + .25 * 10 * x3      = 2 + 1.5 + 10            = 13.5   (both cases)
    #   R_2 = r2 + .5 r3 (+ .25 * 10 * x_final if truncated) = 3 + 2 (+ 12.5)   = 5 | 17.5
    #   R_3 = r3 (+ .5 * 10 * x_final)                      = 4 (+ 25)          = 4 | 29
    #   R_4 = the final state itself: 0 if terminal, else 10 * x_final          = 0 | 50
    agent = toy_agent(gamma=0.5, n_step=2, prediction_steps=2)
    write_episode(agent, end)
    agent.planned_q = lambda obs, network=None: torch.stack([10 * obs[:, 0], 10 * obs[:, 0] - 3], dim=-1)
    expected_r = {"terminated": {1: 13.5, 2: 5.0, 3: 4.0, 4: 0.0},
                  "truncated": {1: 13.5, 2: 17.5, 3: 29.0, 4: 50.0}}[end]
    batch = agent.replay.sample(64)
    targets = agent.targets(batch)
    starts = batch.obs[:, 0].long() - 1                       # window start u = 0..3
    assert set(starts.tolist()) == {0, 1, 2, 3}
    for row, start in enumerate(starts.tolist()):
        for l in (1, 2):                                       # state after l actions: u = start + l
            if start + l <= 4:                                 # states of the episode (the loss masks the rest)
                assert targets[row, l - 1].item() == pytest.approx(expected_r[start + l]), (start, l)
                assert bool(batch.mask[row, l - 1])
            else:
                assert not bool(batch.mask[row, l - 1])
    # reward and continuation targets of the unroll: r_{start + l - 1} and "not terminated"
    for row, start in enumerate(starts.tolist()):
        for l in (1, 2):
            if start + l <= 4:
                assert batch.reward[row, l - 1].item() == start + l
                assert bool(batch.terminated[row, l - 1]) == (end == "terminated" and start + l == 4)


def test_value_targets_bootstrap_inside_a_long_window():
    # no episode end in the window: every target is the full n-step return plus gamma^n Q(x_{l+n})
    reward = torch.arange(1.0, 8.0)[None]                      # width 7 = k + n + 1 with k = 2, n = 4
    mask = torch.ones(1, 7, dtype=torch.bool)
    partial, index, weight = value_targets(reward, mask, torch.zeros(1, 7, dtype=torch.bool), 0.5, 4, 2)
    torch.testing.assert_close(partial, torch.tensor([[2 + 1.5 + 1 + 0.625, 3 + 2 + 1.25 + 0.75]]))
    assert index.tolist() == [[5, 6]]
    torch.testing.assert_close(weight, torch.tensor([[0.0625, 0.0625]]))


# ------------------------------------------------------------------------ state round trip
def test_state_round_trip_is_exact(tmp_path):
    import envs

    cfg = compose(*TINY_VPN)
    env_cfg = dict(cfg.env)

    def build(seed):
        env, spec = envs.make(env_cfg, num_envs=spec_envs, seed=seed, mode="train")
        agent_cfg = VPNConfig(**{k: v for k, v in dict(cfg.agent).items()})
        agent_cfg.hidden = list(agent_cfg.hidden)
        return VPN(agent_cfg, spec, torch.device("cpu"), env=env, total_steps=4000, seed=seed), env

    spec_envs = 2
    agent, _ = build(0)
    for _ in range(30):
        agent.train_iteration()
    assert agent.grad_steps > 0
    buffer = io.BytesIO()
    torch.save(ckpt.to_safe(agent.state_dict()), buffer)      # what a checkpoint holds
    buffer.seek(0)
    restored, _ = build(1)                                     # different seed: everything must come from the state
    restored.load_state_dict(ckpt.from_safe(torch.load(buffer, weights_only=True)))
    for a, b in zip(itertools.chain(agent.net.parameters(), agent.target.parameters()),
                    itertools.chain(restored.net.parameters(), restored.target.parameters())):
        assert torch.equal(a, b)
    assert restored.env_steps == agent.env_steps and restored.grad_steps == agent.grad_steps
    # identical next updates: same replay samples, same rng, same optimizer moments
    torch_state = torch.get_rng_state()
    m1 = agent.learn()
    torch.set_rng_state(torch_state)
    m2 = restored.learn()
    assert m1 == m2
    for a, b in zip(agent.net.parameters(), restored.net.parameters()):
        assert torch.equal(a, b)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert np.array_equal(agent.act(obs, explore=True), restored.act(obs, explore=True))


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    settings = [*TINY_VPN, "total_env_steps=1200", "eval.interval=600", "checkpoint.interval=100000"]
    straight = Trainer(compose(*settings), run_dir=tmp_path / "straight").run()
    original = VPN.train_iteration
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 23:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(VPN, "train_iteration", interrupted)
    first = Trainer(compose(*settings), run_dir=tmp_path / "resumed").run()
    monkeypatch.setattr(VPN, "train_iteration", original)
    assert first["status"] == "interrupted" and 0 < first["steps"] < 1200
    resume = [f"resume={tmp_path / 'resumed'}"]
    resumed = Trainer(compose(*settings, *resume), run_dir=tmp_path / "unused", overrides=resume).run()
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]
    a = strip(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    b = strip(read_jsonl(tmp_path / "resumed" / "metrics.jsonl"))
    assert len(a) == len(b) > 3 and a == b
    assert resumed["eval/return_mean"] == straight["eval/return_mean"]


# ------------------------------------------------------------------------------- training
def test_train_cli_learns_cartpole_a_little_and_checks_its_config(tmp_path):
    result = run_cli("train.py", *TINY_VPN, "agent.hidden=[64]", "agent.model_hidden=64", "agent.collect_steps=16",
                     "agent.gradient_steps=16", "total_env_steps=3000", "eval.interval=100000", "seed=0",
                     "eval.episodes=4", f"runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path)
    records = read_jsonl(run / "metrics.jsonl")
    trained = [r for r in records if "train/value_loss" in r]
    assert trained and all(np.isfinite(r["train/loss"]) for r in trained)
    assert trained[-1]["train/reward_loss"] < trained[0]["train/reward_loss"]
    final = records[-1]
    # 3k env steps: a random policy averages about 22, always pushing one way about 9
    assert final.get("final") and final["eval/return_mean"] > 50
    assert (run / "checkpoints" / "latest.pt").is_file()

    bad = run_cli("train.py", *TINY_VPN, "agent.plan_depth=0", f"runs_root={tmp_path / 'bad'}")
    assert bad.returncode == 2
    assert "agent.plan_depth" in bad.stderr and "Traceback" not in bad.stderr
