"""runtime.match_eval: evaluation against opponents, checkpoint opponents, the Elo ladder."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import envs
from agents.alphazero import AlphaZero, AlphaZeroConfig
from runtime import checkpoint as ckpt
from runtime.match_eval import elo_ladder, evaluate_against, fit_elo, load_agent

TTT = {"kind": "game", "game": "tic_tac_toe", "name": "tictactoe", "num_envs": 4}
AGENT = {"name": "alphazero", "blocks": 1, "channels": 8, "num_simulations": 8}


def make_agent(seed: int = 0, **overrides) -> AlphaZero:
    _, spec = envs.make(TTT, 4, seed)
    return AlphaZero(AlphaZeroConfig(**{**AGENT, **overrides}), spec, torch.device("cpu"), seed=seed)


def save_checkpoint(path, agent: AlphaZero, steps: int):
    payload = {"config": {"seed": 0, "env": TTT, "agent": AGENT}, "agent": agent.state_dict(include_replay=False),
               "progress": {"steps": steps}}
    return ckpt.save(path, payload)


def test_random_opponent_counts_colours_and_intervals():
    out = evaluate_against(make_agent(), TTT, "random", 20, seed=0)
    assert out["wins"] + out["draws"] + out["losses"] == out["games"] == 20
    assert out["first_wins"] + out["first_draws"] + out["first_losses"] == 10          # colours alternate
    assert out["second_wins"] + out["second_draws"] + out["second_losses"] == 10
    assert out["points"] == pytest.approx((out["wins"] + 0.5 * out["draws"]) / 20)
    assert out["win_rate_ci_low"] <= out["win_rate"] <= out["win_rate_ci_high"]
    assert out["points_ci_low"] <= out["points"] <= out["points_ci_high"]
    again = evaluate_against(make_agent(), TTT, "random", 20, seed=0)
    assert again == out                                                                 # seeded


def test_nobody_beats_the_perfect_player():
    out = evaluate_against(make_agent(), "tic_tac_toe", "perfect", 20, seed=1)
    assert out["wins"] == 0 and out["losses"] > 0                    # an untrained agent does lose


def test_human_opponent_reads_moves_from_the_terminal():
    moves = itertools.cycle(["nonsense"] + [str(c) for c in range(9)])
    shown: list[str] = []
    out = evaluate_against(make_agent(), TTT, "human", 2, seed=0, input_fn=lambda prompt: next(moves),
                           output_fn=shown.append)
    assert out["games"] == 2
    assert any("---+---+---" in text for text in shown)              # the board was drawn


def test_checkpoint_opponent_is_rebuilt_with_its_weights(tmp_path):
    trained = make_agent(seed=5)
    with torch.no_grad():
        for p in trained.net.parameters():
            p.add_(0.1)
    path = save_checkpoint(tmp_path / "checkpoints" / "step_0000000100.pt", trained, 100)
    loaded = load_agent(path)
    for a, b in zip(trained.net.state_dict().values(), loaded.net.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert loaded.trained_steps == 100
    out = evaluate_against(make_agent(), TTT, str(path), 4, seed=0)
    assert out["games"] == 4 and out["opponent"] == str(path)


def test_fit_elo_recovers_a_known_gap_and_orders_players():
    # A scores 75% against B: the Elo gap is 400 * log10(3) = 190.8
    ratings = fit_elo(["A", "B"], [(0, 1, 750.0, 1000)], prior_elo=1e6)
    assert ratings["B"] - ratings["A"] == pytest.approx(-400 * math.log10(3), abs=0.5)
    assert ratings["A"] == 0.0                                        # anchored at the first name
    # clean sweeps stay finite thanks to the prior; transitive order is kept
    ratings = fit_elo(["r", "a", "b"], [(1, 0, 20, 20), (2, 0, 20, 20), (2, 1, 15, 20)], anchor="r")
    assert 0 < ratings["a"] < ratings["b"] < 2000


def test_elo_ladder_writes_ratings_to_eval_json(tmp_path):
    for steps in (10, 20):
        save_checkpoint(tmp_path / "checkpoints" / f"step_{steps:010d}.pt", make_agent(seed=steps), steps)
    (tmp_path / "checkpoints" / "eval.json").write_text(json.dumps({"kept": 1}))
    ladder = elo_ladder(tmp_path, games_per_pair=4, seed=0)
    data = json.loads((tmp_path / "checkpoints" / "eval.json").read_text())
    assert data["kept"] == 1
    assert set(data["elo_ladder"]["ratings"]) == {"random", "step_0000000010", "step_0000000020"}
    assert data["elo_ladder"]["ratings"]["random"] == 0.0
    assert len(data["elo_ladder"]["games"]) == 3                     # every pair played
    assert ladder["steps"]["step_0000000020"] == 20
    assert all(np.isfinite(v) for v in ladder["ratings"].values())


def test_evaluate_game_checkpoint_for_eval_py(tmp_path):
    from runtime.match_eval import evaluate_game_checkpoint, match_table

    path = save_checkpoint(tmp_path / "checkpoints" / "latest.pt", make_agent(), 42)
    data = ckpt.load(path)
    result = evaluate_game_checkpoint(data, {**AGENT, "eval_simulations": 4}, TTT, None, 6, seed=0, ladder_games=2)
    assert set(result["matches"]) == {"random", "perfect"}            # defaults on tic-tac-toe
    assert result["matches"]["perfect"]["wins"] == 0 and result["trained_steps"] == 42
    assert "elo_ladder" in json.loads((tmp_path / "checkpoints" / "eval.json").read_text())
    table = match_table(result)
    assert "perfect" in table and "Elo ladder" in table
    only = evaluate_game_checkpoint(data, AGENT, TTT, "random, perfect", 2, seed=0)
    assert list(only["matches"]) == ["random", "perfect"]


def test_unknown_opponent_is_a_user_error_naming_the_choices():
    from runtime.errors import UserError

    with pytest.raises(UserError, match="opponent"):
        evaluate_against(make_agent(), TTT, "grandmaster", 2, seed=0)
