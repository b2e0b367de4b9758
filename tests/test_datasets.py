"""Offline datasets: building, metadata, corruption, conversions, and the make_dataset command line."""
from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY, only_run_dir, run_cli

from replay import TransitionReplay
from replay.datasets import (
    MixedPolicy,
    collect,
    episode_returns,
    evaluate_policy,
    export_npz,
    from_replay_state,
    load_dataset,
    read_info,
    save_dataset,
)

CARTPOLE = {"kind": "gym", "id": "CartPole-v1", "name": "cartpole"}


def controller(obs):
    """A decent hand-written CartPole policy: push toward the side the pole falls to."""
    obs = np.asarray(obs)
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 600-transition CartPole dataset of the controller, epsilon-mixed, saved to disk."""
    space = gym.spaces.Discrete(2)
    policy = MixedPolicy([controller], space, 0.3, num_envs=2, seed=0)
    buf, returns = collect(policy, CARTPOLE, 600, 2, seed=0)
    info = {"preset": "medium", "env": CARTPOLE, "epsilon": 0.3,
            **evaluate_policy(policy, CARTPOLE, 4, 2, seed=5)}
    path = tmp_path_factory.mktemp("ds") / "cartpole.arbor-replay"
    full = save_dataset(buf, path, info)
    return buf, returns, path, full


def test_collect_stores_what_the_policy_did(built):
    buf, _, _, _ = built
    assert 600 <= len(buf) <= 602
    batch = buf.sample(512)
    greedy = controller(batch.obs.numpy())
    agree = (batch.action.numpy() == greedy).mean()
    # epsilon 0.3 over 2 actions: the controller's action with probability 0.7 + 0.3 / 2 = 0.85
    assert 0.78 < agree < 0.92
    assert np.all(batch.reward.numpy() == 1.0)
    assert set(np.unique(batch.discount.numpy())) <= {0.0, np.float32(0.99)}


def test_metadata_round_trip(built):
    buf, _, path, full = built
    info = read_info(path)
    assert info["format"] == "arbor-dataset" and info["preset"] == "medium" and info["epsilon"] == 0.3
    assert info["env"] == CARTPOLE
    assert info["transitions"] == len(buf)
    stored = episode_returns(buf)
    assert info["episodes"] == stored.size > 0
    assert info["episode_return_mean"] == pytest.approx(stored.mean())
    assert info["policy_episodes"] == 4 and info["policy_return_mean"] > 9
    assert full["file_bytes"] == path.stat().st_size


def test_load_gives_identical_batches_in_memory_and_mmap(built, tmp_path):
    buf, _, path, _ = built
    a, info = load_dataset(path, seed=3)
    b, _ = load_dataset(path, seed=3, storage="mmap", storage_path=tmp_path / "maps")
    assert len(a) == len(b) == len(buf) and info["preset"] == "medium"
    assert isinstance(b._arrays["obs"], np.memmap)
    for _ in range(3):
        x, y = a.sample(64), b.sample(64)
        torch.testing.assert_close(x.obs, y.obs)
        torch.testing.assert_close(x.next_obs, y.next_obs)
        torch.testing.assert_close(x.action, y.action)
    c, _ = load_dataset(path, gamma=0.5, seed=3)
    assert set(np.unique(c.sample(512).discount.numpy())) <= {0.0, 0.5}


def test_corrupt_and_foreign_files_are_refused(built, tmp_path):
    _, _, path, _ = built
    from replay import fileformat

    obs_entry = next(e for e in fileformat.read_header(path)["arrays"] if e["name"] == "storage.obs")
    data = bytearray(path.read_bytes())
    data[obs_entry["offset"] + 10] ^= 0xFF
    bad = tmp_path / "bad.arbor-replay"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_dataset(bad)
    short = tmp_path / "short.arbor-replay"
    short.write_bytes(bytes(data[:1000]))
    with pytest.raises(ValueError, match="truncated"):
        load_dataset(short)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "missing.arbor-replay")


def test_from_replay_state_keeps_every_row_as_one_step_transitions():
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    run = TransitionReplay(200, space, gym.spaces.Discrete(2), 2, n_step=3, prioritized=True, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 3)).astype(np.float32)
    for t in range(50):
        nxt = rng.normal(size=(2, 3)).astype(np.float32)
        run.add(obs, rng.integers(0, 2, 2), np.full(2, float(t)), nxt, np.array([t % 9 == 8, False]),
                np.array([False, t % 20 == 19]))
        obs = nxt
    buf = from_replay_state(run.state_dict())
    assert buf.n_step == 1 and not buf.prioritized
    # every stored step is a 1-step transition: the open n-step windows of the run are the only ones missing
    assert len(run) <= len(buf) <= 100
    batch = buf.sample(256)
    assert set(np.unique(batch.reward.numpy())) <= set(range(50))
    for episode in (r for r in episode_returns(buf)):
        assert episode >= 0


def test_npz_export_layout(built, tmp_path):
    buf, _, _, _ = built
    counts = export_npz(buf, tmp_path / "d.npz")
    data = np.load(tmp_path / "d.npz")
    n = counts["steps"]
    assert data["observations"].shape == (n, 4) and data["actions"].shape == (n,)
    ends = (data["terminals"] + data["timeouts"]) > 0
    assert ends.sum() == counts["episodes"] and ends[-1]
    assert np.all(data["rewards"] == 1.0)


def test_minari_round_trip(built, tmp_path):
    pytest.importorskip("minari")
    pytest.importorskip("h5py")
    from replay import episodes, from_minari, to_minari

    buf, _, _, _ = built
    to_minari(buf, "arbor/cartpole-medium-v0", tmp_path)
    back = from_minari(tmp_path / "arbor" / "cartpole-medium-v0", n_step=1, seed=0)
    before, after = list(episodes(buf)), list(episodes(back))
    assert len(before) == len(after) > 0
    key = lambda e: e["observations"].tobytes()
    for a, b in zip(sorted(before, key=key), sorted(after, key=key)):
        np.testing.assert_array_equal(a["observations"], b["observations"])
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_array_equal(a["terminations"], b["terminations"])
    path = tmp_path / "from_minari.arbor-replay"
    save_dataset(back, path, {"preset": "minari"})
    again, _ = load_dataset(path)
    np.testing.assert_allclose(episode_returns(again), episode_returns(back))


# --------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    result = run_cli("train.py", *TINY, f"runs_root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(root)


def test_make_dataset_cli_presets_and_minari(dqn_run, tmp_path):
    pytest.importorskip("minari")
    mixed = tmp_path / "mixed.arbor-replay"
    result = run_cli("make_dataset.py", f"checkpoint={dqn_run}", "preset=mixed", f"out={mixed}",
                     f"export_minari={tmp_path / 'minari'}", "minari_id=arbor/cp-mixed-v0")
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_info(mixed)
    assert info["preset"] == "mixed" and info["transitions"] >= 1100 and info["episode_return_mean"] > 0
    assert "Minari dataset arbor/cp-mixed-v0" in result.stdout
    medium = tmp_path / "medium.arbor-replay"
    result = run_cli("make_dataset.py", f"checkpoint={dqn_run}", "preset=medium", "size=400", "epsilon=0.5",
                     "eval_episodes=2", f"out={medium}", "storage=mmap", f"storage_path={tmp_path / 'maps'}")
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_info(medium)
    assert info["epsilon"] == 0.5 and info["policy_episodes"] == 2 and 400 <= info["transitions"] <= 404
    imported = tmp_path / "imported.arbor-replay"
    result = run_cli("make_dataset.py", f"minari={tmp_path / 'minari' / 'arbor' / 'cp-mixed-v0'}", f"out={imported}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_info(imported)["episodes"] == read_info(mixed)["episodes"]
    shown = run_cli("make_dataset.py", f"show={imported}", f"export_npz={tmp_path / 'x.npz'}")
    assert shown.returncode == 0 and json.loads(shown.stdout[:shown.stdout.rindex("}") + 1])["preset"] == "minari"


def test_make_dataset_errors_name_the_key(dqn_run, tmp_path):
    numbered = min((dqn_run / "checkpoints").glob("step_*.pt"))
    result = run_cli("make_dataset.py", f"checkpoint={numbered}", "preset=mixed", f"out={tmp_path / 'x'}")
    assert result.returncode == 2 and "include_replay" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("make_dataset.py", f"checkpoint={dqn_run}", "preset=hard", f"out={tmp_path / 'x'}")
    assert result.returncode == 2 and "preset" in result.stderr and "expert, medium, mixed" in result.stderr
