"""CRR: filters, advantage baselines, policy-gradient weights, critics, and offline training end to end."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import read_jsonl, run_cli

import envs
from agents.bc import BC, BCConfig
from agents.crr import (
    CRR,
    CRRConfig,
    crr_policy_loss,
    filter_weights,
    project_distribution,
)
from agents.offline_dqn import OfflineDQN, OfflineDQNConfig
from replay.datasets import MixedPolicy, collect, save_dataset
from runtime.errors import UserError
from runtime.evaluation import run_episodes

CARTPOLE = {"kind": "gym", "id": "CartPole-v1", "name": "cartpole"}
PENDULUM = {"kind": "gym", "id": "Pendulum-v1", "name": "gym-Pendulum-v1"}


def controller(obs):
    obs = np.asarray(obs)
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


def cartpole_spec():
    return envs.make_spec(CARTPOLE)


# ------------------------------------------------------------------ filters
def test_binary_and_exp_filters_on_hand_made_advantages():
    advantage = torch.tensor([-3.0, -0.5, 0.0, 0.5, 2.0, 10.0])
    np.testing.assert_array_equal(filter_weights(advantage, "binary").numpy(), [0, 0, 0, 1, 1, 1])
    exp = filter_weights(advantage, "exp", beta=1.0, max_weight=20.0).numpy()
    np.testing.assert_allclose(exp, [np.exp(-3), np.exp(-0.5), 1.0, np.exp(0.5), np.exp(2.0), 20.0], rtol=1e-6)
    hot = filter_weights(advantage, "exp", beta=2.0, max_weight=5.0).numpy()
    np.testing.assert_allclose(hot, [np.exp(-1.5), np.exp(-0.25), 1.0, np.exp(0.25), np.e, 5.0], rtol=1e-6)
    with pytest.raises(ValueError):
        filter_weights(advantage, "sigmoid")


@pytest.mark.parametrize("kind", ["binary", "exp"])
def test_policy_loss_gradient_is_the_filter_weighted_log_likelihood_gradient(kind):
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    actions = torch.tensor([0, 1, 2, 2, 1, 0])
    advantage = torch.tensor([1.5, -0.2, 0.3, -2.0, 0.0, 4.0], requires_grad=True)
    log_prob = torch.distributions.Categorical(logits=logits).log_prob(actions)
    crr_policy_loss(log_prob, advantage, kind).backward()
    weights = filter_weights(advantage.detach(), kind)
    expected = -(weights[:, None] * (torch.nn.functional.one_hot(actions, 3) - logits.detach().softmax(-1))) / 6
    torch.testing.assert_close(logits.grad, expected)
    assert advantage.grad is None   # the critic gets no gradient from the policy loss
    if kind == "binary":   # pairs the critic judges no better than the policy contribute nothing
        assert torch.all(logits.grad[[1, 3, 4]] == 0)


# ------------------------------------------------------------------ baselines
def make_crr(spec, **overrides) -> CRR:
    cfg = CRRConfig(name="crr", dataset="unused", hidden=[16, 16], **overrides)
    return CRR(cfg, spec, torch.device("cpu"), seed=0)


def test_sampled_baseline_converges_to_the_exact_expectation():
    agent = make_crr(cartpole_spec())
    with torch.no_grad():   # a critic with clearly different action values
        agent.critic.head.advantage.weight.mul_(30)
        agent.policy.logits.weight.mul_(5)
    obs = torch.randn(64, 4)
    actions = torch.randint(0, 2, (64,))
    dist = agent.policy(obs)
    exact = agent.advantage(obs, actions, dist)
    q = agent.critic(obs).squeeze(-1)
    torch.testing.assert_close(exact, q.gather(1, actions[:, None]).squeeze(1) - (dist.probs * q).sum(-1))
    errors = []
    for m in (1, 16, 4096):
        agent.cfg = dataclasses.replace(agent.cfg, advantage_baseline="sampled", num_action_samples=m)
        torch.manual_seed(1)
        errors.append((agent.advantage(obs, actions, dist) - exact).abs().mean().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * errors[0] and errors[2] < 0.05 * exact.abs().mean().item()
    agent.cfg = dataclasses.replace(agent.cfg, advantage_reduce="max", num_action_samples=4096)
    biggest = agent.advantage(obs, actions, dist)   # max over samples: V = max_a Q(s, a) for 2 actions
    torch.testing.assert_close(biggest, q.gather(1, actions[:, None]).squeeze(1) - q.max(-1).values)


def test_projection_keeps_mass_and_mean_inside_the_support():
    support = torch.linspace(-2, 2, 9)
    values = torch.tensor([[-1.3, 0.2, 1.75], [-5.0, 0.0, 5.0]])
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.25, 0.5, 0.25]])
    out = project_distribution(values, probs, support)
    torch.testing.assert_close(out.sum(-1), torch.ones(2))
    torch.testing.assert_close((out[0] * support).sum(), (values[0] * probs[0]).sum())
    assert out[1, 0] == pytest.approx(0.25) and out[1, -1] == pytest.approx(0.25) and out[1, 4] == pytest.approx(0.5)


def fake_batch(spec, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs_dim = spec.observation_space.shape[0]
    if isinstance(spec.action_space, gym.spaces.Discrete):
        action = torch.randint(0, spec.num_actions, (batch,), generator=g)
    else:
        action = torch.rand(batch, *spec.action_space.shape, generator=g) * 4 - 2
    return SimpleNamespace(obs=torch.randn(batch, obs_dim, generator=g), action=action,
                           reward=torch.randn(batch, generator=g), next_obs=torch.randn(batch, obs_dim, generator=g),
                           discount=torch.full((batch,), 0.99), weights=torch.ones(batch))


def test_distributional_critic_targets_are_distributions_and_learn():
    spec = cartpole_spec()
    agent = make_crr(spec, distributional=True, num_atoms=11, v_min=-5.0, v_max=5.0, filter="binary")
    batch = fake_batch(spec)
    target = agent.target(batch)
    assert target.shape == (32, 11)
    torch.testing.assert_close(target.sum(-1), torch.ones(32))
    losses = [agent.update(batch)["critic_loss"].item() for _ in range(30)]
    assert losses[-1] < losses[0]


def test_continuous_actions_gaussian_policy_and_sampled_baseline():
    spec = envs.make_spec(PENDULUM)
    with pytest.raises(UserError, match="advantage_baseline"):
        make_crr(spec)   # exact needs discrete actions
    agent = make_crr(spec, advantage_baseline="sampled", distributional=True, num_atoms=11, v_min=-20, v_max=0)
    batch = fake_batch(spec)
    before = agent.policy(batch.obs).log_prob(batch.action.reshape(32, -1)).mean().item()
    for _ in range(40):
        metrics = agent.update(batch)
    assert np.isfinite(metrics["critic_loss"].item())
    after = agent.policy(batch.obs).log_prob(batch.action.reshape(32, -1)).mean().item()
    assert after > before   # the filtered likelihood of the data's actions rises
    actions = agent.act(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
    assert actions.shape == (5, 1) and np.all(np.abs(actions) <= 2.0)
    explored = agent.act(np.zeros((200, 3), np.float32), explore=True)
    assert explored.std() > 0 and np.all(np.abs(explored) <= 2.0)


# ------------------------------------------------------------------ learning
@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    """CartPole data from a per-episode mixture of a good controller and a uniform random policy."""
    rng = np.random.default_rng(0)

    def uniform(obs):
        return rng.integers(0, 2, len(obs))

    behaviour = MixedPolicy([controller, uniform], gym.spaces.Discrete(2), 0.0, num_envs=4, seed=0)
    buf, returns = collect(behaviour, CARTPOLE, 4000, 4, seed=0)
    path = tmp_path_factory.mktemp("crr") / "mixed.arbor-replay"
    save_dataset(buf, path, {"preset": "mixed", "env": CARTPOLE})
    return path, float(np.mean(returns))


def test_crr_beats_the_behaviour_policy_on_a_mixed_dataset(mixed_dataset):
    path, behaviour_return = mixed_dataset
    spec = cartpole_spec()
    cfg = CRRConfig(name="crr", dataset=str(path), hidden=[64, 64], batch_size=128, gradient_steps=100,
                    filter="exp")
    agent = CRR(cfg, spec, torch.device("cpu"), seed=0)
    for _ in range(20):
        agent.train_iteration()
    crr_return = run_episodes(agent, CARTPOLE, 10, 5, seed=123).mean()
    assert crr_return > 1.3 * behaviour_return, (crr_return, behaviour_return)


# ------------------------------------------------------------------ command line
def test_offline_training_from_the_command_line(mixed_dataset, tmp_path):
    path, _ = mixed_dataset
    common = ["env=cartpole", "logger=none", f"agent.dataset={path}", "agent.hidden=[16,16]", "agent.batch_size=32",
              "agent.gradient_steps=50", "eval.interval=100", "eval.episodes=2", "eval.num_envs=2",
              "checkpoint.interval=100", "logger.interval=50", "torch_threads=1"]
    full = run_cli("train.py", "agent=crr", *common, "total_env_steps=200", f"runs_root={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]
    run_dir = next((tmp_path / "full").rglob("metrics.jsonl")).parent
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["grad_steps"] for r in records if "train/critic_loss" in r][:2] == [50, 100]
    assert any("eval/return_mean" in r for r in records) and records[-1]["final"]
    # exact resume: 100 steps, then 100 more, equals 200 at once
    half = run_cli("train.py", "agent=crr", *common, "total_env_steps=100", f"runs_root={tmp_path / 'half'}")
    assert half.returncode == 0, half.stderr[-3000:]
    half_dir = next((tmp_path / "half").rglob("metrics.jsonl")).parent
    resumed = run_cli("train.py", f"resume={half_dir}", "total_env_steps=200")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["agent"]["policy"]
    b = torch.load(half_dir / "checkpoints" / "latest.pt", weights_only=True)["agent"]["policy"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # evaluation needs no dataset
    moved = Path(str(path) + ".moved")
    path.rename(moved)
    try:
        evaluated = run_cli("eval.py", f"checkpoint={run_dir}", "episodes=2")
    finally:
        moved.rename(path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "crr on cartpole" in evaluated.stdout


def test_missing_or_corrupt_dataset_is_a_clear_error(mixed_dataset, tmp_path):
    path, _ = mixed_dataset
    missing = run_cli("train.py", "agent=crr", "env=cartpole", "logger=none", "total_env_steps=100",
                      f"runs_root={tmp_path}", f"agent.dataset={tmp_path / 'nope.arbor-replay'}")
    assert missing.returncode == 2 and "agent.dataset" in missing.stderr and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    from replay import fileformat

    obs_entry = next(e for e in fileformat.read_header(path)["arrays"] if e["name"] == "storage.obs")
    data = bytearray(Path(path).read_bytes())
    data[obs_entry["offset"] + 10] ^= 0xFF
    corrupt = tmp_path / "corrupt.arbor-replay"
    corrupt.write_bytes(bytes(data))
    agent = make_crr(cartpole_spec())
    agent.cfg = dataclasses.replace(agent.cfg, dataset=str(corrupt))
    with pytest.raises(UserError, match="agent.dataset.*corrupt"):
        agent.load_dataset()
    acrobot = make_crr(envs.make_spec({"kind": "gym", "id": "Acrobot-v1", "name": "acrobot"}))
    acrobot.cfg = dataclasses.replace(acrobot.cfg, dataset=str(path))
    with pytest.raises(UserError, match="observation space"):
        acrobot.load_dataset()
    with pytest.raises(UserError, match="agent.dataset"):
        CRRConfig(name="crr").validate()


def test_offline_dqn_learns_values_from_the_dataset(mixed_dataset):
    path, _ = mixed_dataset
    cfg = OfflineDQNConfig(name="offline_dqn", dataset=str(path), hidden=[32, 32], batch_size=64, gradient_steps=100,
                           target_update_interval=1, tau=0.05)
    agent = OfflineDQN(cfg, cartpole_spec(), torch.device("cpu"), seed=0)
    q = [agent.train_iteration()["q_mean"] for _ in range(3)]
    assert q[0] < q[1] < q[2] and q[2] < 100   # values grow toward sum gamma^t = 100 from below
    saved = io.BytesIO()
    torch.save(agent.state_dict(), saved)   # as a checkpoint does: a copy, loadable with weights_only
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    twin = OfflineDQN(cfg, cartpole_spec(), torch.device("cpu"), seed=5)
    twin.load_state_dict(state)
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs), twin.act(obs))
    assert twin.train_iteration()["q_mean"] == pytest.approx(agent.train_iteration()["q_mean"])


def test_bc_clones_the_dataset_policy(mixed_dataset):
    path, _ = mixed_dataset
    spec = cartpole_spec()
    agent = BC(BCConfig(name="bc", dataset=str(path), hidden=[32, 32], batch_size=64, gradient_steps=100), spec,
               torch.device("cpu"), seed=0)
    first = agent.train_iteration()["policy_loss"]
    for _ in range(3):
        last = agent.train_iteration()["policy_loss"]
    assert last < first
