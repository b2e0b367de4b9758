"""Belief-gradient AlphaZero: belief targets, loss gradient, augmentation, acting, learning, resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import envs
from agents.alphazero import (
    AlphaZero,
    AlphaZeroConfig,
    gaussian_posterior,
    gumbel_belief,
    probability_best,
    root_child_returns,
    visits_belief,
)
from envs.games import PerfectTicTacToePlayer, RandomPlayer, TicTacToe, play_match
from runtime.errors import UserError

TTT = {"kind": "game", "game": "tic_tac_toe", "name": "tictactoe"}


def make_agent(num_envs: int = 16, seed: int = 0, **overrides) -> AlphaZero:
    game, spec = envs.make(TTT, num_envs, seed)
    values = {"name": "alphazero", "blocks": 1, "channels": 16, "num_simulations": 16, "moves_per_iteration": 2,
                  "learning_starts": 64, "batch_size": 64, "buffer_size": 4000}
    values.update(overrides)
    cfg = AlphaZeroConfig(**values)
    cfg.validate()
    return AlphaZero(cfg, spec, torch.device("cpu"), env=game, seed=seed)


# ------------------------------------------------------------------ belief formulas
def test_visits_belief_is_the_visit_distribution():
    counts = np.array([[0, 3, 1], [2, 2, 4]])
    np.testing.assert_allclose(visits_belief(counts), [[0, 0.75, 0.25], [0.25, 0.25, 0.5]])


def test_gumbel_belief_is_softmax_of_logits_plus_scaled_rescaled_completed_q():
    logits = np.array([[0.0, 1.0, -1.0, 5.0]])
    q = np.array([[0.5, -0.5, 0.0, 1.0]])
    visits = np.array([[4, 2, 0, 0]])
    legal = np.array([[True, True, True, False]])
    got = gumbel_belief(logits, q, visits, legal, value_scale=0.1, maxvisit_init=50.0)
    sigma = (50 + 4) * 0.1
    scores = logits[0, :3] + sigma * np.array([1.0, 0.0, 0.5])        # q rescaled over legal actions
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(got[0, :3], expected)
    assert got[0, 3] == 0.0


def test_gumbel_belief_equals_the_core_improved_policy():
    agent = make_agent(num_envs=8, algorithm="gumbel", belief_target="gumbel", num_simulations=16)
    game = TicTacToe(batch_size=8)
    game.step(np.arange(8))
    stats = agent.run_search(game, evaluation=False)
    np.testing.assert_allclose(stats["belief"], stats["improved_policy"], atol=1e-12)
    assert not np.allclose(stats["belief"], visits_belief(stats["visits"]))


def test_probability_best_two_actions_matches_closed_form():
    mean = np.array([[0.3, 0.1]])
    std = np.array([[0.2, 0.15]])
    got = probability_best(mean, std, np.array([[True, True]]), nodes=48)
    expected = norm.cdf((0.3 - 0.1) / math.hypot(0.2, 0.15))
    np.testing.assert_allclose(got[0], [expected, 1 - expected], atol=1e-6)


def test_probability_best_symmetry_illegal_and_certainty():
    legal = np.array([[True, True, True, False], [True, True, True, True]])
    mean = np.array([[0.0, 0.0, 0.0, 9.0], [1.0, 0.0, 0.0, -0.5]])
    std = np.array([[0.3, 0.3, 0.3, 0.01], [1e-4, 0.05, 0.05, 0.05]])
    got = probability_best(mean, std, legal)
    np.testing.assert_allclose(got[0], [1 / 3, 1 / 3, 1 / 3, 0.0], atol=1e-9)   # illegal action gets nothing
    assert got[1, 0] > 0.999999
    np.testing.assert_allclose(got.sum(axis=1), 1.0)


def test_probability_best_agrees_with_monte_carlo():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(0, 0.3, (1, 5)), rng.uniform(0.05, 0.4, (1, 5))
    got = probability_best(mean, std, np.ones((1, 5), bool), nodes=64)[0]
    draws = rng.normal(mean[0], std[0], (400_000, 5)).argmax(axis=1)
    np.testing.assert_allclose(got, np.bincount(draws, minlength=5) / len(draws), atol=4e-3)


def test_gaussian_posterior_by_hand():
    q, n, ss = np.array([[0.5, 0.0]]), np.array([[3.0, 0.0]]), np.array([[0.12, 0.0]])
    mean, std = gaussian_posterior(q, n, ss, prior_mean=np.array([0.1]), prior_std=0.5, noise_std=0.4)
    noise_var = (0.12 + 0.16) / 4.0
    precision = 4.0 + 3.0 / noise_var
    assert mean[0, 0] == pytest.approx((0.1 * 4.0 + 3.0 * 0.5 / noise_var) / precision)
    assert std[0, 0] == pytest.approx(precision ** -0.5)
    assert mean[0, 1] == pytest.approx(0.1) and std[0, 1] == pytest.approx(0.5)   # unvisited: the prior


def test_root_child_returns_reproduce_the_core_q_values():
    agent = make_agent(num_envs=8, num_simulations=40)
    game = TicTacToe(batch_size=8)
    for _ in range(3):                               # a few random opening moves
        game.step(np.where(game.terminal(), -1, RandomPlayer(0).act(game)))
    stats = agent.run_search(game, evaluation=False)
    count, mean, sum_sq = root_child_returns(agent._forest(8, False).tree_arrays(), 9)
    np.testing.assert_array_equal(count, stats["visits"])
    visited = stats["visits"] > 0
    np.testing.assert_allclose(mean[visited], stats["q"][visited], atol=1e-9)
    assert (sum_sq >= -1e-12).all()


def test_optimal_belief_is_sure_of_an_immediate_win():
    agent = make_agent(num_envs=1, num_simulations=64, belief_target="optimal")
    game = TicTacToe(batch_size=1)
    for a in (0, 3, 1, 4):                           # X: 0, 1; O: 3, 4 -> X wins at 2
        game.step([a])
    stats = agent.run_search(game, evaluation=True)
    assert stats["belief"][0].argmax() == 2
    assert stats["belief"][0, 2] > 0.9
    assert stats["belief"][0][~stats["legal"][0]].sum() == 0
    assert (stats["belief"][0][stats["visits"][0] == 0] == 0).all()   # untried actions: no evidence, no belief


# ------------------------------------------------------------------------ the loss
def test_belief_loss_gradient_is_the_expected_log_belief_gradient():
    agent = make_agent(value_loss_weight=0.0)
    agent.net.eval()                                 # fixed batch-norm statistics: per-sample terms separate
    game = TicTacToe(batch_size=4)
    game.step([4, 0, 8, 2])
    obs = torch.from_numpy(game.observation())
    belief = torch.softmax(torch.randn(4, 9, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss, _ = agent.loss(obs, belief, torch.zeros(4))
    net = agent.net                                  # the parameters the belief depends on
    params = [*net.stem.parameters(), *net.torso.parameters(), *net.belief_head.parameters()]
    grad_loss = torch.autograd.grad(loss, params)
    # E_{s, a ~ B}[grad ln B_phi(a|s)] computed action by action
    logits, _ = agent.net(obs)
    log_b = torch.log_softmax(logits, dim=-1)
    expected = [torch.zeros_like(p) for p in params]
    for i in range(4):
        for a in range(9):
            g = torch.autograd.grad(log_b[i, a], params, retain_graph=True)
            for e, gi in zip(expected, g):
                e += belief[i, a] * gi / 4
    for gl, e in zip(grad_loss, expected):
        torch.testing.assert_close(gl, -e, rtol=1e-4, atol=1e-6)


def test_value_loss_is_mse_to_outcome():
    agent = make_agent(value_loss_weight=1.0)
    agent.net.eval()
    obs = torch.from_numpy(TicTacToe(batch_size=3).observation())
    belief = torch.full((3, 9), 1 / 9)
    z = torch.tensor([1.0, -1.0, 0.0])
    _, parts = agent.loss(obs, belief, z)
    with torch.no_grad():
        _, value = agent.net(obs)
    assert parts["value_loss"] == pytest.approx(float(((value - z) ** 2).mean()), rel=1e-5)


# ------------------------------------------------------------------ augmentation
def test_augmentation_matches_the_game_symmetries_and_keeps_beliefs_on_empty_cells():
    agent = make_agent()
    game = TicTacToe(batch_size=1)
    for a in (0, 4, 5):
        game.step([a])
    obs = game.observation()
    legal = game.legal_mask().astype(np.float32)
    belief = legal * np.arange(1, 10, dtype=np.float32)          # distinct mass on each empty cell
    belief /= belief.sum()
    references = game.symmetries(obs, belief)
    for s, (ref_obs, ref_belief) in enumerate(references):
        got_obs, got_belief = agent.augment(torch.from_numpy(obs), torch.from_numpy(belief), np.array([s]))
        np.testing.assert_array_equal(got_obs.numpy(), ref_obs)
        np.testing.assert_allclose(got_belief.numpy(), ref_belief)
        occupied = (got_obs[0, 0] + got_obs[0, 1]).reshape(-1).numpy() > 0
        assert got_belief[0, occupied].sum() == 0                # mass only on the transformed empty cells
    assert len(references) == 8


def test_augmentation_is_vectorised_over_mixed_symmetries():
    agent = make_agent()
    game = TicTacToe(batch_size=8)
    game.step(np.arange(8))
    obs, belief = game.observation(), game.legal_mask().astype(np.float32) / 8
    sym = np.arange(8)
    got_obs, got_belief = agent.augment(torch.from_numpy(obs), torch.from_numpy(belief), sym)
    for i, s in enumerate(sym):
        ref_obs, ref_belief = game.symmetries(obs[i], belief[i])[s]
        np.testing.assert_array_equal(got_obs[i].numpy(), ref_obs)
        np.testing.assert_allclose(got_belief[i].numpy(), ref_belief)


# ------------------------------------------------------------------------ acting
def test_acting_rules():
    belief = np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    legal = np.array([[True, True, True], [False, True, True]])
    q = np.array([[0.0, 0.0, 0.0], [0.0, -0.5, 0.5]])
    argmax = make_agent(act="argmax")
    np.testing.assert_array_equal(argmax.choose(belief, legal, q, np.zeros(2), explore=True), [1, 2])  # Q breaks the tie
    sample = make_agent(act="sample")
    draws = np.stack([sample.choose(belief, legal, q, np.zeros(2), True) for _ in range(3000)])
    np.testing.assert_allclose(np.bincount(draws[:, 0], minlength=3) / 3000, [0.1, 0.6, 0.3], atol=0.03)
    assert (draws[:, 1] != 0).all()                          # never an illegal move
    temp = make_agent(act="temperature", temperature_moves=2)
    late = np.stack([temp.choose(belief, legal, q, np.array([2, 5]), True) for _ in range(200)])
    assert (late == [1, 2]).all()                            # after the schedule: argmax
    early = np.stack([temp.choose(belief, legal, q, np.array([0, 1]), True) for _ in range(500)])
    assert len(set(early[:, 0])) == 3
    # evaluation is deterministic whatever the rule
    assert (sample.choose(belief, legal, q, np.zeros(2), explore=False) == [1, 2]).all()


def test_player_protocol_plays_legal_moves_and_finds_the_win():
    agent = make_agent(num_simulations=48)
    game = TicTacToe(batch_size=2)
    for a in ([0, 4], [3, 0], [1, 8], [4, 1]):             # game 0: X to win at 2
        game.step(a)
    before = game.clone()
    actions = agent.player().act(game)
    assert actions[0] == 2
    assert game.legal_mask()[1, actions[1]]
    np.testing.assert_array_equal(game.clone().arrays["boards"], before.arrays["boards"])   # not stepped
    result = play_match(agent.player(simulations=8), RandomPlayer(), "tic_tac_toe", 4, seed=0)
    assert result.num_games == 4


def test_config_errors_name_the_key():
    with pytest.raises(UserError, match="belief_target"):
        AlphaZeroConfig(name="alphazero", belief_target="regret").validate()
    with pytest.raises(UserError, match="act"):
        AlphaZeroConfig(name="alphazero", act="greedy").validate()
    _, spec = envs.make({"kind": "gym", "id": "CartPole-v1", "name": "cartpole"}, 1, 0)
    with pytest.raises(UserError, match="two-player"):
        AlphaZero(AlphaZeroConfig(name="alphazero"), spec, torch.device("cpu"))


# ------------------------------------------------------- self-play, learning, resume
def test_self_play_fills_replay_with_outcomes_from_the_movers_view():
    agent = make_agent(num_envs=8)
    agent.self_play(12)
    assert agent.games_played > 0 and agent.env_steps == 8 * 12
    batch = agent.replay.sample(512)
    z = batch.extras["outcome"].numpy()                     # [N, 2]: this position and the next one
    belief = batch.extras["belief"][:, 0]
    assert set(np.unique(z[:, 0])) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(belief.sum(dim=1), torch.ones(512))
    last = batch.terminated[:, 0].numpy()
    # the player who made a game's last move won it (reward 1) or drew it (reward 0)
    np.testing.assert_array_equal(z[last, 0], batch.reward[:, 0].numpy()[last])
    # movers alternate: the next position of the same game has the opposite outcome
    following = batch.mask[:, 1].numpy() & ~last
    assert following.any()
    np.testing.assert_array_equal(z[following, 1], -z[following, 0])


def test_short_self_play_training_beats_random():
    """Fixed seed, 16k positions (~20-40 s): the raw network (no search) learns to beat random play."""
    torch.set_num_threads(1)
    agent = make_agent(num_envs=64, seed=3, channels=16, num_simulations=16, moves_per_iteration=2,
                       learning_starts=1000, batch_size=128, train_ratio=4.0, buffer_size=20000)
    before = play_match(agent.player(simulations=0), RandomPlayer(), "tic_tac_toe", 200, seed=5)
    while agent.env_steps < 16_000:
        metrics = agent.train_iteration()
    after = play_match(agent.player(simulations=0), RandomPlayer(), "tic_tac_toe", 200, seed=5)
    assert metrics["value_loss"] < 0.6
    assert after.score >= 0.75, after.summary()                       # measured: 0.85 (untrained: 0.56)
    assert after.score > before.score + 0.15, (before.summary(), after.summary())
    searched = play_match(agent.player(simulations=32), PerfectTicTacToePlayer(), "tic_tac_toe", 40, seed=5)
    # measured: 1 loss on one benchmark machine, 6 on another (the same code and seed; floating-point
    # results differ between CPUs); the untrained network, searched the same way: 16
    assert searched.losses <= 10, searched.summary()


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    from runtime import checkpoint as ckpt

    agent = make_agent(seed=1, learning_starts=32)
    for _ in range(3):
        agent.train_iteration()
    path = ckpt.save(tmp_path / "a.pt", {"config": {}, "progress": {},
                                              "agent": agent.state_dict(include_replay=True)})
    reference = [agent.train_iteration() for _ in range(2)]
    twin = make_agent(seed=99, learning_starts=32)
    twin.load_state_dict(ckpt.load(path)["agent"])
    resumed = [twin.train_iteration() for _ in range(2)]
    assert resumed == reference
    for a, b in zip(agent.net.state_dict().values(), twin.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(agent.game.clone().arrays["boards"], twin.game.clone().arrays["boards"])


def test_evaluate_for_the_trainer_reports_vs_random_and_vs_perfect():
    agent = make_agent(num_simulations=8)
    out = agent.evaluate(episodes=10, seed=0)
    for key in ("eval/vs_random_points", "eval/vs_random_losses", "eval/vs_perfect_points",
                "eval/vs_perfect_losses"):
        assert key in out and isinstance(out[key], float | int)
    assert out["eval/vs_perfect_wins"] == 0                  # nobody beats perfect play
    assert out["eval/vs_random_games"] == 10
