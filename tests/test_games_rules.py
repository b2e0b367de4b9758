"""Our tic-tac-toe and Connect Four against OpenSpiel's, and the OpenSpiel adapter."""

from __future__ import annotations

import numpy as np
import pytest

from envs.games import ConnectFour, GameError, TicTacToe, make_game, sample_legal

pyspiel = pytest.importorskip("pyspiel")


def _openspiel_planes(state, rows: int, cols: int, name: str) -> np.ndarray:
    """int8 [H, W] board from OpenSpiel's tensor: 1 = player 0's stone, 2 = player 1's,
    in our layout (row 0 at the top)."""
    t = np.asarray(state.observation_tensor(0)).reshape(3, rows, cols)
    if name == "tic_tac_toe":   # planes: empty, nought (player 1), cross (player 0)
        return (t[2] + 2 * t[1]).astype(np.int8)
    return (t[0] + 2 * t[1]).astype(np.int8)[::-1]   # x, o, empty; row 0 at the bottom


@pytest.mark.parametrize("cls,num_games", [(TicTacToe, 3000), (ConnectFour, 1500)])
def test_random_games_agree_with_openspiel(cls, num_games):
    """Same legal moves, boards, player to move and results at every ply of many games."""
    rng = np.random.default_rng(0)
    ours = cls(batch_size=num_games)
    theirs = [pyspiel.load_game(ours.openspiel_name).new_initial_state()
              for _ in range(num_games)]
    h, w = ours.observation_shape[1:]
    checked_boards = 0
    for _ in range(ours.max_game_length + 1):
        done = ours.terminal()
        mask = ours.legal_mask()
        stones = ours.stones()
        for i, s in enumerate(theirs):
            assert s.is_terminal() == done[i]
            if done[i]:
                assert not mask[i].any()
                continue
            assert np.flatnonzero(mask[i]).tolist() == s.legal_actions()
            assert s.current_player() == ours.to_play()[i]
            if i < 50:  # board layout and stone colours, on a sample of games
                np.testing.assert_array_equal(stones[i], _openspiel_planes(s, h, w, ours.name))
                checked_boards += 1
        if done.all():
            break
        actions = sample_legal(mask, rng)
        ours.step(actions)
        for i in np.flatnonzero(actions >= 0):
            theirs[i].apply_action(int(actions[i]))
    outcome = ours.outcome()
    np.testing.assert_array_equal(outcome, [s.returns()[0] for s in theirs])
    # the sample must contain all three results, or the comparison proves little
    assert {-1.0, 0.0, 1.0} <= set(outcome.tolist())
    assert checked_boards > 100


@pytest.mark.parametrize("name,num_games", [("tic_tac_toe", 200), ("connect_four", 60)])
def test_adapter_agrees_with_native_game(name, num_games):
    """The OpenSpiel adapter implements the protocol the same way as the native games."""
    rng = np.random.default_rng(1)
    native = make_game(name, num_games)
    adapted = make_game(f"openspiel:{name}", num_games)
    assert adapted.num_actions == native.num_actions
    assert adapted.observation_shape == (native.observation_shape[0] + 1,
                                         *native.observation_shape[1:])
    for _ in range(2 * native.max_game_length):
        if native.terminal().all():
            break
        for method in ("legal_mask", "to_play", "terminal", "outcome", "num_moves"):
            np.testing.assert_array_equal(getattr(adapted, method)(),
                                          getattr(native, method)(), err_msg=method)
        np.testing.assert_array_equal(adapted.history()[:, :native.max_game_length],
                                      native.history())
        np.testing.assert_array_equal(adapted.observation()[:, -1],
                                      native.observation()[:, 2])   # colour plane
        actions = sample_legal(native.legal_mask(), rng)
        # leave some games untouched for a ply to exercise the -1 no-op
        actions[rng.random(num_games) < 0.2] = -1
        native.step(actions)
        adapted.step(actions)
    np.testing.assert_array_equal(adapted.outcome(), native.outcome())
    np.testing.assert_array_equal(adapted.outcome_for_to_play(), native.outcome_for_to_play())


def test_adapter_clone_restore_and_take():
    game = make_game("openspiel", 6, game="othello")
    rng = np.random.default_rng(2)
    for _ in range(5):
        game.step(sample_legal(game.legal_mask(), rng))
    saved = game.clone()
    obs = game.observation()
    for _ in range(3):
        game.step(sample_legal(game.legal_mask(), rng))
    assert not np.array_equal(game.observation(), obs)
    game.restore(saved)
    np.testing.assert_array_equal(game.observation(), obs)
    sub = game.take([4, 1])
    np.testing.assert_array_equal(sub.observation(), obs[[4, 1]])
    sub.step(sample_legal(sub.legal_mask(), rng))       # stepping the copy ...
    np.testing.assert_array_equal(game.observation(), obs)  # ... leaves the source alone
    game.step(sample_legal(game.legal_mask(), rng))     # stepping after a restore ...
    game.restore(saved)                                 # ... must not change the saved state
    np.testing.assert_array_equal(game.observation(), obs)
    np.testing.assert_array_equal(game.legal_mask(), saved.arrays["legal"])


def test_adapter_othello_symmetries_follow_the_board():
    """Playing the transformed moves gives the transformed position (pass stays pass).

    Only the 4 symmetries that fix Othello's diagonal starting position can be checked
    by replaying games from the start; the other 4 are valid for augmentation (the
    rules are symmetric) but map the start to a different position."""
    rng = np.random.default_rng(3)
    game = make_game("openspiel:othello", 4)
    perms = game.action_permutations()
    assert perms.shape == (8, 65) and (perms[:, 64] == 64).all()
    start = game.observation()
    fixing = [s for s in range(8)
              if np.array_equal(game.transform_observation(start, s), start)]
    assert len(fixing) == 4
    images = {s: make_game("openspiel:othello", 4) for s in fixing}
    for _ in range(12):
        actions = sample_legal(game.legal_mask(), rng)
        for s, image in images.items():
            np.testing.assert_array_equal(image.observation(),
                                          game.transform_observation(game.observation(), s))
            np.testing.assert_array_equal(image.legal_mask()[:, perms[s]], game.legal_mask())
            image.step(np.where(actions >= 0, perms[s][actions], -1))
        game.step(actions)


def test_adapter_rejects_games_outside_the_protocol():
    with pytest.raises(GameError, match="chance nodes"):
        make_game("openspiel:kuhn_poker")
    with pytest.raises(ValueError, match="unknown game"):
        make_game("chess960ish")
    with pytest.raises(ValueError, match="name the OpenSpiel game"):
        make_game("openspiel")
