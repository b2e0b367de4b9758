"""MuZero: value transform, categorical supports, unroll targets, search, learning, resume."""
from __future__ import annotations

import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import compose, read_jsonl, run_cli

from agents._latent import (
    h,
    h_inverse,
    scalar_to_support,
    scale_latent,
    support_to_scalar,
)
from agents.muzero import ConvModel, MuZero, MuZeroConfig, unroll_targets, value_prefix_targets
from replay import SequenceReplay
from runtime.trainer import Trainer

TINY = ["agent=muzero", "env=cartpole", "logger=none", "torch_threads=1", "env.num_envs=4", "agent.algorithm=puct",
        "agent.hidden=[16]", "agent.latent_dim=8", "agent.support_size=10", "agent.reward_support_size=3",
        "agent.num_simulations=4", "agent.collect_steps=4", "agent.learning_starts=100", "agent.batch_size=16",
        "agent.train_ratio=8", "agent.unroll_steps=2", "agent.n_step=3", "eval.episodes=2", "eval.num_envs=2",
        "logger.interval=100"]


# ------------------------------------------------------------------ value transform
def test_h_matches_the_formula_and_inverts():
    x = torch.tensor([-1e5, -300.0, -3.0, -0.5, 0.0, 0.25, 3.0, 1234.5, 1e6], dtype=torch.float64)
    expected = torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + 1e-3 * x
    assert torch.allclose(h(x), expected)
    assert h(torch.tensor(3.0)).item() == pytest.approx(1.003)
    assert torch.allclose(h_inverse(h(x)), x, rtol=1e-9, atol=1e-7)


def test_categorical_projection_is_two_hot_with_the_right_expectation():
    x = torch.tensor([0.0, 1.0, -2.5, 17.0, 1e9])
    probs = scalar_to_support(x, support_size=5)
    atoms = torch.arange(-5, 6, dtype=torch.float32)
    assert probs.shape == (5, 11)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert ((probs > 0).sum(-1) <= 2).all()
    # the expectation is h(x), clipped to the support
    assert torch.allclose((probs * atoms).sum(-1), h(x).clamp(-5, 5), atol=1e-6)
    # h(1) = sqrt(2) - 1 + 0.001 = 0.41521: atom 0 gets 0.58479, atom 1 gets 0.41521
    assert probs[1, 5].item() == pytest.approx(1 - 0.41521356, abs=1e-6)
    assert probs[1, 6].item() == pytest.approx(0.41521356, abs=1e-6)
    # reading the scalar back from the projection's log-probabilities inverts it inside the support
    inside = torch.tensor([0.0, 1.0, -2.5, 17.0])
    logits = torch.log(scalar_to_support(inside, 5).clamp_min(1e-30))
    assert torch.allclose(support_to_scalar(logits, 5), inside, atol=1e-4)


def test_finer_support_step_spreads_small_values_over_more_atoms():
    # h(5) = 1.4545: with unit atoms only atoms 1 and 2 carry it; with step 0.1 atoms 14 and 15 do
    x = torch.tensor([0.0, 5.0, -3.0, 1e6])
    probs = scalar_to_support(x, support_size=50, step=0.1)
    atoms = 0.1 * torch.arange(-50, 51, dtype=torch.float32)
    assert torch.allclose(probs.sum(-1), torch.ones(4))
    assert torch.allclose((probs * atoms).sum(-1), h(x).clamp(-5, 5), atol=1e-5)
    assert probs[1].nonzero().flatten().tolist() == [50 + 14, 50 + 15]
    assert scalar_to_support(x, support_size=50)[1].nonzero().flatten().tolist() == [50 + 1, 50 + 2]
    inside = x[:3]
    logits = torch.log(scalar_to_support(inside, 50, step=0.1).clamp_min(1e-30))
    assert torch.allclose(support_to_scalar(logits, 50, step=0.1), inside, atol=1e-4)
    # reading with the wrong step gives a different value: the step must match on both sides
    assert not torch.allclose(support_to_scalar(logits, 50), inside, atol=1e-2)


def test_latent_scaling_maps_each_sample_to_unit_range():
    s = torch.tensor([[1.0, 3.0, 2.0], [-4.0, -4.0, 0.0]]).view(2, 3, 1, 1)
    out = scale_latent(s).view(2, 3)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]))


# ------------------------------------------------------------------ unroll targets
def _episode_replay(truncate: bool, n_step: int, unroll_steps: int, players: bool = False):
    """One 4-step episode: observations o_i = i, rewards 1, 2, 3, 4, ending (terminated or truncated) at step 3."""
    space = gym.spaces.Box(-10, 10, (1,), np.float32)
    extras = {"to_play": ((), np.int8)} if players else None
    replay = SequenceReplay(64, space, gym.spaces.Discrete(2), num_envs=1, unroll_steps=unroll_steps,
                            n_step=n_step, gamma=0.5, extras=extras)
    for i in range(4):
        end = i == 3
        replay.add(np.array([[i]], np.float32), np.array([i % 2]), np.array([i + 1.0], np.float32),
                   np.array([[i + 1]], np.float32), np.array([end and not truncate]), np.array([end and truncate]),
                   extras={"to_play": np.array([i % 2])} if players else None)
    return replay


def _targets_by_start(replay, gamma, n_step, unroll_steps, players=False):
    """Targets of every window start, computed with bootstrap values v(o) = 100 * o."""
    from agents.muzero import bootstrap_positions

    batch = replay.sample(64)
    position, _, _ = bootstrap_positions(batch.mask, batch.terminated, n_step, unroll_steps)
    obs = replay.observations_at(batch, position.numpy())
    boot = 100.0 * obs[..., 0]
    targets = unroll_targets(batch.reward, batch.mask, batch.terminated, boot, gamma, n_step, unroll_steps,
                             batch.extras["to_play"] if players else None)
    start = batch.obs[:, 0].long().numpy()
    out = {}
    for s in np.unique(start):
        row = int(np.flatnonzero(start == s)[0])
        out[int(s)] = {k: v[row].tolist() for k, v in targets.items()}
    return out


def test_unroll_targets_match_hand_computed_ones_on_a_terminated_episode():
    t = _targets_by_start(_episode_replay(False, n_step=2, unroll_steps=2), 0.5, 2, 2)
    assert sorted(t) == [0, 1, 2, 3]
    # start 0: z0 = 1 + .5*2 + .25*v(o2); z1 = 2 + .5*3 + .25*v(o3); z2 = 3 + .5*4 (o4 is terminal: 0)
    assert t[0]["value"] == pytest.approx([1 + 1 + 0.25 * 200, 2 + 1.5 + 0.25 * 300, 3 + 2])
    assert t[0]["reward"][1:] == [1.0, 2.0]
    assert t[0]["value_mask"] == [True] * 3 and t[0]["reward_mask"][1:] == [True, True]
    assert t[0]["policy_mask"] == [True] * 3
    # start 2: two steps left; past the end the absorbing state has value 0 and reward 0, still trained
    assert t[2]["value"] == pytest.approx([3 + 0.5 * 4, 4.0, 0.0])
    assert t[2]["reward"][1:] == [3.0, 4.0]
    assert t[2]["policy_mask"] == [True, True, False]
    assert t[2]["value_mask"] == [True, True, True] and t[2]["reward_mask"][1:] == [True, True]
    # start 3: the last step
    assert t[3]["value"] == pytest.approx([4.0, 0.0, 0.0])
    assert t[3]["reward"][1:] == [4.0, 0.0]
    assert t[3]["policy_mask"] == [True, False, False]


def test_unroll_continues_past_the_end_with_random_actions(monkeypatch):
    """Stored actions inside the episode; past its end uniformly random ones (not the replay's padding 0),
    and the loss unrolls the model with exactly those."""
    agent = _agent("cartpole", "agent.unroll_steps=5")
    while len(agent.replay) < 400:                  # CartPole with a random model: episodes of ~10-40 steps
        agent.collect()
    batch = agent.replay.sample(256)
    actions = agent.unroll_actions(batch)
    inside = batch.mask[:, :5]
    assert torch.equal(actions[inside], batch.action[:, :5][inside].long())
    past = actions[~inside]
    assert past.numel() >= 20 and set(past.tolist()) == {0, 1}
    assert (batch.action[:, :5][~inside] == 0).all()                 # what the replay pads with
    seen = []
    original = agent.net.dynamics
    monkeypatch.setattr(agent, "unroll_actions", lambda b: actions)
    monkeypatch.setattr(agent.net, "dynamics", lambda latent, a: (seen.append(a.clone()), original(latent, a))[1])
    agent.loss(batch)
    assert torch.equal(torch.stack(seen, 1), actions)


def test_unroll_targets_bootstrap_from_the_final_observation_after_a_truncation():
    t = _targets_by_start(_episode_replay(True, n_step=2, unroll_steps=2), 0.5, 2, 2)
    # start 2: z0 = 3 + .5*4 + .25*v(o4); z1 = 4 + .5*v(o4); past the end nothing is trained
    assert t[2]["value"] == pytest.approx([3 + 2 + 0.25 * 400, 4 + 0.5 * 400, 0.0])
    assert t[2]["value_mask"] == [True, True, False]
    assert t[2]["reward_mask"][1:] == [True, True]
    assert t[3]["value"][0] == pytest.approx(4 + 0.5 * 400)
    assert t[3]["value_mask"] == [True, False, False] and t[3]["reward_mask"][1:] == [True, False]
    # start 0 never reaches the end: same as the terminated episode
    assert t[0]["value"] == pytest.approx([52.0, 78.5, 3 + 2 + 0.25 * 400])


def test_two_player_targets_take_the_view_of_the_player_to_move():
    """Players alternate; every term of the other player's flips sign."""
    t = _targets_by_start(_episode_replay(False, n_step=2, unroll_steps=1, players=True), 0.5, 2, 1, players=True)
    # start 0 (player 0): r0 = 1 is its own, r1 = 2 the opponent's, o2 is player 0's to move
    assert t[0]["value"] == pytest.approx([1 - 0.5 * 2 + 0.25 * 200, 2 - 0.5 * 3 + 0.25 * 300])
    # start 2 (player 0): r2 = 3 own, r3 = 4 the opponent's, then the end
    assert t[2]["value"] == pytest.approx([3 - 0.5 * 4, 4.0])


# ------------------------------------------------------------------ agent pieces
def _agent(env_name="cartpole", *overrides, with_env=True):
    from omegaconf import OmegaConf

    import envs
    from runtime.config import build

    cfg = compose(*TINY, f"env={env_name}", *overrides)
    agent_cfg = build(MuZeroConfig, OmegaConf.to_container(cfg.agent, resolve=True), "agent")
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    env, spec = envs.make(env_cfg, num_envs=int(cfg.env.num_envs), seed=0)
    return MuZero(agent_cfg, spec, torch.device("cpu"), env=env if with_env else None, total_steps=2000, seed=0)


def test_search_uses_the_learned_model_once_per_simulation_for_all_envs(monkeypatch):
    agent = _agent()
    calls = []
    original = agent.net.dynamics

    def counting(latent, action):
        calls.append(latent.shape[0])
        return original(latent, action)

    monkeypatch.setattr(agent.net, "dynamics", counting)
    result = agent.search(agent.obs, "eval", temperature=0.0)
    assert calls == [4] * 4                                  # 4 simulations, each batched over the 4 envs
    assert result.visit_counts.sum(axis=1).tolist() == [4] * 4
    assert agent.act(agent.obs).shape == (4,)


def test_support_step_reaches_the_search_and_the_bootstrap_values():
    """With ``support_step`` 0.1 a value head sure of atom S + 10 means h = 1.0 (a value of 2.99),
    not h = 10 (about 117): in the search's leaves and root, and in the target network's values."""
    agent = _agent("cartpole", "agent.support_step=0.1")
    S = agent.cfg.support_size
    for net in (agent.net, agent.target_net):
        with torch.no_grad():
            net.value_head.weight.zero_()
            net.value_head.bias.fill_(-30.0)
            net.value_head.bias[S + 10] = 30.0
    expected = h_inverse(torch.tensor(1.0, dtype=torch.float64)).item()
    assert expected == pytest.approx(2.988, abs=1e-3)
    result = agent.search(agent.obs, "eval", temperature=0.0)
    # every node's value is 2.99; rewards of an untrained reward head are near 0
    assert np.all(np.abs(result.root_value - expected) < 1.0)
    for _ in range(30):
        agent.collect()
    batch = agent.replay.sample(8)
    values = agent._network_values(batch, torch.zeros((8, 3), dtype=torch.long))
    assert torch.allclose(values.double(), torch.full((8, 3), expected, dtype=torch.float64), atol=1e-3)


def test_a_few_hundred_updates_fit_the_replayed_rewards_and_values():
    torch.manual_seed(0)
    agent = _agent("cartpole", "agent.learning_rate=3e-3", "agent.batch_size=32")
    for _ in range(40):                     # 640 env steps of searched play
        agent.collect()
    first = agent.learn(5)
    agent.learn(150)
    last = agent.learn(5)
    assert last["reward_loss"] < 0.8 * first["reward_loss"]
    assert last["value_loss"] < 0.8 * first["value_loss"]


def test_gumbel_search_and_reanalyse_run_through_train_iteration():
    agent = _agent("cartpole", "agent.algorithm=gumbel", "agent.reanalyse_fraction=0.5")
    seen = []
    original = agent._reanalyse

    def spy(batch, policy):
        out = original(batch, policy)
        seen.append((policy, out))
        return out

    agent._reanalyse = spy
    for _ in range(12):
        metrics = agent.train_iteration()
    assert agent.grad_steps > 0 and math.isfinite(metrics["loss"])
    before, after = seen[-1]
    half = before.shape[0] // 2
    assert torch.equal(before[half:], after[half:])         # the rest keeps its stored targets
    assert not torch.allclose(before[:half], after[:half])  # fresh searches changed the first half


def _entropy_after_fitting_one_hot_targets(weight: float) -> float:
    """Policy entropy on the collected observations after 60 updates toward one-hot targets."""
    torch.manual_seed(0)
    agent = _agent("cartpole", "agent.learning_rate=1e-2", "agent.batch_size=32",
                   f"agent.policy_entropy_weight={weight}")
    agent._reanalyse = lambda batch, policy: torch.nn.functional.one_hot(
        torch.zeros(policy.shape[:2], dtype=torch.long), policy.shape[-1]).float()
    for _ in range(10):
        agent.collect()
    agent.learn(60)
    with torch.no_grad():
        logits, _ = agent.net.prediction(agent.net.representation(torch.as_tensor(agent.obs)))
        return float(torch.distributions.Categorical(logits=logits).entropy().mean())


def test_policy_entropy_weight_keeps_the_policy_from_collapsing():
    collapsed = _entropy_after_fitting_one_hot_targets(0.0)
    kept = _entropy_after_fitting_one_hot_targets(1.0)
    assert collapsed < 0.1                      # one-hot targets alone drive the policy deterministic
    assert kept > 0.3 and kept > 5 * collapsed  # the bonus holds it near uniform (ln 2 = 0.69)


def test_consistency_loss_pulls_unrolled_latents_toward_the_real_ones():
    """EfficientZero's loss: negative cosine between predicted and real projected latents;
    its target branch gets no gradient, and training makes the two agree."""
    torch.manual_seed(0)
    agent = _agent("cartpole", "agent.learning_rate=3e-3", "agent.batch_size=32", "agent.consistency_weight=2.0",
                   "agent.consistency_dim=16")
    for _ in range(10):
        agent.collect()
    batch = agent.replay.sample(8)
    target = agent._consistency_targets(batch)
    assert target.shape == (8, agent.cfg.unroll_steps, 16) and not target.requires_grad
    first = agent.learn(5)["consistency_loss"]
    agent.learn(80)
    last = agent.learn(5)["consistency_loss"]
    assert -1.0 <= last < first - 0.1, (first, last)


def test_consistency_heads_fit_conv_latents():
    agent = _agent("minatar", "agent.torso=conv", "agent.consistency_weight=1.0", "agent.consistency_dim=8",
                   "agent.batch_size=4", "agent.channels=4")
    assert isinstance(agent.net, ConvModel)
    for _ in range(3):
        agent.collect()
    metrics = agent.learn(1)
    assert math.isfinite(metrics["consistency_loss"])


def test_value_prefix_targets_sum_rewards_and_restart_every_horizon():
    reward = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    # horizon 2: steps 1-2 and 3-4 are summed, step 5 starts a new prefix
    assert value_prefix_targets(reward, 2).tolist() == [[0, 1, 3, 3, 7, 5], [0, 1, 2, 0, 0, 0]]
    # a horizon past the unroll: a plain running sum
    assert value_prefix_targets(reward, 5)[0].tolist() == [0, 1, 3, 6, 10, 15]


def test_search_rewards_are_differences_of_value_prefixes_restarting_every_horizon():
    """Every edge of a searched tree carries prefix(child) - prefix(parent), or prefix(child)
    under a parent at depth 0, 2, 4... (horizon 2); recomputed here path by path from the root."""
    torch.manual_seed(0)
    agent = _agent("cartpole", "agent.value_prefix=true", "agent.lstm_horizon=2", "agent.lstm_hidden=8",
                   "agent.num_simulations=40")
    obs = np.asarray(agent.obs)
    agent.search(obs, "eval", temperature=0.0)
    tree = agent._forest(len(obs), "eval").tree_arrays()
    net, R = agent.net, agent.cfg.reward_support_size
    depths, checked = [], 0
    with torch.no_grad():
        for b in range(len(obs)):
            for node in range(1, int(tree["num_nodes"][b])):
                path = [node]
                while tree["parent"][b, path[-1]] != 0:
                    path.append(int(tree["parent"][b, path[-1]]))
                latent, hidden, prefix, before = net.representation(torch.as_tensor(obs[b:b + 1])), None, 0.0, 0.0
                for depth, n in enumerate(reversed(path)):
                    if depth % 2 == 0:
                        hidden, prefix = None, 0.0
                    before = prefix
                    action = torch.tensor([int(tree["action"][b, n])])
                    latent, logits, hidden = net.dynamics_prefix(latent, action, hidden)
                    prefix = support_to_scalar(logits, R).item()
                assert tree["reward"][b, node] == pytest.approx(prefix - before, abs=1e-4)
                depths.append(len(path))
                checked += before != 0.0
    assert max(depths) >= 4 and checked > 0     # resets at depth 2 and differences both exercised


def test_value_prefix_learns_and_runs_on_both_model_families():
    torch.manual_seed(0)
    agent = _agent("cartpole", "agent.learning_rate=3e-3", "agent.batch_size=32", "agent.value_prefix=true",
                   "agent.lstm_hidden=16", "agent.zero_init_heads=true")
    with pytest.raises(RuntimeError, match="dynamics_prefix"):
        agent.net.dynamics(agent.net.representation(torch.zeros(1, 4)), torch.zeros(1, dtype=torch.long))
    for _ in range(40):
        agent.collect()
    first = agent.learn(5)
    agent.learn(150)
    last = agent.learn(5)
    assert last["reward_loss"] < 0.8 * first["reward_loss"]
    conv = _agent("minatar", "agent.torso=conv", "agent.value_prefix=true", "agent.lstm_hidden=8",
                  "agent.batch_size=4", "agent.channels=4")
    assert isinstance(conv.net, ConvModel)
    for _ in range(3):
        conv.collect()
    assert math.isfinite(conv.learn(1)["reward_loss"])
    from runtime.errors import UserError

    with pytest.raises(UserError, match="two-player"):
        _agent("tictactoe", "agent.value_prefix=true")


# ------------------------------------------------------------------ end to end
def test_train_cli_smoke_logs_losses_and_evaluates(tmp_path):
    result = run_cli("train.py", *TINY, "total_env_steps=480", "eval.interval=480", f"runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(next(tmp_path.rglob("metrics.jsonl")))
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any("eval/return_mean" in r for r in records)


def _resume_matches(tmp_path, monkeypatch, settings, total):
    straight = Trainer(compose(*settings), run_dir=tmp_path / "straight").run()
    assert straight["status"] == "finished"
    original = MuZero.train_iteration
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 9:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(MuZero, "train_iteration", interrupted)
    first = Trainer(compose(*settings), run_dir=tmp_path / "resumed").run()
    monkeypatch.setattr(MuZero, "train_iteration", original)
    assert first["status"] == "interrupted" and 0 < first["steps"] < total
    resume = [f"resume={tmp_path / 'resumed'}"]
    resumed = Trainer(compose(*settings, *resume), run_dir=tmp_path / "unused", overrides=resume).run()
    assert resumed["status"] == "finished"
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]
    a = strip(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    b = strip(read_jsonl(tmp_path / "resumed" / "metrics.jsonl"))
    assert len(a) == len(b) > 3 and a == b


def test_interrupt_then_resume_matches_uninterrupted_cartpole(tmp_path, monkeypatch):
    """Replay, target network, search streams and the env are in the checkpoint: the log is identical."""
    settings = TINY + ["total_env_steps=320", "eval.interval=320", "checkpoint.interval=100000",
                       "checkpoint.include_replay=true"]
    _resume_matches(tmp_path, monkeypatch, settings, 320)


def test_interrupt_then_resume_matches_uninterrupted_tictactoe(tmp_path, monkeypatch):
    settings = [a for a in TINY if not a.startswith(("env", "eval"))] + [
        "env=tictactoe", "env.num_envs=8", "total_env_steps=400", "eval.interval=400", "eval.episodes=2",
        "checkpoint.interval=100000"]
    _resume_matches(tmp_path, monkeypatch, settings, 400)


def test_tictactoe_player_plays_legal_moves_against_perfect_play():
    from runtime.match_eval import evaluate_against

    agent = _agent("tictactoe", "env.num_envs=4", with_env=False)
    result = evaluate_against(agent, "tic_tac_toe", "perfect", 4, seed=0)
    assert result["games"] == 4 and result["wins"] == 0          # nobody beats perfect play


def test_conv_model_downsamples_atari_frames_to_6x6_and_keeps_small_boards():
    from agents.muzero import ConvModel, make_model
    from envs.spec import EnvSpec

    cfg = MuZeroConfig(channels=8, blocks=1, hidden=[16], support_size=4, reward_support_size=2)
    atari = EnvSpec("pong", gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6), 1)
    board = EnvSpec("minatar", gym.spaces.Box(0, 1, (4, 10, 10), np.float32), gym.spaces.Discrete(6), 1)
    for spec, planes in ((atari, (6, 6)), (board, (10, 10))):
        model = make_model(spec, cfg).eval()
        assert isinstance(model, ConvModel) and model.latent_shape == (8, *planes)
        obs = torch.as_tensor(spec.observation_space.sample()[None].repeat(3, 0))
        with torch.no_grad():
            latent = model.representation(obs)
            following, reward = model.dynamics(latent, torch.tensor([0, 2, 5]))
            policy, value = model.prediction(following)
        assert following.shape == (3, 8, *planes) and reward.shape == (3, 5)
        assert policy.shape == (3, 6) and value.shape == (3, 9)
        flat = following.flatten(1)   # min-max scaled latent states
        assert torch.allclose(flat.min(1).values, torch.zeros(3)) and torch.allclose(flat.max(1).values, torch.ones(3))


def test_atari_representation_runs_channels_last_and_matches_the_default_layout():
    """Full-size frames go through channels-last convolutions; the latent and its gradients
    are those of the same weights in the default layout, and leave in the default layout."""
    import copy

    from agents._latent import ResidualTorso

    torch.manual_seed(0)
    fast = ResidualTorso((4, 84, 84), 8, 1, downsample=True, scale=255.0)
    plain = copy.deepcopy(fast).to(memory_format=torch.contiguous_format)
    plain.channels_last = False
    first = fast.stem.net[0].weight
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    assert plain.stem.net[0].weight.is_contiguous()
    obs = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    latent, reference = fast(obs), plain(obs)
    assert latent.is_contiguous() and latent.shape == reference.shape == (5, 8, 6, 6)
    assert torch.allclose(latent, reference, atol=1e-4)
    (latent * torch.arange(latent.numel()).view_as(latent)).sum().backward()
    (reference * torch.arange(reference.numel()).view_as(reference)).sum().backward()
    assert torch.allclose(first.grad, plain.stem.net[0].weight.grad, rtol=1e-3, atol=1e-3)
    small = ResidualTorso((4, 10, 10), 8, 1, downsample=False)   # board-sized planes keep the default layout
    assert not small.channels_last and small.stem[0].weight.is_contiguous()


def test_zero_init_heads_start_every_prediction_at_zero_and_still_learn():
    """``zero_init_heads``: a fresh model (MLP or conv) predicts value 0, reward 0 and a uniform
    policy for any input; without it the wide support's expectation starts away from 0; and the
    zeroed value layer still gets a gradient."""
    from agents.muzero import make_model
    from envs.spec import EnvSpec

    board = EnvSpec("minatar", gym.spaces.Box(0, 1, (4, 10, 10), np.float32), gym.spaces.Discrete(6), 1)
    vector = EnvSpec("cartpole", gym.spaces.Box(-5, 5, (4,), np.float32), gym.spaces.Discrete(2), 1)
    for spec, torso in ((board, "conv"), (vector, "mlp")):
        values = {}
        for zero in (False, True):
            torch.manual_seed(0)
            cfg = MuZeroConfig(torso=torso, channels=8, blocks=1, hidden=[32], latent_dim=16, support_size=100,
                               reward_support_size=5, zero_init_heads=zero)
            model = make_model(spec, cfg).eval()
            obs = torch.as_tensor(np.stack([spec.observation_space.sample() for _ in range(6)]))
            with torch.no_grad():
                latent = model.representation(obs)
                _, reward = model.dynamics(latent, torch.arange(6) % spec.num_actions)
                policy, value = model.prediction(latent)
            values[zero] = support_to_scalar(value, 100)
            if zero:
                assert torch.all(reward == 0) and torch.all(value == 0) and torch.all(policy == 0)
                assert values[zero].abs().max() < 1e-4   # uniform over a symmetric support: 0 up to rounding
                # the torso keeps its random initialisation
                assert latent.std() > 0
                model.train()
                loss = support_to_scalar(model.prediction(model.representation(obs))[1], 100).sub(3.0).pow(2).mean()
                loss.backward()
                last = model.value_head if torso == "mlp" else model.value_head[-1]
                assert last.weight.grad.abs().sum() > 0    # the zeroed layer still learns
        assert values[False].abs().max() > 1e-3    # the random last layer gives values away from 0


def test_search_bootstrap_reads_stored_root_values_and_the_network_only_after_truncation():
    """value_bootstrap=search: stored root values; a truncated episode's final observation asks the target net."""
    agent = _agent("cartpole", "agent.value_bootstrap=search", "agent.unroll_steps=2", "agent.n_step=2",
                   with_env=False)
    space = gym.spaces.Box(-10, 10, (1,), np.float32)
    replay = SequenceReplay(64, space, gym.spaces.Discrete(2), num_envs=1, unroll_steps=2, n_step=2, gamma=0.5,
                            extras={"root_value": ((), np.float32)})
    for i in range(4):
        replay.add(np.array([[i]], np.float32), np.array([0]), np.array([1.0], np.float32),
                   np.array([[i + 1]], np.float32), np.array([False]), np.array([i == 3]),
                   extras={"root_value": np.array([10.0 * i])})
    agent.replay = replay
    agent._network_values = lambda batch, position: 1000.0 + position.float()   # marks network calls
    from agents.muzero import bootstrap_positions

    batch = replay.sample(64)
    position, _, _ = bootstrap_positions(batch.mask, batch.terminated, 2, 2)
    values = agent._bootstrap_values(batch, position)
    start = batch.obs[:, 0].long()
    row0 = int(torch.nonzero(start == 0)[0, 0])
    row2 = int(torch.nonzero(start == 2)[0, 0])
    assert values[row0].tolist() == [20.0, 30.0, 1004.0]      # o2, o3 searched; o4 is the truncated final obs
    assert values[row2, :2].tolist() == [1002.0, 1002.0]      # both bootstrap from the final observation


def test_temperature_moves_samples_only_the_first_plies_of_each_game():
    """After ``temperature_moves`` plies a board game plays its search's most visited move."""
    def played(temperature_moves):
        agent = _agent("tictactoe", "env.num_envs=32", f"agent.temperature_moves={temperature_moves}")
        records = []
        search, step = agent.search, agent.game.step

        def recording_search(*args, **kwargs):
            result = search(*args, **kwargs)
            records.append({"greedy": agent._greedy(result), "ply": agent.game.num_moves().copy()})
            return result

        def recording_step(actions):
            records[-1]["action"] = np.asarray(actions).copy()
            return step(actions)

        agent.search, agent.game.step = recording_search, recording_step
        for _ in range(12):
            agent._game_step()
        late = np.concatenate([r["ply"] >= 2 for r in records])
        early = ~late
        same = np.concatenate([r["action"] == r["greedy"] for r in records])
        return same[early].mean(), same[late].mean()

    early, late = played(2)
    assert late == 1.0 and early < 1.0                      # sampled while ply < 2, greedy after
    assert played("null")[1] < 1.0                          # without the limit every ply is sampled


def test_model_check_walks_every_unfinished_tictactoe_position_to_the_end():
    """benchmarks/muzero_model_check.py: 4,520 unfinished positions; every path ends within 9 plies, and the
    share of finished games only grows."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "muzero_model_check.py"
    spec = importlib.util.spec_from_file_location("muzero_model_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    agent = _agent("tictactoe", with_env=False)
    for kind in ("legal", "optimal"):
        rows = module.check(agent, kind)
        assert [r["depth"] for r in rows] == list(range(10))
        assert rows[0]["live"] == 4520 and rows[0]["over"] == 0 and rows[-1]["live"] == 0
        assert all(r["live"] + r["over"] == 4520 for r in rows)
        assert all(a["live"] >= b["live"] for a, b in zip(rows, rows[1:]))
        assert 0.0 <= rows[0]["value_error_live"] <= 2.0
