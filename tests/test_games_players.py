"""Opponents (random, perfect, MCTS, human) and play_match."""

from __future__ import annotations

import numpy as np
import pytest

from envs.games import (HumanPlayer, HumanQuit, IllegalActionError, MCTSBotPlayer,
                        PerfectTicTacToePlayer, Player, RandomPlayer, TicTacToe, make_game,
                        make_player, play_match, sample_legal, wilson_interval)


def _ttt(*moves: int) -> TicTacToe:
    game = TicTacToe()
    for a in moves:
        game.step([a])
    return game


# ----------------------------------------------------------------------- random
def test_random_player_is_uniform_over_legal_moves():
    game = TicTacToe(batch_size=20_000)
    game.step(np.full(20_000, 4))                # centre taken: 8 legal moves left
    actions = RandomPlayer(seed=0).act(game)
    counts = np.bincount(actions, minlength=9)
    assert counts[4] == 0
    np.testing.assert_allclose(counts[np.arange(9) != 4] / 20_000, 1 / 8, atol=0.01)
    assert isinstance(RandomPlayer(), Player)


def test_sample_legal_marks_rows_without_moves():
    mask = np.array([[False, True, False], [False, False, False]])
    np.testing.assert_array_equal(sample_legal(mask, np.random.default_rng(0)), [1, -1])


# ----------------------------------------------------------------------- perfect play
def test_perfect_player_knows_textbook_positions():
    perfect = PerfectTicTacToePlayer(seed=0)
    assert perfect.optimal_moves(_ttt()) == set(range(9))   # every opening draws
    assert perfect.value(_ttt())[0] == 0
    assert perfect.optimal_moves(_ttt(0)) == {4}             # corner opening: centre only
    assert perfect.optimal_moves(_ttt(4)) == {0, 2, 6, 8}    # centre opening: corners only
    # X: 0, 1; O: 4 -> O to move must block at 2 (and has no win yet)
    assert perfect.optimal_moves(_ttt(0, 4, 1)) == {2}
    # X 0 4, O 1 -> X to move wins with 8; the win is found and valued +1
    game = _ttt(0, 1, 4, 2)
    assert perfect.value(game)[0] == 1 and 8 in perfect.optimal_moves(game)
    assert perfect.act(game)[0] in perfect.optimal_moves(game)
    finished = _ttt(0, 3, 1, 4, 2)
    assert perfect.optimal_moves(finished) == set() and perfect.act(finished)[0] == -1


def test_perfect_values_agree_with_openspiel_alpha_beta():
    minimax = pytest.importorskip("open_spiel.python.algorithms.minimax")
    rng = np.random.default_rng(4)
    game = TicTacToe(batch_size=24)
    for _ in range(4):
        game.step(sample_legal(game.legal_mask(), rng))
    perfect = PerfectTicTacToePlayer()
    values = perfect.value(game)
    for i in np.flatnonzero(~game.terminal()):
        state = game.to_openspiel_state(int(i))
        value, _ = minimax.alpha_beta_search(state.get_game(), state=state,
                                             maximizing_player_id=state.current_player())
        assert value == values[i]
        for a in perfect.optimal_moves(game, int(i)):   # each optimal move keeps the value
            child = state.child(a)
            v, _ = minimax.alpha_beta_search(child.get_game(), state=child,
                                             maximizing_player_id=state.current_player())
            assert v == value


def test_perfect_player_never_loses_to_random_and_draws_itself():
    vs_random = play_match(PerfectTicTacToePlayer(), RandomPlayer(), "tic_tac_toe", 200,
                           seed=1)
    assert vs_random.losses == 0 and vs_random.num_games == 200
    assert vs_random.by_colour["a_first"]["wins"] > 80        # and it does win
    assert vs_random.by_colour["a_second"]["wins"] > 60
    vs_self = play_match(PerfectTicTacToePlayer(), PerfectTicTacToePlayer(), "tic_tac_toe",
                         100, seed=2)
    assert vs_self.draws == 100


def test_perfect_player_refuses_other_games():
    with pytest.raises(ValueError, match="only knows tic-tac-toe"):
        PerfectTicTacToePlayer().act(make_game("connect_four"))


def test_perfect_player_works_on_the_openspiel_adapter():
    pytest.importorskip("pyspiel")
    result = play_match(PerfectTicTacToePlayer(), RandomPlayer(),
                        "openspiel:tic_tac_toe", 20, seed=3)
    assert result.losses == 0


# ----------------------------------------------------------------------- MCTS bot
def test_mcts_bot_takes_the_win_and_plays_native_games():
    pytest.importorskip("pyspiel")
    bot = MCTSBotPlayer(simulations=200, seed=0)
    game = TicTacToe(batch_size=2)
    # game 0: X 0 1, O 4 5 -> X wins at 2; game 1: X 4 2, O 0 8 -> X wins at 6
    for plies in ([0, 4], [4, 0], [1, 2], [5, 8]):
        game.step(plies)
    np.testing.assert_array_equal(bot.act(game), [2, 6])
    result = play_match(MCTSBotPlayer(simulations=50), RandomPlayer(), "connect_four", 4,
                        seed=0)
    assert result.wins >= 3


def test_mcts_bot_is_reproducible_with_a_seed():
    pytest.importorskip("pyspiel")
    game = make_game("connect_four", 3)
    a = MCTSBotPlayer(simulations=20, seed=5).act(game)
    b = MCTSBotPlayer(simulations=20, seed=5).act(game)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------- human
class FakeTerminal:
    """Feeds scripted lines to the human player and records what it prints."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.prompts: list[str] = []
        self.printed: list[str] = []

    def input(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.lines.pop(0)

    def print(self, text: str) -> None:
        self.printed.append(text)


def test_human_is_asked_again_after_bad_input():
    term = FakeTerminal(["hello", "", "12", "4", "-1", " 2 "])
    human = HumanPlayer(input_fn=term.input, output_fn=term.print)
    game = _ttt(4, 0)                                  # cells 0 and 4 taken
    assert human.act(game).tolist() == [2]
    assert len(term.prompts) == 6 and term.lines == []
    text = "\n".join(term.printed)
    assert " X | 5" in text.replace("O | 1", "")     # the board was drawn
    assert "could not read 'hello'" in text
    assert "'12' is not a legal move" in text and "'4' is not a legal move" in text
    assert "legal moves: 1 2 3 5 6 7 8" in text


def test_human_can_quit_and_play_connect_four():
    term = FakeTerminal(["7", "3"])
    game = make_game("connect_four")
    assert HumanPlayer(term.input, term.print).act(game).tolist() == [3]
    with pytest.raises(HumanQuit):
        HumanPlayer(FakeTerminal(["quit"]).input, lambda s: None).act(game)


def test_human_plays_a_whole_match_through_play_match():
    # the human types the cells in order; taken ones are refused and asked again
    term = FakeTerminal([str(c) for c in range(9)] * 5)
    result = play_match(HumanPlayer(term.input, term.print), RandomPlayer(), "tic_tac_toe", 1)
    assert result.num_games == 1 and len(term.prompts) >= 3


# ----------------------------------------------------------------------- play_match
def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 200)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.01884, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_play_match_counts_colours_and_is_reproducible():
    first = play_match(RandomPlayer(), RandomPlayer(), "connect_four", 60, seed=9)
    again = play_match(RandomPlayer(), RandomPlayer(), "connect_four", 60, seed=9)
    assert first.to_dict() == again.to_dict()
    assert first.wins + first.draws + first.losses == 60
    assert sum(first.by_colour["a_first"].values()) == 30
    lo, hi = first.score_ci
    assert lo <= first.score <= hi and 0 <= lo < hi <= 1
    assert "60 games" in first.summary()
    fixed = play_match(PerfectTicTacToePlayer(), PerfectTicTacToePlayer(), TicTacToe(), 4,
                       alternate_colours=False, a_moves_first=False)
    assert sum(fixed.by_colour["a_second"].values()) == 4


def test_play_match_blames_a_player_that_cheats():
    class Stubborn:
        def act(self, game):
            return np.zeros(game.batch_size, np.int64)     # always cell 0

    with pytest.raises(IllegalActionError, match="player B \\(Stubborn\\)"):
        play_match(RandomPlayer(), Stubborn(), "tic_tac_toe", 2, alternate_colours=False)

    class WrongShape:
        def act(self, game):
            return np.zeros(game.batch_size + 1, np.int64)

    with pytest.raises(ValueError, match="player A"):
        play_match(WrongShape(), RandomPlayer(), "tic_tac_toe", 2)


def test_make_player_names():
    assert isinstance(make_player("random"), RandomPlayer)
    assert isinstance(make_player("perfect"), PerfectTicTacToePlayer)
    assert make_player("mcts:25").simulations == 25
    assert isinstance(make_player("human"), HumanPlayer)
    with pytest.raises(ValueError, match="choose one of"):
        make_player("grandmaster")
    with pytest.raises(TypeError):
        make_player(object())
