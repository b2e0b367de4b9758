"""The simulator protocol on the native games: stepping, errors, clone/restore,
subsets, observations and symmetries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.games import (ConnectFour, FinishedGameError, GameState, IllegalActionError,
                        TicTacToe, sample_legal)

GAMES = [TicTacToe, ConnectFour]


def _snapshot(game) -> dict[str, np.ndarray]:
    return {m: getattr(game, m)() for m in ("observation", "legal_mask", "to_play",
                                            "terminal", "outcome", "num_moves", "history")}


def _assert_same(a: dict, b: dict) -> None:
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _play(game, plies: int, rng: np.random.Generator, skip: float = 0.0) -> None:
    for _ in range(plies):
        actions = sample_legal(game.legal_mask(), rng)
        actions[rng.random(game.batch_size) < skip] = -1
        game.step(actions)


# ----------------------------------------------------------------------- rules by hand
@pytest.mark.parametrize("line", [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7),
                                  (2, 5, 8), (0, 4, 8), (2, 4, 6)])
def test_tic_tac_toe_every_line_wins(line):
    others = [c for c in range(9) if c not in line]
    game = TicTacToe()
    for x, o in zip(line, others):
        assert not game.terminal()[0]
        game.step([x])
        if not game.terminal()[0]:
            game.step([o])
    assert game.terminal()[0] and game.outcome()[0] == 1.0
    assert game.to_play()[0] == 1 and game.outcome_for_to_play()[0] == -1.0
    assert "X wins" in game.render()


def test_tic_tac_toe_full_board_draw():
    game = TicTacToe()
    for a in (0, 1, 2, 4, 3, 5, 7, 6, 8):   # X O X / X O O / O X X: no line
        game.step([a])
    assert game.terminal()[0] and game.outcome()[0] == 0.0
    assert not game.legal_mask().any() and "draw" in game.render()


@pytest.mark.parametrize("moves,winner", [
    ([0, 6, 1, 6, 2, 6, 3], 1.0),            # horizontal, bottom row, X
    ([0, 1, 0, 1, 0, 1, 5, 1], -1.0),        # vertical, column 1, O
    ([0, 1, 1, 2, 3, 2, 2, 3, 6, 3, 3], 1.0),  # diagonal / (0,0)-(3,3), X
    ([6, 5, 5, 4, 3, 4, 4, 3, 0, 3, 3], 1.0),  # diagonal \ (6,0)-(3,3), X
])
def test_connect_four_lines_win(moves, winner):
    game = ConnectFour()
    for i, a in enumerate(moves):
        assert not game.terminal()[0], f"ended early at move {i}"
        game.step([a])
    assert game.terminal()[0] and game.outcome()[0] == winner


def test_connect_four_no_win_across_column_edge():
    """Stones at the top of one column and the bottom of the next are not a line."""
    game = ConnectFour()
    # X ends with column 0 rows 3..5 and column 1 row 0: consecutive cells in
    # column-major order, which a bitboard without the sentinel row would call a line
    for a in (1, 0, 6, 0, 6, 0, 0, 5, 0, 5, 0):
        game.step([a])
    assert not game.terminal()[0]
    assert not game.legal_mask()[0, 0] and game.legal_mask()[0, 1:].all()


def test_connect_four_full_board_is_a_draw():
    # columns filled in pairs with a pattern that never makes four: 0,1 / 2,3 / 4,5 / 6
    order = [0, 1] * 3 + [1, 0] * 3 + [2, 3] * 3 + [3, 2] * 3 + [4, 5] * 3 + [5, 4] * 3
    order += [6] * 6
    game = ConnectFour()
    for a in order:
        assert not game.terminal()[0]
        game.step([a])
    assert game.num_moves()[0] == 42
    assert game.terminal()[0] and game.outcome()[0] == 0.0


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("cls", GAMES)
def test_step_errors_are_clear_and_leave_the_state_alone(cls):
    game = cls(batch_size=3)
    game.step([0, 1, 2])
    before = _snapshot(game)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        game.step([0, 1])
    with pytest.raises(TypeError, match="integer"):
        game.step(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(IllegalActionError, match="outside"):
        game.step([0, 1, cls.num_actions])
    if cls is TicTacToe:
        with pytest.raises(IllegalActionError, match="game 1: action 1"):
            game.step([3, 1, 4])                   # cell 1 of game 1 is taken
    _assert_same(before, _snapshot(game))      # nothing moved, not even game 0


def test_full_column_is_illegal():
    game = ConnectFour()
    for _ in range(6):
        game.step([3])
    assert not game.legal_mask()[0, 3]
    with pytest.raises(IllegalActionError):
        game.step([3])


@pytest.mark.parametrize("cls", GAMES)
def test_finished_games_only_accept_no_action(cls):
    game = cls(batch_size=2)
    rng = np.random.default_rng(0)
    for _ in range(cls.max_game_length):
        if game.terminal()[0]:
            break
        actions = sample_legal(game.legal_mask(), rng)
        actions[1] = -1
        game.step(actions)
    with pytest.raises(FinishedGameError, match="games \\[0\\] have ended"):
        game.step([0, 0])
    game.step([-1, 0])                 # fine: the finished game is skipped
    assert game.num_moves()[1] == 1
    game.reset_games([0])
    assert not game.terminal()[0] and game.num_moves()[0] == 0
    assert game.legal_mask()[0].all()


# ----------------------------------------------------------------------- batching
@pytest.mark.parametrize("cls", GAMES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), skip=st.sampled_from([0.0, 0.3]))
def test_vectorised_step_equals_per_game_stepping(cls, seed, skip):
    rng = np.random.default_rng(seed)
    batch = cls(batch_size=16)
    singles = [cls(batch_size=1) for _ in range(16)]
    for _ in range(2 * cls.max_game_length):   # bounded even if games never end
        if batch.terminal().all():
            break
        actions = sample_legal(batch.legal_mask(), rng)
        actions[rng.random(16) < skip] = -1
        batch.step(actions)
        for i, single in enumerate(singles):
            if actions[i] >= 0:
                single.step(actions[i:i + 1])
        joined = {k: np.concatenate([_snapshot(s)[k] for s in singles])
                  for k in _snapshot(batch)}
        _assert_same(_snapshot(batch), joined)


@pytest.mark.parametrize("cls", GAMES)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), plies=st.integers(0, 12))
def test_clone_restore_round_trip(cls, seed, plies):
    rng = np.random.default_rng(seed)
    game = cls(batch_size=8)
    _play(game, plies, rng, skip=0.2)
    saved, before = game.clone(), _snapshot(game)
    _play(game, 5, rng)
    game.restore(saved)
    _assert_same(before, _snapshot(game))
    _play(game, 5, rng)                # stepping after restore must not touch `saved`
    game.restore(saved)
    _assert_same(before, _snapshot(game))


@pytest.mark.parametrize("cls", GAMES)
def test_subset_gather_and_scatter(cls):
    rng = np.random.default_rng(5)
    game = cls(batch_size=10)
    _play(game, 4, rng, skip=0.5)
    full = _snapshot(game)
    idx = np.array([7, 2, 2, 9])
    part = game.clone(idx)
    assert isinstance(part, GameState) and part.batch_size == 4
    sub = game.take(idx)
    _assert_same({k: v[idx] for k, v in full.items()}, _snapshot(sub))
    # scatter: write games 7 and 2 over games 0 and 1 of a fresh batch
    fresh = cls(batch_size=3)
    fresh.restore(part.take([0, 1]), indices=[0, 1])
    got = _snapshot(fresh)
    for k, v in full.items():
        np.testing.assert_array_equal(got[k][:2], v[[7, 2]], err_msg=k)
        np.testing.assert_array_equal(got[k][2], _snapshot(cls())[k][0], err_msg=k)
    # GameState.put / concatenate are the same operations on saved states
    saved = game.clone()
    saved.put([0], game.clone([9]))
    joined = GameState.concatenate([game.clone([9]), game.clone([1])])
    game.restore(saved)
    np.testing.assert_array_equal(game.observation()[0], full["observation"][9])
    assert joined.batch_size == 2
    with pytest.raises(ValueError, match="cannot restore"):
        cls(batch_size=1).restore((ConnectFour if cls is TicTacToe else TicTacToe)().clone())


# ----------------------------------------------------------------------- observations
@pytest.mark.parametrize("cls", GAMES)
def test_observation_is_from_the_movers_view(cls):
    game = cls(batch_size=1)
    obs0 = game.observation()
    assert obs0.shape == (1, *cls.observation_shape) and obs0.dtype == np.float32
    assert obs0[0, :2].sum() == 0 and (obs0[0, 2] == 1).all()
    game.step([3])                     # X plays; now O is to move
    obs1 = game.observation()
    assert obs1[0, 0].sum() == 0 and obs1[0, 1].sum() == 1 and (obs1[0, 2] == 0).all()
    game.step([4])                     # O plays; X to move sees its stone in plane 0
    obs2 = game.observation()
    np.testing.assert_array_equal(obs2[0, 0], obs1[0, 1])
    assert obs2[0, 1].sum() == 1 and (obs2[0, 2] == 1).all()
    # an explicit viewer gives the other side's planes
    np.testing.assert_array_equal(game.observation(np.array([1]))[0, :2], obs2[0, 1::-1])


# ----------------------------------------------------------------------- symmetries
def _legal_from_obs(cls, obs: np.ndarray) -> np.ndarray:
    """Legal moves read off the planes alone (an independent check of the geometry)."""
    empty = (obs[:, 0] + obs[:, 1]) == 0
    if cls is TicTacToe:
        return empty.reshape(len(obs), 9)
    return empty[:, 0, :]              # a column is open iff its top cell is empty


@pytest.mark.parametrize("cls,count", [(TicTacToe, 8), (ConnectFour, 2)])
def test_symmetries_map_policies_with_the_board(cls, count):
    rng = np.random.default_rng(7)
    game = cls(batch_size=64)
    _play(game, 3, rng)
    live = ~game.terminal()
    obs, mask = game.observation()[live], game.legal_mask()[live]
    policy = rng.random(mask.shape) * mask
    policy /= policy.sum(1, keepdims=True)
    pairs = game.symmetries(obs, policy)
    assert len(pairs) == count
    np.testing.assert_array_equal(pairs[0][0], obs)
    np.testing.assert_array_equal(pairs[0][1], policy)
    np.testing.assert_array_equal(_legal_from_obs(cls, obs), mask)
    images = set()
    for s, (o, p) in enumerate(pairs):
        assert o.shape == obs.shape and p.shape == policy.shape
        np.testing.assert_allclose(p.sum(1), 1.0)
        # probability stays exactly on the moves that are legal in the transformed board
        np.testing.assert_array_equal(p > 0, _legal_from_obs(cls, o) & (p > 0))
        np.testing.assert_array_equal(_legal_from_obs(cls, o)[:, game.action_permutations()[s]],
                                      mask)
        images.add(o.tobytes())
    assert len(images) == count        # all images differ for these random positions
    single = game.symmetries(obs[0], policy[0])        # unbatched input works too
    np.testing.assert_array_equal(single[-1][1], pairs[-1][1][0])


@pytest.mark.parametrize("cls", GAMES)
def test_transformed_moves_give_the_transformed_game(cls):
    """Replaying a game through a symmetry gives the symmetric positions and result."""
    rng = np.random.default_rng(11)
    game = cls(batch_size=32)
    perms = game.action_permutations()
    images = [cls(batch_size=32) for _ in perms]
    for _ in range(cls.max_game_length):
        if game.terminal().all():
            break
        for s, image in enumerate(images):
            np.testing.assert_array_equal(image.observation(),
                                          game.transform_observation(game.observation(), s))
            np.testing.assert_array_equal(image.legal_mask()[:, perms[s]], game.legal_mask())
        actions = sample_legal(game.legal_mask(), rng)
        game.step(actions)
        for s, image in enumerate(images):
            image.step(np.where(actions >= 0, perms[s][actions], -1))
    for image in images:
        np.testing.assert_array_equal(image.outcome(), game.outcome())


def test_symmetries_reject_wrong_shapes():
    game = TicTacToe()
    with pytest.raises(ValueError, match="observation shape"):
        game.symmetries(np.zeros((2, 3, 4, 4)), np.zeros((2, 9)))
    with pytest.raises(ValueError, match="actions"):
        game.symmetries(np.zeros((2, 3, 3, 3)), np.zeros((2, 7)))
